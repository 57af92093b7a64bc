"""Tests of speaker_neurons.analysis.counts: K, exact top-k, streaming counter, file format."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from speaker_neurons.analysis.counts import (
    ActivationCounter,
    CountsData,
    class_index,
    classes_table,
    load_counts,
    top_k_for,
    topk_indices,
    topk_mask,
)


# ------------------------------------------------------------------------------------------------ K
@pytest.mark.parametrize(
    "width, expected",
    [
        (3072, 31),  # round(30.72) = 31
        (1000, 10),  # round(10.0) = 10
        (150, 2),  # round(1.5) = 2 (ties to even)
        (250, 2),  # round(2.5) = 2 (ties to even, not 3)
        (350, 4),  # round(3.5) = 4 (ties to even)
        (50, 1),  # round(0.5) = 0 -> max(1, 0) = 1
        (149, 1),  # round(1.49) = 1
        (1, 1),
        (512, 5),  # round(5.12) = 5
    ],
)
def test_top_k_for(width, expected):
    assert top_k_for(width, 0.01) == expected


def test_top_k_for_rejects_bad_input():
    with pytest.raises(ValueError):
        top_k_for(0, 0.01)
    with pytest.raises(ValueError):
        top_k_for(100, 0.0)
    with pytest.raises(ValueError):
        top_k_for(100, 1.5)
    assert top_k_for(7, 1.0) == 7


def test_counter_recomputes_k_from_pruned_widths():
    c = ActivationCounter(2, [3072, 1000, 150, 50, 250], top_fraction=0.01)
    assert c.K == [31, 10, 2, 1, 2]


# ------------------------------------------------------------------------------------------------ top-k
def reference_topk_mask(acts: np.ndarray, k: int) -> np.ndarray:
    """Python reference: sort each row by (-|a|, index) and take the first k."""
    out = np.zeros(acts.shape, dtype=bool)
    for n, row in enumerate(acts):
        order = sorted(range(len(row)), key=lambda j: (-abs(float(row[j])), j))
        out[n, order[:k]] = True
    return out


def test_topk_ties_lower_index_wins():
    acts = torch.tensor(
        [
            [0.5, -0.5, 0.5, 0.1],  # |a| = .5 .5 .5 .1, k=2 -> indices 0, 1
            [0.1, 0.5, 0.2, -0.5],  # |a| = .1 .5 .2 .5 -> 1, 3 (no tie at the 2nd place)
            [0.3, 0.2, 0.2, 0.2],  # 0.3 first, then the 0.2 tie -> lowest index 1
            [-0.0, 0.0, -0.0, 0.0],  # signed zeros tie -> 0, 1
            [0.0, -0.0, 1.0, -0.0],  # 1.0 then the zero tie -> lowest index 0
            [-2.0, 1.0, 2.0, -1.0],  # |a| = 2 1 2 1 -> 0, 2
        ]
    )
    expected = torch.tensor(
        [
            [1, 1, 0, 0],
            [0, 1, 0, 1],
            [1, 1, 0, 0],
            [1, 1, 0, 0],
            [1, 0, 1, 0],
            [1, 0, 1, 0],
        ],
        dtype=torch.bool,
    )
    assert torch.equal(topk_mask(acts, 2), expected)


def test_topk_tie_breaking_where_torch_topk_differs():
    # torch.topk on four equal zeros returns indices other than the lowest on this build; the exact
    # implementation must still pick the lowest indices.
    acts = torch.tensor([[0.0, -0.0, 0.0, -0.0, 0.0, -0.0, 0.0, -0.0]] * 3)
    for k in range(1, 8):
        m = topk_mask(acts, k)
        assert m[:, :k].all() and not m[:, k:].any()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
def test_topk_matches_reference_with_many_ties(dtype):
    g = torch.Generator().manual_seed(0)
    # small integer magnitudes with random signs and signed zeros: ties everywhere
    vals = torch.randint(-3, 4, (200, 37), generator=g).to(dtype)
    vals[vals == 0] = torch.where(torch.rand(int((vals == 0).sum()), generator=g) < 0.5, -0.0, 0.0).to(dtype)
    for k in (1, 2, 5, 17, 36, 37):
        got = topk_mask(vals, k).numpy()
        ref = reference_topk_mask(vals.float().numpy(), k)
        assert np.array_equal(got, ref), k
        assert (got.sum(1) == k).all()


def test_topk_matches_reference_continuous():
    g = torch.Generator().manual_seed(1)
    acts = torch.nn.functional.gelu(torch.randn(64, 300, generator=g) * 2)
    got = topk_mask(acts, 3).numpy()
    assert np.array_equal(got, reference_topk_mask(acts.numpy(), 3))


def test_topk_indices_shapes_and_errors():
    acts = torch.randn(5, 4)
    assert topk_indices(acts, 4).shape == (5, 4)
    assert topk_mask(acts, 4).all()
    assert topk_indices(torch.empty(0, 4), 2).shape == (0, 2)
    with pytest.raises(ValueError):
        topk_indices(acts, 0)
    with pytest.raises(ValueError):
        topk_indices(acts, 5)
    bad = acts.clone()
    bad[2, 1] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        topk_indices(bad, 2)


# ------------------------------------------------------------------------------------------------ classes
def test_class_index_and_table():
    assert class_index(1, 2, 3) == 5
    assert class_index(0, 0, 3) == 0
    assert class_index(1, -1, 3) == -1
    assert class_index(-1, 2, 3) == -1
    np.testing.assert_array_equal(class_index(np.array([0, 1, 1, -1]), np.array([2, 0, -1, 1]), 3), [2, 3, -1, -1])
    t = class_index(torch.tensor([[0, 1]]), torch.tensor([[1, 2]]), 3)
    assert torch.equal(t, torch.tensor([[1, 5]]))
    with pytest.raises(ValueError):
        class_index(0, 3, 3)
    tab = classes_table(2, 3)
    np.testing.assert_array_equal(tab, [[0, 0], [0, 1], [0, 2], [1, 0], [1, 1], [1, 2]])
    for i, (g, c) in enumerate(tab):
        assert class_index(g, c, 3) == i


# ------------------------------------------------------------------------------------------------ counter
def reference_counts(acts_list, mask_list, ids_list, num_classes, k):
    """One-shot numpy reference over the concatenation of every valid frame."""
    A = np.concatenate([a.reshape(-1, a.shape[-1]) for a in acts_list])
    M = np.concatenate([m.reshape(-1) for m in mask_list])
    I = np.concatenate([i.reshape(-1) for i in ids_list])
    keep = M & (I >= 0)
    A, I = A[keep], I[keep]
    act = reference_topk_mask(A, k)
    counts = np.zeros((num_classes, A.shape[1]), dtype=np.int64)
    frames = np.zeros(num_classes, dtype=np.int64)
    for c in range(num_classes):
        counts[c] = act[I == c].sum(0)
        frames[c] = (I == c).sum()
    return counts, frames


def make_batches(seed=0, n_batches=3, B=3, T=40, W=60, num_classes=4):
    g = torch.Generator().manual_seed(seed)
    batches = []
    for _ in range(n_batches):
        acts = torch.randint(-4, 5, (B, T, W), generator=g).float()  # ties
        lengths = torch.randint(T // 2, T + 1, (B,), generator=g)
        mask = torch.arange(T)[None, :] < lengths[:, None]
        ids = torch.randint(-1, num_classes, (B, T), generator=g)
        batches.append((acts, mask, ids))
    return batches


def test_counter_streaming_equals_one_shot():
    C, W = 4, 60
    batches = make_batches(W=W, num_classes=C)
    counter = ActivationCounter(C, [W, W], top_fraction=0.05)  # K = 3
    assert counter.K == [3, 3]
    for acts, mask, ids in batches:
        counter.update(1, acts, mask, ids)
        counter.update(2, -acts.flip(-1), mask, ids)
    res = counter.result()
    ref1, frames = reference_counts([a.numpy() for a, _, _ in batches], [m.numpy() for _, m, _ in batches],
                                    [i.numpy() for _, _, i in batches], C, 3)
    ref2, _ = reference_counts([(-a.flip(-1)).numpy() for a, _, _ in batches], [m.numpy() for _, m, _ in batches],
                               [i.numpy() for _, _, i in batches], C, 3)
    assert res["counts"][0].dtype == np.int64
    np.testing.assert_array_equal(res["counts"][0], ref1)
    np.testing.assert_array_equal(res["counts"][1], ref2)
    np.testing.assert_array_equal(res["frames"], frames)
    assert res["frames"].dtype == np.int64
    # one update with everything concatenated gives the same counts
    one = ActivationCounter(C, [W], top_fraction=0.05)
    one.update(1, torch.cat([a for a, _, _ in batches]), torch.cat([m for _, m, _ in batches]),
               torch.cat([i for _, _, i in batches]))
    np.testing.assert_array_equal(one.result()["counts"][0], ref1)


def test_padding_and_ignored_frames_never_count():
    g = torch.Generator().manual_seed(3)
    B, T, W, C = 2, 30, 20, 2
    acts = torch.randn(B, T, W, generator=g) + 0.5  # nonzero everywhere
    acts[..., 5] = 0.0  # neuron 5 can never be in the top 2 of a valid frame...
    acts[..., 6] = 0.0
    mask = torch.ones(B, T, dtype=torch.bool)
    mask[0, 20:] = False
    mask[1, 25:] = False
    ids = torch.zeros(B, T, dtype=torch.long)
    ids[1] = 1
    ids[0, :3] = -1
    acts[~mask] = 0.0
    acts[..., 5][~mask] = 1000.0  # ...except in padding frames,
    acts[0, :3, 6] = -1000.0  # ...and neuron 6 except in class -1 frames
    counter = ActivationCounter(C, [W], top_fraction=0.1)  # K = 2
    counter.update(1, acts, mask, ids)
    res = counter.result()
    assert res["counts"][0][:, 5].sum() == 0
    assert res["counts"][0][:, 6].sum() == 0
    np.testing.assert_array_equal(res["frames"], [20 - 3, 25])
    np.testing.assert_array_equal(res["counts"][0].sum(1), 2 * res["frames"])  # K per counted frame


def test_counter_without_mask_and_with_all_ignored():
    counter = ActivationCounter(2, [8], top_fraction=0.25)
    acts = torch.randn(1, 5, 8)
    counter.update(1, acts, None, torch.full((1, 5), -1))
    counter.update(1, acts, None, torch.tensor([[0, 1, 1, 0, 1]]))
    res = counter.result()
    np.testing.assert_array_equal(res["frames"], [2, 3])
    np.testing.assert_array_equal(res["counts"][0].sum(1), [4, 6])


def test_counter_rejects_bad_input():
    counter = ActivationCounter(2, [8, 4], top_fraction=0.25)
    mask = torch.ones(1, 3, dtype=torch.bool)
    with pytest.raises(ValueError):
        counter.update(1, torch.randn(1, 3, 4), mask, torch.zeros(1, 3, dtype=torch.long))  # wrong width
    with pytest.raises(ValueError):
        counter.update(3, torch.randn(1, 3, 4), mask, torch.zeros(1, 3, dtype=torch.long))  # no layer 3
    with pytest.raises(ValueError):
        counter.update(1, torch.randn(1, 3, 8), mask, torch.tensor([[0, 2, 1]]))  # class 2 of 2
    with pytest.raises(ValueError):
        counter.update(1, torch.randn(1, 3, 8), mask, torch.zeros(1, 4, dtype=torch.long))  # shape


def test_frames_must_agree_across_layers():
    counter = ActivationCounter(2, [8, 8], top_fraction=0.25)
    counter.update(1, torch.randn(1, 4, 8), None, torch.zeros(1, 4, dtype=torch.long))
    with pytest.raises(RuntimeError, match="frames per class differ"):
        counter.result()
    counter.update(2, torch.randn(1, 4, 8), None, torch.zeros(1, 4, dtype=torch.long))
    counter.result()


def test_counter_inside_and_outside_inference_mode():
    with torch.inference_mode():
        counter = ActivationCounter(2, [8], top_fraction=0.25)
        counter.update(1, torch.randn(1, 3, 8), None, torch.tensor([[0, 1, 1]]))
    counter.update(1, torch.randn(1, 3, 8), None, torch.tensor([[0, 1, 1]]))
    np.testing.assert_array_equal(counter.result()["frames"], [2, 4])


def test_hook_adapter():
    counter = ActivationCounter(2, [8], top_fraction=0.25)
    ids = torch.tensor([[0, 1, 1]])
    hook = counter.hook(ids)
    hook(1, torch.randn(1, 3, 8), torch.tensor([[True, True, False]]))
    np.testing.assert_array_equal(counter.result()["frames"], [1, 1])


# ------------------------------------------------------------------------------------------------ files
def test_save_load_round_trip(tmp_path):
    C = 6
    counter = ActivationCounter(C, [40, 25], top_fraction=0.05)  # K = 2, round(1.25) = 1
    for acts, mask, ids in make_batches(seed=5, W=40, num_classes=C):
        counter.update(1, acts, mask, ids)
        counter.update(2, acts[..., :25], mask, ids)
    npz = tmp_path / "stats" / "activation_counts.npz"
    out = counter.save(npz, classes_table(2, 3), {"k_ivector": 2, "k_ssl": 3, "model": "toy"})
    assert out == npz and npz.exists()
    info = json.loads((tmp_path / "stats" / "activation_counts.json").read_text())
    assert info["top_fraction"] == 0.05 and info["K"] == [2, 1] and info["widths"] == [40, 25]
    assert info["model"] == "toy" and info["k_ssl"] == 3
    with np.load(npz) as z:
        assert set(z.files) == {"counts_l1", "counts_l2", "frames", "classes"}
        assert z["counts_l1"].dtype == np.int64 and z["frames"].dtype == np.int64
        assert z["counts_l2"].shape == (C, 25) and z["classes"].shape == (C, 2)
    data = load_counts(npz)
    res = counter.result()
    for a, b in zip(data.counts, res["counts"]):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(data.frames, res["frames"])
    np.testing.assert_array_equal(data.classes, classes_table(2, 3))
    assert data.K == [2, 1] and data.widths == [40, 25] and data.top_fraction == 0.05
    assert data.meta["model"] == "toy"
    with pytest.raises(ValueError):
        counter.save(npz, classes_table(2, 2))
    with pytest.raises(ValueError):
        counter.save(npz, classes_table(2, 3), {"K": [1, 1]})


def test_counts_data_k_checks():
    counts = [np.zeros((2, 150), dtype=np.int64)]
    d = CountsData(counts, np.array([3, 4]), classes_table(2, 1), {"top_fraction": 0.01})
    assert d.K == [2]
    d = CountsData(counts, np.array([3, 4]), classes_table(2, 1), {"top_fraction": 0.01, "K": [3]})
    with pytest.raises(ValueError, match="recomputed"):
        d.K
    with pytest.raises(ValueError):
        CountsData([np.full((2, 5), 4)], np.array([3, 4]), classes_table(2, 1), {})  # count > frames


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_counter_cuda_matches_cpu():
    C, W = 4, 60
    batches = make_batches(seed=9, W=W, num_classes=C)
    cpu = ActivationCounter(C, [W], top_fraction=0.05)
    gpu = ActivationCounter(C, [W], top_fraction=0.05, device="cuda")
    for acts, mask, ids in batches:
        cpu.update(1, acts, mask, ids)
        gpu.update(1, acts.cuda(), mask.cuda(), ids.cuda())
    np.testing.assert_array_equal(cpu.result()["counts"][0], gpu.result()["counts"][0])
    x = torch.randint(-2, 3, (500, 3072)).float()
    assert torch.equal(topk_mask(x.cuda(), 31).cpu(), topk_mask(x, 31))


def test_topk_signed_fast_path_and_magnitude_fallback_agree_with_reference():
    """Rows where the k largest |a| are the k largest a (fast path) and rows where a large negative
    value belongs to the top-k (fallback on |a|), mixed in one matrix, with padding rows dropped."""
    rows = torch.tensor(
        [
            [5.0, 4.0, -6.0, 1.0, 0.5],  # -6 wins: fallback
            [5.0, 4.0, -0.1, 1.0, 0.5],  # fast path
            [5.0, 4.0, -4.0, 1.0, 0.5],  # |-4| ties 4 at the k-th place: lower index (1) wins
            [-1.0, -2.0, -3.0, -4.0, -5.0],  # all negative: fallback
            [0.0, -0.0, 0.0, 0.0, 0.0],  # all zero: ties by index
        ]
    )
    assert topk_mask(rows, 2).nonzero().tolist() == [[0, 0], [0, 2], [1, 0], [1, 1], [2, 0], [2, 1], [3, 3], [3, 4], [4, 0], [4, 1]]
    g = torch.Generator().manual_seed(3)
    mixed = torch.cat([torch.nn.functional.gelu(torch.randn(300, 64, generator=g) * 3), torch.randn(300, 64, generator=g)])
    for k in (1, 3, 8):
        assert np.array_equal(topk_mask(mixed, k).numpy(), reference_topk_mask(mixed.numpy(), k))
