"""A reparametrisation that changes no function of the model (docs/METHOD.md, "What l1 measures"): in a
post-LN layer (MelHuBERT's), the layer norm that feeds the FFN scaled by c (gain and bias), the FFN's
input weights by 1/c, and its output weights and bias by c. What the next layer norm sees is then c
times what it saw, which it removes up to its epsilon; with c a power of two and that norm's epsilon
scaled by c^2 every float operation scales exactly, so the model computes the same bits.

The label-free method reads only activations, so its neuron sets (and a model pruned to exactly the
protected set) cannot move; l1's per-neuron score ||W1[j]||_1 + |b1[j]| + ||W2[:, j]||_1 weighs the
two matrices differently and moves, and so does its choice."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from conftest import ROOT
from speaker_neurons import pruning
from speaker_neurons.analysis.counts import ActivationCounter, classes_table
from speaker_neurons.analysis.counts_data import CountsData
from speaker_neurons.analysis.neuron_sets import compute_neuron_sets
from speaker_neurons.models import load_upstream

SHIPPED = {"name": "m", "kind": "melhubert", "path": str(ROOT / "models/melhubert_demo/model"), "format": "native"}


def rescale_ffns(model, c: float, exact: bool) -> None:
    """Every layer: the FFN-feeding layer norm x c, W1 / c, W2 and b2 x c; with `exact`, the next layer
    norm's epsilon x c^2 (then the layer's output is the same, not only up to epsilon)."""
    with torch.no_grad():
        for layer in model.transformer.layers:
            assert not layer.layer_norm_first  # post-LN: layer_norm feeds the FFN, final_layer_norm follows it
            layer.layer_norm.weight.mul_(c)
            layer.layer_norm.bias.mul_(c)
            ff = layer.feed_forward
            ff.intermediate_dense.weight.div_(c)
            ff.output_dense.weight.mul_(c)
            ff.output_dense.bias.mul_(c)
            if exact:
                layer.final_layer_norm.eps *= c * c


def _forward(model, wavs, lengths, counter, class_ids):
    with torch.no_grad():
        return model(wavs, lengths, return_ffn=True, ffn_hook=counter.hook(class_ids))


@pytest.fixture(scope="module")
def shipped():
    return load_upstream(SHIPPED, device="cpu").eval()


@pytest.fixture(scope="module")
def audio():
    g = torch.Generator().manual_seed(0)
    t = torch.arange(16000) / 16000
    # two utterances of voiced-like harmonics in noise, one shorter (padding)
    wavs = torch.stack([0.3 * torch.sin(2 * torch.pi * f * t) * torch.sin(2 * torch.pi * 3 * t) for f in (140, 220)])
    wavs = wavs + 0.02 * torch.randn(wavs.shape, generator=g)
    return wavs, torch.tensor([16000, 12000])


@pytest.mark.parametrize("c", [2.0, 0.25])
def test_the_method_is_invariant_and_l1_is_not(shipped, audio, c):
    wavs, lengths = audio
    base, scaled = copy.deepcopy(shipped), copy.deepcopy(shipped)
    rescale_ffns(scaled, c, exact=True)
    frames = base.frames_for(int(lengths[0]))
    g = torch.Generator().manual_seed(1)
    class_ids = torch.randint(0, 4, (2, frames), generator=g)  # 2 i-vector x 2 SSL clusters
    counters = [ActivationCounter(4, list(m.ffn_widths), 0.01) for m in (base, scaled)]
    out = [_forward(m, wavs, lengths, cnt, class_ids) for m, cnt in zip((base, scaled), counters)]
    # the same bits: every hidden state and every FFN activation
    assert all(torch.equal(a, b) for a, b in zip(out[0].hidden, out[1].hidden))
    assert all(torch.equal(a, b) for a, b in zip(out[0].ffn, out[1].ffn))
    # so the counts and every neuron set of the method are the same
    res = [cnt.result() for cnt in counters]
    assert all(np.array_equal(a, b) for a, b in zip(res[0]["counts"], res[1]["counts"]))
    sets = [compute_neuron_sets(CountsData(r["counts"], r["frames"], classes_table(2, 2),
                                           {"K": r["K"], "top_fraction": r["top_fraction"]}), rho=0.5, fdr=0.05)
            for r in res]
    assert sets[0] == sets[1] and sum(len(v) for v in sets[0]["ivector_cluster"].values()) > 0
    # a model pruned to exactly the protected set keeps the same neurons and computes the same bits
    protected = {l: sets[0]["union"][l] or [0] for l in range(1, base.num_layers + 1)}
    keep = [pruning.plan(m, "protected", "protected_size", protected, seed=0)[0] for m in (base, scaled)]
    assert keep[0] == keep[1]
    pruned = [m.prune_ffn(k) for m, k in zip((base, scaled), keep)]
    h = [p(wavs, lengths, return_ffn=False).hidden for p in pruned]
    assert all(torch.equal(a, b) for a, b in zip(*h))
    # l1's scores move (W1's share by 1/c, W2's by c) and so does its choice at the paper's width
    fresh = [copy.deepcopy(shipped) for _ in range(2)]
    rescale_ffns(fresh[1], c, exact=True)
    scores = [m.ffn_importance() for m in fresh]
    assert not np.allclose(scores[0][1], scores[1][1])
    l1 = [pruning.plan(m, "l1", 0.3, seed=0)[0] for m in fresh]
    moved = sum(len(set(l1[0][l]) - set(l1[1][l])) for l in l1[0])
    assert moved > 0.05 * sum(len(v) for v in l1[0].values())


def test_without_the_epsilon_the_outputs_agree_up_to_it(shipped, audio):
    wavs, lengths = audio
    base, scaled = shipped, copy.deepcopy(shipped)
    rescale_ffns(scaled, 2.0, exact=False)
    with torch.no_grad():
        a, b = (m(wavs, lengths, return_ffn=True) for m in (base, scaled))
    for x, y in zip(a.hidden + a.ffn, b.hidden + b.ffn):
        assert torch.allclose(x, y, rtol=1e-4, atol=1e-4)
