"""`python -m speaker_neurons plan --configfile X.yaml [--config K=V ...]`: every job a run would start,
with the audio it reads, its model, where it runs, its estimated compute hours, memory and disk, and the
totals: a plan with costs before any money is spent. The jobs are Snakemake's own dry run (a
subprocess: this package imports nothing of Snakemake); the costs are `speaker_neurons.costs`, the same
functions that size the jobs' resources. Every figure is an estimate.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any, Sequence

ROOT = Path(__file__).resolve().parents[1]


def merged_config(configfiles: Sequence[str], overrides: Sequence[str]) -> dict[str, Any]:
    """The config as the workflow sees it: config.yaml, each --configfile over it, then --config KEY=VALUE
    (VALUE read as YAML), with every default filled in."""
    import yaml

    from speaker_neurons.config import _overlay, complete

    cfg = yaml.safe_load((ROOT / "config.yaml").read_text()) or {}
    for f in configfiles:
        cfg = _overlay(cfg, yaml.safe_load(Path(f).read_text()) or {})
    for kv in overrides:
        k, _, v = kv.partition("=")
        cfg = _overlay(cfg, {k: yaml.safe_load(v)})
    return complete(cfg)


def dry_run_jobs(args: Sequence[str]) -> list[tuple[str, dict[str, str]]]:
    """(rule, wildcards) of every job of `snakemake -n ARGS`, in the order Snakemake prints them."""
    res = subprocess.run([sys.executable, "-m", "snakemake", "-n", *args], cwd=ROOT, capture_output=True, text=True)
    if res.returncode != 0:
        raise SystemExit(f"the dry run failed:\n{(res.stdout + res.stderr)[-4000:]}")
    jobs = []
    for block in re.split(r"\n(?=(?:local)?rule \w+:)", res.stdout + res.stderr):
        m = re.match(r"\s*(?:local)?rule (\w+):", block)
        if not m or m.group(1) == "all":
            continue
        wm = re.search(r"^\s+wildcards: (.*)$", block, re.M)
        wc = dict(kv.split("=", 1) for kv in wm.group(1).split(", ")) if wm else {}
        jobs.append((m.group(1), wc))
    return jobs


class _Wildcards:
    def __init__(self, d):
        self.__dict__.update(d)


def plan_rows(config: dict[str, Any], jobs, results: str, assume=None) -> list[dict[str, Any]]:
    from speaker_neurons import costs
    from speaker_neurons.catalogue import checked_catalogue
    from speaker_neurons.costs import model_jobs_want_gpu

    cat, _ = checked_catalogue(config, lambda c: None, disk_checks=False)
    gpu = model_jobs_want_gpu(cat, config["upstream"]["device"])
    rows = []
    for rule, wc in jobs:
        name = costs.rule_corpus(cat, rule, wc)
        work = costs.corpus_size(cat, name, f"{results}/corpora/{name}/manifest.tsv", assume) if name else None
        size = costs.model_size(cat, config, wc["model"]) if "model" in wc else None
        on_gpu = gpu and rule in costs.MODEL_RULES
        ext = costs.extractor_corpus(cat, rule)
        ext_work = costs.corpus_size(cat, ext, f"{results}/corpora/{ext}/manifest.tsv", assume) if ext else None
        c = costs.rule_costs(rule, work, size, config, on_gpu, config["upstream"]["threads"], extractor=ext_work)
        given = config["resources"].get(rule, {})
        rows.append({"rule": rule, "wildcards": wc, "seconds": c["seconds"], "peak_mb": c["peak_mb"],
                     "model": wc.get("model", ""), "corpus": name or "",
                     "audio_h": c["audio_hours"], "device": "GPU" if on_gpu else "CPU", "hours": c["compute_hours"],
                     "mem_gb": given.get("mem_mb", c["peak_mb"]) / 1000,
                     "disk_gb": given.get("disk_mb", c["disk_mb"]) / 1000})
    return rows


def format_plan(rows: list[dict[str, Any]]) -> str:
    out = ["| rule | model | corpus | audio h | device | est. hours | peak RAM GB | disk GB |",
           "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        out.append(f"| {r['rule']} | {r['model']} | {r['corpus']} | {r['audio_h']:.1f} | {r['device']} | "
                   f"{r['hours']:.2f} | {r['mem_gb']:.1f} | {r['disk_gb']:.1f} |")
    out += ["", "By rule:", "", "| rule | jobs | audio h | device | est. hours | peak RAM GB | disk GB |",
            "|---|---|---|---|---|---|---|"]
    by: dict[str, list] = {}
    for r in rows:
        by.setdefault(r["rule"], []).append(r)
    for rule, rs in by.items():
        out.append(f"| {rule} | {len(rs)} | {sum(r['audio_h'] for r in rs):.1f} | {rs[0]['device']} | "
                   f"{sum(r['hours'] for r in rs):.2f} | {max(r['mem_gb'] for r in rs):.1f} | "
                   f"{sum(r['disk_gb'] for r in rs):.1f} |")
    gpu_h = sum(r["hours"] for r in rows if r["device"] == "GPU")
    cpu_h = sum(r["hours"] for r in rows if r["device"] == "CPU")
    out.append("")
    out.append(f"{len(rows)} jobs; ESTIMATED: {gpu_h:.1f} GPU-hours, {cpu_h:.1f} CPU-hours (job-hours at the "
               f"configured threads), peak RAM of one job {max((r['mem_gb'] for r in rows), default=0):.1f} GB, "
               f"disk asked by all jobs together {sum(r['disk_gb'] for r in rows):.1f} GB "
               "(from speaker_neurons/costs.py: first-order, see its docstring)")
    return "\n".join(out)


def main(argv: Sequence[str]) -> int:
    import argparse

    ap = argparse.ArgumentParser(prog="python -m speaker_neurons plan", description=__doc__.splitlines()[0])
    ap.add_argument("--configfile", nargs="*", default=[])
    ap.add_argument("--config", nargs="*", default=[], help="KEY=VALUE overrides, as Snakemake takes them")
    ap.add_argument("--assume", nargs="*", default=[], metavar="CORPUS=HOURS:UTTERANCES[:TEST_FRACTION]",
                    help="size a corpus as given instead of from its files (a plan for corpora not at hand)")
    a = ap.parse_args(argv)
    from speaker_neurons.costs import CorpusSize

    assume = {}
    for item in a.assume:
        name, _, size = item.partition("=")
        parts = size.split(":")
        assume[name] = CorpusSize(float(parts[0]), int(parts[1]), *(float(x) for x in parts[2:3]))
    cfg = merged_config(a.configfile, a.config)
    sm_args = (["--configfile", *a.configfile] if a.configfile else []) + (["--config", *a.config] if a.config else [])
    rows = plan_rows(cfg, dry_run_jobs(sm_args), cfg["results"].rstrip("/"), assume)
    print(format_plan(rows))
    return 0
