"""LibriSpeech: one subset folder (`split_dir`) or one folder per split (`split_dirs`: train, dev, test, as
SUPERB PR uses train-clean-100 / dev-clean / test-clean), `<spk>/<chapter>/<spk>-<chap>-<utt>.flac` with
`<spk>-<chap>.trans.txt` transcripts, genders from SPEAKERS.TXT."""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

import logging
import re

from speaker_neurons.data.manifest import (ManifestError, _assemble, _require_dir, _require_file,
                                           check_unique_ids, normalize_gender)
from speaker_neurons.data.recipes.base import Recipe, RecipeError

log = logging.getLogger("speaker_neurons.data.manifest")


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


class LibriSpeechRecipe(Recipe):
    name = "librispeech"
    builder = staticmethod(librispeech_manifest)

    def check(self, settings, corpus):
        dirs = settings["split_dirs"]
        if not settings["split_dir"] and not any(dirs.values()):
            raise RecipeError("librispeech.split_dir",
                              f"corpus {corpus!r} is LibriSpeech but names no folder: set split_dir (one subset, e.g. "
                              ".../LibriSpeech/dev-clean) or split_dirs {{train, dev, test}} (e.g. train-clean-100, "
                              "dev-clean, test-clean).")
        if settings["split_dir"] and any(dirs.values()):
            raise RecipeError("librispeech", f"corpus {corpus!r} sets both split_dir and split_dirs; set one.")

    def _dirs(self, settings) -> list[str]:
        return [v for v in (settings.get("split_dirs") or {}).values() if v] or (
            [settings["split_dir"]] if settings.get("split_dir") else [])

    def named_paths(self, settings):
        return ([("split_dir", settings["split_dir"])]
                + [(f"split_dirs.{k}", v) for k, v in settings["split_dirs"].items()]
                + [("speakers_txt", settings["speakers_txt"])])

    def has_transcripts(self, settings):
        return True

    def has_own_splits(self, settings):
        return any(settings["split_dirs"].values())

    def audio_files(self, settings, test_only):
        dirs = {k: v for k, v in settings["split_dirs"].items() if v}
        if dirs:
            chosen = [dirs["test"]] if test_only and "test" in dirs else list(dirs.values())
        else:
            chosen = [settings["split_dir"]]
        return sorted(p for d in chosen for p in Path(d).glob("*/*/*.flac"))

    def listing(self, settings):
        dirs = self._dirs(settings)
        return dirs, [str(Path(d).parent / "SPEAKERS.TXT") for d in dirs]

    def size_folders(self, settings):
        return self._dirs(settings)

    def transcripts(self, split_dir=None, speakers_txt=None, split_dirs=None) -> pd.DataFrame:
        rows: list[tuple[str, str]] = []
        for d in self._dirs({"split_dir": split_dir, "split_dirs": split_dirs or {}}):
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
        return pd.DataFrame(rows, columns=["utt_id", "text"])
