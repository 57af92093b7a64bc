"""Write the README's "What the demo shows" figures from a run's summary.tsv, so they cannot go stale:

    python scripts/readme_results.py results/summary.tsv            # rewrite the block in README.md
    python scripts/readme_results.py results/summary.tsv --check    # exit 1 when the README's block differs

The block lies between the lines `<!-- demo-results:begin -->` and `<!-- demo-results:end -->`; nothing
else of the README is touched. It holds the positive controls of every model of the config (SID's
input-only gap and FFN dependence, PR's input-only gap and its two PERs, with the verdicts), SID and PER of
each model, and the protected-vs-l1 and protected-vs-random differences at each width, each with its 95% interval, as summary.tsv gives them.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import pandas as pd

BEGIN, END = "<!-- demo-results:begin -->", "<!-- demo-results:end -->"
ROOT = Path(__file__).resolve().parents[1]


def _pct(v, lo=None, hi=None, signed=False) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "n/a"
    f = "{:+.1f}" if signed else "{:.1f}"
    s = f.format(100 * v)
    if lo is not None and hi is not None and not (math.isnan(lo) or math.isnan(hi)):
        s += f" [{f.format(100 * lo)}, {f.format(100 * hi)}]"
    return s


def render(summary: pd.DataFrame, source: str) -> str:
    s = summary
    get = lambda sec, metric, model: s[(s.section == sec) & (s.metric == metric) & (s.model == model)]  # noqa: E731
    lines = [BEGIN, f"Figures of the last demo run, written by `scripts/readme_results.py` from `{source}` "
                    "(95% intervals; points are percentage points).", ""]
    roots = [m for m in s.loc[s.section == "controls", "model"].unique() if m]
    if roots:
        lines += ["| model | SID input-only gap | SID FFN dependence | PR input-only gap | PER all layers (%) | "
                  "PER input only (%) |", "|---|---|---|---|---|---|"]
        for m in roots:
            gap, dep = get("controls", "input_only_gap_all", m), get("controls", "ffn_dependence_all", m)
            pgap = get("controls", "pr_input_only_gap_all", m)
            pa, p0 = get("pr", "per_all", m), get("pr", "per_hidden_0", m)
            cell = lambda r, signed=False: _pct(*r[["value", "ci_low", "ci_high"]].iloc[0], signed=signed) \
                if len(r) else "n/a"  # noqa: E731
            lines.append(f"| {m} | {cell(gap, True)} | {cell(dep, True)} | {cell(pgap, True)} | {cell(pa)} | "
                         f"{cell(p0)} |")
        for m in roots:
            for metric, task in (("verdict", "SID"), ("pr_verdict", "PR")):
                v = get("controls", metric, m)
                if len(v) and isinstance(v.note.iloc[0], str) and v.note.iloc[0]:
                    lines += ["", f"{m}, {task}: {v.note.iloc[0]}"]
        lines.append("")
    sid = s[(s.section == "sid") & (s.metric == "accuracy_all")]
    if len(sid):
        lines += ["| model | SID all layers (%) | EER all layers (%) | PER all layers (%) |", "|---|---|---|---|"]
        for r in sid.itertuples():
            eer = get("sid", "eer_all", r.model)
            per = get("pr", "per_all", r.model)
            lines.append(f"| {r.model} | {_pct(r.value, r.ci_low, r.ci_high)} | "
                         f"{_pct(eer.value.iloc[0]) if len(eer) else 'n/a'} | "
                         f"{_pct(*per[['value', 'ci_low', 'ci_high']].iloc[0]) if len(per) else 'n/a'} |")
        lines.append("")
    pairs = ["protected_minus_l1_all", "protected_minus_random_all", "l1_minus_random_all"]
    prune = s[(s.section == "pruning") & s.metric.isin(pairs)]
    for r in prune.itertuples():
        a, b = r.metric.rsplit("_", 1)[0].split("_minus_", 1)
        verdict = r.note if isinstance(r.note, str) and r.note else f"{_pct(r.value, r.ci_low, r.ci_high, signed=True)} points"
        lines.append(f"- SID all layers, {a} minus {b}, paired over the same test items: {verdict}")
    lines.append(END)
    return "\n".join(lines)


def replace_block(readme: str, block: str) -> str:
    if BEGIN not in readme or END not in readme:
        raise SystemExit(f"README has no {BEGIN} ... {END} block")
    a, b = readme.index(BEGIN), readme.index(END) + len(END)
    return readme[:a] + block + readme[b:]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("summary", type=Path, help="a run's summary.tsv (results/summary.tsv)")
    ap.add_argument("--readme", type=Path, default=ROOT / "README.md")
    ap.add_argument("--check", action="store_true", help="exit 1 when the README's block is not what the summary gives")
    a = ap.parse_args(argv)
    summary = pd.read_csv(a.summary, sep="\t", keep_default_na=True)
    path = a.summary.resolve()
    source = str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else a.summary.name
    text = a.readme.read_text()
    new = replace_block(text, render(summary, source))
    if a.check:
        if new != text:
            print(f"{a.readme}: the demo figures differ from {a.summary}; run scripts/readme_results.py", file=sys.stderr)
            return 1
        return 0
    a.readme.write_text(new)
    return 0


if __name__ == "__main__":
    sys.exit(main())
