"""Tests that pin the neuron-set definitions of METHOD §4 (speaker_neurons.analysis.neuron_sets)."""

from __future__ import annotations

import json
from fractions import Fraction

import numpy as np
import pytest
import torch

from speaker_neurons.analysis.counts import ActivationCounter, CountsData, class_index, classes_table, load_counts
from speaker_neurons.analysis.neuron_sets import (
    SET_NAMES,
    above_baseline,
    activation_prob,
    as_fraction,
    baseline,
    compute_neuron_sets,
    exclusive_union,
    group_set,
    ivector_cluster,
    layer_groups,
    neuron_set_params,
    per_cluster,
    plot_neuron_counts,
    read_neuron_counts,
    read_neuron_set,
    recompute_from_npz,
    ssl_cluster,
    unconditioned,
    union,
    write_neuron_sets,
)
from speaker_neurons.config import complete

DEFAULTS = complete({})
RHO, FDR = DEFAULTS["analysis"]["rho"], DEFAULTS["analysis"]["fdr"]

# ------------------------------------------------------------------------------------------------
# A hand-computed layer. k_ivector = 2, k_ssl = 3, classes (g, c) in the order of classes_table:
# rows (0,0) (0,1) (0,2) (1,0) (1,1) (1,2); every class has 8 frames; W = 8, K = 2, baseline 2/8 = 1/4.
# Above baseline per class: count * 8 > 2 * 8  <=>  count >= 3 (count = 2 is p = 1/4 exactly: NOT above).
# ------------------------------------------------------------------------------------------------
CLASSES = classes_table(2, 3)
FRAMES = np.array([8, 8, 8, 8, 8, 8])
K, W = 2, 8
COUNTS = np.array(
    [
        # j0 j1 j2 j3 j4 j5 j6 j7
        [5, 4, 3, 2, 3, 0, 0, 8],  # (0,0): above {0,1,2,4,7}
        [5, 4, 3, 2, 0, 0, 6, 1],  # (0,1): above {0,1,2,6}
        [5, 4, 0, 2, 0, 0, 0, 1],  # (0,2): above {0,1}
        [0, 4, 0, 2, 0, 5, 0, 0],  # (1,0): above {1,5}
        [0, 4, 0, 2, 3, 5, 6, 0],  # (1,1): above {1,4,5,6}
        [0, 4, 0, 2, 0, 5, 0, 0],  # (1,2): above {1,5}
    ]
)
ABOVE = {0: {0, 1, 2, 4, 7}, 1: {0, 1, 2, 6}, 2: {0, 1}, 3: {1, 5}, 4: {1, 4, 5, 6}, 5: {1, 5}}

# ivector_cluster, rho = 0.8: a group of 3 classes needs 3 of 3 (2/3 < 0.8).
#   N(G0) = above in all of (0,0),(0,1),(0,2) = {0, 1};  N(G1) = {1, 5};  E = {0, 5}.
# union: N(G0) = any of g0 = {0,1,2,4,6,7}; N(G1) = {1,4,5,6};  E = {0, 2, 5, 7}.
# unconditioned: pool over c -> 24 frames per g; above <=> count * 8 > 2 * 24 <=> count > 6.
#   g0 sums: 15 12 6 6 3 0 6 10 -> {0, 1, 7} (j2: 6/24 = 1/4 exactly, not above)
#   g1 sums:  0 12 0 6 3 15 6 0 -> {1, 5};   E = {0, 5, 7}.
# per_cluster: c0: A(0,0)={0,1,2,4,7} vs A(1,0)={1,5}   -> exclusive {0,2,4,5,7}
#              c1: A(0,1)={0,1,2,6}   vs A(1,1)={1,4,5,6} -> exclusive {0,2,4,5}
#              c2: A(0,2)={0,1}       vs A(1,2)={1,5}     -> exclusive {0,5};  union = {0,2,4,5,7}.
# ssl_cluster: pool over g -> 16 frames per c; above <=> count * 8 > 2 * 16 <=> count > 4.
#   c0 sums: 5 8 3 4 3 5 0 8 -> {0,1,5,7};  c1: 5 8 3 4 3 5 12 1 -> {0,1,5,6};  c2: 5 8 0 4 0 5 0 1 -> {0,1,5}
#   exactly one cluster: j7 (c0), j6 (c1) -> E = {6, 7}  (j3: 4/16 = 1/4 exactly, not above anywhere).
EXPECTED = {
    "ssl_cluster": [6, 7],
    "ivector_cluster": [0, 5],
    "union": [0, 2, 5, 7],
    "unconditioned": [0, 5, 7],
    "per_cluster": [0, 2, 4, 5, 7],
}


def test_hand_above_baseline():
    ab = above_baseline(COUNTS, FRAMES, K)
    for c, js in ABOVE.items():
        assert set(np.flatnonzero(ab[c]).tolist()) == js, c
    assert not ab[:, 3].any()  # p = 2/8 = baseline exactly


@pytest.mark.parametrize("name, func", [("ssl_cluster", ssl_cluster), ("ivector_cluster", ivector_cluster),
                                        ("union", union), ("unconditioned", unconditioned),
                                        ("per_cluster", per_cluster)])
def test_hand_named_definitions(name, func):
    assert np.flatnonzero(func(COUNTS, FRAMES, CLASSES, K, 0.8)).tolist() == EXPECTED[name]


def test_hand_groups():
    g = layer_groups("ivector_cluster", COUNTS, FRAMES, CLASSES, K, 0.8, FDR)
    assert {k: np.flatnonzero(v).tolist() for k, v in g.items()} == {0: [0], 1: [5]}
    g = layer_groups("ssl_cluster", COUNTS, FRAMES, CLASSES, K, 0.8, FDR)
    assert {k: np.flatnonzero(v).tolist() for k, v in g.items()} == {0: [7], 1: [6], 2: []}
    g = layer_groups("unconditioned", COUNTS, FRAMES, CLASSES, K, 0.8, FDR)
    assert {k: np.flatnonzero(v).tolist() for k, v in g.items()} == {0: [0, 7], 1: [5]}
    # per_cluster: j4 is exclusive to g0 in c0 and to g1 in c1 -> listed under both groups
    g = layer_groups("per_cluster", COUNTS, FRAMES, CLASSES, K, 0.8, FDR)
    assert {k: np.flatnonzero(v).tolist() for k, v in g.items()} == {0: [0, 2, 4, 7], 1: [4, 5]}


def test_hand_rho_variants():
    # rho = 2/3: 2 of 3 classes suffice. N(G0) = {0,1,2} (j2 above in (0,0),(0,1)); N(G1) = {1,5}
    # (j4, j6: 1 of 3 in g1) -> E = {0, 2, 5}.
    for rho in (Fraction(2, 3), 2 / 3, "2/3", 0.6):  # 0.6 * 3 = 1.8 -> 2 of 3 as well
        assert np.flatnonzero(ivector_cluster(COUNTS, FRAMES, CLASSES, K, rho)).tolist() == [0, 2, 5], rho
    # 0.67 * 3 = 2.01 -> needs 3 of 3
    assert np.flatnonzero(ivector_cluster(COUNTS, FRAMES, CLASSES, K, 0.67)).tolist() == [0, 5]
    # rho = 1/3: N(G0) = {0,1,2,4,6,7}, N(G1) = {1,4,5,6} -> same as union
    assert np.flatnonzero(ivector_cluster(COUNTS, FRAMES, CLASSES, K, Fraction(1, 3))).tolist() == EXPECTED["union"]


def test_compute_neuron_sets_on_hand_counts():
    data = CountsData([COUNTS, COUNTS[:, ::-1].copy()], FRAMES, CLASSES, {"top_fraction": 0.25})
    assert data.K == [2, 2]
    sets = compute_neuron_sets(data, rho=0.8, fdr=FDR)
    assert list(sets) == list(SET_NAMES)
    for name, exp in EXPECTED.items():
        assert sets[name][1] == exp
        assert sets[name][2] == sorted(W - 1 - j for j in exp)  # layer 2 = neurons mirrored


# ------------------------------------------------------------------------------------------------ boundaries
def test_above_baseline_is_strict_and_exact():
    # W = 3, K = 1, b = 1/3; frames = 3: count 1 -> p = 1/3 = b (not above), count 2 -> above.
    ab = above_baseline(np.array([[1, 2, 0]]), np.array([3]), 1)
    assert ab.tolist() == [[False, True, False]]
    # W = 3072, K = 31: p = 31 * m / (3072 * m) = b exactly for several m; one more count is above.
    m = np.array([1, 7, 1000, 123457])
    counts = np.zeros((4, 3072), dtype=np.int64)
    counts[:, 0] = 31 * m
    counts[:, 1] = 31 * m + 1
    ab = above_baseline(counts, 3072 * m, 31)
    assert not ab[:, 0].any() and ab[:, 1].all() and not ab[:, 2:].any()
    # a class with no frames is above for no neuron, and its p is 0
    ab = above_baseline(np.array([[0, 0]]), np.array([0]), 1)
    assert not ab.any()
    np.testing.assert_array_equal(activation_prob(np.array([[0, 0], [1, 2]]), np.array([0, 4])), [[0, 0], [0.25, 0.5]])
    assert baseline(31, 3072) == 31 / 3072


def test_group_set_rho_exactly_met():
    # 5 classes, rho = 0.8: 4 of 5 above = 0.8 exactly -> in the set (Fraction(0.8) as a binary float
    # would be slightly above 4/5 and wrongly exclude it); 3 of 5 -> out.
    above = np.zeros((5, 3), dtype=bool)
    above[:4, 0] = True  # 4 of 5
    above[:, 1] = True  # 5 of 5
    above[:3, 2] = True  # 3 of 5
    assert group_set(above, [0, 1, 2, 3, 4], 0.8).tolist() == [True, True, False]
    # 3 classes, rho = 2/3: 2 of 3 counts; rho = 0.8 needs all 3
    above = np.array([[1, 1, 1], [1, 1, 0], [1, 0, 0]], dtype=bool)  # column sums 3, 2, 1
    assert group_set(above, [0, 1, 2], 2 / 3).tolist() == [True, True, False]
    assert group_set(above, [0, 1, 2], Fraction(2, 3)).tolist() == [True, True, False]
    assert group_set(above, [0, 1, 2], 0.8).tolist() == [True, False, False]
    assert group_set(above, [1, 2], 0.5).tolist() == [True, True, False]  # subset of rows
    assert as_fraction(0.8) == Fraction(4, 5)
    with pytest.raises(ValueError):
        group_set(above, [], 0.8)
    with pytest.raises(ValueError):
        as_fraction(0)
    with pytest.raises(ValueError):
        as_fraction(1.2)


def test_exclusive_union():
    a = np.array([1, 1, 0, 0, 1], dtype=bool)
    b = np.array([1, 0, 1, 0, 0], dtype=bool)
    c = np.array([1, 0, 0, 0, 1], dtype=bool)
    assert exclusive_union([a, b, c]).tolist() == [False, True, True, False, False]
    assert exclusive_union([a, b]).tolist() == [False, True, True, False, True]
    assert exclusive_union([a]).tolist() == a.tolist()


def test_empty_class_is_never_above(caplog, monkeypatch):
    import logging

    # setup_logging() elsewhere may have turned propagation off for the package logger
    monkeypatch.setattr(logging.getLogger("speaker_neurons"), "propagate", True)
    counts = COUNTS.copy()
    frames = FRAMES.copy()
    counts[5] = 0
    frames[5] = 0  # class (1,2) has no frames, so it is above for nothing: in g1, j1 and j5 are above in
    # 2 of 3 classes only -> N(G1) = {} at rho 0.8; N(G0) = {0, 1} -> E = {0, 1} (j1 now exclusive to g0)
    assert np.flatnonzero(ivector_cluster(counts, frames, CLASSES, K, 0.8)).tolist() == [0, 1]
    data = CountsData([counts], frames, CLASSES, {"top_fraction": 0.25})
    with caplog.at_level("WARNING"):
        compute_neuron_sets(data, RHO, FDR)
    assert "no frames" in caplog.text
    assert neuron_set_params(data, RHO, FDR)["empty_classes"] == [[1, 2]]


# ------------------------------------------------------------------------------------------------ planted
def planted_counts(seed=0):
    """Activations with planted neurons, through topk -> ActivationCounter (streamed in batches).

    W = 200, top_fraction = 0.05 -> K = 10. Neurons 0-4 fire at every frame (so random fillers use at
    most 5 of the 10 slots: p ~ 5/192 << b = 0.05). Planted (|a| = 10, some negative):
      7:  every frame of i-vector cluster 0 (all SSL clusters)      -> ivector_cluster group 0
      11: every frame of SSL cluster 1 (both i-vector clusters)     -> ssl_cluster, not ivector_cluster
      13: i-vector cluster 0 AND SSL cluster 2 only                 -> union, per_cluster, unconditioned,
          and ssl_cluster (pooled over i-vector clusters it is above in SSL cluster 2 only)
      3 (one of 0-4): everywhere                                    -> nowhere
    Padding frames carry neuron 20 at 1000, class -1 frames carry neuron 21 at -1000; neither may count.
    """
    g = torch.Generator().manual_seed(seed)
    W, k_iv, k_ssl = 200, 2, 3
    counter = ActivationCounter(k_iv * k_ssl, [W, W], top_fraction=0.05)
    for _ in range(6):
        B, T = 4, 250
        acts = torch.randn(B, T, W, generator=g)
        spk = torch.randint(0, k_iv, (B,), generator=g)
        ssl = torch.randint(0, k_ssl, (B, T), generator=g)
        lengths = torch.randint(150, T + 1, (B,), generator=g)
        mask = torch.arange(T)[None] < lengths[:, None]
        ssl[:, :5] = -1  # ignored frames (e.g. no SSL label)
        ids = class_index(spk[:, None].expand(B, T), ssl, k_ssl)
        acts[..., 0:5] = 5.0
        acts[..., 7] = torch.where(spk[:, None] == 0, 10.0, 0.0)
        acts[..., 11] = torch.where(ssl == 1, -10.0, 0.0)
        acts[..., 13] = torch.where((spk[:, None] == 0) & (ssl == 2), 10.0, 0.0)
        acts[..., 20] = torch.where(mask, 0.0, 1000.0)
        acts[..., 21] = torch.where(ssl == -1, -1000.0, 0.0)
        for half in (slice(0, 2), slice(2, 4)):  # stream: two updates per batch
            counter.update(1, acts[half], mask[half], ids[half])
            counter.update(2, acts[half][..., torch.randperm(W, generator=g)] * 0, mask[half], ids[half])
    res = counter.result()
    return CountsData(res["counts"], res["frames"], classes_table(k_iv, k_ssl),
                      {"top_fraction": 0.05, "K": res["K"], "widths": res["widths"]})


def test_planted_neurons_full_path():
    data = planted_counts()
    assert data.K == [10, 10]
    assert (data.frames > 300).all()
    c1 = data.counts[0]
    assert c1[:, 20].sum() == 0 and c1[:, 21].sum() == 0
    sets, groups = compute_neuron_sets(data, rho=0.8, fdr=FDR, return_groups=True)
    ivn, ssln = set(sets["ivector_cluster"][1]), set(sets["ssl_cluster"][1])
    assert ivn == {7}
    assert groups["ivector_cluster"][1] == {0: [7], 1: []}
    assert ssln == {11, 13}
    assert groups["ssl_cluster"][1] == {0: [], 1: [11], 2: [13]}
    for name in SET_NAMES:
        assert 3 not in sets[name][1], name  # fires everywhere
    assert 11 not in ivn
    assert 13 not in ivn  # above in 1 of 3 classes of group 0
    assert {7, 13} <= set(sets["union"][1])
    assert {7, 13} <= set(sets["per_cluster"][1])
    assert {7, 13} <= set(sets["unconditioned"][1])
    # layer 2: all-zero activations -> ties everywhere -> neurons 0..K-1 always activated: no set at all
    assert data.counts[1][:, :10].tolist() == np.repeat(data.frames[:, None], 10, axis=1).tolist()
    assert all(sets[name][2] == [] for name in SET_NAMES)


# ------------------------------------------------------------------------------------------------ files
def test_write_read_plot_and_recompute(tmp_path):
    # the hand-computed counts, written in the documented format without the counter
    npz = tmp_path / "activation_counts.npz"
    with open(npz, "wb") as f:
        np.savez(f, counts_l1=COUNTS, counts_l2=COUNTS[:, ::-1], frames=FRAMES, classes=CLASSES)
    (tmp_path / "activation_counts.json").write_text(json.dumps({"top_fraction": 0.25, "K": [2, 2]}))
    sets = recompute_from_npz(npz, rho=0.8, fdr=FDR)
    assert {n: sets[n][1] for n in EXPECTED} == EXPECTED
    assert set(sets) == set(EXPECTED) | {"ssl_cluster_tested", "ivector_cluster_tested"}
    data = load_counts(npz)
    sets, groups = compute_neuron_sets(data, rho=0.8, fdr=FDR, return_groups=True)
    params = neuron_set_params(data, rho=0.8, fdr=FDR)
    assert params["rho"] == 0.8 and params["rho_fraction"] == "4/5" and params["K"] == [2, 2]
    set_paths = {name: tmp_path / "out" / "neurons" / f"{name}.json" for name in sets}
    paths = write_neuron_sets(sets, set_paths, params, tmp_path / "out" / "neuron_counts.tsv", groups)
    rec = json.loads((tmp_path / "out" / "neurons" / "ivector_cluster.json").read_text())
    assert rec["set"] == "ivector_cluster"
    assert rec["layers"] == {"1": [0, 5], "2": [2, 7]}
    assert rec["params"]["rho"] == 0.8
    assert rec["groups"] == {"0": {"1": [0], "2": [7]}, "1": {"1": [5], "2": [2]}}
    assert read_neuron_set(paths["union"]) == {1: [0, 2, 5, 7], 2: [0, 2, 5, 7]}
    tsv = (tmp_path / "out" / "neuron_counts.tsv").read_text().splitlines()
    assert tsv[0].split("\t") == ["layer", *SET_NAMES] and SET_NAMES[-2:] == ("ssl_cluster_tested", "ivector_cluster_tested")
    assert tsv[1].split("\t")[:6] == ["1", "2", "2", "4", "3", "5"]
    assert tsv[3].split("\t")[:6] == ["total", "4", "4", "8", "6", "10"]
    counts = read_neuron_counts(paths["neuron_counts"])
    assert counts["per_cluster"] == {1: 5, 2: 5}
    for src in (paths["neuron_counts"], sets, counts):
        png = plot_neuron_counts(src, tmp_path / "plot.png")
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_unknown_set_name():
    data = CountsData([COUNTS], FRAMES, CLASSES, {"top_fraction": 0.25})
    with pytest.raises(ValueError):
        compute_neuron_sets(data, RHO, FDR, sets=["speaker"])


# ---------------------------------------------------------------------------------- tested sets
def _plain_bh(p, q):
    """Benjamini-Hochberg written out: adjusted p_(i) = min_{k>=i} p_(k) m / k; reject adjusted <= q."""
    flat = np.asarray(p, dtype=float).ravel()
    m = len(flat)
    order = np.argsort(flat)
    adj = np.empty(m)
    running = 1.0
    for rank in range(m, 0, -1):
        i = order[rank - 1]
        running = min(running, flat[i] * m / rank)
        adj[i] = running
    return (adj <= q).reshape(np.shape(p))


def test_benjamini_hochberg_against_a_plain_implementation_and_scipy():
    from scipy.stats import false_discovery_control

    from speaker_neurons.analysis.neuron_sets import benjamini_hochberg

    rng = np.random.default_rng(3)
    for _ in range(20):
        p = np.concatenate([rng.uniform(size=30), rng.uniform(size=10) * 1e-3]).reshape(5, 8)
        for q in (0.01, 0.05, 0.2):
            got = benjamini_hochberg(p, q)
            assert np.array_equal(got, _plain_bh(p, q))
            assert np.array_equal(got, false_discovery_control(p.ravel(), method="bh").reshape(p.shape) <= q)
    # hand case: m = 4, q = 0.05 -> thresholds 0.0125, 0.025, 0.0375, 0.05; p_(3) = 0.03 <= 0.0375 is the last
    assert benjamini_hochberg(np.array([0.001, 0.03, 0.02, 0.5]), 0.05).tolist() == [True, True, True, False]


def test_tested_above_baseline_against_scipy_binomtest():
    from scipy.stats import binomtest

    from speaker_neurons.analysis.neuron_sets import above_baseline, above_baseline_tested

    # W = 10, K = 1: baseline 0.1. Class 0 has many frames, class 1 few, class 2 none.
    counts = np.array([[40, 12, 9, 100, 0, 0, 0, 0, 0, 0],   # 100 frames: 0.4, 0.12, 0.09, 1.0
                       [1, 1, 0, 0, 0, 0, 0, 0, 0, 0],        # 2 frames: 0.5 each: above, never significant
                       [0] * 10])
    frames = np.array([100, 2, 0])
    plain = above_baseline(counts, frames, 1)
    assert plain[1, 0] and plain[1, 1]  # the rho rule counts two frames as evidence
    got = above_baseline_tested(counts, frames, 1, fdr=0.05)
    p = np.ones(counts.shape)
    for c in range(3):
        for j in range(10):
            if frames[c]:
                p[c, j] = binomtest(int(counts[c, j]), int(frames[c]), 0.1, alternative="greater").pvalue
    expect = _plain_bh(p, 0.05) & plain
    assert np.array_equal(got, expect)
    assert got[0, 0] and got[0, 3] and not got[0, 1] and not got[1].any() and not got[2].any()


def test_tested_sets_follow_the_same_group_logic():
    from speaker_neurons.analysis.neuron_sets import layer_groups, tested_vs_rho

    # classes (g, c): 2 i-vector clusters x 2 SSL clusters, W = 6, K = 1 (baseline 1/6)
    classes = np.array([[0, 0], [0, 1], [1, 0], [1, 1]])
    frames = np.array([600, 600, 600, 1])
    counts = np.array([[300, 0, 50, 50, 100, 100],
                       [300, 0, 50, 50, 100, 100],
                       [0, 300, 50, 50, 100, 100],
                       [0, 1, 0, 0, 0, 0]])  # (1, 1) has 1 frame: neuron 1 "above" on no evidence
    plain = layer_groups("ivector_cluster", counts, frames, classes, 1, rho=1.0, fdr=0.05)
    tested = layer_groups("ivector_cluster_tested", counts, frames, classes, 1, rho=1.0, fdr=0.05)
    assert np.flatnonzero(plain[0]).tolist() == [0] and np.flatnonzero(plain[1]).tolist() == [1]
    # cluster 1's neuron 1 needs every SSL class significant (rho = 1): (1, 1) with 1 frame is not
    assert np.flatnonzero(tested[0]).tolist() == [0] and np.flatnonzero(tested[1]).tolist() == []
    rows = tested_vs_rho({"ivector_cluster": {1: [0, 1]}, "ivector_cluster_tested": {1: [0]}})
    assert rows[-1] == {"set": "ivector_cluster", "layer": "total", "rho_set": 2, "tested_set": 1, "both": 1,
                        "rho_surviving_pct": 50.0}
