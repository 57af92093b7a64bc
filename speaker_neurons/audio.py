"""Audio input: the one way every stage reads a waveform.

`load_audio` decodes with soundfile (libsndfile: WAV, FLAC, OGG, ...), averages the channels to
mono and resamples with `torchaudio.functional.resample`. torchaudio.load/save are not used: in
torchaudio 2.9 they need TorchCodec and FFmpeg.

Every failure is an `AudioError` that names the file, says what is wrong and, where there is one,
how to fix it. `AudioError.code` is a short stable tag (`missing`, `unreadable`, `empty`,
`non_finite`) that audio QC writes into its report.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

__all__ = [
    "AudioError",
    "read_audio",
    "to_mono",
    "resample",
    "load_audio",
    "kaldi_num_frames",
]


class AudioError(Exception):
    """An audio file that cannot be used. Carries `path`, `reason`, `fix` (or None) and `code`."""

    def __init__(self, path: str | os.PathLike, reason: str, fix: str | None = None, code: str = "unreadable"):
        self.path = str(path)
        self.reason = reason
        self.fix = fix
        self.code = code
        msg = f"{self.path}: {reason}"
        if fix:
            msg += f" (fix: {fix})"
        super().__init__(msg)

    def __reduce__(self):  # keep the fields through pickling (process pools, snakemake)
        return (type(self), (self.path, self.reason, self.fix, self.code))


def read_audio(path: str | os.PathLike) -> tuple[np.ndarray, int]:
    """Decode a file as it is stored: float32 array (frames, channels) in [-1, 1] and its native rate.

    Raises AudioError (code `missing` or `unreadable`). Performs no content checks.
    """
    import soundfile as sf

    p = Path(path)
    if not p.exists():
        raise AudioError(p, "file not found", "check the manifest path / corpus location", code="missing")
    if p.is_dir():
        raise AudioError(p, "is a directory, not an audio file", "point the manifest at the audio file", code="unreadable")
    try:
        data, sr = sf.read(str(p), dtype="float32", always_2d=True)
    except sf.LibsndfileError as e:
        detail = (getattr(e, "error_string", "") or str(e)).strip()
        raise AudioError(
            p,
            f"not a readable audio file (libsndfile: {detail})",
            "convert it to WAV or FLAC, e.g. `sox in.xxx -r 16000 -c 1 out.wav`",
            code="unreadable",
        ) from e
    except (OSError, RuntimeError, ValueError, TypeError) as e:
        raise AudioError(p, f"could not be decoded ({type(e).__name__}: {e})", code="unreadable") from e
    if sr <= 0:
        raise AudioError(p, f"invalid sample rate {sr}", code="unreadable")
    return data, int(sr)


def to_mono(data: np.ndarray) -> np.ndarray:
    """(frames, channels) or (frames,) -> (frames,) float32, by the mean over channels."""
    data = np.asarray(data, dtype=np.float32)
    if data.ndim == 1:
        return data
    if data.ndim != 2:
        raise ValueError(f"expected (frames, channels) audio, got shape {data.shape}")
    if data.shape[1] == 1:
        return np.ascontiguousarray(data[:, 0])
    return data.mean(axis=1, dtype=np.float32)


def resample(x: np.ndarray, orig_sr: int, target_sr: int) -> np.ndarray:
    """1-D float32 resampling with torchaudio's windowed-sinc resampler; a no-op when the rates match.

    Output length is ceil(len(x) * target_sr / orig_sr).
    """
    x = np.asarray(x, dtype=np.float32)
    if int(orig_sr) == int(target_sr):
        return x
    if x.size == 0:
        return x
    import torch
    import torchaudio.functional as taf

    with torch.no_grad():
        y = taf.resample(torch.from_numpy(np.ascontiguousarray(x)), int(orig_sr), int(target_sr))
    return y.numpy().astype(np.float32, copy=False)


def load_audio(path: str | os.PathLike, target_sr: int) -> tuple[np.ndarray, int]:
    """Decode `path`, downmix to mono (mean), resample to `target_sr`.

    Returns (float32 1-D array at target_sr, native sample rate of the file).
    Raises AudioError for a missing/undecodable file (`missing`/`unreadable`), a file with no
    samples (`empty`) and one holding NaN or infinite samples (`non_finite`).
    """
    data, sr = read_audio(path)
    if data.shape[0] == 0:
        raise AudioError(path, "contains no samples (0 frames)", "remove it from the corpus or re-export it", code="empty")
    finite = np.isfinite(data)
    if not finite.all():
        n_bad = int(data.size - np.count_nonzero(finite))
        raise AudioError(
            path,
            f"{n_bad} of {data.size} samples are NaN or infinite",
            "re-export the file; float WAVs must hold finite values",
            code="non_finite",
        )
    return resample(to_mono(data), sr, target_sr), sr


def kaldi_num_frames(num_samples, win: int = 400, hop: int = 160):
    """Frames of a Kaldi-style framing with snip_edges=True: 1 + (N - win) // hop, 0 when N < win.

    Works on an int or an integer array (elementwise).
    """
    if win <= 0 or hop <= 0:
        raise ValueError(f"win and hop must be positive, got win={win}, hop={hop}")
    if np.ndim(num_samples) == 0:
        n = int(num_samples)
        return 0 if n < win else 1 + (n - win) // hop
    n = np.asarray(num_samples, dtype=np.int64)
    return np.where(n < win, 0, 1 + (n - win) // hop)
