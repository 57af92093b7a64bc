"""i-vectors without labels (METHOD §6), in torch, on CPU or GPU.

Recipe (Kaldi VoxCeleb v1 is the reference; differences are listed):

* **Features.** Kaldi-compatible MFCC (``torchaudio.compliance.kaldi.mfcc``: 20 cepstra incl. c0 = log
  energy as in Kaldi's default ``--use-energy=true``, 40 mel bins, 25 ms / 10 ms, 16 kHz, dither 0 so
  the features are deterministic, waveform scaled by 2**15 to Kaldi's int16 range, Kaldi's energy
  floor 0) -> energy VAD on the raw c0 (Kaldi ``compute-vad``) -> deltas + double deltas (Kaldi
  ``add-deltas``: window 2, frames replicated at the edges) -> cepstral mean normalisation ->
  voiced frames only.
  CMN choice: **sliding**, centred, 300-frame window over *all* frames before voiced-frame selection,
  means only (Kaldi ``apply-cmvn-sliding --norm-vars=false --center=true --cmn-window=300``, what the
  VoxCeleb recipe does). ``cmn: utterance`` subtracts the utterance mean instead, ``cmn: none``
  disables it; ``cmn_norm_vars: true`` divides by the (windowed) standard deviation too.
  An utterance without a voiced frame keeps all its frames (counted, and logged as a warning).
* **UBM.** Diagonal-covariance GMM trained by EM (Kaldi trains a diagonal then a full-covariance
  UBM; we stop at the diagonal one). Init: greedy k-means++ seeding + Lloyd iterations on a seeded
  frame sample, best of ``ubm_kmeans_restarts`` by inertia; E-step in the log domain, chunked over
  frames; variance floor relative to the global variance; a component whose occupancy collapses is
  re-seeded by splitting the heaviest one.
* **Statistics.** Per utterance, zeroth order N_c = sum_t g_tc and first order
  F_c = sum_t g_tc (x_t - mu_c) (centred on the UBM means); posteriors below ``min_post`` are
  pruned and the rest renormalised (Kaldi ``--min-post``); ``posterior_scale`` scales both.
* **Total variability** (Dehak et al. 2011; Kenny 2005). Supervector model M = m + T w, w ~ N(0, I),
  covariance = the UBM's. E-step per utterance: L = I + sum_c N_c T_c' S_c^-1 T_c,
  E[w] = L^-1 T' S^-1 F~, E[ww'] = L^-1 + E[w]E[w]'. M-step: T_c = (sum_u F~_uc E[w_u]')
  (sum_u N_uc E[w_u w_u'])^-1. Optional minimum-divergence step (Kenny): with h = mean E[w] and
  K = mean E[ww'] - hh', the offset m moves by T h and T becomes T chol(K), so the prior stays
  N(0, I). Init: seeded Gaussian entries scaled by the UBM standard deviations.
  Trained on the ``tv_max_train_utts`` longest utterances (0 = all).
* **Extraction.** i-vector = posterior mean; then subtraction of the corpus mean i-vector and length
  normalisation to unit L2 norm (Kaldi scales to sqrt(dim); cosine scores are the same).

i-vectors made by Kaldi can be supplied instead: `read_ivectors` reads ark or scp.

Default sizes (config keys; Kaldi VoxCeleb uses 2048 components / 400 dims on ~1000 h) were tuned
on the demo corpus (48 synthetic speakers, 1152 utterances, 1.1 h; fit on all utterances, no
labels; speaker ID train -> test by cosine to speaker means, EER over all test pairs):

=================  ==============  =========  =====
ubm / ivector_dim  speaker ID acc  EER test   fit s
=================  ==============  =========  =====
64 / 10 (default)  96.9 - 99.0 %   1.8-2.3 %  ~7
64 / 20            96.9 - 98.4 %   2.1-2.4 %  ~8
64 / 30            93.8 - 95.3 %   2.8-3.1 %  ~7
64 / 100           92.7 %          12.3 %     ~9
256 / 30           96.4 %          3.3 %      ~38
=================  ==============  =========  =====

(ranges over seeds; one 2-core CPU thread; features ~5 s). Cosine scoring of raw i-vectors
without LDA suffers from extra dimensions on a small corpus; raise the sizes for corpora of
hundreds of hours. On CPU, a busy machine made 2 torch threads 3x slower than 1 for the UBM / T
stages: `extract_ivectors(num_threads=...)` sets them for the call.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from speaker_neurons.analysis.kaldi_io_utils import read_vectors, write_vectors
from speaker_neurons.config import choices as config_choices
from speaker_neurons.config import defaults as config_defaults
from speaker_neurons.config import resolve as config_resolve
from speaker_neurons.utils import fault_point

log = logging.getLogger("speaker_neurons.analysis.ivector")

# --------------------------------------------------------------------------------------------------
# configuration

#: Every i-vector option and its default: the `ivector` section of the config schema (one place),
#: less `kaldi_ivectors`, which the workflow handles.
DEFAULT_IVECTOR_CONFIG: dict[str, Any] = config_defaults("ivector")
DEFAULT_IVECTOR_CONFIG.pop("kaldi_ivectors", None)


def resolve_ivector_config(config: dict[str, Any] | None = None) -> dict[str, Any]:
    """The schema's defaults overlaid with `config`; an unknown key raises naming it."""
    cfg = config_resolve("ivector", config, exclude=("kaldi_ivectors",))
    if cfg["cmn"] not in config_choices("ivector.cmn"):
        raise ValueError(f"cmn must be {'|'.join(config_choices('ivector.cmn'))}, got {cfg['cmn']!r}")
    for k in ("ubm_components", "ivector_dim", "ubm_iters", "tv_iters", "num_ceps", "num_mel_bins"):
        if int(cfg[k]) < (0 if k.endswith("iters") else 1):
            raise ValueError(f"{k} must be positive, got {cfg[k]!r}")
    return cfg


def _device(device: str | torch.device | None) -> torch.device:
    from speaker_neurons.models.base import resolve_device

    return resolve_device(device)


@contextlib.contextmanager
def torch_threads(n: int | None):
    """Temporarily set torch's intra-op CPU threads (None: leave them). Restored on exit."""
    if n is None or int(n) <= 0:
        yield
        return
    saved = torch.get_num_threads()
    torch.set_num_threads(int(n))
    try:
        yield
    finally:
        torch.set_num_threads(saved)


def _tqdm(iterable, enabled: bool, **kw):
    if not enabled:
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, **kw)


# --------------------------------------------------------------------------------------------------
# features


def kaldi_mfcc(waveform: np.ndarray | torch.Tensor, cfg: dict[str, Any], device="cpu") -> torch.Tensor:
    """(T, num_ceps) float32 MFCC of a 1-D waveform in [-1, 1]; column 0 is log energy when use_energy."""
    from torchaudio.compliance import kaldi

    wav = torch.as_tensor(np.asarray(waveform, dtype=np.float32) if not torch.is_tensor(waveform) else waveform)
    if wav.ndim > 1 and wav.numel() != max(wav.shape):
        raise ValueError(f"a mono waveform is expected, got shape {tuple(wav.shape)}")
    wav = wav.to(device=_device(device), dtype=torch.float32).reshape(1, -1) * float(cfg["waveform_scale"])
    frame_len = int(round(cfg["sample_rate"] * cfg["frame_length_ms"] / 1000.0))
    if wav.shape[1] < frame_len:
        return torch.zeros(0, int(cfg["num_ceps"]), device=wav.device)
    return kaldi.mfcc(
        wav,
        sample_frequency=float(cfg["sample_rate"]),
        num_ceps=int(cfg["num_ceps"]),
        num_mel_bins=int(cfg["num_mel_bins"]),
        frame_length=float(cfg["frame_length_ms"]),
        frame_shift=float(cfg["frame_shift_ms"]),
        low_freq=float(cfg["low_freq"]),
        high_freq=float(cfg["high_freq"]),
        dither=float(cfg["dither"]),
        energy_floor=0.0,
        use_energy=bool(cfg["use_energy"]),
        snip_edges=bool(cfg["snip_edges"]),
    )


def compute_vad(
    log_energy: torch.Tensor,
    energy_threshold: float,
    energy_mean_scale: float,
    frames_context: int,
    proportion_threshold: float,
) -> torch.Tensor:
    """Kaldi `compute-vad`: (T,) bool. A frame is voiced when at least `proportion_threshold` of the
    frames within +-`frames_context` (clipped to the utterance) have log energy above
    `energy_threshold + energy_mean_scale * mean(log_energy)`."""
    e = log_energy.reshape(-1).to(torch.float64)
    T = e.shape[0]
    if T == 0:
        return torch.zeros(0, dtype=torch.bool, device=log_energy.device)
    thr = float(energy_threshold)
    if energy_mean_scale != 0.0:
        thr = thr + float(energy_mean_scale) * float(e.mean())
    above = (e > thr).to(torch.int64)
    c = max(int(frames_context), 0)
    t = torch.arange(T, device=e.device)
    lo = (t - c).clamp(min=0)
    hi = (t + c + 1).clamp(max=T)
    cs = torch.cat([above.new_zeros(1), above.cumsum(0)])
    num = (cs[hi] - cs[lo]).to(torch.float64)
    den = (hi - lo).to(torch.float64)
    return num >= den * float(proportion_threshold)


@functools.lru_cache(maxsize=8)
def _delta_scales(order: int, window: int) -> tuple[torch.Tensor, ...]:
    """Kaldi DeltaFeatures filters: scales[0] = [1]; scales[i] = scales[i-1] convolved with j/sum(j^2)."""
    scales = [torch.ones(1, dtype=torch.float64)]
    normalizer = sum(j * j for j in range(-window, window + 1))
    for _ in range(order):
        prev = scales[-1]
        prev_off = (prev.numel() - 1) // 2
        cur_off = prev_off + window
        cur = torch.zeros(prev.numel() + 2 * window, dtype=torch.float64)
        for j in range(-window, window + 1):
            for k in range(-prev_off, prev_off + 1):
                cur[j + k + cur_off] += j * prev[k + prev_off]
        scales.append(cur / normalizer)
    return tuple(scales)


def add_deltas(feats: torch.Tensor, order: int, window: int) -> torch.Tensor:
    """Kaldi `add-deltas`: (T, D) -> (T, D * (order + 1)); edge frames are replicated."""
    T, D = feats.shape
    if order == 0 or T == 0:
        return feats.new_zeros(T, D * (order + 1)) if T == 0 else feats
    x = feats.to(torch.float64)
    outs = [x]
    t = torch.arange(T, device=feats.device)
    for s in _delta_scales(order, window)[1:]:
        off = (s.numel() - 1) // 2
        idx = (t[:, None] + torch.arange(-off, off + 1, device=feats.device)[None, :]).clamp_(0, T - 1)
        outs.append(torch.einsum("tkd,k->td", x[idx], s.to(feats.device)))
    return torch.cat(outs, dim=1).to(feats.dtype)


def sliding_cmn(feats: torch.Tensor, window: int, norm_vars: bool) -> torch.Tensor:
    """Kaldi `apply-cmvn-sliding --center=true`: subtract the mean of a `window`-frame window centred
    on each frame, shifted to lie inside the utterance (the whole utterance when it is shorter)."""
    T, D = feats.shape
    if T == 0:
        return feats
    x = feats.to(torch.float64)
    t = torch.arange(T, device=feats.device)
    start = t - window // 2
    end = start + window
    shift = (-start).clamp(min=0)
    start, end = start + shift, end + shift
    over = (end - T).clamp(min=0)
    start, end = (start - over).clamp(min=0), end - over
    zero = torch.zeros(1, D, dtype=torch.float64, device=feats.device)
    cs = torch.cat([zero, x.cumsum(0)])
    n = (end - start).to(torch.float64)[:, None]
    mean = (cs[end] - cs[start]) / n
    out = x - mean
    if norm_vars:
        cs2 = torch.cat([zero, (x * x).cumsum(0)])
        var = ((cs2[end] - cs2[start]) / n - mean * mean).clamp(min=1e-20)
        out = out / var.sqrt()
    return out.to(feats.dtype)


def utterance_cmn(feats: torch.Tensor, norm_vars: bool) -> torch.Tensor:
    if feats.shape[0] == 0:
        return feats
    x = feats.to(torch.float64)
    out = x - x.mean(0, keepdim=True)
    if norm_vars:
        out = out / x.var(0, unbiased=False, keepdim=True).clamp(min=1e-20).sqrt()
    return out.to(feats.dtype)


@dataclass
class FeatureInfo:
    frames: int  # all frames
    voiced: int  # frames the VAD kept (0 when it kept none)
    fallback: bool  # no voiced frame: all frames kept


def compute_features(
    waveform: np.ndarray | torch.Tensor, config: dict[str, Any] | None = None, device="cpu"
) -> tuple[torch.Tensor, FeatureInfo]:
    """MFCC + deltas + CMN, voiced frames only: ((n, num_ceps * (delta_order + 1)) float32 on CPU, info)."""
    cfg = resolve_ivector_config(config)
    mfcc = kaldi_mfcc(waveform, cfg, device)
    T = mfcc.shape[0]
    if cfg["vad"] and T > 0:
        vad = compute_vad(
            mfcc[:, 0],
            cfg["vad_energy_threshold"],
            cfg["vad_energy_mean_scale"],
            cfg["vad_frames_context"],
            cfg["vad_proportion_threshold"],
        )
    else:
        vad = torch.ones(T, dtype=torch.bool, device=mfcc.device)
    feats = add_deltas(mfcc, int(cfg["delta_order"]), int(cfg["delta_window"]))
    if cfg["cmn"] == "sliding":
        feats = sliding_cmn(feats, int(cfg["cmn_window"]), bool(cfg["cmn_norm_vars"]))
    elif cfg["cmn"] == "utterance":
        feats = utterance_cmn(feats, bool(cfg["cmn_norm_vars"]))
    n_voiced = int(vad.sum())
    fallback = T > 0 and n_voiced == 0
    if not fallback:
        feats = feats[vad]
    return feats.float().cpu().contiguous(), FeatureInfo(T, n_voiced, fallback)


# --------------------------------------------------------------------------------------------------
# diagonal GMM (UBM)


class DiagGMM:
    """Diagonal-covariance GMM: weights (C,), means (C, D), variances (C, D), float32 tensors."""

    def __init__(self, weights: torch.Tensor, means: torch.Tensor, variances: torch.Tensor):
        self.weights = weights
        self.means = means
        self.variances = variances
        self._refresh()

    def _refresh(self) -> None:
        inv = 1.0 / self.variances
        self._inv = inv
        self._mu_inv = self.means * inv
        D = self.means.shape[1]
        self._const = (
            torch.log(self.weights.clamp(min=1e-30))
            - 0.5 * (D * math.log(2 * math.pi) + torch.log(self.variances).sum(1) + (self.means**2 * inv).sum(1))
        )

    @property
    def num_components(self) -> int:
        return self.means.shape[0]

    @property
    def dim(self) -> int:
        return self.means.shape[1]

    def to(self, device) -> "DiagGMM":
        return DiagGMM(self.weights.to(device), self.means.to(device), self.variances.to(device))

    def component_loglik(self, x: torch.Tensor) -> torch.Tensor:
        """(n, D) -> (n, C): log w_c + log N(x | mu_c, diag var_c)."""
        return (x * x) @ (-0.5 * self._inv).T + x @ self._mu_inv.T + self._const

    def posteriors(self, x: torch.Tensor, min_post: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
        """(n, D) -> (posteriors (n, C), per-frame log-likelihood (n,)). Pruned below min_post, renormalised."""
        ll = self.component_loglik(x)
        tot = torch.logsumexp(ll, dim=1)
        post = torch.exp(ll - tot[:, None])
        if min_post > 0.0:
            keep = post >= min_post
            keep |= post == post.max(dim=1, keepdim=True).values  # never prune every component
            post = post * keep
            post = post / post.sum(1, keepdim=True)
        return post, tot

    def state_dict(self) -> dict[str, np.ndarray]:
        return {
            "ubm_weights": self.weights.cpu().numpy(),
            "ubm_means": self.means.cpu().numpy(),
            "ubm_variances": self.variances.cpu().numpy(),
        }


def _kmeanspp_init(x: torch.Tensor, k: int, gen: torch.Generator, lloyd_iters: int) -> torch.Tensor:
    """Greedy k-means++ seeding (2 + ln k candidates per step, the one lowering the potential most is
    kept) + Lloyd iterations on x (n, D), distances in x's own scale. -> centres (k, D)."""
    n = x.shape[0]
    trials = 2 + int(math.log(k)) if k > 1 else 1
    first = int(torch.randint(n, (1,), generator=gen))
    centres = [x[first]]
    d2 = ((x - x[first]) ** 2).sum(1)
    for _ in range(1, k):
        total = float(d2.sum())
        if total <= 0:
            cand = torch.randint(n, (trials,), generator=gen)
        else:
            cand = torch.multinomial((d2 / total).cpu().double(), trials, replacement=True, generator=gen)
        cand = cand.to(x.device)
        cand_d2 = torch.minimum(d2[None, :], torch.cdist(x[cand], x).pow(2))  # (trials, n)
        best = int(cand_d2.sum(1).argmin())
        centres.append(x[cand[best]])
        d2 = cand_d2[best]
    c = torch.stack(centres)
    for _ in range(lloyd_iters):
        onehot = torch.nn.functional.one_hot(torch.cdist(x, c).argmin(1), k).to(x.dtype)
        counts = onehot.sum(0)
        sums = onehot.T @ x  # a matmul, not index_add_: deterministic on GPU as well
        nonempty = counts > 0
        c[nonempty] = sums[nonempty] / counts[nonempty, None]
    return c


def train_diag_gmm(
    frames: torch.Tensor,
    num_components: int,
    *,
    num_iters: int,
    seed: int,
    var_floor: float,
    min_occupancy: float,
    init_frames: int,
    kmeans_iters: int,
    kmeans_restarts: int,
    chunk: int,
    device="cpu",
    progress: bool = False,
) -> DiagGMM:
    """EM for a diagonal GMM on frames (n, D) (any device; moved to `device` chunk by chunk)."""
    dev = _device(device)
    n, D = frames.shape
    if n < num_components:
        raise ValueError(f"{n} frames cannot train a {num_components}-component UBM")
    gen = torch.Generator().manual_seed(int(seed))
    x64 = frames.to(torch.float64)
    gmean = x64.mean(0)
    gvar = x64.var(0, unbiased=False).clamp(min=1e-10)
    floor = (gvar * var_floor).to(torch.float32).to(dev)
    gstd = gvar.sqrt().to(torch.float32)

    # --- init: k-means++ in globally standardised space on a seeded frame sample
    m = min(n, max(int(init_frames), num_components))
    idx = torch.randperm(n, generator=gen)[:m].sort().values
    sample = ((frames[idx].float() - gmean.float()) / gstd).to(dev)
    centres, best = None, float("inf")
    for _ in range(max(1, int(kmeans_restarts))):
        c = _kmeanspp_init(sample, num_components, gen, int(kmeans_iters))
        inertia = float(torch.cdist(sample, c).min(1).values.pow(2).sum())
        if inertia < best:
            centres, best = c, inertia
    onehot = torch.nn.functional.one_hot(torch.cdist(sample, centres).argmin(1), num_components).to(sample.dtype)
    counts = onehot.sum(0)
    sq = onehot.T @ (sample * sample)
    means_s = centres
    var_s = torch.where(
        counts[:, None] > 1, sq / counts.clamp(min=1)[:, None] - means_s**2, torch.ones_like(means_s)
    ).clamp(min=0.01)
    means = means_s * gstd.to(dev) + gmean.float().to(dev)
    variances = torch.maximum(var_s * (gstd.to(dev) ** 2), floor)
    weights = (counts + 1.0) / (counts.sum() + num_components)
    gmm = DiagGMM(weights.to(dev), means.float(), variances.float())

    # --- EM
    for it in _tqdm(range(int(num_iters)), progress, desc="UBM EM", leave=False):
        acc_n = torch.zeros(num_components, dtype=torch.float64, device=dev)
        acc_x = torch.zeros(num_components, D, dtype=torch.float64, device=dev)
        acc_xx = torch.zeros(num_components, D, dtype=torch.float64, device=dev)
        tot_ll = 0.0
        for s in range(0, n, chunk):
            xc = frames[s : s + chunk].to(dev, torch.float32)
            post, ll = gmm.posteriors(xc)
            tot_ll += float(ll.double().sum())
            acc_n += post.sum(0).double()
            acc_x += (post.T @ xc).double()
            acc_xx += (post.T @ (xc * xc)).double()
        new_w = acc_n / n
        safe = acc_n.clamp(min=1e-10)[:, None]
        new_mu = acc_x / safe
        new_var = acc_xx / safe - new_mu**2
        new_var = torch.maximum(new_var.float(), floor)
        dead = (acc_n < max(min_occupancy, 1e-10)).nonzero().view(-1).tolist()
        new_w, new_mu = new_w.float(), new_mu.float()
        for c in dead:  # split the heaviest component into two halves
            h = int(new_w.argmax())
            step = 0.2 * new_var[h].sqrt()
            new_mu[c] = new_mu[h] + step
            new_mu[h] = new_mu[h] - step
            new_var[c] = new_var[h]
            new_w[h] = new_w[h] / 2
            new_w[c] = new_w[h]
        if dead:
            log.info("UBM iteration %d: re-seeded %d low-occupancy component(s)", it + 1, len(dead))
        gmm = DiagGMM(new_w / new_w.sum(), new_mu, new_var)
        log.debug("UBM iteration %d: average log-likelihood %.4f", it + 1, tot_ll / n)
    return gmm


# --------------------------------------------------------------------------------------------------
# i-vector extractor


def _safe_cholesky(A: torch.Tensor) -> torch.Tensor:
    """Lower Cholesky factor of SPD matrices (..., R, R); adds growing diagonal jitter (relative to the
    mean diagonal) to those that fail numerically."""
    chol, info = torch.linalg.cholesky_ex(A)
    if not bool((info != 0).any()):
        return chol
    eye = torch.eye(A.shape[-1], dtype=A.dtype, device=A.device)
    scale = torch.diagonal(A, dim1=-2, dim2=-1).abs().mean(-1).clamp(min=1e-30)[..., None, None]
    for jitter in (1e-10, 1e-8, 1e-6, 1e-4, 1e-2):
        chol, info = torch.linalg.cholesky_ex(A + jitter * scale * eye)
        if not bool((info != 0).any()):
            log.debug("Cholesky needed a relative jitter of %g", jitter)
            return chol
    raise FloatingPointError("matrix is not positive definite even with jitter (NaN or inf in the statistics?)")


def length_normalize(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return (x / np.maximum(norms, 1e-12)).astype(np.float32)


def fit_postprocessing(raw: np.ndarray, center: bool, whiten: bool) -> tuple[np.ndarray, np.ndarray | None]:
    """The label-free post-processing of raw i-vectors `raw` (U, dim), fitted on them: their mean (zeros
    without `center`) and, with `whiten`, the ZCA whitening matrix W = V diag(1 / sqrt(lambda)) V' of their
    covariance about that mean (float64 eigendecomposition; eigenvalues floored at 1e-10 times the largest).
    ZCA is unique (no eigenvector signs to choose) and gives the distances of PCA whitening, which is what
    k-means sees. Returns (mean (dim,) float32, W (dim, dim) float32 or None)."""
    x = np.asarray(raw, dtype=np.float64)
    if x.ndim != 2 or len(x) == 0:
        raise ValueError(f"post-processing needs raw i-vectors of shape (U > 0, dim), got {x.shape}")
    mean = x.mean(0) if center else np.zeros(x.shape[1])
    if not whiten:
        return mean.astype(np.float32), None
    if len(x) < 2:
        raise ValueError("whitening needs at least 2 i-vectors")
    xc = x - mean
    cov = xc.T @ xc / len(x)
    lam, vec = np.linalg.eigh(cov)
    lam = np.maximum(lam, 1e-10 * max(float(lam.max()), 1e-30))
    return mean.astype(np.float32), ((vec / np.sqrt(lam)) @ vec.T).astype(np.float32)


def apply_postprocessing(raw: np.ndarray, mean: np.ndarray, whitener: np.ndarray | None,
                         length_norm: bool) -> np.ndarray:
    """Raw i-vectors minus `mean`, times `whitener` (if any), scaled to unit length (with `length_norm`):
    Kaldi's order (centre, transform, length-normalise), float32."""
    x = np.asarray(raw, dtype=np.float64) - np.asarray(mean, dtype=np.float64)[None, :]
    if whitener is not None:
        x = x @ np.asarray(whitener, dtype=np.float64)
    return length_normalize(x) if length_norm else x.astype(np.float32)


class IVectorExtractor:
    """UBM + total variability matrix. `fit` on lists of (frames, dim) feature arrays; no labels.

    After fit, `ivector_mean` (and `whitener`) are the post-processing fitted on the raw i-vectors of
    the training utterances (`fit_postprocessing`, config keys `center`, `whiten`); `set_postprocessing`
    refits them on other raw i-vectors (the corpus to be clustered), and
    `transform(..., normalize=True)` applies them (`postprocess`).
    """

    def __init__(self, config: dict[str, Any] | None = None, device="cpu", progress: bool = False):
        self.cfg = resolve_ivector_config(config)
        self.device = _device(device)
        self.progress = progress
        self.ubm: DiagGMM | None = None
        self.T: torch.Tensor | None = None  # (C*D, R) float64
        self.offset: torch.Tensor | None = None  # (C*D,) float64, supervector offset from the UBM means
        self.ivector_mean: np.ndarray | None = None
        self.whitener: np.ndarray | None = None
        self.history: list[dict[str, float]] = []

    # ---- statistics
    def _as_tensor(self, f) -> torch.Tensor:
        t = f if torch.is_tensor(f) else torch.from_numpy(np.asarray(f, dtype=np.float32))
        if t.ndim != 2:
            raise ValueError(f"features must be (frames, dim), got shape {tuple(t.shape)}")
        return t.float()

    def compute_stats(self, feature_list: Sequence, progress: bool | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Baum-Welch statistics: N (U, C) and centred F (U, C*D), float32 on CPU, posterior_scale applied."""
        assert self.ubm is not None, "fit the UBM first"
        ubm = self.ubm
        C, D = ubm.num_components, ubm.dim
        U = len(feature_list)
        N = torch.zeros(U, C)
        F = torch.zeros(U, C * D)
        scale = float(self.cfg["posterior_scale"])
        min_post = float(self.cfg["min_post"])
        chunk = int(self.cfg["frame_chunk"])
        prog = self.progress if progress is None else progress
        feats = [self._as_tensor(f) for f in feature_list]
        for u, x in enumerate(feats):
            if x.shape[0] and x.shape[1] != D:
                raise ValueError(f"utterance {u}: feature dim {x.shape[1]} != UBM dim {D}")
        # groups of consecutive utterances with at most `chunk` frames together (a longer one alone)
        groups: list[list[int]] = []
        cur: list[int] = []
        cur_n = 0
        for u, x in enumerate(feats):
            n = x.shape[0]
            if n == 0:
                continue
            if cur and cur_n + n > chunk:
                groups.append(cur)
                cur, cur_n = [], 0
            cur.append(u)
            cur_n += n
        if cur:
            groups.append(cur)
        mu = ubm.means.double()
        for g in _tqdm(groups, prog, desc="i-vector stats", leave=False):
            if len(g) == 1 and feats[g[0]].shape[0] > chunk:
                x = feats[g[0]]
                n_acc = torch.zeros(C, dtype=torch.float64, device=self.device)
                f_acc = torch.zeros(C, D, dtype=torch.float64, device=self.device)
                for s in range(0, x.shape[0], chunk):
                    xc = x[s : s + chunk].to(self.device)
                    post, _ = ubm.posteriors(xc, min_post)
                    n_acc += post.sum(0).double()
                    f_acc += (post.T @ xc).double()
                n_list, f_list = [n_acc], [f_acc]
            else:
                x = torch.cat([feats[u] for u in g]).to(self.device)
                post, _ = ubm.posteriors(x, min_post)
                bounds = np.cumsum([0] + [feats[u].shape[0] for u in g])
                n_list, f_list = [], []
                for i in range(len(g)):
                    p_u = post[bounds[i] : bounds[i + 1]]
                    n_list.append(p_u.sum(0).double())
                    f_list.append((p_u.T @ x[bounds[i] : bounds[i + 1]]).double())
            n_b = torch.stack(n_list)
            f_b = torch.stack(f_list) - n_b[:, :, None] * mu[None]
            idx = torch.as_tensor(g)
            N[idx] = (n_b * scale).float().cpu()
            F[idx] = (f_b * scale).reshape(len(g), C * D).float().cpu()
        return N, F

    # ---- total variability
    def _tt(self, T: torch.Tensor, inv_sigma: torch.Tensor) -> torch.Tensor:
        """(C, R*R): T_c' S_c^-1 T_c per component."""
        C, D = self.ubm.num_components, self.ubm.dim
        R = T.shape[1]
        Tc = T.view(C, D, R)
        return torch.einsum("cdr,cd,cds->crs", Tc, inv_sigma.view(C, D), Tc).reshape(C, R * R)

    def _posterior(self, N, F, T, inv_sigma, TT, offset):
        """Batch E-step: N (B, C), F (B, C*D) float64 on device -> (w (B, R), Linv (B, R, R), F~)."""
        B = N.shape[0]
        C, D = self.ubm.num_components, self.ubm.dim
        R = T.shape[1]
        Fc = F - (N[:, :, None] * offset.view(1, C, D)).reshape(B, C * D)
        b = (Fc * inv_sigma) @ T
        L = (N @ TT).view(B, R, R) + torch.eye(R, dtype=T.dtype, device=T.device)
        chol = _safe_cholesky(L)
        w = torch.cholesky_solve(b.unsqueeze(-1), chol).squeeze(-1)
        Linv = torch.cholesky_inverse(chol)
        return w, Linv, Fc

    def _train_tv(self, N_all: torch.Tensor, F_all: torch.Tensor) -> None:
        cfg = self.cfg
        dev = self.device
        C, D = self.ubm.num_components, self.ubm.dim
        R = int(cfg["ivector_dim"])
        U = N_all.shape[0]
        gen = torch.Generator().manual_seed(int(cfg["seed"]) + 1)
        sigma = self.ubm.variances.double().reshape(-1).to(dev)
        inv_sigma = 1.0 / sigma
        T = torch.randn(C * D, R, generator=gen, dtype=torch.float64).to(dev)
        T = T * sigma.sqrt()[:, None] * (float(cfg["tv_init_scale"]) / math.sqrt(R))
        offset = torch.zeros(C * D, dtype=torch.float64, device=dev)
        bs = int(cfg["utt_batch"])
        for it in _tqdm(range(int(cfg["tv_iters"])), self.progress, desc="T-matrix EM", leave=False):
            TT = self._tt(T, inv_sigma)
            A = torch.zeros(C, R * R, dtype=torch.float64, device=dev)
            Cacc = torch.zeros(C * D, R, dtype=torch.float64, device=dev)
            sum_w = torch.zeros(R, dtype=torch.float64, device=dev)
            sum_ww = torch.zeros(R, R, dtype=torch.float64, device=dev)
            for s in range(0, U, bs):
                N = N_all[s : s + bs].to(dev, torch.float64)
                F = F_all[s : s + bs].to(dev, torch.float64)
                w, Linv, Fc = self._posterior(N, F, T, inv_sigma, TT, offset)
                Eww = Linv + w[:, :, None] * w[:, None, :]
                A += N.T @ Eww.reshape(-1, R * R)
                Cacc += Fc.T @ w
                sum_w += w.sum(0)
                sum_ww += Eww.sum(0)
            # T_c = Cacc_c A_c^-1  <=>  T_c' = A_c^-1 Cacc_c'  (A_c SPD: Cholesky; LU-based torch.linalg.solve
            # was seen to fail spuriously on CPU/MKL for batches of 200 x 200 systems)
            A = A.view(C, R, R)
            A = 0.5 * (A + A.transpose(1, 2))
            occ = torch.diagonal(A, dim1=1, dim2=2).mean(1)  # ~ total occupancy of the component
            chol = _safe_cholesky(A)
            T_new = torch.cholesky_solve(Cacc.view(C, D, R).transpose(1, 2).contiguous(), chol).transpose(1, 2)
            # a component that (almost) no frame visits keeps its previous loading
            keep = occ < 1e-6 * occ.max().clamp(min=1e-30)
            T_new[keep] = T.view(C, D, R)[keep]
            T = T_new.reshape(C * D, R)
            h = sum_w / U
            K = sum_ww / U - torch.outer(h, h)
            info = {"iter": it + 1, "mean_w_norm": float(h.norm()), "prior_cov_trace": float(torch.trace(K)) / R}
            if cfg["tv_min_divergence"]:
                offset = offset + T @ h
                G = _safe_cholesky(0.5 * (K + K.T))
                T = T @ G
            self.history.append(info)
            log.info("T-matrix iteration %d: |mean w| %.4f, trace(cov w)/R %.4f", *info.values())
        self.T = T
        self.offset = offset

    # ---- public API
    def fit(self, feature_list: Sequence) -> "IVectorExtractor":
        cfg = self.cfg
        feats = [self._as_tensor(f) for f in feature_list]
        lengths = np.array([f.shape[0] for f in feats])
        if lengths.sum() == 0:
            raise ValueError("no frames to train the i-vector extractor")
        gen = torch.Generator().manual_seed(int(cfg["seed"]))
        allf = torch.cat([f for f in feats if f.shape[0] > 0])
        if allf.shape[0] > int(cfg["ubm_max_frames"]):
            keep = torch.randperm(allf.shape[0], generator=gen)[: int(cfg["ubm_max_frames"])].sort().values
            allf = allf[keep]
        log.info(
            "training a %d-component diagonal UBM on %d frames (dim %d)",
            cfg["ubm_components"], allf.shape[0], allf.shape[1],
        )
        self.ubm = train_diag_gmm(
            allf,
            int(cfg["ubm_components"]),
            num_iters=int(cfg["ubm_iters"]),
            seed=int(cfg["seed"]),
            var_floor=float(cfg["ubm_var_floor"]),
            min_occupancy=float(cfg["ubm_min_occupancy"]),
            init_frames=int(cfg["ubm_init_frames"]),
            kmeans_iters=int(cfg["ubm_kmeans_iters"]),
            kmeans_restarts=int(cfg["ubm_kmeans_restarts"]),
            chunk=int(cfg["frame_chunk"]),
            device=self.device,
            progress=self.progress,
        )
        del allf
        max_utts = int(cfg["tv_max_train_utts"] or 0)
        order = np.argsort(-lengths, kind="stable")
        train_idx = np.sort(order[:max_utts]) if 0 < max_utts < len(feats) else np.arange(len(feats))
        train_idx = train_idx[lengths[train_idx] > 0]
        log.info("training a %d-dim total variability matrix on %d utterances", cfg["ivector_dim"], len(train_idx))
        N, F = self.compute_stats([feats[i] for i in train_idx])
        self._train_tv(N, F)
        self.set_postprocessing(self._extract(N, F))
        return self

    def set_postprocessing(self, raw: np.ndarray) -> None:
        """Fit the post-processing (centring, whitening, as the config says) on raw i-vectors `raw`."""
        self.ivector_mean, self.whitener = fit_postprocessing(raw, bool(self.cfg["center"]), bool(self.cfg["whiten"]))

    def postprocess(self, raw: np.ndarray) -> np.ndarray:
        """Raw i-vectors through the fitted post-processing (`apply_postprocessing`; key `length_norm`)."""
        if self.ivector_mean is None:
            raise RuntimeError("the i-vector post-processing is not fitted (set_postprocessing)")
        return apply_postprocessing(raw, self.ivector_mean, self.whitener, bool(self.cfg["length_norm"]))

    def _extract(self, N: torch.Tensor, F: torch.Tensor) -> np.ndarray:
        dev = self.device
        sigma = self.ubm.variances.double().reshape(-1).to(dev)
        inv_sigma = 1.0 / sigma
        TT = self._tt(self.T, inv_sigma)
        out = []
        bs = int(self.cfg["utt_batch"])
        for s in range(0, N.shape[0], bs):
            w, _, _ = self._posterior(
                N[s : s + bs].to(dev, torch.float64), F[s : s + bs].to(dev, torch.float64),
                self.T, inv_sigma, TT, self.offset,
            )
            out.append(w.float().cpu().numpy())
        R = self.T.shape[1]
        return np.concatenate(out) if out else np.zeros((0, R), np.float32)

    def transform(self, feature_list: Sequence, normalize: bool = True) -> np.ndarray:
        """(U, ivector_dim) float32 posterior means; with `normalize`, post-processed (`postprocess`)."""
        if self.T is None:
            raise RuntimeError("IVectorExtractor is not fitted")
        bs = max(1, int(self.cfg["utt_batch"]))
        out = []
        for s in _tqdm(range(0, len(feature_list), bs), self.progress, desc="i-vectors", leave=False):
            N, F = self.compute_stats(feature_list[s : s + bs], progress=False)
            out.append(self._extract(N, F))
        ivecs = np.concatenate(out) if out else np.zeros((0, self.T.shape[1]), np.float32)
        if normalize:
            ivecs = self.postprocess(ivecs)
        return ivecs.astype(np.float32)

    def save(self, path: str | os.PathLike) -> None:
        """npz: UBM, T, offset, the post-processing (ivector_mean, whitener if any) and the config (JSON)."""
        if self.T is None:
            raise RuntimeError("IVectorExtractor is not fitted")
        from speaker_neurons.utils import save_npz

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        save_npz(path, {  # byte-identical for identical extractors
            "config": np.array(json.dumps(self.cfg, sort_keys=True)),
            "T": self.T.cpu().numpy(),
            "offset": self.offset.cpu().numpy(),
            "ivector_mean": np.asarray(self.ivector_mean, dtype=np.float32),
            **({} if self.whitener is None else {"whitener": np.asarray(self.whitener, dtype=np.float32)}),
            **self.ubm.state_dict(),
        })

    @classmethod
    def load(cls, path: str | os.PathLike, device="cpu", progress: bool = False) -> "IVectorExtractor":
        with np.load(path, allow_pickle=False) as z:
            ext = cls(json.loads(str(z["config"])), device=device, progress=progress)
            dev = ext.device
            ext.ubm = DiagGMM(
                torch.from_numpy(z["ubm_weights"]).to(dev),
                torch.from_numpy(z["ubm_means"]).to(dev),
                torch.from_numpy(z["ubm_variances"]).to(dev),
            )
            ext.T = torch.from_numpy(z["T"]).to(dev, torch.float64)
            ext.offset = torch.from_numpy(z["offset"]).to(dev, torch.float64)
            ext.ivector_mean = z["ivector_mean"].astype(np.float32)
            ext.whitener = z["whitener"].astype(np.float32) if "whitener" in z.files else None
        if bool(ext.cfg["whiten"]) != (ext.whitener is not None):
            raise ValueError(f"{path}: its config says whiten={ext.cfg['whiten']} but it holds "
                             f"{'a' if ext.whitener is not None else 'no'} whitening matrix; re-run rule ivectors")
        return ext


# --------------------------------------------------------------------------------------------------
# pipeline


def extract_features(
    wav_items: Iterable[tuple[str, np.ndarray]], config: dict[str, Any] | None = None, device="cpu",
    progress: bool = True,
) -> tuple[list[str], list[torch.Tensor], dict[str, int]]:
    """Features of every (utt_id, 16 kHz waveform). Returns (utt_ids, features, counts) where counts has
    `utterances`, `frames`, `voiced_frames`, `no_voiced_fallback`, `empty` (too short for one frame).
    On CPU the per-utterance front end runs on one thread: its operations are too small to gain from
    more, and on a busy machine torch's thread pool made them ~20x slower."""
    cfg = resolve_ivector_config(config)
    single = _device(device).type == "cpu"
    utt_ids: list[str] = []
    feats: list[torch.Tensor] = []
    seen: set[str] = set()
    counts = {"utterances": 0, "frames": 0, "voiced_frames": 0, "no_voiced_fallback": 0, "empty": 0}
    fallback_ids: list[str] = []
    for utt_id, wav in _tqdm(wav_items, progress, desc="i-vector features", unit="utt"):
        if utt_id in seen:
            raise ValueError(f"duplicate utterance id {utt_id!r}")
        seen.add(utt_id)
        fault_point("batch")
        with torch_threads(1 if single else None):
            f, info = compute_features(wav, cfg, device)
        utt_ids.append(utt_id)
        feats.append(f)
        counts["utterances"] += 1
        counts["frames"] += info.frames
        counts["voiced_frames"] += info.voiced
        if info.fallback:
            counts["no_voiced_fallback"] += 1
            fallback_ids.append(utt_id)
        if info.frames == 0:
            counts["empty"] += 1
    if fallback_ids:
        log.warning(
            "%d utterance(s) had no voiced frame and keep all frames (e.g. %s)",
            len(fallback_ids), ", ".join(fallback_ids[:5]),
        )
    if counts["empty"]:
        log.warning("%d utterance(s) are shorter than one frame; their i-vector is the prior mean", counts["empty"])
    return utt_ids, feats, counts


def extract_ivectors(
    wav_items: Iterable[tuple[str, np.ndarray]],
    config: dict[str, Any] | None = None,
    device="cpu",
    progress: bool = True,
    model_out: str | os.PathLike | None = None,
    extractor: IVectorExtractor | None = None,
    num_threads: int | None = None,
    return_info: bool = False,
    other_seeds: Sequence[int] = (),
    train_items: Iterable[tuple[str, np.ndarray]] | None = None,
):
    """The whole recipe on (utt_id, 16 kHz float waveform) items (any iterable, consumed once):
    features, UBM + T fitted on all utterances without labels (unless a fitted `extractor` is given:
    then its own config drives the features), posterior means, minus the corpus mean,
    length-normalised. Returns (utt_ids, (U, ivector_dim) float32), plus an info dict (feature
    counts, timings, T-matrix EM history) with `return_info`. `model_out`: save the extractor
    (npz, its `ivector_mean` = this corpus' mean). `num_threads`: torch CPU threads for the
    UBM / T stages (None: unchanged). `other_seeds`: also fit one extractor per seed (UBM and T
    initialised from it; same features) and return their i-vectors, normalised the same way, in
    info["other_seeds"] ({seed: (U, ivector_dim)}): how much the clusters depend on the extractor's
    seed. `train_items`: fit the extractors on these utterances instead (another corpus); the post-processing
    is still fitted on `wav_items`' i-vectors. Features are kept in memory (~240 bytes per voiced frame with
    the default 60-dim features: ~90 MB per hour of speech)."""
    import time

    cfg = extractor.cfg if extractor is not None else resolve_ivector_config(config)
    t0 = time.perf_counter()
    utt_ids, feats, counts = extract_features(wav_items, cfg, device, progress)
    t1 = time.perf_counter()
    log.info(
        "features: %d utterances, %d frames, %d voiced (%.1f%%), %d without voiced frames",
        counts["utterances"], counts["frames"], counts["voiced_frames"],
        100.0 * counts["voiced_frames"] / max(counts["frames"], 1), counts["no_voiced_fallback"],
    )
    train_feats = feats
    if train_items is not None and extractor is None:
        _, train_feats, train_counts = extract_features(train_items, cfg, device, progress)
        log.info("extractor training corpus: %d utterances, %d voiced frames", train_counts["utterances"],
                 train_counts["voiced_frames"])
        t1 = time.perf_counter()
    with torch_threads(num_threads):
        if extractor is None:
            extractor = IVectorExtractor(cfg, device=device, progress=progress).fit(train_feats)
        t2 = time.perf_counter()
        raw = extractor.transform(feats, normalize=False)
    extractor.set_postprocessing(raw)
    ivecs = extractor.postprocess(raw)
    t3 = time.perf_counter()
    log.info("i-vectors: %d x %d (features %.1f s, fit %.1f s, extraction %.1f s)",
             ivecs.shape[0], ivecs.shape[1], t1 - t0, t2 - t1, t3 - t2)
    others: dict[int, np.ndarray] = {}
    for s in other_seeds:
        with torch_threads(num_threads):
            alt = IVectorExtractor({**extractor.cfg, "seed": int(s)}, device=device, progress=False).fit(train_feats)
            raw_s = alt.transform(feats, normalize=False)
        alt.set_postprocessing(raw_s)
        others[int(s)] = alt.postprocess(raw_s)
        log.info("i-vectors of the extractor with seed %d (for the stability check)", int(s))
    if model_out is not None:
        extractor.save(model_out)
    if return_info:
        info = {
            "counts": counts,
            "seconds": {"features": t1 - t0, "fit": t2 - t1, "extract": t3 - t2},
            "tv_history": list(extractor.history),
            "config": dict(extractor.cfg),
            "other_seeds": others,
        }
        return utt_ids, ivecs, info
    return utt_ids, ivecs


def ivectors_of_manifest(manifest, extractor: IVectorExtractor, device="cpu", num_threads: int | None = None,
                         progress: bool = True) -> tuple[list[str], np.ndarray]:
    """i-vectors of every utterance of `manifest` (a DataFrame: utt_id, path; in its order) by a fitted
    `extractor` from each utterance's own audio: its features (the extractor's own config), posterior
    means, minus the extractor's `ivector_mean` (the corpus it was fitted on), unit length. Streamed in
    blocks of `utt_batch` utterances (the blocks `extract_ivectors` transforms), so memory holds one
    block's features: on the extractor's own corpus this gives the i-vectors it wrote."""
    from speaker_neurons.audio import load_audio

    if extractor.T is None or extractor.ivector_mean is None:
        raise RuntimeError("ivectors_of_manifest needs a fitted extractor with its corpus mean (IVectorExtractor.load)")
    cfg = extractor.cfg
    bs = max(1, int(cfg["utt_batch"]))
    rows = list(manifest[["utt_id", "path"]].itertuples(index=False))
    ids: list[str] = []
    out = []
    bar = _tqdm(range(0, len(rows), bs), progress, desc="i-vectors", unit="block", mininterval=5)
    for s in bar:
        items = ((r.utt_id, load_audio(r.path, cfg["sample_rate"])[0]) for r in rows[s : s + bs])
        block_ids, feats, _ = extract_features(items, cfg, device, progress=False)
        with torch_threads(num_threads):
            out.append(extractor.transform(feats, normalize=True))
        ids += block_ids
    if len(set(ids)) != len(ids):
        raise ValueError("duplicate utterance ids in the manifest")
    return ids, (np.concatenate(out) if out else np.zeros((0, extractor.T.shape[1]), np.float32))


# --------------------------------------------------------------------------------------------------
# Kaldi ark / scp


def write_ivectors(
    utt_ids: Sequence[str], ivecs: np.ndarray, ark_path: str | os.PathLike, scp_path: str | os.PathLike | None = None
) -> None:
    """Binary Kaldi ark of float32 vectors (+ scp with byte offsets)."""
    ivecs = np.asarray(ivecs)
    if ivecs.ndim != 2 or ivecs.shape[0] != len(utt_ids):
        raise ValueError(f"{len(utt_ids)} utterance ids but i-vectors of shape {ivecs.shape}")
    write_vectors(list(utt_ids), list(ivecs), ark_path, scp_path)


def read_ivectors(path: str | os.PathLike) -> tuple[list[str], np.ndarray]:
    """i-vectors from a Kaldi ark or scp (ours or Kaldi's, binary or text): (utt_ids, (U, dim) float32)."""
    keys, vecs = read_vectors(path)
    if not keys:
        raise ValueError(f"no i-vectors in {path}")
    dims = {v.shape[0] for v in vecs}
    if len(dims) != 1:
        raise ValueError(f"i-vectors in {path} have differing dimensions {sorted(dims)}")
    return keys, np.stack(vecs).astype(np.float32)


# --------------------------------------------------------------------------------------------------
# For the workflow


def extractor_training_rows(manifest, max_utts: int):
    """The utterances of `manifest` (another corpus) an extractor is trained on: all, or with `max_utts` > 0
    (ivector.tv_max_train_utts) the `max_utts` longest by the manifest's duration (ties by utterance id), in
    manifest order, so that only their features are ever held in memory."""
    if max_utts <= 0 or len(manifest) <= max_utts:
        return manifest
    order = manifest.sort_values(["duration", "utt_id"], ascending=[False, True], kind="stable")
    return manifest.loc[sorted(order.index[:max_utts])]


def run_ivectors(manifest_path: str | os.PathLike, config: dict[str, Any], n_other_extractors: int,
                 ark: str | os.PathLike, scp: str | os.PathLike, extractor_out: str | os.PathLike,
                 other_seeds_out: str | os.PathLike, quality_out: str | os.PathLike, device="cpu",
                 num_threads: int | None = None, train_manifest_path: str | os.PathLike | None = None
                 ) -> dict[str, Any]:
    """i-vectors of every utterance of a manifest (no labels used) as a Kaldi ark/scp, the i-vectors of
    `n_other_extractors` extractors trained with the next seeds (the cluster stability check: an npz of
    utt_id, seeds, ivectors (seeds, U, dim)), and their quality where the manifest has speakers and a
    train/test split (labels used only to score), as JSON. `config`: the `ivector` section. With
    `train_manifest_path` (stages.ivector_extractor), the extractors are trained on that corpus
    (`extractor_training_rows`) and the manifest's utterances only extracted and post-processed."""
    from speaker_neurons.audio import load_audio
    from speaker_neurons.data.manifest import read_manifest
    from speaker_neurons.evaluation import embedding_quality
    from speaker_neurons.utils import save_npz, write_json

    cfg = {k: v for k, v in config.items() if k != "kaldi_ivectors"}
    manifest = read_manifest(manifest_path)
    items = ((row.utt_id, load_audio(row.path, cfg["sample_rate"])[0]) for row in manifest.itertuples(index=False))
    seeds = [int(cfg["seed"]) + 1 + i for i in range(int(n_other_extractors))]
    train_items, train_info = None, None
    if train_manifest_path is not None:
        train = extractor_training_rows(read_manifest(train_manifest_path), int(cfg["tv_max_train_utts"] or 0))
        train_items = ((r.utt_id, load_audio(r.path, cfg["sample_rate"])[0]) for r in train.itertuples(index=False))
        train_info = {"manifest": str(train_manifest_path), "utterances": len(train),
                      "hours": round(float(train["duration"].sum()) / 3600, 3)}
        log.info("training the extractors on %d utterances (%.2f h) of %s", len(train), train_info["hours"],
                 train_manifest_path)
    utt_ids, vecs, info = extract_ivectors(items, cfg, device=device, model_out=extractor_out, num_threads=num_threads,
                                           return_info=True, other_seeds=seeds, train_items=train_items)
    write_ivectors(utt_ids, vecs, ark, scp)
    others = info["other_seeds"]
    stack = np.stack([others[s] for s in seeds]) if seeds else np.zeros((0, *vecs.shape), np.float32)
    save_npz(other_seeds_out, {"utt_id": np.asarray(list(utt_ids), dtype=str),
                               "seeds": np.asarray(seeds, dtype=np.int64), "ivectors": stack})
    quality = {**embedding_quality(utt_ids, vecs, manifest, "i-vector"), "config": info["config"],
               "extractor_trained_on": train_info or "the analysis corpus"}
    write_json(quality_out, quality)
    return quality
