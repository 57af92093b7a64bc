"""Do the SID heads reach their optimum? Dev accuracy per learning rate and the best dev step, for SID
schedules tried on one pooled file (the demo's unpruned model by default).

    .venv/bin/python benchmarks/sid_schedule.py [--pooled results/models/melhubert_demo/sid/demo_eval/pooled_layers.npz]
        [--rates 0.01 0.003 0.001 0.0003 0.0001] [--epochs 30 60] [--eval-every 100] [--layer-set all]

For every epochs value: the heads of every rate train at once (the first seed, as the workflow's sweep
does), with the dev accuracy every --eval-every steps and each head's best-dev state kept. A row per
rate: dev accuracy of its best state, its best step, and whether that step is the last one; the picked
rate (the best dev accuracy, the smaller rate on ties) and whether it lies at the edge of the grid; the
seconds the bank took. A schedule fits when the picked rate is inside the grid and its best step comes
before the last (the summary flags either, speaker_neurons.summary.head_flags).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    from speaker_neurons import sid

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pooled", type=Path,
                    default=ROOT / "results/models/melhubert_demo/sid/demo_eval/pooled_layers.npz")
    ap.add_argument("--rates", type=float, nargs="+", default=[0.01, 0.003, 0.001, 0.0003, 0.0001])
    ap.add_argument("--epochs", type=int, nargs="+", default=[30, 60])
    ap.add_argument("--eval-every", type=int, default=100)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--layer-set", default="all")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    data, L = sid.load_pooled(a.pooled)
    layers = tuple(sid.layer_set(a.layer_set, L))
    rows = []
    for epochs in a.epochs:
        specs = [sid.HeadSpec(layers, lr, a.seed) for lr in a.rates]
        t0 = time.perf_counter()
        heads = sid.train_heads(data, specs, epochs, batch_size=a.batch_size, eval_every=a.eval_every)
        secs = time.perf_counter() - t0
        dev = [sid.accuracy(h, data, "dev") for h in heads]
        test = [sid.accuracy(h, data, "test") for h in heads]
        accs = [c / max(n, 1) for c, n in dev]
        picked = max(a.rates, key=lambda lr: (accs[a.rates.index(lr)], -lr))
        for lr, h, acc, (tc, tn) in zip(a.rates, heads, accs, test):
            rows.append({"epochs": epochs, "steps": h.total_steps, "lr": lr, "dev_acc": round(100 * acc, 2),
                         "test_acc": round(100 * tc / max(tn, 1), 2), "best_step": h.best_step,
                         "best_is_last": h.best_step >= h.total_steps, "picked": lr == picked,
                         "picked_at_edge": lr == picked and lr in (min(a.rates), max(a.rates)),
                         "bank_seconds": round(secs, 1)})
    print(f"# {a.pooled} ({a.layer_set}: layers {list(layers)}), {len(data.speakers)} speakers, "
          f"segments {dict(pd.Series(data.split).value_counts())}")
    print(pd.DataFrame(rows).to_string(index=False))


if __name__ == "__main__":
    main()
