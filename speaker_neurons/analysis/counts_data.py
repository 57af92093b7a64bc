"""Reading activation counts back (`activation_counts.npz` + its JSON, written by
`counts.ActivationCounter.save`; the format is described in `speaker_neurons.analysis.counts`), and K
per layer. numpy only: the neuron sets are computed without torch, so their jobs start fast."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


def top_k_for(width: int, top_fraction: float) -> int:
    """``K = max(1, round(top_fraction * width))`` with Python's round (ties to even).

    Examples (top_fraction = 0.01): 3072 -> 31, 1000 -> 10, 250 -> round(2.5) = 2, 150 -> round(1.5) = 2,
    50 -> round(0.5) = 0 -> 1. K never exceeds the width.
    """
    width = int(width)
    if width < 1:
        raise ValueError(f"width must be >= 1, got {width}")
    top_fraction = float(top_fraction)
    if not (0.0 < top_fraction <= 1.0):
        raise ValueError(f"top_fraction must be in (0, 1], got {top_fraction}")
    return min(width, max(1, round(top_fraction * width)))


def counts_json_path(npz_path: str | os.PathLike) -> Path:
    """The JSON written beside ``activation_counts.npz`` (same name, ``.json``)."""
    return Path(npz_path).with_suffix(".json")


# ----------------------------------------------------------------------------------------------------
# Reading the counts back
# ----------------------------------------------------------------------------------------------------
@dataclass
class CountsData:
    """Counts of one analysis: ``counts[l-1]`` (classes, W_l) int64, ``frames`` (classes,) int64,
    ``classes`` (classes, 2) = (i-vector cluster, SSL cluster), ``meta`` = the JSON beside the npz."""

    counts: list[np.ndarray]
    frames: np.ndarray
    classes: np.ndarray
    meta: dict = field(default_factory=dict)
    #: the counts of the other partitions of ``meta["partitions"]``, one block of ``classes`` rows each, when
    #: they were counted in the same pass; None otherwise
    partition_counts: list[np.ndarray] | None = None
    partition_frames: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.frames = np.asarray(self.frames, dtype=np.int64)
        self.classes = np.asarray(self.classes, dtype=np.int64)
        self.counts = [np.asarray(c, dtype=np.int64) for c in self.counts]
        nc = self.frames.shape[0]
        if self.classes.shape != (nc, 2):
            raise ValueError(f"classes must be ({nc}, 2), got {self.classes.shape}")
        for l, c in enumerate(self.counts, start=1):
            if c.ndim != 2 or c.shape[0] != nc:
                raise ValueError(f"counts of layer {l} must be ({nc}, W), got {c.shape}")
            if np.any(c < 0) or np.any(c > self.frames[:, None]):
                raise ValueError(f"counts of layer {l} must lie in [0, frames]")

    @property
    def num_layers(self) -> int:
        return len(self.counts)

    @property
    def partitions(self) -> list[str]:
        """The other partitions whose counts the file holds (empty when none was counted)."""
        return list(self.meta.get("partitions", [])) if self.partition_frames is not None else []

    def for_partition(self, name: str) -> "CountsData":
        """The counts of the (i-vector cluster, SSL cluster) classes of partition `name` (one of
        `partitions`): its block of the partition counts; the same classes table and metadata."""
        if name not in self.partitions:
            raise KeyError(f"no counts of partition {name!r}; the file holds {self.partitions or 'none'}")
        n = len(self.classes)
        rows = slice(n * self.partitions.index(name), n * (self.partitions.index(name) + 1))
        return CountsData(counts=[c[rows] for c in self.partition_counts], frames=self.partition_frames[rows],
                          classes=self.classes, meta=dict(self.meta))

    @property
    def widths(self) -> list[int]:
        return [int(c.shape[1]) for c in self.counts]

    @property
    def top_fraction(self) -> float | None:
        tf = self.meta.get("top_fraction")
        return None if tf is None else float(tf)

    @property
    def K(self) -> list[int]:
        """K per layer: from the JSON; checked against ``top_k_for(width, top_fraction)``."""
        stored = self.meta.get("K")
        tf = self.top_fraction
        computed = None if tf is None else [top_k_for(w, tf) for w in self.widths]
        if stored is None:
            if computed is None:
                raise ValueError("counts metadata has neither K nor top_fraction")
            return computed
        stored = [int(k) for k in stored]
        if len(stored) != self.num_layers:
            raise ValueError(f"K has {len(stored)} entries for {self.num_layers} layers")
        if computed is not None and stored != computed:
            raise ValueError(f"stored K {stored} != K recomputed from widths and top_fraction {computed}")
        return stored


def load_counts(npz_path: str | os.PathLike, json_path: str | os.PathLike | None = None) -> CountsData:
    """Read ``activation_counts.npz`` and its JSON (default: beside it, same stem)."""
    npz_path = Path(npz_path)
    with np.load(npz_path, allow_pickle=False) as z:
        layers = sorted(int(k[len("counts_l"):]) for k in z.files if k.startswith("counts_l"))
        if layers != list(range(1, len(layers) + 1)) or not layers:
            raise ValueError(f"{npz_path}: counts_l<l> keys must be l = 1..L, found {layers}")
        counts = [z[f"counts_l{l}"] for l in layers]
        frames = z["frames"]
        classes = z["classes"]
        others = {}
        if "partition_frames" in z.files:
            others = {"partition_counts": [z[f"partition_counts_l{l}"] for l in layers],
                      "partition_frames": z["partition_frames"]}
    jp = Path(json_path) if json_path is not None else counts_json_path(npz_path)
    meta = json.loads(jp.read_text()) if jp.exists() else {}
    return CountsData(counts=counts, frames=frames, classes=classes, meta=meta, **others)
