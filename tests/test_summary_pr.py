"""Phoneme recognition in the run's summary, from hand-made stage outputs: the PER table per strategy
and width, the verdicts in the direction of Property Neurons (protected keeps PER lower), the erase
ablation's PER change, and the corpus of every figure."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from speaker_neurons import summary
from speaker_neurons.config import complete

CONTROLS = complete({})["controls"]


def _pr(per, lo, hi):
    rec = {"test_per": per, "test_ci95": [lo, hi], "lr": 0.01, "per_seed": [{"per": per}, {"per": per}],
           "test_utterances": 50, "test_phones": 1500}
    return {"corpus": "ev", "layer_sets": {"all": rec, "last": dict(rec, test_per=per + 0.1, test_ci95=[lo + 0.1, hi + 0.1])}}


def _predictions(path, per: float, n: int = 50, phones: int = 30) -> str:
    """A pr_eval predictions.tsv: every test utterance with `phones` reference phones and per * phones
    edits in layer set all (+3 in last), 2 head seeds."""
    rows = [{"layer_set": ls, "seed": sd, "utt_id": f"u{i}", "speaker": "s", "edits": round(per * phones) + extra,
             "ref_phones": phones, "hypothesis": "AA B"} for ls, extra in (("all", 0), ("last", 3))
            for sd in (0, 1) for i in range(n)]
    pd.DataFrame(rows).to_csv(path, sep="\t", index=False)
    return str(path)


def test_pr_rows_verdicts_and_corpora(tmp_path):
    def w(name, obj):
        (tmp_path / name).write_text(json.dumps(obj))
        return str(tmp_path / name)

    erase = {"k_ssl": 3, "unerased": {}, "pr": {"ssl_cluster": {"neurons": 12, "all": {
        "per": 0.33, "delta_per": 0.03, "delta_ci95": [0.01, 0.05], "n": 50, "random_delta_mean": 0.005,
        "random_delta_range": [0.0, 0.01]}}, "unerased": {"all": {"per": 0.3, "ci95": [0.28, 0.32], "n": 50}}}}
    models = [{"name": "m", "source": "pretrain", "pr": w("m.json", _pr(0.30, 0.28, 0.32)), "erase": w("e.json", erase)}]
    for strategy, per in (("l1", 0.50), ("protected", 0.40), ("random", 0.60)):
        models.append({"name": f"m-{strategy}-pset", "source": "prune", "parent": "m", "strategy": strategy,
                       "target": "protected_size", "pr": w(f"{strategy}.json", _pr(per, per - 0.02, per + 0.02)),
                       "pr_predictions": _predictions(tmp_path / f"{strategy}.tsv", per),
                       "prune": w(f"{strategy}.prune.json", {"kept_total": 30, "width_total": 100,
                                                             "protected_lost_total": 0})})
    corpora = {"analysis": "ana", "pretrain": "ana", "sid": "ev", "pr": "ev"}
    summary.build_summary(models, None, None, 3, tmp_path / "s.tsv", tmp_path / "s.md", tmp_path / "s.png",
                          controls=CONTROLS, out_pr_png=tmp_path / "p.png", corpora=corpora)
    t = pd.read_csv(tmp_path / "s.tsv", sep="\t", keep_default_na=False)
    row = t[(t["section"] == "pr") & (t["metric"] == "per_all") & (t["model"] == "m")].iloc[0]
    assert float(row["value"]) == pytest.approx(0.30) and float(row["paper"]) == pytest.approx(0.0817)
    assert row["corpus"] == "ev" and int(row["n"]) == 50
    d = t[(t["section"] == "pr_pruning") & (t["metric"] == "protected_minus_l1_all")].iloc[0]
    # protected keeps PER lower, paired over the same 50 utterances
    assert float(d["value"]) == pytest.approx(-0.10) and d["note"].startswith("protected keeps it better than l1")
    assert int(d["n"]) == 50 and d["model"] == "m-protected-pset - m-l1-pset"
    r = t[(t["section"] == "pr_pruning") & (t["metric"] == "protected_minus_random_last")].iloc[0]
    assert r["note"].startswith("protected keeps it better") and float(r["value"]) == pytest.approx(-0.20)
    e = t[t["section"] == "erase_pr"].iloc[0]
    assert float(e["value"]) == pytest.approx(0.03) and e["metric"] == "ssl_cluster|all" and e["corpus"] == "ev"
    md = (tmp_path / "s.md").read_text()
    assert "analysis on **ana**" in md and "as in the paper" in md
    assert "| m-l1-pset | 30.0% | 50.0 [48.0, 52.0] | " in md
    assert "PER all, protected - l1: protected keeps it better than l1: -10.0 points [-10.0, -10.0]" in md
    assert "erase ssl_cluster (12 neurons), PER all: +3.00 [+1.00, +5.00] points (random +0.50)" in md
    assert (tmp_path / "p.png").stat().st_size > 5000


def test_an_evaluation_on_the_analysis_corpus_is_said(tmp_path):
    summary.build_summary([], None, None, 3, tmp_path / "s.tsv", tmp_path / "s.md", tmp_path / "s.png",
                          controls=CONTROLS, out_pr_png=tmp_path / "p.png",
                          corpora={"analysis": "c", "pretrain": "c", "sid": "c"})
    assert "**an evaluation runs on the corpus the neurons are found on**" in (tmp_path / "s.md").read_text()
    assert (tmp_path / "p.png").exists()


def _seeded(pers, half):
    """A pr.json layer-set entry of per-seed PERs, each with a bootstrap interval of +-half."""
    import numpy as np

    return {"test_per": float(np.mean(pers)), "test_ci95": [0, 1], "lr": 0.01, "test_utterances": 40,
            "test_phones": 900, "per_seed": [{"per": p, "ci95": [p - half, p + half],
                                              "dev_curve": [[50, p + 0.2], [100, p + 0.05], [150, p]]}
                                             for p in pers]}


def test_per_difference_interval_adds_seed_spread_and_sampling():
    from speaker_neurons.statistics import per_difference_interval

    a, b = _seeded([0.80, 0.82, 0.78], 0.0), _seeded([0.50, 0.50, 0.50], 0.0)
    d, lo, hi = per_difference_interval(a, b)
    # seeds only: s = 0.02, s^2 / 3 on one side
    assert d == pytest.approx(0.30) and hi - d == pytest.approx(1.959964 * (0.02 ** 2 / 3) ** 0.5, rel=1e-5)
    d2, lo2, hi2 = per_difference_interval(_seeded([0.8] * 3, 0.0196), _seeded([0.5] * 3, 0.0196))
    # sampling only: each side's bootstrap half-width 0.0196 is sd 0.01, the seeds score the same utterances
    assert d2 == pytest.approx(0.30) and hi2 - d2 == pytest.approx(1.959964 * (2 * 0.01 ** 2) ** 0.5, rel=1e-3)


@pytest.mark.parametrize("h0,verdict", [(0.80, "layers add"), (0.52, "cannot show")])
def test_the_pr_positive_control_is_reported_beside_sids(tmp_path, h0, verdict):
    res = {"corpus": "ev", "layer_sets": {"all": _seeded([0.50, 0.51, 0.49], 0.02),
                                          "hidden_0": _seeded([h0, h0 + 0.01, h0 - 0.01], 0.02)}}
    (tmp_path / "m.json").write_text(json.dumps(res))
    models = [{"name": "m", "source": "checkpoint", "pr": str(tmp_path / "m.json")}]
    summary.build_summary(models, None, None, 3, tmp_path / "s.tsv", tmp_path / "s.md", tmp_path / "s.png",
                          controls=CONTROLS, out_pr_png=tmp_path / "p.png", out_pr_dev_png=tmp_path / "dev.png",
                          corpora={"analysis": "a", "sid": "ev", "pr": "ev"})
    t = pd.read_csv(tmp_path / "s.tsv", sep="\t", keep_default_na=False)
    row = t[(t["section"] == "controls") & (t["metric"] == "pr_input_only_gap_all")].iloc[0]
    assert float(row["value"]) == pytest.approx(h0 - 0.50) and float(row["ci_low"]) < h0 - 0.50
    v = t[(t["section"] == "controls") & (t["metric"] == "pr_verdict")].iloc[0]["note"]
    assert verdict in v
    md = (tmp_path / "s.md").read_text()
    head = md.split("## i-vector clusters")[0]  # the controls come first
    assert f"**m**, phoneme recognition: PER 50.0% from all layers vs {100 * h0:.1f}% from hidden_0" in head
    assert (tmp_path / "dev.png").stat().st_size > 5000


def test_pr_vs_width_says_when_no_pruned_model_has_pr(tmp_path, monkeypatch):
    seen = []
    monkeypatch.setattr(summary, "plot_vs_width", lambda table, png, *a, **k: seen.append((len(table), a[-1])))
    row = {"model": "m", "parent": "m", "strategy": "none", "target": "none", "kept_share": 1.0, "layer_set": "all",
           "per": 0.77, "per_ci_low": 0.76, "per_ci_high": 0.78}
    summary.plot_pr_vs_width(pd.DataFrame([row]), tmp_path / "p.png")
    pruned = dict(row, model="m-l1-pset", strategy="l1", target="protected_size", kept_share=0.4)
    summary.plot_pr_vs_width(pd.DataFrame([row, pruned]), tmp_path / "p.png")
    assert seen[0][0] == 0 and "pr.pruned_models: false" in seen[0][1]
    assert seen[1][0] == 2
