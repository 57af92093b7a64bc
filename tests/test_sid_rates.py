"""The learning rates a derived model takes from the model it comes from (sid.sweep: base), read from
sid.json and pr.json alike, the configured layer sets for a model's depth, and run_sid on a pooled file."""

from __future__ import annotations

import json

import numpy as np
import pytest

from speaker_neurons import heads, sid, sid_pool


def test_rates_of_sid_and_pr_results(tmp_path):
    (tmp_path / "sid.json").write_text(json.dumps({"speakers": 4, "all": {"lr": 0.01}, "last": {"lr": 0.1},
                                                   "segments": {"train": 3}}))
    (tmp_path / "pr.json").write_text(json.dumps({"steps": 5, "layer_sets": {"all": {"lr": 0.001}, "hidden_0": {"lr": 0.01}}}))
    assert heads.rates_of(tmp_path / "sid.json", ["all", "last", "hidden_0"]) == {"all": 0.01, "last": 0.1}
    assert heads.rates_of(tmp_path / "pr.json", ["all", "hidden_0"]) == {"all": 0.001, "hidden_0": 0.01}


def test_layer_sets_and_pooled_file(tmp_path):
    assert heads.layer_sets(["all", "layers_1_L", "last", "hidden_0"], 3) == {
        "all": [0, 1, 2, 3], "layers_1_L": [1, 2, 3], "last": [3], "hidden_0": [0]}
    pooled = np.arange(4 * 3 * 2, dtype=np.float32).reshape(4, 3, 2)
    np.savez(tmp_path / "p.npz", pooled=pooled, seg_id=np.array(["a", "b", "c", "d"]),
             speaker=np.array(["s1", "s2", "s1", "s3"]), split=np.array(["train", "train", "test", "test"]))
    data, L = sid_pool.load_pooled(tmp_path / "p.npz")
    assert L == 2 and data.speakers == ["s1", "s2"] and data.labels.tolist() == [0, 1, 0, -1]
    assert np.array_equal(data.pooled, pooled)


def _pooled_file(path, n_spk=4, per=10, L=2, d=6, seed=0):
    """A pooled file as rule pool_layers writes it (float16, uncompressed), VoxCeleb1-style utt_ids."""
    from speaker_neurons.utils import save_npz

    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(n_spk), per)
    pooled = rng.normal(size=(len(labels), L + 1, d))
    pooled[:, L] += 4 * rng.normal(size=(n_spk, d))[labels]
    utt = np.array([f"id1{s:04d}-yt-{k:05d}" for s in range(n_spk) for k in range(per)])
    split = np.array((["train"] * (per - 4) + ["dev"] * 2 + ["test"] * 2) * n_spk)
    save_npz(path, {"pooled": pooled.astype(np.float16), "seg_id": np.char.add(utt, "#0"), "utt_id": utt,
                    "speaker": np.char.add("id1", np.char.zfill(labels.astype(str), 4)), "split": split,
                    "start": np.zeros(len(utt), np.int64), "end": np.full(len(utt), 16000, np.int64),
                    "crop_seconds": np.float64(np.nan)})
    return utt


def test_run_sid_on_a_verification_list_with_the_superb_schedule_keys(tmp_path, monkeypatch):
    from speaker_neurons.config import defaults

    utt = _pooled_file(tmp_path / "pooled.npz")
    rel = [u.replace("-", "/", 2) + ".wav" for u in utt]
    (tmp_path / "veri.txt").write_text(f"1 {rel[0]} {rel[1]}\n0 {rel[0]} {rel[15]}\n1 {rel[12]} {rel[18]}\n"
                                       f"0 {rel[30]} {rel[22]}\n0 {rel[30]} id19999/x/00001.wav\n")
    cfg = {**defaults("sid"), "layer_sets": ["all", "last"], "learning_rates": [1e-2, 1e-4], "seeds": [0, 1],
           "steps": 9, "batch_size": 8, "grad_clip": 1.0, "eval_every": 3, "max_veri_absent": 0.25}
    acc = sid.run_sid(tmp_path / "pooled.npz", cfg, None, "vox", None, tmp_path / "veri.txt", tmp_path / "sid.json",
                      tmp_path / "heads.safetensors", "cpu")
    res = json.loads((tmp_path / "sid.json").read_text())
    assert set(acc) == {"all", "last"} and res["crop_seconds"] is None and res["device"] == "cpu"
    assert res["trials"] == {"source": "veri.txt", "max_trials": None, "absent": 1}
    assert res["schedule"] == {"epochs": 30, "steps": 9, "batch_size": 8, "grad_clip": 1.0, "eval_every": 3}
    assert res["all"]["target_trials"] == 2 and res["all"]["nontarget_trials"] == 2
    assert res["all"]["best_step"] in (3, 6, 9) and all(r["best_step"] in (3, 6, 9) for r in res["all"]["per_seed"])
    assert sorted(sid.load_heads(tmp_path / "heads.safetensors")) == ["all", "last"]
    # a list of another corpus stops before any head trains
    (tmp_path / "other.txt").write_text("1 id19999/x/00001.wav id19999/x/00002.wav\n" + f"0 {rel[0]} {rel[15]}\n")

    def no_training(*a, **k):
        raise AssertionError("trained before checking the list")

    monkeypatch.setattr(sid, "train_heads", no_training)
    with pytest.raises(ValueError, match="other.txt: 1 of 2 trials .*id19999-x-00001"):
        sid.run_sid(tmp_path / "pooled.npz", cfg, None, "vox", None, tmp_path / "other.txt", tmp_path / "s2.json",
                    tmp_path / "h2.safetensors", "cpu")
