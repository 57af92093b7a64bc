"""VoxCeleb1: `wav/<id>/<youtube-id>/<n>.wav` (or the two archives unpacked into `dev/wav`, `test/wav`), the
identification split `iden_split.txt` (1 train, 2 dev, 3 test) and `vox1_meta.csv` (genders). No transcripts."""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

import logging

from speaker_neurons.data.manifest import (ManifestError, _assemble, _read_tsv, _require_dir,
                                           _require_file, normalize_gender)
from speaker_neurons.data.recipes.base import Recipe, RecipeError

log = logging.getLogger("speaker_neurons.data.manifest")

REQUIRED = ("root", "iden_split", "meta_csv")


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


class VoxCeleb1Recipe(Recipe):
    name = "voxceleb1"
    builder = staticmethod(voxceleb1_manifest)

    def check(self, settings, corpus):
        for k in REQUIRED:
            if not settings[k]:
                raise RecipeError(f"voxceleb1.{k}", f"corpus {corpus!r} has source 'voxceleb1' but its voxceleb1.{k} "
                                                    "is empty: set it in your config (or with --config).")

    def named_paths(self, settings):
        return [(k, settings[k]) for k in REQUIRED]

    @staticmethod
    def _wav_dirs(settings) -> list[Path]:
        root = Path(settings["root"])
        return [d for d in (root / "wav", root / "dev" / "wav", root / "test" / "wav") if d.is_dir()]

    def audio_files(self, settings, test_only):
        wav_dirs = self._wav_dirs(settings)
        if not test_only:
            return sorted(p for d in wav_dirs for p in d.glob("*/*/*.wav"))
        try:
            lines = Path(settings["iden_split"]).read_text(encoding="utf-8").split("\n")
        except OSError:
            return []
        out = []
        for line in lines:
            parts = line.split()
            if len(parts) == 2 and parts[0] == "3":
                out += [d / parts[1] for d in wav_dirs if (d / parts[1]).is_file()]
        return sorted(out)

    def listing(self, settings):
        return [settings["root"]], [settings["iden_split"], settings["meta_csv"]]

    def size_folders(self, settings):
        return [settings["root"]] if settings.get("root") else []
