"""The one manifest schema shared by every corpus, its reader/writer, and the corpus builders.

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
from typing import Any, Callable, Iterable, Mapping, Sequence

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
    "demo_manifest",
    "librispeech_manifest",
    "voxceleb1_manifest",
    "tsv_manifest",
    "build_manifest",
    "BUILDERS",
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


def demo_manifest(corpus_dir: str | os.PathLike) -> pd.DataFrame:
    """Manifest of the synthesized demo corpus: `utterances.tsv` (utt_id speaker path split duration
    text; path relative to the corpus dir) joined with `speakers.tsv` (speaker gender ...).

    A speaker missing from speakers.tsv or an invalid gender/split is a corpus bug: ManifestError.
    """
    root = _require_dir(corpus_dir, "demo corpus directory")
    utt_file = _require_file(root / "utterances.tsv", "demo corpus utterance list")
    spk_file = _require_file(root / "speakers.tsv", "demo corpus speaker list")
    spk = _read_tsv(spk_file)
    for c in ("speaker", "gender"):
        if c not in spk.columns:
            raise ManifestError(f"missing column {c!r} (columns: {list(spk.columns)})", spk_file, 1)
    genders: dict[str, str] = {}
    for i, (s, g) in enumerate(zip(spk["speaker"], spk["gender"])):
        ng = normalize_gender(g)
        if ng is None:
            raise ManifestError(f"gender {g!r} of speaker {s!r} is not F or M", spk_file, i + 2)
        if s in genders:
            raise ManifestError(f"speaker {s!r} listed twice", spk_file, i + 2)
        genders[s] = ng
    utt = _read_tsv(utt_file)
    for c in ("utt_id", "speaker", "path"):
        if c not in utt.columns:
            raise ManifestError(f"missing column {c!r} (columns: {list(utt.columns)})", utt_file, 1)
    if len(utt) == 0:
        raise ManifestError("lists no utterances", utt_file)
    has_split = "split" in utt.columns
    rows = []
    for i, r in enumerate(utt.itertuples(index=False)):
        line = i + 2
        if r.speaker not in genders:
            raise ManifestError(f"speaker {r.speaker!r} of {r.utt_id!r} is not in {spk_file.name}", utt_file, line)
        split = r.split.strip() if has_split else ""
        if split not in SPLITS:
            raise ManifestError(f"split {split!r} of {r.utt_id!r} not in train, dev, test or empty", utt_file, line)
        if not r.path:
            raise ManifestError(f"utterance {r.utt_id!r} has an empty path", utt_file, line)
        rows.append(
            dict(utt_id=r.utt_id, path=str(root / r.path), speaker=r.speaker, gender=genders[r.speaker], split=split)
        )
    return _assemble(rows, f"demo corpus {root}")


def _parse_librispeech_speakers(path: Path) -> dict[str, str]:
    """SPEAKERS.TXT: `ID | SEX | SUBSET | MINUTES | NAME` lines, `;` comments. NAME may hold `|`."""
    out: dict[str, str] = {}
    with open(path, encoding="utf-8", errors="replace") as f:
        for n, line in enumerate(f, 1):
            s = line.strip()
            if not s or s.startswith(";"):
                continue
            parts = [p.strip() for p in s.split("|", 4)]
            if len(parts) < 2 or not parts[0]:
                raise ManifestError(f"expected `ID | SEX | SUBSET | MINUTES | NAME`, got {s!r}", path, n)
            g = normalize_gender(parts[1])
            if g is None:
                raise ManifestError(f"sex {parts[1]!r} of speaker {parts[0]!r} is not F or M", path, n)
            out[parts[0]] = g
    if not out:
        raise ManifestError("holds no speaker lines (`ID | SEX | SUBSET | MINUTES | NAME`)", path)
    return out


_LS_NAME = re.compile(r"^(\d+)-(\d+)-(\d+)$")


def librispeech_manifest(
    split_dir: str | os.PathLike | None = None, speakers_txt: str | os.PathLike | None = None,
    split_dirs: dict[str, str] | None = None,
) -> pd.DataFrame:
    """Manifest of one LibriSpeech split folder (`<split>/<speaker>/<chapter>/<spk>-<chap>-<utt>.flac`),
    or of one folder per split (`split_dirs`: {train, dev, test} -> folder, e.g. train-clean-100,
    dev-clean, test-clean as SUPERB PR uses them; each row's `split` is its folder's).

    Genders come from SPEAKERS.TXT (empty/None: `<folder>/../SPEAKERS.TXT`, where the official
    archives put it); a speaker not listed there gets gender "" and is counted in a warning.
    With `split_dir`, `split` is left empty (a LibriSpeech folder is one subset, not a train/dev/test split).
    """
    dirs = {k: v for k, v in (split_dirs or {}).items() if v}
    if dirs:
        if split_dir:
            raise ValueError("give split_dir or split_dirs, not both")
        parts = []
        for split in ("train", "dev", "test"):
            if split in dirs:
                part = librispeech_manifest(dirs[split], speakers_txt)
                part["split"] = split
                parts.append(part)
        df = pd.concat(parts, ignore_index=True)
        check_unique_ids(df, "LibriSpeech split_dirs")
        return df
    if not split_dir:
        raise ValueError("LibriSpeech needs split_dir (one subset folder) or split_dirs (train/dev/test folders)")
    root = _require_dir(split_dir, "LibriSpeech split directory")
    if speakers_txt is None or str(speakers_txt).strip() == "":
        speakers_txt = root.parent / "SPEAKERS.TXT"
    spk_file = _require_file(speakers_txt, "LibriSpeech SPEAKERS.TXT")
    genders = _parse_librispeech_speakers(spk_file)
    files = sorted(root.glob("*/*/*.flac"))
    if not files:
        raise ManifestError(
            "no <speaker>/<chapter>/*.flac files found; pass the split folder itself, e.g. .../LibriSpeech/dev-clean",
            root,
        )
    rows = []
    unknown: dict[str, int] = {}
    for fp in files:
        m = _LS_NAME.match(fp.stem)
        spk, chap = fp.parent.parent.name, fp.parent.name
        if not m or m.group(1) != spk or m.group(2) != chap:
            raise ManifestError(
                f"file name does not follow <speaker>-<chapter>-<utt>.flac inside {spk}/{chap}/", fp
            )
        g = genders.get(spk)
        if g is None:
            unknown[spk] = unknown.get(spk, 0) + 1
            g = ""
        rows.append(dict(utt_id=fp.stem, path=str(fp), speaker=spk, gender=g, split=""))
    if unknown:
        log.warning(
            "%d speaker(s) (%d utterances) not in %s; their gender is left empty: %s",
            len(unknown), sum(unknown.values()), spk_file, ", ".join(sorted(unknown)[:10]),
        )
    return _assemble(rows, f"LibriSpeech {root.name}")


_VOX_SPLITS = {"1": "train", "2": "dev", "3": "test"}


def voxceleb1_manifest(
    root: str | os.PathLike, iden_split: str | os.PathLike, meta_csv: str | os.PathLike, skip_missing: bool
) -> pd.DataFrame:
    """Manifest of VoxCeleb1, in either layout: `<root>/wav/<id1xxxx>/<youtube-id>/<nnnnn>.wav`, or each
    released archive unpacked into its own folder, `<root>/dev/wav/...` and `<root>/test/wav/...` (as
    s3prl keeps them); a path of iden_split.txt is resolved in whichever holds it.

    Rows are the wav files found on disk; `split` comes from iden_split.txt (`1|2|3 <id>/<yt>/<n>.wav`
    -> train/dev/test, "" for files it does not list); gender from vox1_meta.csv (TAB separated,
    header `VoxCeleb1 ID, VGGFace1 ID, Gender, Nationality, Set`). A file listed in iden_split.txt but
    on no disk is an error naming the first few (`skip_missing`: left out, with a count in the log).
    Unlisted files and speakers without metadata are counted in warnings. utt_id is `<id>-<yt>-<n>`.
    """
    root_dir = _require_dir(root, "VoxCeleb1 root directory")
    wav_dirs = [d for d in (root_dir / "wav", root_dir / "dev" / "wav", root_dir / "test" / "wav") if d.is_dir()]
    if not wav_dirs:
        raise FileNotFoundError(
            f"VoxCeleb1 wav folder not found under {root_dir}: root must hold wav/<id>/<yt>/<n>.wav, or dev/wav/... "
            "and test/wav/... (each released archive unpacked into its own folder)"
        )
    split_file = _require_file(iden_split, "VoxCeleb1 iden_split.txt")
    meta_file = _require_file(meta_csv, "VoxCeleb1 vox1_meta.csv")

    splits: dict[str, str] = {}
    with open(split_file, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            s = line.strip()
            if not s:
                continue
            parts = s.split()
            if len(parts) != 2 or parts[0] not in _VOX_SPLITS or parts[1].count("/") != 2:
                raise ManifestError(f"expected `<1|2|3> <id>/<youtube-id>/<n>.wav`, got {s!r}", split_file, n)
            rel = parts[1]
            if rel in splits and splits[rel] != _VOX_SPLITS[parts[0]]:
                raise ManifestError(f"{rel} is listed in two splits", split_file, n)
            splits[rel] = _VOX_SPLITS[parts[0]]

    meta = _read_tsv(meta_file)
    meta.columns = [str(c).strip() for c in meta.columns]
    if "VoxCeleb1 ID" not in meta.columns or "Gender" not in meta.columns:
        raise ManifestError(
            f"header {list(meta.columns)} lacks 'VoxCeleb1 ID' / 'Gender' (the file is TAB separated: "
            "VoxCeleb1 ID, VGGFace1 ID, Gender, Nationality, Set)",
            meta_file, 1,
        )
    genders: dict[str, str] = {}
    for i, (sid, g) in enumerate(zip(meta["VoxCeleb1 ID"], meta["Gender"])):
        ng = normalize_gender(g)
        if ng is None:
            raise ManifestError(f"gender {g!r} of {sid.strip()!r} is not m or f", meta_file, i + 2)
        genders[sid.strip()] = ng

    files = sorted(fp for d in wav_dirs for fp in d.glob("*/*/*.wav"))
    if not files:
        raise ManifestError("no <id>/<youtube-id>/<n>.wav files found", wav_dirs[0])
    rows = []
    unlisted = 0
    unknown: dict[str, int] = {}
    seen: dict[str, Path] = {}
    for fp in files:
        spk, yt, n = fp.parent.parent.name, fp.parent.name, fp.stem
        rel = f"{spk}/{yt}/{fp.name}"
        if rel in seen:
            raise ManifestError(f"{rel} is in two folders: {seen[rel]} and {fp}", root_dir)
        seen[rel] = fp
        split = splits.get(rel)
        if split is None:
            unlisted += 1
            split = ""
        g = genders.get(spk)
        if g is None:
            unknown[spk] = unknown.get(spk, 0) + 1
            g = ""
        rows.append(dict(utt_id=f"{spk}-{yt}-{n}", path=str(fp), speaker=spk, gender=g, split=split))
    absent = sorted(set(splits) - set(seen))
    if unlisted:
        log.warning("%d wav file(s) under %s are not in %s; their split is left empty", unlisted,
                    ", ".join(map(str, wav_dirs)), split_file)
    if absent and not skip_missing:
        raise ManifestError(
            f"{len(absent)} file(s) listed here are in none of {', '.join(map(str, wav_dirs))}: "
            f"{', '.join(absent[:5])}{' ...' if len(absent) > 5 else ''}. Complete the download, or set "
            "corpus.voxceleb1.skip_missing: true to leave them out", split_file)
    if absent:
        log.warning("%d utterance(s) listed in %s are not on disk and are left out (corpus.voxceleb1.skip_missing)",
                    len(absent), split_file)
    if unknown:
        log.warning(
            "%d speaker(s) (%d utterances) not in %s; their gender is left empty: %s",
            len(unknown), sum(unknown.values()), meta_file, ", ".join(sorted(unknown)[:10]),
        )
    return _assemble(rows, "VoxCeleb1")


def _derive_utt_ids(paths: list[Path]) -> list[str]:
    """File stems when they are unique; otherwise the path below the common folder of all files,
    without suffix, with separators replaced by '-'. Whitespace becomes '_'."""
    stems = [p.stem for p in paths]
    if len(set(stems)) == len(stems):
        ids = stems
    else:
        common = Path(os.path.commonpath([str(p.parent) for p in paths]))
        ids = ["-".join(p.relative_to(common).with_suffix("").parts) for p in paths]
    return [re.sub(r"\s+", "_", i) for i in ids]


def _tsv_rows(tsv: str | os.PathLike) -> tuple[Path, pd.DataFrame, list[Path], list[str]]:
    """(file, its table, each row's absolute path, each row's utt_id) of a generic TSV, reading no audio."""
    src = _require_file(tsv, "audio list TSV")
    df = _read_tsv(src)
    df.columns = [str(c).strip() for c in df.columns]
    if "path" not in df.columns:
        raise ManifestError(f"header {list(df.columns)} has no 'path' column (required)", src, 1)
    if len(df) == 0:
        raise ManifestError("lists no audio files", src)
    paths: list[Path] = []
    for i, p in enumerate(df["path"]):
        p = p.strip()
        if not p:
            raise ManifestError("empty path", src, i + 2)
        q = Path(p).expanduser()
        paths.append(q if q.is_absolute() else (src.parent / q).resolve())
    ids = [s.strip() for s in df["utt_id"]] if "utt_id" in df.columns else _derive_utt_ids(paths)
    return src, df, paths, ids


def tsv_manifest(tsv: str | os.PathLike) -> pd.DataFrame:
    """Manifest from a generic TSV with a header: `path` required; `speaker`, `gender`, `utt_id`,
    `split` optional (other columns ignored). Relative paths are resolved against the TSV's folder;
    without `utt_id`, ids are derived from the paths (see `_derive_utt_ids`)."""
    src, df, paths, ids = _tsv_rows(tsv)
    extra = [c for c in df.columns if c not in ("path", "speaker", "gender", "utt_id", "split", "text")]
    if extra:
        log.info("%s: ignoring column(s) %s", src, extra)
    rows = []
    for i, p in enumerate(paths):
        line = i + 2
        g = df["gender"].iloc[i] if "gender" in df.columns else ""
        ng = normalize_gender(g)
        if ng is None:
            raise ManifestError(f"gender {g!r} not in F, M (or female/male) or empty", src, line)
        split = df["split"].iloc[i].strip() if "split" in df.columns else ""
        if split not in SPLITS:
            raise ManifestError(f"split {split!r} not in train, dev, test or empty", src, line)
        if not ids[i]:
            raise ManifestError("empty utt_id", src, line)
        spk = df["speaker"].iloc[i].strip() if "speaker" in df.columns else ""
        rows.append(dict(utt_id=ids[i], path=str(p), speaker=spk, gender=ng, split=split))
    check_unique_ids(pd.DataFrame(rows), src, line_offset=2)
    return _assemble(rows, f"TSV {src.name}")


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
def read_transcripts(source: str, **kwargs) -> pd.DataFrame:
    """The corpus' transcripts as `utt_id`, `text` (no rows for a corpus without any, e.g. VoxCeleb1):
    the demo's `utterances.tsv` text column, LibriSpeech's `<spk>-<chap>.trans.txt` files
    (`<utt_id> <TEXT>` lines), a TSV's optional `text` column (keyed like its manifest)."""
    rows: list[tuple[str, str]] = []
    if source == "demo":
        utt = _read_tsv(_require_file(Path(kwargs["corpus_dir"]) / "utterances.tsv", "demo corpus utterance list"))
        if "text" in utt.columns:
            rows = list(zip(utt["utt_id"], utt["text"]))
    elif source == "librispeech":
        dirs = [v for v in kwargs["split_dirs"].values() if v] or [kwargs["split_dir"]]
        for d in dirs:
            for tf in sorted(Path(d).glob("*/*/*.trans.txt")):
                with open(tf, encoding="utf-8") as f:
                    for n, line in enumerate(f, 1):
                        s = line.strip()
                        if not s:
                            continue
                        utt_id, _, text = s.partition(" ")
                        if not text:
                            raise ManifestError(f"expected `<utt_id> <TEXT>`, got {s!r}", tf, n)
                        rows.append((utt_id, text.strip()))
    elif source == "tsv":
        _, df, _, ids = _tsv_rows(kwargs.get("path") or kwargs.get("tsv"))
        if "text" in df.columns:
            rows = list(zip(ids, df["text"].astype(str).str.strip()))
    return pd.DataFrame(rows, columns=["utt_id", "text"])


def write_transcripts(df: pd.DataFrame, path: str | os.PathLike) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    df[["utt_id", "text"]].to_csv(path, sep="\t", index=False, quoting=csv.QUOTE_NONE, escapechar="\\")
    return path


BUILDERS: dict[str, Callable[..., pd.DataFrame]] = {
    "demo": demo_manifest,
    "librispeech": librispeech_manifest,
    "voxceleb1": voxceleb1_manifest,
    "tsv": tsv_manifest,
}


# Config-key aliases accepted by build_manifest (config.yaml's `corpus.tsv.path`).
_ALIASES: dict[str, dict[str, str]] = {"tsv": {"path": "tsv"}}


def build_manifest(source: str, **kwargs) -> pd.DataFrame:
    """Dispatch to a builder: source in {demo, librispeech, voxceleb1, tsv}, kwargs its arguments
    (for `tsv`, `path=` is accepted for `tsv=`)."""
    import inspect

    if source not in BUILDERS:
        raise ValueError(f"unknown corpus source {source!r}; expected one of {sorted(BUILDERS)}")
    fn = BUILDERS[source]
    for alias, name in _ALIASES.get(source, {}).items():
        if alias in kwargs and name not in kwargs:
            kwargs[name] = kwargs.pop(alias)
    sig = inspect.signature(fn).parameters
    params = list(sig)
    unexpected = sorted(set(kwargs) - set(params))
    missing = [p for p in params if p not in kwargs and sig[p].default is inspect.Parameter.empty]
    if unexpected or missing:
        raise TypeError(
            f"corpus source {source!r} takes arguments {params}"
            + (f"; unexpected {unexpected}" if unexpected else "")
            + (f"; missing {missing}" if missing else "")
        )
    return fn(**kwargs)


def make_manifest(corpus: Mapping[str, Any], split: Mapping[str, Any], out_manifest: str | os.PathLike,
                  out_transcripts: str | os.PathLike) -> dict:
    """A corpus' manifest (`corpus`: the keyword arguments of `build_manifest`), with a seeded split by
    utterance where `split.fractions` asks for one, and its transcripts (the manifest's utterances only)."""
    df = build_manifest(**corpus)
    if split["fractions"] is not None:
        df = assign_splits(df, split["fractions"], int(split["seed"]))
    write_manifest(df, out_manifest)
    text = read_transcripts(**corpus)
    write_transcripts(text[text["utt_id"].isin(set(df["utt_id"]))], out_transcripts)
    return {"utterances": len(df), "splits": df["split"].value_counts().to_dict(), "transcripts": int(len(text))}


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
