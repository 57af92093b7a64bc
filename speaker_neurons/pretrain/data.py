"""What masked-prediction training reads: normalised log-Mel features and k-means targets per utterance.

1. features: the model's own Kaldi-fbank path (`MelHuBERT.extract_features`) on every training
   utterance, first with identity statistics; for a new model the corpus mean/std per mel bin over every
   10 ms frame is then installed with `set_feature_stats` (so it is saved with the model), while a model
   that already has statistics (continued pre-training of a pruned model) keeps its own. The normalised
   features are cached in memory and checked against `extract_features` on two utterances.
2. targets: the package's frame k-means (`speaker_neurons.kmeans`) fitted on a seeded sample of those
   features, or given centres (continued training keeps its parent's targets); every frame is labelled.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import pandas as pd
import torch

from speaker_neurons.utils import get_logger

log = get_logger("pretrain.data")


@dataclass
class TrainingData:
    feats: list[torch.Tensor]  # (T_i, F) normalised model inputs
    targets: list[torch.Tensor]  # (T_i,) int64 cluster ids
    centers: np.ndarray  # (K, F) float32 k-means centres the targets come from
    kmeans: dict[str, Any] = field(default_factory=dict)  # fit_frames, total_frames, inertia (None when given)

    @property
    def lengths(self) -> np.ndarray:
        return np.array([len(f) for f in self.feats])

    @property
    def n_clusters(self) -> int:
        return int(self.centers.shape[0])

    @property
    def unigram_entropy(self) -> float:
        """Entropy (nats) of the target distribution: the loss of a model that ignores its input."""
        counts = np.bincount(torch.cat(self.targets).numpy(), minlength=self.n_clusters)
        p = counts / counts.sum()
        return float(-(p[p > 0] * np.log(p[p > 0])).sum())


def select_rows(df: pd.DataFrame, splits: Sequence[str] | None, max_utts: int | None, seed: int) -> pd.DataFrame:
    """The manifest rows to train on (sorted by utterance id; a seeded subset under `max_utts`)."""
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


def _load(path: str) -> torch.Tensor:
    from speaker_neurons.audio import load_audio
    from speaker_neurons.models.melhubert import MelHuBERT

    wav, _ = load_audio(path, target_sr=MelHuBERT.sample_rate)
    return torch.from_numpy(np.ascontiguousarray(wav, dtype=np.float32))[None]


@torch.no_grad()
def compute_features(model, paths: Sequence[str], progress: bool = True) -> tuple[list[torch.Tensor], list[int]]:
    """Features (T, F) per file through `model.extract_features` (on the CPU) with identity statistics,
    and each file's count of 10 ms fbank frames (for the 20 ms variant: 2T or 2T - 1)."""
    from tqdm import tqdm

    from speaker_neurons.models.melhubert import fbank_frames

    mean, std = model.feature_mean.detach().clone(), model.feature_std.detach().clone()
    model.set_feature_stats(np.zeros(model.n_mels), np.ones(model.n_mels))
    try:
        feats, n10 = [], []
        for p in tqdm(paths, desc="fbank", disable=not progress, mininterval=5):
            w = _load(p)
            f, n = model.extract_features(w, torch.tensor([w.shape[1]]))
            feats.append(f[0, : int(n[0])].float().cpu().contiguous())
            n10.append(fbank_frames(w.shape[1]))
    finally:
        model.set_feature_stats(mean.cpu().numpy(), std.cpu().numpy())
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
def check_normalisation(model, paths: Sequence[str], feats: Sequence[torch.Tensor], n10: Sequence[int]) -> None:
    """The cached features must be the model's own: compare an even and an odd utterance."""
    picks = []
    for parity in (0, 1):
        i = next((i for i, n in enumerate(n10) if n % 2 == parity), None)
        if i is not None:
            picks.append(i)
    for i in picks:
        w = _load(paths[i])
        f, n = model.extract_features(w, torch.tensor([w.shape[1]]))
        if not torch.allclose(f[0, : int(n[0])].float(), feats[i], atol=1e-4, rtol=1e-4):
            raise RuntimeError(f"cached normalised features differ from MelHuBERT.extract_features ({paths[i]})")


def clean_audio_paths(corpus_dir) -> dict[str, str]:
    """{utt_id: path} of the demo corpus' clean copies (channels.tsv, column clean_path)."""
    from pathlib import Path

    table = Path(corpus_dir) / "channels.tsv"
    if not table.exists():
        raise FileNotFoundError(f"{table} does not exist: pretrain.train.targets_audio: clean needs the demo corpus "
                                "with its channels (corpus.demo.channel.enabled and keep_clean)")
    df = pd.read_csv(table, sep="\t", dtype=str, keep_default_na=False)
    if "clean_path" not in df.columns or (df["clean_path"] == "").any() or df.empty:
        raise ValueError(f"{table} has no clean copy for some utterances: set corpus.demo.channel.keep_clean: true, "
                         "or pretrain.train.targets_audio: input")
    return {u: str(Path(corpus_dir) / p) for u, p in zip(df["utt_id"], df["clean_path"])}


def prepare_training_data(manifest_path, model, cfg: dict, fit_stats: bool = True, centers: np.ndarray | None = None,
                          threads: int | None = None, target_paths: dict[str, str] | None = None) -> TrainingData:
    """Features and targets for masked prediction on the manifest rows `cfg` selects (`splits`,
    `max_utterances`, `seed`). `fit_stats`: install the corpus statistics in `model` (a new model);
    else use the model's own. `centers`: label frames with these k-means centres instead of fitting
    `cfg["n_clusters"]` new ones (continued pre-training keeps its parent's targets).
    `target_paths` ({utt_id: path}, `cfg["targets_audio"]` clean): the targets are the k-means clusters
    of these files' features (normalised like the input), frame by frame, instead of the input's."""
    from speaker_neurons.data.manifest import read_manifest
    from speaker_neurons.kmeans import assign, cluster_utterance_frames

    seed = int(cfg["seed"])
    df = select_rows(read_manifest(manifest_path), cfg["splits"], cfg["max_utterances"], seed)
    paths = df["path"].tolist()
    model.eval()
    raw, n10 = compute_features(model, paths, progress=bool(cfg["progress"]))
    if fit_stats:
        model.set_feature_stats(*feature_stats(raw, n10, model.n_mels))
    feats = normalise_features(model, raw, n10)
    del raw
    check_normalisation(model, paths, feats, n10)
    keep = [i for i, f in enumerate(feats) if len(f) >= int(cfg["mask_length"])]
    if len(keep) < len(feats):
        log.warning("%d utterance(s) shorter than one mask span left out", len(feats) - len(keep))
        feats = [feats[i] for i in keep]
    if not feats:
        raise ValueError(f"{manifest_path}: no training utterance long enough")
    n_frames = int(sum(len(f) for f in feats))
    log.info("%d utterances, %d frames (%.2f h), feature dim %d", len(feats), n_frames,
             n_frames * model.stack * 0.010 / 3600, feats[0].shape[1])
    target_feats = feats
    if target_paths is not None:  # denoising: the targets come from the clean copy of each utterance
        ids = [df["utt_id"].iloc[i] for i in keep]
        missing = [u for u in ids if u not in target_paths]
        if missing:
            raise ValueError(f"no clean audio for {len(missing)} training utterance(s), e.g. {missing[:3]}")
        raw_t, n10_t = compute_features(model, [target_paths[u] for u in ids], progress=bool(cfg["progress"]))
        target_feats = normalise_features(model, raw_t, n10_t)
        bad = [u for u, a, b in zip(ids, feats, target_feats) if len(a) != len(b)]
        if bad:
            raise ValueError(f"the clean copy of {bad[0]} has another length than the audio ({len(bad)} such)")
        log.info("targets from the clean copies of the %d utterances (pretrain.train.targets_audio: clean)", len(ids))
    if centers is None:
        targets, km = cluster_utterance_frames(
            target_feats, int(cfg["n_clusters"]), max_frames=int(cfg["kmeans_max_frames"]), seed=seed,
            batch_size=int(cfg["kmeans_batch_size"]), max_iter=int(cfg["kmeans_max_iter"]),
            n_init=int(cfg["kmeans_n_init"]), threads=threads)
        centers = km.pop("centers")
        km.pop("counts")
    else:
        centers = np.asarray(centers, dtype=np.float32)
        if centers.shape[1] != feats[0].shape[1]:
            raise ValueError(f"k-means centres have dimension {centers.shape[1]}, the features {feats[0].shape[1]}")
        labels = assign(torch.cat(target_feats), centers)
        targets = np.split(labels, np.cumsum([len(f) for f in feats])[:-1])
        km = {"given_centers": True, "total_frames": n_frames}
    data = TrainingData(feats, [torch.from_numpy(np.asarray(t, dtype=np.int64)) for t in targets], centers, km)
    log.info("targets: %d clusters, %d used, unigram entropy %.3f nats", data.n_clusters,
             int((np.bincount(torch.cat(data.targets).numpy(), minlength=data.n_clusters) > 0).sum()), data.unigram_entropy)
    return data
