"""The demo corpus, synthesized by the workflow itself (rule synthesize_demo_corpus, speaker_neurons.data.synth):
`utterances.tsv` and `speakers.tsv` in its folder. Nothing exists before the run; its size comes from its
settings (speaker and utterance counts)."""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from speaker_neurons.data.manifest import (SPLITS, ManifestError, _assemble, _read_tsv, _require_dir,
                                           _require_file, normalize_gender)
from speaker_neurons.data.recipes.base import Recipe

#: sid.crop_seconds auto on a synthesized corpus: 0.5 s crops (its utterances are short and few)
DEMO_CROP_SECONDS = 0.5


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


class DemoRecipe(Recipe):
    name = "demo"
    builder = staticmethod(demo_manifest)
    synthesized = True
    sid_crop_seconds = DEMO_CROP_SECONDS

    def has_transcripts(self, settings):
        return True

    def builder_kwargs(self, settings, corpus_dir=None):
        return {"corpus_dir": corpus_dir}

    def transcripts(self, corpus_dir: str | os.PathLike) -> pd.DataFrame:
        utt = _read_tsv(_require_file(Path(corpus_dir) / "utterances.tsv", "demo corpus utterance list"))
        rows = list(zip(utt["utt_id"], utt["text"])) if "text" in utt.columns else []
        return pd.DataFrame(rows, columns=["utt_id", "text"])
