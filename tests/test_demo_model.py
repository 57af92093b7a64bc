"""The shipped demo model (models/melhubert_demo/, made by `make demo-model` from configs/demo-model.yaml):
its files match their provenance, it loads as the demo loads it, and its recipe, re-run for a few steps
from the shipped k-means centres on a fresh synthesis of the demo corpus, gives the first losses of the
shipped train log on any CPU. The k-means fit itself is reproduced bit for bit only on the machine that
made it (docs/demo.md, "What reproduces where"); a re-run on one machine is byte-identical, which
tests/test_end_to_end.py asserts of the tiny chain's pre-training (centres, model, head)."""

from __future__ import annotations

import hashlib
import json

import pytest
import yaml

from conftest import ROOT, run_snakemake, skip_without_synthesizers

SHIPPED = ROOT / "models" / "melhubert_demo"
RECIPE = ROOT / "configs" / "demo-model.yaml"
FIRST_STEPS = 5


def _losses(train_log, n):
    rows = [r.split("\t") for r in train_log.read_text().splitlines()[1:]]
    return [(int(r[0]), float(r[1])) for r in rows[:n]]


def test_the_shipped_model_matches_its_provenance_and_loads():
    from speaker_neurons.models import load_native

    prov = json.loads((SHIPPED / "PROVENANCE.json").read_text())
    for rel, digest in prov["sha256"].items():
        assert hashlib.sha256((SHIPPED / rel).read_bytes()).hexdigest() == digest, rel
    assert sum(p.stat().st_size for p in SHIPPED.rglob("*") if p.is_file()) <= 20 * 2**20
    recipe = yaml.safe_load(RECIPE.read_text())
    assert (SHIPPED / "recipe.yaml").read_text() == RECIPE.read_text()
    assert prov["steps"] == recipe["pretrain"]["train"]["max_steps"] and prov["stopped_by"] == "max_steps"
    assert prov["precision"] == "float32" and prov["corpus"]["source"] == "demo"
    assert prov["last_loss"] < prov["first_loss"] - 1.0  # it learned
    assert prov["reproducible"].keys() == {"same_machine", "given_targets", "kmeans_fit"}
    model = load_native(SHIPPED / "model")
    assert (model.num_layers, model.hidden_dim) == (4, 256)
    # the demo loads it as a native checkpoint
    demo = yaml.safe_load((ROOT / "config.yaml").read_text())
    entry = next(m for m in demo["models"] if m["name"] == "melhubert_demo")
    assert entry["source"] == "checkpoint" and (ROOT / entry["path"]).resolve() == (SHIPPED / "model").resolve()


# What reproduces across machines (benchmarks/kernel_reproducibility.py, docs/demo.md "What reproduces where"):
# from the shipped targets (pretrain.train.kmeans_centers), the first 5 losses equal the shipped log's to its
# 5 decimals on an Intel Xeon with AMX, both with its native kernels and with torch, oneDNN, MKL and OpenBLAS
# held to AVX2 (the frames' labels: 133,535 of 133,537 equal); with the k-means fitted again they move by up
# to 0.045 (native) and 0.20 (AVX2), since the fit itself moves with the kernels' float sums. 1e-3 is 100
# times the log's rounding and 45 times below the smallest of those moves.
LOSS_TOLERANCE = 1e-3


@pytest.mark.slow  # synthesizes the demo corpus and pre-trains a few steps
def test_the_recipe_reproduces_the_shipped_first_losses_from_the_shipped_targets(tmp_path):
    skip_without_synthesizers()
    few = tmp_path / "few_steps.yaml"  # over the recipe: its own results folder, the first steps, the shipped targets
    few.write_text(f"results: {tmp_path}/r\npretrain: {{train: {{max_steps: {FIRST_STEPS}, "
                   f"kmeans_centers: {SHIPPED / 'kmeans_centers.npy'}}}}}\n")
    res = run_snakemake("--cores", "2", "--configfile", str(RECIPE), str(few), "--",
                        f"{tmp_path}/r/models/melhubert_demo/model", timeout=1800)
    assert res.returncode == 0, (res.stdout + res.stderr)[-3000:]
    out = tmp_path / "r" / "models" / "melhubert_demo" / "pretrain"
    # the targets are the shipped ones, not a new fit
    assert (out / "kmeans_centers.npy").read_bytes() == (SHIPPED / "kmeans_centers.npy").read_bytes()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["kmeans"]["given_centers"] is True and "inertia" not in summary["kmeans"]
    again = _losses(out / "train_log.tsv", FIRST_STEPS)
    shipped = _losses(SHIPPED / "train_log.tsv", FIRST_STEPS)
    assert [s for s, _ in again] == list(range(1, FIRST_STEPS + 1))
    # the warm-up's learning rate does not depend on max_steps, so the first steps are the shipped run's
    for (s, a), (_, b) in zip(again, shipped):
        assert a == pytest.approx(b, abs=LOSS_TOLERANCE), (s, a, b)
