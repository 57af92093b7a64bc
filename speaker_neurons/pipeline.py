"""One function per workflow stage: paths and plain dicts in, files out.

The Snakemake adapters in workflow_scripts/ call exactly one of these; tests call them directly.
Every stage writes `provenance/<stage>.json` into its output folder: the resolved parameters, the
inputs' checksums and the package versions.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from speaker_neurons.utils import get_logger, write_provenance

log = get_logger("pipeline")


def _provenance(out_dir, stage: str, params: dict, inputs, checksums: dict | None = None) -> None:
    write_provenance(Path(out_dir) / "provenance", params, [str(p) for p in inputs], name=stage, checksums=checksums)


def load_model(upstream: dict, device: str = "auto"):
    from speaker_neurons.models import load_upstream

    return load_upstream(upstream, device=device)


def extract_features(manifest_path, upstream: dict, out_dir, feature_layer=None, device="auto", max_batch_seconds=60.0) -> dict:
    """Hidden states of `feature_layer` (default round(0.75 L)) for every utterance, in shards."""
    from speaker_neurons.analysis.features import default_feature_layer, extract_layer_features
    from speaker_neurons.data.manifest import read_manifest

    model = load_model(upstream, device)
    layer = default_feature_layer(model.num_layers) if feature_layer in (None, "auto") else int(feature_layer)
    info = extract_layer_features(model, read_manifest(manifest_path), layer, out_dir, max_batch_seconds=max_batch_seconds)
    _provenance(out_dir, "extract_features", {"upstream": upstream, "feature_layer": layer}, [manifest_path, upstream.get("path", "")])
    return info


def frame_clusters(feature_dir, manifest_path, k: int, out_dir, max_frames: int = 1_000_000, seed: int = 0) -> dict:
    from speaker_neurons.analysis.clusters import run_frame_clustering

    info = run_frame_clustering(feature_dir, manifest_path, k, out_dir, max_frames=max_frames, seed=seed)
    _provenance(out_dir, "frame_kmeans", {"k": k, "max_frames": max_frames, "seed": seed}, [manifest_path, feature_dir])
    return info


def ivectors(manifest_path, ark_path, scp_path, quality_json, config: dict | None = None, device: str = "auto") -> dict:
    """i-vectors for every utterance (SPEC §6: no labels used), written as a Kaldi ark/scp, plus
    their quality where the manifest has speakers and a train/test split (labels used only to score):
    closed-set speaker identification by cosine to per-speaker mean i-vectors (train -> test), and the
    EER of all test pairs."""
    from speaker_neurons.analysis import ivector as iv
    from speaker_neurons.models.base import resolve_device
    from speaker_neurons.audio import load_audio
    from speaker_neurons.data.manifest import read_manifest

    cfg = {k: v for k, v in (config or {}).items() if k != "kaldi_ivectors"}
    manifest = read_manifest(manifest_path)
    dev = resolve_device(device)
    items = ((row.utt_id, load_audio(row.path)[0]) for row in manifest.itertuples(index=False))
    out_dir = Path(ark_path).parent
    utt_ids, vecs = iv.extract_ivectors(items, cfg, device=dev, model_out=out_dir / "extractor.pt")
    iv.write_ivectors(utt_ids, vecs, ark_path, scp_path)
    quality = {"utterances": len(utt_ids), "dim": int(vecs.shape[1]), "config": iv.resolve_ivector_config(cfg)}
    spk = manifest.set_index("utt_id").loc[utt_ids, ["speaker", "split"]].fillna("")
    train, test = (spk["split"] == "train").to_numpy(), (spk["split"] == "test").to_numpy()
    if train.any() and test.any() and (spk["speaker"] != "").all():
        acc = iv.speaker_id_accuracy(vecs[train], spk["speaker"][train], vecs[test], spk["speaker"][test])
        scores, labels = iv.build_trials(vecs[test], spk["speaker"][test].to_numpy())
        # EER needs target pairs: a test split with one utterance per speaker has none
        eer = iv.equal_error_rate(scores, labels) if 0 < labels.sum() < len(labels) else None
        quality.update({"sid_accuracy": acc, "sid_train": int(train.sum()), "sid_test": int(test.sum()),
                        "speakers": int(spk["speaker"].nunique()), "eer": eer, "trials": int(len(labels))})
        log.info("i-vector quality: speaker ID %.2f%% (%d test utterances, %d speakers), EER %s",
                 100 * acc, test.sum(), spk["speaker"].nunique(), "n/a" if eer is None else f"{100 * eer:.2f}%")
    else:
        log.info("no speaker labels with train/test split: i-vector quality not scored")
    Path(quality_json).write_text(json.dumps(quality, indent=2) + "\n")
    _provenance(out_dir, "ivectors", quality["config"], [manifest_path])
    return quality


def utterance_clusters(ivector_scp, out_tsv, k: int = 2, seed: int = 0) -> dict:
    """k-means on i-vectors; `clusters.tsv` (utt_id, cluster)."""
    from speaker_neurons.analysis.clusters import cluster_utterances
    from speaker_neurons.analysis.ivector import read_ivectors

    utt_ids, vecs = read_ivectors(ivector_scp)
    labels = cluster_utterances(list(utt_ids), np.asarray(vecs), k, seed)
    out_tsv = Path(out_tsv)
    out_tsv.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(sorted(labels.items()), columns=["utt_id", "cluster"]).to_csv(out_tsv, sep="\t", index=False)
    sizes = np.bincount(list(labels.values()), minlength=k).tolist()
    _provenance(out_tsv.parent, "ivector_clusters", {"k_ivector": k, "seed": seed}, [ivector_scp])
    return {"k": k, "sizes": sizes}


def read_utterance_clusters(path) -> dict[str, int]:
    df = pd.read_csv(path, sep="\t", dtype={"utt_id": str})
    return dict(zip(df["utt_id"], df["cluster"].astype(int)))


def activation_stats(manifest_path, upstream: dict, labels_npz, clusters_tsv, out_npz, k_ssl: int, k_ivector: int,
                     top_fraction: float = 0.01, device: str = "auto", max_mismatch: int = 2, max_batch_seconds: float = 60.0) -> dict:
    from speaker_neurons.analysis.clusters import load_labels
    from speaker_neurons.analysis.stats import activation_statistics
    from speaker_neurons.data.manifest import read_manifest
    from speaker_neurons.utils import sha256_paths

    model = load_model(upstream, device)
    inputs = [manifest_path, labels_npz, clusters_tsv]
    checksums = sha256_paths(inputs)  # hashed once: recorded in the counts' JSON and the provenance
    meta = {"upstream": upstream, "inputs": checksums}
    info = activation_statistics(
        model, read_manifest(manifest_path), load_labels(labels_npz), read_utterance_clusters(clusters_tsv),
        k_ssl, k_ivector, top_fraction, out_npz, meta=meta, max_mismatch=max_mismatch, max_batch_seconds=max_batch_seconds,
    )
    _provenance(Path(out_npz).parent, "activation_stats", {"upstream": upstream, "k_ssl": k_ssl, "k_ivector": k_ivector, "top_fraction": top_fraction}, inputs, checksums)
    return info


def neuron_sets(counts_npz, out_dir, rho: float = 0.8) -> dict:
    """Every named neuron set (SPEC §4) from the counts: `<out_dir>/neurons/<set>.json`,
    `<out_dir>/neuron_counts.tsv` (layer x set) and `<out_dir>/neuron_counts.png`."""
    from speaker_neurons.analysis import neuron_sets as ns
    from speaker_neurons.analysis.counts import load_counts

    data = load_counts(counts_npz)
    result, groups = ns.compute_neuron_sets(data, rho=rho, return_groups=True)
    params = ns.neuron_set_params(data, rho)
    paths = ns.write_neuron_sets(result, out_dir, params, groups=groups)
    ns.plot_neuron_counts(paths["neuron_counts"], Path(out_dir) / "neuron_counts.png")
    _provenance(out_dir, "neuron_sets", params, [counts_npz])
    totals = {name: sum(len(v) for v in layers.values()) for name, layers in result.items()}
    log.info("neuron totals: %s", totals)
    return totals


def neuron_counts_summary(tables: dict[int, str], out_tsv) -> pd.DataFrame:
    """One table of neuron counts over every k_ssl: columns k_ssl, layer, one per set."""
    frames = []
    for k, path in sorted(tables.items()):
        df = pd.read_csv(path, sep="\t", dtype={"layer": str})
        df.insert(0, "k_ssl", k)
        frames.append(df)
    out = pd.concat(frames, ignore_index=True)
    out.to_csv(out_tsv, sep="\t", index=False)
    return out


def evidence_report(manifest_path, labels_npz, clusters_tsv, out_dir, feature_dir, corpus_dir=None) -> dict:
    """SSL clusters vs broad phone classes (when `corpus_dir` has a demo corpus' frame_classes.tsv)
    and i-vector clusters vs gender."""
    from speaker_neurons.analysis.clusters import load_labels
    from speaker_neurons.analysis.report import read_frame_classes, write_evidence_report
    from speaker_neurons.data.manifest import read_manifest

    frame_period = json.loads((Path(feature_dir) / "features.json").read_text())["frame_period"]
    fc_path = Path(corpus_dir) / "frame_classes.tsv" if corpus_dir else None
    fc = read_frame_classes(fc_path) if fc_path and fc_path.exists() else None
    summary = write_evidence_report(out_dir, load_labels(labels_npz), read_utterance_clusters(clusters_tsv),
                                    read_manifest(manifest_path), fc, frame_period)
    (Path(out_dir) / "evidence.json").write_text(json.dumps(summary, indent=2) + "\n")
    _provenance(out_dir, "evidence_report", {"frame_period": frame_period}, [manifest_path, labels_npz, clusters_tsv])
    return summary
