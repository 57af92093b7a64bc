"""A pre-training job killed with SIGKILL resumes from its last checkpoint when the workflow is run
again (`--rerun-incomplete`), and ends byte-identical to an uninterrupted run: the model, the head,
the targets' centres and every per-step loss (wall times aside)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "tests" / "configs" / "tiny.yaml"
SYNTH = ("espeak-ng", "mbrola", "flite", "festival", "pico2wave")
EXTRA = "pretrain: {train: {max_steps: 40, checkpoint_every: 5}}\n"


def _target(results: Path) -> str:
    return str(results / "models/demo/pretrain/summary.json")


def _cmd(results: Path, extra: Path, *more: str) -> list[str]:
    return [sys.executable, "-m", "snakemake", _target(results), "--cores", "2", "--configfile", str(TINY), str(extra),
            "--config", f"results={results}", "models=[{name: demo, kind: melhubert, source: pretrain}]", *more]


def _losses(path: Path) -> list[str]:
    """train_log.tsv without its wall-time column."""
    rows = [line.split("\t") for line in path.read_text().splitlines()]
    col = rows[0].index("elapsed_s")
    return ["\t".join(r[:col] + r[col + 1:]) for r in rows]


def test_sigkilled_pretraining_resumes_and_ends_byte_identical(tmp_path):
    missing = [b for b in SYNTH if shutil.which(b) is None]
    if missing:
        pytest.skip(f"speech synthesizers missing ({', '.join(missing)}): run `make setup` as root")
    extra = tmp_path / "extra.yaml"
    extra.write_text(EXTRA)
    plain, killed = tmp_path / "plain", tmp_path / "killed"
    res = subprocess.run(_cmd(plain, extra), cwd=ROOT, capture_output=True, text=True, timeout=1200)
    assert res.returncode == 0, res.stderr[-3000:]

    # the same run, killed (snakemake and its job, SIGKILL) once a checkpoint past the start exists
    proc = subprocess.Popen(_cmd(killed, extra), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
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

    subprocess.run(_cmd(killed, extra, "--unlock"), cwd=ROOT, capture_output=True, timeout=300)
    res = subprocess.run(_cmd(killed, extra, "--rerun-incomplete"), cwd=ROOT, capture_output=True, text=True,
                         timeout=1200)
    assert res.returncode == 0, res.stderr[-3000:]
    log = (killed / "logs/demo/pretrain_melhubert.log").read_text()
    assert "RESUMING from" in log and "resumed from" in log
    a, b = plain / "models/demo", killed / "models/demo"
    for rel in ("model/model.safetensors", "pretrain/head.pt", "pretrain/kmeans_centers.npy",
                "pretrain/checkpoints/step_40/model.safetensors"):
        assert (a / rel).read_bytes() == (b / rel).read_bytes(), rel
    assert _losses(a / "pretrain/train_log.tsv") == _losses(b / "pretrain/train_log.tsv")
    assert len(_losses(a / "pretrain/train_log.tsv")) == 41
    assert not scratch.exists()  # the scratch checkpoints moved to the declared folder
    assert sorted(p.name for p in (b / "pretrain/checkpoints").iterdir()) == sorted(
        p.name for p in (a / "pretrain/checkpoints").iterdir())
