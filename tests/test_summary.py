"""The run's summary: verdicts from intervals, the pruning table and the files, from hand-made stage outputs."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from speaker_neurons import summary


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
                                tmp_path / "s.png")
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
