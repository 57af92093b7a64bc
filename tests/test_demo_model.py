"""The shipped demo model (models/melhubert_demo/, made by `make demo-model` from configs/demo-model.yaml):
its files match their provenance, it loads as the demo loads it, and its recipe, re-run for a few steps
on a fresh synthesis of the demo corpus, gives the first losses of the shipped train log."""

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
    model = load_native(SHIPPED / "model")
    assert (model.num_layers, model.hidden_dim) == (4, 256)
    # the demo loads it as a native checkpoint
    demo = yaml.safe_load((ROOT / "config.yaml").read_text())
    entry = next(m for m in demo["models"] if m["name"] == "melhubert_demo")
    assert entry["source"] == "checkpoint" and (ROOT / entry["path"]).resolve() == (SHIPPED / "model").resolve()


@pytest.mark.slow  # synthesizes the demo corpus and pre-trains a few steps
def test_the_recipe_reproduces_the_shipped_first_losses(tmp_path):
    skip_without_synthesizers()
    few = tmp_path / "few_steps.yaml"  # over the recipe: its own results folder and only the first steps
    few.write_text(f"results: {tmp_path}/r\npretrain: {{train: {{max_steps: {FIRST_STEPS}}}}}\n")
    res = run_snakemake("--cores", "2", "--configfile", str(RECIPE), str(few), "--",
                        f"{tmp_path}/r/models/melhubert_demo/model", timeout=1800)
    assert res.returncode == 0, (res.stdout + res.stderr)[-3000:]
    again = _losses(tmp_path / "r" / "models" / "melhubert_demo" / "pretrain" / "train_log.tsv", FIRST_STEPS)
    shipped = _losses(SHIPPED / "train_log.tsv", FIRST_STEPS)
    assert [s for s, _ in again] == list(range(1, FIRST_STEPS + 1))
    # the warm-up's learning rate does not depend on max_steps, so the first steps are the shipped run's;
    # float32 on any CPU: equal up to the last bits of float sums
    for (s, a), (_, b) in zip(again, shipped):
        assert a == pytest.approx(b, abs=2e-3), (s, a, b)
