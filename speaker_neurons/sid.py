"""SUPERB speaker identification (SPEC section 9) on a frozen upstream, and verification EER.

The SUPERB SID head is: a learnable softmax-weighted sum of the hidden states hidden_0..hidden_L
(hidden_0 is this project's input of layer 1: projected features plus positional convolution, which
the pruning never touches), a linear projector to 256, mean pooling over the valid frames, and a
linear classifier; cross-entropy, Adam.

Every step before the softmax is linear, so mean-pooling can move to the front:
    mean_t(P(sum_l w_l h_l[t]) + b) = P(sum_l w_l mean_t(h_l[t])) + b.
`pool_layer_means` therefore runs the upstream once per model and keeps one (L+1, d) matrix per
segment; training and evaluating the head then costs seconds. `SIDHead.forward_frames` is the
frame-level path; the tests prove both give the same logits.

Segments: whole utterances, or (`crop_seconds`) consecutive crops of that length (a remainder shorter
than half a crop is dropped); short crops keep the task away from the ceiling on a small corpus.
Results: test accuracy per seed with a Wilson 95% interval, the mean over seeds with a t-interval, the
learning rate picked on dev, the layer weights; EER of cosine scores of the 256-d pooled embeddings
over all test segment pairs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import pandas as pd
import torch
from torch import nn

from speaker_neurons.utils import get_logger

log = get_logger("sid")


# ------------------------------------------------------------------------------------------- segments
def segments(manifest: pd.DataFrame, crop_seconds: float | None, sample_rate: int = 16000) -> pd.DataFrame:
    """One row per segment: seg_id, utt_id, path, speaker, split, start, end (samples), sorted."""
    rows = []
    for r in manifest.sort_values("utt_id", kind="stable").itertuples(index=False):
        n = int(round(float(r.duration) * sample_rate))
        if not crop_seconds:
            bounds = [(0, n)]
        else:
            c = int(round(crop_seconds * sample_rate))
            bounds = [(s, min(s + c, n)) for s in range(0, n, c) if min(s + c, n) - s >= c / 2]
        for i, (s, e) in enumerate(bounds):
            rows.append((f"{r.utt_id}#{i}", r.utt_id, r.path, r.speaker, r.split, s, e))
    return pd.DataFrame(rows, columns=["seg_id", "utt_id", "path", "speaker", "split", "start", "end"])


@torch.inference_mode()
def pool_layer_means(model, segs: pd.DataFrame, max_batch_seconds: float = 60.0, max_batch_size: int = 32,
                     progress: bool = True) -> np.ndarray:
    """(segments, L+1, d) float32: each hidden layer's mean over the segment's valid frames."""
    from tqdm import tqdm

    from speaker_neurons.batching import audio_batches

    device = next(model.parameters()).device
    items = pd.DataFrame({"utt_id": segs["seg_id"], "path": segs["path"], "start": segs["start"],
                          "end": segs["end"], "duration": (segs["end"] - segs["start"]) / 16000.0})
    row = {s: i for i, s in enumerate(segs["seg_id"])}
    out = np.zeros((len(segs), model.num_layers + 1, model.hidden_dim), dtype=np.float32)
    bar = tqdm(total=len(segs), desc="pooled layers", unit="seg", disable=not progress, mininterval=5)
    for batch in audio_batches(items, max_batch_seconds=max_batch_seconds, max_batch_size=max_batch_size):
        idx = [row[s] for s in batch.utt_ids]
        o = model(batch.wavs.to(device), batch.lengths.to(device), return_ffn=False)
        mask = o.frame_mask().unsqueeze(-1).float()  # (B, T, 1)
        n = mask.sum(1).clamp_min(1.0)  # (B, 1)
        for l, h in enumerate(o.hidden):
            out[idx, l] = ((h.float() * mask).sum(1) / n).cpu().numpy()
        bar.update(len(idx))
    bar.close()
    return out


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
def wilson_interval(correct: int, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
    """95% Wilson score interval of a binomial proportion."""
    if n == 0:
        return (float("nan"), float("nan"))
    p = correct / n
    den = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / den
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return (centre - half, centre + half)


def mean_interval(values: Sequence[float]) -> tuple[float, float, float]:
    """(mean, low, high): Student-t 95% interval of the mean over seeds (a point when one seed)."""
    from scipy import stats

    x = np.asarray(values, dtype=np.float64)
    m = float(x.mean())
    if len(x) < 2:
        return (m, m, m)
    half = float(stats.t.ppf(0.975, len(x) - 1) * x.std(ddof=1) / math.sqrt(len(x)))
    return (m, m - half, m + half)


# ------------------------------------------------------------------------------------------- training
@dataclass
class SIDData:
    pooled: np.ndarray  # (N, L+1, d)
    labels: np.ndarray  # (N,) int64 speaker index
    split: np.ndarray  # (N,) str
    speakers: list[str]


def make_data(pooled: np.ndarray, segs: pd.DataFrame) -> SIDData:
    speakers = sorted(segs.loc[segs["split"] == "train", "speaker"].astype(str).unique())
    index = {s: i for i, s in enumerate(speakers)}
    labels = np.array([index.get(str(s), -1) for s in segs["speaker"]], dtype=np.int64)
    return SIDData(pooled, labels, segs["split"].astype(str).to_numpy(), speakers)


def train_head(data: SIDData, layers: Sequence[int], lr: float, seed: int, epochs: int = 60,
               batch_size: int = 64) -> SIDHead:
    """Adam on the train segments, `epochs` passes in seeded order."""
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    head = SIDHead(layers, data.pooled.shape[2], len(data.speakers))
    opt = torch.optim.Adam(head.parameters(), lr=lr)
    tr = np.flatnonzero(data.split == "train")
    x = torch.from_numpy(data.pooled[tr])
    y = torch.from_numpy(data.labels[tr])
    for _ in range(epochs):
        perm = torch.randperm(len(tr), generator=g)
        for s in range(0, len(tr), batch_size):
            idx = perm[s : s + batch_size]
            loss = nn.functional.cross_entropy(head(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return head.eval()


@torch.no_grad()
def accuracy(head: SIDHead, data: SIDData, split: str) -> tuple[int, int]:
    sel = np.flatnonzero(data.split == split)
    pred = head(torch.from_numpy(data.pooled[sel])).argmax(1).numpy()
    return int((pred == data.labels[sel]).sum()), int(len(sel))


@torch.no_grad()
def accuracy_by_group(head: SIDHead, data: SIDData, split: str, groups: np.ndarray) -> dict[int, dict[str, Any]]:
    """Accuracy of `split` segments per group id (e.g. the i-vector cluster of each segment's utterance;
    -1 = none), with Wilson intervals: an erase should cost its own cluster more than the others."""
    sel = np.flatnonzero(data.split == split)
    pred = head(torch.from_numpy(data.pooled[sel])).argmax(1).numpy()
    ok = pred == data.labels[sel]
    out = {}
    for g in sorted(set(groups[sel].tolist()) - {-1}):
        m = groups[sel] == g
        c, n = int(ok[m].sum()), int(m.sum())
        out[int(g)] = {"accuracy": c / n, "correct": c, "n": n, "ci95": list(wilson_interval(c, n))}
    return out


def evaluate(data: SIDData, layer_sets: dict[str, Sequence[int]], lrs: Sequence[float], seeds: Sequence[int],
             epochs: int = 60) -> dict[str, Any]:
    """Per layer set: the learning rate picked on dev (first seed), then test accuracy per seed with
    Wilson intervals, their mean with a t-interval, the layer weights, and the verification EER of
    the pooled 256-d embeddings of the test segments (first seed's head)."""
    from speaker_neurons.evaluation import build_trials, equal_error_rate

    out: dict[str, Any] = {"speakers": len(data.speakers),
                           "segments": {s: int((data.split == s).sum()) for s in ("train", "dev", "test")}}
    for name, layers in layer_sets.items():
        dev, sweep = {}, {}
        for lr in lrs:
            sweep[lr] = train_head(data, layers, lr, seeds[0], epochs)
            c, n = accuracy(sweep[lr], data, "dev")
            dev[lr] = c / max(n, 1)
        best = max(lrs, key=lambda lr: (dev[lr], -lr))
        per_seed = []
        heads = []
        for seed in seeds:  # the first seed's head at the picked rate is the sweep's (training is deterministic)
            head = sweep[best] if seed == seeds[0] else train_head(data, layers, best, seed, epochs)
            c, n = accuracy(head, data, "test")
            lo, hi = wilson_interval(c, n)
            per_seed.append({"seed": int(seed), "accuracy": c / n, "correct": c, "n": n, "ci95": [lo, hi]})
            heads.append(head)
        m, lo, hi = mean_interval([r["accuracy"] for r in per_seed])
        sel = np.flatnonzero(data.split == "test")
        with torch.no_grad():
            emb = heads[0].embed(torch.from_numpy(data.pooled[sel])).numpy()
        scores, labels = build_trials(emb, data.labels[sel])
        eer = equal_error_rate(scores, labels) if 0 < labels.sum() < len(labels) else None
        out[name] = {"layers": list(layers), "lr": best, "dev_accuracy": {str(k): v for k, v in dev.items()},
                     "test_accuracy": m, "test_ci95": [lo, hi], "per_seed": per_seed, "eer": eer,
                     "layer_weights": heads[0].weights().detach().numpy().round(4).tolist()}
        log.info("SID %s: %.2f%% [%.2f, %.2f] over %d seeds (lr %g), EER %s", name, 100 * m, 100 * lo, 100 * hi,
                 len(seeds), best, "n/a" if eer is None else f"{100 * eer:.2f}%")
    return out
