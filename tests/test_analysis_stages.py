"""Frame/utterance clustering glue, label joins, the activation pass and the evidence report."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from speaker_neurons.analysis.clusters import cluster_utterances, sample_frames
from speaker_neurons.analysis.frame_labels import align_labels
from speaker_neurons.analysis.report import gender_purity, phone_composition
from speaker_neurons.config import complete

DEFAULTS = complete({})


def test_align_labels_truncates_small_mismatches_and_counts_them():
    lab = np.array([0, 1, 2, 1, 0], dtype=np.int16)
    out, cut = align_labels(lab, 5, "u", max_mismatch=2)
    assert out.tolist() == [0, 1, 2, 1, 0] and not cut
    out, cut = align_labels(lab, 4, "u", max_mismatch=2)  # one label too many: dropped
    assert out.tolist() == [0, 1, 2, 1] and cut
    out, cut = align_labels(lab, 7, "u", max_mismatch=2)  # two model frames without a label: not counted (-1)
    assert out.tolist() == [0, 1, 2, 1, 0, -1, -1] and cut


def test_align_labels_refuses_a_larger_mismatch_naming_the_utterance():
    with pytest.raises(ValueError, match="utt-7.*5 frame labels for 8 model frames"):
        align_labels(np.zeros(5, dtype=np.int16), 8, "utt-7", max_mismatch=2)


def test_utterance_clusters_are_numbered_by_size_and_seeded():
    rng = np.random.default_rng(0)
    big = rng.normal(+3, 0.1, (30, 4))
    small = rng.normal(-3, 0.1, (10, 4))
    ids = [f"u{i}" for i in range(40)]
    vecs = np.concatenate([small, big])  # the small cluster comes first in the input
    lab = cluster_utterances(ids, vecs, k=2, seed=0, n_init=DEFAULTS["analysis"]["ivector_n_init"])
    assert {lab[f"u{i}"] for i in range(10)} == {1} and {lab[f"u{i}"] for i in range(10, 40)} == {0}
    assert lab == cluster_utterances(ids, vecs, k=2, seed=0, n_init=DEFAULTS["analysis"]["ivector_n_init"])


def test_phone_composition_maps_20ms_frames_to_the_first_10ms_frame():
    labels = {"a": np.array([0, 1, 1]), "b": np.array([2])}
    classes = {"a": "VVDUSS", "b": "U"}
    comp = phone_composition(labels, classes, frame_period=0.020)
    # a: frames 0,1,2 -> phone frames 0,2,4 = V, D, S ; b: frame 0 -> U
    assert comp.loc[0, "vowel"] == 1
    assert comp.loc[1, "voiced consonant"] == 1 and comp.loc[1, "silence"] == 1
    assert comp.loc[2, "unvoiced consonant"] == 1
    assert int(comp.values.sum()) == 4


def test_gender_purity_reports_both_clusters():
    manifest = pd.DataFrame({"utt_id": [f"u{i}" for i in range(10)], "gender": list("FFFFMMMMMF")})
    clusters = {f"u{i}": (0 if i < 4 else 1) for i in range(10)}
    pur = gender_purity(clusters, manifest)
    assert pur.loc[0, "majority"] == "F" and pur.loc[0, "purity"] == pytest.approx(1.0)
    assert pur.loc[1, "majority"] == "M" and pur.loc[1, "purity"] == pytest.approx(5 / 6)


def test_sample_frames_is_seeded_and_capped(tmp_path):
    feats = np.arange(200, dtype=np.float16).reshape(100, 2)
    np.savez(tmp_path / "shard_00000.npz", feats=feats, utt_ids=np.array(["a", "b"]), lengths=np.array([60, 40]))
    pd.DataFrame({"utt_id": ["a", "b"], "shard": [0, 0], "offset": [0, 60], "frames": [60, 40]}).to_csv(
        tmp_path / "index.tsv", sep="\t", index=False)
    x = sample_frames(tmp_path, 30, seed=1)
    assert x.shape == (30, 2) and len(np.unique(x[:, 0])) == 30
    assert np.array_equal(x, sample_frames(tmp_path, 30, seed=1))
    assert sample_frames(tmp_path, 1000, seed=1).shape == (100, 2)


def test_activation_pass_counts_equal_a_direct_computation(tmp_path):
    """The streaming pass over wav files equals top-K counts computed from one full forward."""
    import soundfile as sf

    from speaker_neurons.analysis.counts import top_k_for, topk_mask
    from speaker_neurons.analysis.stats import activation_statistics
    from speaker_neurons.models.melhubert import MelHuBERT

    torch.manual_seed(0)
    model = MelHuBERT({"num_layers": 2, "hidden_dim": 32, "num_heads": 2, "ffn_dim": [64, 48],
                       "pos_conv_kernel": 8, "pos_conv_groups": 2}).eval()
    rng = np.random.default_rng(0)
    rows, labels, clusters = [], {}, {}
    for i, n in enumerate([8000, 12000, 9600]):
        p = tmp_path / f"u{i}.wav"
        sf.write(p, (0.1 * rng.standard_normal(n)).astype(np.float32), 16000, subtype="FLOAT")
        rows.append({"utt_id": f"u{i}", "path": str(p), "duration": n / 16000})
        t = model.frames_for(n)
        labels[f"u{i}"] = rng.integers(0, 3, t + (1 if i == 1 else 0)).astype(np.int16)  # one off-by-one
        clusters[f"u{i}"] = i % 2
    info = activation_statistics(model, pd.DataFrame(rows), labels, clusters, k_ssl=3, k_ivector=2,
                                 top_fraction=0.05, out_npz=tmp_path / "c.npz", max_mismatch=1,
                                 max_batch_seconds=DEFAULTS["analysis"]["max_batch_seconds"], progress=False)
    assert info["truncated_utterances"] == 1
    z = np.load(tmp_path / "c.npz")
    for layer, width in ((1, 64), (2, 48)):
        expect = np.zeros((6, width), dtype=np.int64)
        k = top_k_for(width, 0.05)
        for r in rows:
            wav, _ = sf.read(r["path"], dtype="float32")
            with torch.inference_mode():
                out = model(torch.from_numpy(wav)[None], torch.tensor([len(wav)]))
            acts = out.ffn[layer - 1][0]
            mask = topk_mask(acts, k).numpy()
            lab = labels[r["utt_id"]][: acts.shape[0]]
            for t, c in enumerate(lab):
                expect[clusters[r["utt_id"]] * 3 + c] += mask[t]
        assert np.array_equal(z[f"counts_l{layer}"], expect)


def test_counting_other_partitions_in_the_same_pass_gives_each_one_its_own_counts(tmp_path):
    """One pass with other i-vector partitions (each frame counted once per partition) writes the same counts for the used
    partition as a pass without them, and pools, for each other partition, exactly what a pass with that
    partition alone counts; the speaker neurons each gives are compared (Jaccard) in the partitions table."""
    import soundfile as sf

    from speaker_neurons.analysis.counts_data import load_counts
    from speaker_neurons.analysis.neuron_sets import compute_neuron_sets, partition_overlap
    from speaker_neurons.analysis.stats import activation_statistics
    from speaker_neurons.models.melhubert import MelHuBERT

    torch.manual_seed(0)
    model = MelHuBERT({"num_layers": 2, "hidden_dim": 32, "num_heads": 2, "ffn_dim": [64, 48],
                       "pos_conv_kernel": 8, "pos_conv_groups": 2}).eval()
    rng = np.random.default_rng(1)
    rows, labels = [], {}
    for i in range(8):
        n = int(rng.integers(6000, 12000))
        p = tmp_path / f"u{i}.wav"
        sf.write(p, (0.1 * rng.standard_normal(n)).astype(np.float32), 16000, subtype="FLOAT")
        rows.append({"utt_id": f"u{i}", "path": str(p), "duration": n / 16000})
        labels[f"u{i}"] = rng.integers(0, 3, model.frames_for(n)).astype(np.int16)
    used = {f"u{i}": i % 2 for i in range(8)}
    others = {"a": {f"u{i}": int(i < 4) for i in range(8)}, "b": dict(used), "c": {f"u{i}": int(i in (1, 2, 5)) for i in range(8)}}
    kw = dict(k_ssl=3, k_ivector=2, top_fraction=0.05, max_mismatch=1, progress=False,
              max_batch_seconds=DEFAULTS["analysis"]["max_batch_seconds"])
    activation_statistics(model, pd.DataFrame(rows), labels, used, out_npz=tmp_path / "all.npz", partitions=others, **kw)
    both = load_counts(tmp_path / "all.npz")
    assert both.partitions == ["a", "b", "c"] and both.partition_frames.shape == (3 * 6,)  # 3 blocks of 2 x 3
    alone = {}
    for name, part in [("used", used), *others.items()]:
        activation_statistics(model, pd.DataFrame(rows), labels, part, out_npz=tmp_path / f"{name}.npz", **kw)
        alone[name] = load_counts(tmp_path / f"{name}.npz")
        got = both if name == "used" else both.for_partition(name)
        assert np.array_equal(got.frames, alone[name].frames)
        assert all(np.array_equal(x, y) for x, y in zip(got.counts, alone[name].counts))
    assert np.array_equal(both.classes, alone["used"].classes) and alone["used"].partition_frames is None
    rows_ = partition_overlap(both, rho=0.8, fdr=0.05)
    b_total = next(r for r in rows_ if r["partition"] == "b" and r["layer"] == "total")
    assert b_total["jaccard"] == 1.0  # the same partition as the used one gives the same neurons
    sets = {n: compute_neuron_sets(alone[n], rho=0.8, fdr=0.05, sets=["ivector_cluster"])["ivector_cluster"]
            for n in ("used", "c")}
    for r in (r for r in rows_ if r["partition"] == "c" and r["layer"] != "total"):
        a, b = set(sets["used"][int(r["layer"])]), set(sets["c"][int(r["layer"])])
        assert (r["rests_on"], r["other"], r["both"]) == (len(a), len(b), len(a & b))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_and_cpu_give_the_same_neuron_sets(tmp_path):
    """The statistics pass on CUDA gives the CPU's neuron sets; counts may differ only where
    activations tie at the top-K boundary, so the test reports how many count cells differ and requires
    every set to be equal."""
    import soundfile as sf

    from speaker_neurons.analysis.counts import load_counts
    from speaker_neurons.analysis.neuron_sets import compute_neuron_sets
    from speaker_neurons.analysis.stats import activation_statistics
    from speaker_neurons.models.melhubert import MelHuBERT

    torch.manual_seed(0)
    model = MelHuBERT({"num_layers": 2, "hidden_dim": 64, "num_heads": 2, "ffn_dim": 256,
                       "pos_conv_kernel": 16, "pos_conv_groups": 4}).eval()
    rng = np.random.default_rng(0)
    rows, labels, clusters = [], {}, {}
    for i in range(24):
        n = int(rng.integers(16000, 48000))
        p = tmp_path / f"u{i}.wav"
        x = rng.standard_normal(n)
        if i % 2:  # the two "i-vector clusters" differ in spectrum, so that some neurons tell them apart
            x = np.convolve(x, np.ones(8) / 8, mode="same") * 3
        sf.write(p, (0.1 * x).astype(np.float32), 16000, subtype="FLOAT")
        rows.append({"utt_id": f"u{i}", "path": str(p), "duration": n / 16000})
        labels[f"u{i}"] = rng.integers(0, 3, model.frames_for(n)).astype(np.int16)
        clusters[f"u{i}"] = i % 2
    sets = {}
    for dev in ("cpu", "cuda"):
        activation_statistics(model.to(dev), pd.DataFrame(rows), labels, clusters, k_ssl=3, k_ivector=2,
                              top_fraction=0.05, out_npz=tmp_path / f"{dev}.npz",
                              max_mismatch=DEFAULTS["analysis"]["max_label_mismatch"],
                              max_batch_seconds=DEFAULTS["analysis"]["max_batch_seconds"], progress=False)
        sets[dev] = compute_neuron_sets(load_counts(tmp_path / f"{dev}.npz"), rho=DEFAULTS["analysis"]["rho"],
                                        fdr=DEFAULTS["analysis"]["fdr"])
    with np.load(tmp_path / "cpu.npz") as a, np.load(tmp_path / "cuda.npz") as b:
        layers = [k for k in a.files if k.startswith("counts_l")]
        differing = sum(int((a[k] != b[k]).sum()) for k in layers)
        cells = sum(a[k].size for k in layers)
        assert np.array_equal(a["frames"], b["frames"]) and a["frames"].sum() > 0
    print(f"count cells differing between CPU and CUDA: {differing} of {cells}")
    assert differing <= cells // 100  # only where activations tie at the top-K boundary
    # on CPU these inputs give non-empty sets (ivector_cluster 11 neurons), so equality is not of two empties
    assert sum(len(v) for v in sets["cpu"]["ivector_cluster"].values()) > 0
    assert sets["cpu"] == sets["cuda"]
