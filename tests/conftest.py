"""Shared test helpers: small audio files written with soundfile, and for the tests that run the
workflow (marked `slow`): Snakemake runs on the tiny configuration and one synthesized tiny corpus
shared by every run that needs one.

`make test` runs the suite in two pytest-xdist workers, one test file per worker at a time
(`--dist loadfile`), the files that run the workflow first (`HEAVY_FIRST`): the SLURM tests wait
mostly on the executor plugin (5 s before every sbatch) and on status checks, and another worker's
chains use those cores meanwhile. A session fixture shared by files on both workers is made once, by
the first worker that needs it (`_made_once`)."""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

# OpenMP threads that wait for work sleep instead of spinning: the two workers and their jobs share the
# cores, and a spinning thread burns the time another process needs (no result depends on it)
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "tests" / "configs" / "tiny.yaml"
SYNTHESIZERS = ("espeak-ng", "mbrola", "flite", "festival", "pico2wave")
# the corpora the tiny configuration synthesizes: the analysis corpus and the evaluation corpus
TINY_CORPORA = ("demo", "demo_eval")
# the pre-training the resume tests (test_resume, test_slurm) interrupt: a checkpoint every 5 steps, stopped
# once step_10 exists
# (batches of 1000 frames: steps 4x cheaper than the tiny config's, and step 10 falls inside an epoch)
RESUME_PRETRAIN = "pretrain: {train: {max_steps: 40, checkpoint_every: 5, max_frames_per_batch: 1000}}\n"
ONE_MODEL = "models=[{name: demo, kind: melhubert, source: pretrain}]"


# the files that run the workflow, longest first: xdist hands each worker whole files in this order
HEAVY_FIRST = ("test_end_to_end.py", "test_slurm.py", "test_real_layouts.py", "test_resume.py", "test_kill_anywhere.py",
               "test_workflow.py")


def pytest_collection_modifyitems(config, items):
    """The files of HEAVY_FIRST first, in that order (the others keep theirs), so that two workers start
    on the two longest files side by side instead of meeting them last."""
    rank = {name: i for i, name in enumerate(HEAVY_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))


@contextlib.contextmanager
def _made_once(tmp_path_factory, name: str):
    """(folder, done): a folder shared by every xdist worker of the session (the plain temporary folder
    without xdist), held under a lock; `done` is False when the caller must make its content (then call
    it a success by leaving the block without an exception)."""
    base = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        base = base.parent  # the session's folder, above each worker's own
    folder = base / name
    with open(base / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        done = (folder / ".made").exists()
        if not done:
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir()
        yield folder, done
        (folder / ".made").touch()


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


def start_snakemake(log: Path, *args, env=None) -> subprocess.Popen:
    """`snakemake ARGS` from the workflow's folder in the background (its own process group), its output
    to `log`: for runs side by side."""
    return subprocess.Popen(snakemake_cmd(*args), cwd=ROOT, env=env, stdout=Path(log).open("w"),
                            stderr=subprocess.STDOUT, start_new_session=True)


def stop(proc: subprocess.Popen) -> None:
    """Kill a run of `start_snakemake` that is still going: snakemake and its running jobs."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def wait_or_kill(proc: subprocess.Popen, timeout: float) -> int:
    """The exit status of a run of `start_snakemake`; on a timeout or an error it is stopped first."""
    try:
        return proc.wait(timeout=timeout)
    finally:
        stop(proc)


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
    with _made_once(tmp_path_factory, "tiny_corpora") as (folder, done):
        results = folder / "results"
        if not done:
            res = run_snakemake("--cores", "2", "--configfile", TINY, "--config", f"results={results}", "--",
                                *[corpus_dir(results, name) for name in TINY_CORPORA])
            assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    return results


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
