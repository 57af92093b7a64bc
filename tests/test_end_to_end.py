"""The whole chain on a tiny configuration with two models side by side (the pre-trained demo
MelHuBERT and a small wav2vec2-style model saved in the native format), run twice: every stage's
outputs, logs and provenance exist and have the documented format; models, label files and neuron
sets are byte-identical between the runs.

Both runs start from the session's synthesized corpora (conftest.tiny_corpora; test_synth checks that
a seed gives the same audio bytes). The second run computes only what the comparison reads: every
file of `_deterministic_files` but the cross-model tables and the summary, which aggregate the rest
(the SLURM comparison checks those run against run)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import ROOT, TINY, TINY_CORPORA, corpus_dir, seed_corpora, start_snakemake, stop, wait_or_kill

pytestmark = pytest.mark.slow
W2V = dict(extractor_mode="group_norm", extractor_conv_layer_config=[(32, 10, 5), (32, 3, 2), (32, 3, 2), (32, 3, 2),
                                                                      (32, 2, 2), (32, 2, 2)],
           extractor_conv_bias=False, encoder_embed_dim=48, encoder_projection_dropout=0.0, encoder_pos_conv_kernel=16,
           encoder_pos_conv_groups=4, encoder_num_layers=2, encoder_num_heads=2, encoder_attention_dropout=0.0,
           encoder_ff_interm_features=96, encoder_ff_interm_dropout=0.0, encoder_dropout=0.0,
           encoder_layer_norm_first=False, encoder_layer_drop=0.0, aux_num_out=None)


def _native_wav2vec2(folder: Path) -> Path:
    import torch

    from speaker_neurons.models import build_upstream, save_upstream

    torch.manual_seed(7)
    return save_upstream(build_upstream("wav2vec2", W2V).eval(), folder)


def _run_chains(extra: Path, *runs: tuple[Path, list]) -> None:
    """Each (results, targets) of `runs` (no targets: the whole chain), the runs side by side
    (independent processes, each with 2 cores: a job's Python start-up in one overlaps the computing of
    the other on 2 CPUs)."""
    procs = [(start_snakemake(r.parent / f"{r.name}.log", "--cores", "2", "--configfile", TINY, extra,
                              "--config", f"results={r}", "--", *targets), r.parent / f"{r.name}.log")
             for r, targets in runs]
    try:
        status = [wait_or_kill(proc, 2400) for proc, _ in procs]
    finally:  # a wait that failed leaves the other runs going
        for proc, _ in procs:
            stop(proc)
    for code, (_, log) in zip(status, procs):
        assert code == 0, log.read_text()[-8000:]


@pytest.fixture(scope="module")
def two_runs(tiny_corpora, tmp_path_factory):
    base = tmp_path_factory.mktemp("e2e")
    native = _native_wav2vec2(base / "w2v_native")
    extra = base / "models.yaml"
    extra.write_text("models:\n  - {name: demo, kind: melhubert, source: pretrain}\n"
                     f"  - {{name: w2v, kind: wav2vec2, path: {native}, format: native}}\n"
                     "prune: {parents: [demo], strategies: [protected, random], targets: [protected_size], analyse: false,\n"
                     "        continue: {steps: 3}, iterative: {enabled: true, strategies: [protected], rows_per_step: 64,\n"
                     "        final_width: 128, steps_between: 3}}\n"
                     "sid: {enabled: true, crop_seconds: 1.0, learning_rates: [0.01, 0.1], seeds: [0, 1], epochs: 10}\n"
                     # one thread per job: the two chains run side by side on 2 cores, and two 2-thread jobs on
                     # 2 cores wait on each other's threads at every parallel region
                     "upstream: {threads: 1}\n")
    a, b = base / "a", base / "b"
    for results in (a, b):
        seed_corpora(tiny_corpora, results, TINY_CORPORA)
    _run_chains(extra, (a, []), (b, [b / rel for rel in _second_run_targets()]))
    return a, b


AGGREGATES = [Path("summary.tsv"), Path("comparison/neuron_counts.tsv"), Path("comparison/models.tsv")]


def _second_run_targets() -> list[Path]:
    """What the second run makes: the files the two runs are compared on, less the aggregates (each
    neuron set by its name, since the second run starts before the first has written any)."""
    from speaker_neurons.analysis.neuron_sets import SET_NAMES

    sets = [Path("models/demo/analysis/ssl_k5/neurons") / f"{name}.json" for name in SET_NAMES]
    files = [rel for rel in _deterministic_files(None) if rel not in AGGREGATES] + sets + REPEATED_POOLS
    # a model's weights are a folder that one rule writes
    return list(dict.fromkeys(rel.parent if rel.parent.name == "model" else rel for rel in files))


REPEATED_POOLS = [Path("models") / m / "sid/demo_eval/pooled_layers.npz" for m in ("demo", "demo-protected-pset")]


def _deterministic_files(root: Path | None) -> list[Path]:
    """The files two runs must write byte for byte; `root`: a run whose neuron sets to list too.

    The second run repeats one model's chain at the k that pruning reads (k = 5): pre-training and its
    targets, the i-vector clusters, labels, counts and sets, one-shot, iterative and continued pruning,
    the FFN control, the erase ablation, pooling and one PR evaluation: a job of every rule that
    computes, in the fewest jobs (a second model and a second k would repeat the same code on other
    numbers). The SLURM twin (tests/test_slurm.py) compares a whole run against another, file for file."""
    files = [Path("corpora/demo/ivectors/clusters.tsv"), Path("corpora/demo/ivectors/extractor_seeds.npz"), Path("corpora/demo/ivectors/cluster_stability.json"),
             Path("models/demo/model/model.safetensors"),
             Path("models/demo/pretrain/head.pt"), Path("models/demo/pretrain/kmeans_centers.npy")]
    d = Path("models/demo/analysis/ssl_k5")
    files += [d / "labels.npz", d / "hubert.km", d / "centroids.npy", d / "activation_counts.npz", d / "neuron_counts.tsv"]
    if root is not None:
        files += sorted(p.relative_to(root) for p in (root / d / "neurons").glob("*.json"))
    for pruned in ("demo-protected-pset", "demo-random-pset", "demo-protected-iter1", "demo-protected-iter2", "demo-noffn"):
        files += [Path("models") / pruned / "model" / "model.safetensors", Path("models") / pruned / "prune.json"]
    for step in ("demo-protected-iter1", "demo-protected-iter2"):  # iterative steps are always analysed
        files += [Path("models") / step / "analysis" / "ssl_k5" / "activation_counts.npz"]
    for trained in ("demo-protected-pset-cpt", "demo-protected-iter2"):
        files += [Path("models") / trained / "model" / "model.safetensors", Path("models") / trained / "pretrain" / "head.pt"]
    files += [Path("models/demo/analysis/ssl_k5/erase/erase.tsv")]
    files += AGGREGATES
    files += [Path("corpora/demo_eval/phone_targets.tsv"), Path("corpora/demo_eval/ivector_clusters_from_demo.tsv"),
              Path("models/demo/pr/demo_eval/pr.json")]
    return files


def test_chain_is_byte_identical_when_run_twice(two_runs):
    a, b = two_runs
    files = [rel for rel in _deterministic_files(a) if rel not in AGGREGATES]
    assert len(files) == 38
    for rel in files:
        assert (a / rel).read_bytes() == (b / rel).read_bytes(), f"{rel} differs between two runs"
    assert not (b / "summary.tsv").exists()  # the second run made only what is compared


def test_cluster_stability_over_kmeans_and_extractor_seeds(two_runs):
    a, _ = two_runs
    st = json.loads((a / "corpora/demo/ivectors/cluster_stability.json").read_text())
    assert st["kmeans_seeds"]["seeds"] == [1, 2, 3, 4, 5] and len(st["kmeans_seeds"]["ari"]) == 5
    assert st["extractor_seeds"]["seeds"] == [1, 2, 3] and len(st["extractor_seeds"]["ari"]) == 3
    aris = st["kmeans_seeds"]["ari"] + st["extractor_seeds"]["ari"]
    assert st["min_ari"] == min(aris) and st["stable"] == (min(aris) >= st["warn_below"])
    with np.load(a / "corpora/demo/ivectors/extractor_seeds.npz") as z:
        assert z["ivectors"].shape[:2] == (3, len(z["utt_id"])) and z["seeds"].tolist() == [1, 2, 3]
    # the partition the sets rest on (auto: the consensus of the 4 extractors when one disagrees), every
    # partition beside it, and what each would change in the speaker neurons
    parts = pd.read_csv(a / "corpora/demo/ivectors/partitions.tsv", sep="\t", dtype={"utt_id": str})
    names = [f"extractor_seed_{s}" for s in range(4)] + ["consensus"]
    assert list(parts.columns) == ["utt_id", *names] and st["partitions"] == names
    assert st["rests_on"] == ("extractor_seed_0" if st["stable"] else "consensus")
    assert st["consensus"]["partitions"] == 4 and "halves" in st["consensus"]
    used = pd.read_csv(a / "corpora/demo/ivectors/clusters.tsv", sep="\t", dtype={"utt_id": str})
    assert used["utt_id"].tolist() == parts["utt_id"].tolist()
    assert used["cluster"].tolist() == parts[st["rests_on"]].tolist()
    overlap = pd.read_csv(a / "models/demo/analysis/ssl_k3/ivector_partitions.tsv", sep="\t",
                          dtype={"layer": str})
    total = overlap[overlap["layer"] == "total"].set_index("partition")
    assert sorted(total.index) == sorted(names) and total.loc[st["rests_on"], "jaccard"] == 1.0
    speaker = json.loads((a / "models/demo/analysis/ssl_k3/neurons/ivector_cluster.json").read_text())
    assert total.loc[st["rests_on"], "rests_on"] == sum(len(v) for v in speaker["layers"].values())
    assert f"the neuron sets rest on the **{st['rests_on']}** partition" in (a / "summary.md").read_text()


def test_every_rule_logged_and_benchmarked(two_runs):
    a, _ = two_runs
    for rule in ("ivectors", "ivector_clusters", "compare_models"):
        assert (a / "logs" / f"{rule}.log").exists(), f"no log for {rule}"
        assert (a / "benchmarks" / f"{rule}.tsv").exists()
    for corpus in ("demo", "demo_eval"):  # the analysis corpus and the evaluation corpus
        for rule in ("synthesize_demo_corpus", "build_manifest", "audio_qc"):
            assert (a / "logs" / "corpora" / corpus / f"{rule}.log").exists(), f"no log for {corpus}/{rule}"
            assert (a / "benchmarks" / "corpora" / corpus / f"{rule}.tsv").exists()
    assert (a / "logs" / "corpora" / "demo_eval" / "phone_targets.log").exists()
    assert (a / "logs" / "corpora" / "demo_eval" / "assign_ivector_clusters.log").exists()
    assert (a / "benchmarks" / "corpora" / "demo_eval" / "assign_ivector_clusters.tsv").exists()
    for model in ("demo", "w2v"):
        rules = ["describe_model", "extract_features", "frame_kmeans_k3", "frame_kmeans_k5", "activation_stats_k3",
                 "neuron_sets_k3", "evidence_report_k3", "neuron_counts_summary"]
        for rule in rules + ["pool_layers", "sid_eval", "pr_eval"] + (["pretrain_melhubert"] if model == "demo" else []):
            assert (a / "logs" / model / f"{rule}.log").exists(), f"no log for {model}/{rule}"
            assert (a / "benchmarks" / model / f"{rule}.tsv").exists()
        log = (a / "logs" / model / "activation_stats_k3.log").read_text()
        assert "stage activation_stats [model=" in log and "device cpu" in log and "1 thread(s)" in log  # upstream.threads


def test_counts_file_has_the_documented_format(two_runs):
    a, _ = two_runs
    for model, width, kind in (("demo", 256, "melhubert"), ("w2v", 96, "wav2vec2")):
        d = a / "models" / model / "analysis" / "ssl_k3"
        meta = json.loads((d / "activation_counts.json").read_text())
        with np.load(d / "activation_counts.npz") as z:
            assert sorted(z.files) == ["classes", "counts_l1", "counts_l2", "frames", "partition_counts_l1",
                                       "partition_counts_l2", "partition_frames"]
            assert z["classes"].tolist() == [[0, 0], [0, 1], [0, 2], [1, 0], [1, 1], [1, 2]]
            assert z["counts_l1"].shape == (6, width) and z["counts_l1"].dtype == np.int64
            # every frame activates exactly K neurons per layer
            assert (z["counts_l1"].sum(1) == meta["K"][0] * z["frames"]).all()
            assert (z["counts_l2"].sum(1) == meta["K"][1] * z["frames"]).all()
            # every other partition counts the same frames, in its own block of the 6 classes
            blocks = z["partition_frames"].reshape(len(meta["partitions"]), 6)
            assert (blocks.sum(1) == z["frames"].sum()).all()
            assert z["partition_counts_l1"].shape == (6 * len(meta["partitions"]), width)
            assert (z["partition_counts_l2"].sum(1) == meta["K"][1] * z["partition_frames"]).all()
        assert meta["partitions"] == [f"extractor_seed_{s}" for s in range(4)] + ["consensus"]
        assert meta["widths"] == [width, width] and meta["top_fraction"] == 0.01
        assert set(meta["inputs"]) and meta["upstream"]["kind"] == kind


def test_neuron_sets_recompute_from_the_counts(two_runs):
    from speaker_neurons.analysis.neuron_sets import recompute_from_npz

    a, _ = two_runs
    d = a / "models/demo/analysis/ssl_k3"
    params = json.loads((d / "neurons" / "ivector_cluster.json").read_text())["params"]
    again = recompute_from_npz(d / "activation_counts.npz", rho=params["rho"], fdr=params["fdr"])
    for name in ("ssl_cluster", "ivector_cluster", "union", "unconditioned", "per_cluster"):
        saved = json.loads((d / "neurons" / f"{name}.json").read_text())
        assert saved["set"] == name and saved["params"]["rho"] == 0.8
        assert {int(l): v for l, v in saved["layers"].items()} == {int(l): sorted(v) for l, v in again[name].items()}


def test_labels_join_model_frames_and_hubert_export(two_runs):
    from speaker_neurons.analysis.frame_labels import load_labels
    from speaker_neurons.data.manifest import read_manifest

    a, _ = two_runs
    d = a / "models/demo/analysis/ssl_k3"
    labels = load_labels(d / "labels.npz")
    manifest = read_manifest(a / "corpora/demo/manifest.tsv")
    assert set(labels) == set(manifest["utt_id"])
    km_lines = (d / "hubert.km").read_text().splitlines()
    tsv_lines = (d / "hubert.tsv").read_text().splitlines()
    assert len(km_lines) == len(tsv_lines) - 1 == len(manifest)
    root = Path(tsv_lines[0])
    for line, km in zip(tsv_lines[1:], km_lines):
        rel, n = line.split("\t")
        utt = Path(rel).stem
        assert (root / rel).exists()
        assert [int(v) for v in km.split()] == labels[utt].tolist()
        # 20 ms MelHuBERT frames: ceil(kaldi frames / 2)
        kaldi = 1 + (int(n) - 400) // 160
        assert len(labels[utt]) == (kaldi + 1) // 2


def test_provenance_evidence_and_comparison(two_runs):
    import pandas as pd

    a, _ = two_runs
    prov = json.loads((a / "models/demo/analysis/ssl_k3/provenance/activation_stats.json").read_text())
    assert prov["stage"] == "activation_stats" and prov["wildcards"] == {"model": "demo", "k": "3"}
    assert prov["inputs"] and all(len(h) == 64 for h in prov["inputs"].values())
    assert prov["config"]["models"][1]["name"] == "w2v"
    ev = json.loads((a / "models/demo/analysis/ssl_k3/report/evidence.json").read_text())
    assert set(ev) == {"ssl_phone_composition_pct", "ssl_majority_class"}
    assert (a / "models/demo/analysis/ssl_k3/report/ssl_phone_composition.png").stat().st_size > 1000
    assert (a / "corpora/demo/ivectors/gender_purity.png").stat().st_size > 1000
    q = json.loads((a / "corpora/demo/ivectors/quality.json").read_text())
    assert q["utterances"] == 48 and (q["speakers"], q["sid_train"], q["sid_test"]) == (8, 32, 8)
    # the i-vector speaker ID is closed-set identification of the 8 test utterances by cosine to each
    # speaker's mean of unit-length training i-vectors, computed here from the stage's ark and the manifest
    from speaker_neurons.analysis.ivector import read_ivectors

    ids, vecs = read_ivectors(a / "corpora/demo/ivectors/ivectors.ark")
    man = pd.read_csv(a / "corpora/demo/manifest.tsv", sep="\t").set_index("utt_id").loc[ids]
    unit = vecs / np.linalg.norm(vecs, axis=1, keepdims=True)
    train, test = (man["split"] == "train").to_numpy(), (man["split"] == "test").to_numpy()
    speakers = sorted(set(man["speaker"][train]))
    means = np.stack([unit[train & (man["speaker"] == s).to_numpy()].mean(0) for s in speakers])
    means /= np.linalg.norm(means, axis=1, keepdims=True)
    guess = np.asarray(speakers)[np.argmax(unit[test] @ means.T, axis=1)]
    assert q["sid_accuracy"] == pytest.approx(float(np.mean(guess == man["speaker"][test].to_numpy())))
    models = pd.read_csv(a / "comparison/models.tsv", sep="\t")
    models = models[models["model"].isin(["demo", "w2v"])]  # the pruned models have rows of their own
    assert list(models["model"]) == ["demo", "demo", "w2v", "w2v"] and list(models["k_ssl"]) == [3, 5, 3, 5]
    assert list(models["kind"]) == ["melhubert", "melhubert", "wav2vec2", "wav2vec2"]
    assert list(models["ffn_widths"]) == ["256,256", "256,256", "96,96", "96,96"]
    for row in models.itertuples():  # each row joins the evidence of its own k (the config lists k unsorted)
        ev = json.loads((a / f"models/{row.model}/analysis/ssl_k{row.k_ssl}/report/evidence.json").read_text())
        shares = [v["pct"] for v in ev["ssl_majority_class"].values()]
        assert row.ssl_phone_purity_pct == pytest.approx(round(float(np.mean(shares)), 2))
    counts = pd.read_csv(a / "comparison/neuron_counts.tsv", sep="\t", dtype={"layer": str})
    demo3 = pd.read_csv(a / "models/demo/analysis/ssl_k3/neuron_counts.tsv", sep="\t", dtype={"layer": str})
    got = counts[(counts["model"] == "demo") & (counts["k_ssl"] == 3)].drop(columns=["model", "k_ssl"])
    assert got.reset_index(drop=True).equals(demo3)
    summary = json.loads((a / "models/demo/pretrain/summary.json").read_text())
    assert summary["stopped_by"] == "max_steps" and summary["steps"] == 12


def test_pruned_models_are_models_of_the_workflow(two_runs):
    """One-shot pruning at the protected-set size: the protected strategy keeps exactly the protected
    set (SSL-cluster and i-vector-cluster neurons of the parent), the random control keeps as many. With
    prune.analyse false (this chain) they get SID and PR but no label-free analysis; the iterative steps
    are analysed and listed in the cross-model table (what prune.analyse true plans: test_workflow)."""
    import pandas as pd

    from speaker_neurons.models import load_native
    from speaker_neurons.pruning import union_of_sets

    a, _ = two_runs
    for name in ("demo-protected-pset", "demo-random-pset"):
        rec = json.loads((a / "models" / name / "prune.json").read_text())
        assert rec["k_ssl"] == 5  # the first of analysis.k_ssl (the tiny config lists [5, 3])
        assert rec["protected_from"] == ["ssl_k5/neurons/ssl_cluster.json", "ssl_k5/neurons/ivector_cluster.json"]
        sets = a / "models/demo/analysis/ssl_k5/neurons"
        protected = union_of_sets([sets / "ssl_cluster.json", sets / "ivector_cluster.json"])
        widths = [max(1, len(protected.get(l, []))) for l in (1, 2)]
        assert rec["ffn_widths"] == widths and rec["target"] == "protected_size" and rec["parent"] == "demo"
        model = load_native(a / "models" / name / "model")
        assert model.ffn_widths == widths and model.parent_sha256 == rec["parent_sha256"]
        if name == "demo-protected-pset":
            assert rec["protected_lost_total"] == 0
            assert {l: model.kept_indices[l] for l in (1, 2)} == {l: protected[l] for l in (1, 2)}
        assert not (a / "models" / name / "analysis").exists()
    for step, width in (("demo-protected-iter1", 192), ("demo-protected-iter2", 128)):
        meta = json.loads((a / "models" / step / "analysis/ssl_k3/activation_counts.json").read_text())
        assert meta["widths"] == [width, width]
    models = pd.read_csv(a / "comparison/models.tsv", sep="\t")
    assert set(models["model"]) == {"demo", "w2v", "demo-protected-iter1", "demo-protected-iter2"}


def test_sid_of_every_model(two_runs):
    """SUPERB SID runs on every model (the base, the checkpoint, the pruned ones) from its pooled layers."""
    a, b = two_runs
    for name, layers in (("demo", 2), ("w2v", 2), ("demo-protected-pset", 2)):
        d = a / "models" / name / "sid" / "demo_eval"
        res = json.loads((d / "sid.json").read_text())
        if Path("models") / name / "sid/demo_eval/pooled_layers.npz" in REPEATED_POOLS:
            assert (d / "pooled_layers.npz").read_bytes() == (b / "models" / name / "sid/demo_eval/pooled_layers.npz").read_bytes()
        with np.load(d / "pooled_layers.npz") as z:
            assert z["pooled"].shape[1] == layers + 1 and z["seg_id"].dtype.kind == "U"
        assert res["speakers"] == 8 and res["crop_seconds"] == 1.0
        for layer_set, chosen in (("all", [0, 1, 2]), ("layers_1_L", [1, 2]), ("last", [2]), ("hidden_0", [0])):
            r = res[layer_set]
            assert r["layers"] == chosen and len(r["per_seed"]) == 2 and r["lr"] in (0.01, 0.1)
            assert r["test_ci95"][0] <= r["test_accuracy"] <= r["test_ci95"][1]
            assert 0 <= r["test_accuracy"] <= 1 and len(r["layer_weights"]) == len(chosen)
            # sid.sweep: base (the default): the pruned model trains at the rates picked for its parent
            base = json.loads((a / "models/demo/sid/demo_eval/sid.json").read_text())[layer_set]
            assert r["lr_swept"] == (name != "demo-protected-pset")
            assert name != "demo-protected-pset" or (r["lr"] == base["lr"] and res["lr_from"] == "demo")


def test_pr_of_every_model(two_runs):
    """SUPERB PR runs on every model of the SID protocol, on the evaluation corpus (other pseudo-speakers
    than the analysis corpus), derived models at their parent's rates; the frame caches are temporary."""
    a, _ = two_runs
    base = json.loads((a / "models/demo/pr/demo_eval/pr.json").read_text())
    for name, layers in (("demo", 2), ("w2v", 2), ("demo-protected-pset", 2), ("demo-noffn", 2)):
        d = a / "models" / name / "pr" / "demo_eval"
        res = json.loads((d / "pr.json").read_text())
        assert res["corpus"] == "demo_eval" and res["steps"] == 10 and not (d / "frames").exists()
        assert res["splits"]["test"]["utterances"] > 0 and res["vocabulary_size"] == 70  # blank + 69 CMUdict phones
        for layer_set, chosen in (("all", [0, 1, 2]), ("layers_1_L", [1, 2]), ("last", [2]), ("hidden_0", [0])):
            r = res["layer_sets"][layer_set]
            assert r["layers"] == chosen and len(r["per_seed"]) == 2 and r["lr"] in (0.01, 0.001)
            assert r["test_ci95"][0] <= r["test_per"] <= r["test_ci95"][1] and r["test_per"] >= 0
            assert r["lr_swept"] == (name in ("demo", "w2v"))
            assert name in ("demo", "w2v") or (r["lr"] == base["layer_sets"][layer_set]["lr"] and res["lr_from"] == "demo")
    # another seed: other pseudo-speakers (the same recorded voices, other perturbations), other texts
    cols = ["pitch_semitones", "vtl_factor", "tempo"]
    ana = pd.read_csv(corpus_dir(a, "demo") / "speakers.tsv", sep="\t").set_index("speaker")
    ev = pd.read_csv(corpus_dir(a, "demo_eval") / "speakers.tsv", sep="\t").set_index("speaker")
    assert len(ev) == 8 and all(s.startswith("demo_eval-") for s in ev.index)  # no name shared with demo
    twin = ana.loc[[s.removeprefix("demo_eval-") for s in ev.index], cols]
    assert not (twin.values == ev[cols].values).all(axis=1).any()
    ids = [set(pd.read_csv(a / f"corpora/{c}/manifest.tsv", sep="\t")["utt_id"]) for c in ("demo", "demo_eval")]
    assert ids[0] and ids[1] and not ids[0] & ids[1]
    texts = [set(pd.read_csv(a / f"corpora/{c}/transcripts.tsv", sep="\t")["text"]) for c in ("demo", "demo_eval")]
    assert not texts[0] & texts[1]


def test_continued_and_iterative_models(two_runs):
    """Continued pre-training of a one-shot pruned model and a two-step iterative chain (256 -> 192 -> 128
    neurons per layer, the protected set recomputed on each step's model) are models of the workflow."""
    import pandas as pd

    from speaker_neurons.models import load_native
    from speaker_neurons.pruning import union_of_sets
    from speaker_neurons.utils import sha256_paths

    a, _ = two_runs
    pruned = load_native(a / "models/demo-protected-pset/model")
    cpt = load_native(a / "models/demo-protected-pset-cpt/model")
    assert cpt.ffn_widths == pruned.ffn_widths and cpt.kept_indices == pruned.kept_indices
    s = json.loads((a / "models/demo-protected-pset-cpt/pretrain/summary.json").read_text())
    assert s["steps"] == 3 and s["ffn_widths"] == pruned.ffn_widths
    log = pd.read_csv(a / "models/demo-protected-pset-cpt/pretrain/train_log.tsv", sep="\t")
    assert log["step"].tolist() == [1, 2, 3]
    # the weights moved, and the root's targets were used
    w0 = pruned.feed_forwards()[0].intermediate_dense.weight.detach()
    assert float((cpt.feed_forwards()[0].intermediate_dense.weight.detach() - w0).abs().max()) > 0
    assert (a / "models/demo-protected-pset-cpt/pretrain/kmeans_centers.npy").read_bytes() == \
        (a / "models/demo/pretrain/kmeans_centers.npy").read_bytes()
    prev = "demo"
    for i, width in ((1, 192), (2, 128)):
        name = f"demo-protected-iter{i}"
        rec = json.loads((a / "models" / name / "prune.json").read_text())
        model = load_native(a / "models" / name / "model")
        assert model.ffn_widths == [width, width] and rec["ffn_widths"] == [width, width] and rec["step"] == i
        assert rec["parent"] == prev and rec["protected_from"][0] == "ssl_k5/neurons/ssl_cluster.json"
        # the protected set is the previous model's own, in its current indices
        sets = a / "models" / prev / "analysis/ssl_k5/neurons"
        protected = union_of_sets([sets / "ssl_cluster.json", sets / "ivector_cluster.json"])
        for l in (1, 2):
            kept_now = rec["layers"][str(l)]
            assert kept_now["protected"] == len(protected.get(l, []))
            assert kept_now["protected_kept"] + kept_now["protected_lost"] == kept_now["protected"]
        # kept indices refer to the never-pruned model, nested step by step
        if i == 2:
            before = load_native(a / "models/demo-protected-iter1/model")
            assert all(set(model.kept_indices[l]) <= set(before.kept_indices[l]) for l in (1, 2))
        parent_dir = a / "models" / prev / "model"
        assert model.parent_sha256 == rec["parent_sha256"] == sha256_paths([parent_dir])[str(parent_dir)]
        assert json.loads((a / "models" / name / "pretrain/summary.json").read_text())["steps"] == 3
        assert (a / "models" / name / "sid/demo_eval/sid.json").exists()
        assert (a / "models" / name / "analysis/ssl_k5/neurons/ivector_cluster.json").exists()
        prev = name


def test_erase_ablation_summary_and_report(two_runs, tmp_path):
    """Erase ablations of both base models, the run's summary beside the paper, and the HTML report."""
    import pandas as pd

    a, _ = two_runs
    for model in ("demo", "w2v"):
        d = a / "models" / model / "analysis/ssl_k5/erase"
        t = pd.read_csv(d / "erase.tsv", sep="\t")
        assert {"none", "ssl_cluster", "ivector_cluster:0", "ivector_cluster:1"} == set(t["erased"])
        assert set(t["kind"]) == {"unerased", "set", "random"} and set(t["layer_set"]) == {"all", "layers_1_L", "last", "hidden_0"}
        assert (t[t["kind"] == "unerased"]["delta"] == 0).all()
        # every random control has as many neurons as its set
        for name, g in t[t["kind"] != "unerased"].groupby("erased"):
            assert g["neurons"].nunique() == 1
        # the unerased accuracy over all clusters is the SID head's own test accuracy (mean over seeds)
        sid = json.loads((a / "models" / model / "sid/demo_eval/sid.json").read_text())
        base = t[(t["kind"] == "unerased") & (t["layer_set"] == "last") & (t["cluster"] == "all")]["accuracy"].iloc[0]
        assert base == pytest.approx(sid["last"]["test_accuracy"], abs=1e-6)
        assert (d / "erase.png").stat().st_size > 1000 and json.loads((d / "erase.json").read_text())["k_ssl"] == 5
        # the clusters of demo_eval's own utterances, assigned from their audio: every test segment has one
        assigned = pd.read_csv(a / "corpora/demo_eval/ivector_clusters_from_demo.tsv", sep="\t")
        man = pd.read_csv(a / "corpora/demo_eval/manifest.tsv", sep="\t")
        assert sorted(assigned["utt_id"]) == sorted(man["utt_id"])
        u = t[(t["kind"] == "unerased") & (t["layer_set"] == "last")].set_index("cluster")["n"]
        assert u.drop("all").sum() == u["all"] and set(u.index) - {"all"} <= set(assigned["cluster"].astype(str))
    summary = pd.read_csv(a / "summary.tsv", sep="\t")
    assert {"ivectors", "neurons", "sid", "pruning", "erase"} <= set(summary["section"])
    row = summary[(summary["metric"] == "accuracy_all") & (summary["model"] == "demo-protected-pset")].iloc[0]
    sid = json.loads((a / "models/demo-protected-pset/sid/demo_eval/sid.json").read_text())
    # summary.tsv keeps 6 decimals
    assert row["value"] == pytest.approx(sid["all"]["test_accuracy"], abs=1e-6) and row["paper"] == pytest.approx(0.6296)
    md = (a / "summary.md").read_text()
    assert "## Erase ablation" in md and "protected" in md and "demo-protected-iter2" in md
    assert (a / "sid_vs_width.png").stat().st_size > 5000 and (a / "paired_vs_width.png").stat().st_size > 5000
    # the paired rows, recomputed from the per-item predictions: each seed's accuracy is its sid.json
    # figure, and the difference is that of the seed means
    preds = {m: pd.read_csv(a / "models" / m / "sid/demo_eval/predictions.tsv", sep="\t", dtype={"utt_id": str})
             for m in ("demo-protected-pset", "demo-random-pset")}
    for m, p in preds.items():
        rec = json.loads((a / "models" / m / "sid/demo_eval/sid.json").read_text())
        for ls in ("all", "last"):
            acc = p[p["layer_set"] == ls].groupby("seed")["correct"].mean()
            assert acc.tolist() == pytest.approx([r["accuracy"] for r in rec[ls]["per_seed"]])
            assert set(p[p["layer_set"] == ls]["seed"]) == {0, 1} and (p["correct"] == (p["speaker"] == p["prediction"])).all()
    pair = summary[(summary["section"] == "pruning") & (summary["metric"] == "protected_minus_random_all")].iloc[0]
    acc = {m: p[p["layer_set"] == "all"]["correct"].mean() for m, p in preds.items()}
    assert pair["model"] == "demo-protected-pset - demo-random-pset"
    assert pair["value"] == pytest.approx(acc["demo-protected-pset"] - acc["demo-random-pset"], abs=1e-6)
    assert pair["ci_low"] <= pair["value"] <= pair["ci_high"]
    assert pair["n"] == preds["demo-random-pset"]["utt_id"].nunique()
    # PR's predictions: every test utterance's edits per picked head, summing to pr.json's
    pr = json.loads((a / "models/demo/pr/demo_eval/pr.json").read_text())
    pp = pd.read_csv(a / "models/demo/pr/demo_eval/predictions.tsv", sep="\t", keep_default_na=False)
    for ls, rec in pr["layer_sets"].items():
        got = pp[pp["layer_set"] == ls].groupby("seed")[["edits", "ref_phones"]].sum()
        assert got["edits"].tolist() == [r["edits"] for r in rec["per_seed"]]
        assert set(got["ref_phones"]) == {rec["test_phones"]} and (pp["hypothesis"].str.len() > 0).any()
    # the HTML report of the same run, with every figure's caption
    html = tmp_path / "report.html"
    res = subprocess.run([sys.executable, "-m", "snakemake", "--configfile", str(TINY), str(a.parent / "models.yaml"),
                          "--config", f"results={a}", "--report", str(html)], cwd=ROOT, capture_output=True, text=True,
                         timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    text = html.read_text(errors="replace")
    for caption in ("Erase ablation of model", "Speaker identification (SUPERB protocol", "Neurons per layer and set",
                    "The k = 2 i-vector clusters", "Pre-training of model", "The run's headline figures",
                    "Pruning strategies compared pair by pair"):
        assert caption in text, caption


def test_controls_of_every_model(two_runs):
    """Each model of the config gets a -noffn control (2% of every FFN kept, seeded random), its SID at the
    parent's rates, and the summary states the FFN dependence and the input-only gap."""
    a, _ = two_runs
    t = pd.read_csv(a / "summary.tsv", sep="\t")
    for parent in ("demo", "w2v"):
        rec = json.loads((a / "models" / f"{parent}-noffn" / "prune.json").read_text())
        assert rec["strategy"] == "random" and rec["target"] == 0.02 and rec["protected_from"] == []
        assert [v["kept"] for v in rec["layers"].values()] == [max(1, round(0.02 * v["width"]))
                                                               for v in rec["layers"].values()]
        ctrl = json.loads((a / "models" / f"{parent}-noffn" / "sid/demo_eval/sid.json").read_text())
        base = json.loads((a / "models" / parent / "sid/demo_eval/sid.json").read_text())
        assert ctrl["lr_from"] == parent and ctrl["all"]["lr"] == base["all"]["lr"]
        dep = t[(t["metric"] == "ffn_dependence_all") & (t["model"] == parent)].iloc[0]
        assert dep["value"] == pytest.approx(base["all"]["test_accuracy"] - ctrl["all"]["test_accuracy"], abs=1e-5)
        gap = t[(t["metric"] == "input_only_gap_all") & (t["model"] == parent)].iloc[0]
        assert gap["value"] == pytest.approx(base["all"]["test_accuracy"] - base["hidden_0"]["test_accuracy"], abs=1e-5)
        assert dep["ci_low"] < dep["value"] < dep["ci_high"]
        assert not (a / "models" / f"{parent}-noffn" / "analysis" / "ssl_k3").exists()  # no analysis of a control
    md = (a / "summary.md").read_text()
    assert md.index("## Positive controls") < md.index("## i-vector clusters")
    channels = pd.read_csv(corpus_dir(a, "demo") / "channels.tsv", sep="\t")
    assert len(channels) == 48 and channels["utt_id"].is_unique
