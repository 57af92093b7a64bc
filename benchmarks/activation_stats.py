"""Benchmark of the activation-statistics pass (targets: memory flat in the corpus size, overhead <= 1.10).

Two measurements, printed as tables:
1. Overhead: a base-size MelHuBERT (12 x 768 x 3072, random weights) on the same padded batches,
   (a) a plain forward (`return_ffn=False`) and (b) the counting forward (`ffn_hook` feeding
   `ActivationCounter`: top-K by |a| per frame and layer, counts per class). Runs are interleaved
   (a, b, a, b, ...) and the medians compared, since this machine is noisy.
2. Memory: `activation_statistics` over a synthetic corpus of N and 2N utterances, each in a fresh
   child process; the peak RSS of each child is compared (target: within 10%).

    python benchmarks/activation_stats.py                 # defaults: 8 x 10 s batches, N = 40
    python benchmarks/activation_stats.py --repeats 5 --utts 80
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import common  # noqa: E402,F401  (puts the project on sys.path)

BASE = {"hidden_dim": 768, "num_layers": 12, "num_heads": 12, "ffn_dim": 3072}
SMALL = {"hidden_dim": 256, "num_layers": 4, "num_heads": 4, "ffn_dim": 1024}


def make_model(arch: dict):
    from speaker_neurons.models.melhubert import MelHuBERT

    torch.manual_seed(0)
    return MelHuBERT(arch).eval()


def overhead(batch: int, seconds: float, repeats: int, k_ssl: int = 3, k_ivector: int = 2) -> dict:
    from speaker_neurons.analysis.counts import ActivationCounter

    model = make_model(BASE)
    g = torch.Generator().manual_seed(0)
    wavs = 0.1 * torch.randn(batch, int(seconds * 16000), generator=g)
    lengths = torch.full((batch,), wavs.shape[1], dtype=torch.long)
    lengths[-1] = int(lengths[-1] * 0.7)  # one padded utterance, as in real batches
    t = model.frames_for(int(lengths.max()))
    class_ids = torch.randint(0, k_ssl * k_ivector, (batch, t), generator=g)
    counter = ActivationCounter(k_ssl * k_ivector, list(model.ffn_widths), 0.01, device="cpu")

    def plain():
        with torch.inference_mode():
            model(wavs, lengths, return_ffn=False)

    def counting():
        with torch.inference_mode():
            model(wavs, lengths, return_ffn=False, ffn_hook=lambda l, a, m: counter.update(l, a, m, class_ids[:, : a.shape[1]]))

    plain(), counting()  # warm-up
    tp, tc = [], []
    for _ in range(repeats):
        for fn, acc in ((plain, tp), (counting, tc)):
            s = time.perf_counter()
            fn()
            acc.append(time.perf_counter() - s)
    return {"plain_s": statistics.median(tp), "counting_s": statistics.median(tc), "frames": batch * t}


def child(corpus_dir: str, n: int) -> None:
    """Run the real pass over the first n utterances; print peak RSS (MiB) as JSON."""
    import pandas as pd

    from speaker_neurons.analysis.stats import activation_statistics
    from speaker_neurons.config import defaults

    torch.set_num_threads(2)
    d = Path(corpus_dir)
    manifest = pd.read_csv(d / "manifest.tsv", sep="\t").head(n)
    model = make_model(SMALL)
    labels = {u: np.random.default_rng(i).integers(0, 3, model.frames_for(int(round(dur * 16000)))).astype(np.int16)
              for i, (u, dur) in enumerate(zip(manifest["utt_id"], manifest["duration"]))}
    clusters = {u: i % 2 for i, u in enumerate(manifest["utt_id"])}
    start = time.perf_counter()
    analysis = defaults("analysis")
    activation_statistics(model, manifest, labels, clusters, 3, 2, 0.01, d / f"counts_{n}.npz", progress=False,
                          max_mismatch=analysis["max_label_mismatch"], max_batch_seconds=analysis["max_batch_seconds"])
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"n": n, "peak_mib": peak, "seconds": time.perf_counter() - start}))


def make_corpus(d: Path, n: int, seconds: float) -> None:
    """n utterances of noise, `seconds` +-20% each, 8 speakers, and d/manifest.tsv."""
    common.synth_corpus(d, n, samples=lambda rng: int(seconds * (0.8 + 0.4 * rng.random()) * 16000),
                        signal="noise", name="u{i:04d}", speaker="spk{s}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--utts", type=int, default=40, help="N for the memory test (2N is run too)")
    ap.add_argument("--child", nargs=2, metavar=("CORPUS_DIR", "N"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.child[0], int(args.child[1]))
        return
    torch.set_num_threads(2)

    o = overhead(args.batch, args.seconds, args.repeats)
    print(f"\nCPU: {common.cpu_model()}\n1. Counting overhead, base MelHuBERT 12x768x3072, CPU, batch {args.batch} x {args.seconds:g} s ({o['frames']} frames), median of {args.repeats}")
    print(f"{'pass':<36}{'seconds':>10}{'ratio':>8}")
    print(f"{'plain forward (return_ffn=False)':<36}{o['plain_s']:>10.3f}{1.0:>8.3f}")
    print(f"{'forward + top-K counts (ffn_hook)':<36}{o['counting_s']:>10.3f}{o['counting_s'] / o['plain_s']:>8.3f}   target <= 1.10")

    with tempfile.TemporaryDirectory() as tmp:
        make_corpus(Path(tmp), 2 * args.utts, 4.0)
        res = []
        for n in (args.utts, 2 * args.utts):
            out = subprocess.run([sys.executable, __file__, "--child", tmp, str(n)], capture_output=True, text=True, check=True)
            res.append(json.loads(out.stdout.strip().splitlines()[-1]))
    print("\n2. Peak RSS of the full pass (small MelHuBERT 4x256x1024), fresh process each")
    print(f"{'corpus':<16}{'utterances':>11}{'peak MiB':>10}{'seconds':>9}{'ratio':>8}")
    for label, r in zip(("1x", "2x"), res):
        print(f"{label:<16}{r['n']:>11}{r['peak_mib']:>10.1f}{r['seconds']:>9.1f}{r['peak_mib'] / res[0]['peak_mib']:>8.3f}")
    print("target: 2x within 10% of 1x")


if __name__ == "__main__":
    main()
