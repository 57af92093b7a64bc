"""Which neurons pruning keeps (METHOD §5): importance by hand, the three strategies, the targets, and a
pruned model equal to its parent with the removed neurons silenced."""

from __future__ import annotations

import pytest
import torch

from speaker_neurons import pruning
from speaker_neurons.models.base import Upstream
from speaker_neurons.config import complete
from test_models import tiny  # the tiny random MelHuBERT / wav2vec2 configs of the model tests

SEED = complete({})["prune"]["seed"]


def _ff(w1, b1, w2):
    """A real FeedForward (d = 2, 4 neurons) with the given weights."""
    from speaker_neurons.models.components import FeedForward

    ff = FeedForward(2, 4)
    with torch.no_grad():
        ff.intermediate_dense.weight.copy_(torch.tensor(w1, dtype=torch.float32))
        ff.intermediate_dense.bias.copy_(torch.tensor(b1, dtype=torch.float32))
        ff.output_dense.weight.copy_(torch.tensor(w2, dtype=torch.float32))
    return ff


class _Model:
    """Two layers of 4 neurons, d = 2: importances written by hand."""

    def __init__(self):
        # layer 1: |W1 row| + |b1| + |W2 column|  =  [1+0+1, 2+1+0, 0.5+0+0.5, 3+0+2] = [2, 3, 1, 5]
        w1 = [[1, 0], [1, -1], [0.5, 0], [-2, 1]]
        b1 = [0, -1, 0, 0]
        w2 = [[1, 0, 0.5, 2], [0, 0, 0, 0]]
        # layer 2: all equal (ties go to the lower index)
        self._ffs = [_ff(w1, b1, w2), _ff([[1, 0]] * 4, [0] * 4, [[1, 1, 1, 1], [0, 0, 0, 0]])]

    def feed_forwards(self):
        return self._ffs

    ffn_importance = Upstream.ffn_importance  # the model's own method, over these layers

    @property
    def ffn_widths(self):
        return [4, 4]


def test_importance_by_hand():
    imp = _Model().ffn_importance()
    assert imp[1].tolist() == [2.0, 3.0, 1.0, 5.0]
    assert imp[2].tolist() == [2.0, 2.0, 2.0, 2.0]
    assert _Model().feed_forwards()[0].importance().dtype == torch.float64


def test_strategies_remove_the_same_number_and_protect():
    m = _Model()
    protected = {1: [0, 2], 2: [3]}
    keeps = {}
    for strategy in pruning.STRATEGIES:
        keep, rec = pruning.plan(m, strategy, 0.5, protected, seed=3)
        keeps[strategy] = keep
        assert [len(keep[l]) for l in (1, 2)] == [2, 2]  # the same width for every strategy
        assert rec["layers"]["1"]["removed"] == 2 and rec["kept_total"] == 4
    assert keeps["l1"] == {1: [1, 3], 2: [0, 1]}  # most important; ties to the lower index
    assert keeps["protected"] == {1: [0, 2], 2: [0, 3]}  # the protected set first, then importance
    _, rec = pruning.plan(m, "l1", 0.5, protected, seed=SEED)
    assert rec["layers"]["1"]["protected_lost"] == 2 and rec["layers"]["2"]["protected_lost"] == 1
    # the random control is seeded: the same seed, the same draw; another seed, another one
    assert pruning.plan(m, "random", 0.5, protected, seed=3)[0] == keeps["random"]
    draws = {tuple(pruning.plan(m, "random", 0.5, protected, seed=s)[0][1]) for s in range(8)}
    assert len(draws) > 1


def test_protected_size_and_a_target_below_the_protected_set():
    m = _Model()
    protected = {1: [0, 1, 2], 2: [1]}
    keep, rec = pruning.plan(m, "protected", "protected_size", protected, seed=SEED)
    assert keep == {1: [0, 1, 2], 2: [1]} and rec["protected_lost_total"] == 0
    keep, rec = pruning.plan(m, "l1", "protected_size", protected, seed=SEED)
    assert [len(v) for v in keep.values()] == [3, 1]  # l1 keeps as many, chosen by importance
    # keeping 1 of 3 protected neurons in layer 1: the most important protected one, the loss recorded
    keep, rec = pruning.plan(m, "protected", 0.25, protected, seed=SEED)
    assert keep[1] == [1] and rec["layers"]["1"]["protected_lost"] == 2
    with pytest.raises(ValueError, match="protected set"):
        pruning.plan(m, "protected", 0.5, None, seed=SEED)
    with pytest.raises(ValueError, match="0..3"):
        pruning.plan(m, "protected", 0.5, {1: [4]}, seed=SEED)


@pytest.mark.parametrize("kind", ["melhubert", "wav2vec2"])
def test_pruned_model_equals_the_parent_with_removed_neurons_silenced(kind):
    """Removing neurons = zeroing their activations (W1 row and b1 entry to 0: GELU(0) = 0)."""
    parent = tiny(kind)
    protected = {1: [0, 5, 7], 2: [1, 2]}
    keep, _ = pruning.plan(parent, "protected", 0.5, protected, seed=SEED)
    silenced = tiny(kind)
    with torch.no_grad():
        for l, ff in enumerate(silenced.feed_forwards(), start=1):
            gone = sorted(set(range(ff.width)) - set(keep[l]))
            ff.intermediate_dense.weight[gone] = 0.0
            ff.intermediate_dense.bias[gone] = 0.0
    pruned = tiny(kind).prune_ffn(keep)
    g = torch.Generator().manual_seed(0)
    wav = torch.randn(2, 16000, generator=g) * 0.1
    lens = torch.tensor([16000, 11000])
    with torch.no_grad():
        a = silenced(wav, lens, return_ffn=True)
        b = pruned(wav, lens, return_ffn=True)
    for x, y in zip(a.hidden, b.hidden):
        assert float((x - y).abs().max()) < 1e-5
    for l, (x, y) in enumerate(zip(a.ffn, b.ffn), start=1):  # the kept neurons' activations are unchanged
        assert float((x[..., keep[l]] - y).abs().max()) < 1e-5
    assert pruned.kept_indices == {l: keep[l] for l in keep}


@pytest.mark.parametrize("kind", ["melhubert", "wav2vec2"])
def test_erase_equals_pruning_the_same_neurons(kind):
    """Zeroing W2 columns silences exactly those neurons: the output equals the model pruned of them."""
    gone = {1: [0, 3, 7], 2: [2]}
    erased = tiny(kind).erase_ffn(gone)
    keep = {l: [j for j in range(w) if j not in gone[l]] for l, w in enumerate(erased.ffn_widths, start=1)}
    pruned = tiny(kind).prune_ffn(keep)
    assert erased.ffn_widths == tiny(kind).ffn_widths  # the shape is kept
    wav = torch.randn(1, 12000, generator=torch.Generator().manual_seed(1)) * 0.1
    with torch.no_grad():
        a = erased(wav, torch.tensor([12000]), return_ffn=False)
        b = pruned(wav, torch.tensor([12000]), return_ffn=False)
    for x, y in zip(a.hidden, b.hidden):
        assert float((x - y).abs().max()) < 1e-5
    ctrl = pruning.random_like(gone, erased.ffn_widths, seed=4)
    assert {l: len(v) for l, v in ctrl.items()} == {1: 3, 2: 1} and ctrl == pruning.random_like(gone, erased.ffn_widths, 4)
    with pytest.raises(ValueError, match="0.."):
        tiny(kind).erase_ffn({1: [10_000]})


def test_iterative_step_widths_and_plan():
    assert pruning.step_widths([1024, 600, 500], 128, 512) == {1: 896, 2: 512, 3: 500}
    assert pruning.iterative_steps(3072, 128, 512) == 20 and pruning.iterative_steps(1024, 300, 512) == 2
    assert pruning.iterative_steps(512, 128, 512) == 0
    m = _Model()
    protected = {1: [0, 2], 2: [3]}
    keep, rec = pruning.plan(m, "protected", "step", protected, seed=SEED,
                             keep_widths=pruning.step_widths(m.ffn_widths, 1, 2))
    assert [len(keep[1]), len(keep[2])] == [3, 3] and {0, 2} <= set(keep[1]) and 3 in keep[2]
    assert rec["kept_total"] == 6 and rec["protected_lost_total"] == 0


def test_the_record_counts_the_speaker_and_ssl_neurons_each_strategy_lost(tmp_path):
    import json

    from speaker_neurons.pruning import sets_lost

    (tmp_path / "ivector_cluster.json").write_text(json.dumps({"layers": {"1": [0, 1, 2], "2": [5]}}))
    (tmp_path / "ssl_cluster.json").write_text(json.dumps({"layers": {"1": [2, 3], "2": []}}))
    got = sets_lost({1: [0, 2, 3], 2: [4]}, [tmp_path / "ivector_cluster.json", tmp_path / "ssl_cluster.json"])
    assert got == {"ivector_cluster": {"total": 4, "kept": 2, "lost": 2}, "ssl_cluster": {"total": 2, "kept": 2, "lost": 0}}
