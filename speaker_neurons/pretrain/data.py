"""What masked-prediction training reads: normalised log-Mel features and k-means targets per utterance,
streamed from a file-backed store (`speaker_neurons.pretrain.store`), so that nothing proportional to the
corpus stays in memory (LibriSpeech 960 h: 55 GB of features on disk, O(utterances) index arrays in RAM).

1. features: one streaming pass computes the model's own Kaldi-fbank features (`MelHuBERT.extract_features`)
   of every training utterance once, with identity statistics, writes them to the store and accumulates
   the corpus sums; for a new model the corpus mean/std per mel bin over every 10 ms frame is then installed
   with `set_feature_stats` (so it is saved with the model), while a model that already has statistics
   (continued pre-training of a pruned model) keeps its own. Reads apply the model's statistics
   (`StoredFeatures`), checked against `extract_features` on two utterances.
2. targets: the package's frame k-means (`speaker_neurons.kmeans`) fitted on a seeded sample of at most
   `kmeans_max_frames` of those features (read from the store), or given centres (continued training keeps
   its parent's targets); every frame is then labelled in chunks into the store.

The store lives in the caller's `work_dir` (the workflow: the job's resume folder, so a killed job that
starts again reuses a complete store instead of redoing the feature pass) or in a temporary folder that
goes with the returned `TrainingData`.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import pandas as pd
import torch

import speaker_neurons.pretrain.store as store
from speaker_neurons import stores
from speaker_neurons.pretrain.store import StoredFeatures, StoredTargets
from speaker_neurons.utils import get_logger

log = get_logger("pretrain.data")


@dataclass
class TrainingData:
    """Per-utterance features and targets: Sequences of tensors, either in memory (lists) or read from a
    store on access (`StoredFeatures`, `StoredTargets`); training reads them through `segment`."""

    feats: Sequence[torch.Tensor]  # (T_i, F) normalised model inputs
    targets: Sequence[torch.Tensor]  # (T_i,) int64 cluster ids
    centers: np.ndarray  # (K, F) float32 k-means centres the targets come from
    kmeans: dict[str, Any] = field(default_factory=dict)  # fit_frames, total_frames, inertia (None when given)
    keep: Any = field(default=None, repr=False)  # what must live as long as the data (a temporary store folder)

    @property
    def lengths(self) -> np.ndarray:
        if isinstance(self.feats, StoredFeatures):
            return self.feats.lengths
        return np.array([len(f) for f in self.feats])

    @property
    def dim(self) -> int:
        return self.feats.dim if isinstance(self.feats, StoredFeatures) else int(self.feats[0].shape[1])

    def segment(self, i: int, start: int, stop: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(features (n, F), targets (n,)) of frames [start, stop) of utterance i."""
        x = self.feats.segment(i, start, stop) if isinstance(self.feats, StoredFeatures) else self.feats[i][start:stop]
        y = (self.targets.segment(i, start, stop) if isinstance(self.targets, StoredTargets)
             else self.targets[i][start:stop])
        return x, y

    def target_chunks(self) -> Iterator[np.ndarray]:
        """Every frame's target (int64) in utterance order, a chunk at a time."""
        if isinstance(self.targets, StoredTargets):
            yield from self.targets.chunks()
        else:
            for t in self.targets:
                yield np.asarray(t.numpy() if isinstance(t, torch.Tensor) else t, dtype=np.int64)

    @property
    def n_clusters(self) -> int:
        return int(self.centers.shape[0])

    def target_counts(self) -> np.ndarray:
        counts = np.zeros(self.n_clusters, dtype=np.int64)
        for c in self.target_chunks():
            counts += np.bincount(c, minlength=self.n_clusters)[: self.n_clusters]
        return counts

    @property
    def unigram_entropy(self) -> float:
        """Entropy (nats) of the target distribution: the loss of a model that ignores its input."""
        counts = self.target_counts()
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


class _IdentityStats:
    """Within the block, `model` computes features with identity statistics (its own are restored after)."""

    def __init__(self, model):
        self.model = model

    def __enter__(self):
        m = self.model
        self.saved = m.feature_mean.detach().clone(), m.feature_std.detach().clone()
        m.set_feature_stats(np.zeros(m.n_mels), np.ones(m.n_mels))
        return self

    def __exit__(self, *exc):
        self.model.set_feature_stats(self.saved[0].cpu().numpy(), self.saved[1].cpu().numpy())


@torch.no_grad()
def _raw_features(model, path: str) -> tuple[torch.Tensor, int]:
    """One file's features (T, F) through `model.extract_features` on the CPU (identity statistics must be
    installed) and its count of 10 ms fbank frames (for the 20 ms variant: 2T or 2T - 1)."""
    from speaker_neurons.models.melhubert import fbank_frames

    w = _load(path)
    f, n = model.extract_features(w, torch.tensor([w.shape[1]]))
    return f[0, : int(n[0])].float().cpu().contiguous(), fbank_frames(w.shape[1])


@torch.no_grad()
def compute_features(model, paths: Sequence[str], progress: bool = True) -> tuple[list[torch.Tensor], list[int]]:
    """Features (T, F) per file through `model.extract_features` (on the CPU) with identity statistics,
    and each file's count of 10 ms fbank frames (for the 20 ms variant: 2T or 2T - 1). In memory: the
    reference the streamed store is tested against."""
    from tqdm import tqdm

    feats, n10 = [], []
    with _IdentityStats(model):
        for p in tqdm(paths, desc="fbank", disable=not progress, mininterval=5):
            f, n = _raw_features(model, p)
            feats.append(f)
            n10.append(n)
    return feats, n10


class StatsAccumulator:
    """Float64 sums over every real 10 ms fbank frame of un-normalised features, one utterance at a time:
    stacked (20 ms) rows are unfolded into 10 ms frames and the zero partner of an odd last frame is left out."""

    def __init__(self, n_mels: int):
        self.n_mels = int(n_mels)
        self.s = torch.zeros(self.n_mels, dtype=torch.float64)
        self.s2 = torch.zeros(self.n_mels, dtype=torch.float64)
        self.count = 0

    def add(self, f: torch.Tensor, n10: int) -> None:
        x = f.reshape(-1, self.n_mels)[:n10].double()
        self.s += x.sum(0)
        self.s2 += (x * x).sum(0)
        self.count += x.shape[0]

    def result(self) -> tuple[np.ndarray, np.ndarray]:
        """Corpus mean / std (n_mels values)."""
        if self.count < 2:
            raise ValueError("too few feature frames to compute statistics")
        mean = self.s / self.count
        var = (self.s2 / self.count - mean * mean) * self.count / (self.count - 1)
        std = var.clamp_min(1e-10).sqrt()
        return mean.numpy(), std.numpy()


def feature_stats(raw: Sequence[torch.Tensor], n10: Sequence[int], n_mels: int) -> tuple[np.ndarray, np.ndarray]:
    """Corpus mean / std (n_mels values) over every real 10 ms fbank frame of un-normalised features.

    Stacked (20 ms) rows are unfolded into 10 ms frames and the zero partner of an odd last frame is left out.
    """
    acc = StatsAccumulator(n_mels)
    for f, n in zip(raw, n10):
        acc.add(f, n)
    return acc.result()


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
    """The training features must be the model's own: compare an even and an odd utterance."""
    picks = []
    for parity in (0, 1):
        i = next((i for i, n in enumerate(n10) if n % 2 == parity), None)
        if i is not None:
            picks.append(i)
    for i in picks:
        w = _load(paths[i])
        f, n = model.extract_features(w, torch.tensor([w.shape[1]]))
        if not torch.allclose(f[0, : int(n[0])].float(), feats[i], atol=1e-4, rtol=1e-4):
            raise RuntimeError(f"the training features differ from MelHuBERT.extract_features ({paths[i]})")


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


def _inputs_digest(ids: Sequence[str], paths: Sequence[str], clean: Sequence[str] | None) -> str:
    """A hash of the rows a feature store is made of: utterance id, path, and each file's size and mtime."""
    import hashlib

    h = hashlib.sha256()
    for k, (u, p) in enumerate(zip(ids, paths)):
        for q in (p,) if clean is None else (p, clean[k]):
            try:
                st = os.stat(q)
                stamp = f"{st.st_size}:{st.st_mtime_ns}"
            except OSError:
                stamp = "missing"
            h.update(f"{u}\t{q}\t{stamp}\n".encode())
    return h.hexdigest()


def _array_digest(a) -> str:
    import hashlib

    a = np.ascontiguousarray(np.asarray(a))
    return f"{a.dtype.name}{list(a.shape)}:{hashlib.sha256(a.tobytes()).hexdigest()}"


def _write_features(model, ids: Sequence[str], paths: Sequence[str], clean: Sequence[str] | None, fdir: Path,
                    fdig: str, mask_length: int, progress: bool, est_seconds: float | None) -> None:
    """The feature pass: every file's features (identity statistics) once into the store, with the corpus sums
    (over every selected utterance) and the index of those at least one mask span long (the kept ones)."""
    from contextlib import nullcontext

    from tqdm import tqdm

    tmp = stores.start(fdir)
    if est_seconds:
        need = est_seconds * 100 / model.stack * model.feature_dim * 4 * (2 if clean is not None else 1)
        free = shutil.disk_usage(tmp).free
        (log.warning if need > free else log.info)(
            "feature store: about %.3g GB of float32 features for %.2f h of audio%s in %s (%.3g GB free there)",
            need / 1e9, est_seconds / 3600, " and its clean copy" if clean is not None else "", fdir, free / 1e9)
    acc = StatsAccumulator(model.n_mels)
    offsets, n10, kept, clean_n10 = [0], [], [], []
    with _IdentityStats(model), store.RowWriter(tmp / "input.f32", np.float32) as w_in, \
            (store.RowWriter(tmp / "clean.f32", np.float32) if clean is not None else nullcontext()) as w_clean:
        for k in tqdm(range(len(paths)), desc="fbank", disable=not progress, mininterval=5):
            f, n = _raw_features(model, paths[k])
            acc.add(f, n)
            if len(f) < mask_length:
                continue
            if clean is not None:
                g, m = _raw_features(model, clean[k])
                if len(g) != len(f):
                    raise ValueError(f"the clean copy of {ids[k]} has another length than the audio "
                                     f"({len(g)} frames, not {len(f)})")
                w_clean.write(g)
                clean_n10.append(m)
            w_in.write(f)
            offsets.append(offsets[-1] + len(f))
            n10.append(n)
            kept.append(k)
    np.save(tmp / "offsets.npy", np.asarray(offsets, dtype=np.int64))
    np.save(tmp / "n10.npy", np.asarray(n10, dtype=np.int64))
    np.save(tmp / "kept.npy", np.asarray(kept, dtype=np.int64))
    if clean is not None:
        np.save(tmp / "clean_n10.npy", np.asarray(clean_n10, dtype=np.int64))
    np.savez(tmp / "stats.npz", s=acc.s.numpy(), s2=acc.s2.numpy(), count=np.int64(acc.count))
    stores.finish(tmp, store.INFO, {"digest": fdig, "format": store.FORMAT, "selected": len(paths),
                                    "utterances": len(kept), "frames": int(offsets[-1]), "dim": int(model.feature_dim),
                                    "clean": clean is not None})
    log.info("feature store written: %d utterances, %d frames; %s", len(kept), offsets[-1], store.disk_line(fdir))


def _gather(feats, pick: np.ndarray | None) -> np.ndarray:
    """The rows at the sorted global indices `pick` (None: every row) of `feats` (`StoredFeatures`,
    `store.StoredRows`: anything with `chunks`, `total` and `dim`), read chunk by chunk."""
    out = np.empty((feats.total if pick is None else len(pick), feats.dim), dtype=np.float32)
    for s, x in feats.chunks():
        e = s + x.shape[0]
        if pick is None:
            out[s:e] = x.numpy()
        else:
            a, b = np.searchsorted(pick, [s, e])
            if b > a:
                out[a:b] = x.numpy()[pick[a:b] - s]
        del x  # before the next chunk is read: one chunk in memory at a time
    return out


def fit_centers(rows, cfg: dict, threads: int | None) -> tuple[np.ndarray, dict[str, Any]]:
    """k-means (`cfg` n_clusters and kmeans_* keys) of a seeded sample of at most `kmeans_max_frames` of
    `rows` (as `_gather` reads), as `kmeans.cluster_utterance_frames` fits it in memory: (centres (K, d)
    float32, {inertia per fitted frame, fit_frames, total_frames})."""
    from speaker_neurons.kmeans import fit_kmeans, sample_indices

    seed, total, k = int(cfg["seed"]), rows.total, int(cfg["n_clusters"])
    if total < k:
        raise ValueError(f"k-means: {total} frames for {k} clusters")
    fit = _gather(rows, sample_indices(total, int(cfg["kmeans_max_frames"]), seed))
    km = fit_kmeans(fit, k, seed=seed, batch_size=int(cfg["kmeans_batch_size"]), max_iter=int(cfg["kmeans_max_iter"]),
                    n_init=int(cfg["kmeans_n_init"]), threads=threads)
    return km.cluster_centers_.astype(np.float32), {"inertia": float(km.inertia_) / len(fit),
                                                    "fit_frames": int(len(fit)), "total_frames": total}


def _write_targets(tdir: Path, tdig: str, feats, cfg: dict, centers: np.ndarray | None,
                   threads: int | None) -> None:
    """k-means on a seeded sample of `feats` (or the given `centers`), then every frame's label, chunk by chunk."""
    from speaker_neurons.kmeans import assign

    total = feats.total
    tmp = stores.start(tdir)
    if centers is None:
        centers, record = fit_centers(feats, cfg, threads)
    else:
        record = {"given_centers": True, "total_frames": total}
    dtype = store.label_dtype(len(centers))
    counts = np.zeros(len(centers), dtype=np.int64)
    name = f"labels.{np.dtype(dtype).name.replace('int', 'i')}"
    with store.RowWriter(tmp / name, dtype) as w:
        for _, x in feats.chunks():
            labels = assign(x, centers)
            counts += np.bincount(labels, minlength=len(centers))
            w.write(labels)
            del x, labels  # before the next chunk is read
    np.save(tmp / "centers.npy", np.asarray(centers, dtype=np.float32))
    stores.finish(tmp, store.INFO, {"digest": tdig, "format": store.FORMAT, "file": name,
                                    "dtype": np.dtype(dtype).name, "rows": total, "kmeans": record,
                                    "counts": counts.tolist()})
    log.info("target store written: %d labels; %s", total, store.disk_line(tdir))


@dataclass
class StoredInputs:
    """The feature part of a store (`prepare_features`): the model's normalised input features, those the
    targets come from (the clean copies' for denoising, else the same), the part's digest and folder."""

    feats: StoredFeatures
    target_feats: StoredFeatures
    digest: str  # of the feature part: what a derived part (targets, a teacher's hidden states) is keyed on
    work: Path  # the store's folder
    keep: Any = field(default=None, repr=False)  # a temporary folder to keep alive (work_dir None)


def prepare_features(manifest_path, model, cfg: dict, fit_stats: bool = True,
                     target_paths: dict[str, str] | None = None,
                     work_dir: str | os.PathLike | None = None) -> StoredInputs:
    """The feature part of `prepare_training_data` (step 1 of the module): the manifest rows `cfg` selects
    (`splits`, `max_utterances`, `seed`; utterances shorter than `mask_length` left out), their features in
    the store under `work_dir` (None: a temporary folder kept alive by the result), reused when complete.
    `fit_stats`: install the corpus statistics in `model`; else the reads use the model's own."""
    from speaker_neurons.data.manifest import read_manifest

    seed = int(cfg["seed"])
    df = select_rows(read_manifest(manifest_path), cfg["splits"], cfg["max_utterances"], seed)
    ids, paths = df["utt_id"].astype(str).tolist(), df["path"].astype(str).tolist()
    clean = None
    if target_paths is not None:  # denoising: the targets come from the clean copy of each utterance
        missing = [u for u in ids if u not in target_paths]
        if missing:
            raise ValueError(f"no clean audio for {len(missing)} training utterance(s), e.g. {missing[:3]}")
        clean = [str(target_paths[u]) for u in ids]
    model.eval()
    keep = None
    if work_dir is None:
        keep = tempfile.TemporaryDirectory(prefix="pretrain-data-")
        work_dir = keep.name
    work = Path(work_dir)
    work.mkdir(parents=True, exist_ok=True)

    mask_length = int(cfg["mask_length"])
    fdig = store.digest("features", store.FORMAT, {"n_mels": model.n_mels, "stack": model.stack,
                                                   "sample_rate": model.sample_rate}, mask_length,
                        _inputs_digest(ids, paths, clean))
    fdir = work / "features"
    if store.ready(fdir, fdig):
        log.info("reusing the complete feature store (no feature pass): %s", store.disk_line(fdir))
    else:
        est = float(df["duration"].sum()) if "duration" in df.columns and df["duration"].notna().all() else None
        _write_features(model, ids, paths, clean, fdir, fdig, mask_length, bool(cfg["progress"]), est)
    finfo = json.loads((fdir / store.INFO).read_text())
    offsets, n10, kept = (np.load(fdir / f"{n}.npy") for n in ("offsets", "n10", "kept"))
    if len(kept) < len(ids):
        log.warning("%d utterance(s) shorter than one mask span left out", len(ids) - len(kept))
    if not len(kept):
        raise ValueError(f"{manifest_path}: no training utterance long enough")
    if fit_stats:
        sums = np.load(fdir / "stats.npz")
        acc = StatsAccumulator(model.n_mels)
        acc.s, acc.s2, acc.count = torch.from_numpy(sums["s"]), torch.from_numpy(sums["s2"]), int(sums["count"])
        model.set_feature_stats(*acc.result())

    def stored(name: str, lengths10: np.ndarray) -> StoredFeatures:
        rows = store.RowFile(fdir / name, np.float32, int(finfo["dim"]), int(offsets[-1]))
        return StoredFeatures(rows, offsets, lengths10, model.feature_mean, model.feature_std, model.stack,
                              model.n_mels)

    feats = stored("input.f32", n10)
    check_normalisation(model, [paths[k] for k in kept], feats, n10)
    n_frames = feats.total
    log.info("%d utterances, %d frames (%.2f h), feature dim %d", len(feats), n_frames,
             n_frames * model.stack * 0.010 / 3600, feats.dim)
    target_feats = feats
    if clean is not None:
        target_feats = stored("clean.f32", np.load(fdir / "clean_n10.npy"))
        log.info("targets from the clean copies of the %d utterances (pretrain.train.targets_audio: clean)", len(feats))
    return StoredInputs(feats, target_feats, fdig, work, keep)


def stats_digest(feats: StoredFeatures) -> str:
    """A hash of the statistics `feats` are normalised with (a part derived from normalised features depends
    on them)."""
    return store.digest(_array_digest(feats.mean), _array_digest(feats.std))


def label_part(tdir: Path, tdig: str, rows, cfg: dict, centers: np.ndarray | None, threads: int | None,
               offsets: np.ndarray) -> tuple[StoredTargets, np.ndarray, dict[str, Any], np.ndarray]:
    """The target part at `tdir` of digest `tdig` (written unless complete): the k-means labels of every row of
    `rows` (anything with `chunks`, `total` and `dim`: normalised features, a teacher's hidden states), fitted on
    a seeded sample or given `centers`. Returns (the labels per utterance of `offsets`, the centres, the
    k-means record, the label counts)."""
    if store.ready(tdir, tdig):
        log.info("reusing the complete target store (no k-means): %s", store.disk_line(tdir))
    else:
        _write_targets(tdir, tdig, rows, cfg, centers, threads)
    tinfo = json.loads((tdir / store.INFO).read_text())
    rec = tinfo["kmeans"]
    km = ({"given_centers": True, "total_frames": rec["total_frames"]} if rec.get("given_centers") else
          {"inertia": rec["inertia"], "fit_frames": rec["fit_frames"], "total_frames": rec["total_frames"]})
    labels = StoredTargets(store.RowFile(tdir / tinfo["file"], tinfo["dtype"], None, int(offsets[-1])), offsets)
    return labels, np.load(tdir / "centers.npy"), km, np.asarray(tinfo["counts"])


def prepare_training_data(manifest_path, model, cfg: dict, fit_stats: bool = True, centers: np.ndarray | None = None,
                          threads: int | None = None, target_paths: dict[str, str] | None = None,
                          work_dir: str | os.PathLike | None = None) -> TrainingData:
    """Features and targets for masked prediction on the manifest rows `cfg` selects (`splits`,
    `max_utterances`, `seed`), streamed from a store in `work_dir` (see the module; None: a temporary
    folder that lives as long as the returned data). `fit_stats`: install the corpus statistics in `model`
    (a new model); else use the model's own. `centers`: label frames with these k-means centres instead of
    fitting `cfg["n_clusters"]` new ones (continued pre-training keeps its parent's targets).
    `target_paths` ({utt_id: path}, `cfg["targets_audio"]` clean): the targets are the k-means clusters
    of these files' features (normalised like the input), frame by frame, instead of the input's.

    A complete store of the same inputs in `work_dir` is reused (no feature pass, no k-means); a store of
    other inputs, or an unfinished one, is rebuilt."""
    if centers is not None:
        centers = np.asarray(centers, dtype=np.float32)
        if centers.shape[1] != model.feature_dim:
            raise ValueError(f"k-means centres have dimension {centers.shape[1]}, the features {model.feature_dim}")
    # 1. features (raw, identity statistics) and the corpus sums
    inputs = prepare_features(manifest_path, model, cfg, fit_stats=fit_stats, target_paths=target_paths,
                              work_dir=work_dir)
    feats = inputs.feats

    # 2. targets
    kmeans_keys = {k: cfg[k] for k in ("n_clusters", "kmeans_max_frames", "kmeans_batch_size", "kmeans_max_iter",
                                       "kmeans_n_init", "seed")}
    tdig = store.digest("targets", store.FORMAT, inputs.digest, target_paths is not None,
                        _array_digest(model.feature_mean.cpu()), _array_digest(model.feature_std.cpu()),
                        _array_digest(centers) if centers is not None else kmeans_keys)
    labels, centers, km, counts = label_part(inputs.work / "targets", tdig, inputs.target_feats, cfg, centers,
                                             threads, feats.offsets)
    data = TrainingData(feats, labels, centers, km, keep=inputs.keep)
    log.info("targets: %d clusters, %d used, unigram entropy %.3f nats", data.n_clusters, int((counts > 0).sum()),
             data.unigram_entropy)
    log.info("training data store: %s", store.disk_line(inputs.work))
    return data
