"""Kill anywhere (docs/usage.md, "When things go wrong"): every long stage SIGKILLed at a seeded point of its
work (before, during or after its first checkpoint or store block, or while it writes an output), then the
workflow run again, ends with every file of the results folder byte-identical to the uninterrupted run's
(wall-time files aside), nothing lost and nothing left over.

The harness is benchmarks/kill_anywhere.py (which runs every point, at the demo's size); here one point per
stage, drawn with a fixed seed from that stage's points, on the tiny configuration cut to one head per task
(tests/configs/kill.yaml)."""

from __future__ import annotations

import random
import sys

import pytest
from conftest import ROOT, TINY, TINY_CORPORA, run_snakemake, seed_corpora

sys.path.insert(0, str(ROOT / "benchmarks"))
import kill_anywhere  # noqa: E402

pytestmark = pytest.mark.slow

KILL = ROOT / "tests" / "configs" / "kill.yaml"
SEED = 34  # which point of each stage make test runs (the benchmark runs them all)
CASES = [(rule, *random.Random(SEED * 1000 + i).choice(points)) for i, (rule, _, points) in
         enumerate(kill_anywhere.POINTS)]


@pytest.fixture(scope="module")
def uninterrupted(tiny_corpora, tmp_path_factory):
    """(results folder, its config arguments, the sha256 of every file, the targets): the whole tiny chain of
    tests/configs/kill.yaml, run once without interruption; every case kills and reruns one job in it."""
    from speaker_neurons.plan import merged_config

    results = tmp_path_factory.mktemp("kill_anywhere") / "results"
    seed_corpora(tiny_corpora, results, TINY_CORPORA)
    config = ["--configfile", str(TINY), str(KILL), "--config", f"results={results}"]
    res = run_snakemake("--cores", "2", *config)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    targets = kill_anywhere.targets(results, merged_config([str(TINY), str(KILL)], [f"results={results}"]))
    return results, config, kill_anywhere.digests(results), targets


@pytest.mark.parametrize("rule,site,n", CASES, ids=[f"{r}-{s}{n}" for r, s, n in CASES])
def test_a_job_killed_anywhere_reruns_to_the_same_bytes(uninterrupted, rule, site, n):
    results, config, reference, targets = uninterrupted
    row = kill_anywhere.kill_and_rerun(config, results, rule, targets[rule], site, n, reference)
    assert row["killed"], f"the job was not killed at {site}:{n}: {row['why']}"
    assert row["rerun_ok"], row["why"]
    assert row["differences"] == "none", row["differences"]
