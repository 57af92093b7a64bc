"""i-vector clusters against the extractor's sizes: gender purity of the k = 2 clusters and their
stability over extractor seeds, per (UBM components, i-vector dimension), on one corpus.

Features are computed once; each size fits `--seeds` extractors (seeds 0..n-1), clusters each one's
i-vectors as the workflow does (`cluster_utterances`, 100 initialisations), and prints per size: the
purity of both clusters for seed 0, the lowest purity over all seeds, and the adjusted Rand index of
every other seed's partition against seed 0's (min / mean). Gender is used to score only.

    .venv/bin/python benchmarks/ivector_sizes.py results/manifest/manifest.tsv --sizes 64x10 32x10 128x20
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main(argv=None) -> int:
    from sklearn.metrics import adjusted_rand_score

    from speaker_neurons.analysis import ivector as iv
    from speaker_neurons.analysis.clusters import cluster_utterances
    from speaker_neurons.analysis.report import gender_purity
    from speaker_neurons.audio import load_audio
    from speaker_neurons.config import defaults
    from speaker_neurons.data.manifest import read_manifest

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("manifest", type=Path)
    ap.add_argument("--sizes", nargs="+", default=["64x10"], help="UBMxDIM, e.g. 64x10")
    ap.add_argument("--seeds", type=int, default=4)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    manifest = read_manifest(args.manifest)
    base = defaults("ivector")
    base.pop("kaldi_ivectors", None)
    t0 = time.monotonic()
    utt_ids, feats, _ = iv.extract_features(((r.utt_id, load_audio(r.path, base["sample_rate"])[0])
                                             for r in manifest.itertuples()),
                                            base, progress=False)
    print(f"features of {len(utt_ids)} utterances in {time.monotonic() - t0:.1f} s", flush=True)
    print("| UBM | dim | purity seed 0 (%) | lowest purity over seeds (%) | ARI vs seed 0 (min / mean) | s |")
    print("|---|---|---|---|---|---|")
    for size in args.sizes:
        ubm, dim = (int(x) for x in size.split("x"))
        t1 = time.monotonic()
        parts, purities = [], []
        for seed in range(args.seeds):
            cfg = {**base, "ubm_components": ubm, "ivector_dim": dim, "seed": seed}
            with iv.torch_threads(args.threads):
                ext = iv.IVectorExtractor(cfg).fit(feats)
                raw = ext.transform(feats, normalize=False)
            vecs = iv.length_normalize(raw - raw.mean(0, keepdims=True))
            lab = cluster_utterances(list(utt_ids), vecs, 2, 0, 100)
            parts.append(np.array([lab[u] for u in utt_ids]))
            pur = gender_purity(lab, manifest)
            purities.append(pur["purity"].tolist() if len(pur) else [float("nan")])
        aris = [adjusted_rand_score(parts[0], p) for p in parts[1:]]
        first = " / ".join(f"{100 * p:.1f}" for p in purities[0])
        low = min(min(p) for p in purities)
        print(f"| {ubm} | {dim} | {first} | {100 * low:.1f} | {min(aris):.3f} / {np.mean(aris):.3f} | "
              f"{time.monotonic() - t1:.0f} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
