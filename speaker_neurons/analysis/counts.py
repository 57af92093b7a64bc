"""Streaming activation statistics (METHOD §1-§2).

For every layer l the FFN activation `a_t^l = GELU(W1 x_t + b1)` of every valid frame t is reduced to the
set of *activated* neurons: the top `K_l = max(1, round(top_fraction * D_l))` neurons by absolute value,
ties at the K-th place broken by the lower neuron index. Per class c (a pair (i-vector cluster g,
SSL cluster c), numbered ``g * k_ssl + c``) the counter accumulates

- ``counts_l[c, j]`` = number of frames of class c at which neuron j of layer l was activated, and
- ``frames[c]`` = number of frames of class c,

so ``p_l(j | c) = counts_l[c, j] / frames[c]``. Memory is ``classes x width`` per layer, independent of
the corpus size.

File format (``activation_counts.npz`` + ``activation_counts.json`` beside it):

- ``counts_l<l>``: int64 ``(classes, width_l)`` for l = 1..L,
- ``frames``: int64 ``(classes,)``,
- ``classes``: int64 ``(classes, 2)``: row i = (i-vector cluster, SSL cluster) of class i,
- the JSON holds ``top_fraction``, ``K`` (list, per layer), ``widths`` (list, per layer),
  ``num_layers``, ``num_classes`` and any metadata the caller gives (e.g. ``k_ivector``, ``k_ssl``),
- with P other i-vector partitions counted in the same pass (``ActivationCounter.save(partition_names=...)``):
  ``partition_counts_l<l>`` ``(P * classes, width_l)`` and ``partition_frames`` (P blocks in the order of
  ``partitions``, their names in the JSON).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from speaker_neurons.analysis.counts_data import CountsData, counts_json_path, load_counts, top_k_for
from speaker_neurons.utils import save_npz, write_json

__all__ = [
    "top_k_for",
    "topk_indices",
    "topk_mask",
    "class_index",
    "classes_table",
    "ActivationCounter",
    "CountsData",
    "load_counts",
    "counts_json_path",
]

FORMAT_VERSION = 1


# ----------------------------------------------------------------------------------------------------
# K and the exact top-k
# ----------------------------------------------------------------------------------------------------
def topk_indices(acts: torch.Tensor, k: int) -> torch.Tensor:
    """Indices ``(N, k)`` int64 of the activated neurons of every row of ``acts`` ``(N, W)``.

    Activated = the k largest ``|a|``; when the k-th and (k+1)-th largest ``|a|`` are equal, the neurons
    with that value are taken in increasing index order (lower index wins). The *set* in each row is
    exact and deterministic on every device; the order of the indices within a row is unspecified.
    NaN raises ``ValueError``. See :func:`_topk_rows` for why it is exact.
    """
    idx, nan_rows = _topk_rows(acts, k)
    if bool(nan_rows.any()):
        raise ValueError("activations contain NaN")
    return idx


def _topk_rows(acts: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(indices (N, k), rows containing NaN (N,) bool); rows with NaN hold unspecified indices.

    Why this is exact:
    1. ``torch.topk`` returns the exact multiset of the k+1 largest values; only the order of the
       *indices* of tied values is unspecified.
    2. Fast path, on the signed values (no ``abs`` copy of the whole matrix): let v_k be the k-th
       largest signed value and m the magnitude of the most negative value (0 if none). When
       v_k > m, every negative value is smaller in magnitude than v_k, so the k largest |a| are the k
       largest a, and another |a| equals v_k only if another a equals v_k. This holds for almost every
       frame of a GELU layer (negative outputs are bounded by 0.17 in magnitude).
    3. Other rows are recomputed on |a|.
    4. The top-k set is ambiguous only when the k-th and (k+1)-th largest |a| are equal (if
       v_k > v_{k+1} the set is exactly {j : |a_j| >= v_k}, whatever order topk reports ties in). Those
       rows are recomputed exactly: every |a_j| > v_k (fewer than k of them), filled up to k with the
       lowest-index |a_j| == v_k (a cumulative sum over the tie mask). ``abs`` maps -0.0 to +0.0 and
       ``==`` treats them as equal anyway, so signed zeros tie like any other value.
    """
    if acts.dim() != 2:
        raise ValueError(f"acts must be (N, W), got shape {tuple(acts.shape)}")
    n, w = acts.shape
    k = int(k)
    if not (1 <= k <= w):
        raise ValueError(f"k must be in [1, {w}], got {k}")
    if n == 0:
        return torch.empty(0, k, dtype=torch.long, device=acts.device), torch.zeros(0, dtype=torch.bool, device=acts.device)
    x = acts.detach()
    if k == w:
        return torch.arange(w, device=x.device).expand(n, w).clone(), torch.isnan(x).any(dim=1)
    vals, idx = torch.topk(x, k + 1, dim=1, largest=True, sorted=True)
    most_negative = x.amin(dim=1)
    nan_rows = torch.isnan(vals[:, 0]) | torch.isnan(most_negative)  # topk and amin both surface NaN
    kth, nxt = vals[:, k - 1], vals[:, k]
    signed_ok = kth > torch.clamp(-most_negative, min=0.0)
    idx = idx[:, :k]
    if not bool(signed_ok.all()):
        rows = torch.nonzero(~signed_ok).squeeze(1)
        mvals, midx = torch.topk(x.index_select(0, rows).abs(), k + 1, dim=1, largest=True, sorted=True)
        idx = idx.clone()
        idx[rows] = midx[:, :k]
        kth, nxt = kth.clone(), nxt.clone()
        kth[rows], nxt[rows] = mvals[:, k - 1], mvals[:, k]
    tie = kth == nxt
    if bool(tie.any()):
        rows = torch.nonzero(tie).squeeze(1)
        sub = x.index_select(0, rows).abs()
        v = kth.index_select(0, rows).unsqueeze(1)
        gt = sub > v
        eq = sub == v
        need = k - gt.sum(dim=1, keepdim=True)
        sel = gt | (eq & (torch.cumsum(eq, dim=1) <= need))
        # Exactly k True per row: fewer than k values exceed the k-th largest, at least `need` equal it.
        fixed = torch.nonzero(sel)[:, 1].reshape(-1, k)
        idx = idx.clone()
        idx[rows] = fixed
    return idx, nan_rows


def topk_mask(acts: torch.Tensor, k: int) -> torch.Tensor:
    """Bool ``(N, W)``: True where neuron j is activated at row (frame) n. See :func:`topk_indices`."""
    idx = topk_indices(acts, k)
    mask = torch.zeros(acts.shape, dtype=torch.bool, device=acts.device)
    if idx.numel():
        mask.scatter_(1, idx, True)
    return mask


# ----------------------------------------------------------------------------------------------------
# Classes
# ----------------------------------------------------------------------------------------------------
def class_index(ivector_cluster, ssl_cluster, k_ssl: int):
    """Class number of (i-vector cluster g, SSL cluster c): ``g * k_ssl + c``.

    Works on ints, numpy arrays and torch tensors (broadcasting). A negative g or c (unknown / ignored
    frame) gives -1. An SSL cluster >= k_ssl raises.
    """
    k_ssl = int(k_ssl)
    if isinstance(ivector_cluster, torch.Tensor) or isinstance(ssl_cluster, torch.Tensor):
        g = torch.as_tensor(ivector_cluster).long()
        c = torch.as_tensor(ssl_cluster).long()
        if bool((c >= k_ssl).any()):
            raise ValueError(f"SSL cluster id >= k_ssl={k_ssl}")
        g, c = torch.broadcast_tensors(g.to(c.device), c)
        return torch.where((g < 0) | (c < 0), torch.full_like(c, -1), g * k_ssl + c)
    g = np.asarray(ivector_cluster, dtype=np.int64)
    c = np.asarray(ssl_cluster, dtype=np.int64)
    if np.any(c >= k_ssl):
        raise ValueError(f"SSL cluster id >= k_ssl={k_ssl}")
    out = np.where((g < 0) | (c < 0), -1, g * k_ssl + c)
    if out.ndim == 0:
        return int(out)
    return out.astype(np.int64)


def classes_table(k_ivector: int, k_ssl: int) -> np.ndarray:
    """``(k_ivector * k_ssl, 2)`` int64; row ``g * k_ssl + c`` is ``(g, c)`` (see :func:`class_index`)."""
    g, c = np.meshgrid(np.arange(int(k_ivector)), np.arange(int(k_ssl)), indexing="ij")
    return np.stack([g.reshape(-1), c.reshape(-1)], axis=1).astype(np.int64)


# ----------------------------------------------------------------------------------------------------
# The streaming counter
# ----------------------------------------------------------------------------------------------------
class ActivationCounter:
    """Accumulates per-class activation counts of every layer, on ``device``, in a stream.

    ``update`` takes one layer's activations of one batch; it is meant to be called from the upstream's
    ``ffn_hook`` (see :meth:`hook`). Frames where ``frame_mask`` is False (padding) or the class id is -1
    are never counted. Frames are counted per layer and must agree across layers at :meth:`result`.
    """

    def __init__(
        self,
        num_classes: int,
        widths: Sequence[int],
        top_fraction: float,
        device: str | torch.device = "cpu",
    ) -> None:
        self.num_classes = int(num_classes)
        if self.num_classes < 1:
            raise ValueError("num_classes must be >= 1")
        self.widths = [int(w) for w in widths]
        if not self.widths:
            raise ValueError("widths must name at least one layer")
        self.top_fraction = float(top_fraction)
        self.K = [top_k_for(w, self.top_fraction) for w in self.widths]
        self.device = torch.device(device)
        c = self.num_classes
        # Flat (classes * width) buffers: one index_add_ of N*K ones per update, no dense mask.
        # Plain (non-inference) tensors, so updates work inside and outside torch.inference_mode().
        with torch.inference_mode(False):
            self._counts = [torch.zeros(c * w, dtype=torch.long, device=self.device) for w in self.widths]
            self._frames = torch.zeros(len(self.widths), c, dtype=torch.long, device=self.device)
        self._updates = [0] * len(self.widths)

    @property
    def num_layers(self) -> int:
        return len(self.widths)

    def update(
        self,
        layer: int,
        acts: torch.Tensor,
        frame_mask: torch.Tensor | None,
        class_ids: torch.Tensor,
    ) -> None:
        """Add one batch of layer ``layer`` (1-based).

        acts ``(B, T, W)`` (or ``(N, W)``), frame_mask ``(B, T)`` bool (None = all valid),
        class_ids ``(B, T)`` int64 in ``[-1, num_classes)``; -1 = ignore the frame. With ``(B, T, Q)`` class
        ids each frame is counted in Q classes (one per partition of the utterances, the top-K computed
        once); a frame whose first id is -1 is ignored.
        """
        li = int(layer) - 1
        if not (0 <= li < self.num_layers):
            raise ValueError(f"layer {layer} out of range 1..{self.num_layers}")
        w = self.widths[li]
        if acts.shape[-1] != w:
            raise ValueError(f"layer {layer}: activations have width {acts.shape[-1]}, expected {w}")
        lead = tuple(acts.shape[:-1])
        if tuple(class_ids.shape[: len(lead)]) != lead or class_ids.dim() > len(lead) + 1:
            raise ValueError(f"class_ids shape {tuple(class_ids.shape)} != activations' {lead} (+ partitions)")
        flat = acts.detach().reshape(-1, w)
        ids = class_ids.reshape(flat.shape[0], -1).to(device=flat.device, dtype=torch.long)  # (N, Q)
        valid = ids[:, 0] >= 0
        if frame_mask is not None:
            if tuple(frame_mask.shape) != lead:
                raise ValueError(f"frame_mask shape {tuple(frame_mask.shape)} != activations' {lead}")
            valid = valid & frame_mask.reshape(-1).to(device=flat.device, dtype=torch.bool)
        bad = ((ids < -1) | (ids >= self.num_classes)).any()
        rows = torch.nonzero(valid).squeeze(1)  # synchronises on CUDA (once per layer and batch)
        if bool(bad):
            raise ValueError(f"class ids must be in [-1, {self.num_classes}); got {ids.min()}..{ids.max()}")
        n = rows.numel()
        if n == 0:
            self._updates[li] += 1
            return
        k = self.K[li]
        # top-K of every row, padding included, then keep the valid rows' (n, k) indices: cheaper than
        # copying the valid rows of the (rows, width) activations first
        idx, nan_rows = _topk_rows(flat, k)
        if n != flat.shape[0]:
            idx = idx.index_select(0, rows)
            ids = ids.index_select(0, rows)
            nan_rows = nan_rows.index_select(0, rows)
        if bool(nan_rows.any()):
            raise ValueError(f"layer {layer}: activations contain NaN")
        keys = (ids.unsqueeze(2) * w + idx.unsqueeze(1)).reshape(-1).to(self.device)  # (n, Q, k)
        buf = self._counts[li]
        buf.index_add_(0, keys, torch.ones(keys.numel(), dtype=torch.long, device=self.device))
        ids_d = ids.reshape(-1).to(self.device)
        self._frames[li].index_add_(0, ids_d, torch.ones(ids_d.numel(), dtype=torch.long, device=self.device))
        self._updates[li] += 1

    def hook(self, class_ids: torch.Tensor) -> Callable[[int, torch.Tensor, torch.Tensor], None]:
        """An ``ffn_hook(layer, acts, frame_mask)`` for ``Upstream.forward`` with these class ids."""

        def _hook(layer: int, acts: torch.Tensor, frame_mask: torch.Tensor) -> None:
            self.update(layer, acts, frame_mask, class_ids)

        return _hook

    def result(self) -> dict[str, Any]:
        """``{"counts": [np (classes, W_l) int64], "frames": np (classes,) int64, "K", "widths",
        "top_fraction"}``. Raises if layers saw different frames (e.g. a layer was never updated)."""
        frames = self._frames.cpu().numpy()
        for li in range(1, self.num_layers):
            if not np.array_equal(frames[li], frames[0]):
                raise RuntimeError(
                    f"frames per class differ between layer 1 ({frames[0].tolist()}) and layer {li + 1} "
                    f"({frames[li].tolist()}); every layer must see every batch"
                )
        counts = [
            buf.reshape(self.num_classes, w).cpu().numpy().astype(np.int64)
            for buf, w in zip(self._counts, self.widths)
        ]
        return {
            "counts": counts,
            "frames": frames[0].astype(np.int64),
            "K": list(self.K),
            "widths": list(self.widths),
            "top_fraction": self.top_fraction,
        }

    def save(self, npz_path: str | os.PathLike, classes: np.ndarray, meta: dict | None = None,
             json_path: str | os.PathLike | None = None, partition_names: Sequence[str] = ()) -> Path:
        """Write the counts (npz) and their JSON (default: beside it, same stem); returns the npz path.

        With `partition_names` (P other partitions of the utterances counted in the same pass: class ids
        ``(B, T, 1 + P)``), the counter's classes are 1 + P blocks of the ``(k_ivector * k_ssl, 2)`` table
        `classes`, the first the partition the sets rest on: the file holds that block as without partitions
        (``counts_l<l>``, ``frames``) and the P others as ``partition_counts_l<l>`` ``(P * classes, width)``
        and ``partition_frames``, which `CountsData.for_partition` slices. Their size is set by P and the
        classes, never by the corpus."""
        res = self.result()
        classes = np.asarray(classes, dtype=np.int64)
        npz_path = Path(npz_path)
        npz_path.parent.mkdir(parents=True, exist_ok=True)
        n = len(classes)
        if classes.ndim != 2 or classes.shape[1] != 2 or n * (1 + len(partition_names)) != self.num_classes:
            raise ValueError(f"classes of shape {classes.shape} and {len(partition_names)} other partition(s) do not "
                             f"fit the counter's {self.num_classes} classes")
        arrays = {f"counts_l{l + 1}": c[:n] for l, c in enumerate(res["counts"])}
        arrays["frames"] = res["frames"][:n]
        if partition_names:
            arrays.update({f"partition_counts_l{l + 1}": c[n:] for l, c in enumerate(res["counts"])})
            arrays["partition_frames"] = res["frames"][n:]
        arrays["classes"] = classes
        save_npz(npz_path, arrays)  # byte-identical for identical counts
        info = dict(meta or {})
        reserved = {"top_fraction", "K", "widths", "num_layers", "num_classes", "total_frames", "format_version"}
        clash = reserved & set(info)
        if clash:
            raise ValueError(f"meta must not set {sorted(clash)}: the counter records them")
        if partition_names:
            info["partitions"] = list(partition_names)
        info.update(
            format_version=FORMAT_VERSION,
            top_fraction=res["top_fraction"],
            K=res["K"],
            widths=res["widths"],
            num_layers=self.num_layers,
            num_classes=self.num_classes,
            total_frames=int(res["frames"].sum()),
        )
        write_json(json_path or counts_json_path(npz_path), info)
        return npz_path
