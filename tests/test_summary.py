"""The run's summary: verdicts from intervals, the pruning table and the files, from hand-made stage outputs."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from speaker_neurons import statistics, summary
from speaker_neurons.config import complete

CONTROLS = complete({})["controls"]


def _sid(acc, lo, hi, eer=0.1):
    rec = {"test_accuracy": acc, "test_ci95": [lo, hi], "lr": 0.01, "eer": eer, "target_trials": 10,
           "nontarget_trials": 90, "per_seed": [{"n": 200}, {"n": 200}]}
    return {"speakers": 4, "all": rec, "last": dict(rec, test_accuracy=acc - 0.1, test_ci95=[lo - 0.1, hi - 0.1])}


def _predictions(path, right: dict[str, int], n: int = 200, crops: int = 4) -> str:
    """A sid_eval predictions.tsv: per layer set, 2 head seeds, the first `right[set]` of `n` items right;
    item i is a crop of utterance i // crops."""
    rows = [{"layer_set": ls, "seed": sd, "item": i, "utt_id": f"u{i // crops}", "speaker": "s1",
             "prediction": "s1" if i < k else "s2", "correct": int(i < k)}
            for ls, k in right.items() for sd in (0, 1) for i in range(n)]
    pd.DataFrame(rows).to_csv(path, sep="\t", index=False)
    return str(path)


def test_build_summary(tmp_path):
    def w(name, obj):
        (tmp_path / name).write_text(json.dumps(obj))
        return str(tmp_path / name)

    models = [{"name": "m", "source": "pretrain", "sid": w("m.json", _sid(0.80, 0.78, 0.82)),
               "erase": w("e.json", {"ssl_cluster": {"neurons": 12, "all": {
                   "all": {"delta": -0.05, "delta_ci95": [-0.07, -0.03], "n": 200, "random_delta_mean": -0.01,
                           "random_delta_range": [-0.02, 0.0], "accuracy": 0.75}}}, "unerased": {}, "k_ssl": 3})}]
    for strategy, acc, lost in (("l1", 0.60, 3), ("protected", 0.70, 0), ("random", 0.50, 5)):
        models.append({"name": f"m-{strategy}-pset", "source": "prune", "parent": "m", "strategy": strategy,
                       "target": "protected_size", "sid": w(f"{strategy}.json", _sid(acc, acc - 0.02, acc + 0.02)),
                       "sid_predictions": _predictions(tmp_path / f"{strategy}.tsv",
                                                       {"all": int(200 * acc), "last": int(200 * (acc - 0.1))}),
                       "prune": w(f"{strategy}.prune.json", {"kept_total": 30, "width_total": 100,
                                                             "protected_lost_total": 0, "sets_lost": {
                                                                 "ivector_cluster": {"total": 8, "kept": 8 - lost,
                                                                                     "lost": lost}}})})
    (tmp_path / "purity.tsv").write_text("ivector_cluster\tF\tM\tmajority\tpurity\n0\t90\t10\tF\t0.9\n1\t5\t95\tM\t0.95\n")
    out = summary.build_summary(models, None, tmp_path / "purity.tsv", 3, tmp_path / "s.tsv", tmp_path / "s.md",
                                tmp_path / "s.png", controls=CONTROLS, out_paired_png=tmp_path / "d.png")
    t = pd.read_csv(tmp_path / "s.tsv", sep="\t")
    assert out["rows"] == len(t)
    row = t[(t["metric"] == "accuracy_all") & (t["model"] == "m-protected-pset")].iloc[0]
    assert row["value"] == pytest.approx(0.70) and row["paper"] == pytest.approx(0.6296) and row["n"] == 200
    d = t[t["metric"] == "protected_minus_l1_all"].iloc[0]
    # paired over the same 200 items (50 utterances of 4 crops): 140 - 120 right
    assert d["value"] == pytest.approx(0.10) and d["model"] == "m-protected-pset - m-l1-pset" and d["n"] == 50
    assert d["ci_low"] > 0 and d["note"].startswith("protected keeps it better than l1: +10.0 points")
    assert t[t["metric"] == "protected_minus_random_last"].iloc[0]["note"].startswith("protected keeps it better")
    assert t[t["metric"] == "l1_minus_random_all"].iloc[0]["value"] == pytest.approx(0.10)
    e = t[t["section"] == "erase"].iloc[0]
    assert e["value"] == pytest.approx(-0.05) and e["paper"] == pytest.approx(-0.0382)
    p = t[t["metric"] == "purity_cluster1"].iloc[0]
    assert p["value"] == pytest.approx(0.95) and p["paper"] == pytest.approx(0.9723)
    md = (tmp_path / "s.md").read_text()
    assert "m, target protected_size (kept 30.0%), SID all, protected - l1: protected keeps it better than l1: " \
           "+10.0 points [" in md
    assert (tmp_path / "d.png").stat().st_size > 5000
    assert "| m-l1-pset | l1 | 30.0% | 3 of 8 (38%) |  |" in md
    lost = t[t["metric"] == "ivector_cluster_lost"].set_index("model")["value"]
    assert lost.to_dict() == {"m-l1-pset": 3, "m-protected-pset": 0, "m-random-pset": 5}
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


def test_heads_at_the_edge_of_their_sweep_or_at_the_last_step_are_flagged(tmp_path):
    def rec(lr, best, eval_every=50):
        return {"test_accuracy": 0.5, "test_ci95": [0.4, 0.6], "lr": lr, "lr_swept": True, "steps": 300,
                "eval_every": eval_every, "dev_accuracy": {"0.1": 0.3, "0.01": 0.5, "0.001": 0.4},
                "per_seed": [{"n": 10, "best_step": b} for b in best]}
    sid = {"all": rec(0.01, [150, 300]), "last": rec(0.001, [100, 200]), "mid": rec(0.01, [100, 250]),
           "no_dev": rec(0.01, [300, 300], eval_every=None), "one_of_three": rec(0.01, [100, 300, 200])}
    pr = {"steps": 400, "layer_sets": {"all": {"test_per": 0.3, "test_ci95": [0.2, 0.4], "lr": 0.1, "lr_swept": True,
                                                "dev_per": {"0.1": 0.3, "0.01": 0.5}, "test_utterances": 5,
                                                "per_seed": [{"per": 0.3, "best_step": 100}]}}}
    (tmp_path / "sid.json").write_text(json.dumps(sid))
    (tmp_path / "pr.json").write_text(json.dumps(pr))
    flags = summary.head_flags([{"name": "m", "sid": tmp_path / "sid.json", "pr": tmp_path / "pr.json"}])
    got = {(task, ls): what for task, _, ls, what in flags}
    assert set(got) == {("sid", "all"), ("sid", "last"), ("sid", "no_dev"), ("pr", "all")}
    assert got[("sid", "all")].startswith("best dev step is the last one (300 of 300) for 1 of 2 head seeds")
    assert got[("sid", "last")].startswith("picked the lowest learning rate of its sweep (0.001, 0.01, 0.1)")
    assert "sid.eval_every is null" in got[("sid", "no_dev")]
    assert got[("pr", "all")].startswith("picked the highest learning rate")
    # a rate taken from the parent (sid.sweep: base) was not swept here: no edge to flag
    sid["last"]["lr_swept"] = False
    (tmp_path / "sid.json").write_text(json.dumps(sid))
    assert ("sid", "last") not in {(t, ls) for t, _, ls, _ in summary.head_flags([{"name": "m", "sid": tmp_path / "sid.json"}])}


def test_summary_says_which_partition_the_sets_rest_on_and_what_the_others_change(tmp_path):
    stab = {"k": 2, "n_init": 100, "warn_below": 0.9, "min_ari": 0.7, "stable": False, "rests_on": "consensus",
            "partition_choice": "auto", "kmeans_seeds": {"seeds": [1], "ari": [1.0], "min_ari": 1.0},
            "extractor_seeds": {"seeds": [1, 2], "ari": [0.7, 0.95], "min_ari": 0.7},
            "consensus": {"partitions": 3, "leave_one_out": [0.8, 0.96, 1.0], "min_leave_one_out": 0.8,
                          "ari_vs_chosen": 0.93, "stable": False}}
    (tmp_path / "stab.json").write_text(json.dumps(stab))
    rows = [("extractor_seed_0", "1", 10, 8, 6), ("extractor_seed_0", "total", 10, 8, 6),
            ("extractor_seed_1", "1", 10, 12, 10), ("extractor_seed_1", "total", 10, 12, 10),
            ("consensus", "1", 10, 10, 10), ("consensus", "total", 10, 10, 10)]
    pd.DataFrame([{"partition": p, "layer": l, "rests_on": a, "other": b, "both": c, "jaccard": round(c / (a + b - c), 4)}
                  for p, l, a, b, c in rows]).to_csv(tmp_path / "parts.tsv", sep="\t", index=False)
    models = [{"name": "m", "source": "checkpoint", "ivector_partitions": str(tmp_path / "parts.tsv")}]
    summary.build_summary(models, None, None, 3, tmp_path / "s.tsv", tmp_path / "s.md", tmp_path / "s.png",
                          stability=tmp_path / "stab.json", controls=CONTROLS)
    md = (tmp_path / "s.md").read_text()
    assert "(**UNSTABLE**: the neuron sets rest on the consensus instead)" in md
    assert "the neuron sets rest on the **consensus** partition (analysis.ivector_partition: auto; the extractor " \
           "seeds disagree)" in md
    assert "leaving one extractor out, the consensus agrees at least at an adjusted Rand index of 0.800 (**UNSTABLE**" in md
    assert "Jaccard 0.50-0.83 (lowest: extractor_seed_0, 6 of 10 used and 8 of its own in both)" in md
    t = pd.read_csv(tmp_path / "s.tsv", sep="\t")
    j = t[t["metric"].str.startswith("speaker_neurons_jaccard_")].set_index("metric")["value"]
    assert j.to_dict() == pytest.approx({"speaker_neurons_jaccard_extractor_seed_0": 0.5,
                                         "speaker_neurons_jaccard_extractor_seed_1": 0.8333,
                                         "speaker_neurons_jaccard_consensus": 1.0})
    assert t[t["metric"] == "consensus_stability_ari"]["value"].tolist() == [0.8]
