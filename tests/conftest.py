"""Shared test helpers: small audio files written with soundfile, and for the tests that run the
workflow (marked `slow`): Snakemake runs on the tiny configuration, one synthesized tiny corpus shared
by every run that needs one, and one uninterrupted tiny pre-training shared by the resume tests."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "tests" / "configs" / "tiny.yaml"
SYNTHESIZERS = ("espeak-ng", "mbrola", "flite", "festival", "pico2wave")
# the corpora the tiny configuration synthesizes: the analysis corpus and the evaluation corpus
TINY_CORPORA = ("demo", "demo_eval")
# the pre-training the resume tests interrupt: a checkpoint every 5 steps, killed once step_10 exists
# (batches of 1000 frames: steps 4x cheaper than the tiny config's, and step 10 falls inside an epoch)
RESUME_PRETRAIN = "pretrain: {train: {max_steps: 40, checkpoint_every: 5, max_frames_per_batch: 1000}}\n"
ONE_MODEL = "models=[{name: demo, kind: melhubert, source: pretrain}]"


def corpus_dir(results, name: str = "demo") -> Path:
    """Where the workflow writes the synthesized corpus `name` under `results` (the one place tests
    name that path)."""
    return Path(results) / "corpora" / name / "audio"


def corpus_outputs(results, name: str = "demo") -> list[Path]:
    """Every file rule synthesize_demo_corpus writes for corpus `name`: the folder, its provenance, the
    rule's log and benchmark."""
    r = Path(results)
    return [corpus_dir(r, name), r / "corpora" / name / "provenance" / "synthesize_demo_corpus.json",
            r / "logs" / "corpora" / name / "synthesize_demo_corpus.log",
            r / "benchmarks" / "corpora" / name / "synthesize_demo_corpus.tsv"]


def missing_synthesizers() -> list[str]:
    return [b for b in SYNTHESIZERS if shutil.which(b) is None]


def skip_without_synthesizers() -> None:
    missing = missing_synthesizers()
    if missing:
        pytest.skip(f"speech synthesizers missing ({', '.join(missing)}): run `make setup` as root")


def snakemake_cmd(*args) -> list[str]:
    """`snakemake ARGS` with the greedy scheduler: where pulp is installed Snakemake otherwise solves an
    ILP (a CBC process) at every scheduling round, CPU that a chain of 150 small jobs on 2 cores lacks;
    which job runs first changes no result (the runs below are compared byte for byte)."""
    return [sys.executable, "-m", "snakemake", "--scheduler", "greedy", *map(str, args)]


def run_snakemake(*args, env=None, timeout=1200) -> subprocess.CompletedProcess:
    """`snakemake ARGS` from the workflow's folder, output captured."""
    return subprocess.run(snakemake_cmd(*args), cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def seed_corpora(source, results, names=("demo",)) -> None:
    """Copy the synthesized corpora `names` (with provenance, log and benchmark, modification times kept)
    from the results folder `source` into `results`, so that Snakemake takes them as made and does not
    synthesize them again."""
    for name in names:
        for src in corpus_outputs(source, name):
            dst = Path(results) / src.relative_to(source)
            dst.parent.mkdir(parents=True, exist_ok=True)
            if src.is_dir():
                shutil.copytree(src, dst, copy_function=shutil.copy2)
            else:
                shutil.copy2(src, dst)


@pytest.fixture(scope="session")
def tiny_corpora(tmp_path_factory):
    """A results folder holding the tiny configuration's synthesized corpora, made once per session by
    the workflow itself (rule synthesize_demo_corpus); tests copy them in with `seed_corpora`."""
    skip_without_synthesizers()
    results = tmp_path_factory.mktemp("tiny_corpora") / "results"
    res = run_snakemake("--cores", "2", "--configfile", TINY, "--config", f"results={results}", "--",
                        *[corpus_dir(results, name) for name in TINY_CORPORA])
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    return results


@pytest.fixture(scope="session")
def plain_pretraining(tiny_corpora, tmp_path_factory):
    """(results folder, extra config file): the tiny model pre-trained without interruption (40 steps,
    a checkpoint every 5), the reference of every resume test."""
    base = tmp_path_factory.mktemp("plain_pretraining")
    extra = base / "extra.yaml"
    extra.write_text(RESUME_PRETRAIN)
    results = base / "plain"
    seed_corpora(tiny_corpora, results)
    res = run_snakemake(results / "models/demo/pretrain/summary.json", "--cores", "2", "--configfile", TINY, extra,
                        "--config", f"results={results}", ONE_MODEL)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    return results, extra


def _write_audio(path, seconds=1.0, sr=16000, channels=1, subtype="PCM_16", data=None, freq=220.0, amp=0.3):
    """Write a tone (or `data`, shape (frames,) or (frames, channels)) to `path`; return its absolute path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if data is None:
        n = int(round(seconds * sr))
        t = np.arange(n) / sr
        mono = (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)
        data = np.stack([mono] * channels, axis=1) if channels > 1 else mono
    sf.write(str(path), np.asarray(data), sr, subtype=subtype)
    return str(path.resolve())


@pytest.fixture
def write_audio():
    """Factory fixture: write_audio(path, seconds=1.0, sr=16000, channels=1, subtype="PCM_16", data=None)."""
    return _write_audio


@pytest.fixture
def package_logs(caplog, monkeypatch):
    """caplog that also sees the package's records after setup_logging() turned propagation off."""
    import logging

    monkeypatch.setattr(logging.getLogger("speaker_neurons"), "propagate", True)
    return caplog


@pytest.fixture
def run_adapter():
    """run_adapter(rule, **fields): run workflow_scripts/run_stage.py (every rule's script) with a fake
    `snakemake` object for `rule`, as Snakemake would.

    The package logger's state (changed by setup_logging) is restored afterwards.
    """
    import logging
    import runpy
    from types import SimpleNamespace

    logger = logging.getLogger("speaker_neurons")
    saved = (list(logger.handlers), logger.propagate, logger.level)
    root = Path(__file__).resolve().parents[1]

    class IO(SimpleNamespace):  # like snakemake's input/output: named fields that also iterate
        def __iter__(self):
            return iter(vars(self).values())

        def items(self):
            return vars(self).items()

    def run(rule, **fields):
        fields.setdefault("config", {})
        for key in ("input", "output", "params", "wildcards"):
            fields.setdefault(key, {})
        smk = SimpleNamespace(rule=rule, **{k: IO(**v) if isinstance(v, dict) and k != "config" else v
                                            for k, v in fields.items()})
        runpy.run_path(str(root / "workflow_scripts" / "run_stage.py"), init_globals={"snakemake": smk},
                       run_name="__main__")

    yield run
    for h in list(logger.handlers):
        if h not in saved[0]:
            logger.removeHandler(h)
            h.close()
    for h in saved[0]:
        if h not in logger.handlers:
            logger.addHandler(h)
    logger.propagate, logger.level = saved[1], saved[2]
