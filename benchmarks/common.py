"""What the benchmark scripts share: the project on `sys.path` (`ROOT`), the machine's description for every
table (`cpu_model`), peak memory (`peak_rss_mb`, `rss_kb` to poll a child), disk (`disk_bytes`, `DiskPoll`)
and the seeded synthetic corpora (`synth_corpus`: WAV files and their manifest). A script imports it first
(`from common import ROOT`): run as `python benchmarks/<script>.py`, its own folder is on `sys.path`."""

from __future__ import annotations

import os
import re
import resource
import subprocess
import sys
import threading
from collections.abc import Callable
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
    """The peak of the bytes under `folders` (summed) while the block runs, polled from a thread every `every` s."""

    def __init__(self, *folders: Path, every: float = 0.2):
        self.folders, self.every = folders, every
        self.before = self.peak = self.after = 0
        self._stop = threading.Event()

    def _size(self) -> int:
        return sum(disk_bytes(f) for f in self.folders)

    def _run(self):
        while not self._stop.wait(self.every):
            self.peak = max(self.peak, self._size())

    def __enter__(self):
        self.before = self.peak = self._size()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.after = self._size()
        self.peak = max(self.peak, self.after)


# ------------------------------------------------------------------------------------------- synthetic corpora
SIGNALS = ("noise", "int16", "tones")


def _signal_model(kind: str, rng, speakers: int, sample_rate: int) -> Callable:
    """`(samples, speaker index) -> audio` of one of SIGNALS, drawing from `rng` (the tones' own draws first)."""
    import numpy as np

    if kind == "noise":  # Gaussian noise, standard deviation 0.1 (float32)
        return lambda n, s: (0.1 * rng.standard_normal(n)).astype(np.float32)
    if kind == "int16":  # uniform int16 noise in [-3000, 3000)
        return lambda n, s: rng.integers(-3000, 3000, n).astype(np.int16)
    if kind == "tones":  # three tones per speaker (150-2500 Hz), random gains and phases, plus noise (float32)
        tones = rng.uniform(150, 2500, size=(speakers, 3))

        def mixture(n: int, s: int):
            t = np.arange(n) / sample_rate
            wav = sum(rng.uniform(0.2, 1) * np.sin(2 * np.pi * f * t + rng.uniform(0, 6.3)) for f in tones[s])
            return (0.1 * wav + 0.05 * rng.standard_normal(n)).astype(np.float32)

        return mixture
    raise ValueError(f"signal {kind!r} not in {SIGNALS}")


def synth_corpus(folder: Path, n: int, *, samples: Callable, signal: str = "noise", seed: int = 0,
                 speakers: int = 8, name: str = "u{i:05d}", speaker: str = "s{s}", genders: str = "FM",
                 split: Callable | None = None, wav_dir: str = "", subtype: str = "PCM_16",
                 sample_rate: int = 16000, manifest: str | None = "manifest.tsv",
                 phones: Callable | None = None):
    """`n` seeded synthetic utterances as WAV files under `folder/wav_dir`, and their manifest; returns the
    manifest's rows (a DataFrame, the manifest's columns).

    Utterance i belongs to speaker s = i % `speakers` and is that speaker's k-th (k = i // `speakers`). One
    generator (`numpy.random.default_rng(seed)`) draws everything, in this order: the `signal` model's own
    draws (the tones of "tones"), then per utterance its length (`samples(rng)`: samples at `sample_rate`), its
    audio (`signal`: "noise", "int16" or "tones", see _signal_model) and, when `phones` is given, its phone
    string (`phones(rng)`, written to folder/phones.tsv, columns utt_id and phones).
    Per utterance: id and file stem `name.format(i=, s=, k=)`, speaker `speaker.format(s=)`, gender
    `genders[i % len(genders)]` ("" when `genders` is ""), split `split(i, k)` ("" without `split`), written as
    `subtype` (soundfile). `manifest`: its file name in `folder` (speaker_neurons.data.manifest.write_manifest),
    None to write none."""
    import numpy as np
    import pandas as pd
    import soundfile as sf

    rng = np.random.default_rng(seed)
    audio = _signal_model(signal, rng, speakers, sample_rate)
    wavs = Path(folder) / wav_dir
    wavs.mkdir(parents=True, exist_ok=True)
    rows, lines = [], ["utt_id\tphones"]
    for i in range(n):
        s, k = i % speakers, i // speakers
        utt = name.format(i=i, s=s, k=k)
        length = samples(rng)
        path = wavs / f"{utt}.wav"
        sf.write(path, audio(length, s), sample_rate, subtype=subtype)
        rows.append({"utt_id": utt, "path": str(path), "speaker": speaker.format(s=s),
                     "gender": genders[i % len(genders)] if genders else "", "split": split(i, k) if split else "",
                     "duration": length / sample_rate, "sample_rate": sample_rate})
        if phones is not None:
            lines.append(f"{utt}\t{phones(rng)}")
    table = pd.DataFrame(rows)
    if manifest is not None:
        from speaker_neurons.data.manifest import write_manifest

        write_manifest(table, Path(folder) / manifest)
    if phones is not None:
        (Path(folder) / "phones.tsv").write_text("\n".join(lines) + "\n")
    return table
