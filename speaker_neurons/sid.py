"""SUPERB speaker identification (METHOD §9) on a frozen upstream, and verification EER.

The SUPERB SID head is: a learnable softmax-weighted sum of the hidden states hidden_0..hidden_L
(hidden_0 is this project's input of layer 1: projected features plus positional convolution, which
the pruning never touches), a linear projector to 256, mean pooling over the valid frames, and a
linear classifier; cross-entropy, Adam.

Every step before the softmax is linear, so mean-pooling can move to the front:
    mean_t(P(sum_l w_l h_l[t]) + b) = P(sum_l w_l mean_t(h_l[t])) + b.
`pool_layer_means` therefore runs the upstream once per model and keeps one (L+1, d) matrix per
segment; training and evaluating the head then costs seconds. `SIDHead.forward_frames` is the
frame-level path; the tests prove both give the same logits.

Segments: whole utterances (SUPERB's test protocol; the default on every corpus but the demo), or
(`crop_seconds`) consecutive crops of that length (a remainder shorter than half a crop is dropped);
short crops keep the small demo away from the ceiling (`crop_seconds: auto`).

Bounded memory: the pooled store is float16 (accumulated in float32), written into a memory map as the
segments are pooled and stored uncompressed, so that training and scoring read it by memory map, one
mini-batch or chunk at a time (`load_pooled`): VoxCeleb1 on whole utterances is 3 GB, and sid_eval needs
that (as page cache) plus a constant.

Results: test accuracy per seed with a Wilson 95% interval, the mean over seeds with a t-interval, the
learning rate picked on dev, the layer weights; EER of cosine scores of the 256-d pooled embeddings on
a verification list (VoxCeleb1's veri_test2.txt, `sid.veri_list`) or on a seeded sample of test
segment pairs (`sid.max_trials`; every pair when there are fewer).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from torch import nn

from speaker_neurons.statistics import eer_interval, mean_interval, wilson_interval
from speaker_neurons.utils import get_logger, write_json

log = get_logger("sid")

#: Rows of the pooled store read at once when scoring (about 64 MB of float32 per chunk, whatever the corpus).
_CHUNK_BYTES = 1 << 26

# The layer sets a SID head can read (config sid.layer_sets), defined once: all = SUPERB's
# hidden_0..hidden_L; layers_1_L = the layer outputs only; last = hidden_L, where pruning acts most;
# hidden_0 = the input of layer 1 alone, which no FFN pruning touches (the input-only control).
_LAYER_SETS = {"all": lambda L: list(range(L + 1)), "layers_1_L": lambda L: list(range(1, L + 1)),
               "last": lambda L: [L], "hidden_0": lambda L: [0]}
LAYER_SETS = tuple(_LAYER_SETS)


def layer_set(name: str, num_layers: int) -> list[int]:
    """The hidden-state indices of layer set `name` for a model of `num_layers` layers."""
    if name not in _LAYER_SETS:
        raise ValueError(f"unknown SID layer set {name!r}; known: {', '.join(LAYER_SETS)}")
    return _LAYER_SETS[name](int(num_layers))


def layer_sets(names: Sequence[str], num_layers: int) -> dict[str, list[int]]:
    """{name: hidden-state indices} of the configured layer sets (sid.layer_sets) for `num_layers` layers."""
    return {n: layer_set(n, num_layers) for n in names}


def rates_of(result_json: str | os.PathLike, names: Sequence[str]) -> dict[str, float]:
    """The learning rate picked for each of `names` in a model's sid.json or pr.json (sid.sweep: base
    hands a derived model the rates of the model it comes from)."""
    import json

    rec = json.loads(Path(result_json).read_text())
    rec = rec.get("layer_sets", rec)  # pr.json nests its sets
    return {n: float(rec[n]["lr"]) for n in names if isinstance(rec.get(n), dict) and "lr" in rec[n]}


# ------------------------------------------------------------------------------------------- segments
def crop_of(crop_seconds: float | str | None, corpus_source: str) -> float | None:
    """sid.crop_seconds resolved for a corpus of source `corpus_source`: auto = its recipe's `sid_crop_seconds`
    (0.5 s on the synthesized demo, whose few short utterances would put whole-utterance SID at the
    ceiling; None, whole utterances as SUPERB scores, on every other corpus); a number or None as given."""
    if crop_seconds == "auto":
        from speaker_neurons.data.recipes import recipe

        return recipe(corpus_source).sid_crop_seconds
    if isinstance(crop_seconds, str):
        raise ValueError(f"sid.crop_seconds must be a number of seconds, null or auto, not {crop_seconds!r}")
    return None if crop_seconds is None else float(crop_seconds)


def segments(manifest: pd.DataFrame, crop_seconds: float | None, sample_rate: int,
             min_crop_fraction: float) -> pd.DataFrame:
    """One row per segment: seg_id, utt_id, path, speaker, split, start, end (samples at `sample_rate`, the
    rate the audio is decoded at: the model's), sorted. An utterance's last crop is kept when it holds at
    least `min_crop_fraction` of a crop (sid.min_crop_fraction)."""
    rows = []
    for r in manifest.sort_values("utt_id", kind="stable").itertuples(index=False):
        n = int(round(float(r.duration) * sample_rate))
        if not crop_seconds:
            bounds = [(0, n)]
        else:
            c = int(round(crop_seconds * sample_rate))
            bounds = [(s, min(s + c, n)) for s in range(0, n, c) if min(s + c, n) - s >= c * min_crop_fraction]
        for i, (s, e) in enumerate(bounds):
            rows.append((f"{r.utt_id}#{i}", r.utt_id, r.path, r.speaker, r.split, s, e))
    return pd.DataFrame(rows, columns=["seg_id", "utt_id", "path", "speaker", "split", "start", "end"])


@torch.inference_mode()
def pool_layer_means(model, segs: pd.DataFrame, *, max_batch_seconds: float, max_batch_size: int = 32,
                     progress: bool = True, feature_cache: dict | None = None, out: np.ndarray | None = None,
                     amp: bool | str = False) -> np.ndarray:
    """(segments, L+1, d): each hidden layer's mean over the segment's valid frames, accumulated in
    float32; returned as a new float32 array, or written into `out` (e.g. a float16 memory map: rule
    pool_layers never holds the store in memory) and `out` returned. `amp` (config upstream.amp) runs
    the upstream under `utils.inference_autocast`; False = float32.

    Crops of one file take the fast path where the model can slice them from the file's features
    (`segment_features`, MelHuBERT: exact): each file is decoded and featurised once instead of once
    per crop. `feature_cache` (a dict, kept by the caller) keeps those features between calls on the
    same segments: an erase ablation runs many variants of one model over the same test segments."""
    from tqdm import tqdm

    from speaker_neurons.utils import inference_autocast

    shape = (len(segs), model.num_layers + 1, model.hidden_dim)
    if out is None:
        out = np.zeros(shape, dtype=np.float32)
    elif tuple(out.shape) != shape:
        raise ValueError(f"pool_layer_means: `out` has shape {tuple(out.shape)}, the segments need {shape}")
    bar = tqdm(total=len(segs), desc="pooled layers", unit="seg", disable=not progress, mininterval=5)
    device = next(model.parameters()).device
    with inference_autocast(device, amp):
        if hasattr(model, "segment_features") and len(segs) > segs["path"].nunique():
            _pool_from_features(model, segs, out, max_batch_seconds, max_batch_size, bar, device, feature_cache)
        else:
            _pool_from_audio(model, segs, out, max_batch_seconds, max_batch_size, bar, device)
    bar.close()
    return out


def _pool_into(out: np.ndarray, idx: Sequence[int], o) -> None:
    mask = o.frame_mask().unsqueeze(-1).float()  # (B, T, 1)
    n = mask.sum(1).clamp_min(1.0)  # (B, 1)
    means = torch.stack([(h.detach().float() * mask).sum(1) / n for h in o.hidden], 1).cpu().numpy()  # (B, L+1, d)
    if means.dtype != out.dtype:
        with np.errstate(over="ignore"):
            means = means.astype(out.dtype)
        if not np.isfinite(means).all():
            raise FloatingPointError(f"a layer mean is beyond the range of {out.dtype} (|x| > "
                                     f"{float(np.finfo(out.dtype).max):g}): this model's hidden states cannot be "
                                     "stored in the float16 pooled store")
    out[np.asarray(idx)] = means


def _pool_from_audio(model, segs, out, max_batch_seconds, max_batch_size, bar, device) -> None:
    from speaker_neurons.batching import audio_batches

    items = pd.DataFrame({"utt_id": segs["seg_id"], "path": segs["path"], "start": segs["start"],
                          "end": segs["end"], "duration": (segs["end"] - segs["start"]) / model.sample_rate})
    row = {s: i for i, s in enumerate(segs["seg_id"])}
    for batch in audio_batches(items, max_batch_seconds, model.sample_rate, max_batch_size=max_batch_size):
        idx = [row[s] for s in batch.utt_ids]
        _pool_into(out, idx, model(batch.wavs.to(device), batch.lengths.to(device), return_ffn=False))
        bar.update(len(idx))


def _pool_from_features(model, segs, out, max_batch_seconds, max_batch_size, bar, device, cache) -> None:
    """Files in segment order, features sliced per crop (or, where the model cannot slice them exactly,
    computed per crop), crops encoded in batches."""
    from speaker_neurons.audio import load_audio

    by_path: dict[str, list[int]] = {}
    for i, p in enumerate(segs["path"].astype(str)):
        by_path.setdefault(p, []).append(i)
    starts, ends = segs["start"].to_numpy(), segs["end"].to_numpy()
    feats: dict[int, torch.Tensor] = {} if cache is None else cache
    pending: list[int] = []

    def flush():
        if not pending:
            return
        x = [feats[i] for i in pending]
        lengths = torch.tensor([len(f) for f in x], dtype=torch.long)
        batch = torch.zeros(len(x), int(lengths.max()), x[0].shape[1])
        for b, f in enumerate(x):
            batch[b, : len(f)] = f
        _pool_into(out, pending, model.encode(batch.to(device), lengths.to(device), return_ffn=False))
        bar.update(len(pending))
        if cache is None:
            for i in pending:
                del feats[i]
        pending.clear()

    seconds = 0.0
    for path, rows in by_path.items():
        if any(i not in feats for i in rows):
            wav = torch.from_numpy(load_audio(path, model.sample_rate)[0])
            bounds = [(int(starts[i]), int(ends[i])) for i in rows]
            sliced = model.segment_features(wav.to(device), bounds)
            if sliced is None:  # not sliceable exactly: each crop's own features, as the audio path computes them
                sliced = [model.extract_features(wav[s:e].reshape(1, -1).to(device))[0][0] for s, e in bounds]
            feats.update({i: f.cpu() for i, f in zip(rows, sliced)})
        for i in rows:
            dur = (ends[i] - starts[i]) / model.sample_rate
            if pending and (len(pending) >= max_batch_size or seconds + dur > max_batch_seconds):
                flush()
                seconds = 0.0
            pending.append(i)
            seconds += dur
    flush()


def check_splits(segs: pd.DataFrame, manifest_path: str = "the manifest") -> None:
    """SID needs speakers and train, dev and test segments; say which is missing and how to fix it."""
    have = segs.groupby("split")["speaker"].nunique().to_dict() if len(segs) else {}
    missing = [s for s in ("train", "dev", "test") if not have.get(s)]
    unnamed = segs["speaker"].isna().all() or (segs["speaker"].astype(str).str.strip() == "").all() if len(segs) else True
    if unnamed or missing:
        what = "no speaker names" if unnamed else f"no {'/'.join(missing)} segments"
        raise ValueError(f"{manifest_path}: SID evaluation needs speakers and a train/dev/test split, but it has {what}. "
                         "Give the corpus `speaker` and `split` columns (tsv source), or set sid.enabled: false "
                         "(and erase.enabled: false) in the config.")


# ------------------------------------------------------------------------------------------- the head
class SIDHead(nn.Module):
    """Softmax-weighted sum of the chosen layers -> linear 256 -> mean over frames -> linear classes."""

    def __init__(self, layers: Sequence[int], dim: int, n_classes: int, proj_dim: int = 256):
        super().__init__()
        self.layers = list(layers)
        self.layer_logits = nn.Parameter(torch.zeros(len(self.layers)))
        self.projector = nn.Linear(dim, proj_dim)
        self.classifier = nn.Linear(proj_dim, n_classes)

    def weights(self) -> torch.Tensor:
        return torch.softmax(self.layer_logits, 0)

    def embed(self, pooled: torch.Tensor) -> torch.Tensor:
        """(B, L+1, d) layer means -> (B, proj_dim) pooled embeddings."""
        x = (self.weights()[None, :, None] * pooled[:, self.layers]).sum(1)
        return self.projector(x)

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.embed(pooled))

    def forward_frames(self, hidden: Sequence[torch.Tensor], frame_mask: torch.Tensor) -> torch.Tensor:
        """The frame-level path: hidden = L+1 tensors (B, T, d), frame_mask (B, T) bool."""
        stacked = torch.stack([hidden[l] for l in self.layers], 0)  # (K, B, T, d)
        x = (self.weights()[:, None, None, None] * stacked).sum(0)
        z = self.projector(x)  # (B, T, proj)
        m = frame_mask.unsqueeze(-1).to(z.dtype)
        return self.classifier((z * m).sum(1) / m.sum(1).clamp_min(1.0))


# ------------------------------------------------------------------------------------------- intervals
# ------------------------------------------------------------------------------------------- training
@dataclass
class SIDData:
    pooled: np.ndarray  # (N, L+1, d)
    labels: np.ndarray  # (N,) int64 index into `speakers`; -1 = a speaker with no train segment (unenrolled)
    split: np.ndarray  # (N,) str
    speakers: list[str]  # the enrolled speakers (those with train segments), sorted
    speaker_of: np.ndarray | None = None  # (N,) str: every segment's speaker, enrolled or not (for trials)
    utt_id: np.ndarray | None = None  # (N,) str: each segment's utterance (verification lists name utterances)

    def trial_speakers(self) -> np.ndarray:
        if self.speaker_of is not None:
            return self.speaker_of
        return np.where(self.labels >= 0, self.labels.astype(str), np.char.add("?", np.arange(len(self.labels)).astype(str)))


def make_data(pooled: np.ndarray, segs: pd.DataFrame) -> SIDData:
    """Labels: each segment's index among the enrolled speakers (those with train segments), -1 else."""
    speakers = sorted(segs.loc[segs["split"] == "train", "speaker"].astype(str).unique())
    index = {s: i for i, s in enumerate(speakers)}
    spk = segs["speaker"].astype(str).to_numpy()
    labels = np.array([index.get(s, -1) for s in spk], dtype=np.int64)
    utt = segs["utt_id"].astype(str).to_numpy() if "utt_id" in segs else None
    return SIDData(pooled, labels, segs["split"].astype(str).to_numpy(), speakers, spk, utt)


def _stored_member(path: str | os.PathLike, name: str) -> np.ndarray | None:
    """The npz member `name` as a read-only memory map where it is stored uncompressed (as rule
    pool_layers writes it: np.load would read it whole); None where it is compressed."""
    import struct
    import zipfile

    with zipfile.ZipFile(path) as zf:
        info = zf.getinfo(f"{name}.npy")
    if info.compress_type != zipfile.ZIP_STORED:
        return None
    with open(path, "rb") as f:
        f.seek(info.header_offset)
        local = f.read(30)
        if local[:4] != b"PK\x03\x04":
            raise ValueError(f"{path}: {name}.npy has no local zip header where the directory says; "
                             "re-run rule pool_layers")
        name_len, extra_len = struct.unpack("<HH", local[26:30])
        f.seek(info.header_offset + 30 + name_len + extra_len)
        version = np.lib.format.read_magic(f)
        read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, fortran, dtype = read_header(f)
        offset = f.tell()
    if dtype.hasobject:
        raise ValueError(f"{path}: {name}.npy holds Python objects; re-run rule pool_layers")
    if int(np.prod(shape)) == 0:
        return np.zeros(shape, dtype=dtype)
    return np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=shape, order="F" if fortran else "C")


def load_pooled(path: str | os.PathLike) -> tuple[SIDData, int]:
    """(the SID data, the number of layers L) of a `pooled_layers.npz` that rule pool_layers wrote. The
    pooled layers (float16; float32 in files of older versions) stay on disk as a read-only memory map:
    train and score by rows (`_rows`), never all at once."""
    with np.load(path) as z:
        segs = pd.DataFrame({c: z[c] for c in ("seg_id", "utt_id", "speaker", "split") if c in z.files})
        pooled = _stored_member(path, "pooled")
        if pooled is None:  # a compressed npz (not written by the workflow): read whole
            log.warning("%s is compressed: its pooled layers are read into memory", path)
            pooled = z["pooled"]
    check_finite(pooled, path)
    return make_data(pooled, segs), pooled.shape[1] - 1


def check_finite(pooled: np.ndarray, path: str | os.PathLike, chunk_bytes: int = 1 << 26) -> None:
    """Stop on pooled features that are not finite (NaN or inf: a damaged file, an overflow), naming the file
    and the first rows (segments): scored, they would give a meaningless accuracy without an error. Read in
    chunks of about 64 MB, so memory stays flat."""
    row_bytes = max(1, int(np.prod(pooled.shape[1:])) * pooled.dtype.itemsize)
    step = max(1, chunk_bytes // row_bytes)
    bad: list[int] = []
    for s in range(0, len(pooled), step):
        block = np.asarray(pooled[s : s + step])
        ok = np.isfinite(block).reshape(len(block), -1).all(1)
        if not ok.all():
            bad += (s + np.flatnonzero(~ok)).tolist()
            if len(bad) >= 5:
                break
    if bad:
        raise ValueError(f"{path}: pooled features of row(s) {bad[:5]} are not finite (NaN or inf): the file is "
                         "damaged or the model overflowed; remove it and re-run rule pool_layers")


def pooled_crop_seconds(path: str | os.PathLike) -> float | None:
    """The crop length the pooled file's segments were cut at (None: whole utterances)."""
    with np.load(path) as z:
        if "crop_seconds" not in z.files:
            return None
        c = float(z["crop_seconds"])
    return None if np.isnan(c) else c


def _rows(pooled: np.ndarray, rows: np.ndarray, device: str | torch.device = "cpu") -> torch.Tensor:
    """Rows of the pooled store as float32 on `device`: read in ascending order (sequential on a memory
    map), moved in the store's dtype (float16: half the bytes to a GPU), converted there."""
    rows = np.asarray(rows, dtype=np.int64)
    if len(rows) > 1 and (np.diff(rows) < 0).any():
        u, inv = np.unique(rows, return_inverse=True)
        x = np.asarray(pooled[u])[inv]
    else:
        x = np.array(pooled[rows])
    return torch.from_numpy(np.ascontiguousarray(x)).to(device, non_blocking=True).float()


def _chunks(rows: np.ndarray, row_floats: int) -> list[np.ndarray]:
    """`rows` in chunks of about _CHUNK_BYTES of float32 at `row_floats` values per row."""
    size = max(1, _CHUNK_BYTES // (4 * max(1, row_floats)))
    return [rows[s : s + size] for s in range(0, len(rows), size)]


@dataclass(frozen=True)
class HeadSpec:
    layers: tuple[int, ...]
    lr: float
    seed: int


def _bank_init(specs: Sequence[HeadSpec], K: int, d: int, n: int) -> dict[str, torch.Tensor]:
    """Stacked parameters, head h initialised exactly as `SIDHead` is under torch.manual_seed(seed_h)."""
    parts: dict[str, list[torch.Tensor]] = {"logits": [], "pw": [], "pb": [], "cw": [], "cb": []}
    for s in specs:
        torch.manual_seed(s.seed)
        h = SIDHead(s.layers, d, n)
        parts["logits"].append(torch.zeros(K))  # SIDHead starts at zero logits; excluded layers are masked
        parts["pw"].append(h.projector.weight.detach())
        parts["pb"].append(h.projector.bias.detach())
        parts["cw"].append(h.classifier.weight.detach())
        parts["cb"].append(h.classifier.bias.detach())
    return {k: torch.stack(v).clone().requires_grad_(True) for k, v in parts.items()}


def train_heads(data: SIDData, specs: Sequence[HeadSpec], epochs: int, batch_size: int = 64, *,
                steps: int | None = None, grad_clip: float | None = None, eval_every: int | None = None,
                device: str | torch.device = "cpu", progress: bool = False) -> list[SIDHead]:
    """Train many SID heads at once, each exactly as if alone: its own initialisation and sample order
    (from its seed), its own Adam state and learning rate, its own layers (the others masked out of
    its softmax), its own gradient-norm clipping. Heads share nothing, so one stacked pass replaces
    len(specs) small loops: the whole learning-rate sweep x seeds x layer sets of one model trains at
    once. Only train segments of enrolled speakers are used (every train segment, by construction of
    `make_data`).

    Schedule (config sid): `steps` Adam steps of `batch_size` (None: `epochs` passes over the train
    segments; the order is reshuffled at each pass), each head's gradient norm clipped to `grad_clip`
    (None: no clipping; as torch.nn.utils.clip_grad_norm_), and with `eval_every` the dev accuracy of
    every head every that many steps and at the last, each head ending at its best-dev state (the
    earliest of ties; None: the last state). Each returned head carries `best_step` and `dev_accuracy`
    (at that step; None without `eval_every`).

    Memory: the pooled store is read one mini-batch of rows at a time (float16 -> float32 per batch),
    so a memory-mapped store is never loaded; heads that share a seed share their rows. On `device`
    (CUDA where there is one) the heads train there, the rows moved per batch.

    Adam (betas 0.9/0.999, eps 1e-8, bias-corrected) is written out because the learning rate differs
    per head; tests check it against torch.optim.Adam on a lone SIDHead."""
    from tqdm import tqdm

    if not specs:
        return []
    dev = torch.device(device)
    H, K, d = len(specs), data.pooled.shape[1], data.pooled.shape[2]
    n = len(data.speakers)
    tr = np.flatnonzero((data.split == "train") & (data.labels >= 0))
    if len(tr) == 0:
        raise ValueError("SID heads need train segments of enrolled speakers; there are none")
    params = {k: v.detach().to(dev).requires_grad_(True) for k, v in _bank_init(specs, K, d, n).items()}
    mask = torch.zeros(H, K, dtype=torch.bool)
    for h, s in enumerate(specs):
        mask[h, list(s.layers)] = True
    mask = mask.to(dev)
    lr = torch.tensor([s.lr for s in specs], dtype=torch.float32, device=dev)
    seeds = sorted({s.seed for s in specs})  # heads of one seed see the same rows in the same order
    groups = [[h for h, s in enumerate(specs) if s.seed == sd] for sd in seeds]
    order = torch.tensor([h for g in groups for h in g], device=dev)
    back = torch.argsort(order)
    gens = [torch.Generator().manual_seed(sd) for sd in seeds]
    state = {k: (torch.zeros_like(v), torch.zeros_like(v)) for k, v in params.items()}
    b1, b2, eps, step = 0.9, 0.999, 1e-8, 0
    total = int(steps) if steps is not None else int(epochs) * -(-len(tr) // batch_size)
    dev_rows = closed_set(data, "dev") if eval_every else np.zeros(0, np.int64)
    best = {k: v.detach().clone() for k, v in params.items()} if eval_every else params
    best_acc = torch.full((H,), -1.0, device=dev)
    best_step = torch.full((H,), total, dtype=torch.long, device=dev)
    bar = tqdm(total=total, desc=f"{H} SID heads", unit="step", disable=not progress, mininterval=5)
    while step < total:
        perms = [torch.randperm(len(tr), generator=g).numpy() for g in gens]
        for s0 in range(0, len(tr), batch_size):
            if step >= total:
                break
            rows = [tr[p[s0 : s0 + batch_size]] for p in perms]  # per seed
            x = _rows(data.pooled, np.concatenate(rows), dev).view(len(seeds), -1, K, d)
            y = torch.from_numpy(np.stack([data.labels[r] for r in rows])).to(dev)  # (seeds, B)
            w = torch.softmax(params["logits"].masked_fill(~mask, float("-inf")), dim=1)
            z = torch.cat([torch.einsum("hk,bkd->hbd", w[g], x[i]) for i, g in enumerate(groups)])[back]
            z = torch.einsum("hbd,hpd->hbp", z, params["pw"]) + params["pb"][:, None]
            o = torch.einsum("hbp,hnp->hbn", z, params["cw"]) + params["cb"][:, None]
            yh = torch.cat([y[i].expand(len(g), -1) for i, g in enumerate(groups)])[back]  # (H, B)
            loss = nn.functional.cross_entropy(o.reshape(-1, n), yh.reshape(-1), reduction="none")
            loss = loss.view(H, -1).mean(1).sum()  # each head's own mean loss; their sum separates the gradients
            grads = list(torch.autograd.grad(loss, list(params.values())))
            if grad_clip is not None:  # each head's own norm over all its parameters
                norm = torch.stack([g.reshape(H, -1).pow(2).sum(1) for g in grads]).sum(0).sqrt()
                coef = (float(grad_clip) / (norm + 1e-6)).clamp(max=1.0)
                grads = [g * coef.view(-1, *[1] * (g.dim() - 1)) for g in grads]
            step += 1
            with torch.no_grad():
                step_size, bc2 = lr / (1 - b1**step), (1 - b2**step) ** 0.5  # torch.optim.Adam's arithmetic
                for (k, p), g in zip(params.items(), grads):
                    m, v = state[k]
                    m.mul_(b1).add_(g, alpha=1 - b1)
                    v.mul_(b2).addcmul_(g, g, value=1 - b2)
                    denom = v.sqrt().div_(bc2).add_(eps)
                    p.sub_(m.div(denom).mul_(step_size.view(-1, *[1] * (p.dim() - 1))))
                if eval_every and (step % int(eval_every) == 0 or step == total):
                    acc = _bank_accuracy(params, mask, data, dev_rows)
                    better = acc > best_acc
                    for k, p in params.items():
                        best[k][better] = p[better]
                    best_acc = torch.where(better, acc, best_acc)
                    best_step = torch.where(better, torch.full_like(best_step, step), best_step)
            bar.update(1)
    bar.close()
    final = best
    heads = []
    for h, s in enumerate(specs):
        head = SIDHead(s.layers, d, n)
        with torch.no_grad():
            head.layer_logits.copy_(final["logits"][h, list(s.layers)].cpu())
            head.projector.weight.copy_(final["pw"][h].cpu())
            head.projector.bias.copy_(final["pb"][h].cpu())
            head.classifier.weight.copy_(final["cw"][h].cpu())
            head.classifier.bias.copy_(final["cb"][h].cpu())
        head.best_step = int(best_step[h])
        head.total_steps = total
        head.dev_accuracy = float(best_acc[h]) if eval_every else None
        heads.append(head.eval())
    return heads


@torch.no_grad()
def _bank_accuracy(params: Mapping[str, torch.Tensor], mask: torch.Tensor, data: SIDData,
                   rows: np.ndarray) -> torch.Tensor:
    """(H,) accuracy of every head of a stacked bank on `rows` (segments of enrolled speakers), read in chunks."""
    H, K = mask.shape
    d, n = params["pw"].shape[2], params["cw"].shape[1]
    dev = mask.device
    correct = torch.zeros(H, device=dev)
    w = torch.softmax(params["logits"].masked_fill(~mask, float("-inf")), dim=1)
    for c in _chunks(rows, K * d + H * (d + n)):
        x = _rows(data.pooled, c, dev)
        z = torch.einsum("hk,bkd->hbd", w, x)
        z = torch.einsum("hbd,hpd->hbp", z, params["pw"]) + params["pb"][:, None]
        o = torch.einsum("hbp,hnp->hbn", z, params["cw"]) + params["cb"][:, None]
        correct += (o.argmax(2) == torch.from_numpy(data.labels[c]).to(dev)).sum(1)
    return correct / max(len(rows), 1)


def closed_set(data: SIDData, split: str) -> np.ndarray:
    """Indices of `split` segments of enrolled speakers: closed-set identification counts only these."""
    return np.flatnonzero((data.split == split) & (data.labels >= 0))


@torch.no_grad()
def predict(head: SIDHead, data: SIDData, split: str, pooled: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(segment rows, predicted speaker index) over the split's segments of enrolled speakers, read in
    chunks, on the head's device. `pooled` replaces data.pooled (the same segments seen through another
    model, e.g. an erased one)."""
    sel = closed_set(data, split)
    x = data.pooled if pooled is None else pooled
    if len(sel) == 0:
        return sel, np.zeros(0, dtype=np.int64)
    dev = next(head.parameters()).device
    pred = np.concatenate([head(_rows(x, c, dev)).argmax(1).cpu().numpy()
                           for c in _chunks(sel, x.shape[1] * x.shape[2])])
    return sel, pred


def accuracy(head: SIDHead, data: SIDData, split: str, pooled: np.ndarray | None = None) -> tuple[int, int]:
    """(correct, n) over the split's segments of enrolled speakers (`predict`)."""
    sel, pred = predict(head, data, split, pooled)
    return int((pred == data.labels[sel]).sum()), int(len(sel))


#: Columns of a SID evaluation's per-item test predictions (rule sid_eval's `predictions.tsv`)
PREDICTION_COLUMNS = ("layer_set", "seed", "item", "utt_id", "speaker", "prediction", "correct")


def predictions_table(data: SIDData, picked: Mapping[str, Sequence[SIDHead]], seeds: Sequence[int]) -> pd.DataFrame:
    """Every picked head's prediction on every closed-set test item: layer set, head seed, item (the
    segment's row in the pooled file), its utterance and speaker, the predicted speaker, and whether it
    is right. Any comparison of two models scored on the same items can be recomputed from these."""
    parts = []
    for nm, heads in picked.items():
        for sd, head in zip(seeds, heads):
            sel, pred = predict(head, data, "test")
            utt = data.utt_id[sel] if data.utt_id is not None else sel.astype(str)
            parts.append(pd.DataFrame({"layer_set": nm, "seed": int(sd), "item": sel, "utt_id": utt,
                                       "speaker": np.asarray(data.speakers, dtype=object)[data.labels[sel]],
                                       "prediction": np.asarray(data.speakers, dtype=object)[pred],
                                       "correct": (pred == data.labels[sel]).astype(np.int8)}))
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=PREDICTION_COLUMNS)


@torch.no_grad()
def embeddings(head: SIDHead, pooled: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """(len(rows), proj_dim) float32: the head's pooled embeddings of those rows, read in chunks, on the
    head's device."""
    out = np.zeros((len(rows), head.projector.out_features), dtype=np.float32)
    dev = next(head.parameters()).device
    s = 0
    for c in _chunks(np.asarray(rows, dtype=np.int64), pooled.shape[1] * pooled.shape[2]):
        out[s : s + len(c)] = head.embed(_rows(pooled, c, dev)).cpu().numpy()
        s += len(c)
    return out


# ------------------------------------------------------------------------------------------- verification
def read_veri_list(path: str | os.PathLike) -> pd.DataFrame:
    """A VoxCeleb1 verification list (veri_test2.txt: lines `<1|0> <enrol> <test>`, paths relative to wav/,
    `id10270/5r0dWxy17C8/00001.wav`) as columns label, enrol, test, the paths mapped to the manifest's
    utt_ids (`<id>-<youtube id>-<n>`, as `data.manifest.voxceleb1_manifest` names them)."""
    rows = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            parts = line.split()
            if not parts:
                continue
            if len(parts) != 3 or parts[0] not in ("0", "1") or any(p.count("/") != 2 for p in parts[1:]):
                raise ValueError(f"{path}, line {n}: expected `<1|0> <id>/<youtube-id>/<n>.wav "
                                 "<id>/<youtube-id>/<n>.wav` "
                                 f"(VoxCeleb1's veri_test2.txt), got {line.strip()!r}; fix sid.veri_list")
            utt = [p.rsplit(".", 1)[0].replace("/", "-") for p in parts[1:]]
            rows.append((int(parts[0]), *utt))
    if not rows:
        raise ValueError(f"{path} holds no trials; fix sid.veri_list (or set it to '' for sampled trials)")
    return pd.DataFrame(rows, columns=["label", "enrol", "test"])


def veri_trials(veri: pd.DataFrame, data: SIDData, max_absent: float, path: str | os.PathLike = "the verification list"
                ) -> tuple[pd.DataFrame, int]:
    """(the trials whose two utterances the pooled store holds, the number left out). More than
    `max_absent` (a fraction, sid.max_veri_absent) of the trials left out is an error naming the list."""
    if data.utt_id is None:
        raise ValueError("the pooled file has no utt_id column (written by an older version); re-run rule pool_layers")
    have = set(data.utt_id.tolist())
    ok = veri["enrol"].isin(have) & veri["test"].isin(have)
    absent = int((~ok).sum())
    if absent > max_absent * len(veri):
        missing = sorted(set(veri.loc[~ok, ["enrol", "test"]].to_numpy().ravel()) - have)
        raise ValueError(f"{path}: {absent} of {len(veri)} trials name utterances the SID corpus lacks (more than "
                         f"sid.max_veri_absent = {max_absent:g}), e.g. {', '.join(missing[:5])}. Use the list of "
                         "this corpus (VoxCeleb1's veri_test2.txt with its test archive), raise sid.max_veri_absent, "
                         "or set sid.veri_list: '' to score a sample of test pairs")
    if absent:
        log.warning("%d of %d trials of %s name utterances the SID corpus lacks: left out", absent, len(veri), path)
    return veri[ok].reset_index(drop=True), absent


@torch.no_grad()
def verification_eer(head: SIDHead, data: SIDData, split: str = "test", max_trials: int | None = None, seed: int = 0,
                     trials: pd.DataFrame | None = None) -> dict[str, Any]:
    """EER of cosine scores of the head's 256-d embeddings, with the trial counts. With `trials` (label,
    enrol, test utt_ids: `veri_trials`) on those, each utterance embedded as the mean of its segments'
    embeddings (any split); else on pairs of the split's segments (enrolled or not: verification needs
    no enrolment): every pair, or a seeded sample of `max_trials` (`evaluation.trial_pairs`)."""
    from speaker_neurons.evaluation import cosine_scores, equal_error_rate, trial_pairs

    if trials is not None:
        names = np.unique(np.r_[trials["enrol"].to_numpy(str), trials["test"].to_numpy(str)])
        rows = np.flatnonzero(np.isin(data.utt_id, names))
        which = np.searchsorted(names, data.utt_id[rows])
        emb = np.zeros((len(names), head.projector.out_features), dtype=np.float64)
        np.add.at(emb, which, embeddings(head, data.pooled, rows))
        emb /= np.bincount(which, minlength=len(names))[:, None]
        i = np.searchsorted(names, trials["enrol"].to_numpy(str))
        j = np.searchsorted(names, trials["test"].to_numpy(str))
        scores, labels = cosine_scores(emb, i, j), trials["label"].to_numpy(np.int8)
    else:
        sel = np.flatnonzero(data.split == split)
        spk = data.trial_speakers()[sel]
        i, j = trial_pairs(spk, max_trials, seed)
        scores = cosine_scores(embeddings(head, data.pooled, sel), i, j)
        labels = (spk[i] == spk[j]).astype(np.int8)
    n_t = int(labels.sum())
    eer = equal_error_rate(scores, labels) if 0 < n_t < len(labels) else None
    ci = list(eer_interval(eer, n_t)) if eer is not None else None
    return {"eer": eer, "eer_ci95": ci, "target_trials": n_t, "nontarget_trials": int(len(labels) - n_t)}


def evaluate(data: SIDData, layer_sets: dict[str, Sequence[int]], lrs: Sequence[float], seeds: Sequence[int],
             epochs: int, fixed_lr: dict[str, float] | None = None, *, batch_size: int = 64, steps: int | None = None,
             grad_clip: float | None = None, eval_every: int | None = None, max_trials: int | None = None,
             trial_seed: int = 0, trials: pd.DataFrame | None = None, device: str | torch.device = "cpu",
             progress: bool = False) -> tuple[dict[str, Any], dict[str, list[SIDHead]]]:
    """Per layer set: the learning rate picked on dev accuracy of the first seed's heads, then the other
    seeds at that rate (each group of heads trained at once, `train_heads`, on the schedule `batch_size`,
    `steps` or `epochs`, `grad_clip`, `eval_every`); test accuracy per seed at that rate with Wilson
    intervals, their mean with a t-interval, the layer weights, and the verification EER of the first
    seed's head (on `trials`, or on `max_trials` sampled test pairs with `trial_seed`).
    `fixed_lr` ({layer set: rate}, e.g. the rates picked for the unpruned parent) skips the sweep for
    the sets it names: their heads train at that rate only (dev accuracy still reported).
    Returns (the result, the picked heads per layer set, one per seed)."""
    lrs, seeds = [float(x) for x in lrs], [int(x) for x in seeds]
    names = list(layer_sets)
    fixed = {nm: float(fixed_lr[nm]) for nm in names if fixed_lr and nm in fixed_lr}
    swept = [nm for nm in names if nm not in fixed]
    sched = dict(batch_size=int(batch_size), steps=steps, grad_clip=grad_clip, eval_every=eval_every, device=device,
                 progress=progress)
    # two stacked passes: the sweep (every swept set x rate, first seed; every seed of the fixed sets), then
    # the other seeds of the swept sets at their picked rates
    first = [HeadSpec(tuple(layer_sets[nm]), lr, seeds[0]) for nm in swept for lr in lrs]
    first += [HeadSpec(tuple(layer_sets[nm]), fixed[nm], sd) for nm in fixed for sd in seeds]
    trained = {sp: h.to(device) for sp, h in zip(first, train_heads(data, first, epochs, **sched))}  # scored there
    best_lr, dev_acc = dict(fixed), {}
    for nm in names:
        dev = {}
        for lr in ([fixed[nm]] if nm in fixed else lrs):
            c, n = accuracy(trained[HeadSpec(tuple(layer_sets[nm]), lr, seeds[0])], data, "dev")
            dev[lr] = c / max(n, 1)
        dev_acc[nm] = dev
        if nm not in fixed:
            best_lr[nm] = max(lrs, key=lambda lr: (dev[lr], -lr))
    rest = [HeadSpec(tuple(layer_sets[nm]), best_lr[nm], sd) for nm in swept for sd in seeds[1:]]
    trained.update((sp, h.to(device)) for sp, h in zip(rest, train_heads(data, rest, epochs, **sched)))
    n_test = int((data.split == "test").sum())
    n_closed = len(closed_set(data, "test"))
    out: dict[str, Any] = {"speakers": len(data.speakers),
                           "segments": {s: int((data.split == s).sum()) for s in ("train", "dev", "test")},
                           "test_closed_set": n_closed, "test_unenrolled": n_test - n_closed}
    if n_test > n_closed:
        log.warning("%d test segments belong to speakers with no train segment: left out of closed-set "
                    "identification (counted in test_unenrolled), kept in the verification trials", n_test - n_closed)
    picked: dict[str, list[SIDHead]] = {}
    for nm in names:
        layers = tuple(layer_sets[nm])
        dev = dev_acc[nm]
        best = best_lr[nm]
        heads = [trained[HeadSpec(layers, best, sd)] for sd in seeds]
        per_seed = []
        for sd, head in zip(seeds, heads):
            c, n = accuracy(head, data, "test")
            per_seed.append({"seed": sd, "accuracy": c / max(n, 1), "correct": c, "n": n,
                             "ci95": list(wilson_interval(c, n)), "best_step": head.best_step})
        m, lo, hi = mean_interval([r["accuracy"] for r in per_seed])
        ver = verification_eer(heads[0], data, "test", max_trials=max_trials, seed=trial_seed, trials=trials)
        out[nm] = {"layers": list(layers), "lr": best, "lr_swept": nm not in fixed,
                   "dev_accuracy": {str(k): v for k, v in dev.items()}, "best_step": heads[0].best_step,
                   "steps": heads[0].total_steps, "eval_every": eval_every,
                   "test_accuracy": m, "test_ci95": [lo, hi], "per_seed": per_seed, **ver,
                   "layer_weights": heads[0].weights().detach().cpu().numpy().round(4).tolist()}
        picked[nm] = heads
        eer = ver["eer"]
        log.info("SID %s: %.2f%% [%.2f, %.2f] over %d seeds (lr %g, best step %d, %d test segments), EER %s over "
                 "%d+%d trials", nm, 100 * m, 100 * lo, 100 * hi, len(seeds), best, heads[0].best_step, n_closed,
                 "n/a" if eer is None else f"{100 * eer:.2f}%", ver["target_trials"], ver["nontarget_trials"])
    for hs in picked.values():
        for h in hs:
            h.cpu()
    return out, picked


# ------------------------------------------------------------------------------------------- heads on disk
def save_heads(path, picked: dict[str, list[SIDHead]], seeds: Sequence[int]) -> None:
    """The picked heads (per layer set, per seed) as safetensors; layers and seeds in the metadata."""
    import json

    from safetensors.torch import save_file

    tensors, meta = {}, {}
    for nm, heads in picked.items():
        meta[nm] = {"layers": heads[0].layers, "seeds": [int(s) for s in seeds]}
        for sd, h in zip(seeds, heads):
            for k, v in h.state_dict().items():
                tensors[f"{nm}/{int(sd)}/{k}"] = v.detach().contiguous()
    save_file(tensors, str(path), metadata={"heads": json.dumps(meta, sort_keys=True)})


def load_heads(path) -> dict[str, list[tuple[int, SIDHead]]]:
    """{layer set: [(seed, head), ...]} as `save_heads` wrote them."""
    import json

    from safetensors import safe_open

    out: dict[str, list[tuple[int, SIDHead]]] = {}
    with safe_open(str(path), framework="pt") as f:
        meta = json.loads(f.metadata()["heads"])
        for nm, m in meta.items():
            for sd in m["seeds"]:
                sdict = {k.split("/", 2)[2]: f.get_tensor(k) for k in f.keys() if k.startswith(f"{nm}/{sd}/")}
                pw, cw = sdict["projector.weight"], sdict["classifier.weight"]
                h = SIDHead(m["layers"], pw.shape[1], cw.shape[0], proj_dim=pw.shape[0])
                h.load_state_dict(sdict)
                out.setdefault(nm, []).append((int(sd), h.eval()))
    return out


# ------------------------------------------------------------------------------------------- for the workflow
#: The segment columns a pooled file keeps (the audio paths stay in the manifest: joined by utt_id).
POOLED_SEGMENT_COLUMNS = ("seg_id", "utt_id", "speaker", "split", "start", "end")


#: Segments per block of rule pool_layers: a block's means are written and recorded before the next
#: starts, so an interrupted job resumes at its first unfinished block.
POOL_BLOCK = 2048


def _pool_fingerprint(model, segs: pd.DataFrame, *settings: Any) -> str:
    """What a pooled store depends on (the model's weights, the segments, the settings): a store of an
    interrupted run is resumed only where this matches."""
    import hashlib

    h = hashlib.sha256(repr(settings).encode())
    for k, v in model.state_dict().items():
        h.update(f"{k}:{v.dtype}:{tuple(v.shape)}".encode())
        h.update(v.detach().cpu().reshape(-1).view(torch.uint8).numpy().tobytes())
    h.update(pd.util.hash_pandas_object(segs[list(POOLED_SEGMENT_COLUMNS)], index=False).to_numpy().tobytes())
    return h.hexdigest()


def _block_digest(block: np.ndarray) -> str:
    """sha256 of a finished block of the pooled store, as recorded beside it and checked on resume."""
    import hashlib

    return hashlib.sha256(np.ascontiguousarray(block).view(np.uint8).reshape(-1).data).hexdigest()


def _resumable_blocks(tmp: Path, state: Path, fingerprint: str, shape: tuple[int, ...],
                      blocks: list[slice]) -> dict[int, str]:
    """The finished blocks of an interrupted run's store that can be reused: its record must belong to
    this model, these segments and settings (`fingerprint`), the store must open with the right shape, and
    each block must still hold the bytes it was recorded with (sha256). A block that does not is pooled
    again, with a warning naming the store: a damaged store is never used silently. Returns {block: its
    sha256} of the reusable blocks."""
    import json

    try:
        saved = json.loads(state.read_text())
    except (OSError, ValueError):
        log.warning("%s cannot be read: pooling starts over", state)
        return {}
    if saved.get("fingerprint") != fingerprint:
        log.info("%s belongs to another model, segments or settings: pooling starts over", tmp)
        return {}
    try:
        store = np.load(tmp, mmap_mode="r")
    except (OSError, ValueError) as e:
        log.warning("%s cannot be opened (%s): pooling starts over", tmp, e)
        return {}
    if store.shape != shape or store.dtype != np.float16:
        log.warning("%s holds %s %s, not float16 %s: pooling starts over", tmp, store.dtype, store.shape, shape)
        return {}
    digests = saved.get("digests", {})
    done, damaged = {}, []
    for b in (int(b) for b in saved.get("done", [])):
        digest = _block_digest(store[blocks[b]]) if b < len(blocks) else None
        if digest is not None and digests.get(str(b)) == digest:
            done[b] = digest
        else:
            damaged.append(b)
    if damaged:
        log.warning("%s: finished block(s) %s no longer hold the bytes recorded in %s (a damaged or altered store): "
                    "pooling them again", tmp, damaged, state.name)
    return done


def pool_to_file(model, manifest_path: str | os.PathLike, crop_seconds: float | str | None, corpus_source: str,
                 min_crop_fraction: float, out: str | os.PathLike, max_batch_seconds: float,
                 amp: bool | str) -> dict[str, Any]:
    """Each hidden layer's mean over every segment of the manifest (the SID heads' input), with the
    segments themselves and the crop length (`crop_of(crop_seconds, corpus_source)`; NaN = whole
    utterances), as one uncompressed npz (fixed-width strings and integers: no pickled objects).

    The means (float32 sums) go into a float16 memory map beside `out` (`<out>.store.npy`) block by
    block (POOL_BLOCK segments; `<out>.store.json` records the finished ones), which is then streamed
    into the npz: memory stays one block, whatever the corpus; the disk holds the store twice for a
    moment. An interrupted job resumes at its first unfinished block when the model, the segments and
    the settings are the same (else it starts over), reusing a finished block only where it still holds the
    bytes recorded with it (sha256; `_resumable_blocks`). `load_pooled` reads the result by memory map."""
    import json

    from tqdm import tqdm

    from speaker_neurons.data.manifest import read_manifest
    from speaker_neurons.utils import save_npz

    crop = crop_of(crop_seconds, corpus_source)
    segs = segments(read_manifest(manifest_path), crop, model.sample_rate, min_crop_fraction)
    check_splits(segs, str(manifest_path))
    shape = (len(segs), model.num_layers + 1, model.hidden_dim)
    tmp, state = Path(f"{out}.store.npy"), Path(f"{out}.store.json")
    fingerprint = _pool_fingerprint(model, segs, crop, str(amp), float(max_batch_seconds), POOL_BLOCK, shape)
    blocks = [slice(s, min(s + POOL_BLOCK, len(segs))) for s in range(0, len(segs), POOL_BLOCK)]
    reused = _resumable_blocks(tmp, state, fingerprint, shape, blocks) if tmp.is_file() and state.is_file() else {}
    done = list(reused)
    log.info("%d segments (%s) -> a float16 store of %.2f GB%s", len(segs),
             "whole utterances" if crop is None else f"{crop:g} s crops", np.prod(shape) * 2 / 1e9,
             f"; resuming after {len(done)} finished blocks of {POOL_BLOCK}" if done else "")
    store = np.lib.format.open_memmap(tmp, mode="r+" if done else "w+", dtype=np.float16, shape=shape)
    digests = {str(b): d for b, d in reused.items()}
    bar = tqdm(total=len(segs), initial=sum(blocks[b].stop - blocks[b].start for b in done), desc="pooled layers",
               unit="seg", mininterval=5)
    for b, rows in enumerate(blocks):
        if b in done:
            continue
        pool_layer_means(model, segs.iloc[rows].reset_index(drop=True), max_batch_seconds=max_batch_seconds,
                         progress=False, out=store[rows], amp=amp)
        store.flush()
        done.append(b)
        digests[str(b)] = _block_digest(store[rows])
        state.with_name(state.name + ".tmp").write_text(json.dumps({"fingerprint": fingerprint, "done": done,
                                                                    "digests": digests}))
        os.replace(state.with_name(state.name + ".tmp"), state)
        bar.update(rows.stop - rows.start)
    bar.close()
    cols = {c: (segs[c].to_numpy(np.int64) if c in ("start", "end")
                else np.asarray(segs[c].astype(str).tolist(), dtype=str)) for c in POOLED_SEGMENT_COLUMNS}
    save_npz(out, {"pooled": store, **cols, "crop_seconds": np.float64(np.nan if crop is None else crop)})
    del store
    tmp.unlink()
    state.unlink()
    return {"segments": len(segs), "shape": list(shape), "crop_seconds": crop, "dtype": "float16"}


def read_segments(pooled_path: str | os.PathLike, manifest_path: str | os.PathLike) -> pd.DataFrame:
    """The segments a pooled file was made from (rows as `segments` makes them), their audio paths
    joined from the manifest by utt_id."""
    from speaker_neurons.data.manifest import read_manifest

    with np.load(pooled_path) as z:
        absent = [c for c in POOLED_SEGMENT_COLUMNS if c not in z.files]
        if absent:
            raise ValueError(f"{pooled_path} has no segment column(s) {absent} (written by an older version); "
                             "re-run rule pool_layers")
        segs = pd.DataFrame({c: z[c] for c in POOLED_SEGMENT_COLUMNS})
    manifest = read_manifest(manifest_path)
    paths = dict(zip(manifest["utt_id"].astype(str), manifest["path"].astype(str)))
    missing = sorted(set(segs["utt_id"]) - set(paths))
    if missing:
        raise ValueError(f"{pooled_path} holds utterances that {manifest_path} lacks ({len(missing)}, e.g. "
                         f"{', '.join(missing[:5])}); re-run rule pool_layers")
    segs.insert(2, "path", segs["utt_id"].map(paths))
    return segs


def run_sid(pooled_path: str | os.PathLike, cfg: Mapping[str, Any], lr_from: str | os.PathLike | None, corpus: str,
            lr_from_model: str | None, veri_list: str | os.PathLike | None, out_result: str | os.PathLike,
            out_heads: str | os.PathLike, device: str, out_predictions: str | os.PathLike | None = None
            ) -> dict[str, float]:
    """SUPERB SID (and EER) on a pooled file, per layer set of `cfg` (the config's `sid` section), on
    `device`; with `lr_from` (the root model's sid.json) the learning rates picked there; the EER on
    `veri_list` (sid.veri_list) when given, else on sid.max_trials sampled test pairs. Writes the result
    (JSON, with the corpus it was scored on), the picked heads (the erase ablation scores erased models
    with them) and, with `out_predictions`, every head's test predictions (`predictions_table`)."""
    data, L = load_pooled(pooled_path)
    trials, absent = (veri_trials(read_veri_list(veri_list), data, float(cfg["max_veri_absent"]), veri_list)
                      if veri_list else (None, 0))  # checked before any training
    fixed = rates_of(lr_from, cfg["layer_sets"]) if lr_from else None
    schedule = {k: cfg[k] for k in ("epochs", "steps", "batch_size", "grad_clip", "eval_every")}
    result, picked = evaluate(data, layer_sets(cfg["layer_sets"], L), cfg["learning_rates"], cfg["seeds"],
                              fixed_lr=fixed, max_trials=cfg["max_trials"], trial_seed=cfg["trial_seed"], trials=trials,
                              device=device, progress=True, **schedule)
    result.update(crop_seconds=pooled_crop_seconds(pooled_path), corpus=corpus,
                  lr_from=lr_from_model if fixed else None, schedule=schedule, device=str(device),
                  trials={"source": Path(veri_list).name if veri_list else "sampled test pairs",
                          "max_trials": None if veri_list else cfg["max_trials"], "absent": absent})
    write_json(out_result, result)
    save_heads(out_heads, picked, cfg["seeds"])
    if out_predictions is not None:
        predictions_table(data, picked, cfg["seeds"]).to_csv(out_predictions, sep="\t", index=False)
    return {k: v["test_accuracy"] for k, v in result.items() if isinstance(v, dict) and "test_accuracy" in v}
