"""How stable and how gender-pure is the k = 2 i-vector partition, per post-processing, extractor training
corpus and consensus, on several corpora? (The defaults of `ivector.center`, `ivector.whiten`,
`ivector.length_norm` and `analysis.ivector_partition` were chosen from its table: docs/benchmarks.md.)

For each corpus (`NAME=manifest.tsv`, two or more): features once (the config's i-vector recipe), then
`--seeds` extractors (seeds 0..n-1) trained on the corpus itself (`own`) or, with `--train-on-others`, also
on the union of the other corpora listed (`others`: a larger extractor corpus that excludes the clustered
one). Each extractor's raw i-vectors of the corpus go through every post-processing of `--post`
(c = centre, w = whiten, l = length-normalise; `-` = none), fitted on the corpus, and are clustered as the
workflow does (`fit_utterance_clusters`, k = 2, seed 0, 100 initialisations). Per row:

* ARI vs seed 0: the adjusted Rand index of each other extractor's partition against seed 0's, min / mean
  (the workflow's stability figure, `stability_extractors` = n - 1);
* purity: the lower of the two clusters' gender purity, seed 0 and the worst over all seeds;
* consensus: the co-association consensus of all n partitions (`consensus_partition`): the ARI between the
  consensuses of the even and the odd seeds (two disjoint sets of extractors), and the consensus' purity.

Gender is used to score only. Nothing here chooses: read the table.

    .venv/bin/python benchmarks/ivector_partition.py demo=results/corpora/demo/manifest.tsv \\
        demo_eval=results/corpora/demo_eval/manifest.tsv --seeds 6 --train-on-others
"""

from __future__ import annotations

import argparse
import time

import numpy as np

import common  # noqa: E402,F401  (puts the project on sys.path)

POST = {"-": (False, False, False), "c": (True, False, False), "cl": (True, False, True),
        "cw": (True, True, False), "cwl": (True, True, True)}


def main(argv=None) -> int:
    from sklearn.metrics import adjusted_rand_score

    from speaker_neurons.analysis import ivector as iv
    from speaker_neurons.analysis.clusters import consensus_partition, fit_utterance_clusters
    from speaker_neurons.analysis.report import gender_purity
    from speaker_neurons.audio import load_audio
    from speaker_neurons.config import defaults
    from speaker_neurons.data.manifest import read_manifest

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("corpora", nargs="+", help="NAME=manifest.tsv")
    ap.add_argument("--seeds", type=int, default=6)
    ap.add_argument("--post", nargs="+", default=list(POST), choices=list(POST))
    ap.add_argument("--train-on-others", action="store_true", help="also train the extractors on the other corpora")
    ap.add_argument("--size", default="", help="UBMxDIM (default: the config schema's)")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    base = defaults("ivector")
    base.pop("kaldi_ivectors", None)
    if args.size:
        base["ubm_components"], base["ivector_dim"] = (int(x) for x in args.size.split("x"))

    corpora = {}
    for spec in args.corpora:
        name, path = spec.split("=", 1)
        manifest = read_manifest(path)
        t0 = time.monotonic()
        ids, feats, _ = iv.extract_features(((r.utt_id, load_audio(r.path, base["sample_rate"])[0])
                                             for r in manifest.itertuples()), base, progress=False)
        corpora[name] = (manifest, ids, feats)
        print(f"{name}: features of {len(ids)} utterances in {time.monotonic() - t0:.1f} s", flush=True)

    def purity(ids, labels, manifest) -> float:
        pur = gender_purity(dict(zip(ids, labels.tolist())), manifest)
        return float(pur["purity"].min()) if len(pur) == 2 else float("nan")

    print(f"\nUBM {base['ubm_components']} x dim {base['ivector_dim']}, {args.seeds} extractor seeds, k = 2\n")
    print("| corpus | extractor trained on | post | ARI vs seed 0 (min / mean) | purity seed 0 / worst (%) | "
          "consensus: ARI even vs odd seeds | consensus purity (%) |")
    print("|---|---|---|---|---|---|---|")
    modes = ["own"] + (["others"] if args.train_on_others else [])
    for name, (manifest, ids, feats) in corpora.items():
        for mode in modes:
            train = feats if mode == "own" else [f for n, c in corpora.items() if n != name for f in c[2]]
            raws = []
            for seed in range(args.seeds):
                with iv.torch_threads(args.threads):
                    ext = iv.IVectorExtractor({**base, "seed": seed}).fit(train)
                    raws.append(ext.transform(feats, normalize=False))
            for post in args.post:
                center, whiten, lnorm = POST[post]
                parts = []
                for raw in raws:
                    mean, w = iv.fit_postprocessing(raw, center, whiten)
                    parts.append(fit_utterance_clusters(iv.apply_postprocessing(raw, mean, w, lnorm), 2, 0, 100)[0])
                aris = [adjusted_rand_score(parts[0], p) for p in parts[1:]]
                purs = [purity(ids, p, manifest) for p in parts]
                cons = consensus_partition(parts, 2, 0, 100)
                halves = adjusted_rand_score(consensus_partition(parts[0::2], 2, 0, 100),
                                             consensus_partition(parts[1::2], 2, 0, 100))
                train_name = name if mode == "own" else "+".join(n for n in corpora if n != name)
                print(f"| {name} | {train_name} | {post} | {min(aris):.3f} / {np.mean(aris):.3f} | "
                      f"{100 * purs[0]:.1f} / {100 * min(purs):.1f} | {halves:.3f} | "
                      f"{100 * purity(ids, cons, manifest):.1f} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
