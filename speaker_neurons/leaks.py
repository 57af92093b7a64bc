"""The leak check: before any job, a test utterance of an evaluation corpus must not be an utterance the
neurons were found on (the analysis corpus) or the i-vector extractor was trained on: the same file or the
same audio. Each corpus' recipe says which of its files exist before the run and which can be test
utterances. The check reads the corpora, so it runs once per configuration and state of their folders
(`cached_leak_check`, never in a job on a cluster node)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

from speaker_neurons.config import ConfigError

if TYPE_CHECKING:
    from speaker_neurons.catalogue import Catalogue, Corpus


def _audio_settings(c: Corpus) -> dict[str, Any]:
    """A synthesized corpus' settings that decide its audio (the id prefix only renames)."""
    return {k: v for k, v in c.settings.items() if k != "id_prefix"}


def _audio_files(c: Corpus, test_only: bool) -> list[Path]:
    """The audio files of a corpus that exist before any job (none for a synthesized corpus); with
    `test_only`, the files that can be test utterances (all of them where the split is made later)."""
    return c.recipe.audio_files(c.settings, test_only)

def find_leaks(analysis: Corpus, evaluation: Corpus, limit: int = 5) -> list[str]:
    """Test utterances of `evaluation` that are utterances of `analysis`: the same file (resolved path)
    or the same audio bytes (sha256, compared only between files of equal size). Returns up to `limit`
    descriptions; for two synthesized corpora, equal settings mean equal audio."""
    if analysis.name == evaluation.name:
        return []
    if analysis.synthesized and evaluation.synthesized:
        if _audio_settings(analysis) == _audio_settings(evaluation):
            return [f"every utterance: corpora {analysis.name!r} and {evaluation.name!r} are synthesized with the same "
                    "settings (seed included)"]
        return []
    from speaker_neurons.utils import sha256_file

    found: list[str] = []
    ana = {}
    for p in _audio_files(analysis, test_only=False):
        try:
            ana[str(Path(p).resolve())] = Path(p).stat().st_size
        except OSError:
            continue
    by_size: dict[int, list[str]] = {}
    for p, size in ana.items():
        by_size.setdefault(size, []).append(p)
    digests: dict[str, str] = {}

    def digest(p: str) -> str:
        if p not in digests:
            digests[p] = sha256_file(p)
        return digests[p]

    for p in _audio_files(evaluation, test_only=True):
        try:
            rp = str(Path(p).resolve())
            size = Path(rp).stat().st_size
        except OSError:
            continue
        if rp in ana:
            found.append(f"{rp} (the same file)")
        else:
            same = [q for q in by_size.get(size, []) if digest(q) == digest(rp)]
            if same:
                found.append(f"{rp} (the same audio as {same[0]})")
        if len(found) >= limit:
            break
    return found


def check_leaks(cat: Catalogue, config: Mapping[str, Any]) -> list[str]:
    """Raise ConfigError when a test utterance of an evaluation corpus is an utterance of the analysis
    corpus; returns warnings (an evaluation on the analysis corpus itself is allowed, and said)."""
    analysis = cat.corpus("analysis")
    warnings = list(cat.notes)
    for stage in ("sid", "pr"):
        if not config[stage]["enabled"] or (stage == "pr" and not cat.pr_runs):
            continue
        ev = cat.corpus(stage)
        if ev.name == analysis.name:
            warnings.append(f"{stage} is scored on the corpus the neurons are found on ({analysis.name!r}); the paper "
                            f"finds them on one corpus and evaluates on others (set stages.{stage}).")
            continue
        leaks = find_leaks(analysis, ev)
        if leaks:
            raise ConfigError(f"stages.{stage}", f"test utterances of corpus {ev.name!r} are utterances of the "
                                                 f"analysis corpus {analysis.name!r}, on which the neurons are found: "
                                                 f"{'; '.join(leaks)}. Evaluate on utterances the analysis never saw.")
        extractor = cat.corpus("ivector_extractor")
        if extractor.name != analysis.name and not config["ivector"]["kaldi_ivectors"]:
            leaks = (["every test utterance: the extractor's corpus is the evaluation corpus itself"]
                     if extractor.name == ev.name else find_leaks(extractor, ev))
            if leaks:
                raise ConfigError("stages.ivector_extractor",
                                  f"test utterances of corpus {ev.name!r} are utterances of corpus {extractor.name!r}, "
                                  f"on which the i-vector extractor is trained: {'; '.join(leaks)}. Train it on "
                                  "utterances the evaluation never tests.")
    return warnings


_LISTING_DEPTH = 2  # folders below a corpus root whose state keys the cached checks


def _corpus_paths(c: Corpus) -> tuple[list[str], list[str]]:
    """(folders, single files) of a corpus as its settings name them."""
    return c.recipe.listing(c.settings)

def listing_signature(corpora: Sequence[Corpus]) -> str:
    """A digest of the state of the corpora's folders: every folder down to `_LISTING_DEPTH` levels below
    each root (name, mtime: a folder's mtime changes when an entry is added, removed or renamed in it) and
    the corpus' own files (split lists, metadata, TSV: size and mtime). A few thousand stat calls for
    VoxCeleb1, instead of one per audio file. A file rewritten in place under an unchanged folder is not
    seen: remove .snakemake/speaker_neurons/ to check again."""
    import hashlib

    h = hashlib.sha256()

    def add(p: str) -> None:
        try:
            st = os.stat(p)
            h.update(f"{p}\t{st.st_size}\t{st.st_mtime_ns}\n".encode())
        except OSError:
            h.update(f"{p}\tmissing\n".encode())

    for c in sorted(corpora, key=lambda c: c.name):
        folders, files = _corpus_paths(c)
        for f in files:
            add(f)
        for root in folders:
            frontier = [root]
            for _ in range(_LISTING_DEPTH + 1):
                nxt = []
                for d in sorted(frontier):
                    add(d)
                    try:
                        nxt += [e.path for e in os.scandir(d) if e.is_dir()]
                    except OSError:
                        pass
                frontier = nxt
    return h.hexdigest()


def cached_leak_check(cat: Catalogue, config: Mapping[str, Any], cache_dir: str | os.PathLike | None) -> list[str]:
    """`check_leaks`, skipped when `cache_dir` records that this configuration passed it with the corpora's
    folders in the same state (`listing_signature`); a failure is never cached."""
    import hashlib
    import json

    if cache_dir is None:
        return check_leaks(cat, config)
    used = {c.name: c for c in (cat.corpus(s) for s in ("analysis", "ivector_extractor", "sid", "pr"))
            if not c.synthesized}
    key = hashlib.sha256((json.dumps(config, sort_keys=True, default=str) + listing_signature(list(used.values())))
                         .encode()).hexdigest()[:32]
    record = Path(cache_dir) / f"checks-{key}.json"
    if record.is_file():
        try:
            return list(json.loads(record.read_text())["warnings"])
        except (OSError, ValueError, KeyError):
            pass
    warnings = check_leaks(cat, config)
    record.parent.mkdir(parents=True, exist_ok=True)
    tmp = record.with_suffix(".tmp")
    tmp.write_text(json.dumps({"warnings": warnings}) + "\n")
    os.replace(tmp, record)
    return warnings
