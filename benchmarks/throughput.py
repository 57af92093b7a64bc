"""Throughput of the two passes that grow with the corpus, in hours of audio per minute, per device.

1. The activation-statistics pass (rule `activation_stats`): a base-size MelHuBERT (12 x 768 x 3072,
   random weights) over every utterance, top-K counts per class, exactly as the rule runs it
   (`activation_statistics`, batches sized by `max_batch_seconds`).
2. i-vector extraction (rule `ivectors`): features, UBM + T fit and extraction (`extract_ivectors`),
   with the fit and the per-utterance part (features + extraction) timed apart: the fit is paid once.

The corpus is synthetic (seeded noise, 10 s utterances): throughput depends on durations, not on
content. Each device runs the same corpus in one process, one after the other.

    python benchmarks/throughput.py                       # CPU, and CUDA when there is one
    python benchmarks/throughput.py --minutes 60 --devices cuda

Prints one table; docs/benchmarks.md keeps the last one measured.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

import common  # noqa: E402,F401  (puts the project on sys.path)

BASE = {"hidden_dim": 768, "num_layers": 12, "num_heads": 12, "ffn_dim": 3072}


def make_corpus(d: Path, minutes: float, seconds: float = 10.0) -> pd.DataFrame:
    """`minutes` of noise in utterances of `seconds`, 8 speakers; the manifest's rows (no manifest file)."""
    return common.synth_corpus(d, max(1, int(round(minutes * 60 / seconds))), samples=lambda rng: int(seconds * 16000),
                               signal="noise", manifest=None)


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def stats_pass(manifest: pd.DataFrame, device: str, out: Path, max_batch_seconds: float) -> float:
    from speaker_neurons.analysis.stats import activation_statistics
    from speaker_neurons.config import defaults
    from speaker_neurons.models.melhubert import MelHuBERT

    torch.manual_seed(0)
    model = MelHuBERT(BASE).eval().to(device)
    rng = np.random.default_rng(1)
    labels = {u: rng.integers(0, 3, model.frames_for(int(round(d * 16000)))).astype(np.int16)
              for u, d in zip(manifest["utt_id"], manifest["duration"])}
    clusters = {u: i % 2 for i, u in enumerate(manifest["utt_id"])}
    # warm-up on one utterance (CUDA context, kernels), then the whole corpus
    mismatch = defaults("analysis")["max_label_mismatch"]
    activation_statistics(model, manifest.head(1), labels, clusters, 3, 2, 0.01, out / "warm.npz", progress=False,
                          max_mismatch=mismatch, max_batch_seconds=max_batch_seconds)
    _sync(device)
    start = time.perf_counter()
    activation_statistics(model, manifest, labels, clusters, 3, 2, 0.01, out / "counts.npz", progress=False,
                          max_mismatch=mismatch, max_batch_seconds=max_batch_seconds)
    _sync(device)
    return time.perf_counter() - start


def ivector_pass(manifest: pd.DataFrame, device: str) -> dict[str, float]:
    from speaker_neurons.analysis import ivector as iv
    from speaker_neurons.audio import load_audio

    items = [(r.utt_id, load_audio(r.path, iv.DEFAULT_IVECTOR_CONFIG["sample_rate"])[0])
             for r in manifest.itertuples(index=False)]
    iv.extract_ivectors(items[:2], {"ubm_components": 4, "ivector_dim": 2, "ubm_iters": 1, "tv_iters": 1},
                        device=device, progress=False)  # warm-up
    _sync(device)
    _, _, info = iv.extract_ivectors(items, None, device=device, progress=False, return_info=True)
    _sync(device)
    return info["seconds"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=2.0, help="minutes of audio in the synthetic corpus")
    ap.add_argument("--devices", nargs="*", default=None, help="default: cpu, plus cuda when available")
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    ap.add_argument("--max-batch-seconds", type=float, default=60.0, help="audio per batch of the statistics pass")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    devices = args.devices or (["cpu"] + (["cuda"] if torch.cuda.is_available() else []))
    if "cuda" in devices and not torch.cuda.is_available():
        sys.exit("no CUDA device here: run with --devices cpu, or on a GPU machine")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        manifest = make_corpus(Path(tmp), args.minutes)
        hours = manifest["duration"].sum() / 3600
        for dev in devices:
            name = torch.cuda.get_device_name(0) if dev.startswith("cuda") else f"CPU, {args.threads} threads"
            s = stats_pass(manifest, dev, Path(tmp), args.max_batch_seconds)
            rows.append((dev, name, "statistics pass, MelHuBERT 12x768x3072", s, hours / (s / 60)))
            t = ivector_pass(manifest, dev)
            per_utt = t["features"] + t["extract"]
            rows.append((dev, name, "i-vectors: features + extraction", per_utt, hours / (per_utt / 60)))
            rows.append((dev, name, "i-vectors: UBM + T fit (once)", t["fit"], hours / (t["fit"] / 60)))
    print(f"\nCPU: {common.cpu_model()}\nThroughput on {hours * 60:.1f} min of audio ({len(manifest)} utterances of 10 s)")
    print(f"{'device':<8}{'machine':<28}{'pass':<42}{'seconds':>9}{'h audio/min':>13}")
    for dev, name, what, s, h in rows:
        print(f"{dev:<8}{name[:27]:<28}{what:<42}{s:>9.1f}{h:>13.3f}")


if __name__ == "__main__":
    main()
