"""Wall time of the demo and of each of its stages, on this machine.

    .venv/bin/python benchmarks/demo_stage_times.py                  # runs the demo into a fresh folder
    .venv/bin/python benchmarks/demo_stage_times.py --results DIR    # reports a finished run only

Runs `snakemake --cores N` on the default config (results in a new folder under benchmarks/out/ unless
--results names one that exists), then prints one row per job from Snakemake's benchmark files
(results/benchmarks/**.tsv: seconds, peak RSS) and the measured wall time of the whole run. Jobs run
in parallel where the DAG allows, so the stage times add up to more than the wall time.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd

from common import ROOT  # noqa: E402  (and the project on sys.path)


def stage_table(results: Path) -> pd.DataFrame:
    rows = []
    for tsv in sorted((results / "benchmarks").rglob("*.tsv")):
        df = pd.read_csv(tsv, sep="\t")
        job = str(tsv.relative_to(results / "benchmarks").with_suffix(""))
        rows.append({"job": job, "seconds": float(df["s"].iloc[-1]), "max_rss_mb": float(df["max_rss"].iloc[-1])})
    return pd.DataFrame(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--results", type=Path, help="report this finished run instead of running the demo")
    ap.add_argument("--cores", default="2")
    args = ap.parse_args()
    wall = None
    if args.results is None:
        results = ROOT / "benchmarks" / "out" / time.strftime("demo-%Y%m%d-%H%M%S")
        t0 = time.monotonic()
        subprocess.run([sys.executable, "-m", "snakemake", "--cores", args.cores, "--config", f"results={results}"],
                       cwd=ROOT, check=True)
        wall = time.monotonic() - t0
    else:
        results = args.results
    table = stage_table(results)
    if table.empty:
        sys.exit(f"no benchmark files under {results}/benchmarks")
    print(f"results: {results}")
    print(table.to_string(index=False, float_format=lambda x: f"{x:.1f}"))
    print(f"sum of stage times: {table['seconds'].sum():.1f} s")
    if wall is not None:
        print(f"wall time of `snakemake --cores {args.cores}`: {wall:.1f} s ({wall / 60:.2f} min)")


if __name__ == "__main__":
    main()
