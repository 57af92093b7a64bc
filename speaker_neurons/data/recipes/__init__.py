"""Corpus recipes: one module per corpus layout (`source` in the config), each saying what the layout needs
(its settings, the paths that must exist), how its manifest, transcripts and splits are built, which of its
files can be test utterances (the leak check) and what the cost model may estimate from before a manifest
exists. The catalogue, the costs and the manifest builder ask the recipe; nothing outside this package
branches on a source's name.

Adding a layout: a module here with a `Recipe` subclass, its entry in `RECIPES`, the source in
`config.schema.yaml` (corpus.source and its settings), and tests in tests/test_manifest.py.
"""

from __future__ import annotations

import inspect
import os
from typing import Any, Mapping

import pandas as pd

from speaker_neurons.data.manifest import assign_splits, write_manifest, write_transcripts
from speaker_neurons.data.recipes.base import Recipe, RecipeError


def _registry() -> dict[str, Recipe]:
    from speaker_neurons.data.recipes.demo import DemoRecipe
    from speaker_neurons.data.recipes.librispeech import LibriSpeechRecipe
    from speaker_neurons.data.recipes.tsv import TsvRecipe
    from speaker_neurons.data.recipes.voxceleb1 import VoxCeleb1Recipe

    return {r.name: r for r in (DemoRecipe(), LibriSpeechRecipe(), VoxCeleb1Recipe(), TsvRecipe())}


RECIPES: dict[str, Recipe] = _registry()


def recipe(source: str) -> Recipe:
    """The recipe of corpus source `source`; an unknown one raises naming the known ones."""
    if source not in RECIPES:
        raise ValueError(f"unknown corpus source {source!r}; expected one of {sorted(RECIPES)}")
    return RECIPES[source]


def build_manifest(source: str, **kwargs) -> pd.DataFrame:
    """The manifest of a corpus: its recipe's builder with `kwargs` (the recipe's `builder_kwargs`); an
    argument the builder does not take, or one it needs and lacks, raises naming them."""
    r = recipe(source)
    kwargs = r.resolve_aliases(kwargs)
    fn = r.builder
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


def read_transcripts(source: str, **kwargs) -> pd.DataFrame:
    """The corpus' transcripts as `utt_id`, `text` (no rows for a corpus without any, e.g. VoxCeleb1)."""
    r = recipe(source)
    return r.transcripts(**r.resolve_aliases(kwargs))


def make_manifest(corpus: Mapping[str, Any], split: Mapping[str, Any], out_manifest: str | os.PathLike,
                  out_transcripts: str | os.PathLike) -> dict:
    """A corpus' manifest (`corpus`: source and the keyword arguments of its builder), with a seeded split by
    utterance where `split.fractions` asks for one, and its transcripts (the manifest's utterances only)."""
    df = build_manifest(**corpus)
    if split["fractions"] is not None:
        df = assign_splits(df, split["fractions"], int(split["seed"]))
    write_manifest(df, out_manifest)
    text = read_transcripts(**corpus)
    write_transcripts(text[text["utt_id"].isin(set(df["utt_id"]))], out_transcripts)
    return {"utterances": len(df), "splits": df["split"].value_counts().to_dict(), "transcripts": int(len(text))}


__all__ = ["Recipe", "RecipeError", "RECIPES", "recipe", "build_manifest", "read_transcripts", "make_manifest"]
