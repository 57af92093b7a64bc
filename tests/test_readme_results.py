"""scripts/readme_results.py: the README's demo figures are written from a run's summary.tsv, and a
README whose block differs from the summary is caught (--check)."""

from __future__ import annotations

import importlib.util

import pandas as pd

from conftest import ROOT

spec = importlib.util.spec_from_file_location("readme_results", ROOT / "scripts" / "readme_results.py")
rr = importlib.util.module_from_spec(spec)
spec.loader.exec_module(rr)


def _summary(tmp_path, gap=0.068):
    rows = [("controls", "input_only_gap_all", "m", gap, 0.027, 0.109, ""),
            ("controls", "ffn_dependence_all", "m", 0.009, -0.032, 0.05, ""),
            ("controls", "verdict", "m", None, None, None, "a comparison of pruning strategies cannot show anything"),
            ("controls", "pr_input_only_gap_all", "m", 0.243, 0.22, 0.266, ""),
            ("controls", "pr_verdict", "m", None, None, None, "the Transformer's layers add to PR"),
            ("pr", "per_all", "m", 0.412, 0.40, 0.425, ""), ("pr", "per_hidden_0", "m", 0.655, 0.64, 0.67, ""),
            ("sid", "accuracy_all", "m", 0.587, 0.557, 0.617, ""), ("sid", "eer_all", "m", 0.229, None, None, ""),
            ("sid", "accuracy_all", "m-l1-pset", 0.583, 0.551, 0.615, ""),
            ("pruning", "protected_minus_l1_all", "m-p - m-l1", 0.004, -0.006, 0.014, "no difference larger than 1.4 points"),
            ("pruning", "protected_minus_random_all", "m-p - m-r", 0.011, 0.002, 0.02, "protected keeps it better")]
    df = pd.DataFrame(rows, columns=["section", "metric", "model", "value", "ci_low", "ci_high", "note"])
    p = tmp_path / "summary.tsv"
    df.to_csv(p, sep="\t", index=False)
    return p


def test_the_block_is_written_from_the_summary_and_checked(tmp_path):
    summary = _summary(tmp_path)
    readme = tmp_path / "README.md"
    readme.write_text(f"# title\n\nbefore\n\n{rr.BEGIN}\nold figures\n{rr.END}\n\nafter\n")
    assert rr.main([str(summary), "--readme", str(readme), "--check"]) == 1  # stale
    assert rr.main([str(summary), "--readme", str(readme)]) == 0
    text = readme.read_text()
    assert text.startswith("# title\n\nbefore\n\n") and text.endswith("\n\nafter\n") and "old figures" not in text
    assert ("| m | +6.8 [+2.7, +10.9] | +0.9 [-3.2, +5.0] | +24.3 [+22.0, +26.6] | 41.2 [40.0, 42.5] | "
            "65.5 [64.0, 67.0] |") in text
    assert "m, PR: the Transformer's layers add to PR" in text
    assert "SID all layers, protected minus random, paired over the same test items: protected keeps it better" in text
    assert "| m-l1-pset | 58.3 [55.1, 61.5] | n/a | n/a |" in text and "| m | 58.7 [55.7, 61.7] | 22.9 |" in text
    assert "protected minus l1, paired over the same test items: no difference larger than 1.4 points" in text
    assert "cannot show anything" in text
    assert rr.main([str(summary), "--readme", str(readme), "--check"]) == 0
    # a new run with another figure makes the README stale again
    assert rr.main([str(_summary(tmp_path, gap=0.1)), "--readme", str(readme), "--check"]) == 1


def test_the_readme_has_the_block():
    text = (ROOT / "README.md").read_text()
    assert text.count(rr.BEGIN) == 1 and text.count(rr.END) == 1
