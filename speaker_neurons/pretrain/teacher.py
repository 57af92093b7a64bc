"""Targets from a teacher's hidden states (HuBERT's later iterations; a chain from a released MelHuBERT),
streamed like the log-Mel targets of `speaker_neurons.pretrain.data`, so that nothing proportional to the
corpus stays in memory (LibriSpeech 960 h, a base model's 768-dim layer: about 530 GB of float32 hidden
states, on disk).

1. features: the student's (or the teacher's own) normalised input features from the feature store
   (`data.prepare_features`; no targets of their own);
2. hidden states: the teacher's hidden states at one layer of every utterance, one utterance at a time;
   written as float32 rows to the store's `hidden/` part (keyed by the features, the statistics they are
   normalised with, the teacher's weights and the layer) only where two passes need them (a fit, then
   every frame's label: HuBERT's second iteration); the centres alone, or the labels of given centres,
   take one pass that keeps nothing but the sample or the labels (`_TeacherRows`);
3. targets: k-means fitted on a seeded sample of at most `kmeans_max_frames` of those rows read back (or given
   centres), and every frame labelled chunk by chunk into the store's `targets/` part (int16), as
   `data._write_targets` does for log-Mel frames. The centres, labels and k-means record are those of the
   in-memory computation (`kmeans.cluster_utterance_frames` over the hidden states of every utterance).

The store lives in the caller's `work_dir` (the workflow: the job's resume folder, reused by a restarted
job) or in a temporary folder that goes with the returned data.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

import speaker_neurons.pretrain.store as store
from speaker_neurons import stores
from speaker_neurons.pretrain.data import (StoredInputs, TrainingData, _array_digest, fit_centers, label_part,
                                           prepare_features, stats_digest)
from speaker_neurons.pretrain.store import StoredFeatures, StoredRows
from speaker_neurons.utils import get_logger

log = get_logger("pretrain.data")

KMEANS_KEYS = ("n_clusters", "kmeans_max_frames", "kmeans_batch_size", "kmeans_max_iter", "kmeans_n_init", "seed")


def model_digest(model) -> str:
    """A hash of a model's configuration and every tensor of its state (names, dtypes, shapes, bytes)."""
    h = hashlib.sha256(json.dumps(getattr(model, "config", None), sort_keys=True, default=str).encode())
    for name, t in model.state_dict().items():
        t = t.detach().cpu().contiguous()
        h.update(f"{name}\t{t.dtype}\t{list(t.shape)}\n".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:20]


@torch.no_grad()
def _write_hidden(teacher, feats: StoredFeatures, layer: int, hdir: Path, hdig: str, progress: bool) -> None:
    """The teacher's layer-`layer` hidden states of every utterance of `feats`, one utterance at a time."""
    from tqdm import tqdm

    tmp = stores.start(hdir)
    need, free = feats.total * int(teacher.hidden_dim) * 4, shutil.disk_usage(tmp).free
    (log.warning if need > free else log.info)(
        "teacher's hidden states: about %.3g GB of float32 rows (%d frames x %d) in %s (%.3g GB free there)",
        need / 1e9, feats.total, teacher.hidden_dim, hdir, free / 1e9)
    with store.RowWriter(tmp / "hidden.f32", np.float32) as w:
        for i in tqdm(range(len(feats)), desc="teacher", disable=not progress, mininterval=5):
            f = feats[i]
            h = teacher.encode(f[None], return_ffn=False).hidden[layer][0].float()
            if h.shape[0] != f.shape[0]:
                raise RuntimeError(f"the teacher gave {h.shape[0]} hidden states for {f.shape[0]} frames")
            w.write(h)
        rows = w.rows
    if rows != feats.total:
        raise RuntimeError(f"{rows} hidden states written for {feats.total} frames")
    stores.finish(tmp, store.INFO, {"digest": hdig, "format": store.FORMAT, "rows": rows,
                                    "dim": int(teacher.hidden_dim), "layer": int(layer)})
    log.info("teacher's hidden states written: %d rows of layer %d; %s", rows, layer, store.disk_line(hdir))


class _TeacherRows:
    """The teacher's layer-`layer` hidden states of every frame of `feats`, computed utterance by utterance as
    they are read and never stored: `chunks` gives the same (start, rows) chunks as a `StoredRows` of them.
    For a single pass (given centres: every frame's label; the centres alone: the sampled rows), where
    writing every frame's hidden state (about 530 GB at 960 h) would buy nothing."""

    def __init__(self, teacher, feats: StoredFeatures, layer: int, progress: bool):
        self.teacher, self.feats, self.layer, self.progress = teacher, feats, int(layer), progress
        self.total, self.dim = feats.total, int(teacher.hidden_dim)

    @torch.no_grad()
    def chunks(self, size: int = store.CHUNK):
        from tqdm import tqdm

        buf, start, held = [], 0, 0
        for i in tqdm(range(len(self.feats)), desc="teacher", disable=not self.progress, mininterval=5):
            f = self.feats[i]
            h = self.teacher.encode(f[None], return_ffn=False).hidden[self.layer][0].float()
            if h.shape[0] != f.shape[0]:
                raise RuntimeError(f"the teacher gave {h.shape[0]} hidden states for {f.shape[0]} frames")
            buf.append(h)
            held += h.shape[0]
            while held >= size:
                rows = torch.cat(buf)
                yield start, rows[:size]
                start, held, buf = start + size, held - size, [rows[size:]]
        if held:
            yield start, torch.cat(buf)


def hidden_states(teacher, inputs: StoredInputs, layer: int, progress: bool = False) -> tuple[StoredRows, str]:
    """The store's `hidden/` part: the teacher's hidden states at `layer` of every frame of `inputs.feats`
    (written unless complete); returns (the rows per utterance, the part's digest)."""
    teacher = teacher.to("cpu").eval()
    feats = inputs.feats
    hdig = store.digest("hidden", store.FORMAT, inputs.digest, stats_digest(feats), model_digest(teacher), int(layer))
    hdir = inputs.work / "hidden"
    if store.ready(hdir, hdig):
        log.info("reusing the teacher's complete hidden states (no teacher pass): %s", store.disk_line(hdir))
    else:
        _write_hidden(teacher, feats, int(layer), hdir, hdig, progress)
    info = json.loads((hdir / store.INFO).read_text())
    rows = store.RowFile(hdir / "hidden.f32", np.float32, int(info["dim"]), int(info["rows"]))
    return StoredRows(rows, feats.offsets), hdig


def teacher_training_data(inputs: StoredInputs, teacher, layer: int, cfg: Mapping, centers: np.ndarray | None,
                          threads: int | None = None) -> TrainingData:
    """`inputs`' features with, as targets, the k-means clusters of the teacher's layer-`layer` hidden states
    of every frame: `centers` given (a chain from a released root: every frame's nearest of them), else fitted
    on a seeded sample (`cfg` n_clusters and kmeans_* keys; HuBERT's second iteration). The k-means record
    has the `teacher_layer`."""
    if centers is not None:  # one pass: each frame's nearest centre as the teacher computes it, nothing stored
        teacher = teacher.to("cpu").eval()
        hidden = _TeacherRows(teacher, inputs.feats, layer, bool(cfg["progress"]))
        hdig = store.digest("hidden", store.FORMAT, inputs.digest, stats_digest(inputs.feats), model_digest(teacher),
                            int(layer))
    else:  # a fit on a sample, then every frame's label: two passes over the stored hidden states
        hidden, hdig = hidden_states(teacher, inputs, layer, bool(cfg["progress"]))
    if centers is not None:
        centers = np.asarray(centers, dtype=np.float32)
        if centers.shape[1] != hidden.dim:
            raise ValueError(f"k-means centres have dimension {centers.shape[1]}, the teacher's layer {hidden.dim}")
    tdig = store.digest("teacher targets", store.FORMAT, hdig,
                        _array_digest(centers) if centers is not None else {k: cfg[k] for k in KMEANS_KEYS})
    labels, centers, km, counts = label_part(inputs.work / "targets", tdig, hidden, dict(cfg), centers, threads,
                                             inputs.feats.offsets)
    if "given_centers" in km:
        km = {"given_centers": True, "teacher_layer": int(layer), "total_frames": km["total_frames"]}
    else:
        km = {**km, "teacher_layer": int(layer)}
    data = TrainingData(inputs.feats, labels, centers, km, keep=inputs.keep)
    log.info("targets from layer %d of the teacher: %d clusters, %d used, unigram entropy %.3f nats", layer,
             data.n_clusters, int((counts > 0).sum()), data.unigram_entropy)
    log.info("training data store: %s", store.disk_line(inputs.work))
    return data


def teacher_kmeans(inputs: StoredInputs, teacher, layer: int, cfg: Mapping,
                   threads: int | None = None) -> tuple[np.ndarray, dict[str, Any]]:
    """k-means centres of the teacher's layer-`layer` hidden states of `inputs`' features (a seeded sample
    of at most `kmeans_max_frames`, read back from the store) and the record {inertia, fit_frames,
    total_frames}; no frame is labelled."""
    rows = _TeacherRows(teacher.to("cpu").eval(), inputs.feats, layer, bool(cfg["progress"]))
    return fit_centers(rows, dict(cfg), threads)  # one pass, keeping the sampled rows only

