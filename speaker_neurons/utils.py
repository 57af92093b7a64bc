"""Small helpers shared by every stage: logging, hashing, provenance."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import sys
from pathlib import Path
from typing import Any, Iterable


def setup_logging(log_path: str | os.PathLike | None = None, level: int = logging.INFO) -> logging.Logger:
    """Log to stderr and, when given, to `log_path` (a rule's `log:` file). Returns the package logger."""
    logger = logging.getLogger("speaker_neurons")
    logger.setLevel(level)
    for h in list(logger.handlers):
        logger.removeHandler(h)
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S")
    stream = logging.StreamHandler(sys.stderr)
    stream.setFormatter(fmt)
    logger.addHandler(stream)
    if log_path:
        Path(log_path).parent.mkdir(parents=True, exist_ok=True)
        fh = logging.FileHandler(log_path, mode="w")
        fh.setFormatter(fmt)
        logger.addHandler(fh)
    logger.propagate = False
    return logger


def get_logger(name: str) -> logging.Logger:
    return logging.getLogger(f"speaker_neurons.{name}" if not name.startswith("speaker_neurons") else name)


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            b = f.read(chunk)
            if not b:
                break
            h.update(b)
    return h.hexdigest()


def sha256_paths(paths: Iterable[str | os.PathLike]) -> dict[str, str]:
    """sha256 of every file; a directory contributes every file under it (sorted), hashed together."""
    out: dict[str, str] = {}
    for p in paths:
        p = Path(p)
        if p.is_dir():
            h = hashlib.sha256()
            for f in sorted(q for q in p.rglob("*") if q.is_file()):
                h.update(str(f.relative_to(p)).encode())
                h.update(sha256_file(f).encode())
            out[str(p)] = h.hexdigest()
        elif p.exists():
            out[str(p)] = sha256_file(p)
    return out


def write_provenance(
    path: str | os.PathLike,
    stage: str,
    params: dict[str, Any] | None = None,
    config: dict[str, Any] | None = None,
    checksums: dict[str, str] | None = None,
    wildcards: dict[str, str] | None = None,
) -> Path:
    """Write a stage's provenance JSON to `path`: the stage, its parameters (and wildcards), the
    resolved config, the inputs' sha256 checksums (`sha256_paths`) and the package versions. No clock, host or time: the same run
    gives the same record."""
    import importlib.metadata as md

    versions = {}
    for pkg in ("torch", "torchaudio", "numpy", "scikit-learn", "snakemake", "speaker-neurons"):
        try:
            versions[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    from speaker_neurons import __version__

    versions["speaker_neurons"] = __version__
    record = {
        "stage": stage,
        "params": params,
        "wildcards": wildcards or {},
        "config": config,
        "inputs": checksums or {},
        "versions": versions,
        "python": platform.python_version(),
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, record)
    return path


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    """`obj` as JSON at `path`: indented, sorted keys, one trailing newline (the same object, the same bytes).
    Written atomically (through `<path>.tmp`): a reader never sees half a file."""
    return write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n", fault_site="write")


def write_text_atomic(path: str | os.PathLike, text: str, fault_site: str | None = None) -> Path:
    """`text` at `path` through `<path>.tmp` and a rename (removed when the write fails): a reader sees the old
    file or the new one, never half of one. `fault_site`: the `fault_point` passed halfway through."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "w") as f:
            f.write(text[: len(text) // 2])
            if fault_site:
                fault_point(fault_site)  # a kill while the file is being written
            f.write(text[len(text) // 2 :])
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, path)
    return path


_LIBC: list = []


def release_memory() -> None:
    """Hand the memory the C allocator holds free back to the operating system (glibc's malloc_trim; nothing
    elsewhere). A stage that allocates a little more at each batch (batches sorted by length grow, and
    glibc then serves them from fresh heap rather than from the freed smaller blocks) would otherwise keep a
    peak that grows with the number of batches, that is with the corpus: the pooling pass over the demo's
    evaluation corpus repeated 16x peaked at 1.28 GB where one pass peaked at 0.79 GB. Called once per batch,
    it costs microseconds against the batch's forward pass."""
    if not _LIBC:
        import ctypes
        import ctypes.util

        name = ctypes.util.find_library("c")
        try:
            lib = ctypes.CDLL(name) if name else None
            _LIBC.append(lib if lib is not None and hasattr(lib, "malloc_trim") else None)
        except OSError:
            _LIBC.append(None)
    if _LIBC[0] is not None:
        _LIBC[0].malloc_trim(0)


#: Fault injection for the kill tests (tests/test_kill_anywhere.py, benchmarks/kill_anywhere.py): with
#: SPEAKER_NEURONS_KILL_AT="<site>:<n>" in the environment, the process kills itself with SIGKILL at the n-th
#: time it passes `fault_point(site)`. The sites: `batch` (each upstream batch), `block` (a store block recorded),
#: `store` (a finished store about to be renamed into place), `checkpoint` (a checkpoint just made durable),
#: `step` (each training step), `write` (halfway through writing an output file). Unset, a site costs one
#: dictionary lookup.
_KILL_AT: dict[str, int] = {}
_PASSED: dict[str, int] = {}


def _read_kill_at() -> None:
    spec = os.environ.get("SPEAKER_NEURONS_KILL_AT", "")
    if spec:
        site, _, n = spec.partition(":")
        _KILL_AT[site] = int(n or 1)


_read_kill_at()


def fault_point(site: str) -> None:
    """SIGKILL this process here when SPEAKER_NEURONS_KILL_AT names this site and this is its n-th pass."""
    if site in _KILL_AT:
        _PASSED[site] = _PASSED.get(site, 0) + 1
        if _PASSED[site] == _KILL_AT[site]:
            import signal

            get_logger("faults").warning("SPEAKER_NEURONS_KILL_AT=%s:%d: killing this process", site, _KILL_AT[site])
            for h in logging.getLogger("speaker_neurons").handlers:
                h.flush()
            os.kill(os.getpid(), signal.SIGKILL)


def save_npz(path: str | os.PathLike, arrays: dict[str, Any]) -> Path:
    """Like numpy.savez, but byte-identical for identical arrays: entries in the given order, a fixed
    timestamp (numpy stamps each entry with the current time). Written atomically: through `<path>.tmp`, which a
    failed write (a full disk) removes."""
    import zipfile

    import numpy as np

    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED) as zf:
            for name, arr in arrays.items():
                info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
                info.external_attr = 0o644 << 16
                with zf.open(info, "w", force_zip64=True) as f:
                    np.lib.format.write_array(f, np.asanyarray(arr), allow_pickle=False)
                fault_point("write")
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, path)
    return path


def save_figure(fig, path: str | os.PathLike, dpi: int = 120) -> Path:
    """Lay out, write (folders made) and close a matplotlib figure; returns the path."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path


def inference_autocast(device, amp):
    """The autocast context of a frozen upstream's forward pass (config `upstream.amp`): auto = bf16 on
    CUDA, float32 on a CPU (every CPU: evaluation results do not depend on the CPU's bf16 support);
    true = bf16 on any device; false = float32. Outputs are cast back to float32 by the callers."""
    import torch

    dev = torch.device(device)
    return torch.autocast(dev.type, dtype=torch.bfloat16, enabled=inference_bf16(dev, amp))


def inference_bf16(device, amp) -> bool:
    """Whether `upstream.amp` = `amp` runs a frozen upstream in bf16 on `device` (`inference_autocast`)."""
    import torch

    return (torch.device(device).type == "cuda") if amp == "auto" else bool(amp)


class Terminated(Exception):
    """The job was asked to stop by SIGTERM (a batch system's time limit or preemption) and saved its
    progress first: a rerun resumes from it."""


class sigterm_checkpoints:
    """Within the block, SIGTERM is noted instead of ending the process at once (SLURM sends it at a job's
    time limit, then SIGKILL after the cluster's KillWait, 30 s by default): a training loop checks
    `requested` at each step's end, saves a checkpoint and raises `Terminated`, so the rerun that the
    profile's `retries` submits loses no step. The previous handler comes back at the end. Outside the
    main thread (where Python cannot take signals) it changes nothing and `requested` stays False."""

    def __init__(self):
        self.requested = False
        self._installed = False
        self._previous = None

    def _note(self, signum, frame):
        self.requested = True

    def start(self) -> "sigterm_checkpoints":
        import signal
        import threading

        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._note)
            self._installed = True
        return self

    def stop(self) -> None:
        import signal

        if self._installed:  # None: a handler not set from Python; the default is the closest
            signal.signal(signal.SIGTERM, signal.SIG_DFL if self._previous is None else self._previous)
            self._installed = False

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
        return False
