"""The one manifest schema shared by every corpus, its reader/writer and the helpers of the corpus recipes
(each corpus layout is a recipe: `speaker_neurons.data.recipes`).

A manifest is a TSV with a header and exactly these columns, in this order::

    utt_id  path  speaker  gender  split  duration  sample_rate

- `utt_id` non-empty, unique, no whitespace; `path` absolute; `speaker` may be empty;
- `gender` in {F, M, ""} ("" = unknown); `split` in {train, dev, test, ""};
- `duration` seconds (3 decimals) and `sample_rate` the file's native rate (int); both may be empty
  when the builder could not read the file's header, so that audio QC rejects it with a reason.

In memory (`read_manifest`), text columns are `str`, `duration` is float (NaN when empty) and
`sample_rate` is pandas' nullable `Int64`.
"""

from __future__ import annotations

import csv
import logging
import math
import os
import re
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

log = logging.getLogger(__name__)

COLUMNS: tuple[str, ...] = ("utt_id", "path", "speaker", "gender", "split", "duration", "sample_rate")
GENDERS = frozenset({"F", "M", ""})
SPLITS = frozenset({"train", "dev", "test", ""})
_TEXT_COLUMNS = ("utt_id", "path", "speaker", "gender", "split")

__all__ = [
    "COLUMNS",
    "GENDERS",
    "SPLITS",
    "ManifestError",
    "validate_manifest",
    "check_unique_ids",
    "read_manifest",
    "write_manifest",
    "normalize_gender",
    "assign_splits",
    "write_transcripts",
    "check_distinct_ids",
]


class ManifestError(ValueError):
    """A manifest (or a corpus file a builder reads) is wrong. Names the file and the row/line."""

    def __init__(self, message: str, path: str | os.PathLike | None = None, row: int | None = None):
        self.path = None if path is None else str(path)
        self.row = row
        self.detail = message
        where = ""
        if self.path is not None:
            where = self.path + (f" line {row}" if row is not None else "") + ": "
        elif row is not None:
            where = f"row {row}: "
        super().__init__(where + message)

    def __reduce__(self):
        return (type(self), (self.detail, self.path, self.row))


# ----------------------------------------------------------------------------------- validation


def normalize_gender(value: object) -> str | None:
    """F/M/female/male/w/woman/man (any case) -> "F"/"M"; empty/unknown markers -> ""; else None."""
    v = "" if value is None or (isinstance(value, float) and math.isnan(value)) else str(value).strip().lower()
    if v in ("f", "female", "w", "woman"):
        return "F"
    if v in ("m", "male", "man"):
        return "M"
    if v in ("", "u", "unknown", "na", "n/a", "?", "-"):
        return ""
    return None


def check_unique_ids(df: pd.DataFrame, source: str | os.PathLike | None = None, line_offset: int = 0) -> None:
    """Raise ManifestError naming both paths (and rows) of the first duplicated utt_id, with the count."""
    ids = df["utt_id"].astype(str)
    dup = ids.duplicated(keep=False)
    if not dup.any():
        return
    first_id = ids[dup].iloc[0]
    positions = np.flatnonzero((ids == first_id).to_numpy())
    i, j = int(positions[0]), int(positions[1])
    paths = df["path"].astype(str).to_numpy() if "path" in df.columns else ["?"] * len(df)
    n_ids = int(ids[dup].nunique())
    raise ManifestError(
        f"duplicate utterance id {first_id!r} at rows {i + line_offset} and {j + line_offset}: "
        f"{paths[i]} and {paths[j]} ({n_ids} duplicated id(s) in all; utt_id must be unique)",
        source,
    )


def validate_manifest(
    df: pd.DataFrame, source: str | os.PathLike | None = None, line_offset: int = 2
) -> pd.DataFrame:
    """Check `df` against the schema and return a normalised copy (column order, dtypes).

    Errors name `source` and the row as a line number of the TSV (`line_offset` = line of row 0).
    """
    src = source if source is not None else "<manifest DataFrame>"
    missing = [c for c in COLUMNS if c not in df.columns]
    if missing:
        raise ManifestError(f"missing column(s) {missing}; a manifest has columns {list(COLUMNS)}", src)
    out = df.loc[:, list(COLUMNS)].copy().reset_index(drop=True)
    for c in _TEXT_COLUMNS:
        out[c] = out[c].map(lambda v: "" if v is None or (isinstance(v, float) and math.isnan(v)) else str(v))

    durations = np.full(len(out), np.nan)
    rates: list[object] = [pd.NA] * len(out)
    for i, row in enumerate(out.itertuples(index=False)):
        line = i + line_offset
        for c in _TEXT_COLUMNS:
            v = getattr(row, c)
            if "\t" in v or "\n" in v or "\r" in v:
                raise ManifestError(f"{c} {v!r} contains a tab or newline, which a TSV cannot hold", src, line)
        if not row.utt_id or re.search(r"\s", row.utt_id):
            raise ManifestError(f"utt_id {row.utt_id!r} must be non-empty and contain no whitespace", src, line)
        if not row.path:
            raise ManifestError(f"utterance {row.utt_id!r} has an empty path", src, line)
        if not os.path.isabs(row.path):
            raise ManifestError(
                f"path {row.path!r} of {row.utt_id!r} is not absolute (builders write absolute paths)", src, line
            )
        if row.gender not in GENDERS:
            raise ManifestError(f"gender {row.gender!r} of {row.utt_id!r} not in F, M or empty", src, line)
        if row.split not in SPLITS:
            raise ManifestError(f"split {row.split!r} of {row.utt_id!r} not in train, dev, test or empty", src, line)
        d = row.duration
        if not _is_empty(d):
            try:
                d = float(d)
            except (TypeError, ValueError):
                raise ManifestError(f"duration {d!r} of {row.utt_id!r} is not a number", src, line) from None
            if not math.isfinite(d) or d < 0:
                raise ManifestError(f"duration {d!r} of {row.utt_id!r} must be a finite number >= 0", src, line)
            durations[i] = d
        r = row.sample_rate
        if not _is_empty(r):
            try:
                rf = float(r)
            except (TypeError, ValueError):
                raise ManifestError(f"sample_rate {r!r} of {row.utt_id!r} is not a number", src, line) from None
            if not math.isfinite(rf) or rf <= 0 or rf != int(rf):
                raise ManifestError(f"sample_rate {r!r} of {row.utt_id!r} must be a positive integer", src, line)
            rates[i] = int(rf)
    out["duration"] = durations
    out["sample_rate"] = pd.array(rates, dtype="Int64")
    check_unique_ids(out, src, line_offset)
    return out


def _is_empty(v: object) -> bool:
    if v is None or v is pd.NA:
        return True
    if isinstance(v, float) and math.isnan(v):
        return True
    return isinstance(v, str) and v.strip() == ""


def _read_tsv(path: Path) -> pd.DataFrame:
    """A header TSV as all-string columns; no quoting, no NA guessing."""
    try:
        return pd.read_csv(
            path, sep="\t", dtype=str, keep_default_na=False, na_filter=False, quoting=csv.QUOTE_NONE, comment=None
        )
    except pd.errors.EmptyDataError:
        raise ManifestError("file is empty (a header line is required)", path) from None
    except pd.errors.ParserError as e:
        raise ManifestError(f"not a valid TSV ({e})", path) from None


def read_manifest(path: str | os.PathLike) -> pd.DataFrame:
    """Read and validate a manifest TSV. Raises FileNotFoundError / ManifestError (file and line)."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"manifest not found: {p}")
    df = _read_tsv(p)
    header = list(df.columns)
    if header != list(COLUMNS):
        raise ManifestError(f"header {header} is not the manifest header {list(COLUMNS)}", p, 1)
    return validate_manifest(df, p, line_offset=2)


def _format_duration(v: float) -> str:
    return "" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{float(v):.3f}"


def write_manifest(df: pd.DataFrame, path: str | os.PathLike) -> Path:
    """Validate `df` and write it as a manifest TSV (atomically: temp file + rename). Returns the path."""
    p = Path(path)
    out = validate_manifest(df, "<manifest being written to " + str(p) + ">", line_offset=0)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(p.name + ".tmp")
    with open(tmp, "w", encoding="utf-8", newline="") as f:
        f.write("\t".join(COLUMNS) + "\n")
        for row in out.itertuples(index=False):
            rate = "" if row.sample_rate is pd.NA else str(int(row.sample_rate))
            fields = [row.utt_id, row.path, row.speaker, row.gender, row.split, _format_duration(row.duration), rate]
            f.write("\t".join(fields) + "\n")
    os.replace(tmp, p)
    return p


# ------------------------------------------------------------------------------------- builders


def _require_dir(path: str | os.PathLike, what: str) -> Path:
    p = Path(path).expanduser()
    if not p.exists():
        raise FileNotFoundError(f"{what} not found: {p}")
    if not p.is_dir():
        raise NotADirectoryError(f"{what} is not a directory: {p}")
    return p.resolve()


def _require_file(path: str | os.PathLike, what: str) -> Path:
    p = Path(path).expanduser()
    if not p.exists():
        raise FileNotFoundError(f"{what} not found: {p}")
    if not p.is_file():
        raise ManifestError(f"{what} is not a file", p)
    return p.resolve()


def _audio_header(path: Path) -> tuple[float, object]:
    """(duration s, native rate) from the file header; (nan, NA) when soundfile cannot read it."""
    import soundfile as sf

    try:
        info = sf.info(str(path))
    except Exception:  # noqa: BLE001 - any unreadable file is QC's business, not the builder's
        return float("nan"), pd.NA
    if info.samplerate <= 0:
        return float("nan"), pd.NA
    return round(info.frames / info.samplerate, 3), int(info.samplerate)


def _assemble(rows: list[dict], what: str) -> pd.DataFrame:
    """Rows (without duration/sample_rate) -> manifest DataFrame with header info filled in."""
    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover
        tqdm = None
    paths = [Path(r["path"]) for r in rows]
    it: Iterable[Path] = paths
    if tqdm is not None:
        it = tqdm(paths, desc=f"{what}: reading headers", unit="file", disable=None, mininterval=2.0)
    info = [_audio_header(p) for p in it]
    df = pd.DataFrame(rows, columns=list(_TEXT_COLUMNS))
    df["duration"] = [d for d, _ in info]
    df["sample_rate"] = pd.array([r for _, r in info], dtype="Int64")
    n_bad = int(df["duration"].isna().sum())
    if n_bad:
        examples = ", ".join(df.loc[df["duration"].isna(), "path"].head(3))
        log.warning(
            "%s: %d of %d files have no readable audio header (left without duration; audio QC will "
            "reject them), e.g. %s",
            what, n_bad, len(df), examples,
        )
    out = validate_manifest(df, f"<{what} manifest>", line_offset=0)
    log.info("%s: %d utterances, %d speakers", what, len(out), out["speaker"].nunique())
    return out


def assign_splits(df: pd.DataFrame, fractions: Sequence[float], seed: int) -> pd.DataFrame:
    """A seeded per-speaker split by utterance where the corpus gives none: each speaker's utterances
    without a split (ordered by utt_id, then permuted by a generator of `seed` and the speaker) go
    round(fraction x n) to train / dev / test (largest remainders; every part that asks for a share
    gets an utterance while the speaker has three). Rows with a split or without a speaker keep theirs.
    Returns a copy; the split is then part of the manifest, like a corpus' own."""
    import hashlib

    fr = np.asarray([float(f) for f in fractions], dtype=np.float64)
    if len(fr) != 3 or (fr < 0).any() or fr.sum() <= 0:
        raise ValueError(f"corpus.split.fractions must be three non-negative shares (train, dev, test), got {list(fractions)}")
    fr = fr / fr.sum()
    out = df.copy()
    todo = (out["split"].fillna("").astype(str) == "") & (out["speaker"].fillna("").astype(str) != "")
    names = np.array(["train", "dev", "test"])
    for spk, idx in out[todo].sort_values("utt_id").groupby("speaker", sort=True).groups.items():
        idx = out.loc[idx].sort_values("utt_id").index.to_numpy()
        n = len(idx)
        want = fr * n
        counts = np.floor(want).astype(int)
        for i in np.argsort(-(want - counts), kind="stable")[: n - counts.sum()]:
            counts[i] += 1
        for i in range(3):
            if fr[i] > 0 and counts[i] == 0 and n >= 3:
                j = int(np.argmax(counts))
                counts[j] -= 1
                counts[i] += 1
        key = int.from_bytes(hashlib.sha256(f"{seed}:{spk}".encode()).digest()[:8], "little")
        order = np.random.default_rng(key).permutation(n)
        labels = np.repeat(names, counts)
        out.loc[idx[order], "split"] = labels
    return out


# ------------------------------------------------------------------------------------------- transcripts
def write_transcripts(df: pd.DataFrame, path: str | os.PathLike) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    df[["utt_id", "text"]].to_csv(path, sep="\t", index=False, quoting=csv.QUOTE_NONE, escapechar="\\")
    return path


def check_distinct_ids(manifests: Mapping[str, Any], limit: int = 5) -> None:
    """Raise ValueError when two corpora of a run share an utterance id: tables keyed by utterance id
    (i-vector clusters, segments, per-utterance results) could not tell their utterances apart.
    `manifests`: {corpus name: manifest DataFrame (or anything with an `utt_id` column)}; the error
    names both corpora, how many ids they share and up to `limit` of them."""
    names = list(manifests)
    ids = {n: set(map(str, manifests[n]["utt_id"])) for n in names}
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            shared = sorted(ids[a] & ids[b])
            if shared:
                raise ValueError(
                    f"corpora {a!r} and {b!r} share {len(shared)} utterance id(s), e.g. {', '.join(shared[:limit])}; "
                    "a table keyed by utterance id cannot tell their utterances apart (their i-vector clusters would "
                    "be looked up for the wrong audio). Give the corpora distinct ids (a tsv corpus: its utt_id "
                    "column; two demo corpora: different names).")
