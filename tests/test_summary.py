"""The run's summary: verdicts from intervals, the pruning table and the files, from hand-made stage outputs."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from speaker_neurons import statistics, summary
from speaker_neurons.config import complete

CONTROLS = complete({})["controls"]


@pytest.mark.parametrize("a,a_ci,b,b_ci,expect", [
    (0.63, (0.60, 0.66), 0.54, (0.51, 0.57), "holds"),
    (0.50, (0.47, 0.53), 0.60, (0.57, 0.63), "reversed"),
    (0.60, (0.55, 0.65), 0.58, (0.53, 0.63), "same direction, but the intervals overlap"),
    (0.58, (0.53, 0.63), 0.60, (0.55, 0.65), "opposite direction"),
])
def test_verdict(a, a_ci, b, b_ci, expect):
    assert summary.verdict(a, a_ci, b, b_ci).startswith(expect)


def _sid(acc, lo, hi, eer=0.1):
    rec = {"test_accuracy": acc, "test_ci95": [lo, hi], "lr": 0.01, "eer": eer, "target_trials": 10,
           "nontarget_trials": 90, "per_seed": [{"n": 200}, {"n": 200}]}
    return {"speakers": 4, "all": rec, "last": dict(rec, test_accuracy=acc - 0.1, test_ci95=[lo - 0.1, hi - 0.1])}


def test_build_summary(tmp_path):
    def w(name, obj):
        (tmp_path / name).write_text(json.dumps(obj))
        return str(tmp_path / name)

    models = [{"name": "m", "source": "pretrain", "sid": w("m.json", _sid(0.80, 0.78, 0.82)),
               "erase": w("e.json", {"ssl_cluster": {"neurons": 12, "all": {
                   "all": {"delta": -0.05, "delta_ci95": [-0.07, -0.03], "n": 200, "random_delta_mean": -0.01,
                           "random_delta_range": [-0.02, 0.0], "accuracy": 0.75}}}, "unerased": {}, "k_ssl": 3})}]
    for strategy, acc in (("l1", 0.60), ("protected", 0.70), ("random", 0.50)):
        models.append({"name": f"m-{strategy}-pset", "source": "prune", "parent": "m", "strategy": strategy,
                       "target": "protected_size", "sid": w(f"{strategy}.json", _sid(acc, acc - 0.02, acc + 0.02)),
                       "prune": w(f"{strategy}.prune.json", {"kept_total": 30, "width_total": 100,
                                                             "protected_lost_total": 0})})
    (tmp_path / "purity.tsv").write_text("ivector_cluster\tF\tM\tmajority\tpurity\n0\t90\t10\tF\t0.9\n1\t5\t95\tM\t0.95\n")
    out = summary.build_summary(models, None, tmp_path / "purity.tsv", 3, tmp_path / "s.tsv", tmp_path / "s.md",
                                tmp_path / "s.png", controls=CONTROLS)
    t = pd.read_csv(tmp_path / "s.tsv", sep="\t")
    assert out["rows"] == len(t)
    row = t[(t["metric"] == "accuracy_all") & (t["model"] == "m-protected-pset")].iloc[0]
    assert row["value"] == pytest.approx(0.70) and row["paper"] == pytest.approx(0.6296) and row["n"] == 200
    d = t[t["metric"] == "protected_minus_l1_all"].iloc[0]
    assert d["value"] == pytest.approx(0.10) and d["note"].startswith("holds")
    assert t[t["metric"] == "protected_minus_random_last"].iloc[0]["note"].startswith("holds")
    e = t[t["section"] == "erase"].iloc[0]
    assert e["value"] == pytest.approx(-0.05) and e["paper"] == pytest.approx(-0.0382)
    p = t[t["metric"] == "purity_cluster1"].iloc[0]
    assert p["value"] == pytest.approx(0.95) and p["paper"] == pytest.approx(0.9723)
    md = (tmp_path / "s.md").read_text()
    assert "protected 70.0% vs l1 60.0% (+10.0 points): holds" in md
    assert "| m-l1-pset | 30.0% | 60.0 [58.0, 62.0] |" in md
    assert (tmp_path / "s.png").stat().st_size > 5000
    table = summary.pruning_table(models)
    assert table[table["strategy"] == "none"]["kept_share"].tolist() == [1.0, 1.0]


def _seeds(accs, n):
    import numpy as np

    return {"test_accuracy": float(np.mean(accs)), "test_ci95": [min(accs), max(accs)], "lr": 0.01, "eer": 0.1,
            "per_seed": [{"seed": i, "accuracy": a, "n": n} for i, a in enumerate(accs)]}


def test_difference_interval_adds_seed_spread_and_test_sampling():
    import math

    a, b = _seeds([0.80, 0.82, 0.84], 400), _seeds([0.60, 0.60, 0.60], 400)
    d, lo, hi = statistics.difference_interval(a, b)
    var = (0.02 ** 2) / 3 + 0.82 * 0.18 / 400 + 0.6 * 0.4 / 400  # s^2 / seeds (ddof 1) + binomial, both sides
    assert d == pytest.approx(0.22)
    assert hi - d == pytest.approx(1.959963984540054 * math.sqrt(var)) and d - lo == pytest.approx(hi - d)
    # more test segments, narrower
    assert statistics.difference_interval(_seeds([0.8] * 3, 4000), _seeds([0.6] * 3, 4000))[1] > lo


@pytest.mark.parametrize("base,ctrl,h0,expect", [
    ([0.80, 0.81, 0.79], [0.50, 0.51, 0.49], [0.40, 0.40, 0.41], "can differ here"),
    ([0.80, 0.81, 0.79], [0.79, 0.80, 0.80], [0.40, 0.40, 0.41], "cannot show anything"),
    ([0.80, 0.81, 0.79], [0.50, 0.51, 0.49], [0.79, 0.80, 0.80], "adds nothing measurable to its input"),
])
def test_controls_section(tmp_path, base, ctrl, h0, expect):
    def w(name, obj):
        (tmp_path / name).write_text(json.dumps(obj))
        return str(tmp_path / name)

    models = [{"name": "m", "source": "pretrain",
               "sid": w("m.json", {"all": _seeds(base, 1000), "hidden_0": _seeds(h0, 1000)})},
              {"name": "m-noffn", "source": "prune", "parent": "m", "strategy": "control", "target": 0.02,
               "sid": w("c.json", {"all": _seeds(ctrl, 1000), "hidden_0": _seeds(h0, 1000)}),
               "prune": w("c.prune.json", {"kept_total": 2, "width_total": 100, "protected_lost_total": 0})}]
    controls = {"ffn_keep": 0.02, "min_ffn_dependence": 0.05, "min_input_gap": 0.05}
    summary.build_summary(models, None, None, 3, tmp_path / "s.tsv", tmp_path / "s.md", tmp_path / "s.png",
                          controls=controls)
    t = pd.read_csv(tmp_path / "s.tsv", sep="\t")
    dep = t[t["metric"] == "ffn_dependence_all"].iloc[0]
    assert dep["model"] == "m" and dep["value"] == pytest.approx(sum(base) / 3 - sum(ctrl) / 3, abs=1e-5)
    assert dep["ci_low"] < dep["value"] < dep["ci_high"]
    gap = t[t["metric"] == "input_only_gap_all"].iloc[0]
    assert gap["value"] == pytest.approx(sum(base) / 3 - sum(h0) / 3, abs=1e-5)
    verdict = t[t["metric"] == "verdict"].iloc[0]["note"]
    assert expect in verdict
    md = (tmp_path / "s.md").read_text()
    assert md.index("## Positive controls") < md.index("## Speaker identification")  # the first line to read
    assert expect in md
    assert t[(t["section"] == "pruning")].empty  # the control is no pruning strategy to compare
