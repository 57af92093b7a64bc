"""Label-free classes: k-means on frames (SSL clusters) and on utterances (i-vector clusters).

Frame labels are stored per utterance (`labels.npz`: one int16 array per utterance id), so every
later join is by utterance id and frame index, never by line order.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from speaker_neurons.analysis.frame_labels import save_labels
from speaker_neurons.utils import get_logger, write_json

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
CLUSTER_SPACE = ("extractor i-vectors post-processed as the extractor file says (centre, whiten, length-normalise, "
                 "fitted on the analysis corpus), float64, no further scaling")


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


def match_cluster_ids(labels: np.ndarray, reference: np.ndarray, k: int) -> np.ndarray:
    """`labels` renumbered so that each cluster takes the number of the `reference` cluster it shares the
    most utterances with (the assignment that maximises the agreement, Hungarian algorithm; ties to the
    lower numbers): two partitions of the same utterances then speak of the same clusters by number."""
    from scipy.optimize import linear_sum_assignment

    labels = np.asarray(labels, dtype=np.int64)
    reference = np.asarray(reference, dtype=np.int64)
    if labels.shape != reference.shape:
        raise ValueError(f"partitions of different shapes {labels.shape} and {reference.shape}")
    table = np.zeros((k, k), dtype=np.int64)
    np.add.at(table, (labels, reference), 1)
    rows, cols = linear_sum_assignment(-table)
    remap = np.empty(k, dtype=np.int64)
    remap[rows] = cols
    return remap[labels]


def coassociation_embedding(partitions: Sequence[np.ndarray], k: int) -> np.ndarray:
    """(U, P * k) float64: the one-hot labels of P partitions of the same U utterances side by side. The
    squared distance of two rows is 2 (P - agreements) = 2 P (1 - A_uv), A_uv the co-association of u and v
    (the share of partitions that put them together), so k-means on these rows clusters the co-association
    matrix without forming its U x U entries."""
    parts = [np.asarray(p, dtype=np.int64) for p in partitions]
    if not parts:
        raise ValueError("a consensus needs at least one partition")
    if len({len(p) for p in parts}) != 1:
        raise ValueError(f"partitions of different lengths {sorted({len(p) for p in parts})}")
    bad = [int(p.max()) for p in parts if len(p) and (p.min() < 0 or p.max() >= k)]
    if bad:
        raise ValueError(f"cluster labels outside 0..{k - 1}")
    h = np.zeros((len(parts[0]), len(parts) * k))
    for i, p in enumerate(parts):
        h[np.arange(len(p)), i * k + p] = 1.0
    return h


def consensus_partition(partitions: Sequence[np.ndarray], k: int, seed: int, n_init: int) -> np.ndarray:
    """The consensus of several partitions of the same utterances (e.g. the k-means partitions of the
    i-vectors of extractors trained with different seeds): k-means on their co-association embedding
    (`coassociation_embedding`), the best of `n_init` initialisations, renumbered by size (largest = 0).
    Where all partitions agree it returns that partition (renumbered)."""
    labels, _ = fit_utterance_clusters(coassociation_embedding(partitions, k), k, seed, n_init)
    return labels


def consensus_stability(partitions: Sequence[np.ndarray], k: int, seed: int, n_init: int) -> dict:
    """How much the consensus depends on which extractors it is made of: the adjusted Rand index between the
    consensus of all `partitions` and each consensus that leaves one out (`leave_one_out`), and, with 4 or
    more, between the consensuses of two disjoint halves (even and odd positions; `halves`)."""
    from sklearn.metrics import adjusted_rand_score

    parts = list(partitions)
    full = consensus_partition(parts, k, seed, n_init)
    loo = [float(adjusted_rand_score(full, consensus_partition(parts[:i] + parts[i + 1 :], k, seed, n_init)))
           for i in range(len(parts))] if len(parts) > 1 else []
    out = {"partitions": len(parts), "leave_one_out": loo, "min_leave_one_out": min(loo) if loo else None}
    if len(parts) >= 4:
        out["halves"] = float(adjusted_rand_score(consensus_partition(parts[0::2], k, seed, n_init),
                                                  consensus_partition(parts[1::2], k, seed, n_init)))
    return out


def _ari(a: np.ndarray, b: np.ndarray) -> float:
    from sklearn.metrics import adjusted_rand_score

    return float(adjusted_rand_score(a, b))


def _agreement(labels: np.ndarray, others: Sequence[np.ndarray], seeds) -> dict:
    """Adjusted Rand index between `labels` and each of `others`; `seeds` names each in the record."""
    aris = [_ari(labels, o) for o in others]
    return {"seeds": [int(s) for s in seeds], "ari": aris, "min_ari": min(aris) if aris else None,
            "mean_ari": float(np.mean(aris)) if aris else None}


def partition_stability(vectors: np.ndarray, labels: np.ndarray, k: int, seeds, n_init: int) -> dict:
    """Adjusted Rand index between `labels` and the partition `fit_utterance_clusters` gives with each of
    `seeds`: 1 = the same partition, about 0 = unrelated. Labels are used nowhere."""
    seeds = list(seeds)
    return _agreement(labels, [fit_utterance_clusters(vectors, k, int(s), n_init)[0] for s in seeds], seeds)


def read_other_extractors(other_seeds_npz: str | Path, utt_ids: Sequence[str]) -> dict[int, np.ndarray]:
    """{seed: (U, dim) i-vectors} of the other extractors (rule ivectors' `extractor_seeds.npz`), checked to hold
    the same utterances in the same order as `utt_ids`."""
    with np.load(other_seeds_npz) as z:
        if z["utt_id"].tolist() != list(utt_ids):
            raise ValueError(f"{other_seeds_npz} holds other utterances than the i-vectors clustered; re-run rule "
                             "ivectors")
        return {int(s): np.asarray(v) for s, v in zip(z["seeds"].tolist(), z["ivectors"])}


#: analysis.ivector_partition: which partition the neuron sets rest on.
PARTITION_CHOICES = ("auto", "extractor", "consensus")


def ivector_partitions(vectors: np.ndarray, others: Mapping[int, np.ndarray], k: int, seed: int, n_init: int,
                       name: str = "extractor") -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Every partition of the utterances the i-vectors give: `name` = the k-means partition of `vectors` (the
    chosen extractor's), `extractor_seed_<s>` = that of each other extractor's i-vectors (`others`, clustered
    the same way) and, with other extractors, `consensus` = the co-association consensus of all of them
    (`consensus_partition`); every one renumbered to match the chosen partition (`match_cluster_ids`). Returns
    (partitions, the chosen partition's k-means centres)."""
    chosen, centres = fit_utterance_clusters(vectors, k, seed, n_init)
    parts = {name: chosen}
    for s, v in others.items():
        parts[f"extractor_seed_{s}"] = match_cluster_ids(fit_utterance_clusters(v, k, seed, n_init)[0], chosen, k)
    if others:
        parts["consensus"] = match_cluster_ids(consensus_partition(list(parts.values()), k, seed, n_init), chosen, k)
    return parts, centres


def cluster_stability(vectors: np.ndarray, partitions: Mapping[str, np.ndarray], k: int, seed: int, n_init: int,
                      runs: int, warn_below: float) -> dict:
    """How stable the i-vector partitions are (`partitions` from `ivector_partitions`, the chosen extractor's
    first): the chosen partition's adjusted Rand index against the partitions of `runs` other k-means seeds
    (seed + 1, ...) and against each other extractor's (`extractor_seeds`); `stable` is False when any falls
    below `warn_below` (analysis.stability_warn_below), which is logged as a warning. With a consensus:
    `consensus_stability` of the extractors' partitions and its agreement with the chosen one, and
    `consensus["stable"]` (the halves' agreement, or the lowest leave-one-out one, at least `warn_below`)."""
    names = list(partitions)
    chosen = partitions[names[0]]
    stab = {"kmeans_seeds": partition_stability(vectors, chosen, k, [seed + 1 + i for i in range(runs)], n_init)}
    others = [n for n in names[1:] if n.startswith("extractor_seed_")]
    if others:
        stab["extractor_seeds"] = _agreement(chosen, [partitions[n] for n in others],
                                             [int(n[len("extractor_seed_"):]) for n in others])
    aris = [a for part in stab.values() for a in part["ari"]]
    stab.update(k=k, n_init=n_init, warn_below=float(warn_below), min_ari=min(aris) if aris else None,
                stable=not aris or min(aris) >= float(warn_below))
    if "consensus" in partitions:
        cons = consensus_stability([partitions[n] for n in names if n != "consensus"], k, seed, n_init)
        cons["ari_vs_chosen"] = _ari(partitions["consensus"], chosen)
        figure = cons.get("halves", cons["min_leave_one_out"])
        cons["stable"] = figure is not None and figure >= float(warn_below)
        stab["consensus"] = cons
    for what in ("kmeans_seeds", "extractor_seeds"):
        part = stab.get(what)
        if part and part["ari"]:
            log.info("adjusted Rand index against the chosen partition, other %s %s: %s", what.replace("_", " "),
                     part["seeds"], ", ".join(f"{a:.3f}" for a in part["ari"]))
    if "consensus" in stab:
        c = stab["consensus"]
        log.info("consensus of %d extractors: adjusted Rand index %s between the consensuses of disjoint halves, "
                 "lowest %s leaving one extractor out, %.3f against the chosen extractor's partition",
                 c["partitions"], f"{c['halves']:.3f}" if "halves" in c else "(under 4 extractors: none)",
                 f"{c['min_leave_one_out']:.3f}" if c["min_leave_one_out"] is not None else "-", c["ari_vs_chosen"])
    if not stab["stable"]:
        log.warning("UNSTABLE i-vector clusters: other k-means seeds or other i-vector extractor seeds give partitions "
                    "with adjusted Rand index down to %.2f against this one. The consensus of the extractors "
                    "(analysis.ivector_partition: auto or consensus) does not rest on one seed; more extractors "
                    "(analysis.stability_extractors) make it steadier", stab["min_ari"])
    return stab


def choose_partition(partitions: Mapping[str, np.ndarray], stability: Mapping[str, Any], choice: str) -> str:
    """The name of the partition the neuron sets rest on: `extractor` = the chosen extractor's (the first),
    `consensus` = the consensus (an error without other extractors), `auto` = the consensus when the chosen
    extractor's partition is flagged unstable (`stability["stable"]` False) and a consensus exists, else the
    chosen extractor's."""
    if choice not in PARTITION_CHOICES:
        raise ValueError(f"analysis.ivector_partition must be one of {'|'.join(PARTITION_CHOICES)}, got {choice!r}")
    first = next(iter(partitions))
    if choice == "extractor":
        return first
    if "consensus" not in partitions:
        if choice == "consensus":
            raise ValueError("analysis.ivector_partition: consensus needs other extractors "
                             "(analysis.stability_extractors >= 1, i-vectors extracted by the workflow)")
        return first
    return "consensus" if choice == "consensus" or not stability["stable"] else first


def write_partitions(partitions: Mapping[str, np.ndarray], utt_ids: Sequence[str], path: str | Path) -> None:
    """`partitions.tsv`: utt_id and one column per partition (cluster numbers matched across columns), sorted
    by utterance id."""
    df = pd.DataFrame({"utt_id": list(utt_ids), **{n: np.asarray(v, dtype=np.int64) for n, v in partitions.items()}})
    df.sort_values("utt_id", kind="stable").to_csv(path, sep="\t", index=False)


def read_partitions(path: str | Path) -> dict[str, dict[str, int]]:
    """{partition name: {utt_id: cluster}} of `write_partitions`' table."""
    df = pd.read_csv(path, sep="\t", dtype={"utt_id": str})
    if "utt_id" not in df.columns or len(df.columns) < 2:
        raise ValueError(f"{path}: not a partitions table (utt_id and one column per partition)")
    return {c: dict(zip(df["utt_id"], df[c].astype(int))) for c in df.columns if c != "utt_id"}


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


def run_ivector_clusters(scp: str | Path, manifest_path: str | Path, other_seeds_npz: str | Path | None,
                         params: dict, out_clusters: str | Path, out_partitions: str | Path, out_purity_tsv: str | Path,
                         out_purity_png: str | Path, out_stability: str | Path, out_centres: str | Path) -> dict:
    """The i-vector clusters the neuron sets rest on (`clusters.tsv`): the k-means partition of the i-vectors,
    or the consensus of the extractors' partitions (`choose_partition`, params `partition`); every partition
    (`partitions.tsv`), the used one against gender (where the manifest has it), their stability (JSON, with
    `rests_on` naming the used partition) and the centres that assign another corpus' utterances
    (`out_centres`; for the consensus, the mean of each cluster's i-vectors of the chosen extractor).
    `params`: k, seed, n_init, stability_runs, stability_warn_below, partition, extractor_seed (None for
    i-vectors given from outside)."""
    from speaker_neurons.analysis.ivector import read_ivectors
    from speaker_neurons.analysis.report import write_gender_purity
    from speaker_neurons.data.manifest import read_manifest

    k, seed, n_init = int(params["k"]), int(params["seed"]), int(params["n_init"])
    utt_ids, vecs = read_ivectors(scp)
    vecs = np.asarray(vecs)
    others = read_other_extractors(other_seeds_npz, utt_ids) if other_seeds_npz else {}
    ext_seed = params.get("extractor_seed")
    parts, centres = ivector_partitions(vecs, others, k, seed, n_init,
                               name="given" if ext_seed is None else f"extractor_seed_{int(ext_seed)}")
    stab = cluster_stability(vecs, parts, k, seed, n_init, int(params["stability_runs"]),
                             params["stability_warn_below"])
    used = choose_partition(parts, stab, str(params.get("partition", "extractor")))
    stab.update(rests_on=used, partition_choice=str(params.get("partition", "extractor")), partitions=list(parts))
    log.info("the neuron sets rest on the %s partition", used)
    labels_arr = parts[used]
    if used != next(iter(parts)):
        if len(np.unique(labels_arr)) < k:
            raise ValueError(f"the {used} partition of {scp} has an empty cluster; use analysis.ivector_partition: "
                             "extractor")
        centres = np.stack([vecs[labels_arr == g].astype(np.float64).mean(0) for g in range(k)])
        agree = float((assign_to_centres(vecs, centres) == labels_arr).mean())
        stab["consensus"]["centre_agreement"] = agree
        log.info("%.1f%% of the utterances are nearest the centre of their %s cluster (the rule that assigns "
                 "other corpora)", 100 * agree, used)
    labels = {u: int(lab) for u, lab in zip(utt_ids, labels_arr)}
    write_utterance_clusters(labels, out_clusters)
    write_partitions(parts, utt_ids, out_partitions)
    save_cluster_centres(out_centres, centres, k, seed, n_init, vecs.shape[1])
    purity = write_gender_purity(labels, read_manifest(manifest_path), out_purity_tsv, out_purity_png)
    write_json(out_stability, stab)
    return {"k": k, "sizes": np.bincount(labels_arr, minlength=k).tolist(), "gender_purity": purity,
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
    (`speaker_neurons.data.manifest.check_distinct_ids`): tables of both corpora are keyed by utterance id."""
    from speaker_neurons.data.manifest import check_distinct_ids, read_manifest

    manifest = read_manifest(manifest_path)
    check_distinct_ids({analysis_corpus: read_manifest(analysis_manifest_path), corpus: manifest})
    labels = assign_ivector_clusters(manifest, extractor_path, centres_path, device=device, num_threads=num_threads)
    write_utterance_clusters(labels, out_clusters)
    k = len(load_cluster_centres(centres_path))
    sizes = np.bincount(np.fromiter(labels.values(), dtype=np.int64, count=len(labels)), minlength=k).tolist()
    log.info("%s: %d utterances assigned to the i-vector clusters of %s, sizes %s", corpus, len(labels),
             analysis_corpus, sizes)
    return {"corpus": corpus, "analysis_corpus": analysis_corpus, "utterances": len(labels), "sizes": sizes}
