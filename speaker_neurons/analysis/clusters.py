"""Label-free classes: k-means on frames (SSL clusters) and on utterances (i-vector clusters).

Frame labels are stored per utterance (`labels.npz`: one int16 array per utterance id), so every
later join is by utterance id and frame index, never by line order.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from speaker_neurons.utils import get_logger, save_npz, write_json

log = get_logger("clusters")

#: The fit settings of the frame k-means (`speaker_neurons.kmeans.fit_kmeans`); analysis.max_frames and
#: analysis.seed are the config's, these are not config keys.
FRAME_KMEANS_FIT = {"batch_size": 10_000, "max_iter": 100, "n_init": 3}
# (torch, through speaker_neurons.kmeans, is imported by the functions that compute: reading labels and
# clusters does not need it, so the jobs that only read them start fast)


def sample_frames(feature_dir: str | Path, max_frames: int, seed: int) -> np.ndarray:
    """At most `max_frames` frames drawn uniformly without replacement (seeded), as float32."""
    from speaker_neurons.analysis.features import iter_feature_shards
    from speaker_neurons.kmeans import sample_indices

    index = pd.read_csv(Path(feature_dir) / "index.tsv", sep="\t")
    keep = sample_indices(int(index["frames"].sum()), max_frames, seed)
    parts = []
    start = 0
    for _, feats, _ in iter_feature_shards(feature_dir):
        n = feats.shape[0]
        if keep is None:
            parts.append(feats.astype(np.float32))
        else:
            lo, hi = np.searchsorted(keep, [start, start + n])
            parts.append(feats[keep[lo:hi] - start].astype(np.float32))
        start += n
    return np.concatenate(parts, axis=0)


def fit_frame_kmeans(feature_dir: str | Path, k: int, max_frames: int, seed: int, threads: int | None = None):
    """The package's frame k-means (speaker_neurons.kmeans) on a seeded sample of frames."""
    from speaker_neurons.kmeans import fit_kmeans

    return fit_kmeans(sample_frames(feature_dir, max_frames, seed), k, seed=seed, threads=threads, **FRAME_KMEANS_FIT)


def assign_frames(feature_dir: str | Path, centroids: np.ndarray) -> dict[str, np.ndarray]:
    """Nearest-centroid label of every frame, per utterance (int16)."""
    from speaker_neurons.analysis.features import iter_feature_shards
    from speaker_neurons.kmeans import assign

    labels: dict[str, np.ndarray] = {}
    for utt_ids, feats, lengths in iter_feature_shards(feature_dir):
        lab = assign(feats, centroids).astype(np.int16)
        off = 0
        for u, n in zip(utt_ids, lengths):
            labels[u] = lab[off : off + int(n)]
            off += int(n)
    return labels


def save_labels(labels: dict[str, np.ndarray], path: str | Path) -> None:
    save_npz(path, {u: labels[u] for u in sorted(labels)})


def load_labels(path: str | Path) -> dict[str, np.ndarray]:
    with np.load(path) as z:
        return {k: z[k] for k in z.files}


def export_hubert(labels: dict[str, np.ndarray], manifest: pd.DataFrame, tsv_path: str | Path, km_path: str | Path) -> None:
    """HuBERT label files: `.tsv` (audio root, then `<relative path>\\t<num samples>`) and `.km`
    (one line of space-separated cluster ids per utterance, same order). Samples are counted at
    16 kHz, read from the file header (a resampled file's count is scaled)."""
    import os

    import soundfile as sf

    def samples_16k(path: str) -> int:
        info = sf.info(path)
        return int(info.frames) if info.samplerate == 16000 else int(round(info.frames * 16000 / info.samplerate))

    rows = manifest[manifest["utt_id"].isin(labels)].sort_values("utt_id", kind="stable")
    paths = [str(Path(p).resolve()) for p in rows["path"]]
    root = os.path.commonpath([str(Path(p).parent) for p in paths]) if paths else "/"
    with open(tsv_path, "w") as ft, open(km_path, "w") as fk:
        ft.write(root + "\n")
        for row, p in zip(rows.itertuples(index=False), paths):
            ft.write(f"{os.path.relpath(p, root)}\t{samples_16k(p)}\n")
            fk.write(" ".join(str(int(v)) for v in labels[row.utt_id]) + "\n")


def run_frame_clustering(feature_dir: str | Path, manifest_path: str | Path, k: int, labels_npz: str | Path,
                         centroids_npy: str | Path, hubert_tsv: str | Path, hubert_km: str | Path, kmeans_json: str | Path,
                         max_frames: int, seed: int, threads: int | None = None) -> dict:
    """Fit, label every frame, and write the given files: labels (npz, one int16 array per
    utterance), centroids (npy), the HuBERT .tsv/.km pair and a JSON summary."""
    from speaker_neurons.data.manifest import read_manifest

    km = fit_frame_kmeans(feature_dir, k, max_frames=max_frames, seed=seed, threads=threads)
    centroids = km.cluster_centers_.astype(np.float32)
    labels = assign_frames(feature_dir, centroids)
    np.save(centroids_npy, centroids)
    save_labels(labels, labels_npz)
    export_hubert(labels, read_manifest(manifest_path), hubert_tsv, hubert_km)
    sizes = np.bincount(np.concatenate(list(labels.values())).astype(np.int64), minlength=k)
    info = {"k": k, "seed": seed, "max_frames": max_frames, "utterances": len(labels), "cluster_frames": sizes.tolist()}
    Path(kmeans_json).write_text(json.dumps(info, indent=2) + "\n")
    return info


def cluster_utterances(utt_ids: list[str], vectors: np.ndarray, k: int, seed: int, n_init: int) -> dict[str, int]:
    """k-means on utterance vectors (i-vectors), the best of `n_init` initialisations by the k-means
    objective; clusters renumbered by size (largest = 0) so the numbering does not depend on the
    initialisation. The k = 2 objective of small i-vectors has several near-equal optima: with 10
    initialisations the partition moved with the seed (adjusted Rand 0.76-0.84 between seeds on the
    demo), with 100 it did not; `partition_stability` measures it on every run."""
    from sklearn.cluster import KMeans

    km = KMeans(n_clusters=k, n_init=n_init, random_state=seed).fit(np.asarray(vectors, dtype=np.float64))
    sizes = np.bincount(km.labels_, minlength=k)
    order = np.argsort(-sizes, kind="stable")
    remap = np.empty(k, dtype=np.int64)
    remap[order] = np.arange(k)
    return {u: int(remap[lab]) for u, lab in zip(utt_ids, km.labels_)}


def _agreement(labels: np.ndarray, vector_sets, kmeans_seeds, k: int, n_init: int, seeds) -> dict:
    """Adjusted Rand index between `labels` and `cluster_utterances` of each (vectors, k-means seed)
    pair; `seeds` names each pair in the record."""
    from sklearn.metrics import adjusted_rand_score

    ids = [str(i) for i in range(len(labels))]
    aris = []
    for vecs, s in zip(vector_sets, kmeans_seeds):
        other = cluster_utterances(ids, np.asarray(vecs), k, int(s), n_init)
        aris.append(float(adjusted_rand_score(labels, [other[i] for i in ids])))
    return {"seeds": [int(s) for s in seeds], "ari": aris, "min_ari": min(aris) if aris else None,
            "mean_ari": float(np.mean(aris)) if aris else None}


def partition_stability(vectors: np.ndarray, labels: np.ndarray, k: int, seeds, n_init: int) -> dict:
    """Adjusted Rand index between `labels` and the partition `cluster_utterances` gives with each of
    `seeds`: 1 = the same partition, about 0 = unrelated. Labels are used nowhere."""
    seeds = list(seeds)
    return _agreement(labels, [vectors] * len(seeds), seeds, k, n_init, seeds)


def extractor_stability(other_vectors: np.ndarray, seeds, labels: np.ndarray, k: int, seed: int,
                        n_init: int) -> dict:
    """Adjusted Rand index between `labels` and the partition of each other extractor's i-vectors
    (`other_vectors[i]`: (U, dim), the same utterances in the same order, from an extractor trained with
    `seeds[i]`), each clustered exactly as the chosen one was (`cluster_utterances`, same k-means seed)."""
    return _agreement(labels, list(other_vectors), [seed] * len(other_vectors), k, n_init, seeds)


def cluster_stability(vectors: np.ndarray, utt_ids: Sequence[str], chosen: np.ndarray, k: int, seed: int, n_init: int,
                      runs: int, warn_below: float, other_seeds_npz: str | Path | None = None) -> dict:
    """How stable the chosen i-vector partition is: its adjusted Rand index against the partitions of
    `runs` other k-means seeds (seed + 1, ...) and, given `other_seeds_npz` (utt_id, seeds, ivectors),
    of extractors trained with other seeds; `stable` is False when any falls below `warn_below`
    (analysis.stability_warn_below), which is logged as a warning."""
    stab = {"kmeans_seeds": partition_stability(vectors, chosen, k, [seed + 1 + i for i in range(runs)], n_init)}
    if other_seeds_npz:
        with np.load(other_seeds_npz) as z:
            if z["utt_id"].tolist() != list(utt_ids):
                raise ValueError(f"{other_seeds_npz} holds other utterances than the i-vectors clustered; re-run "
                                 "rule ivectors")
            stab["extractor_seeds"] = extractor_stability(z["ivectors"], z["seeds"].tolist(), chosen, k, seed, n_init)
    aris = [a for part in stab.values() for a in part["ari"]]
    stab.update(k=k, n_init=n_init, warn_below=float(warn_below), min_ari=min(aris) if aris else None,
                stable=not aris or min(aris) >= float(warn_below))
    for what in ("kmeans_seeds", "extractor_seeds"):
        part = stab.get(what)
        if part and part["ari"]:
            log.info("adjusted Rand index against the chosen partition, other %s %s: %s", what.replace("_", " "),
                     part["seeds"], ", ".join(f"{a:.3f}" for a in part["ari"]))
    if not stab["stable"]:
        log.warning("UNSTABLE i-vector clusters: other k-means seeds or other i-vector extractor seeds give partitions "
                    "with adjusted Rand index down to %.2f against this one; the neuron sets rest on these clusters. "
                    "Try more analysis.ivector_n_init or other i-vector sizes (ivector.ubm_components, "
                    "ivector.ivector_dim)", stab["min_ari"])
    return stab


def write_utterance_clusters(labels: dict[str, int], path: str | Path) -> None:
    """`clusters.tsv`: utt_id, cluster (sorted by utterance id)."""
    pd.DataFrame(sorted(labels.items()), columns=["utt_id", "cluster"]).to_csv(path, sep="\t", index=False)


def read_utterance_clusters(path: str | Path) -> dict[str, int]:
    """The utterance -> cluster map that `write_utterance_clusters` wrote."""
    df = pd.read_csv(path, sep="\t", dtype={"utt_id": str})
    missing = {"utt_id", "cluster"} - set(df.columns)
    if missing:
        raise ValueError(f"{path}: not a clusters table (missing column(s) {sorted(missing)})")
    return dict(zip(df["utt_id"], df["cluster"].astype(int)))


def align_labels(labels: np.ndarray, n_frames: int, utt_id: str, max_mismatch: int) -> tuple[np.ndarray, bool]:
    """Join frame labels to `n_frames` model frames of one utterance by frame index.

    Lengths that differ by at most `max_mismatch` (different front ends) are truncated to the
    shorter; the flag says it happened (frames past the shorter side get no label: -1). A larger
    difference is an error naming the utterance.
    """
    diff = len(labels) - n_frames
    if abs(diff) > max_mismatch:
        raise ValueError(
            f"utterance {utt_id}: {len(labels)} frame labels for {n_frames} model frames "
            f"(difference {diff:+d} exceeds {max_mismatch}); labels and model frames must come from the same frame rate"
        )
    out = np.full(n_frames, -1, dtype=np.int64)
    m = min(len(labels), n_frames)
    out[:m] = labels[:m]
    return out, diff != 0


def run_ivector_clusters(scp: str | Path, manifest_path: str | Path, other_seeds_npz: str | Path | None,
                         params: dict, out_clusters: str | Path, out_purity_tsv: str | Path,
                         out_purity_png: str | Path, out_stability: str | Path) -> dict:
    """k-means of the i-vectors (`clusters.tsv`), the clusters against gender (where the manifest has it)
    and their stability (JSON). `params`: k, seed, n_init, stability_runs, stability_warn_below."""
    from speaker_neurons.analysis.ivector import read_ivectors
    from speaker_neurons.analysis.report import write_gender_purity
    from speaker_neurons.data.manifest import read_manifest

    k, seed, n_init = int(params["k"]), int(params["seed"]), int(params["n_init"])
    utt_ids, vecs = read_ivectors(scp)
    vecs = np.asarray(vecs)
    labels = cluster_utterances(list(utt_ids), vecs, k, seed, n_init)
    write_utterance_clusters(labels, out_clusters)
    purity = write_gender_purity(labels, read_manifest(manifest_path), out_purity_tsv, out_purity_png)
    stab = cluster_stability(vecs, utt_ids, np.array([labels[u] for u in utt_ids]), k, seed, n_init,
                             int(params["stability_runs"]), params["stability_warn_below"], other_seeds_npz or None)
    write_json(out_stability, stab)
    return {"k": k, "sizes": np.bincount(list(labels.values()), minlength=k).tolist(), "gender_purity": purity,
            "stability": stab}
