"""The learning rates a derived model takes from the model it comes from (sid.sweep: base), read from
sid.json and pr.json alike, and the configured layer sets for a model's depth."""

from __future__ import annotations

import json

import numpy as np

from speaker_neurons import sid


def test_rates_of_sid_and_pr_results(tmp_path):
    (tmp_path / "sid.json").write_text(json.dumps({"speakers": 4, "all": {"lr": 0.01}, "last": {"lr": 0.1},
                                                   "segments": {"train": 3}}))
    (tmp_path / "pr.json").write_text(json.dumps({"steps": 5, "layer_sets": {"all": {"lr": 0.001}, "hidden_0": {"lr": 0.01}}}))
    assert sid.rates_of(tmp_path / "sid.json", ["all", "last", "hidden_0"]) == {"all": 0.01, "last": 0.1}
    assert sid.rates_of(tmp_path / "pr.json", ["all", "hidden_0"]) == {"all": 0.001, "hidden_0": 0.01}


def test_layer_sets_and_pooled_file(tmp_path):
    assert sid.layer_sets(["all", "layers_1_L", "last", "hidden_0"], 3) == {
        "all": [0, 1, 2, 3], "layers_1_L": [1, 2, 3], "last": [3], "hidden_0": [0]}
    pooled = np.arange(4 * 3 * 2, dtype=np.float32).reshape(4, 3, 2)
    np.savez(tmp_path / "p.npz", pooled=pooled, seg_id=np.array(["a", "b", "c", "d"]),
             speaker=np.array(["s1", "s2", "s1", "s3"]), split=np.array(["train", "train", "test", "test"]))
    data, L = sid.load_pooled(tmp_path / "p.npz")
    assert L == 2 and data.speakers == ["s1", "s2"] and data.labels.tolist() == [0, 1, 0, -1]
    assert np.array_equal(data.pooled, pooled)
