"""Seconds per training step of a group of SUPERB PR heads (speaker_neurons.pr) on random frames of a
given shape: one PRHead after another (the two linears in turn, CTCLoss, clip_grad_norm_, torch Adam:
the plain recipe) against the stacked `_HeadBank` that `train_bank` uses (one mix, the two linears
composed, one CTC call, per-head clipping and Adam). Prints a table.

    .venv/bin/python benchmarks/pr_heads.py                      # the demo's shape: 5 hidden states x 256
    .venv/bin/python benchmarks/pr_heads.py --layers 13 --dim 768 --heads 4
"""

from __future__ import annotations

import argparse
import platform
import time

import torch
from torch import nn

from speaker_neurons.pr import PRHead


def step_seconds(how: str, heads: int, batch: int, frames: int, layers: int, dim: int, vocab: int,
                 steps: int) -> float:
    from speaker_neurons.pr import PRSpec, _HeadBank

    specs = [PRSpec(f"h{i}", tuple(range(layers)), 1e-3, 0) for i in range(heads)]
    x = torch.randn(batch, frames, layers, dim)
    lengths = torch.full((batch,), frames, dtype=torch.long)
    tlen = torch.full((batch,), frames // 4, dtype=torch.long)
    targets = torch.randint(1, vocab, (int(tlen.sum()),))
    if how == "bank":
        bank = _HeadBank(specs, layers, dim, vocab, 256, "cpu")

        def one():
            bank.step(x, targets, lengths, tlen, 1.0)
    else:
        torch.manual_seed(0)
        hs = [PRHead(list(range(layers)), dim, vocab, 256) for _ in range(heads)]
        opts = [torch.optim.Adam(h.parameters(), lr=1e-3) for h in hs]
        ctc = nn.CTCLoss(blank=0, zero_infinity=True)

        def one():
            for h, opt in zip(hs, opts):
                loss = ctc(torch.log_softmax(h.forward_unfused(x), -1).transpose(0, 1), targets, lengths, tlen)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                nn.utils.clip_grad_norm_(h.parameters(), 1.0)
                opt.step()
    times = []
    for i in range(steps + 1):
        t0 = time.perf_counter()
        one()
        if i:  # the first step warms up
            times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--heads", type=int, default=12, help="heads trained together (the demo's sweep: 4 sets x 3 rates)")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--frames", type=int, default=250, help="frames per utterance (20 ms: 5 s)")
    ap.add_argument("--layers", type=int, default=5, help="hidden states hidden_0..L")
    ap.add_argument("--dim", type=int, default=256)
    ap.add_argument("--vocab", type=int, default=70)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    cpu = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")),
               platform.machine())
    print(f"CPU: {cpu}, torch {torch.__version__}, {a.threads} threads; "
          f"{a.heads} heads, batch {a.batch} x {a.frames} frames x {a.layers} x {a.dim}, V = {a.vocab}")
    print(f"{'training':<14}{'s/step':>9}{'speed-up':>10}")
    base = None
    for how in ("one_by_one", "bank"):
        s = step_seconds(how, a.heads, a.batch, a.frames, a.layers, a.dim, a.vocab, a.steps)
        base = base or s
        print(f"{how:<14}{s:>9.3f}{base / s:>10.2f}")


if __name__ == "__main__":
    main()
