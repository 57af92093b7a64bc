"""Synthesize the demo corpus: many pseudo-speakers from the real-person voices of Debian's synthesizers.

Voices (13 people, 4 female, 9 male; see docs/demo.md, "What the demo runs"):
MBROLA us1 (F), us2, us3, en1 (M) driven by espeak-ng; flite awb, rms, kal16 (M) and slt (F); festival
ked, rab, don diphone voices (M); pico en-US and en-GB (F).

Each voice becomes several pseudo-speakers through seeded perturbations spread over the parameter box by
a maximin Latin hypercube (so two pseudo-speakers of one voice never share a level of any parameter):
- pitch (F0 shift, semitones) and tempo (speaking-rate factor, > 1 is faster) are applied inside the
  synthesizer (MBROLA: the .pho durations and pitch targets; flite: `f0_shift` / `int_f0_target_*` and
  `duration_stretch`; festival: `int_lr_params` and `Duration_Stretch`; pico: `<pitch>`/`<speed>`), so
  F0 moves without moving the formants;
- vocal-tract length by resampling the waveform (`vtl_factor` v: formants times 1/v, length times v),
  with F0 and durations pre-compensated inside the synthesizer so that v changes the formants only;
  flite rms has no F0 control, so for its pseudo-speakers pitch and formants move together
  (pitch_semitones = -12 log2 v, recorded as such);
- loudness: every utterance is normalised to -20 dBFS active RMS, then the speaker's gain (dB) applied.

Phone timings exist for the MBROLA voices only (the .pho file MBROLA renders); they are written to
phones.tsv and frame_classes.tsv. No labels are written for the other engines.

Same seed, same bytes: every random choice comes from a seeded numpy Generator, every external program is
deterministic, and the results do not depend on which worker rendered which utterance.
"""

from __future__ import annotations

import concurrent.futures as cf
import json
import logging
import math
import multiprocessing as mp
import multiprocessing.util as mp_util
import os
import re
import shutil
import subprocess
import tempfile
import time
import zlib
from dataclasses import asdict, dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import soundfile as sf
from scipy.signal import resample_poly
from tqdm import tqdm

from speaker_neurons.data import channel as ch
from speaker_neurons.data import phones as ph
from speaker_neurons.data.text import SentenceGenerator, vocabulary

log = logging.getLogger("speaker_neurons.synth")

SAMPLE_RATE = 16000
TARGET_DBFS = -20.0      # active RMS level before the speaker's gain
PEAK_LIMIT = 0.95        # peaks above this are scaled down (counted in the summary)
ESPEAK_SPEED = 150      # words per minute for the MBROLA voices (espeak-ng's 175 is hurried)
VTL_STEP = 400           # vtl factors are multiples of 1/400, so the resampling ratio is an exact fraction

PITCH_RANGE = (-2.5, 2.5)
VTL_RANGE = (0.9, 1.1)
TEMPO_RANGE = (0.88, 1.12)
GAIN_RANGE = (-6.0, 0.0)

# Where the voices live (module constants so that tests can point them elsewhere).
MBROLA_DIR = Path("/usr/share/mbrola")
FESTIVAL_VOICE_DIR = Path("/usr/share/festival/voices/english")
PICO_LANG_DIR = Path("/usr/share/pico/lang")

SETUP_HINT = ("Install them with `make setup` (scripts/setup_system.sh; the MBROLA voices, pico and some "
              "festival voices come from Debian's contrib/non-free components).")


@dataclass(frozen=True)
class Voice:
    name: str          # short id used in speaker ids
    gender: str        # F / M
    engine: str        # mbrola | flite | festival | pico
    arg: str           # engine-specific voice name
    package: str       # Debian package that provides the voice
    description: str
    native_f0: bool = True


VOICES: dict[str, Voice] = {v.name: v for v in [
    Voice("us1", "F", "mbrola", "us1", "mbrola-us1", "MBROLA us1, American English female, via espeak-ng mb-us1"),
    Voice("us2", "M", "mbrola", "us2", "mbrola-us2", "MBROLA us2, American English male, via espeak-ng mb-us2"),
    Voice("us3", "M", "mbrola", "us3", "mbrola-us3", "MBROLA us3, American English male, via espeak-ng mb-us3"),
    Voice("en1", "M", "mbrola", "en1", "mbrola-en1", "MBROLA en1, British English male, via espeak-ng mb-en1"),
    Voice("awb", "M", "flite", "awb", "flite", "flite clustergen awb, Scottish English male"),
    Voice("rms", "M", "flite", "rms", "flite", "flite clustergen rms, American English male", native_f0=False),
    Voice("slt", "F", "flite", "slt", "flite", "flite clustergen slt, American English female"),
    Voice("kal16", "M", "flite", "kal16", "flite", "flite diphone kal16, American English male"),
    Voice("ked", "M", "festival", "ked_diphone", "festvox-kdlpc16k", "festival ked diphone, American English male"),
    Voice("rab", "M", "festival", "rab_diphone", "festvox-rablpc16k", "festival rab diphone, British English male"),
    Voice("don", "M", "festival", "don_diphone", "festvox-don",
          "festival don diphone (10 kHz LPC), British English male"),
    Voice("picous", "F", "pico", "en-US", "libttspico-data", "SVOX pico en-US, female"),
    Voice("picogb", "F", "pico", "en-GB", "libttspico-data", "SVOX pico en-GB, female"),
]}

# Allocation order within each gender: voices earlier in the list get the extra pseudo-speakers.
DEFAULT_VOICES: tuple[str, ...] = (
    "us1", "slt", "picous", "picogb",
    "rms", "awb", "kal16", "us2", "us3", "ked", "en1", "rab", "don",
)

PROGRAM_PACKAGES = {
    "espeak-ng": "espeak-ng", "mbrola": "mbrola", "flite": "flite", "festival": "festival",
    "pico2wave": "libttspico-utils",
}
ENGINE_PROGRAMS = {"mbrola": ("espeak-ng", "mbrola"), "flite": ("flite",), "festival": ("festival",),
                   "pico": ("pico2wave",)}
ENGINE_PACKAGES = {"mbrola": ("espeak-ng", "espeak-ng-data", "mbrola"), "flite": ("flite",),
                   "festival": ("festival",), "pico": ("libttspico-utils", "libttspico-data")}

# flite voices' own defaults (checked: setting these gives byte-identical output)
_FLITE_DURATION_STRETCH = {"kal16": 1.1}
_FLITE_KAL_F0 = (95.0, 11.0)  # int_f0_target_mean, int_f0_target_stddev of kal16


class SynthesizerMissingError(RuntimeError):
    """A program or voice needed for the demo corpus is not installed."""


class SynthesisError(RuntimeError):
    """A synthesizer failed, or no candidate sentence fit the duration range."""


# ---- speakers -------------------------------------------------------------------------------------------
@dataclass
class SpeakerSpec:
    speaker: str
    gender: str
    voice: str
    engine: str
    pitch_semitones: float
    vtl_factor: float
    tempo: float
    gain_db: float

    @property
    def vtl_fraction(self) -> Fraction:
        return Fraction(int(round(self.vtl_factor * VTL_STEP)), VTL_STEP)


def _stable_rng(seed: int, *keys: Any) -> np.random.Generator:
    ints = [int(seed)] + [zlib.crc32(str(k).encode()) for k in keys]
    return np.random.default_rng(ints)


def _maximin_lhs(k: int, dims: int, rng: np.random.Generator, n_candidates: int = 300) -> np.ndarray:
    """`k` points in [0, 1]^dims, one per stratum in every dimension, best minimum distance of many draws."""
    best, best_score = None, -1.0
    for _ in range(n_candidates):
        pts = np.empty((k, dims))
        for d in range(dims):
            pts[:, d] = (rng.permutation(k) + 0.5 + rng.uniform(-0.25, 0.25, size=k)) / k
        if k > 1:
            diff = pts[:, None, :] - pts[None, :, :]
            dist = np.sqrt((diff ** 2).sum(-1))
            score = float(dist[np.triu_indices(k, 1)].min())
        else:
            score = 0.0
        if score > best_score:
            best, best_score = pts, score
    return best


def _lerp(u: float, lo_hi: tuple[float, float]) -> float:
    return lo_hi[0] + float(u) * (lo_hi[1] - lo_hi[0])


def _voice_params(voice: Voice, k: int, seed: int) -> list[tuple[float, float, float, float]]:
    """(pitch_semitones, vtl_factor, tempo, gain_db) for the k pseudo-speakers of one voice."""
    rng = _stable_rng(seed, "design", voice.name)
    pts = _maximin_lhs(k, 4 if voice.native_f0 else 3, rng)
    out = []
    for p in pts:
        if voice.native_f0:
            pitch = round(_lerp(p[0], PITCH_RANGE), 2)
            p = p[1:]
        vtl = round(_lerp(p[0], VTL_RANGE) * VTL_STEP) / VTL_STEP
        if not voice.native_f0:
            pitch = round(-12.0 * math.log2(vtl), 3)  # F0 moves with the formants
        tempo = round(_lerp(p[1], TEMPO_RANGE), 3)
        gain = round(_lerp(p[2], GAIN_RANGE), 1)
        out.append((pitch, vtl, tempo, gain))
    return out


def plan_speakers(n_speakers: int, voices: Sequence[str] | None, seed: int) -> list[SpeakerSpec]:
    """Pseudo-speakers: half of them female when both genders are available, spread round-robin over the
    voices of each gender in the given order; ids `f01_us1`, ..., `m24_don` (sortable)."""
    names = list(voices) if voices is not None else list(DEFAULT_VOICES)
    unknown = [n for n in names if n not in VOICES]
    if unknown:
        raise ValueError(f"unknown voice(s) {unknown}; known: {sorted(VOICES)}")
    if len(set(names)) != len(names):
        raise ValueError(f"voices listed twice: {names}")
    if n_speakers < 1:
        raise ValueError("n_speakers must be >= 1")
    by_g = {g: [n for n in names if VOICES[n].gender == g] for g in ("F", "M")}
    if by_g["F"] and by_g["M"]:
        n_g = {"F": n_speakers // 2, "M": n_speakers - n_speakers // 2}
    else:
        n_g = {g: (n_speakers if by_g[g] else 0) for g in ("F", "M")}
    width = max(2, len(str(n_speakers)))
    specs: list[SpeakerSpec] = []
    for g in ("F", "M"):
        vs = by_g[g]
        idx = 0
        for i, name in enumerate(vs):
            k = n_g[g] // len(vs) + (1 if i < n_g[g] % len(vs) else 0)
            if k == 0:
                continue
            v = VOICES[name]
            for pitch, vtl, tempo, gain in _voice_params(v, k, seed):
                idx += 1
                specs.append(SpeakerSpec(f"{g.lower()}{idx:0{width}d}_{name}", g, name, v.engine,
                                         pitch, vtl, tempo, gain))
    return specs


# ---- requirements ---------------------------------------------------------------------------------------
def _espeak_data_dir() -> Path | None:
    try:
        out = subprocess.run(["espeak-ng", "--version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    m = re.search(r"Data at:\s*(\S+)", out)
    return Path(m.group(1)) if m else None


def _flite_voices() -> set[str]:
    try:
        out = subprocess.run(["flite", "-lv"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return set()
    return set(out.replace("Voices available:", "").split())


def check_requirements(voices: Iterable[str]) -> None:
    """Raise `SynthesizerMissingError` naming every missing program / voice and its Debian package."""
    voices = [VOICES[v] for v in voices]
    missing: list[str] = []
    engines = sorted({v.engine for v in voices})
    have = {}
    for e in engines:
        for prog in ENGINE_PROGRAMS[e]:
            if prog not in have:
                have[prog] = shutil.which(prog) is not None
                if not have[prog]:
                    missing.append(f"program `{prog}` (Debian package {PROGRAM_PACKAGES[prog]})")
    data_dir = _espeak_data_dir() if have.get("espeak-ng") else None
    flite_vs = _flite_voices() if have.get("flite") else set()
    for v in voices:
        if v.engine == "mbrola":
            db = MBROLA_DIR / v.arg / v.arg
            if not db.is_file():
                missing.append(f"MBROLA voice {v.arg} ({db}; Debian package {v.package})")
            if data_dir is not None and not (data_dir / "voices" / "mb" / f"mb-{v.arg}").is_file():
                missing.append(f"espeak-ng voice mb-{v.arg} (Debian package espeak-ng-data)")
        elif v.engine == "flite":
            if have.get("flite") and v.arg not in flite_vs:
                missing.append(f"flite voice {v.arg} (Debian package flite)")
        elif v.engine == "festival":
            d = FESTIVAL_VOICE_DIR / v.arg
            if not d.is_dir():
                missing.append(f"festival voice {v.arg} ({d}; Debian package {v.package})")
        elif v.engine == "pico":
            f = PICO_LANG_DIR / f"{v.arg}_ta.bin"
            if not f.is_file():
                missing.append(f"pico language {v.arg} ({f}; Debian package {v.package})")
    if missing:
        raise SynthesizerMissingError(
            "the demo corpus needs synthesizers that are not installed:\n  - " + "\n  - ".join(missing)
            + "\n" + SETUP_HINT)


def package_versions(packages: Iterable[str]) -> dict[str, str]:
    """Debian package versions via dpkg-query (`not installed` / `unknown` where it cannot tell)."""
    out: dict[str, str] = {}
    for p in sorted(set(packages)):
        try:
            r = subprocess.run(["dpkg-query", "-W", "-f", "${Version}", p], capture_output=True, text=True,
                               timeout=30)
            out[p] = r.stdout.strip() if r.returncode == 0 and r.stdout.strip() else "not installed"
        except (OSError, subprocess.SubprocessError):
            out[p] = "unknown"
    return out


# ---- engines (one per worker process) ---------------------------------------------------------------
class _Festival:
    """A persistent `festival --pipe` process with one voice loaded."""

    def __init__(self, voice: str, workdir: Path):
        self.voice = voice
        self.err_path = workdir / f"festival_{voice}.err"
        self._err = open(self.err_path, "w")
        self.proc = subprocess.Popen(["festival", "--pipe"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=self._err, text=True, bufsize=1)
        out = self._send(f"(voice_{voice})\n(format t \"SNINIT %l %l\\n\" int_lr_params "
                         f"(Parameter.get 'Duration_Stretch))\n", "SNINIT")
        vals = dict(re.findall(r"\((\w+) ([-\d.]+)\)", out))
        try:
            self.f0 = {k: float(vals[k]) for k in ("target_f0_mean", "target_f0_std", "model_f0_mean",
                                                   "model_f0_std")}
        except KeyError as e:
            raise SynthesisError(f"festival voice {voice}: cannot read int_lr_params from {out!r}") from e
        m = re.search(r"\)\s+([\d.]+)\s*$", out.strip())
        self.duration_stretch = float(m.group(1)) if m else 1.0

    def _send(self, cmd: str, marker: str) -> str:
        if self.proc.poll() is not None:
            raise SynthesisError(f"festival ({self.voice}) exited: {self._stderr()}")
        self.proc.stdin.write(cmd + "(fflush nil)\n")
        self.proc.stdin.flush()
        while True:
            line = self.proc.stdout.readline()
            if not line:
                raise SynthesisError(f"festival ({self.voice}) died: {self._stderr()}")
            if line.startswith(marker):
                return line

    def _stderr(self) -> str:
        try:
            self._err.flush()
            return self.err_path.read_text()[-2000:]
        except OSError:
            return ""

    def synth(self, text: str, f0_ratio: float, dur_factor: float, out_wav: Path) -> None:
        f = self.f0
        esc = text.replace("\\", "\\\\").replace('"', '\\"')
        cmd = (f"(set! int_lr_params '((target_f0_mean {f['target_f0_mean'] * f0_ratio:.4f}) "
               f"(target_f0_std {f['target_f0_std'] * f0_ratio:.4f}) (model_f0_mean {f['model_f0_mean']:.4f}) "
               f"(model_f0_std {f['model_f0_std']:.4f})))\n"
               f"(Parameter.set 'Duration_Stretch {self.duration_stretch * dur_factor:.5f})\n"
               f"(utt.save.wave (utt.synth (Utterance Text \"{esc}\")) \"{out_wav}\" 'riff)\n"
               f"(format t \"SNDONE\\n\")\n")
        self._send(cmd, "SNDONE")
        if not out_wav.is_file() or out_wav.stat().st_size <= 44:
            raise SynthesisError(f"festival ({self.voice}) wrote no audio for {text!r}: {self._stderr()}")

    def close(self) -> None:
        try:
            if self.proc.poll() is None:
                self.proc.stdin.close()
                self.proc.wait(timeout=10)
        except (OSError, subprocess.SubprocessError):
            self.proc.kill()
        self._err.close()


class _Engines:
    """Per-process synthesizer state: a scratch directory and the festival processes."""

    def __init__(self) -> None:
        self.workdir = Path(tempfile.mkdtemp(prefix="sn_synth_"))
        self.festival: dict[str, _Festival] = {}
        self._n = 0

    def tmp(self, suffix: str) -> Path:
        self._n += 1
        return self.workdir / f"t{self._n}{suffix}"

    def restart_festival(self) -> None:
        """End the festival processes: the next festival utterance starts a fresh one. A festival process
        keeps state from one utterance to the next (measured: the same sentence rendered after others can
        differ), so each speaker's utterances are rendered by a fresh process, in a fixed order."""
        for f in self.festival.values():
            f.close()
        self.festival.clear()

    def close(self) -> None:
        self.restart_festival()
        shutil.rmtree(self.workdir, ignore_errors=True)

    @staticmethod
    def _run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
        r = subprocess.run(cmd, capture_output=True, timeout=120, **kw)
        if r.returncode != 0:
            err = r.stderr.decode(errors="replace") if isinstance(r.stderr, bytes) else r.stderr
            raise SynthesisError(f"{' '.join(cmd[:4])} ... failed ({r.returncode}): {err[-1000:]}")
        return r

    def synth(self, voice: Voice, text: str, f0_ratio: float, dur_factor: float):
        """Render `text`; returns (float32 samples, sample rate, .pho lines or None)."""
        out = self.tmp(".wav")
        pho_lines = None
        if voice.engine == "mbrola":
            cmd = ["espeak-ng", "-v", f"mb-{voice.arg}", "-s", str(ESPEAK_SPEED), "-q", "--pho", text]
            r = self._run(cmd, text=True)
            pho_lines = _scale_pho(ph.parse_pho(r.stdout), f0_ratio, dur_factor)
            pho = self.tmp(".pho")
            pho.write_text(ph.format_pho(pho_lines))
            self._run(["mbrola", "-e", str(MBROLA_DIR / voice.arg / voice.arg), str(pho), str(out)])
        elif voice.engine == "flite":
            stretch = _FLITE_DURATION_STRETCH.get(voice.arg, 1.0) * dur_factor
            cmd = ["flite", "-voice", voice.arg, "--setf", f"duration_stretch={stretch:.5f}"]
            if voice.arg == "kal16":
                m, s = _FLITE_KAL_F0
                cmd += ["--setf", f"int_f0_target_mean={m * f0_ratio:.4f}",
                        "--setf", f"int_f0_target_stddev={s * f0_ratio:.4f}"]
            elif voice.native_f0:
                cmd += ["--setf", f"f0_shift={f0_ratio:.5f}"]
            self._run(cmd + ["-t", text, "-o", str(out)])
        elif voice.engine == "festival":
            if voice.arg not in self.festival:
                self.festival[voice.arg] = _Festival(voice.arg, self.workdir)
            self.festival[voice.arg].synth(text, f0_ratio, dur_factor, out)
        elif voice.engine == "pico":
            pitch = int(round(100 * f0_ratio))
            speed = int(round(100 / dur_factor))
            markup = f"<pitch level='{pitch}'><speed level='{speed}'>{text}</speed></pitch>"
            self._run(["pico2wave", "-l", voice.arg, "-w", str(out), markup])
        else:
            raise ValueError(voice.engine)
        x, sr = sf.read(str(out), dtype="float32", always_2d=True)
        out.unlink()
        return x.mean(axis=1), sr, pho_lines


def _scale_pho(lines: list[ph.PhoLine], f0_ratio: float, dur_factor: float) -> list[ph.PhoLine]:
    """Durations times `dur_factor` (whole ms, at least 1), pitch targets times `f0_ratio` (whole Hz);
    a 120 ms silence is put in front when the utterance does not start with one."""
    out = []
    if lines and ph.phone_class(lines[0].phone) != "S":
        out.append(ph.PhoLine("_", float(max(1, round(120 * dur_factor))), []))
    for pl in lines:
        out.append(ph.PhoLine(pl.phone, float(max(1, round(pl.duration_ms * dur_factor))),
                              [(pos, float(round(hz * f0_ratio))) for pos, hz in pl.pitch]))
    return out


_ENGINES: _Engines | None = None


def _engines() -> _Engines:
    global _ENGINES
    if _ENGINES is None:
        _ENGINES = _Engines()
        mp_util.Finalize(None, _close_engines, exitpriority=10)
    return _ENGINES


def _close_engines() -> None:
    global _ENGINES
    if _ENGINES is not None:
        _ENGINES.close()
        _ENGINES = None


# ---- one utterance --------------------------------------------------------------------------------------
def _render(spec: SpeakerSpec, voice: Voice, text: str, engines: _Engines):
    """Synthesize with the speaker's perturbations; returns (int16 samples, segments or None, info)."""
    v = spec.vtl_fraction
    f0_ratio = 2.0 ** (spec.pitch_semitones / 12.0) * float(v) if voice.native_f0 else 1.0
    dur_factor = 1.0 / (spec.tempo * float(v))
    x, sr, pho_lines = engines.synth(voice, text, f0_ratio, dur_factor)
    raw_samples = len(x)
    ratio = Fraction(SAMPLE_RATE, sr) * v  # output samples per input sample
    if ratio != 1:
        x = resample_poly(x.astype(np.float64), ratio.numerator, ratio.denominator)
    rms = ch.active_rms(x)
    if rms <= 0:
        raise SynthesisError(f"{spec.speaker}: silent output for {text!r}")
    y = x * (10.0 ** ((TARGET_DBFS + spec.gain_db) / 20.0) / rms)
    peak = float(np.abs(y).max())
    limited = peak > PEAK_LIMIT
    if limited:
        y *= PEAK_LIMIT / peak
    pcm = np.clip(np.round(y * 32767.0), -32768, 32767).astype(np.int16)
    segments = None
    info: dict[str, Any] = {"limited": bool(limited)}
    if pho_lines is not None:
        dur = len(pcm) / SAMPLE_RATE
        scale = float(Fraction(sr, SAMPLE_RATE) * ratio)  # seconds in the render -> seconds in the output
        segments = [s for s in ph.pho_segments(pho_lines, scale) if s[0] < dur]
        if segments and segments[-1][1] > dur:
            s = segments[-1]
            segments[-1] = (s[0], dur, s[2], s[3])
        nominal = sum(p.duration_ms for p in pho_lines) * sr / 1000.0
        info["mbrola_length_deficit_ms"] = round((nominal - raw_samples) / sr * 1000.0, 3)
    return pcm, segments, info


def render(voice: str, text: str, pitch_semitones: float = 0.0, vtl_factor: float = 1.0, tempo: float = 1.0,
           gain_db: float = 0.0):
    """Synthesize one sentence with one voice and perturbation, outside a corpus.

    Returns `(int16 samples at 16 kHz, segments)`, segments `[(start_s, end_s, phone, class), ...]` for
    MBROLA voices and None for the others. `vtl_factor` is rounded to a multiple of 1/400.
    """
    v = VOICES[voice]
    check_requirements([voice])
    if not v.native_f0:
        pitch_semitones = -12.0 * math.log2(round(vtl_factor * VTL_STEP) / VTL_STEP)
    spec = SpeakerSpec("render", v.gender, voice, v.engine, pitch_semitones, vtl_factor, tempo, gain_db)
    engines = _Engines()
    try:
        pcm, segments, _ = _render(spec, v, text, engines)
    finally:
        engines.close()
    return pcm, segments


def _synth_utterance(job: dict) -> dict:
    """Render one utterance, trying the candidate sentences until one fits the duration range."""
    spec = SpeakerSpec(**job["spec"])
    voice = VOICES[spec.voice]
    engines = _engines()
    lo, hi = job["min_duration"], job["max_duration"]
    mid, shorter, longer = job["candidates"][0], list(job["candidates"][1]), list(job["candidates"][2])
    queue = [mid]
    tried = []
    while queue:
        text = queue.pop(0)
        pcm, segments, info = _render(spec, voice, text, engines)
        dur = len(pcm) / SAMPLE_RATE
        tried.append((text, round(dur, 3)))
        if lo <= dur <= hi:
            break
        pool = shorter if dur > hi else longer
        if pool:
            queue.append(pool.pop(0))
    else:
        raise SynthesisError(f"{job['utt_id']}: no candidate sentence gave {lo}-{hi} s: {tried}")
    if len(tried) > 1:
        log.debug("%s: %d sentences tried for %s-%s s: %s", job["utt_id"], len(tried), lo, hi, tried)
    if job.get("clean_path"):  # the utterance before its channel (denoising targets, docs/METHOD.md §12)
        clean = Path(job["clean_path"])
        clean.parent.mkdir(parents=True, exist_ok=True)
        sf.write(str(clean), pcm, SAMPLE_RATE, subtype="PCM_16", format="WAV")
    if job.get("channel") is not None:  # session variability: this utterance's own recording channel
        y = ch.apply_channel(pcm.astype(np.float64) / 32768.0, job["channel"], SAMPLE_RATE)
        peak = float(np.abs(y).max())
        if peak > PEAK_LIMIT:
            y *= PEAK_LIMIT / peak
            info["limited"] = True
        pcm = np.clip(np.round(y * 32767.0), -32768, 32767).astype(np.int16)
    path = Path(job["path"])
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), pcm, SAMPLE_RATE, subtype="PCM_16", format="WAV")
    labels = None
    if segments is not None:
        labels = ph.frame_labels([(s, e, c) for s, e, _, c in segments], len(pcm))
    x = pcm.astype(np.float64) / 32768.0
    return {
        "utt_id": job["utt_id"], "text": text, "num_samples": int(len(pcm)), "attempts": len(tried),
        "segments": segments, "labels": labels,
        "rms_dbfs": round(20 * math.log10(max(float(np.sqrt(np.mean(x ** 2))), 1e-12)), 2),
        "peak": round(float(np.abs(x).max()), 4), **info,
    }


def _synth_speaker(jobs: Sequence[dict]) -> list[dict]:
    """Render one speaker's utterances in their order, festival from a fresh process: what each utterance
    sounds like then depends on the corpus' settings only, not on which worker renders it, how many
    workers there are, or what they rendered before."""
    _engines().restart_festival()
    return [_synth_utterance(job) for job in jobs]


# ---- the corpus ---------------------------------------------------------------------------------------
def _split_counts(n: int, split: Sequence[int]) -> list[int]:
    split = [int(s) for s in split]
    if len(split) != 3 or min(split) < 0 or sum(split) == 0:
        raise ValueError(f"split must be three non-negative counts (train, dev, test), got {split}")
    if sum(split) == n:
        return split
    total = sum(split)
    counts = [s * n // total for s in split]  # largest remainder, ties to the earlier part
    for i in sorted(range(3), key=lambda i: -((split[i] * n) % total))[: n - sum(counts)]:
        counts[i] += 1
    for i in range(3):  # a requested part gets one utterance, taken from the largest, while that has two
        j = int(np.argmax(counts))
        if split[i] > 0 and counts[i] == 0 and counts[j] > 1:
            counts[j] -= 1
            counts[i] += 1
    return counts


def _fmt(x: float, nd: int) -> str:
    return f"{x:.{nd}f}"


def synthesize_corpus(out_dir: str | os.PathLike, *, seed: int, n_speakers: int, utterances_per_speaker: int,
                      min_duration: float, max_duration: float, split: Sequence[int],
                      channel: Mapping[str, Any] | None, workers: int = 2,
                      voices: Sequence[str] | None = None, id_prefix: str = "") -> dict:
    """Build the demo corpus in `out_dir` (see docs/DESIGN.md, "Demo corpus"); returns a summary dict.

    `voices`: voice names from `VOICES` (default: all 13, in `DEFAULT_VOICES` order). `channel`: the
    session variability (config `corpus.demo.channel`, see `speaker_neurons.data.channel`); None or
    `enabled: false` = every utterance as the synthesizer made it. `id_prefix`: put before every speaker
    name and utterance id (`eval-f01_us1`, `eval-f01_us1-0000`), so that two corpora of one run never share
    an id (the catalogue gives one to every synthesized corpus but the first); it renames, nothing else:
    every random draw is keyed by the unprefixed names. Same arguments, same bytes. Raises
    `SynthesizerMissingError` before any work when a program or voice is missing.
    """
    if re.search(r"\s|/", id_prefix):
        raise ValueError(f"id_prefix {id_prefix!r} must not contain whitespace or '/'")
    if channel is not None and not channel["enabled"]:
        channel = None
    if channel is not None:
        ch.check_config(channel, SAMPLE_RATE)
    t0 = time.perf_counter()
    out_dir = Path(out_dir)
    if not (0 < min_duration < max_duration):
        raise ValueError(f"need 0 < min_duration < max_duration, got {min_duration}, {max_duration}")
    if utterances_per_speaker < 1:
        raise ValueError("utterances_per_speaker must be >= 1")
    specs = plan_speakers(n_speakers, voices, seed)
    used_voices = sorted({s.voice for s in specs}, key=lambda n: list(VOICES).index(n))
    check_requirements(used_voices)
    counts = _split_counts(utterances_per_speaker, split)
    log.info("demo corpus: %d speakers (%d F, %d M) from %d voices, %d utterances each, split %s, seed %d",
             len(specs), sum(s.gender == "F" for s in specs), sum(s.gender == "M" for s in specs),
             len(used_voices), utterances_per_speaker, counts, seed)
    n_f = sum(s.gender == "F" for s in specs)
    if len(specs) >= 2 and min(n_f, len(specs) - n_f) < 0.4 * len(specs):
        log.warning("gender balance: %d F of %d speakers", n_f, len(specs))

    # texts: candidate sentences reserved per utterance, all distinct across the corpus
    gen = SentenceGenerator()
    text_rng = _stable_rng(seed, "text")
    seen: set[str] = set()
    jobs: list[dict] = []
    utt_rows: list[dict] = []
    shutil.rmtree(out_dir / "wav", ignore_errors=True)  # no stale audio from an earlier run
    shutil.rmtree(out_dir / "clean", ignore_errors=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    for spec in specs:
        order = _stable_rng(seed, "split", spec.speaker).permutation(utterances_per_speaker)
        split_of = {}
        for pos, i in enumerate(order):
            split_of[int(i)] = "train" if pos < counts[0] else ("dev" if pos < counts[0] + counts[1] else "test")
        speaker = f"{id_prefix}{spec.speaker}"
        for i in range(utterances_per_speaker):
            key = f"{spec.speaker}-{i:04d}"  # what the random draws know of the utterance (no prefix)
            utt_id = f"{speaker}-{i:04d}"
            mid = gen.unique_sentences(text_rng, 1, 7, 12, seen)[0]
            shorter = gen.unique_sentences(text_rng, 1, 4, 7, seen) + gen.unique_sentences(text_rng, 1, 3, 5, seen)
            longer = gen.unique_sentences(text_rng, 1, 12, 16, seen) + gen.unique_sentences(text_rng, 1, 15, 20, seen)
            rel = f"wav/{speaker}/{utt_id}.wav"
            # the channel's generator knows the utterance, not the speaker: no speaker gets a channel of its own
            chan = None if channel is None else ch.draw_channel(_stable_rng(seed, "channel", key), channel)
            jobs.append({"utt_id": utt_id, "spec": asdict(spec), "candidates": (mid, shorter, longer),
                         "min_duration": float(min_duration), "max_duration": float(max_duration),
                         "path": str(out_dir / rel), "channel": chan,
                         "clean_path": str(out_dir / "clean" / rel[4:]) if chan and channel["keep_clean"] else ""})
            utt_rows.append({"utt_id": utt_id, "speaker": speaker, "path": rel, "split": split_of[i]})

    # render
    results: dict[str, dict] = {}
    workers = max(1, int(workers))
    bar = None
    try:
        by_speaker: dict[str, list[dict]] = {}
        for job in jobs:  # one task per speaker, its utterances in corpus order (see _synth_speaker)
            by_speaker.setdefault(job["spec"]["speaker"], []).append(job)
        if workers == 1:
            bar = tqdm(total=len(jobs), desc="synthesize", unit="utt", mininterval=1.0)
            for group in by_speaker.values():
                for r in _synth_speaker(group):
                    results[r["utt_id"]] = r
                    bar.update(1)
        else:
            with cf.ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("fork")) as pool:
                futs = [pool.submit(_synth_speaker, group) for group in by_speaker.values()]  # forks the workers first
                bar = tqdm(total=len(jobs), desc="synthesize", unit="utt", mininterval=1.0)
                try:
                    for fut in cf.as_completed(futs):
                        for r in fut.result():
                            results[r["utt_id"]] = r
                            bar.update(1)
                except BaseException:
                    for f in futs:
                        f.cancel()
                    raise
    finally:
        if bar is not None:
            bar.close()
        _close_engines()

    # tables
    _write_tsv(out_dir / "speakers.tsv",
               ["speaker", "gender", "voice", "engine", "pitch_semitones", "vtl_factor", "tempo", "gain_db"],
               [[f"{id_prefix}{s.speaker}", s.gender, s.voice, s.engine, _fmt(s.pitch_semitones, 3), _fmt(s.vtl_factor, 4),
                 _fmt(s.tempo, 3), _fmt(s.gain_db, 1)] for s in specs])
    durations = []
    utt_out, phone_out, frame_out = [], [], []
    class_counts = {c: 0 for c in ph.CLASSES}
    phone_inventory: dict[str, int] = {}
    for row in utt_rows:
        r = results[row["utt_id"]]
        dur = r["num_samples"] / SAMPLE_RATE
        durations.append(dur)
        utt_out.append([row["utt_id"], row["speaker"], row["path"], row["split"], _fmt(dur, 3), r["text"]])
        if r["segments"] is not None:
            for s, e, p, c in r["segments"]:
                phone_out.append([row["utt_id"], _fmt(s, 6), _fmt(e, 6), p, c])
                phone_inventory[p] = phone_inventory.get(p, 0) + 1
            frame_out.append([row["utt_id"], r["labels"]])
            for c in r["labels"]:
                class_counts[c] += 1
    _write_tsv(out_dir / "utterances.tsv", ["utt_id", "speaker", "path", "split", "duration", "text"], utt_out)
    _write_tsv(out_dir / "phones.tsv", ["utt_id", "start", "end", "phone", "class"], phone_out)
    _write_tsv(out_dir / "frame_classes.tsv", ["utt_id", "labels"], frame_out)
    channels = {j["utt_id"]: j["channel"] for j in jobs if j["channel"] is not None}
    clean_of = {j["utt_id"]: str(Path(j["clean_path"]).relative_to(out_dir)) if j["clean_path"] else ""
                for j in jobs}
    _write_tsv(out_dir / "channels.tsv", ["utt_id", "clean_path", *ch.CHANNEL_COLUMNS],
               [[u, clean_of[u], *ch.format_row(c)] for u, c in channels.items()])

    res = list(results.values())
    deficits = [r["mbrola_length_deficit_ms"] for r in res if "mbrola_length_deficit_ms" in r]
    packages = {p for v in used_voices for p in ENGINE_PACKAGES[VOICES[v].engine]}
    packages |= {VOICES[v].package for v in used_voices}
    import scipy

    corpus = {
        "seed": int(seed),
        "sample_rate": SAMPLE_RATE,
        "counts": {
            "speakers": len(specs),
            "utterances": len(utt_rows),
            "utterances_per_speaker": int(utterances_per_speaker),
            "genders": {g: sum(s.gender == g for s in specs) for g in ("F", "M")},
            "splits": {k: sum(r["split"] == k for r in utt_rows) for k in ("train", "dev", "test")},
            "phone_labelled_utterances": len(frame_out),
            "frames_by_class": class_counts,
        },
        "parameters": {
            "n_speakers": int(n_speakers), "min_duration": float(min_duration),
            "max_duration": float(max_duration), "split": [int(s) for s in split],
            "split_per_speaker": counts, "voices": list(voices) if voices is not None else None,
            "pitch_semitones_range": list(PITCH_RANGE), "vtl_factor_range": list(VTL_RANGE),
            "tempo_range": list(TEMPO_RANGE), "gain_db_range": list(GAIN_RANGE),
            "target_active_rms_dbfs": TARGET_DBFS,
            "channel": dict(channel) if channel is not None else None, "id_prefix": id_prefix,
        },
        "channels": ({"utterances": len(channels),
                      "reverberant": sum(c["rt60_s"] > 0 for c in channels.values()),
                      "snr_db_range": [round(min(c["snr_db"] for c in channels.values()), 2),
                                       round(max(c["snr_db"] for c in channels.values()), 2)]}
                     if channels else None),
        "voices": {v: {"engine": VOICES[v].engine, "gender": VOICES[v].gender,
                       "description": VOICES[v].description, "debian_package": VOICES[v].package,
                       "speakers": sum(s.voice == v for s in specs),
                       "phone_labels": VOICES[v].engine == "mbrola"} for v in used_voices},
        "package_versions": package_versions(packages),
        "python_packages": {"numpy": np.__version__, "scipy": scipy.__version__, "soundfile": sf.__version__},
        "text": {"generator": "speaker_neurons.data.text.SentenceGenerator",
                 "vocabulary_size": len(vocabulary()), "distinct_texts": len({r["text"] for r in res})},
        "durations": {"min": round(min(durations), 3), "max": round(max(durations), 3),
                      "mean": round(float(np.mean(durations)), 3), "total_hours": round(sum(durations) / 3600, 4)},
        "levels": {"rms_dbfs_min": min(r["rms_dbfs"] for r in res), "rms_dbfs_max": max(r["rms_dbfs"] for r in res),
                   "peak_max": max(r["peak"] for r in res), "peak_limited": sum(r["limited"] for r in res)},
        "attempts": {str(k): sum(r["attempts"] == k for r in res) for k in sorted({r["attempts"] for r in res})},
        "phone_inventory": dict(sorted(phone_inventory.items())),
        "mbrola_length_deficit_ms": ({"min": min(deficits), "max": max(deficits)} if deficits else None),
    }
    (out_dir / "corpus.json").write_text(json.dumps(corpus, indent=2, sort_keys=True) + "\n")
    wall = time.perf_counter() - t0
    log.info("demo corpus written to %s: %d utterances, %.3f-%.3f s, %d phone-labelled, %.1f s wall",
             out_dir, len(utt_rows), corpus["durations"]["min"], corpus["durations"]["max"], len(frame_out), wall)
    summary = dict(corpus)
    summary["out_dir"] = str(out_dir)
    summary["wall_seconds"] = round(wall, 2)
    return summary


def _write_tsv(path: Path, header: list[str], rows: list[list[str]]) -> None:
    for r in rows:
        for v in r:
            if "\t" in v or "\n" in v:
                raise ValueError(f"tab or newline in a TSV field: {v!r}")
    with open(path, "w", newline="\n") as f:
        f.write("\t".join(header) + "\n")
        for r in rows:
            f.write("\t".join(r) + "\n")
