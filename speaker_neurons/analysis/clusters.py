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


def fit_utterance_clusters(vectors: np.ndarray, k: int, seed: int, n_init: int) -> tuple[np.ndarray, np.ndarray]:
    """k-means on utterance vectors (i-vectors), the best of `n_init` initialisations by the k-means
    objective: (labels (U,), centres (k, dim) float64). Each utterance's label is its nearest centre
    (`assign_to_centres`), so new vectors are assigned by the same rule; clusters are renumbered by
    size (largest = 0) so the numbering does not depend on the initialisation. The k = 2 objective of
    small i-vectors has several near-equal optima: with 10 initialisations the partition moved with
    the seed (adjusted Rand 0.76-0.84 between seeds on the demo), with 100 it did not;
    `partition_stability` measures it on every run."""
    from sklearn.cluster import KMeans

    x = np.asarray(vectors, dtype=np.float64)
    km = KMeans(n_clusters=k, n_init=n_init, random_state=seed).fit(x)
    centres = np.asarray(km.cluster_centers_, dtype=np.float64)
    labels = assign_to_centres(x, centres)
    moved = int((labels != km.labels_).sum())
    if moved:  # k-means ends on an assignment step: only exact ties can differ
        log.debug("%d utterance(s) are nearer another centre than k-means' last assignment (ties)", moved)
    sizes = np.bincount(labels, minlength=k)
    order = np.argsort(-sizes, kind="stable")
    remap = np.empty(k, dtype=np.int64)
    remap[order] = np.arange(k)
    return remap[labels], centres[order]


def assign_to_centres(vectors: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """(U,) int64: the nearest of `centres` (squared Euclidean, float64; the first on a tie) of each vector."""
    x = np.asarray(vectors, dtype=np.float64)
    c = np.asarray(centres, dtype=np.float64)
    if x.ndim != 2 or c.ndim != 2 or x.shape[1] != c.shape[1]:
        raise ValueError(f"vectors of shape {x.shape} cannot be assigned to centres of shape {c.shape}")
    out = np.empty(len(x), dtype=np.int64)
    for s in range(0, len(x), 4096):  # each row alone: its label does not depend on the others
        out[s : s + 4096] = ((x[s : s + 4096, None, :] - c[None, :, :]) ** 2).sum(-1).argmin(1)
    return out


def cluster_utterances(utt_ids: list[str], vectors: np.ndarray, k: int, seed: int, n_init: int) -> dict[str, int]:
    """{utt_id: cluster} of `fit_utterance_clusters`."""
    labels, _ = fit_utterance_clusters(vectors, k, seed, n_init)
    return {u: int(lab) for u, lab in zip(utt_ids, labels)}


#: What the i-vector clustering did to the i-vectors before k-means: nothing beyond the extractor's own
#: normalisation (minus the analysis corpus' mean i-vector, unit length; `IVectorExtractor.transform`).
CLUSTER_SPACE = "extractor i-vectors (minus the analysis corpus mean, unit length), float64, no further scaling"


def save_cluster_centres(path: str | Path, centres: np.ndarray, k: int, seed: int, n_init: int,
                         dim: int) -> None:
    """The k-means model of the i-vector clusters (npz): `centres` (k, dim) float64 in cluster order,
    and what assigning a new i-vector needs to know (`space`: the vectors the centres live among)."""
    from speaker_neurons.utils import save_npz

    save_npz(path, {"centres": np.asarray(centres, dtype=np.float64), "k": np.int64(k), "seed": np.int64(seed),
                    "n_init": np.int64(n_init), "dim": np.int64(dim), "space": np.array(CLUSTER_SPACE)})


def load_cluster_centres(path: str | Path) -> np.ndarray:
    """The (k, dim) centres `save_cluster_centres` wrote; a file of another kind is an error naming it."""
    with np.load(path, allow_pickle=False) as z:
        if "centres" not in z.files or "space" not in z.files:
            raise ValueError(f"{path} is not an i-vector cluster model (no centres); re-run rule ivector_clusters")
        if str(z["space"]) != CLUSTER_SPACE:
            raise ValueError(f"{path}: centres of other vectors ({z['space']}); re-run rule ivector_clusters")
        return z["centres"].astype(np.float64)


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
                         out_purity_png: str | Path, out_stability: str | Path, out_centres: str | Path) -> dict:
    """k-means of the i-vectors (`clusters.tsv`) and its centres (`out_centres`, for assigning the
    utterances of another corpus: `run_assign_ivector_clusters`), the clusters against gender (where
    the manifest has it) and their stability (JSON). `params`: k, seed, n_init, stability_runs,
    stability_warn_below."""
    from speaker_neurons.analysis.ivector import read_ivectors
    from speaker_neurons.analysis.report import write_gender_purity
    from speaker_neurons.data.manifest import read_manifest

    k, seed, n_init = int(params["k"]), int(params["seed"]), int(params["n_init"])
    utt_ids, vecs = read_ivectors(scp)
    vecs = np.asarray(vecs)
    chosen, centres = fit_utterance_clusters(vecs, k, seed, n_init)
    labels = {u: int(lab) for u, lab in zip(utt_ids, chosen)}
    write_utterance_clusters(labels, out_clusters)
    save_cluster_centres(out_centres, centres, k, seed, n_init, vecs.shape[1])
    purity = write_gender_purity(labels, read_manifest(manifest_path), out_purity_tsv, out_purity_png)
    stab = cluster_stability(vecs, utt_ids, chosen, k, seed, n_init, int(params["stability_runs"]),
                             params["stability_warn_below"], other_seeds_npz or None)
    write_json(out_stability, stab)
    return {"k": k, "sizes": np.bincount(list(labels.values()), minlength=k).tolist(), "gender_purity": purity,
            "stability": stab}


def assign_ivector_clusters(manifest: pd.DataFrame, extractor_path: str | Path, centres_path: str | Path,
                            device="cpu", num_threads: int | None = None,
                            progress: bool = True) -> dict[str, int]:
    """{utt_id: cluster} of every utterance of `manifest` from its own audio: its i-vector by the
    analysis corpus' extractor (`extractor_path`: UBM, T and the analysis corpus' mean i-vector), then
    the nearest of the analysis corpus' k-means centres (`centres_path`), the rule that labelled the
    analysis corpus' own utterances. Nothing is looked up by utterance id."""
    from speaker_neurons.analysis.ivector import IVectorExtractor, ivectors_of_manifest

    extractor = IVectorExtractor.load(extractor_path, device=device)
    centres = load_cluster_centres(centres_path)
    if centres.shape[1] != extractor.T.shape[1]:
        raise ValueError(f"{centres_path}: centres of {centres.shape[1]}-dim vectors, but {extractor_path} makes "
                         f"{extractor.T.shape[1]}-dim i-vectors; re-run rules ivectors and ivector_clusters")
    ids, vecs = ivectors_of_manifest(manifest, extractor, device=device, num_threads=num_threads, progress=progress)
    return {u: int(c) for u, c in zip(ids, assign_to_centres(vecs, centres))}


def run_assign_ivector_clusters(manifest_path: str | Path, corpus: str, analysis_manifest_path: str | Path,
                                analysis_corpus: str, extractor_path: str | Path, centres_path: str | Path,
                                out_clusters: str | Path, device="cpu", num_threads: int | None = None) -> dict:
    """The i-vector cluster of every utterance of corpus `corpus` (an evaluation corpus), assigned from its
    own audio with the analysis corpus' extractor and centres (`assign_ivector_clusters`), as a clusters
    table (`write_utterance_clusters`). Stops first when the two corpora share an utterance id
    (`speaker_neurons.catalogue.check_distinct_ids`): tables of both corpora are keyed by utterance id."""
    from speaker_neurons.catalogue import check_distinct_ids
    from speaker_neurons.data.manifest import read_manifest

    manifest = read_manifest(manifest_path)
    check_distinct_ids({analysis_corpus: read_manifest(analysis_manifest_path), corpus: manifest})
    labels = assign_ivector_clusters(manifest, extractor_path, centres_path, device=device, num_threads=num_threads)
    write_utterance_clusters(labels, out_clusters)
    k = len(load_cluster_centres(centres_path))
    sizes = np.bincount(np.fromiter(labels.values(), dtype=np.int64, count=len(labels)), minlength=k).tolist()
    log.info("%s: %d utterances assigned to the i-vector clusters of %s, sizes %s", corpus, len(labels),
             analysis_corpus, sizes)
    return {"corpus": corpus, "analysis_corpus": analysis_corpus, "utterances": len(labels), "sizes": sizes}
