"""Session variability for the demo corpus: one seeded recording channel per utterance.

A real speaker-ID corpus mixes sessions, microphones, rooms and noise, so the long-term spectrum of an
utterance is not its speaker. Without that, every utterance of a synthesized pseudo-speaker has the
same spectrum and a linear probe on the model's input (`hidden_0`) identifies it (docs/METHOD.md,
"Positive controls"). Each utterance gets a channel drawn from its own generator (the corpus seed and
the utterance id, never the speaker), applied in this order:

1. equalisation: `eq_bands` peaking filters (RBJ biquads) at log-uniform centre frequencies in
   `eq_freq_hz`, gains uniform in +-`eq_gain_db`, quality factors uniform in `eq_q`;
2. band limits: a 4th-order Butterworth high-pass at a log-uniform edge in `highpass_hz` and a
   low-pass in `lowpass_hz` (a telephone line to a wide-band microphone);
3. reverberation, for a `reverb_fraction` of utterances: a simulated room impulse response (a direct
   path, then Gaussian noise under an exponential decay whose 60 dB time is uniform in `rt60_s`,
   direct-to-reverberant ratio uniform in `drr_db`), the output cut to the input's length so that
   phone timings stay valid;
4. additive noise (white, pink or brown, `noise`) at an SNR uniform in `snr_db` against the active RMS
   of the speech;
5. the level set back to the speech's active RMS before the channel (loudness stays the speaker's).

Every parameter drawn is returned, and written per utterance to the corpus table `channels.tsv`.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import numpy as np
from scipy.signal import butter, fftconvolve, sosfilt

CHANNEL_COLUMNS = ["eq_freqs_hz", "eq_gains_db", "eq_qs", "highpass_hz", "lowpass_hz", "rt60_s", "drr_db",
                   "noise", "snr_db"]


def _uniform(rng: np.random.Generator, lo_hi) -> float:
    lo, hi = float(lo_hi[0]), float(lo_hi[1])
    return lo if hi <= lo else float(rng.uniform(lo, hi))


def _log_uniform(rng: np.random.Generator, lo_hi) -> float:
    lo, hi = float(lo_hi[0]), float(lo_hi[1])
    return lo if hi <= lo else float(math.exp(rng.uniform(math.log(lo), math.log(hi))))


def check_config(cfg: Mapping[str, Any], sample_rate: int) -> None:
    """Errors that name the key, before any synthesis."""
    nyq = sample_rate / 2
    for key in ("eq_freq_hz", "highpass_hz", "lowpass_hz", "rt60_s", "snr_db", "eq_q", "drr_db"):
        lo, hi = cfg[key]
        if lo > hi:
            raise ValueError(f"corpus.demo.channel.{key}: the range [{lo}, {hi}] is reversed")
    for key in ("eq_freq_hz", "highpass_hz", "lowpass_hz"):
        if not 0 < cfg[key][0] <= cfg[key][1] < nyq:
            raise ValueError(f"corpus.demo.channel.{key}: {cfg[key]} must lie in (0, {nyq:g}) Hz")
    if cfg["highpass_hz"][1] >= cfg["lowpass_hz"][0]:
        raise ValueError(f"corpus.demo.channel: highpass_hz {cfg['highpass_hz']} must end below lowpass_hz "
                         f"{cfg['lowpass_hz']}")
    if cfg["rt60_s"][0] <= 0 or cfg["eq_q"][0] <= 0:
        raise ValueError("corpus.demo.channel: rt60_s and eq_q must be positive")


def draw_channel(rng: np.random.Generator, cfg: Mapping[str, Any]) -> dict:
    """One channel's parameters, drawn in a fixed order from `rng`."""
    n = int(cfg["eq_bands"])
    freqs = [_log_uniform(rng, cfg["eq_freq_hz"]) for _ in range(n)]
    gains = [_uniform(rng, (-cfg["eq_gain_db"], cfg["eq_gain_db"])) for _ in range(n)]
    qs = [_uniform(rng, cfg["eq_q"]) for _ in range(n)]
    hp = _log_uniform(rng, cfg["highpass_hz"])
    lp = _log_uniform(rng, cfg["lowpass_hz"])
    reverb = bool(rng.uniform() < float(cfg["reverb_fraction"]))
    rt60 = _uniform(rng, cfg["rt60_s"])
    drr = _uniform(rng, cfg["drr_db"])
    snr = _uniform(rng, cfg["snr_db"])
    return {"eq_freqs_hz": freqs, "eq_gains_db": gains, "eq_qs": qs, "highpass_hz": hp, "lowpass_hz": lp,
            "rt60_s": rt60 if reverb else 0.0, "drr_db": drr if reverb else None, "noise": str(cfg["noise"]),
            "snr_db": snr, "noise_seed": int(rng.integers(0, 2**63 - 1))}


def peaking_sos(freq: float, gain_db: float, q: float, sample_rate: int) -> np.ndarray:
    """RBJ's peaking-EQ biquad as one second-order section (b0 b1 b2 1 a1 a2)."""
    a = 10.0 ** (gain_db / 40.0)
    w0 = 2 * math.pi * freq / sample_rate
    alpha = math.sin(w0) / (2 * q)
    b = np.array([1 + alpha * a, -2 * math.cos(w0), 1 - alpha * a])
    den = np.array([1 + alpha / a, -2 * math.cos(w0), 1 - alpha / a])
    return np.concatenate([b / den[0], den / den[0]])[None, :]


def room_impulse_response(rt60: float, drr_db: float, sample_rate: int, rng: np.random.Generator) -> np.ndarray:
    """A direct path, then exponentially decaying noise (60 dB down after rt60 s) at the given
    direct-to-reverberant energy ratio."""
    n = max(2, int(round(rt60 * sample_rate)))
    t = np.arange(1, n) / sample_rate
    tail = rng.standard_normal(n - 1) * np.exp(-3.0 * math.log(10.0) * t / rt60)  # amplitude -60 dB at rt60
    tail *= math.sqrt(10.0 ** (-drr_db / 10.0) / max(float(np.sum(tail ** 2)), 1e-12))
    return np.concatenate([[1.0], tail])


def coloured_noise(n: int, colour: str, rng: np.random.Generator) -> np.ndarray:
    """Unit-RMS noise with a power spectrum of 1 (white), 1/f (pink) or 1/f^2 (brown)."""
    exponent = {"white": 0.0, "pink": 1.0, "brown": 2.0}[colour]
    spec = np.fft.rfft(rng.standard_normal(n))
    f = np.fft.rfftfreq(n)
    f[0] = f[1] if n > 1 else 1.0
    spec *= f ** (-exponent / 2)
    x = np.fft.irfft(spec, n)
    x -= x.mean()
    return x / max(float(np.sqrt(np.mean(x ** 2))), 1e-12)


def active_rms(x: np.ndarray, frame: int = 320) -> float:
    """RMS over the frames within 40 dB of the loudest (speech, not the silences around it)."""
    n = len(x) // frame
    if n == 0:
        return float(np.sqrt(np.mean(x ** 2))) if len(x) else 0.0
    e = (x[: n * frame].reshape(n, frame) ** 2).mean(axis=1)
    return float(np.sqrt(e[e >= e.max() * 1e-4].mean()))


def apply_channel(x: np.ndarray, params: Mapping[str, Any], sample_rate: int) -> np.ndarray:
    """`x` (float, any scale) through the channel `params`; same length, same active RMS."""
    x = np.asarray(x, dtype=np.float64)
    level = active_rms(x)
    y = x
    for f, g, q in zip(params["eq_freqs_hz"], params["eq_gains_db"], params["eq_qs"]):
        y = sosfilt(peaking_sos(f, g, q, sample_rate), y)
    y = sosfilt(butter(4, params["highpass_hz"], btype="highpass", fs=sample_rate, output="sos"), y)
    y = sosfilt(butter(4, params["lowpass_hz"], btype="lowpass", fs=sample_rate, output="sos"), y)
    rng = np.random.default_rng(params["noise_seed"])
    if params["rt60_s"] > 0:
        y = fftconvolve(y, room_impulse_response(params["rt60_s"], params["drr_db"], sample_rate, rng))[: len(x)]
    speech = active_rms(y)
    noise = coloured_noise(len(y), params["noise"], rng) * speech * 10.0 ** (-params["snr_db"] / 20.0)
    y = y + noise
    out = active_rms(y)
    return y * (level / out) if out > 0 else y


def format_row(params: Mapping[str, Any]) -> list[str]:
    """The channels.tsv fields of one utterance (lists comma-separated), in CHANNEL_COLUMNS order."""
    def join(v, nd):
        return ",".join(f"{float(a):.{nd}f}" for a in v)

    return [join(params["eq_freqs_hz"], 1), join(params["eq_gains_db"], 2), join(params["eq_qs"], 3),
            f"{params['highpass_hz']:.1f}", f"{params['lowpass_hz']:.1f}", f"{params['rt60_s']:.3f}",
            "" if params["drr_db"] is None else f"{params['drr_db']:.2f}", params["noise"], f"{params['snr_db']:.2f}"]
