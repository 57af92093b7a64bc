"""Audio quality control: decode every manifest entry once and drop the ones no stage can use.

Each file is decoded once with soundfile, downmixed to mono and resampled to `target_sr`
(`speaker_neurons.audio.load_audio`, the same path every later stage takes). A file is rejected,
with a reason written to `qc.tsv`, when it is

- `missing`     : the path does not exist;
- `unreadable`  : libsndfile cannot decode it (not audio, unknown format, a broken stream);
- `truncated`   : the container declares more audio than the file holds (a WAV whose data chunk
                  runs past the end of the file; any format whose header counts more frames than
                  decode). libsndfile silently returns the part present; `keep_truncated=True`
                  accepts that part (with a warning) instead of rejecting the file;
- `empty`       : it holds 0 samples;
- `non_finite`  : it holds NaN or infinite samples (float files);
- `too_short`   : shorter than `min_duration` seconds (measured on the resampled mono signal);
- `silent`      : digital silence: the peak |x| of the resampled mono signal is below
                  `silence_peak` (qc.silence_peak, 1e-6 = about -120 dBFS by default). That is
                  below one 16-bit LSB (3.05e-5), so an integer PCM file is rejected only when
                  every sample is exactly zero; float files with a vanishing peak are caught as well.

`qc.tsv` has the columns `utt_id path reason` and always a header. Accepted rows keep their order
and get `duration` (resampled length / target_sr, 3 decimals) and `sample_rate` (the file's native
rate) from the decode. When the rejected fraction exceeds `max_bad_fraction`, the report is still
written and `QCError` names it.
"""

from __future__ import annotations

import logging
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pandas as pd

from speaker_neurons.audio import AudioError, load_audio
from speaker_neurons.data.manifest import ManifestError, check_unique_ids

log = logging.getLogger("speaker_neurons.qc")

REPORT_COLUMNS = ("utt_id", "path", "reason")

__all__ = ["QCError", "REPORT_COLUMNS", "check_file", "qc_manifest", "run_qc"]


class QCError(RuntimeError):
    """Too many files failed audio QC (or there was nothing to check)."""


def _riff_data(path: str | os.PathLike) -> tuple[int, int, int] | None:
    """(declared data bytes, bytes present after the data chunk's header, block align) of a RIFF/WAVE
    file, None for anything else or a header too broken to say (libsndfile then decides)."""
    import struct

    size = os.path.getsize(path)
    with open(path, "rb") as f:
        head = f.read(12)
        if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
            return None
        align = None
        while True:
            ck = f.read(8)
            if len(ck) < 8:
                return None
            cid, n = ck[:4], struct.unpack("<I", ck[4:])[0]
            if cid == b"fmt ":
                fmt = f.read(n)
                if len(fmt) < 14:
                    return None
                align = struct.unpack("<H", fmt[12:14])[0]
                if n % 2:
                    f.read(1)
            elif cid == b"data":
                return n, size - f.tell(), align or 1
            else:
                f.seek(n + (n % 2), 1)


def container_problem(path: str | os.PathLike, decoded_frames: int | None = None) -> str | None:
    """A container-level inconsistency, in words, or None: the header declares more audio than the
    file holds. `decoded_frames`: frames at the native rate that decoding gave (other formats)."""
    import soundfile as sf

    riff = _riff_data(path)
    if riff is not None:
        declared, present, align = riff
        # 0 and 0xFFFFFFFF mark a stream written before its length was known: not a claim to check
        if declared not in (0, 0xFFFFFFFF) and declared > present:
            sr = sf.info(str(path)).samplerate
            return (f"truncated: the WAV header declares {declared // align / sr:.3f} s of audio, the file holds "
                    f"{present // align / sr:.3f} s")
        return None
    if decoded_frames is not None:
        info = sf.info(str(path))
        if info.frames > decoded_frames > 0 and info.frames < 2**62:
            return (f"truncated: the {info.format} header declares {info.frames / info.samplerate:.3f} s, "
                    f"{decoded_frames / info.samplerate:.3f} s decode")
    return None


def check_file(path: str | os.PathLike, min_duration: float, target_sr: int, keep_truncated: bool,
               silence_peak: float):
    """Decode one file once. Returns (None, duration_s, native_sr) if usable, else (reason, None, None)."""
    try:
        x, sr = load_audio(path, target_sr)
    except AudioError as e:
        return f"{e.code}: {e.reason}", None, None
    native = int(round(x.shape[0] * sr / float(target_sr)))
    problem = container_problem(path, native)
    if problem:
        if not keep_truncated:
            return problem, None, None
        log.warning("%s: %s; keeping the part present (qc.keep_truncated)", path, problem)
    duration = x.shape[0] / float(target_sr)
    if duration < min_duration:
        return f"too_short: {duration:.3f} s < min_duration {min_duration:g} s", None, None
    peak = float(np.max(np.abs(x))) if x.size else 0.0
    if peak < silence_peak:
        return f"silent: digital silence (peak |x| = {peak:.3g} < {silence_peak:g})", None, None
    return None, duration, sr


def _clean(field: object) -> str:
    return " ".join(str(field).split("\t")).replace("\r", " ").replace("\n", " ")


def _write_report(path: Path, rows: list[tuple[str, str, str]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8", newline="") as f:
        f.write("\t".join(REPORT_COLUMNS) + "\n")
        for r in rows:
            f.write("\t".join(_clean(v) for v in r) + "\n")
    os.replace(tmp, path)


def run_qc(
    manifest_df: pd.DataFrame,
    report_path: str | os.PathLike,
    *,
    min_duration: float,
    max_bad_fraction: float,
    target_sr: int,
    keep_truncated: bool,
    silence_peak: float,
    workers: int | None = None,
) -> pd.DataFrame:
    """Check every file of `manifest_df`; write `report_path` (qc.tsv); return the accepted rows.

    Raises ManifestError (before decoding anything) for missing `utt_id`/`path` columns or
    duplicate utterance ids (naming both paths), and QCError naming the report and the counts when
    more than `max_bad_fraction` of the files were rejected or the manifest is empty.
    `workers`: decoding threads (default: min(2, CPUs)); soundfile and torch release the GIL.
    """
    report = Path(report_path)
    for c in ("utt_id", "path"):
        if c not in manifest_df.columns:
            raise ManifestError(f"manifest has no {c!r} column (columns: {list(manifest_df.columns)})")
    if not 0.0 <= max_bad_fraction <= 1.0:
        raise ValueError(f"max_bad_fraction must be within [0, 1], got {max_bad_fraction}")
    df = manifest_df.reset_index(drop=True)
    check_unique_ids(df, None, line_offset=0)
    n = len(df)
    if n == 0:
        _write_report(report, [])
        raise QCError(f"audio QC got an empty manifest: nothing to check (empty report written to {report})")

    paths = [str(p) for p in df["path"]]
    if workers is None:
        workers = min(2, os.cpu_count() or 1)
    workers = max(1, int(workers))

    from tqdm import tqdm

    def job(p: str):
        return check_file(p, min_duration, target_sr, keep_truncated, silence_peak)

    bar = tqdm(total=n, desc="audio QC", unit="file", disable=None, mininterval=2.0)
    results = []
    try:
        if workers == 1:
            for p in paths:
                results.append(job(p))
                bar.update()
        else:
            with ThreadPoolExecutor(max_workers=workers) as ex:
                for r in ex.map(job, paths):
                    results.append(r)
                    bar.update()
    finally:
        bar.close()

    rejected: list[tuple[str, str, str]] = []
    keep = np.zeros(n, dtype=bool)
    durations = np.full(n, np.nan)
    rates: list[object] = [pd.NA] * n
    reason_counts: dict[str, int] = {}
    for i, (reason, dur, sr) in enumerate(results):
        if reason is None:
            keep[i] = True
            durations[i] = round(dur, 3)
            rates[i] = int(sr)
        else:
            rejected.append((str(df["utt_id"].iat[i]), paths[i], reason))
            code = reason.split(":", 1)[0]
            reason_counts[code] = reason_counts.get(code, 0) + 1
    _write_report(report, rejected)

    n_bad = len(rejected)
    frac = n_bad / n
    summary = ", ".join(f"{k} {v}" for k, v in sorted(reason_counts.items()))
    if n_bad:
        log.warning("audio QC rejected %d of %d files (%.1f%%): %s; see %s", n_bad, n, 100 * frac, summary, report)
        for utt, p, reason in rejected[:5]:
            log.warning("  rejected %s (%s): %s", utt, p, reason)
    else:
        log.info("audio QC accepted all %d files; empty report %s", n, report)
    if frac > max_bad_fraction:
        raise QCError(
            f"audio QC rejected {n_bad} of {n} files ({100 * frac:.1f}%), more than max_bad_fraction="
            f"{max_bad_fraction:g} ({summary}); see {report} for each file and reason, fix or remove "
            f"them, or raise qc.max_bad_fraction"
        )

    out = df.loc[keep].copy()
    out["duration"] = durations[keep]
    out["sample_rate"] = pd.array([r for r, k in zip(rates, keep) if k], dtype="Int64")
    return out.reset_index(drop=True)


def qc_manifest(manifest_path: str | os.PathLike, report_path: str | os.PathLike, out_manifest: str | os.PathLike,
                qc: Mapping[str, Any], workers: int | None) -> dict:
    """`run_qc` on a manifest file with the config's `qc` section; writes the accepted rows to `out_manifest`."""
    from speaker_neurons.data.manifest import read_manifest, write_manifest

    accepted = run_qc(read_manifest(manifest_path), report_path, min_duration=qc["min_duration"],
                      max_bad_fraction=qc["max_bad_fraction"], target_sr=qc["sample_rate"], workers=workers,
                      keep_truncated=qc["keep_truncated"], silence_peak=qc["silence_peak"])
    write_manifest(accepted, out_manifest)
    return {"accepted": len(accepted)}
