"""Cost of capturing every FFN activation in the forward pass (target: <= 1.05 x a plain forward).

Base-size architectures (12 layers, d = 768, FFN 3072, random weights), one utterance of 10 s:
MelHuBERT (10 ms frames) and wav2vec2 base. Modes, interleaved per repeat (order alternating); the table
gives median wall-clock and process-CPU seconds, and the ratios are medians of the per-repeat ratios (each
repeat runs the three modes back to back, so slow drifts of a busy machine cancel):
* plain:  forward(return_ffn=False)
* ffn:    forward(return_ffn=True)  (keeps a reference to each GELU output; no copy)
* hook:   forward(return_ffn=False, ffn_hook=no-op)  (streaming statistics path)

    python benchmarks/upstream_forward.py [--seconds 10] [--repeats 7] [--threads N] [--device cpu]
"""

from __future__ import annotations

import argparse
import statistics
import time

import common  # noqa: F401  (the project on sys.path, the CPU's description)
import torch

from speaker_neurons.models.base import resolve_device
from speaker_neurons.models.melhubert import MelHuBERT
from speaker_neurons.models.wav2vec2 import Wav2Vec2Upstream


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench(model, wav, repeats: int, device: torch.device) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """Wall-clock and process-CPU seconds per mode and repeat."""
    lengths = torch.tensor([wav.shape[1]], device=device)
    modes = {
        "plain": dict(return_ffn=False),
        "ffn": dict(return_ffn=True),
        "hook": dict(return_ffn=False, ffn_hook=lambda layer, acts, mask: None),
    }
    times: dict[str, list[float]] = {m: [] for m in modes}
    cpu: dict[str, list[float]] = {m: [] for m in modes}
    with torch.inference_mode():
        for kw in modes.values():  # warm-up
            model(wav, lengths, **kw)
        names = list(modes)
        for r in range(repeats):
            for m in (names if r % 2 == 0 else names[::-1]):
                _sync(device)
                t0, c0 = time.perf_counter(), time.process_time()
                out = model(wav, lengths, **modes[m])
                _sync(device)
                times[m].append(time.perf_counter() - t0)
                cpu[m].append(time.process_time() - c0)
                del out
    return times, cpu


def summarize(t: dict[str, list[float]]) -> tuple[dict[str, float], dict[str, float]]:
    """(median seconds per mode, median over repeats of mode / plain)."""
    med = {m: statistics.median(v) for m, v in t.items()}
    ratio = {m: statistics.median(a / b for a, b in zip(v, t["plain"])) for m, v in t.items()}
    return med, ratio


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    torch.manual_seed(0)
    wav = (0.1 * torch.randn(1, int(args.seconds * 16000))).to(device)
    models = {
        "melhubert-base-10ms": MelHuBERT({"frame_period": 10}),
        "wav2vec2-base": Wav2Vec2Upstream({"model_type": "wav2vec2"}),
    }
    print(f"CPU: {common.cpu_model()}; device {device}, torch {torch.__version__}, threads {torch.get_num_threads()}, "
          f"{args.seconds:g} s of audio, {args.repeats} interleaved repeats, median seconds")
    print(f"{'model':<22} {'clock':<5} {'frames':>6} {'plain':>8} {'ffn':>8} {'hook':>8} {'ffn/plain':>10} "
          f"{'hook/plain':>11}")
    for name, model in models.items():
        model = model.to(device).eval()
        wall, cpu = bench(model, wav, args.repeats, device)
        frames = model.frames_for(wav.shape[1])
        for clock, samples in (("wall", wall), ("cpu", cpu)):
            t, r = summarize(samples)
            print(f"{name:<22} {clock:<5} {frames:>6} {t['plain']:>8.3f} {t['ffn']:>8.3f} {t['hook']:>8.3f} "
                  f"{r['ffn']:>10.3f} {r['hook']:>11.3f}")


if __name__ == "__main__":
    main()
