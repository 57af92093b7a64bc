"""Broad phone classes and frame labels for the synthesized demo corpus.

Classes: `V` vowel (diphthongs and r-coloured vowels included), `D` voiced consonant, `U` unvoiced
consonant, `S` silence. The phone symbols are the MBROLA ones that espeak-ng writes for the English MBROLA
voices (SAMPA for us1/us2/us3, SAMPA with length marks for en1); MRPA-style names from the voices'
rename tables are accepted too. An unknown symbol raises `UnknownPhoneError`: a class is never guessed.

Frames follow docs/DESIGN.md: frame t is the Kaldi fbank frame t of a 16 kHz signal (25 ms window, 10 ms
shift, snip_edges=True, so `n = 1 + (N - 400) // 160`), labelled by the phone that covers its centre
`t * 0.010 + 0.0125` s; a centre that no phone covers is `S`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np

SILENCE = frozenset({"_", "#", "pau", "sil"})

VOWELS = frozenset({
    # SAMPA (us1/us2/us3 as espeak-ng writes them)
    "i", "I", "E", "{", "A", "O", "O2", "V", "U", "u", "@", "r=", "3", "3`", "@`", "a", "e", "o", "Q",
    "EI", "AI", "OI", "@U", "aU", "oU", "aI", "eI", "OI",
    # SAMPA with length marks and centring diphthongs (en1)
    "i:", "A:", "O:", "u:", "3:", "I@", "e@", "U@", "a:", "o:", "e:",
    # MRPA-style names (rename tables shipped with the voices)
    "ii", "ih", "iy", "eh", "ae", "aa", "ao", "ah", "uh", "uw", "ax", "er", "ey", "ay", "oy", "aw", "ow",
    "uu", "oo", "@@", "ei", "ai", "oi", "au", "ou", "i@", "u@", "e@@",
})

VOICED_CONSONANTS = frozenset({
    "b", "d", "g", "v", "z", "Z", "dZ", "D", "m", "n", "N", "l", "r", "j", "w", "4", "5", "R",
    "l=", "n=", "m=", "N=", "r\\", "l`",
    "dh", "zh", "jh", "ng", "y", "ll", "dx", "em", "en", "el",
})

UNVOICED_CONSONANTS = frozenset({
    "p", "t", "k", "f", "s", "S", "tS", "T", "h", "p_h", "t_h", "k_h", "?", "x", "W",
    "th", "sh", "ch", "hh",
})

CLASSES = ("V", "D", "U", "S")


class UnknownPhoneError(KeyError):
    """A phone symbol that has no broad class in this table."""

    def __init__(self, phone: str):
        super().__init__(phone)
        self.phone = phone

    def __str__(self) -> str:
        return f"no broad phone class for MBROLA phone {self.phone!r} (add it to speaker_neurons/data/phones.py)"


def phone_class(phone: str) -> str:
    """Broad class (`V`, `D`, `U`, `S`) of an MBROLA phone symbol."""
    if phone in SILENCE:
        return "S"
    if phone in VOWELS:
        return "V"
    if phone in VOICED_CONSONANTS:
        return "D"
    if phone in UNVOICED_CONSONANTS:
        return "U"
    raise UnknownPhoneError(phone)


def num_frames(num_samples: int) -> int:
    """Kaldi fbank frame count at 16 kHz (25 ms window, 10 ms shift, snip_edges=True)."""
    from speaker_neurons.audio import kaldi_num_frames

    return kaldi_num_frames(int(num_samples))


def frame_centres(n: int) -> np.ndarray:
    """Centre time (s) of frames 0..n-1."""
    return np.arange(n) * 0.010 + 0.0125


def frame_labels(segments: Sequence[tuple[float, float, str]], num_samples: int) -> str:
    """One class character per Kaldi frame of a 16 kHz signal of `num_samples` samples.

    `segments` are `(start_s, end_s, class)` in time order, not overlapping; a frame takes the class of
    the segment with `start <= centre < end`, or `S` where none covers its centre.
    """
    n = num_frames(num_samples)
    if n == 0:
        return ""
    out = np.full(n, "S", dtype="<U1")
    if segments:
        starts = np.array([s[0] for s in segments], dtype=np.float64)
        ends = np.array([s[1] for s in segments], dtype=np.float64)
        if np.any(np.diff(starts) < 0) or np.any(ends < starts):
            raise ValueError("segments must be in time order with end >= start")
        classes = np.array([s[2] for s in segments], dtype="<U1")
        c = frame_centres(n)
        idx = np.searchsorted(ends, c, side="right")  # first segment whose end > centre
        ok = idx < len(ends)
        ok[ok] &= starts[idx[ok]] <= c[ok]
        out[ok] = classes[idx[ok]]
    return "".join(out.tolist())


# ---- MBROLA .pho files ------------------------------------------------------------------------------
@dataclass
class PhoLine:
    phone: str
    duration_ms: float
    pitch: list[tuple[float, float]]  # (percent of the phone, Hz)


def parse_pho(text: str) -> list[PhoLine]:
    """Parse MBROLA .pho text (comments `;`, blank lines and flush marks `#` lines ignored)."""
    out: list[PhoLine] = []
    for raw in text.splitlines():
        line = raw.split(";", 1)[0].strip()
        if not line:
            continue
        parts = line.split()
        if len(parts) < 2:
            continue
        vals = [float(v) for v in parts[2:]]
        if len(vals) % 2:
            raise ValueError(f"odd number of pitch values in .pho line {raw!r}")
        out.append(PhoLine(parts[0], float(parts[1]), list(zip(vals[0::2], vals[1::2]))))
    return out


def format_pho(lines: Iterable[PhoLine]) -> str:
    """Write .pho text; durations and pitch values are written as integers when they are whole."""

    def num(x: float) -> str:
        return str(int(x)) if float(x).is_integer() else f"{x:.3f}"

    rows = []
    for pl in lines:
        row = [pl.phone, num(pl.duration_ms)]
        for pos, hz in pl.pitch:
            row += [num(pos), num(hz)]
        rows.append(" ".join(row))
    return "\n".join(rows) + "\n"


def pho_segments(lines: Sequence[PhoLine], time_scale: float = 1.0) -> list[tuple[float, float, str, str]]:
    """`(start_s, end_s, phone, class)` per .pho line, times multiplied by `time_scale`."""
    segs = []
    t_ms = 0.0
    for pl in lines:
        start, t_ms = t_ms, t_ms + pl.duration_ms
        segs.append((start / 1000.0 * time_scale, t_ms / 1000.0 * time_scale, pl.phone, phone_class(pl.phone)))
    return segs
