"""Paired comparisons of two models over the same test items (speaker_neurons.paired): the value is the
difference of seed-averaged accuracies (or PERs), the bootstrap resamples whole utterances, unpaired
items are refused, and the verdict states the test's power."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from speaker_neurons import paired, statistics


def _sid_preds(correct: np.ndarray, crops: int) -> pd.DataFrame:
    """Predictions of layer set `all`: correct (seeds, items) 0/1; item i belongs to utterance i // crops."""
    seeds, n = correct.shape
    return pd.DataFrame({"layer_set": "all", "seed": np.repeat(np.arange(seeds), n), "item": np.tile(np.arange(n), seeds),
                         "utt_id": np.tile([f"u{i // crops:03d}" for i in range(n)], seeds), "speaker": "s",
                         "prediction": "s", "correct": correct.ravel()})


def test_the_paired_difference_is_the_difference_of_seed_means_and_pairing_narrows_it():
    rng = np.random.default_rng(0)
    base = (rng.random((3, 400)) < 0.6).astype(int)  # 3 head seeds, 400 items, 1 crop each
    flips = rng.random((3, 400)) < 0.03  # b: a with 3% of the items flipped
    other = np.where(flips, 1 - base, base)
    res = paired.paired_difference(_sid_preds(base, 1), _sid_preds(other, 1), "all", "sid")
    assert res["difference"] == pytest.approx(base.mean() - other.mean())
    assert res["a"] == pytest.approx(base.mean()) and res["b"] == pytest.approx(other.mean())
    lo, hi = res["ci95"]
    assert lo < res["difference"] < hi and res["utterances"] == 400 and res["items"] == 400
    # the same two results as if they were independent: the unpaired interval is several times wider
    def as_json(c):
        return {"per_seed": [{"accuracy": float(r.mean()), "n": c.shape[1]} for r in c]}
    _, ulo, uhi = statistics.difference_interval(as_json(base), as_json(other))
    assert (uhi - ulo) > 4 * (hi - lo)


def test_the_bootstrap_resamples_whole_utterances():
    rng = np.random.default_rng(1)
    a = (rng.random((2, 100)) < 0.7).astype(int)
    b = (rng.random((2, 100)) < 0.5).astype(int)
    one = paired.paired_difference(_sid_preds(a, 1), _sid_preds(b, 1), "all", "sid")
    # every utterance cut into 5 crops that all score alike: the same evidence, so the same interval (an
    # item-level bootstrap would shrink it by about sqrt(5))
    five = paired.paired_difference(_sid_preds(np.repeat(a, 5, axis=1), 5), _sid_preds(np.repeat(b, 5, axis=1), 5),
                                    "all", "sid")
    assert five["difference"] == pytest.approx(one["difference"])
    assert five["ci95"] == pytest.approx(one["ci95"]) and five["utterances"] == 100 and five["items"] == 500


def test_models_scored_on_other_items_or_seeds_are_refused():
    a = _sid_preds(np.ones((2, 10), dtype=int), 1)
    with pytest.raises(ValueError, match="same test items"):
        paired.paired_difference(a, _sid_preds(np.ones((2, 12), dtype=int), 1), "all", "sid", names=("x", "y"))
    with pytest.raises(ValueError, match="head seeds"):
        paired.paired_difference(a, _sid_preds(np.ones((3, 10), dtype=int), 1), "all", "sid")
    with pytest.raises(ValueError, match="layer set 'last'"):
        paired.paired_difference(a, a, "last", "sid")


def test_the_per_difference_weighs_utterances_by_their_phones():
    def pr(edits):
        return pd.DataFrame({"layer_set": "all", "seed": [0, 0, 1, 1], "utt_id": ["a", "b", "a", "b"],
                             "speaker": "s", "edits": edits, "ref_phones": [10, 30, 10, 30], "hypothesis": ""})
    res = paired.paired_difference(pr([5, 6, 3, 6]), pr([1, 9, 1, 9]), "all", "pr", resamples=200)
    # a: (4 + 6) / 40 = 0.25 (seed means 4 and 6); b: (1 + 9) / 40 = 0.25
    assert res["a"] == pytest.approx(0.25) and res["difference"] == pytest.approx(0.0)
    res = paired.paired_difference(pr([5, 6, 5, 6]), pr([1, 9, 1, 9]), "all", "pr", resamples=200)
    assert res["difference"] == pytest.approx((5 + 6 - 1 - 9) / 40)


@pytest.mark.parametrize("d,lo,hi,room,expect", [
    (0.05, 0.02, 0.08, 0.10, "protected keeps it better than l1: +5.0 points [+2.0, +8.0]"),
    (-0.05, -0.08, -0.02, 0.10, "protected keeps it worse than l1"),
    (0.002, -0.008, 0.012, 0.10, "no difference larger than 1.2 points"),
    (0.002, -0.03, 0.034, 0.10, "this test set cannot tell"),  # half-width 3.2 > a quarter of 10
    (0.002, -0.008, 0.012, None, "this test set cannot tell"),
])
def test_the_verdict_says_what_the_test_set_can_detect(d, lo, hi, room, expect):
    v = paired.paired_verdict(d, lo, hi, room, "protected", "l1", max_null_share=0.25)
    assert expect in v
    # for PER a lower value is better: the same interval read the other way
    if lo > 0:
        assert "worse" in paired.paired_verdict(d, lo, hi, room, "protected", "l1", max_null_share=0.25,
                                                higher_is_better=False)
