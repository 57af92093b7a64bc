"""Kill anywhere: SIGKILL each long stage at chosen points of its work, rerun, and compare every file of the
results folder byte for byte with the uninterrupted run.

    .venv/bin/python benchmarks/kill_anywhere.py --config tests/configs/kill.yaml
        # every point on the demo's corpora and shipped model, one head per task: 17 points, 22 min on 2 cores
    .venv/bin/python benchmarks/kill_anywhere.py --config tests/configs/tiny.yaml --extra tests/configs/kill.yaml
        # the tiny chain, which pre-trains (its points too)
    .venv/bin/python benchmarks/kill_anywhere.py --rules pool_layers sid_eval   # some stages only

The kill is the package's own fault injection (`speaker_neurons.utils.fault_point`): with
SPEAKER_NEURONS_KILL_AT=<site>:<n> a job kills itself with SIGKILL the n-th time it passes the site: `batch`
(each upstream batch), `block` (a pooled-store block recorded), `store` (a finished store about to be renamed
into place), `checkpoint` (a checkpoint just made durable), `step` (each training step), `write` (halfway
through writing an output file). So a point is the same moment of the work at every run: before, during and
after a stage's first checkpoint or store block, and while it writes an output.

Per point: one run of the stage's job (`--forcerun <rule>`, its target only) with the kill set, which must
fail and say in the rule's log that it killed itself there; then the same run without it, which must
succeed; then every file under the results folder must be the uninterrupted run's, byte for byte (the files
that hold wall times, as scripts/compare_runs.py names them, aside), with no file more or less: nothing
lost, nothing half-written left behind. Prints one row per point. tests/test_kill_anywhere.py runs one
seeded point per stage on the tiny configuration.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import subprocess
import sys
import time
from pathlib import Path

from common import ROOT, cpu_model  # noqa: E402  (and the project on sys.path)

#: (rule, target relative to the results folder, the points: (site, n)): before, during and after the first
#: checkpoint or store block, and while an output is being written. `{root}` is the first model of the config.
POINTS: list[tuple[str, str, list[tuple[str, int]]]] = [
    ("pretrain_melhubert", "models/{root}/pretrain/summary.json",
     [("store", 1), ("step", 2), ("checkpoint", 1), ("step", 8), ("write", 1)]),
    ("ivectors", "corpora/{analysis}/ivectors/quality.json", [("batch", 5), ("write", 1), ("write", 3)]),
    ("activation_stats", "models/{root}/analysis/ssl_k{k}/activation_counts.json", [("batch", 2), ("write", 1)]),
    ("pool_layers", "models/{root}/sid/{sid}/pooled_layers.npz", [("batch", 2), ("block", 1), ("write", 1)]),
    ("sid_eval", "models/{root}/sid/{sid}/sid.json", [("step", 5), ("write", 1)]),
    ("pr_eval", "models/{root}/pr/{pr}/pr.json",
     [("store", 1), ("step", 3), ("checkpoint", 1), ("step", 8), ("write", 1)]),
    ("erase_ablation", "models/{root}/analysis/ssl_k{k}/erase/erase.json", [("batch", 3), ("write", 2)]),
]

#: Files that hold wall times: rewritten by every run of their job (scripts/compare_runs.py, "wall times").
WALL_TIMES = ("logs/*", "benchmarks/*", "*/pretrain/summary.json", "*/pretrain/train_log.tsv",
              "*/pretrain/loss_curve.png", "*/checkpoints/*/state.pt")


def snakemake(config: list[str], *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "snakemake", "--scheduler", "greedy", "--cores", "2", *config, *args]
    return subprocess.run(cmd, cwd=ROOT, env={**os.environ, **(env or {})}, capture_output=True, text=True)


def digests(results: Path) -> dict[str, str]:
    """sha256 of every file under `results` (the run's own bookkeeping, .snakemake, aside)."""
    out = {}
    for p in sorted(results.rglob("*")):
        if p.is_file() and ".snakemake" not in p.parts:
            out[str(p.relative_to(results))] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def differences(before: dict[str, str], after: dict[str, str]) -> list[str]:
    """Files added, lost or changed (wall-time files may change)."""
    from fnmatch import fnmatch

    out = [f"lost {f}" for f in sorted(set(before) - set(after))]
    out += [f"left {f}" for f in sorted(set(after) - set(before))]
    out += [f"changed {f}" for f in sorted(set(before) & set(after)) if before[f] != after[f]
            and not any(fnmatch(f, w) for w in WALL_TIMES)]
    return out


def targets(results: Path, cfg: dict) -> dict[str, str]:
    """{rule: the target file} of the config (its first model, its smallest k, its stages' corpora)."""
    from speaker_neurons.catalogue import checked_catalogue

    cat, _ = checked_catalogue(cfg, lambda c: None, disk_checks=False)
    names = {"root": cfg["models"][0]["name"], "k": sorted(cfg["analysis"]["k_ssl"])[0],
             "analysis": cat.stages["analysis"], "sid": cat.stages["sid"], "pr": cat.stages["pr"]}
    return {rule: str(results / t.format(**names)) for rule, t, _ in POINTS}


def kill_and_rerun(config: list[str], results: Path, rule: str, target: str, site: str, n: int,
                   reference: dict[str, str]) -> dict:
    """Kill `rule`'s job at (site, n), rerun it, compare the folder with `reference`; a row of the table."""
    t0 = time.monotonic()
    killed = snakemake(config, "--forcerun", rule, "--", target, env={"SPEAKER_NEURONS_KILL_AT": f"{site}:{n}"})
    logs = "".join(p.read_text(errors="replace") for p in (results / "logs").rglob(f"{rule}*.log"))
    said = f"SPEAKER_NEURONS_KILL_AT={site}:{n}: killing this process" in logs
    rerun = snakemake(config, "--", target)
    diff = differences(reference, digests(results))
    # the rerun wrote the same bytes, newer than their consumers' outputs: mark those up to date, or the next
    # point's run would rerun them (and its kill would meet them instead of its own rule)
    snakemake(config, "--touch")
    ok = killed.returncode != 0 and said and rerun.returncode == 0 and not diff
    return {"rule": rule, "point": f"{site}:{n}", "killed": killed.returncode != 0 and said,
            "rerun_ok": rerun.returncode == 0, "differences": "; ".join(diff[:5]) or "none",
            "seconds": round(time.monotonic() - t0, 1), "ok": ok,
            "why": "" if ok else (killed.stderr[-1500:] if not said else rerun.stderr[-1500:])}


def main() -> None:
    from speaker_neurons.plan import merged_config

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", action="append", default=[], help="--configfile of the runs (config.yaml: none)")
    ap.add_argument("--extra", action="append", default=[], help="more config files over it")
    ap.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "out" / "kill_anywhere" / "results")
    ap.add_argument("--rules", nargs="*", help="only these rules")
    a = ap.parse_args()
    files = a.config + a.extra
    results = a.results.resolve()
    cfg = merged_config(files, [f"results={results}"])
    config = (["--configfile", *files] if files else []) + ["--config", f"results={results}"]
    print(f"CPU: {cpu_model()}; config: {', '.join(files) or 'config.yaml'}; results: {results}", flush=True)
    done = snakemake(config)
    if done.returncode:
        sys.exit(f"the uninterrupted run failed:\n{done.stderr[-3000:]}")
    reference = digests(results)
    tgt = targets(results, cfg)
    rows = []
    for rule, _, points in POINTS:
        if a.rules and rule not in a.rules:
            continue
        if not Path(tgt[rule]).exists():
            print(f"{rule}: not in this configuration ({tgt[rule]} absent)", flush=True)
            continue
        for site, n in points:
            rows.append(kill_and_rerun(config, results, rule, tgt[rule], site, n, reference))
            r = rows[-1]
            print(f"{r['rule']:<20} {r['point']:<14} killed {r['killed']!s:<6} rerun {r['rerun_ok']!s:<6} "
                  f"differences {r['differences']}  ({r['seconds']} s){'' if r['ok'] else '  FAILED'}", flush=True)
            if not r["ok"]:
                print(r["why"], flush=True)
    print(f"{sum(r['ok'] for r in rows)} of {len(rows)} points end byte-identical to the uninterrupted run")
    sys.exit(0 if all(r["ok"] for r in rows) else 1)


if __name__ == "__main__":
    main()
