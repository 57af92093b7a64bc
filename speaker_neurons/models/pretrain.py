"""MelHuBERT pre-training, first iteration (SPEC section 7).

`pretrain_melhubert(manifest_path, out_dir, model_config, train_config)` trains a `MelHuBERT` encoder by
masked prediction of k-means cluster ids:

1. features: the model's own Kaldi-fbank path (`MelHuBERT.extract_features`) on every training utterance,
   first with identity statistics; the corpus mean/std per mel bin over every 10 ms frame is then installed
   with `set_feature_stats` (so it is saved with the model) and the normalised features are cached in
   memory (checked against `extract_features` on two utterances);
2. targets: seeded `MiniBatchKMeans` (`n_clusters`, reference 512) fitted on at most `kmeans_max_frames`
   sampled frames of those features, then every frame is labelled (`kmeans_targets`);
3. training: HuBERT span masking of the input frames (`span_mask`: a fraction `mask_prob` of the frames,
   divided by `mask_length`, become span starts; masked frames are set to zero through `frame_mask`);
   a linear head (d -> n_clusters) on the last layer's output; cross-entropy on the masked frames only.
   HuBERT itself projects to a small space and scores cosine similarity to label embeddings with a
   temperature; for a single codebook a linear soft-max classifier plays the same role and is what we use.
   AdamW, linear warm-up then linear decay to zero at `max_steps`, gradient-norm clipping, batches
   bounded by total padded frames, everything seeded (utterance order, crops, masks, dropout).

`max_minutes` is a wall-clock budget for the whole call (features, k-means and training): training stops
at the first step boundary past it and every output is still written. The learning-rate schedule is
defined in steps (not time) so a run is reproducible; `summary.json` records what stopped the run.

Outputs under `out_dir`: `model/` (native `save_upstream`: the encoder only, with its feature
statistics), `head.pt` (the prediction head), `checkpoints/step_<n>/` (encoder + `head.pt`) every
`checkpoint_every` steps, `kmeans_centers.npy`, `train_log.tsv` (one row per step: step, loss,
masked_acc, lr, elapsed_s since the call started, epoch, masked_frames, grad_norm), `loss_curve.png`
(loss and masked-frame accuracy against steps), `summary.json` (steps, what stopped the run, first / last
loss and accuracy as means over 20 steps, target unigram entropy, times, device, resolved configs).

On a shared CPU, fewer torch threads than cores can be much faster (OpenMP threads spin-waiting on
busy cores); `threads` sets them, and scikit-learn's k-means is held to the same number.

A second iteration (re-clustering the first model's hidden states) is out of scope here;
`kmeans_targets` takes any list of per-utterance feature matrices so it can be reused for it.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from speaker_neurons.models.base import resolve_device
from speaker_neurons.utils import get_logger, setup_logging

#: Training options and their defaults (sized for the demo corpus on 2 CPU cores, <= 10 minutes).
DEFAULT_TRAIN_CONFIG: dict[str, Any] = {
    "seed": 0,
    "splits": ["train"],  # manifest splits to train on; all rows when the split column is empty
    "max_utterances": None,  # cap on training utterances (a seeded random subset); None = all
    # targets
    "n_clusters": 100,  # reference 512
    "kmeans_max_frames": 100_000,
    "kmeans_batch_size": 10_000,
    "kmeans_max_iter": 100,
    "kmeans_n_init": 3,
    # masking
    "mask_prob": 0.7,
    "mask_length": 5,
    "min_masks": 1,
    # batching
    "max_frames_per_batch": 4000,  # padded model frames per batch
    "crop_frames": 1000,  # random crop of longer utterances (model frames)
    # optimisation
    "max_steps": 350,
    "max_minutes": 9.5,  # wall-clock budget of the whole call; None = unlimited
    "lr": 1.0e-3,
    "warmup_steps": 40,
    "weight_decay": 0.01,
    "betas": [0.9, 0.98],
    "eps": 1.0e-6,
    "grad_clip": 10.0,
    "amp": "auto",  # bf16 autocast: "auto" = on CUDA only, true, false
    # outputs
    "checkpoint_every": 100,
    "log_every": 10,
    "progress": True,  # tqdm bar
}

#: A small MelHuBERT for the demo (20 ms frames: half the sequence length; keys follow `MelHuBERT`'s config).
DEMO_MODEL_CONFIG: dict[str, Any] = {
    "num_layers": 4,
    "hidden_dim": 256,
    "num_heads": 4,
    "ffn_dim": 1024,
    "frame_period": 20,
    "n_mels": 40,
}


# --------------------------------------------------------------------------------------------- masking
def span_mask(
    lengths: Sequence[int] | np.ndarray | torch.Tensor,
    max_len: int | None = None,
    mask_prob: float = 0.7,
    mask_length: int = 5,
    rng: np.random.Generator | int | None = None,
    min_masks: int = 1,
) -> torch.Tensor:
    """HuBERT span masking. Returns a bool tensor (B, max_len), True = masked.

    Per utterance of n valid frames, `int(mask_prob * n / mask_length + U[0,1))` span starts (at least
    `min_masks`, at most `n - mask_length + 1`) are drawn without replacement from the positions where a
    whole span fits, and each masks `mask_length` frames. Spans may overlap (as in fairseq's default), so
    the masked fraction is about `1 - (1 - mask_prob / mask_length) ** mask_length` (0.53 for 0.7 / 5).
    Padding is never masked; utterances shorter than one span get no mask.
    """
    if isinstance(lengths, torch.Tensor):
        lengths = lengths.detach().cpu().numpy()
    lengths = np.asarray(lengths, dtype=np.int64)
    if max_len is None:
        max_len = int(lengths.max()) if len(lengths) else 0
    if not isinstance(rng, np.random.Generator):
        rng = np.random.default_rng(rng)
    mask = np.zeros((len(lengths), max_len), dtype=bool)
    span = np.arange(mask_length)
    for b, n in enumerate(lengths):
        n = int(min(n, max_len))
        positions = n - mask_length + 1
        if positions <= 0:
            continue
        num = int(mask_prob * n / mask_length + rng.random())
        num = min(max(num, min_masks), positions)
        if num <= 0:
            continue
        starts = rng.choice(positions, size=num, replace=False)
        mask[b, (starts[:, None] + span[None, :]).ravel()] = True
    return torch.from_numpy(mask)


def expected_mask_fraction(mask_prob: float, mask_length: int) -> float:
    """Approximate fraction of frames `span_mask` masks in a long utterance."""
    q = min(1.0, mask_prob / mask_length)
    return 1.0 - (1.0 - q) ** mask_length


# --------------------------------------------------------------------------------------------- targets
def kmeans_targets(
    feature_list: Sequence[np.ndarray | torch.Tensor],
    n_clusters: int,
    max_frames: int = 100_000,
    seed: int = 0,
    batch_size: int = 10_000,
    max_iter: int = 100,
    n_init: int = 3,
    threads: int | None = None,
) -> tuple[list[np.ndarray], dict[str, Any]]:
    """Cluster frames of per-utterance features (each (T_i, F)) and label every frame.

    The model is fitted on at most `max_frames` frames sampled uniformly (seeded) from all utterances;
    every frame is then assigned to its nearest centre. Mini-batch k-means stops after 10 mini-batches
    without improvement (scikit-learn's early stopping) or `max_iter` passes; the best of `n_init` inits. Returns (targets: one int64 array (T_i,) per
    utterance, info: {"centers" (K, F) float32, "inertia" per fitted frame, "fit_frames", "total_frames",
    "counts" (K,) int64 over all frames}). Deterministic for a given seed. Works for any features
    (log-Mel for the first iteration, a layer's hidden states for a second). `threads` caps the BLAS /
    OpenMP threads scikit-learn uses (None: its default).
    """
    from sklearn.cluster import MiniBatchKMeans
    from threadpoolctl import threadpool_limits

    feats = [np.asarray(f.detach().cpu().numpy() if isinstance(f, torch.Tensor) else f, dtype=np.float32)
             for f in feature_list]
    sizes = np.array([len(f) for f in feats], dtype=np.int64)
    total = int(sizes.sum())
    if total < n_clusters:
        raise ValueError(f"k-means: {total} frames for {n_clusters} clusters")
    rng = np.random.default_rng(seed)
    all_frames = np.concatenate(feats, axis=0)
    if total > max_frames:
        pick = np.sort(rng.choice(total, size=max_frames, replace=False))
        fit = all_frames[pick]
    else:
        fit = all_frames
    km = MiniBatchKMeans(
        n_clusters=n_clusters,
        random_state=seed,
        batch_size=batch_size,
        max_iter=max_iter,
        n_init=n_init,
        max_no_improvement=10,
        reassignment_ratio=0.01,
    )
    labels = np.empty(total, dtype=np.int64)
    chunk = 65536
    with threadpool_limits(limits=threads):
        km.fit(fit)
        for s in range(0, total, chunk):
            labels[s : s + chunk] = km.predict(all_frames[s : s + chunk])
    targets = np.split(labels, np.cumsum(sizes)[:-1])
    info = {
        "centers": km.cluster_centers_.astype(np.float32),
        "inertia": float(km.inertia_) / len(fit),
        "fit_frames": int(len(fit)),
        "total_frames": total,
        "counts": np.bincount(labels, minlength=n_clusters).astype(np.int64),
    }
    return list(targets), info


# --------------------------------------------------------------------------------------------- batching
def make_batches(lengths: Sequence[int], max_frames: int, rng: np.random.Generator, bucket: int = 256) -> list[list[int]]:
    """One epoch of batches (lists of utterance indices) whose padded size max_len * B <= max_frames.

    Utterances are shuffled, sorted by length inside buckets of `bucket` (less padding), cut greedily into
    batches along that order, and the batches are shuffled. An utterance longer than `max_frames` forms a
    batch of its own.
    """
    lengths = np.asarray(lengths)
    order = rng.permutation(len(lengths))
    seq: list[int] = []
    for s in range(0, len(order), bucket):
        seq += sorted(order[s : s + bucket].tolist(), key=lambda i: (-lengths[i], i))
    batches: list[list[int]] = []
    cur: list[int] = []
    cur_max = 0
    for i in seq:
        new_max = max(cur_max, int(lengths[i]))
        if cur and new_max * (len(cur) + 1) > max_frames:
            batches.append(cur)
            cur, new_max = [], int(lengths[i])
        cur.append(i)
        cur_max = new_max
    if cur:
        batches.append(cur)
    perm = rng.permutation(len(batches))
    return [batches[i] for i in perm]


def lr_at(step: int, lr: float, warmup_steps: int, max_steps: int) -> float:
    """Linear warm-up over `warmup_steps` to `lr`, then linear decay to 0 at `max_steps` (step is 1-based)."""
    if warmup_steps > 0 and step <= warmup_steps:
        return lr * step / warmup_steps
    rest = max(1, max_steps - warmup_steps)
    return lr * max(0.0, (max_steps - step) / rest)


# --------------------------------------------------------------------------------------------- helpers
def _select_rows(df, splits: Sequence[str] | None, max_utts: int | None, seed: int):
    if splits:
        split_col = df["split"].fillna("").astype(str)
        if (split_col != "").any():
            df = df[split_col.isin(list(splits))]
            if df.empty:
                raise ValueError(f"no manifest rows in splits {list(splits)}")
    df = df.sort_values("utt_id", kind="stable").reset_index(drop=True)
    if max_utts is not None and len(df) > max_utts:
        pick = np.sort(np.random.default_rng(seed).choice(len(df), size=int(max_utts), replace=False))
        df = df.iloc[pick].reset_index(drop=True)
    return df


@torch.no_grad()
def compute_features(model, paths: Sequence[str], progress: bool = True) -> tuple[list[torch.Tensor], list[int]]:
    """Features (T, F) per file through `model.extract_features` (on the CPU) with the model's current
    statistics, and each file's count of 10 ms fbank frames (for the 20 ms variant: 2T or 2T - 1)."""
    from tqdm import tqdm

    from speaker_neurons.audio import load_audio
    from speaker_neurons.models.melhubert import fbank_frames

    feats, n10 = [], []
    for p in tqdm(paths, desc="fbank", disable=not progress, mininterval=5):
        wav, _ = load_audio(p, target_sr=16000)
        w = torch.from_numpy(np.ascontiguousarray(wav, dtype=np.float32))[None]
        f, n = model.extract_features(w, torch.tensor([w.shape[1]]))
        feats.append(f[0, : int(n[0])].float().cpu().contiguous())
        n10.append(fbank_frames(w.shape[1]))
    return feats, n10


def feature_stats(raw: Sequence[torch.Tensor], n10: Sequence[int], n_mels: int) -> tuple[np.ndarray, np.ndarray]:
    """Corpus mean / std (n_mels values) over every real 10 ms fbank frame of un-normalised features.

    Stacked (20 ms) rows are unfolded into 10 ms frames and the zero partner of an odd last frame is left out.
    """
    s = torch.zeros(n_mels, dtype=torch.float64)
    s2 = torch.zeros(n_mels, dtype=torch.float64)
    count = 0
    for f, n in zip(raw, n10):
        x = f.reshape(-1, n_mels)[:n].double()
        s += x.sum(0)
        s2 += (x * x).sum(0)
        count += x.shape[0]
    if count < 2:
        raise ValueError("too few feature frames to compute statistics")
    mean = s / count
    var = (s2 / count - mean * mean) * count / (count - 1)
    std = var.clamp_min(1e-10).sqrt()
    return mean.numpy(), std.numpy()


def normalise_features(model, raw: Sequence[torch.Tensor], n10: Sequence[int]) -> list[torch.Tensor]:
    """Apply the model's stored statistics to features computed with identity statistics (as
    `extract_features` would: for 20 ms, the zero partner of an odd last frame stays zero)."""
    mean = model.feature_mean.detach().cpu().float()
    std = model.feature_std.detach().cpu().float()
    out = []
    for f, n in zip(raw, n10):
        y = (f - mean) / std
        if model.stack > 1 and n < y.shape[0] * model.stack:
            y[-1, n % model.stack * model.n_mels :] = 0.0
        out.append(y)
    return out


@torch.no_grad()
def _check_normalisation(model, paths: Sequence[str], feats: Sequence[torch.Tensor], n10: Sequence[int]) -> None:
    """The cached features must be the model's own: compare an even and an odd utterance."""
    from speaker_neurons.audio import load_audio

    picks = []
    for parity in (0, 1):
        i = next((i for i, n in enumerate(n10) if n % 2 == parity), None)
        if i is not None:
            picks.append(i)
    for i in picks:
        wav, _ = load_audio(paths[i], target_sr=16000)
        w = torch.from_numpy(np.ascontiguousarray(wav, dtype=np.float32))[None]
        f, n = model.extract_features(w, torch.tensor([w.shape[1]]))
        if not torch.allclose(f[0, : int(n[0])].float(), feats[i], atol=1e-4, rtol=1e-4):
            raise RuntimeError(f"cached normalised features differ from MelHuBERT.extract_features ({paths[i]})")


def _save_head(head: nn.Linear, path: Path, n_clusters: int) -> None:
    torch.save({"state_dict": {k: v.detach().cpu() for k, v in head.state_dict().items()},
                "in_features": head.in_features, "n_clusters": n_clusters, "kind": "linear"}, path)


def _plot(log_rows: list[tuple], path: Path, title: str, ref_loss: float | None = None) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7.5, 4.5), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    if log_rows:
        steps = np.array([r[0] for r in log_rows])
        loss = np.array([r[1] for r in log_rows])
        acc = np.array([r[2] for r in log_rows])
        w = max(1, min(20, len(steps) // 10))
        kern = np.ones(w) / w
        smooth = lambda y: np.convolve(y, kern, mode="valid")  # noqa: E731
        ax.plot(steps, loss, color="tab:blue", alpha=0.25, lw=0.8)
        ax.plot(steps[w - 1 :], smooth(loss), color="tab:blue", lw=1.6, label=f"loss (mean of {w})")
        if ref_loss is not None:
            ax.axhline(ref_loss, color="tab:gray", ls="--", lw=1, label="target unigram entropy")
        ax2 = ax.twinx()
        ax2.plot(steps[w - 1 :], smooth(acc) * 100, color="tab:orange", lw=1.4, label="masked accuracy")
        ax2.set_ylabel("masked-frame accuracy (%)", color="tab:orange")
        ax2.tick_params(axis="y", colors="tab:orange")
        h1, l1 = ax.get_legend_handles_labels()
        h2, l2 = ax2.get_legend_handles_labels()
        ax.legend(h1 + h2, l1 + l2, loc="upper right", fontsize=8)
    ax.set_xlabel("update step")
    ax.set_ylabel("cross-entropy on masked frames (nats)", color="tab:blue")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)


def _mean(xs: Sequence[float]) -> float | None:
    return float(np.mean(xs)) if len(xs) else None


# --------------------------------------------------------------------------------------------- main
def pretrain_melhubert(
    manifest_path: str | os.PathLike,
    out_dir: str | os.PathLike,
    model_config: dict | None = None,
    train_config: dict | None = None,
    device: str | torch.device = "auto",
    log: logging.Logger | str | os.PathLike | None = None,
    threads: int | None = None,
    return_model: bool = False,
):
    """Pre-train a MelHuBERT (first iteration) on the manifest's training rows; returns the summary dict.

    `model_config`: `MelHuBERT` config (None: `DEMO_MODEL_CONFIG`; missing keys take MelHuBERT's defaults);
    `train_config`: keys of `DEFAULT_TRAIN_CONFIG` (unknown keys raise). `device`: "auto" (CUDA when
    available), "cpu", "cuda", ... `log`: a logger, or a path to log to. `threads`: torch CPU threads.
    `return_model`: return (summary, model, head) instead, the model in eval mode on `device`.
    """
    from tqdm import tqdm

    from speaker_neurons.data.manifest import read_manifest
    from speaker_neurons.models.melhubert import MelHuBERT
    from speaker_neurons.models.native import save_upstream

    t0 = time.monotonic()
    if log is None:
        log = get_logger("pretrain")
    elif not isinstance(log, logging.Logger):
        log = setup_logging(log)
    cfg = dict(DEFAULT_TRAIN_CONFIG)
    unknown = set(train_config or {}) - set(cfg)
    if unknown:
        raise ValueError(f"unknown train_config keys: {sorted(unknown)}")
    cfg.update(train_config or {})
    mcfg = dict(DEMO_MODEL_CONFIG if model_config is None else model_config)
    if threads:
        torch.set_num_threads(int(threads))
    dev = resolve_device(device)
    budget_s = float(cfg["max_minutes"]) * 60 if cfg["max_minutes"] else math.inf
    seed = int(cfg["seed"])
    out = Path(out_dir)
    if (out / "checkpoints").exists():  # stale checkpoints of an earlier run
        shutil.rmtree(out / "checkpoints")
    (out / "checkpoints").mkdir(parents=True, exist_ok=True)
    log.info("pre-training MelHuBERT on %s -> %s (device %s, %d threads)", manifest_path, out, dev,
             torch.get_num_threads())

    # ---- data and features
    df = _select_rows(read_manifest(manifest_path), cfg["splits"], cfg["max_utterances"], seed)
    torch.manual_seed(seed)
    model = MelHuBERT(mcfg)
    model.eval()
    raw, n10 = compute_features(model, df["path"].tolist(), progress=bool(cfg["progress"]))
    mean, std = feature_stats(raw, n10, model.n_mels)
    model.set_feature_stats(mean, std)
    feats = normalise_features(model, raw, n10)
    del raw
    _check_normalisation(model, df["path"].tolist(), feats, n10)
    keep = [i for i, f in enumerate(feats) if len(f) >= int(cfg["mask_length"])]
    if len(keep) < len(feats):
        log.warning("%d utterance(s) shorter than one mask span left out", len(feats) - len(keep))
        feats = [feats[i] for i in keep]
    if not feats:
        raise ValueError(f"{manifest_path}: no training utterance long enough")
    lengths = np.array([len(f) for f in feats])
    n_frames = int(lengths.sum())
    log.info("%d utterances, %d frames (%.2f h), feature dim %d, %.1f s", len(feats), n_frames,
             n_frames * model.stack * 0.010 / 3600, feats[0].shape[1], time.monotonic() - t0)

    # ---- targets
    targets, km = kmeans_targets(feats, int(cfg["n_clusters"]), max_frames=int(cfg["kmeans_max_frames"]), seed=seed,
                                 batch_size=int(cfg["kmeans_batch_size"]), max_iter=int(cfg["kmeans_max_iter"]),
                                 n_init=int(cfg["kmeans_n_init"]), threads=torch.get_num_threads())
    targets = [torch.from_numpy(t) for t in targets]
    np.save(out / "kmeans_centers.npy", km["centers"])
    p = km["counts"] / km["counts"].sum()
    unigram_entropy = float(-(p[p > 0] * np.log(p[p > 0])).sum())
    log.info("k-means: %d clusters on %d frames, inertia/frame %.2f, used clusters %d, target entropy %.3f nats, %.1f s",
             cfg["n_clusters"], km["fit_frames"], km["inertia"], int((km["counts"] > 0).sum()), unigram_entropy,
             time.monotonic() - t0)

    # ---- model, head, optimiser
    model.to(dev)
    head = nn.Linear(model.hidden_dim, int(cfg["n_clusters"])).to(dev)
    params = list(model.parameters()) + list(head.parameters())
    decay = [q for q in params if q.ndim >= 2]
    no_decay = [q for q in params if q.ndim < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": float(cfg["weight_decay"])},
                             {"params": no_decay, "weight_decay": 0.0}],
                            lr=float(cfg["lr"]), betas=tuple(cfg["betas"]), eps=float(cfg["eps"]))
    amp = cfg["amp"]
    use_amp = (dev.type == "cuda") if amp == "auto" else bool(amp)
    amp_ctx = (lambda: torch.autocast(dev.type, dtype=torch.bfloat16)) if use_amp else (lambda: torch.autocast(dev.type, enabled=False))
    n_params = sum(q.numel() for q in model.parameters())
    log.info("model: %d layers, d=%d, %.2f M parameters; head %d -> %d; amp %s", model.num_layers, model.hidden_dim,
             n_params / 1e6, model.hidden_dim, cfg["n_clusters"], use_amp)

    rng = np.random.default_rng(seed + 1)
    max_steps = int(cfg["max_steps"])
    crop = int(cfg["crop_frames"]) if cfg["crop_frames"] else None
    log_rows: list[tuple] = []
    tsv = open(out / "train_log.tsv", "w")
    tsv.write("step\tloss\tmasked_acc\tlr\telapsed_s\tepoch\tmasked_frames\tgrad_norm\n")
    checkpoints: list[str] = []
    step, epoch, stopped_by = 0, 0, "max_steps"
    t_train = time.monotonic()
    bar = tqdm(total=max_steps, desc="pretrain", disable=not cfg["progress"], mininterval=5)
    model.train()
    head.train()
    try:
        while step < max_steps:
            epoch += 1
            for batch in make_batches(np.minimum(lengths, crop) if crop else lengths, int(cfg["max_frames_per_batch"]), rng):
                if step >= max_steps:
                    break
                if time.monotonic() - t0 >= budget_s:
                    stopped_by = "max_minutes"
                    break
                # crops, padding
                segs = []
                for i in batch:
                    n = int(lengths[i])
                    s = int(rng.integers(0, n - crop + 1)) if crop and n > crop else 0
                    e = s + (min(n, crop) if crop else n)
                    segs.append((feats[i][s:e], targets[i][s:e]))
                blen = torch.tensor([len(x) for x, _ in segs], dtype=torch.long)
                T = int(blen.max())
                x = torch.zeros(len(segs), T, feats[0].shape[1])
                y = torch.full((len(segs), T), -100, dtype=torch.long)
                for b, (fx, fy) in enumerate(segs):
                    x[b, : len(fx)] = fx
                    y[b, : len(fy)] = fy
                mask = span_mask(blen, T, float(cfg["mask_prob"]), int(cfg["mask_length"]), rng, int(cfg["min_masks"]))
                if not mask.any():
                    continue
                x, y, mask, blen_d = x.to(dev), y.to(dev), mask.to(dev), blen.to(dev)
                step += 1
                lr = lr_at(step, float(cfg["lr"]), int(cfg["warmup_steps"]), max_steps)
                for g in opt.param_groups:
                    g["lr"] = lr
                with amp_ctx():
                    outp = model.encode(x, blen_d, frame_mask=mask, return_ffn=False)
                    h = outp.hidden[-1][mask]
                    logits = head(h).float()
                tgt = y[mask]
                loss = F.cross_entropy(logits, tgt)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                gn = torch.nn.utils.clip_grad_norm_(params, float(cfg["grad_clip"]))
                opt.step()
                with torch.no_grad():
                    acc = (logits.argmax(-1) == tgt).float().mean().item()
                lv = loss.item()
                el = time.monotonic() - t0
                log_rows.append((step, lv, acc, lr, el))
                tsv.write(f"{step}\t{lv:.5f}\t{acc:.5f}\t{lr:.6g}\t{el:.2f}\t{epoch}\t{int(tgt.numel())}\t{float(gn):.4f}\n")
                bar.update(1)
                bar.set_postfix(loss=f"{lv:.3f}", acc=f"{acc:.3f}", refresh=False)
                if not math.isfinite(lv):
                    raise FloatingPointError(f"non-finite loss at step {step}")
                if step % int(cfg["log_every"]) == 0 or step == 1:
                    tsv.flush()
                    log.info("step %d epoch %d loss %.4f masked acc %.3f lr %.2e grad %.2f (%.1f s)", step, epoch, lv,
                             acc, lr, float(gn), el)
                if cfg["checkpoint_every"] and step % int(cfg["checkpoint_every"]) == 0:
                    ck = out / "checkpoints" / f"step_{step}"
                    model.eval()
                    save_upstream(model, ck)
                    model.train()
                    _save_head(head, ck / "head.pt", int(cfg["n_clusters"]))
                    checkpoints.append(str(ck.relative_to(out)))
            if stopped_by == "max_minutes":
                break
    finally:
        bar.close()
        tsv.close()
    train_s = time.monotonic() - t_train
    if step == 0:
        log.warning("no training step was taken (max_minutes=%s spent before training)", cfg["max_minutes"])
    model.eval()
    save_upstream(model, out / "model")
    _save_head(head, out / "head.pt", int(cfg["n_clusters"]))

    losses = [r[1] for r in log_rows]
    accs = [r[2] for r in log_rows]
    summary = {
        "steps": step,
        "epochs": epoch,
        "stopped_by": stopped_by,
        "first_loss": _mean(losses[:20]),
        "last_loss": _mean(losses[-20:]),
        "first_masked_acc": _mean(accs[:20]),
        "last_masked_acc": _mean(accs[-20:]),
        "target_unigram_entropy": unigram_entropy,
        "chance_loss": math.log(int(cfg["n_clusters"])),
        "train_seconds": round(train_s, 2),
        "total_seconds": round(time.monotonic() - t0, 2),
        "device": str(dev),
        "device_name": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
        "threads": torch.get_num_threads(),
        "utterances": len(feats),
        "frames": n_frames,
        "parameters": n_params,
        "kmeans": {k: v for k, v in km.items() if k not in ("centers", "counts")},
        "checkpoints": checkpoints,
        "model_dir": "model",
        "model_config": model.config,
        "train_config": cfg,
        "manifest": str(manifest_path),
    }
    title = (f"MelHuBERT pre-training: {model.num_layers} layers, d={model.hidden_dim}, {cfg['n_clusters']} clusters, "
             f"{len(feats)} utts\n{step} steps ({stopped_by}) in {train_s / 60:.1f} min on {summary['device_name']}"
             + (f", {summary['threads']} thread(s)" if dev.type == "cpu" else ""))
    _plot(log_rows, out / "loss_curve.png", title, unigram_entropy)
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    log.info("done: %d steps (%s), loss %.3f -> %.3f, masked acc %.3f -> %.3f, %.1f s", step, stopped_by,
             summary["first_loss"] or float("nan"), summary["last_loss"] or float("nan"),
             summary["first_masked_acc"] or float("nan"), summary["last_masked_acc"] or float("nan"),
             summary["total_seconds"])
    if return_model:
        return summary, model, head
    return summary
