"""An independent check of the SID controls: a logistic-regression speaker probe (scikit-learn, not the
project's SUPERB head) on the pooled layers the workflow wrote (`sid/<corpus>/pooled_layers.npz`).

For each model given, it prints test accuracy (closed set: speakers with train segments) with a Wilson
95% interval for: hidden_0 alone, each layer alone, and every layer concatenated; then, for the first
model, the input-only gap (all - hidden_0) and, for every other model, its difference to the first
(the FFN dependence when the second is the first's `-noffn` control).

    .venv/bin/python scripts/linear_probe.py results/models/melhubert_demo results/models/melhubert_demo-noffn
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from speaker_neurons.statistics import wilson_interval


def probe(x_train, y_train, x_test, y_test, c: float) -> tuple[int, int]:
    scaler = StandardScaler().fit(x_train)
    clf = LogisticRegression(C=c, max_iter=2000).fit(scaler.transform(x_train), y_train)
    return int((clf.predict(scaler.transform(x_test)) == y_test).sum()), len(y_test)


def load(model_dir: Path):
    found = sorted((model_dir / "sid").glob("*/pooled_layers.npz"))
    if len(found) != 1:
        sys.exit(f"{model_dir / 'sid'} holds {len(found)} corpora's pooled_layers.npz, not one: run the workflow's "
                 f"pool_layers for {model_dir.name} first (or keep one SID corpus there)")
    path = found[0]
    with np.load(path) as z:
        return z["pooled"].astype(np.float64), z["speaker"].astype(str), z["split"].astype(str)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("models", nargs="+", type=Path, help="results/models/<name> folders")
    ap.add_argument("--C", type=float, default=1.0, help="inverse L2 strength of the probe")
    args = ap.parse_args(argv)
    rows = {}
    for m in args.models:
        pooled, spk, split = load(m)
        enrolled = set(spk[split == "train"])
        tr, te = split == "train", (split == "test") & np.isin(spk, list(enrolled))
        L = pooled.shape[1] - 1
        sets = {"hidden_0": [0], **{f"layer_{l}": [l] for l in range(1, L + 1)}, "all": list(range(L + 1))}
        res = {}
        for name, layers in sets.items():
            x = pooled[:, layers, :].reshape(len(pooled), -1)
            res[name] = probe(x[tr], spk[tr], x[te], spk[te], args.C)
        rows[m.name] = res
        print(f"{m.name}: {tr.sum()} train / {te.sum()} test segments, {len(enrolled)} speakers")
        for name, (c, n) in res.items():
            lo, hi = wilson_interval(c, n)
            print(f"  {name:10s} {100 * c / n:6.2f}% [{100 * lo:.2f}, {100 * hi:.2f}]")
    first = args.models[0].name
    c, n = rows[first]["all"]
    c0, n0 = rows[first]["hidden_0"]
    print(f"input-only gap of {first} (all - hidden_0): {100 * (c / n - c0 / n0):+.2f} points")
    for m in args.models[1:]:
        c1, n1 = rows[m.name]["all"]
        print(f"{first} - {m.name} (all layers): {100 * (c / n - c1 / n1):+.2f} points")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
