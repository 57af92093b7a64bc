"""The planted positive control at a small size (speaker_neurons.plant; the full run is
benchmarks/planted_control.py): planted into the shipped demo model from the tiny synthesized corpus
(8 speakers), the plant changes only its neurons, keeps them under l1's cut, and gates them so that
the method's own set rule (METHOD §4), applied to held-out speech (the tiny evaluation corpus: other
speakers, other texts) with gender as the i-vector clusters, finds the planted neurons as speaker
neurons of their own gender and few of the sham's as speaker neurons at all."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from conftest import ROOT, corpus_dir

from speaker_neurons import plant, pruning
from speaker_neurons.analysis.counts import classes_table, topk_mask
from speaker_neurons.analysis.counts_data import top_k_for
from speaker_neurons.analysis.neuron_sets import layer_groups
from speaker_neurons.models.native import load_native

pytestmark = pytest.mark.slow
SPEC = plant.PlantSpec(layers=(1, 3), per_group=3, steps=80, batch_size=8, crop_seconds=1.0)
SR = 16000


@pytest.fixture(scope="module")
def planted(tiny_corpora):
    torch.set_num_threads(1)
    table = plant.plant_corpus_table(corpus_dir(tiny_corpora, "demo"))
    held_out = plant.plant_corpus_table(corpus_dir(tiny_corpora, "demo_eval"))
    base = load_native(ROOT / "models/melhubert_demo/model")
    wavs = plant.load_crops(table["path"].tolist(), SR, SPEC.crop_seconds)
    neurons = plant.lowest_importance(base, SPEC.layers, 2 * SPEC.per_group)
    out = {}
    for kind in plant.KINDS:
        gate, classes, targets, _ = plant.labels_for(table, kind, SPEC.objective)
        out[kind] = plant.train_plant(copy.deepcopy(base), wavs, gate, classes, targets, neurons, SPEC, SR)
    return base, held_out, wavs, neurons, out


def test_the_lowest_importance_neurons_are_chosen(planted):
    base, _, _, neurons, _ = planted
    imp = base.ffn_importance()
    for l, idx in neurons.items():
        assert len(idx) == 2 * SPEC.per_group
        assert imp[l][idx].max() <= np.sort(imp[l])[2 * SPEC.per_group - 1]


def test_only_the_planted_neurons_change(planted):
    base, _, _, neurons, out = planted
    for kind, (model, _) in out.items():
        before, after = base.state_dict(), model.state_dict()
        changed = {k for k in before if not torch.equal(before[k], after[k])}
        ffn = {f"encoder.transformer.layers.{l - 1}.feed_forward.{p}" for l in SPEC.layers
               for p in ("intermediate_dense.weight", "intermediate_dense.bias", "output_dense.weight")}
        assert changed == ffn, kind
        for l, idx in neurons.items():
            ff0, ff1 = base.feed_forwards()[l - 1], model.feed_forwards()[l - 1]
            rest = np.setdiff1d(np.arange(ff0.width), idx)
            assert torch.equal(ff0.intermediate_dense.weight[rest], ff1.intermediate_dense.weight[rest])
            assert torch.equal(ff0.output_dense.weight[:, rest], ff1.output_dense.weight[:, rest])
            assert not torch.equal(ff0.intermediate_dense.weight[idx], ff1.intermediate_dense.weight[idx])
            # readout one_hot: each planted neuron writes into its own residual dimension only
            w2 = ff1.output_dense.weight[:, idx]
            assert (w2 != 0).sum(0).tolist() == [1] * len(idx)
            assert torch.nonzero(w2.T)[:, 1].tolist() == plant.one_hot_dims(len(idx), w2.shape[0])


def test_planted_neurons_stay_below_the_budget_and_l1_drops_them(planted):
    base, _, _, neurons, out = planted
    for kind, (model, rec) in out.items():
        imp = model.ffn_importance()
        for l, idx in neurons.items():
            assert imp[l][idx].max() <= rec["budgets"][l] * (1 + 1e-6), kind
            assert rec["budgets"][l] == pytest.approx(np.quantile(base.ffn_importance()[l], SPEC.budget_quantile))
        keep, _ = pruning.plan(model, "l1", 0.5, seed=0)
        assert not any(set(keep[l]) & set(idx) for l, idx in neurons.items()), kind


def _utterance_counts(model, wavs) -> tuple[dict[int, np.ndarray], np.ndarray, dict[int, int]]:
    """Per planted layer, each utterance's activation counts (METHOD §1: top K of every frame), its
    frames, and K per layer."""
    K = {l: top_k_for(model.feed_forwards()[l - 1].width, SPEC.top_fraction) for l in SPEC.layers}
    counts = {l: np.zeros((len(wavs), model.feed_forwards()[l - 1].width), dtype=np.int64) for l in SPEC.layers}
    frames = np.zeros(len(wavs), dtype=np.int64)
    with torch.no_grad():
        for i, x in enumerate(wavs):
            ffn = model(torch.from_numpy(x[None, : 3 * SR]), None).ffn
            for l in SPEC.layers:
                counts[l][i] = topk_mask(ffn[l - 1][0], K[l]).sum(0).numpy()
            frames[i] = ffn[0].shape[1]
    return counts, frames, K


def _groups(counts: np.ndarray, frames: np.ndarray, K: int, utt_group: np.ndarray) -> dict[int, set[int]]:
    """METHOD §4's ivector_cluster set of one layer with `utt_group` as the i-vector clusters and one SSL
    cluster: per group, the neurons exclusive to it."""
    c = np.stack([counts[utt_group == g].sum(0) for g in (0, 1)])
    f = np.array([frames[utt_group == g].sum() for g in (0, 1)])
    groups = layer_groups("ivector_cluster", c, f, classes_table(2, 1), K, 0.8, 0.05)
    return {g: set(np.flatnonzero(m).tolist()) for g, m in groups.items()}


def test_the_set_rule_finds_planted_neurons_under_their_gender_and_not_the_sham(planted):
    """On held-out speech. (At this size the sham's own channel gate hardly carries over to new
    utterances; what the control needs is that it is no speaker gate.)"""
    _, held_out, _, neurons, out = planted
    wavs = plant.load_crops(held_out["path"].tolist(), SR, SPEC.crop_seconds)
    gender = (held_out["gender"].to_numpy() == "M").astype(int)
    found = {"planted": 0, "sham": 0}
    for kind in plant.KINDS:
        counts, frames, K = _utterance_counts(out[kind][0], wavs)
        for l, idx in neurons.items():
            sets = _groups(counts[l], frames, K[l], gender)
            if kind == "planted":  # each under its own gender
                found[kind] += len(set(idx[: SPEC.per_group]) & sets[0]) + len(set(idx[SPEC.per_group:]) & sets[1])
            else:  # under any
                found[kind] += len(set(idx) & (sets[0] | sets[1]))
    n = sum(len(v) for v in neurons.values())
    # measured (Intel Xeon, AVX512-BF16): 11 of 12 planted, 2 of 12 sham (objective identity: 12 and 1)
    assert found["planted"] >= n * 2 // 3
    assert found["sham"] <= n // 2


def test_the_record_says_what_the_gate_reaches(planted):
    _, _, _, neurons, out = planted
    rec = out["planted"][1]
    rows = rec["per_neuron"]
    assert [(r["layer"], r["neuron"]) for r in rows] == [(l, j) for l in SPEC.layers for j in neurons[l]]
    assert np.mean([r["own_top_k"] for r in rows]) > 5 * np.mean([r["other_top_k"] for r in rows])
    assert len(rec["curve"]) == SPEC.steps
    first, last = np.mean([c[2] for c in rec["curve"][:10]]), np.mean([c[2] for c in rec["curve"][-10:]])
    assert last < first  # the code loss falls: the planted neurons learn the speakers


@pytest.fixture(scope="module")
def speaker_code(tiny_corpora):
    """train_speaker_code (the ceiling's plant, benchmarks/plant_ceiling.py) with and without a budget."""
    torch.set_num_threads(1)
    table = plant.plant_corpus_table(corpus_dir(tiny_corpora, "demo"))
    base = load_native(ROOT / "models/melhubert_demo/model")
    wavs = plant.load_crops(table["path"].tolist(), SR, 0.5)
    speakers = np.unique(table["speaker"].to_numpy(), return_inverse=True)[1]
    neurons = plant.lowest_importance(base, (1, 3), 4)
    out = {q: plant.train_speaker_code(copy.deepcopy(base), wavs, speakers, neurons, budget_quantile=q, steps=30,
                                       sample_rate=SR, batch_size=8)
           for q in (0.25, None)}
    return base, neurons, out


def test_the_speaker_code_changes_only_its_neurons_and_holds_them_under_the_budget(speaker_code):
    base, neurons, out = speaker_code
    imp0 = base.ffn_importance()
    for q, (model, rec) in out.items():
        for l, idx in neurons.items():
            ff0, ff1 = base.feed_forwards()[l - 1], model.feed_forwards()[l - 1]
            rest = np.setdiff1d(np.arange(ff0.width), idx)
            assert torch.equal(ff0.intermediate_dense.weight[rest], ff1.intermediate_dense.weight[rest])
            assert torch.equal(ff0.intermediate_dense.bias[rest], ff1.intermediate_dense.bias[rest])
            assert torch.equal(ff0.output_dense.weight[:, rest], ff1.output_dense.weight[:, rest])
            assert not torch.equal(ff0.output_dense.weight[:, idx], ff1.output_dense.weight[:, idx])
            assert rec["importance"][l] == pytest.approx(list(model.ffn_importance()[l][idx]))
        other = {k for k, v in base.state_dict().items() if not torch.equal(v, model.state_dict()[k])}
        assert all(".feed_forward." in k for k in other), q
        assert len(rec["curve"]) == 30
    budgets = out[0.25][1]["budgets"]
    for l in neurons:
        assert budgets[l] == pytest.approx(np.quantile(imp0[l], 0.25))
        assert max(out[0.25][1]["importance"][l]) <= budgets[l] * (1 + 1e-6)
    # without the projection the same training outgrows the budget: it is the projection that holds it
    assert out[None][1]["budgets"] is None
    assert max(max(out[None][1]["importance"][l]) / budgets[l] for l in neurons) > 1.05
