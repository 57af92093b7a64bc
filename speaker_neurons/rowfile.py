"""Flat files of rows of one dtype, written in order and read by ranges with os.pread (one descriptor per
process): what the pre-training store (`speaker_neurons.pretrain.store`) and the PR caches
(`speaker_neurons.pr_data`) keep on disk, so that memory holds the rows being read, never the file."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch


class RowWriter:
    """Appends arrays of rows (one dtype) to a flat file; `rows` counts what is written."""

    def __init__(self, path: str | os.PathLike, dtype):
        self.path, self.dtype, self.rows = Path(path), np.dtype(dtype), 0
        self._f = open(self.path, "wb")

    def write(self, a: np.ndarray | torch.Tensor) -> None:
        a = a.numpy() if isinstance(a, torch.Tensor) else a
        a = np.ascontiguousarray(a, dtype=self.dtype)
        self._f.write(memoryview(a).cast("B"))
        self.rows += int(a.shape[0])

    def close(self) -> None:
        self._f.close()

    def __enter__(self) -> "RowWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class RowFile:
    """A flat file of rows of `width` values (None: scalars) of `dtype`, read by ranges with os.pread."""

    def __init__(self, path: str | os.PathLike, dtype, width: int | None, rows: int):
        self.path, self.dtype, self.width, self.rows = Path(path), np.dtype(dtype), width, int(rows)
        self._row_bytes = self.dtype.itemsize * (width or 1)
        size = self.path.stat().st_size
        if size != self.rows * self._row_bytes:
            raise OSError(f"{self.path}: {size} bytes, expected {self.rows} rows of {self._row_bytes} (a damaged "
                          f"store: delete its folder and run again)")
        self._fd: int | None = None
        self._pid: int | None = None

    def __getstate__(self):  # another process opens its own descriptor
        return {**self.__dict__, "_fd": None, "_pid": None}

    def read(self, start: int, stop: int) -> np.ndarray:
        """Rows [start, stop) as a fresh array ((n, width) or (n,))."""
        if not 0 <= start <= stop <= self.rows:
            raise IndexError(f"rows [{start}, {stop}) outside {self.path} ({self.rows} rows)")
        if self._fd is None or self._pid != os.getpid():
            self._fd, self._pid = os.open(self.path, os.O_RDONLY), os.getpid()
        nbytes = (stop - start) * self._row_bytes
        buf = bytearray(nbytes)
        view, got = memoryview(buf), 0
        while got < nbytes:
            k = os.preadv(self._fd, [view[got:]], start * self._row_bytes + got)
            if k <= 0:
                raise OSError(f"{self.path}: short read (a truncated store: delete its folder and run again)")
            got += k
        a = np.frombuffer(buf, dtype=self.dtype)
        return a.reshape(-1, self.width) if self.width else a

    def close(self) -> None:
        if self._fd is not None and self._pid == os.getpid():
            os.close(self._fd)
        self._fd = None

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass
