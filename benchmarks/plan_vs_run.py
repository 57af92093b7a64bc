"""The plan's estimates against a finished run's own measurements: per rule, the seconds and peak memory
that `python -m speaker_neurons plan` (speaker_neurons.costs) gives for every job of the config, beside
what Snakemake's benchmark files of that run measured (results/benchmarks/**.tsv: seconds, max_rss).

    .venv/bin/python benchmarks/plan_vs_run.py                          # the demo's results/
    .venv/bin/python benchmarks/plan_vs_run.py --configfile configs/demo-full.yaml

Run it in the checkout that made the run (the plan is that checkout's dry run with --forceall, so every
job is listed although the outputs exist). Estimated seconds and peak memory are what the job's
`runtime` and `mem_mb` requests are made from (`costs.rule_costs`: seconds, peak_mb), before their
headroom and floors. A ratio is estimate / measured; the target is within 2x
(0.5 to 2). Prints a table and the worst ratio.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from common import ROOT  # noqa: E402  (and the project on sys.path)
MIN_SECONDS = 2.0  # jobs shorter than this are listed but not judged


def measured(results: Path, rule: str, wc: dict[str, str]) -> tuple[float, float] | None:
    """(seconds, max RSS MB) of one job from its benchmark file, None where the run has none."""
    base = results / "benchmarks"
    if "model" in wc:
        folder = base / wc["model"]
    elif "corpus" in wc:
        folder = base / "corpora" / wc["corpus"]
    else:
        folder = base
    stem = rule + "".join(f"_k{wc[k]}" for k in ("k",) if k in wc)
    f = folder / f"{stem}.tsv"
    if not f.is_file():
        return None
    df = pd.read_csv(f, sep="\t")
    return float(df["s"].iloc[-1]), float(df["max_rss"].iloc[-1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--configfile", nargs="*", default=[])
    ap.add_argument("--results", type=Path, help="the run's folder (default: the config's results)")
    a = ap.parse_args()
    from speaker_neurons.plan import dry_run_jobs, merged_config, plan_rows

    cfg = merged_config(a.configfile, [])
    results = a.results or ROOT / cfg["results"]
    jobs = dry_run_jobs((["--configfile", *a.configfile] if a.configfile else []) + ["--forceall"])
    rows = []
    for r in plan_rows(cfg, jobs, str(results)):
        m = measured(results, r["rule"], r["wildcards"])
        if m is not None:
            rows.append({"rule": r["rule"], "est_s": r["seconds"], "run_s": m[0], "est_mb": r["peak_mb"],
                         "run_mb": m[1]})
    if not rows:
        raise SystemExit(f"no benchmark files under {results}/benchmarks: run the workflow first")
    df = pd.DataFrame(rows).groupby("rule", sort=False).agg(
        jobs=("rule", "size"), est_s=("est_s", "sum"), run_s=("run_s", "sum"), est_mb=("est_mb", "max"),
        run_mb=("run_mb", "max")).reset_index()
    short = df["run_s"] / df["jobs"] < MIN_SECONDS
    df["time_ratio"] = df["est_s"] / df["run_s"]
    df["mem_ratio"] = df["est_mb"] / df["run_mb"]
    print(f"run: {results} ({len(rows)} jobs with benchmark files); estimate / measured, target 0.5-2\n")
    print("| rule | jobs | est. s | measured s | ratio | est. peak MB | measured peak MB | ratio |")
    print("|---|---|---|---|---|---|---|---|")
    for r, brief in zip(df.itertuples(index=False), short):
        mark = " (too short to measure)" if brief else ""
        print(f"| {r.rule}{mark} | {r.jobs} | {r.est_s:.1f} | {r.run_s:.1f} | {r.time_ratio:.2f} | {r.est_mb:.0f} | "
              f"{r.run_mb:.0f} | {r.mem_ratio:.2f} |")
    print(f"\n(too short to measure: jobs of under {MIN_SECONDS:g} s, where Snakemake's benchmark, which samples "
          "the process tree, misses most of the job; left out of the ratios below)")
    df = df[~short]
    tot_e, tot_r = df["est_s"].sum(), df["run_s"].sum()
    print(f"\ntotal: estimated {tot_e:.0f} s, measured {tot_r:.0f} s (ratio {tot_e / tot_r:.2f}); time ratios "
          f"{df['time_ratio'].min():.2f}-{df['time_ratio'].max():.2f}, memory ratios "
          f"{df['mem_ratio'].min():.2f}-{df['mem_ratio'].max():.2f}")
    outside = df[(df["time_ratio"] < 0.5) | (df["time_ratio"] > 2) | (df["mem_ratio"] < 0.5) | (df["mem_ratio"] > 2)]
    print("outside 2x: " + (", ".join(outside["rule"]) if len(outside) else "none"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
