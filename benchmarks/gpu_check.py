"""The GPU check: one prepared script, at most 10 minutes on one GPU machine.

    .venv/bin/python benchmarks/gpu_check.py                       # on a CUDA machine: every step below
    .venv/bin/python benchmarks/gpu_check.py --device cpu --tiny   # anywhere: the same steps, tiny, on a CPU
    .venv/bin/python benchmarks/gpu_check.py --only tests throughput   # some steps only

Steps, each in its own time limit (so that one that overruns leaves the others their time), in this order:
1. tests: the suite's CUDA tests (every test under `@pytest.mark.skipif(not torch.cuda.is_available() ...)`,
   found by reading tests/); on a CPU they skip, and the step says so.
2. throughput: at base size (12 x 768 x 3072, a randomly initialised wav2vec2/HuBERT-base-shaped model from
   speaker_neurons.models; --tiny: a tiny MelHuBERT), hours of audio pooled per GPU-minute
   (`speaker_neurons.sid_pool.pool_to_file`, whole utterances) and PR training steps per second with the upstream
   on the fly (`speaker_neurons.pr.run_pr` with pr.feature_cache_gb 0, batch 32 of 10 s; the step rate is
   the difference of two runs of different lengths, so start-up, caches and scoring cancel out).
3. demo: CPU-vs-CUDA neuron-set equality on the demo (config.yaml; --tiny: tests/configs/tiny.yaml): one
   run of the analysis chain on the device (synthesis, a short pre-training, features, k-means, i-vectors,
   activation statistics, neuron sets), then a copy of that folder in which activation_stats and
   neuron_sets run again on the CPU (the same model, labels and clusters); the neuron sets must be equal
   (the count cells may differ only where activations tie at the top-K boundary, as
   tests/test_analysis_stages.py's CUDA test allows).
4. scale: benchmarks/scale.py at 1x on the device (bf16 by upstream.amp auto on CUDA).

Writes everything under --out (default benchmarks/out/gpu_check, gitignored) and prints one table of the
steps and one of the throughput. Needs the project's environment (.venv, `make setup`: the synthesizers for
steps 3 and 4). Exit status 1 when a step failed.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

from common import ROOT, cpu_model, synth_corpus  # noqa: E402  (and the project on sys.path)

STEPS = ("tests", "throughput", "demo", "scale")
# seconds per step on a GPU: 560 s in all, under the 10 minutes of one device command
LIMITS = {"tests": 60, "throughput": 100, "demo": 220, "scale": 180}
BASE_KIND, BASE_CONFIG = "wav2vec2", {}  # wav2vec2's defaults are the base shape (12 x 768, FFN 3072)
TINY_KIND, TINY_CONFIG = "melhubert", {"num_layers": 2, "hidden_dim": 64, "num_heads": 2, "ffn_dim": 256,
                                       "frame_period": 20, "pos_conv_kernel": 16, "pos_conv_groups": 4}


def run(cmd: list[str], log: Path, timeout: float) -> tuple[int, float]:
    """Run `cmd` from the project folder, output to `log`; (exit status, seconds); 124 on a timeout."""
    t0 = time.monotonic()
    with log.open("w") as f:
        try:
            rc = subprocess.run(cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT, timeout=timeout,
                                start_new_session=True).returncode
        except subprocess.TimeoutExpired:
            rc = 124
    return rc, time.monotonic() - t0


def tail(log: Path, n: int = 15) -> str:
    return "\n".join(log.read_text(errors="replace").splitlines()[-n:]) if log.exists() else ""


# ------------------------------------------------------------------------------------------- 1. tests
def cuda_tests() -> list[str]:
    """Node ids of the tests that skip without CUDA."""
    ids = []
    for f in sorted((ROOT / "tests").glob("test_*.py")):
        text = f.read_text()
        for m in re.finditer(r"@pytest\.mark\.skipif\(not torch\.cuda\.is_available\(\)[^\n]*\n(?:@[^\n]*\n)*def (\w+)",
                             text):
            ids.append(f"tests/{f.name}::{m.group(1)}")
    return ids


def step_tests(out: Path, args) -> dict:
    ids = cuda_tests()
    log = out / "tests.log"
    rc, wall = run([sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", *ids], log, args.limit("tests"))
    text = log.read_text(errors="replace")
    summary = (re.findall(r"^=+ (.*) in [\d.]+s", text, re.M) or [tail(log, 1)])[-1]
    skipped = "skipped" in summary  # on a GPU machine a skipped CUDA test is a failure of the check
    return {"ok": rc == 0 and not (skipped and args.device == "cuda"), "seconds": wall,
            "detail": f"{len(ids)} CUDA tests: {summary}"}


# ------------------------------------------------------------------------------------------- 2. throughput
def _corpus(d: Path, n: int, seconds: float, splits: tuple[int, int, int]) -> tuple[Path, Path]:
    """A manifest of `n` seeded noise utterances of `seconds` (throughput depends on durations, not content)
    with train/dev/test splits, and random phone targets for them."""
    tr, dv, _ = splits
    # the synthetic utterances of benchmarks/throughput.py
    man = synth_corpus(d, n, samples=lambda rng: int(seconds * 16000), signal="noise", manifest=None,
                       split=lambda i, k: "train" if i < tr else ("dev" if i < tr + dv else "test"))
    man.to_csv(d / "manifest.tsv", sep="\t", index=False)
    rng = np.random.default_rng(0)
    phones = ["AA1", "B", "D", "IY1", "K", "S", "T", "UW1", "N", "M"]
    with open(d / "phones.tsv", "w") as f:
        f.write("utt_id\tphones\n")
        for u in man["utt_id"]:
            f.write(f"{u}\t{' '.join(rng.choice(phones, size=int(seconds * 10)))}\n")
    return d / "manifest.tsv", d / "phones.tsv"


def _sync(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


def step_throughput(out: Path, args) -> dict:
    """The throughput in a child process (this script with --inner), so that its time limit holds."""
    log = out / "throughput.log"
    (out / "throughput.tsv").unlink(missing_ok=True)
    cmd = [sys.executable, str(Path(__file__).resolve()), "--inner", "--only", "throughput", "--device", args.device,
           "--out", str(out)] + (["--tiny"] if args.tiny else [])
    rc, wall = run(cmd, log, args.limit("throughput"))
    if rc != 0 or not (out / "throughput.tsv").exists():
        return {"ok": False, "seconds": wall, "detail": f"exit {rc}: {log}\n{tail(log)}"}
    table = pd.read_csv(out / "throughput.tsv", sep="\t")
    table.attrs["model"] = (out / "throughput_model.txt").read_text().strip()
    args.throughput = table
    return {"ok": True, "seconds": wall, "detail": "; ".join(f"{r.value:.3g} {r.unit}" for r in table.itertuples())}


def measure_throughput(out: Path, args) -> None:
    """Pooling and PR throughput in this process; writes out/throughput.tsv and out/throughput_model.txt."""
    import torch

    from speaker_neurons import pr, sid_pool
    from speaker_neurons.config import defaults, resolve
    from speaker_neurons.models import build_upstream

    torch.manual_seed(0)
    kind, config = (TINY_KIND, TINY_CONFIG) if args.tiny else (BASE_KIND, BASE_CONFIG)
    model = build_upstream(kind, config).eval().to(args.device)
    dflt = defaults()
    mbs = dflt["analysis"]["max_batch_seconds"]
    rows = []
    # pooling: a warm-up corpus (CUDA context, kernels), then the timed one
    n_pool, secs = (12, 2.0) if args.tiny else (360, 10.0)
    for name, n in (("warm", 4), ("pool", n_pool)):
        man, _ = _corpus(out / f"tp_{name}", n, secs, (n - 2, 1, 1))
        _sync(args.device)
        t0 = time.perf_counter()
        sid_pool.pool_to_file(model, man, None, "tsv", dflt["sid"]["min_crop_fraction"], out / f"tp_{name}" / "pooled.npz",
                              mbs, "auto")
        _sync(args.device)
        wall = time.perf_counter() - t0
    hours = n_pool * secs / 3600
    rows.append({"measure": "pooling (sid_pool.pool_to_file, whole utterances)", "value": hours / (wall / 60),
                 "unit": "hours of audio per minute", "detail": f"{hours:.2f} h in {wall:.1f} s"})
    # PR steps per second, the upstream on the fly: two runs, s1 and s2 steps
    batch, s1, s2 = (4, 2, 12) if args.tiny else (32, 5, 25)
    man, phones = _corpus(out / "tp_pr", batch + 8, secs, (batch + 4, 2, 2))
    times = {}
    for steps in (s1, s1, s2):  # the first run warms up (imports, kernels) and is timed again
        cfg = resolve("pr", {"steps": steps, "eval_every": steps, "batch_size": batch, "learning_rates": [0.01],
                             "seeds": [0], "feature_cache_gb": 0, "bootstrap": 10, "checkpoint_every": 10 ** 6,
                             "scratch_dir": str(out / "tp_pr" / "scratch")})
        _sync(args.device)
        t0 = time.perf_counter()
        pr.run_pr(model, phones, man, ["all"], cfg, None, "synthetic", None, out / "tp_pr" / f"pr_{steps}.json",
                  out / "tp_pr" / f"heads_{steps}.safetensors", amp="auto", resume_dir=out / "tp_pr" / f"resume_{steps}",
                  max_batch_seconds=mbs, device=args.device)
        _sync(args.device)
        times[steps] = time.perf_counter() - t0
    rate = (s2 - s1) / (times[s2] - times[s1]) if times[s2] > times[s1] else float("nan")
    rows.append({"measure": f"PR training steps (batch {batch} x {secs:g} s, upstream on the fly)", "value": rate,
                 "unit": "steps per second",
                 "detail": f"{s1} steps {times[s1]:.1f} s, {s2} steps {times[s2]:.1f} s; "
                           f"{rate * batch * secs / 60:.1f} min of audio per second"})
    (out / "throughput_model.txt").write_text(f"{kind} {model.num_layers} x {model.hidden_dim} x "
                                              f"{model.ffn_widths[0]}, random weights, on {args.device}\n")
    pd.DataFrame(rows).to_csv(out / "throughput.tsv", sep="\t", index=False)


# ------------------------------------------------------------------------------------------- 3. demo
def _missing_synthesizers() -> list[str]:
    return [b for b in ("espeak-ng", "mbrola", "flite", "festival", "pico2wave") if shutil.which(b) is None]


def step_demo(out: Path, args) -> dict:
    """The analysis chain on the device into A; A copied to B; activation_stats and neuron_sets again in B
    on the CPU; the neuron sets of A and B compared."""
    missing = _missing_synthesizers()
    if missing:
        return {"ok": False, "seconds": 0.0, "detail": f"synthesizers missing ({', '.join(missing)}): make setup"}
    a, b = out / "demo_device", out / "demo_cpu"
    base = [str(ROOT / "config.yaml")] if not args.tiny else [str(ROOT / "tests" / "configs" / "tiny.yaml")]
    extra_a = out / "demo_device.yaml"
    # a short pre-training: the sets are compared between devices on one model, not judged
    extra_a.write_text(f"results: {a}\nupstream: {{device: {args.device}}}\n"
                       f"pretrain: {{train: {{max_steps: {12 if args.tiny else 100}}}}}\n")
    extra_b = out / "demo_cpu.yaml"
    threads = min(8, os.cpu_count() or 2)  # the CPU leg's statistics pass on the machine's cores
    extra_b.write_text(f"results: {b}\nupstream: {{device: cpu, threads: {threads}}}\n"
                       f"pretrain: {{train: {{max_steps: {12 if args.tiny else 100}}}}}\n")
    smk = [sys.executable, "-m", "snakemake", "--scheduler", "greedy", "--cores", "all"]
    t0 = time.monotonic()
    shutil.rmtree(a, ignore_errors=True)
    shutil.rmtree(b, ignore_errors=True)
    budget = args.limit("demo")
    rc, _ = run([*smk, "--configfile", *base, str(extra_a), "--until", "neuron_sets"], out / "demo_device.log", budget)
    if rc != 0:
        return {"ok": False, "seconds": time.monotonic() - t0, "detail": f"device run failed ({rc}): "
                f"{out / 'demo_device.log'}\n{tail(out / 'demo_device.log')}"}
    shutil.copytree(a, b, symlinks=True, copy_function=shutil.copy2)  # modification times kept
    left = max(budget - (time.monotonic() - t0), 10)
    rc, _ = run([*smk, "--configfile", *base, str(extra_b), "--until", "neuron_sets", "--forcerun", "activation_stats",
                 "--rerun-triggers", "mtime"], out / "demo_cpu.log", left)
    if rc != 0:
        return {"ok": False, "seconds": time.monotonic() - t0, "detail": f"CPU run failed ({rc}): "
                f"{out / 'demo_cpu.log'}\n{tail(out / 'demo_cpu.log')}"}
    return compare_sets(a, b) | {"seconds": time.monotonic() - t0}


def compare_sets(a: Path, b: Path) -> dict:
    """Neuron sets (JSON) and activation counts of two results folders of the same config."""
    sets_a = sorted(a.glob("models/*/analysis/ssl_k*/neurons/*.json"))
    if not sets_a:
        return {"ok": False, "detail": f"no neuron sets under {a}"}
    differ = []
    for p in sets_a:
        q = b / p.relative_to(a)
        if not q.exists() or json.loads(p.read_text()) != json.loads(q.read_text()):
            differ.append(str(p.relative_to(a)))
    cells = diff_cells = 0
    for p in sorted(a.glob("models/*/analysis/ssl_k*/activation_counts.npz")):
        with np.load(p) as x, np.load(b / p.relative_to(a)) as y:
            for k in (k for k in x.files if k.startswith("counts_l")):
                cells += x[k].size
                diff_cells += int((x[k] != y[k]).sum())
    n = len(sets_a)
    detail = (f"{n - len(differ)} of {n} neuron-set files equal; count cells differing {diff_cells} of {cells}"
              + (f"; DIFFERENT: {', '.join(differ)}" if differ else ""))
    return {"ok": not differ, "detail": detail}


# ------------------------------------------------------------------------------------------- 4. scale
def step_scale(out: Path, args) -> dict:
    log = out / "scale.log"
    cmd = [sys.executable, str(ROOT / "benchmarks" / "scale.py"), "--scales", "1", "--device", args.device,
           "--cores", str(min(8, os.cpu_count() or 2)),
           "--out", str(out / "scale")] + (["--tiny"] if args.tiny else [])
    rc, wall = run(cmd, log, args.limit("scale"))
    rows = [line for line in log.read_text(errors="replace").splitlines() if line.startswith("[x1]")]
    return {"ok": rc == 0, "seconds": wall, "detail": "; ".join(rows[-6:]) or tail(log)}


# ------------------------------------------------------------------------------------------- main
def environment(device: str) -> str:
    import torch

    lines = [f"torch {torch.__version__}, CUDA available: {torch.cuda.is_available()}"]
    if torch.cuda.is_available():
        lines.append(f"GPU: {torch.cuda.get_device_name(0)}, bf16 supported: {torch.cuda.is_bf16_supported()}")
    lines.append(f"CPU: {cpu_model()}; device asked: {device}")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    ap.add_argument("--tiny", action="store_true", help="tiny sizes (a smoke run of the script on a CPU)")
    ap.add_argument("--only", nargs="+", choices=STEPS, default=list(STEPS))
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "out" / "gpu_check")
    ap.add_argument("--scale-limit", type=float, default=1.0, help="multiply every step's time limit by this")
    ap.add_argument("--inner", action="store_true", help=argparse.SUPPRESS)  # the throughput's child process
    args = ap.parse_args()
    args.limit = lambda step: LIMITS[step] * args.scale_limit * (4 if args.tiny and args.device == "cpu" else 1)
    args.throughput = None
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("no CUDA device here: run with --device cpu --tiny to exercise the script on a CPU")
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    if args.inner:
        measure_throughput(out, args)
        return 0
    print(environment(args.device), flush=True)
    steps = {"tests": step_tests, "throughput": step_throughput, "demo": step_demo, "scale": step_scale}
    report = []
    for name in (s for s in STEPS if s in args.only):
        print(f"--- {name} (limit {args.limit(name):.0f} s)", flush=True)
        try:
            r = steps[name](out, args)
        except Exception as exc:  # noqa: BLE001 - one failed step must not stop the others
            r = {"ok": False, "seconds": float("nan"), "detail": f"{type(exc).__name__}: {exc}"}
        report.append({"step": name, "ok": r["ok"], "seconds": r["seconds"], "detail": r["detail"]})
        print(f"{name}: {'ok' if r['ok'] else 'FAILED'} ({r['seconds']:.0f} s): {r['detail']}", flush=True)
    table = pd.DataFrame(report)
    print("\n## Steps")
    print(table.to_string(index=False, float_format=lambda x: f"{x:.0f}", max_colwidth=120))
    if args.throughput is not None:
        print(f"\n## Throughput ({args.throughput.attrs['model']})")
        print(args.throughput.to_string(index=False, float_format=lambda x: f"{x:.3g}"))
    table.to_csv(out / "steps.tsv", sep="\t", index=False)
    return 0 if table["ok"].all() else 1


if __name__ == "__main__":
    sys.exit(main())
