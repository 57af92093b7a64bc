"""Micro-benchmark of the activation statistics (speaker_neurons.analysis.counts).

    python benchmarks/topk_counts.py [--device cpu|cuda] [--frames 500] [--width 3072] [--layers 12]

1. exact top-k candidates on one layer (N frames x W neurons, K = round(0.01 W));
2. ActivationCounter.update for every layer of one utterance;
3. a base MelHuBERT forward (random weights) with and without the counting hook: the ratio is the
   overhead of the statistics pass (target <= 1.10).
"""

from __future__ import annotations

import argparse
import time

import common  # noqa: F401  (the project on sys.path, the CPU's description)
import torch

from speaker_neurons.analysis.counts import ActivationCounter, top_k_for, topk_indices


def once(fn, device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - t) * 1e3


def timeit(fn, device, reps=20, warmup=3) -> float:
    """Minimum over reps, in ms (robust to other processes sharing the CPU)."""
    for _ in range(warmup):
        fn()
    return min(once(fn, device) for _ in range(reps))


def candidates(acts: torch.Tensor, k: int) -> dict:
    n, w = acts.shape
    mag = acts.abs()
    ar = torch.arange(w, device=acts.device)

    def plain_topk():  # NOT exact on ties (reference speed only)
        return torch.topk(mag, k, dim=1).indices

    def threshold_cumsum_all_rows():  # exact, no data-dependent branch
        v = torch.topk(mag, k, dim=1).values[:, -1:]
        gt, eq = mag > v, mag == v
        return gt | (eq & (torch.cumsum(eq, 1) <= k - gt.sum(1, keepdim=True)))

    def int64_key():  # exact for float32: order-preserving bits of |a|, then the reversed index
        bits = mag.float().view(torch.int32).to(torch.int64)
        return torch.topk((bits << 20) | (w - 1 - ar), k, dim=1).indices

    def stable_sort():  # exact
        return torch.sort(mag, dim=1, descending=True, stable=True).indices[:, :k]

    def chosen():  # topk(k+1), fix only rows where the k-th and (k+1)-th values tie
        return topk_indices(acts, k)

    return {
        "torch.topk (inexact on ties)": plain_topk,
        "topk_indices (chosen)": chosen,
        "threshold+cumsum all rows": threshold_cumsum_all_rows,
        "int64 composite key": int64_key,
        "stable sort": stable_sort,
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--frames", type=int, default=500)
    ap.add_argument("--width", type=int, default=3072)
    ap.add_argument("--layers", type=int, default=12)
    ap.add_argument("--classes", type=int, default=6)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--no-model", action="store_true", help="skip the MelHuBERT forward comparison")
    args = ap.parse_args()
    dev = torch.device(args.device)
    torch.manual_seed(0)
    print(f"CPU: {common.cpu_model()}; device {dev}, torch {torch.__version__}, threads {torch.get_num_threads()}")
    n, w, L = args.frames, args.width, args.layers
    k = top_k_for(w, 0.01)
    acts = torch.nn.functional.gelu(torch.randn(n, w, device=dev) * 2)
    print(f"\n1. one layer: {n} frames x {w} neurons, K = {k}")
    for name, fn in candidates(acts, k).items():
        print(f"   {name:32s} {timeit(fn, dev):8.3f} ms")
    tied = acts.clone()
    tied[:, : 2 * k] = 1.0  # every row ties at the K-th place: worst case of the chosen method
    print(f"   {'topk_indices, all rows tied':32s} {timeit(lambda: topk_indices(tied, k), dev):8.3f} ms")

    print(f"\n2. ActivationCounter.update x {L} layers, B=1, T={n}, W={w}, {args.classes} classes")
    counter = ActivationCounter(args.classes, [w] * L, 0.01, dev)
    x = acts[None]
    mask = torch.ones(1, n, dtype=torch.bool, device=dev)
    ids = torch.randint(-1, args.classes, (1, n), device=dev)

    def all_layers():
        for layer in range(1, L + 1):
            counter.update(layer, x, mask, ids)

    t = timeit(all_layers, dev, reps=10)
    print(f"   {t:8.2f} ms per utterance ({t / L:.2f} ms per layer)")

    if args.no_model:
        return
    print("\n3. base MelHuBERT forward (random weights), one utterance")
    try:
        from speaker_neurons.models.melhubert import MelHuBERT
    except Exception as e:  # pragma: no cover - depends on the rest of the package
        print(f"   skipped: {e}")
        return
    model = MelHuBERT().to(dev).eval()
    for T in (n, 2 * n):
        feats = torch.randn(1, T, model.encoder.feature_projection.projection.in_features, device=dev)
        lengths = torch.tensor([T], device=dev)
        ids = torch.randint(0, args.classes, (1, T), device=dev)
        counter = ActivationCounter(args.classes, model.ffn_widths, 0.01, dev)
        hook = counter.hook(ids)
        with torch.inference_mode():
            model.encode(feats, lengths, return_ffn=False, ffn_hook=hook)  # warm-up
            plain, hooked = [], []
            for _ in range(args.rounds):  # interleaved, so load changes hit both alike
                plain.append(once(lambda: model.encode(feats, lengths, return_ffn=False), dev))
                hooked.append(once(lambda: model.encode(feats, lengths, return_ffn=False, ffn_hook=hook), dev))
        p, h = min(plain), min(hooked)
        med = sorted(b / a for a, b in zip(plain, hooked))[len(plain) // 2]
        print(f"   T={T}: forward {p:8.1f} ms, with counting {h:8.1f} ms (min of {args.rounds}); "
              f"ratio of minima {h / p:.3f}, median paired ratio {med:.3f}")


if __name__ == "__main__":
    main()
