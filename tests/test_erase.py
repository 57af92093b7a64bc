"""The erase ablation: which sets are erased, the paired change and its interval, and a run on a tiny
model where the unerased rows change nothing, an empty erase changes nothing and the controls match
the erased set's per-layer sizes."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from speaker_neurons import erase, sid, sid_pool, statistics
from test_models import tiny
from test_sid import _manifest


def test_erase_sets_read_the_ssl_set_and_each_ivector_clusters_own_neurons(tmp_path):
    (tmp_path / "ssl.json").write_text(json.dumps({"set": "ssl_cluster", "layers": {"1": [3, 5], "2": []}}))
    (tmp_path / "ivn.json").write_text(json.dumps({"set": "ivector_cluster", "layers": {"1": [1, 2, 7], "2": [4]},
                                                   "groups": {"1": {"1": [7], "2": [4]}, "0": {"1": [1, 2], "2": []}}}))
    sets = erase.erase_sets(tmp_path / "ssl.json", tmp_path / "ivn.json")
    assert list(sets) == ["ssl_cluster", "ivector_cluster:0", "ivector_cluster:1"]
    assert sets["ivector_cluster:0"] == {1: [1, 2], 2: []} and sets["ivector_cluster:1"] == {1: [7], 2: [4]}
    (tmp_path / "old.json").write_text(json.dumps({"set": "ivector_cluster", "layers": {"1": [1]}}))
    with pytest.raises(ValueError, match="groups"):
        erase.erase_sets(None, tmp_path / "old.json")


def test_paired_delta_against_a_direct_computation():
    before = np.array([[1, 1, 0, 1, 0, 1], [1, 0, 0, 1, 1, 1]])
    after = np.array([[0, 1, 0, 0, 0, 1], [1, 0, 0, 0, 0, 1]])
    d = after.mean(0) - before.mean(0)  # per segment: [-0.5, 0, 0, -1, -0.5, 0]
    res = statistics.paired_delta(before, after)
    half = 2.570581835636314 * d.std(ddof=1) / math.sqrt(6)  # t(0.975, 5)
    assert res["delta"] == pytest.approx(-2 / 6) and res["n"] == 6
    assert res["ci95"] == pytest.approx([-2 / 6 - half, -2 / 6 + half])


def test_ablation_on_a_tiny_model(tmp_path):
    model = tiny("melhubert")
    man = _manifest(tmp_path, [1.0, 1.2, 0.9, 1.1, 1.3, 1.0, 0.8, 1.2])
    segs = sid_pool.segments(man, 0.3, model.sample_rate, 0.5)
    pooled = sid_pool.pool_layer_means(model, segs, max_batch_seconds=3.0, progress=False)
    labels = np.array([int(s[1]) for s in segs["speaker"]])
    split = np.where(np.arange(len(segs)) % 3 == 0, "test", "train")
    data = sid_pool.SIDData(pooled, labels, split, ["s0", "s1"])
    everything = tuple(range(model.num_layers + 1))
    heads = {"all": sid.train_heads(data, [sid.HeadSpec(everything, 1e-2, s) for s in (0, 1)], epochs=5),
             "last": sid.train_heads(data, [sid.HeadSpec((model.num_layers,), 1e-2, 0)], epochs=5)}
    test = segs[split == "test"].reset_index(drop=True)
    groups = np.array([i % 2 for i in range(len(test))])
    W = model.ffn_widths
    sets = {"some": {1: [0, 1, 2, 3], 2: list(range(W[1] // 2))}, "empty": {1: [], 2: []}}
    table = erase.run_ablation(model, test, labels[split == "test"], groups, heads, sets, random_seeds=[0, 1],
                               max_batch_seconds=3.0, amp="auto")
    # rows: (unerased + per set: itself + 2 random) x 2 layer sets x (all, cluster 0, cluster 1)
    assert len(table) == (1 + 2 * 3) * 2 * 3
    assert (table[table["kind"] == "unerased"]["delta"] == 0).all()
    empty = table[table["erased"] == "empty"]
    assert (empty["delta"] == 0).all() and (empty["neurons"] == 0).all()
    some = table[(table["erased"] == "some")]
    assert (some["neurons"] == 4 + W[1] // 2).all()
    # the unerased accuracy equals the heads' accuracy on the same pooled segments (mean over seeds)
    base = table[(table["kind"] == "unerased") & (table["layer_set"] == "all") & (table["cluster"] == "all")]
    tp = torch.from_numpy(pooled[split == "test"])
    with torch.no_grad():
        direct = np.mean([(h(tp).argmax(1).numpy() == labels[split == "test"]).mean() for h in heads["all"]])
    assert float(base["accuracy"].iloc[0]) == pytest.approx(direct, abs=1e-6)
    # the "some" erase really changed the model: hidden_0 (input of layer 1) is the same, the layers after differ
    erased = __import__("copy").deepcopy(model).erase_ffn(sets["some"])
    p2 = sid_pool.pool_layer_means(erased, test, max_batch_seconds=3.0, progress=False)
    p1 = sid_pool.pool_layer_means(model, test, max_batch_seconds=3.0, progress=False)
    assert np.array_equal(p1[:, :1], p2[:, :1]) and not np.allclose(p1[:, 1:], p2[:, 1:])
    summary = erase.summarize(table)
    assert set(summary) == {"some", "empty", "unerased"}
    ctrl = table[(table["kind"] == "random") & (table["erased"] == "some") & (table["layer_set"] == "all")
                 & (table["cluster"] == "0")]["delta"]
    got = summary["some"]["all"]["0"]
    assert len(ctrl) == 2 and got["random_delta_mean"] == pytest.approx(float(ctrl.mean()))
    assert got["random_delta_range"] == [pytest.approx(float(ctrl.min())), pytest.approx(float(ctrl.max()))]
    own = table[(table["kind"] == "set") & (table["erased"] == "some") & (table["layer_set"] == "all")
                & (table["cluster"] == "0")].iloc[0]
    assert got["delta"] == own["delta"] and got["delta_ci95"] == [own["delta_ci_low"], own["delta_ci_high"]]
    erase.plot(table, tmp_path / "erase.png", "tiny")
    assert (tmp_path / "erase.png").stat().st_size > 1000


def test_each_variant_is_one_pass_over_the_test_segments_in_blocks_of_whole_utterances(tmp_path, monkeypatch):
    """The upstream runs once per variant (unerased, each set, each random control) over the test
    segments, block by block: every segment once per variant, no block splits an utterance's crops,
    upstream.amp reaches every pass, and the blocks change nothing in the table."""
    model = tiny("melhubert")
    man = _manifest(tmp_path, [1.0, 1.2, 0.9, 1.1, 1.3, 1.0, 0.8, 1.2])
    segs = sid_pool.segments(man, 0.3, model.sample_rate, 0.5)
    labels = np.array([int(s[1]) for s in segs["speaker"]])
    pooled = sid_pool.pool_layer_means(model, segs, max_batch_seconds=3.0, progress=False)
    data = sid_pool.SIDData(pooled, labels, np.array(["train"] * len(segs)), ["s0", "s1"])
    heads = {"all": sid.train_heads(data, [sid.HeadSpec(tuple(range(model.num_layers + 1)), 1e-2, s)
                                           for s in (0, 1, 2)], epochs=3)}
    groups = np.array([int(u[1:]) % 2 for u in segs["utt_id"]])
    sets = {"some": {1: [0, 1, 2, 3], 2: [5, 6]}}
    whole = erase.run_ablation(model, segs, labels, groups, heads, sets, [0, 1], max_batch_seconds=3.0, amp=False)
    calls = []
    pool = sid_pool.pool_layer_means

    def recorded(m, part, **kw):
        calls.append((id(m), part["seg_id"].tolist(), kw["amp"]))
        return pool(m, part, **kw)

    monkeypatch.setattr(sid_pool, "pool_layer_means", recorded)
    monkeypatch.setattr(erase, "SEGMENTS_PER_BLOCK", 5)
    table = erase.run_ablation(model, segs, labels, groups, heads, sets, [0, 1], max_batch_seconds=3.0, amp=False)
    assert table.equals(whole)
    first = segs["seg_id"].iloc[0]
    n_blocks = next(i for i, (_, b, _) in enumerate(calls) if i and first in b)  # where the second pass starts
    blocks = [b for _, b, _ in calls[:n_blocks]]
    assert len(calls) == (1 + 1 + 2) * n_blocks  # unerased, the set, two random controls: three heads per pass
    assert [b for _, b, _ in calls] == blocks * 4 and calls[0][0] != calls[n_blocks][0]
    assert len(blocks) > 2 and all(len(b) >= 5 for b in blocks[:-1])
    assert sorted(s for b in blocks for s in b) == sorted(segs["seg_id"])  # each segment once per variant
    owner = {s.split("#")[0]: i for i, b in enumerate(blocks) for s in b}
    assert all(owner[s.split("#")[0]] == i for i, b in enumerate(blocks) for s in b)  # utterances whole
    assert {a for _, _, a in calls} == {False}
