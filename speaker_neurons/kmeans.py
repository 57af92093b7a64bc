"""The one frame k-means of the package: pre-training targets (log-Mel frames) and SSL clusters
(a layer's hidden states) both fit and assign through here.

Fitting is scikit-learn's seeded mini-batch k-means on at most `max_frames` frames sampled uniformly
without replacement (seeded); assignment is the nearest centre by squared Euclidean distance, in torch,
in chunks (|x|^2 is the same for every centre, so argmin(|c|^2 - 2 x.c)). The same seed and frames
give the same centres and labels.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch

from speaker_neurons.utils import get_logger

log = get_logger("kmeans")


def sample_indices(total: int, max_frames: int, seed: int) -> np.ndarray | None:
    """Sorted indices of `max_frames` of `total` frames (seeded), or None when all fit."""
    if total <= max_frames:
        return None
    return np.sort(np.random.default_rng(seed).choice(total, size=int(max_frames), replace=False))


def fit_kmeans(frames: np.ndarray, k: int, *, seed: int, batch_size: int, max_iter: int, n_init: int,
               threads: int | None = None):
    """Seeded mini-batch k-means on (N, F) frames (early stop after 10 mini-batches without
    improvement, or `max_iter` passes; best of `n_init` initialisations). `threads` caps the BLAS /
    OpenMP threads scikit-learn uses. Returns the fitted estimator."""
    from sklearn.cluster import MiniBatchKMeans
    from threadpoolctl import threadpool_limits

    frames = np.asarray(frames, dtype=np.float32)
    if frames.shape[0] < k:
        raise ValueError(f"k-means: {frames.shape[0]} frames cannot make {k} clusters")
    km = MiniBatchKMeans(n_clusters=k, random_state=seed, batch_size=min(batch_size, frames.shape[0]), max_iter=max_iter,
                         n_init=n_init, max_no_improvement=10, reassignment_ratio=0.01)
    with threadpool_limits(limits=threads):
        km.fit(frames)
    log.info("k-means k=%d on %d frames: inertia per frame %.4f", k, frames.shape[0], km.inertia_ / frames.shape[0])
    return km


def assign(frames: np.ndarray | torch.Tensor, centers: np.ndarray, chunk: int = 200_000) -> np.ndarray:
    """Nearest-centre label (int64) of every row of `frames`."""
    c = torch.from_numpy(np.asarray(centers, dtype=np.float32))
    c2 = (c * c).sum(1)
    x = frames if isinstance(frames, torch.Tensor) else torch.from_numpy(np.asarray(frames))
    out = np.empty(x.shape[0], dtype=np.int64)
    for s in range(0, x.shape[0], chunk):
        xs = x[s : s + chunk].float()
        out[s : s + xs.shape[0]] = (c2[None, :] - 2.0 * xs @ c.T).argmin(1).numpy()
    return out


def cluster_utterance_frames(
    feature_list: Sequence[np.ndarray | torch.Tensor],
    n_clusters: int,
    *,
    max_frames: int,
    seed: int,
    batch_size: int,
    max_iter: int,
    n_init: int,
    threads: int | None = None,
) -> tuple[list[np.ndarray], dict[str, Any]]:
    """Cluster the frames of per-utterance features (each (T_i, F)) and label every frame.

    Returns (labels: one int64 array (T_i,) per utterance, info: {"centers" (K, F) float32, "inertia"
    per fitted frame, "fit_frames", "total_frames", "counts" (K,) int64 over all frames}).
    """
    feats = [np.asarray(f.detach().cpu().numpy() if isinstance(f, torch.Tensor) else f, dtype=np.float32)
             for f in feature_list]
    sizes = np.array([len(f) for f in feats], dtype=np.int64)
    total = int(sizes.sum())
    if total < n_clusters:
        raise ValueError(f"k-means: {total} frames for {n_clusters} clusters")
    all_frames = np.concatenate(feats, axis=0)
    pick = sample_indices(total, max_frames, seed)
    fit = all_frames if pick is None else all_frames[pick]
    km = fit_kmeans(fit, n_clusters, seed=seed, batch_size=batch_size, max_iter=max_iter, n_init=n_init, threads=threads)
    centers = km.cluster_centers_.astype(np.float32)
    labels = assign(all_frames, centers)
    info = {
        "centers": centers,
        "inertia": float(km.inertia_) / len(fit),
        "fit_frames": int(len(fit)),
        "total_frames": total,
        "counts": np.bincount(labels, minlength=n_clusters).astype(np.int64),
    }
    return list(np.split(labels, np.cumsum(sizes)[:-1])), info
