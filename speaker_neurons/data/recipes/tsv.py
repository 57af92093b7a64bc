"""A table of audio files: a `path` column (absolute, or relative to the table's folder) and optional
`speaker`, `gender`, `utt_id`, `split` and `text` columns."""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

import logging
import re

from speaker_neurons.data.manifest import (SPLITS, ManifestError, _assemble, _read_tsv, _require_file,
                                           check_unique_ids, normalize_gender)
from speaker_neurons.data.recipes.base import Recipe, RecipeError

log = logging.getLogger("speaker_neurons.data.manifest")


def tsv_columns(path: str) -> list[str]:
    """The header of the table (empty when it cannot be read)."""
    try:
        with open(path, encoding="utf-8") as f:
            return [c.strip() for c in f.readline().rstrip("\n").split("\t")]
    except OSError:
        return []


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


class TsvRecipe(Recipe):
    name = "tsv"
    builder = staticmethod(tsv_manifest)
    aliases = {"path": "tsv"}  # config.yaml's corpus.tsv.path

    def check(self, settings, corpus):
        if not settings["path"]:
            raise RecipeError("tsv.path", f"corpus {corpus!r} has source 'tsv' but its tsv.path is empty: set it in "
                                          "your config (or with --config).")

    def named_paths(self, settings):
        return [("path", settings["path"])]

    def has_transcripts(self, settings):
        return "text" in tsv_columns(settings["path"])

    def has_speakers(self, settings):
        return "speaker" in tsv_columns(settings["path"])

    def has_own_splits(self, settings):
        return "split" in tsv_columns(settings["path"])

    def audio_files(self, settings, test_only):
        import csv

        table = Path(settings["path"])
        try:
            with open(table, encoding="utf-8", newline="") as f:
                rows = list(csv.DictReader(f, delimiter="\t"))
        except OSError:
            return []
        out = []
        for r in rows:
            if test_only and r.get("split", "").strip() not in ("test", ""):
                continue
            p = Path((r.get("path") or "").strip()).expanduser()
            out.append(p if p.is_absolute() else table.parent / p)
        return sorted(out)

    def listing(self, settings):
        return [], [settings["path"]]

    def size_folders(self, settings):
        return [os.path.dirname(settings["path"])] if settings.get("path") else []

    def transcripts(self, tsv: str | os.PathLike) -> pd.DataFrame:
        _, df, _, ids = _tsv_rows(tsv)
        rows = list(zip(ids, df["text"].astype(str).str.strip())) if "text" in df.columns else []
        return pd.DataFrame(rows, columns=["utt_id", "text"])
