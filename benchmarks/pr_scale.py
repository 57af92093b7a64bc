"""Does `pr_eval` stay bounded as the PR corpus grows? (Targets: peak RSS 4x / 1x <= 1.2; transient
disk <= 1.5x the corpus' int16 audio when the frame cache does not fit `pr.feature_cache_gb`.)

`speaker_neurons.pr.run_pr` (the whole stage: caches, heads, scoring, cleanup) on a synthetic corpus of N and
4N utterances (int16 WAVs of a few seconds, random CMUdict phone targets) with a small random MelHuBERT, each
in a fresh child process. Measured: the child's peak RSS (ru_maxrss; its loader workers' peak separately),
the peak size of its scratch + resume folders (polled every 20 ms from the parent), wall time. The number of
training steps is the same at both sizes (memory may not depend on the corpus; time grows with the caches and
the dev/test passes). Prints a table.

On a CPU, oneDNN keeps a cache of compiled primitives per input shape (up to 1024 entries,
ONEDNN_PRIMITIVE_CACHE_CAPACITY): every new padded batch length of the upstream's convolutions adds one, so
the frame-cache path (the upstream over every utterance) grows by that bounded cache; with
ONEDNN_PRIMITIVE_CACHE_CAPACITY=0 the peak RSS measured 793 MB at 60 utterances and 804 MB at 960.

    .venv/bin/python benchmarks/pr_scale.py                      # N = 120 utterances of 3-5 s, on the fly
    .venv/bin/python benchmarks/pr_scale.py --utts 60 --budget-gb 1   # the frame-cache path
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from common import ROOT, synth_corpus  # noqa: E402  (and the project on sys.path)

ARCH = {"hidden_dim": 128, "num_layers": 4, "num_heads": 4, "ffn_dim": 256, "frame_period": 10}

CHILD = r"""
import json, resource, sys, time
import torch
torch.set_num_threads(1)
from speaker_neurons.models.melhubert import MelHuBERT
from speaker_neurons import pr
args = json.loads(sys.argv[1])
torch.manual_seed(0)
m = MelHuBERT(dict(args["arch"], pos_conv_kernel=8, pos_conv_groups=4))
m.set_feature_stats(torch.full((40,), 5.0), torch.full((40,), 3.0))
m.eval()
d = args["dir"]
t0 = time.monotonic()
pr.run_pr(m, d + "/phones.tsv", d + "/manifest.tsv", ["all", "last"], args["cfg"], None, "synthetic", None,
          d + "/out/pr.json", d + "/out/heads.safetensors", amp="auto", resume_dir=d + "/resume/m/pr_eval",
          max_batch_seconds=20.0, device="cpu")
wall = time.monotonic() - t0
res = json.load(open(d + "/out/pr.json"))
print(json.dumps({"wall": wall, "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "workers_rss_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
                  "features": res["features"], "feature_cache_bytes": res["feature_cache_bytes"]}))
"""


def make_corpus(d: Path, n: int, seconds: tuple[float, float], seed: int = 0) -> int:
    """n utterances (80% train, 10% dev, 10% test) of int16 noise; returns the int16 audio bytes."""
    from speaker_neurons.data.lexicon import load_lexicon, phone_inventory

    inv = phone_inventory(load_lexicon(None))

    def phones(rng) -> str:  # 8-29 phones, drawn after each utterance's audio
        return " ".join(inv[j] for j in rng.integers(0, len(inv), int(rng.integers(8, 30))))

    table = synth_corpus(d, n, samples=lambda rng: int(rng.uniform(*seconds) * 16000), signal="int16", seed=seed,
                         speakers=7, genders="", wav_dir="wav", phones=phones,
                         split=lambda i, k: "train" if i % 10 < 8 else "dev" if i % 10 == 8 else "test")
    return int(2 * (table["duration"] * 16000).round().sum())


def folder_bytes(paths) -> int:
    total = 0
    for root in paths:
        for dirpath, _, files in os.walk(root):
            for f in files:
                try:
                    total += os.stat(os.path.join(dirpath, f)).st_size
                except FileNotFoundError:
                    pass
    return total


def run(n: int, cfg: dict, seconds: tuple[float, float]) -> dict:
    with tempfile.TemporaryDirectory() as td:
        d = Path(td)
        audio = make_corpus(d, n, seconds)
        (d / "out").mkdir()
        peak, stop = [0], threading.Event()

        def poll():
            while not stop.is_set():
                peak[0] = max(peak[0], folder_bytes([d / "resume"]))
                time.sleep(0.02)

        th = threading.Thread(target=poll, daemon=True)
        th.start()
        args = json.dumps({"dir": str(d), "cfg": cfg, "arch": ARCH})
        p = subprocess.run([sys.executable, "-c", CHILD, args], capture_output=True, text=True, cwd=ROOT,
                           env={**os.environ, "OMP_NUM_THREADS": "1"})
        stop.set()
        th.join()
        if p.returncode:
            sys.exit(f"child failed:\n{p.stderr[-3000:]}")
        out = json.loads(p.stdout.strip().splitlines()[-1])
        left = (d / "resume" / "m" / "pr_eval").exists()
        return {**out, "utts": n, "audio_bytes": audio, "disk_peak": peak[0], "left_behind": left}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--utts", type=int, default=120, help="N: utterances of the 1x corpus (4x has 4N)")
    ap.add_argument("--seconds", type=float, nargs=2, default=(3.0, 5.0))
    ap.add_argument("--steps", type=int, default=16)
    ap.add_argument("--budget-gb", type=float, default=0.0, help="pr.feature_cache_gb (0: on the fly)")
    ap.add_argument("--workers", type=int, default=1, help="pr.loader_workers")
    a = ap.parse_args()
    cfg = {"steps": a.steps, "eval_every": a.steps // 2, "batch_size": 8, "learning_rates": [1e-2], "seeds": [0, 1],
           "proj_dim": 64, "bootstrap": 100, "feature_cache_gb": a.budget_gb, "loader_workers": a.workers,
           "checkpoint_every": max(1, a.steps // 4)}
    print(f"pr.run_pr, MelHuBERT {ARCH['num_layers']} x {ARCH['hidden_dim']} (random), {a.steps} steps x 8 utts, "
          f"2 layer sets x 2 seeds, feature_cache_gb {a.budget_gb:g}, {a.workers} loader worker(s), 1 thread")
    rows = [run(n, cfg, tuple(a.seconds)) for n in (a.utts, 4 * a.utts)]
    hdr = (f"{'corpus':<8}{'utts':>6}{'audio MB':>10}{'features':>12}{'peak RSS MB':>13}{'workers MB':>12}"
           f"{'peak disk MB':>14}{'disk/audio':>12}{'wall s':>8}")
    print(hdr)
    for tag, r in zip(("1x", "4x"), rows):
        print(f"{tag:<8}{r['utts']:>6}{r['audio_bytes'] / 1e6:>10.1f}{r['features']:>12}{r['rss_mb']:>13.0f}"
              f"{r['workers_rss_mb']:>12.0f}{r['disk_peak'] / 1e6:>14.1f}{r['disk_peak'] / r['audio_bytes']:>12.2f}"
              f"{r['wall']:>8.1f}")
    one, four = rows
    print(f"4x/1x: peak RSS {four['rss_mb'] / one['rss_mb']:.3f} (target <= 1.2), workers' RSS "
          f"{four['workers_rss_mb'] / max(one['workers_rss_mb'], 1e-9):.3f}, peak disk "
          f"{four['disk_peak'] / max(one['disk_peak'], 1):.2f}, wall {four['wall'] / one['wall']:.2f}; "
          f"scratch and resume folders left behind: {any(r['left_behind'] for r in rows)}")


if __name__ == "__main__":
    main()
