"""Proof of scale for pre-training: does the peak memory of MelHuBERT pre-training stay
bounded when the corpus grows 4x (features and k-means targets streamed from the file-backed store of
speaker_neurons.pretrain.store, not held in memory)?

    .venv/bin/python benchmarks/pretrain_scale.py                       # 1x and 4x on CPU
    .venv/bin/python benchmarks/pretrain_scale.py --pool benchmarks/out/scale/full-8a24e20u/pool  # reuse a pool
    .venv/bin/python benchmarks/pretrain_scale.py --tiny                # a smoke run
    .venv/bin/python benchmarks/pretrain_scale.py --code /tmp/old       # another checkout's package (a baseline)
    .venv/bin/python benchmarks/pretrain_scale.py --stage teacher_targets   # rule teacher_targets instead

What it does:
1. Synthesizes one pool of audio with the demo synthesizer and lays it out as LibriSpeech folders (symbolic
   links), both through benchmarks/scale.py (`synthesize_pool`, `lay_out`): at size s every evaluation
   speaker of the pool appears s times under other ids. 1x is `--base` copies (default 2), 4x four times that.
2. Writes the manifest of the train-clean-100 folder of each size (speaker_neurons.data.manifest).
3. Per size, runs the pre-training stage's call (`speaker_neurons.pretrain.pretrain_resumable`, what rule
   pretrain_melhubert runs: the demo MelHuBERT, `--steps` steps, its scratch folder under the output folder)
   in a child process, while this process polls the child's resident memory (/proc, every 0.05 s; the
   exact peak is the child's ru_maxrss from wait4) and the disk used by its scratch folder (the store and
   the checkpoints, every 0.2 s).

It prints, per size, the utterances, hours and frames, the wall time (and the part before the first step:
the feature pass, the statistics and the k-means), the peak RSS, the store's bytes (from the stage's log)
and the scratch folder's peak disk; then the 4x/1x ratios against the target (peak RSS <= 1.2). The k-means
sample (`--kmeans-frames`, default 20,000) is below the 1x corpus' frames, as it is at LibriSpeech's size
(100,000 of 173 M frames), so k-means fits the same number of frames at both sizes, and the batches are
small (`--batch-frames`, default 1,000), so that the training step's own memory does not hide the data's.
`--code DIR` runs another checkout's package (e.g. a commit before the store: the in-memory baseline).

`--stage teacher_targets` runs rule teacher_targets' call instead (`speaker_neurons.pretrain.teacher_centers`:
k-means centres of a released MelHuBERT's hidden states at `prune.continue.target_layer`, here the shipped
demo model, models/melhubert_demo/model, at its default layer; the store of features and hidden states in
the job's resume folder, polled for disk) on the same corpora; there is no training step, so the table has
the wall time, the peak RSS and the scratch folder's peak disk (a checkout whose `teacher_centers` takes no
`work_dir`, the in-memory code, keeps its features in the system's temporary folder, not polled).
Tables go to stdout and to <out>/pretrain_scale.md (<out>/teacher_targets_scale.md); the default --out, benchmarks/out/pretrain_scale, is
gitignored.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

from common import ROOT, DiskPoll, rss_kb  # noqa: E402  (and the project on sys.path)

import scale  # noqa: E402  (benchmarks/scale.py: the pool and the LibriSpeech layouts)

CHILD = r"""
import json, sys
sys.path.insert(0, {code!r})
from speaker_neurons.pretrain import pretrain_resumable
from speaker_neurons.utils import setup_logging
setup_logging({log!r})
summary = pretrain_resumable({manifest!r}, {outputs!r}, {model!r}, {train!r}, {scratch!r}, "cpu", {threads})
print(json.dumps({{"steps": summary["steps"], "frames": summary["frames"], "utterances": summary["utterances"]}}))
"""

TEACHER_CHILD = r"""
import inspect, json, sys
sys.path.insert(0, {code!r})
import torch
from speaker_neurons.models import load_native
from speaker_neurons.pretrain import teacher_centers
from speaker_neurons.utils import setup_logging
setup_logging({log!r})
torch.set_num_threads({threads})
teacher = load_native({teacher!r})
kw = {{"work_dir": {scratch!r}}} if "work_dir" in inspect.signature(teacher_centers).parameters else {{}}
rec = teacher_centers(teacher, {manifest!r}, {train!r}, None, {threads}, {centers!r}, {record!r}, **kw)
print(json.dumps({{"frames": rec["total_frames"], "utterances": rec["utterances"], "layer": rec["teacher_layer"]}}))
"""
TEACHER = ROOT / "models" / "melhubert_demo" / "model"


def run_child(code: str, cwd: Path, poll_dir: Path) -> dict:
    """Run `code` in a child Python; returns wall seconds, polled and exact peak RSS (MB), peak disk of
    `poll_dir` (bytes), the child's stdout and its exit status."""
    out_path = cwd / "child.out"
    polled = [0]
    t0 = time.monotonic()
    with open(out_path, "w") as out, DiskPoll(poll_dir) as disk:
        proc = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
                                env={**os.environ, "OMP_WAIT_POLICY": "PASSIVE"})
        done = threading.Event()

        def poll():
            while not done.wait(0.05):
                polled[0] = max(polled[0], rss_kb(proc.pid))

        th = threading.Thread(target=poll, daemon=True)
        th.start()
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        done.set()
        th.join()
    return {"wall_s": time.monotonic() - t0, "rss_polled_mb": polled[0] / 1024, "rss_peak_mb": usage.ru_maxrss / 1024,
            "disk_peak": disk.peak, "rc": proc.returncode, "stdout": out_path.read_text()}


def manifest_for(root: Path, train_dir: Path) -> tuple[Path, dict]:
    from speaker_neurons.data.manifest import librispeech_manifest, write_manifest

    path = root / "pretrain_manifest.tsv"
    df = librispeech_manifest(split_dirs={"train": str(train_dir)})
    write_manifest(df, path)
    return path, {"utterances": len(df), "hours": float(df["duration"].sum()) / 3600}


def log_figures(log: str) -> dict:
    """The data-preparation seconds and the store's bytes, from the stage's log."""
    ready = re.search(r"features and targets ready after ([\d.]+) s", log)
    stored = re.search(r"training data store: ([\d.e+-]+) GB in", log)
    return {"prep_s": float(ready.group(1)) if ready else float("nan"),
            "store_gb": float(stored.group(1)) if stored else float("nan")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks/out/pretrain_scale")
    ap.add_argument("--pool", type=Path, help="a synthesized pool to reuse (default <out>/pool)")
    ap.add_argument("--tiny", action="store_true", help="a smoke run: the tiny pool, 1 copy at 1x, 3 steps")
    ap.add_argument("--base", type=int, help="copies of the pool's speakers at 1x (default 4; --tiny 1)")
    ap.add_argument("--steps", type=int, help="training steps per size (default 20; --tiny 3)")
    ap.add_argument("--kmeans-frames", type=int, default=20_000, help="pretrain.train.kmeans_max_frames")
    ap.add_argument("--batch-frames", type=int, default=1000,
                    help="pretrain.train.max_frames_per_batch (small: the training step's memory does not hide the "
                         "data's)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--code", type=Path, default=ROOT, help="the checkout whose speaker_neurons package runs")
    ap.add_argument("--stage", choices=("pretrain_melhubert", "teacher_targets"), default="pretrain_melhubert",
                    help="the rule whose call runs (teacher_targets: the shipped demo model as the released teacher)")
    args = ap.parse_args()
    teacher = args.stage == "teacher_targets"
    size = scale.TINY if args.tiny else scale.FULL
    base = args.base or (1 if args.tiny else 4)
    steps = args.steps or (3 if args.tiny else 20)
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    utts = scale.synthesize_pool((args.pool or out / "pool").resolve(), size)
    from speaker_neurons.config import defaults

    model = defaults("pretrain.model")
    train = {**defaults("pretrain.train"), "max_steps": steps, "checkpoint_every": steps, "progress": False,
             "targets_audio": "input", "kmeans_max_frames": args.kmeans_frames,
             "max_frames_per_batch": args.batch_frames}
    rows = []
    for mult in (1, 4):
        copies = base * mult
        corpora = scale.lay_out(out, utts, size, copies)
        root = out / f"x{copies}"
        man, figs = manifest_for(root, Path(corpora["pr"]["split_dirs"]["train"]))
        run = root / "run"
        if run.exists():
            import shutil

            shutil.rmtree(run)
        run.mkdir(parents=True)
        res = run / "results"
        res.mkdir(parents=True)
        outputs = {"model_dir": str(res / "model"), "head": str(res / "head.pt"), "summary": str(res / "summary.json"),
                   "train_log": str(res / "train_log.tsv"), "loss_curve": str(res / "loss_curve.png"),
                   "kmeans_centers": str(res / "kmeans_centers.npy"), "checkpoints": str(res / "checkpoints")}
        scratch = run / "resume"
        scratch.mkdir()
        if teacher:
            log = run / "teacher_targets.log"
            print(f"[{mult}x] {figs['utterances']} utterances, {figs['hours']:.2f} h: teacher targets ...", flush=True)
            code = TEACHER_CHILD.format(code=str(args.code.resolve()), log=str(log), teacher=str(TEACHER),
                                        manifest=str(man), train=train, scratch=str(scratch), threads=args.threads,
                                        centers=str(res / "kmeans_centers.npy"), record=str(res / "record.json"))
        else:
            log = run / "pretrain.log"
            print(f"[{mult}x] {figs['utterances']} utterances, {figs['hours']:.2f} h: pre-training {steps} steps ...",
                  flush=True)
            code = CHILD.format(code=str(args.code.resolve()), log=str(log), manifest=str(man), outputs=outputs,
                                model=model, train=train, scratch=str(scratch), threads=args.threads)
        r = run_child(code, run, scratch)
        if r["rc"] != 0:
            sys.exit(f"[{mult}x] the {args.stage} child failed ({r['rc']}):\n{r['stdout'][-3000:]}")
        summary = json.loads(r["stdout"].strip().splitlines()[-1])
        rows.append({"size": f"{mult}x", "utterances": figs["utterances"], "hours": figs["hours"],
                     "frames": summary["frames"], **r, **log_figures(log.read_text())})
        print(f"[{mult}x] {r['wall_s']:.1f} s, peak RSS {r['rss_peak_mb']:.0f} MB", flush=True)

    if teacher:
        teacher_table(rows, args, out)
        return
    lines = ["| size | utterances | hours | frames | wall (s) | before step 1 (s) | peak RSS (MB) | store (MB) "
             "| scratch peak disk (MB) |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['size']} | {r['utterances']} | {r['hours']:.2f} | {r['frames']} | {r['wall_s']:.1f} "
                     f"| {r['prep_s']:.1f} | {r['rss_peak_mb']:.0f} (polled {r['rss_polled_mb']:.0f}) "
                     f"| {r['store_gb'] * 1e3:.1f} | {r['disk_peak'] / 2**20:.1f} |")
    a, b = rows
    ratio = b["rss_peak_mb"] / a["rss_peak_mb"]
    lines += ["", "| 4x / 1x | ratio | target |", "|---|---|---|",
              f"| peak RSS | {ratio:.3f} | <= 1.2: {'met' if ratio <= 1.2 else 'NOT MET'} |",
              f"| wall time | {b['wall_s'] / a['wall_s']:.2f} | |",
              f"| before step 1 | {b['prep_s'] / a['prep_s']:.2f} | |",
              f"| store bytes | {b['store_gb'] / a['store_gb']:.2f} | |"]
    head = (f"pre-training at scale: the demo MelHuBERT, {steps} steps, kmeans_max_frames {args.kmeans_frames}, "
            f"max_frames_per_batch {args.batch_frames}, {args.threads} threads, code {args.code.resolve()}")
    text = head + "\n\n" + "\n".join(lines) + "\n"
    print("\n" + text)
    (out / "pretrain_scale.md").write_text(text)


def teacher_table(rows: list[dict], args, out: Path) -> None:
    lines = ["| size | utterances | hours | frames | wall (s) | peak RSS (MB) | scratch peak disk (MB) |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['size']} | {r['utterances']} | {r['hours']:.2f} | {r['frames']} | {r['wall_s']:.1f} "
                     f"| {r['rss_peak_mb']:.0f} (polled {r['rss_polled_mb']:.0f}) | {r['disk_peak'] / 2**20:.1f} |")
    a, b = rows
    ratio = b["rss_peak_mb"] / a["rss_peak_mb"]
    lines += ["", "| 4x / 1x | ratio | target |", "|---|---|---|",
              f"| peak RSS | {ratio:.3f} | <= 1.2: {'met' if ratio <= 1.2 else 'NOT MET'} |",
              f"| wall time | {b['wall_s'] / a['wall_s']:.2f} | |"]
    if a["disk_peak"]:
        lines.append(f"| scratch peak disk | {b['disk_peak'] / a['disk_peak']:.2f} | |")
    head = (f"teacher targets at scale (rule teacher_targets): teacher {TEACHER.relative_to(ROOT)}, kmeans_max_frames "
            f"{args.kmeans_frames}, {args.threads} threads, code {args.code.resolve()}")
    text = head + "\n\n" + "\n".join(lines) + "\n"
    print("\n" + text)
    (out / "teacher_targets_scale.md").write_text(text)


if __name__ == "__main__":
    main()
