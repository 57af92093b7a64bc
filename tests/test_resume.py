"""A pre-training job killed with SIGKILL resumes from its last checkpoint when the workflow is run
again (`--rerun-incomplete`), and ends byte-identical to an uninterrupted run: the model, the head,
the targets' centres and every per-step loss (wall times aside)."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from conftest import ONE_MODEL, RESUME_PRETRAIN, ROOT, TINY, run_snakemake, seed_corpora, snakemake_cmd

pytestmark = pytest.mark.slow


def _target(results: Path) -> str:
    return str(results / "models/demo/pretrain/summary.json")


def _args(results: Path, extra: Path, *more: str) -> list:
    return [_target(results), "--cores", "2", "--configfile", TINY, extra, "--config", f"results={results}", ONE_MODEL,
            *more]


@pytest.fixture(scope="module")
def plain_pretraining(tiny_corpora, tmp_path_factory):
    """(results folder, extra config file): the tiny model pre-trained without interruption (40 steps,
    a checkpoint every 5), the reference of the resume test."""
    base = tmp_path_factory.mktemp("plain_pretraining")
    extra = base / "extra.yaml"
    extra.write_text(RESUME_PRETRAIN)
    results = base / "plain"
    seed_corpora(tiny_corpora, results)
    res = run_snakemake(*_args(results, extra))
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    return results, extra


def _losses(path: Path) -> list[str]:
    """train_log.tsv without its wall-time column."""
    rows = [line.split("\t") for line in path.read_text().splitlines()]
    col = rows[0].index("elapsed_s")
    return ["\t".join(r[:col] + r[col + 1:]) for r in rows]


def test_sigkilled_pretraining_resumes_and_ends_byte_identical(plain_pretraining, tiny_corpora, tmp_path):
    # the uninterrupted run of the same configuration
    plain, extra = plain_pretraining
    killed = tmp_path / "killed"
    seed_corpora(tiny_corpora, killed)

    # the same run, killed (snakemake and its job, SIGKILL) once a checkpoint past the start exists
    proc = subprocess.Popen(snakemake_cmd(*_args(killed, extra)), cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    scratch = killed / "resume/demo/pretrain_melhubert"
    deadline = time.monotonic() + 900
    while not (scratch / "step_10").exists():
        assert proc.poll() is None, "the run ended before it could be killed"
        assert time.monotonic() < deadline
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (killed / "models/demo/pretrain/summary.json").exists()  # nothing a later run could take as done
    assert (scratch / "step_10" / "state.pt").exists()
    assert (scratch / "data" / "features" / "info.json").exists()  # the complete training data store

    run_snakemake(*_args(killed, extra, "--unlock"), timeout=300)
    res = run_snakemake(*_args(killed, extra, "--rerun-incomplete"))
    assert res.returncode == 0, res.stderr[-3000:]
    log = (killed / "logs/demo/pretrain_melhubert.log").read_text()
    assert "RESUMING from" in log and "resumed from" in log
    # the restart reads the store the killed job completed: no second feature pass, no second k-means
    assert "reusing the complete feature store" in log and "reusing the complete target store" in log
    assert "feature store written" not in log
    a, b = plain / "models/demo", killed / "models/demo"
    for rel in ("model/model.safetensors", "pretrain/head.pt", "pretrain/kmeans_centers.npy",
                "pretrain/checkpoints/step_40/model.safetensors"):
        assert (a / rel).read_bytes() == (b / rel).read_bytes(), rel
    assert _losses(a / "pretrain/train_log.tsv") == _losses(b / "pretrain/train_log.tsv")
    assert len(_losses(a / "pretrain/train_log.tsv")) == 41
    assert not scratch.exists()  # the scratch checkpoints moved to the declared folder, the store removed
    assert not (b / "pretrain/checkpoints/data").exists()
    assert sorted(p.name for p in (b / "pretrain/checkpoints").iterdir()) == sorted(
        p.name for p in (a / "pretrain/checkpoints").iterdir())
