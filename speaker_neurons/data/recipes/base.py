"""The interface every corpus recipe implements (`speaker_neurons.data.recipes`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Mapping

import pandas as pd


class RecipeError(ValueError):
    """A corpus' settings are wrong: `key` is the setting below the corpus (e.g. `librispeech.split_dir`)."""

    def __init__(self, key: str, message: str):
        super().__init__(message)
        self.key = key


class Recipe:
    """What the workflow knows of one corpus layout. `settings` is the layout's section of a corpus entry
    (corpus.<source>). Subclasses set `name` and `builder` and override what differs."""

    name: str = ""
    #: the layout's manifest builder: keyword arguments = `builder_kwargs`
    builder: Callable[..., pd.DataFrame]
    #: the workflow makes the audio itself (no paths to check, no files before any job)
    synthesized: bool = False
    #: sid.crop_seconds: auto resolves to this (None = whole utterances)
    sid_crop_seconds: float | None = None
    #: config-key aliases of the builder's arguments ({config key: argument})
    aliases: dict[str, str] = {}

    def resolve_aliases(self, kwargs: dict[str, Any]) -> dict[str, Any]:
        out = dict(kwargs)
        for alias, name in self.aliases.items():
            if alias in out and name not in out:
                out[name] = out.pop(alias)
        return out

    def check(self, settings: Mapping[str, Any], corpus: str) -> None:
        """Raise RecipeError when the settings cannot describe a corpus (before any job)."""

    def named_paths(self, settings: Mapping[str, Any]) -> list[tuple[str, str]]:
        """(setting, path) of every folder and file the settings name, checked to exist before any job."""
        return []

    def has_transcripts(self, settings: Mapping[str, Any]) -> bool:
        return False

    def has_speakers(self, settings: Mapping[str, Any]) -> bool:
        return True

    def has_own_splits(self, settings: Mapping[str, Any]) -> bool:
        """Its utterances come with train/dev/test (else split.fractions must make them)."""
        return True

    def audio_files(self, settings: Mapping[str, Any], test_only: bool) -> list[Path]:
        """The audio files that exist before any job; with `test_only`, those that can be test utterances."""
        return []

    def listing(self, settings: Mapping[str, Any]) -> tuple[list[str], list[str]]:
        """(folders, single files) whose state keys the cached checks."""
        return [], []

    def size_folders(self, settings: Mapping[str, Any]) -> list[str]:
        """Folders whose audio files estimate the corpus' size before its manifest exists."""
        return []

    def builder_kwargs(self, settings: Mapping[str, Any], corpus_dir: str | None = None) -> dict[str, Any]:
        """Keyword arguments of `builder` (the synthesized corpus: its folder)."""
        import copy

        return copy.deepcopy(dict(settings))

    def transcripts(self, **kwargs) -> pd.DataFrame:
        """`utt_id`, `text` of the corpus (no rows when it has none); kwargs: `builder_kwargs`."""
        return pd.DataFrame([], columns=["utt_id", "text"])
