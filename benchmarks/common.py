"""What the benchmark scripts share: the project on `sys.path` (`ROOT`), the machine's description for every
table (`cpu_model`), peak memory (`peak_rss_mb`, `rss_kb` to poll a child) and disk (`disk_bytes`,
`DiskPoll`). A script imports it first (`from common import ROOT`): run as `python benchmarks/<script>.py`,
its own folder is on `sys.path`."""

from __future__ import annotations

import os
import re
import resource
import subprocess
import sys
import threading
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def cpu_model() -> str:
    """`lscpu`'s model name ("unknown" without it) and whether the CPU computes bf16 natively (AVX512-BF16 or
    AMX): where it does not, torch emulates bf16 far slower than float32, so every timing names both."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        name = re.search(r"Model name:\s*(.*)", out).group(1).strip()
    except Exception:  # noqa: BLE001 - only a label
        name = "unknown"
    flags = Path("/proc/cpuinfo").read_text().split() if Path("/proc/cpuinfo").exists() else []
    extra = [f for f in ("avx512_bf16", "amx_bf16") if f in flags]
    return f"{name} ({', '.join(extra) or 'no native bf16'})"


def peak_rss_mb(children: bool = False) -> float:
    """This process' peak resident memory (MB; Linux reports kB), or its waited-for children's largest."""
    who = resource.RUSAGE_CHILDREN if children else resource.RUSAGE_SELF
    return resource.getrusage(who).ru_maxrss / 1024


def rss_kb(pid: int) -> int:
    """A running process' resident memory now (kB; 0 once it is gone), to poll a child from a thread."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def disk_bytes(folder: Path) -> int:
    """Bytes allocated under `folder` (links not followed; a sparse file counts what it holds)."""
    total = 0
    stack = [str(folder)]
    while stack:
        try:
            entries = list(os.scandir(stack.pop()))
        except OSError:
            continue
        for e in entries:
            try:
                if e.is_dir(follow_symlinks=False):
                    stack.append(e.path)
                else:
                    total += e.stat(follow_symlinks=False).st_blocks * 512
            except OSError:
                continue
    return total


class DiskPoll:
    """The peak of disk_bytes(folder) while the block runs, polled from a thread every `every` s."""

    def __init__(self, folder: Path, every: float = 0.2):
        self.folder, self.every = folder, every
        self.before = self.peak = self.after = 0
        self._stop = threading.Event()

    def _run(self):
        while not self._stop.wait(self.every):
            self.peak = max(self.peak, disk_bytes(self.folder))

    def __enter__(self):
        self.before = self.peak = disk_bytes(self.folder)
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.after = disk_bytes(self.folder)
        self.peak = max(self.peak, self.after)
