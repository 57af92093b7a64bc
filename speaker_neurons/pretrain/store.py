"""The file-backed training data of masked prediction (`speaker_neurons.pretrain.data`): what pre-training
reads, at any corpus size, without holding it in memory.

A store is a folder with flat files of rows (one utterance after the other) and small index arrays:

* `features/`: every kept utterance's features computed with identity statistics (float32, (T_i, F) rows in
  `input.f32`; for denoising targets the clean copies' in `clean.f32`), `offsets.npy` (int64, n + 1 row
  offsets), `n10.npy` (each utterance's count of 10 ms fbank frames), `stats.npz` (the float64 sums the corpus
  statistics come from) and `info.json`, written last, with the store's `digest`;
* `hidden/` (targets from a teacher, `speaker_neurons.pretrain.teacher`): the teacher's hidden states at one
  layer of every frame of `features/` (float32, (T_i, d) rows in `hidden.f32`, the same row offsets);
* `targets/`: every frame's k-means label (`labels.i16`, or `labels.i32` past 32,767 clusters), the
  centres (`centers.npy`) and `info.json` (the k-means record and the `digest`).

Each part is written under `<name>.tmp` and renamed when complete (`speaker_neurons.stores`), so a folder without the `.tmp` suffix
is complete; a job killed while writing leaves only a `.tmp` folder, which the next start removes. A part
whose `digest` (a hash of everything that determines it) differs from the one wanted is rebuilt, and so is
one whose files are not the ones `info.json` recorded (size and sha256: a truncated or altered file).

Reads are positioned reads (`os.pread`) into fresh arrays, never a memory map: the pages of a mapping a
process has read count in its resident memory, which would then grow with the corpus over an epoch.
Normalisation is applied when rows are read (`StoredFeatures`), with the same float32 operations as
`MelHuBERT.extract_features`, so a read gives the bytes the in-memory computation gave.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch

from speaker_neurons.rowfile import RowFile, RowWriter  # noqa: F401 (the store's file format)
from speaker_neurons import stores
from speaker_neurons.utils import get_logger

log = get_logger("pretrain.data")

FORMAT = 1  # bump when the layout of a store changes: older stores are rebuilt
INFO = "info.json"
CHUNK = 200_000  # rows per chunk of a streaming pass (k-means labelling: the chunk of kmeans.assign)


def digest(*parts: Any) -> str:
    """A short hash of JSON-able parts (sorted keys)."""
    h = hashlib.sha256()
    for p in parts:
        h.update(json.dumps(p, sort_keys=True, default=str).encode())
        h.update(b"\0")
    return h.hexdigest()[:20]


def folder_bytes(folder: str | os.PathLike) -> int:
    """Bytes allocated under `folder` (0 when it does not exist)."""
    total = 0
    for root, _, files in os.walk(folder):
        for f in files:
            try:
                total += os.stat(os.path.join(root, f)).st_blocks * 512
            except OSError:
                pass
    return total


def ready(folder: str | os.PathLike, want: str) -> bool:
    """Whether `folder` is a complete store part of digest `want` whose files are still the ones recorded
    when it was finished (size, then sha256). A part whose files changed, went missing or were truncated is
    not ready, with a warning naming the file: it is rebuilt, never used (`stores.ready`)."""
    return stores.ready(folder, INFO, want, f"rebuilding {folder}", log)


def remove(folder: str | os.PathLike, what: str = "training data store") -> None:
    """Remove a store (logging the disk it frees)."""
    folder = Path(folder)
    if folder.exists():
        n = folder_bytes(folder)
        shutil.rmtree(folder, ignore_errors=True)
        log.info("removed the %s %s (%.3g GB freed)", what, folder, n / 1e9)


def disk_line(folder: str | os.PathLike) -> str:
    """'X GB in <folder>; Y GB free on its disk' for the log."""
    folder = Path(folder)
    free = shutil.disk_usage(folder if folder.exists() else folder.parent).free
    return f"{folder_bytes(folder) / 1e9:.3g} GB in {folder}; {free / 1e9:.3g} GB free on its disk"


class _Utterances(Sequence):
    """Utterance i = rows offsets[i]:offsets[i+1] of a RowFile; a Sequence of tensors (read on access)."""

    def __init__(self, rows: RowFile, offsets: np.ndarray):
        self.file, self.offsets = rows, np.asarray(offsets, dtype=np.int64)
        if self.offsets[0] != 0 or self.offsets[-1] != rows.rows or (np.diff(self.offsets) < 0).any():
            raise ValueError(f"{rows.path}: offsets do not cover its {rows.rows} rows")

    def __len__(self) -> int:
        return len(self.offsets) - 1

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    @property
    def total(self) -> int:
        return int(self.offsets[-1])

    def _index(self, i: int) -> int:
        n = len(self)
        i = int(i)
        if not -n <= i < n:
            raise IndexError(f"utterance {i} of {n}")
        return i % n

    def __getitem__(self, i):  # type: ignore[override]
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        i = self._index(i)
        return self.segment(i, 0, int(self.offsets[i + 1] - self.offsets[i]))

    def __iter__(self) -> Iterator[torch.Tensor]:
        for i in range(len(self)):
            yield self[i]

    def segment(self, i: int, start: int, stop: int) -> torch.Tensor:
        raise NotImplementedError


class StoredFeatures(_Utterances):
    """Normalised features per utterance, read from raw (identity-statistics) float32 rows: (f - mean) / std
    in float32, and for stacked frames (`stack` > 1) the zero partner of an odd last 10 ms frame set to zero,
    as `MelHuBERT.extract_features` and `data.normalise_features` do."""

    def __init__(self, rows: RowFile, offsets: np.ndarray, n10: np.ndarray, mean: torch.Tensor, std: torch.Tensor,
                 stack: int, n_mels: int):
        super().__init__(rows, offsets)
        self.n10 = np.asarray(n10, dtype=np.int64)
        self.mean = mean.detach().cpu().float().clone()
        self.std = std.detach().cpu().float().clone()
        self.stack, self.n_mels, self.dim = int(stack), int(n_mels), int(rows.width)
        # the utterances whose last row has a zero partner: its column from which the row is zero
        short = self.n10 < self.lengths * self.stack if self.stack > 1 else np.zeros(len(self), bool)
        self._pad_col = np.where(short, self.n10 % self.stack * self.n_mels, -1)

    def _normalise(self, raw: np.ndarray) -> torch.Tensor:
        return (torch.from_numpy(raw) - self.mean) / self.std

    def segment(self, i: int, start: int, stop: int) -> torch.Tensor:
        """Frames [start, stop) of utterance i, normalised (a fresh (n, F) float32 tensor)."""
        i = self._index(i)
        o, n = int(self.offsets[i]), int(self.offsets[i + 1] - self.offsets[i])
        if not 0 <= start <= stop <= n:
            raise IndexError(f"frames [{start}, {stop}) of utterance {i} ({n} frames)")
        y = self._normalise(self.file.read(o + start, o + stop))
        if self._pad_col[i] >= 0 and stop == n and stop > start:
            y[-1, int(self._pad_col[i]):] = 0.0
        return y

    def frames(self, start: int, stop: int) -> torch.Tensor:
        """Rows [start, stop) of the concatenation of every utterance, normalised."""
        y = self._normalise(self.file.read(start, stop))
        last = self.offsets[1:] - 1
        hit = np.nonzero((last >= start) & (last < stop) & (self._pad_col >= 0))[0]
        for i in hit:
            y[int(last[i]) - start, int(self._pad_col[i]):] = 0.0
        return y

    def chunks(self, size: int = CHUNK) -> Iterator[tuple[int, torch.Tensor]]:
        """(start row, normalised rows) over the whole concatenation, `size` rows at a time."""
        for s in range(0, self.total, size):
            yield s, self.frames(s, min(self.total, s + size))


class StoredRows(_Utterances):
    """Float32 rows per utterance as they were written (a teacher's hidden states), read as tensors."""

    @property
    def dim(self) -> int:
        return int(self.file.width)

    def segment(self, i: int, start: int, stop: int) -> torch.Tensor:
        i = self._index(i)
        o, n = int(self.offsets[i]), int(self.offsets[i + 1] - self.offsets[i])
        if not 0 <= start <= stop <= n:
            raise IndexError(f"frames [{start}, {stop}) of utterance {i} ({n} frames)")
        return torch.from_numpy(self.file.read(o + start, o + stop))

    def chunks(self, size: int = CHUNK) -> Iterator[tuple[int, torch.Tensor]]:
        """(start row, rows) over the whole concatenation, `size` rows at a time."""
        for s in range(0, self.total, size):
            yield s, torch.from_numpy(self.file.read(s, min(self.total, s + size)))


class StoredTargets(_Utterances):
    """Per-frame k-means labels (int16 or int32 on disk), read as int64 tensors."""

    def segment(self, i: int, start: int, stop: int) -> torch.Tensor:
        i = self._index(i)
        o, n = int(self.offsets[i]), int(self.offsets[i + 1] - self.offsets[i])
        if not 0 <= start <= stop <= n:
            raise IndexError(f"frames [{start}, {stop}) of utterance {i} ({n} frames)")
        return torch.from_numpy(self.file.read(o + start, o + stop).astype(np.int64))

    def chunks(self, size: int = CHUNK) -> Iterator[np.ndarray]:
        """Every label (int64) of the concatenation, `size` at a time."""
        for s in range(0, self.total, size):
            yield self.file.read(s, min(self.total, s + size)).astype(np.int64)


def label_dtype(n_clusters: int):
    return np.int16 if n_clusters <= np.iinfo(np.int16).max else np.int32
