"""SUPERB SID head: the pooled shortcut equals the frame-level path, intervals against direct
computations, segments, and a head that finds the layer carrying the speaker."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from speaker_neurons import evaluation, sid, sid_pool, statistics
from test_models import tiny


def _manifest(tmp_path, durations, sr=16000):
    import soundfile as sf

    rng = np.random.default_rng(0)
    rows = []
    for i, d in enumerate(durations):
        p = tmp_path / f"u{i}.wav"
        sf.write(p, (0.1 * rng.standard_normal(int(d * sr))).astype(np.float32), sr, subtype="FLOAT")
        rows.append({"utt_id": f"u{i}", "path": str(p), "speaker": f"s{i % 2}", "split": "train", "duration": d})
    return pd.DataFrame(rows)


def test_segments_crop_and_drop_short_remainders(tmp_path):
    m = pd.DataFrame({"utt_id": ["a", "b"], "path": ["a.wav", "b.wav"], "speaker": ["x", "y"],
                      "split": ["train", "test"], "duration": [2.3, 2.6]})
    segs = sid_pool.segments(m, 1.0, 16000, 0.5)
    assert segs["seg_id"].tolist() == ["a#0", "a#1", "b#0", "b#1", "b#2"]
    assert segs["end"].tolist() == [16000, 32000, 16000, 32000, 41600]
    assert sid_pool.segments(m, None, 16000, 0.5)["end"].tolist() == [36800, 41600]
    # sid.min_crop_fraction: b's last 0.6 s crop goes at 0.7, a's 0.3 s one stays at 0.25
    assert sid_pool.segments(m, 1.0, 16000, 0.7)["seg_id"].tolist() == ["a#0", "a#1", "b#0", "b#1"]
    assert sid_pool.segments(m, 1.0, 16000, 0.25)["seg_id"].tolist() == ["a#0", "a#1", "a#2", "b#0", "b#1", "b#2"]


@pytest.mark.parametrize("kind", ["melhubert", "wav2vec2"])
def test_pooled_shortcut_equals_the_frame_level_head(kind, tmp_path):
    model = tiny(kind)
    segs = sid_pool.segments(_manifest(tmp_path, [1.3, 0.7, 2.1]), 0.6, model.sample_rate, 0.5)
    pooled = sid_pool.pool_layer_means(model, segs, max_batch_seconds=2.0, progress=False)
    torch.manual_seed(0)
    head = sid.SIDHead(list(range(model.num_layers + 1)), model.hidden_dim, 5)
    with torch.no_grad():
        head.layer_logits.normal_()
        fast = head(torch.from_numpy(pooled))
        for i, r in segs.iterrows():  # one segment at a time, through the frames
            from speaker_neurons.audio import load_audio

            w = torch.from_numpy(load_audio(r.path, model.sample_rate)[0][r.start : r.end].copy())[None]
            out = model(w, torch.tensor([w.shape[1]]), return_ffn=False)
            slow = head.forward_frames(out.hidden, out.frame_mask())
            assert float((slow[0] - fast[i]).abs().max()) < 1e-4


def test_intervals_against_direct_computation():
    lo, hi = statistics.wilson_interval(8, 10)
    z = 1.959963984540054
    p, n = 0.8, 10
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    assert (lo, hi) == pytest.approx((centre - half, centre + half)) and lo == pytest.approx(0.4902, abs=1e-4)
    m, lo, hi = statistics.mean_interval([0.5, 0.6, 0.7])
    assert m == pytest.approx(0.6) and hi - m == pytest.approx(4.302652729911275 * 0.1 / math.sqrt(3))
    assert statistics.mean_interval([0.4]) == (0.4, 0.4, 0.4)


def _planted(layer, n_spk=6, per=24, L=3, d=8, seed=0):
    """Pooled features where only `layer` carries the speaker."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_spk, d)) * 5
    labels = np.repeat(np.arange(n_spk), per)
    pooled = rng.normal(size=(len(labels), L + 1, d)).astype(np.float32)
    pooled[:, layer] += centres[labels]
    split = np.array((["train"] * 16 + ["dev"] * 4 + ["test"] * 4) * n_spk)
    return sid_pool.SIDData(pooled, labels, split, [f"s{i}" for i in range(n_spk)])


def test_the_head_finds_the_speaker_layer_and_layer_sets_matter():
    data = _planted(layer=0)
    res, heads = sid.evaluate(data, {"all": [0, 1, 2, 3], "layers_1_L": [1, 2, 3]}, lrs=[1e-2, 1e-1], seeds=[0, 1],
                              epochs=60)
    assert res["all"]["test_accuracy"] > 0.9
    assert res["all"]["layer_weights"][0] == max(res["all"]["layer_weights"])
    assert res["layers_1_L"]["test_accuracy"] < 0.5  # hidden_0 alone carries the speaker: 1..L cannot see it
    assert res["all"]["eer"] < res["layers_1_L"]["eer"]
    lo, hi = res["all"]["test_ci95"]
    assert lo <= res["all"]["test_accuracy"] <= hi
    assert len(res["all"]["per_seed"]) == 2 and res["all"]["lr"] in (1e-2, 1e-1)


def test_fixed_learning_rates_skip_the_sweep_and_train_as_alone():
    """sid.sweep: base hands a derived model its base model's rates: no sweep for those sets, every seed
    at that rate, each head as `train_heads` trains it alone; sets without a fixed rate still sweep."""
    data = _planted(layer=1)
    sets = {"all": [0, 1, 2, 3], "last": [3]}
    res, heads = sid.evaluate(data, sets, lrs=[1e-1, 1e-2, 1e-3], seeds=[0, 1], epochs=8, fixed_lr={"all": 1e-3})
    assert res["all"]["lr"] == 1e-3 and res["all"]["lr_swept"] is False and list(res["all"]["dev_accuracy"]) == ["0.001"]
    assert res["last"]["lr_swept"] is True and len(res["last"]["dev_accuracy"]) == 3
    for sd, head in zip([0, 1], heads["all"]):
        alone, = sid.train_heads(data, [sid.HeadSpec(tuple(sets["all"]), 1e-3, sd)], epochs=8)
        assert torch.allclose(head.projector.weight, alone.projector.weight, atol=1e-6)
        assert res["all"]["per_seed"][sd]["correct"] == sid.accuracy(alone, data, "test")[0]


def _reference_head(data, layers, lr, seed, epochs, batch_size=64):
    """The plain loop: one SIDHead, torch.optim.Adam, the seed's own sample order."""
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    head = sid.SIDHead(layers, data.pooled.shape[2], len(data.speakers))
    opt = torch.optim.Adam(head.parameters(), lr=lr)
    tr = np.flatnonzero(data.split == "train")
    x, y = torch.from_numpy(data.pooled[tr]), torch.from_numpy(data.labels[tr])
    for _ in range(epochs):
        perm = torch.randperm(len(tr), generator=g)
        for s in range(0, len(tr), batch_size):
            idx = perm[s : s + batch_size]
            loss = torch.nn.functional.cross_entropy(head(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return head.eval()


def test_heads_trained_together_equal_each_trained_alone_with_torch_adam():
    data = _planted(layer=2)
    specs = [sid.HeadSpec((0, 1, 2, 3), 1e-2, 0), sid.HeadSpec((1, 2, 3), 1e-1, 1), sid.HeadSpec((3,), 1e-3, 2)]
    bank = sid.train_heads(data, specs, epochs=4)
    x = torch.from_numpy(data.pooled)
    for spec, head in zip(specs, bank):
        ref = _reference_head(data, list(spec.layers), spec.lr, spec.seed, epochs=4)
        with torch.no_grad():
            assert head.layers == ref.layers
            assert float((head(x) - ref(x)).abs().max()) < 1e-4
            assert torch.allclose(head.weights(), ref.weights(), atol=1e-5)
    # different specs give different heads (the bank does not share state between heads)
    other, = sid.train_heads(data, [sid.HeadSpec((0, 1, 2, 3), 1e-1, 0)], epochs=4)
    with torch.no_grad():
        assert float((bank[0](x) - other(x)).abs().max()) > 1e-3


def test_unenrolled_speakers_are_left_out_of_identification_but_kept_in_trials():
    data = _planted(layer=0)
    segs = pd.DataFrame({"speaker": [data.speakers[l] for l in data.labels], "split": data.split})
    test_idx = np.flatnonzero(data.split == "test")
    segs.loc[segs.index[np.isin(np.arange(len(segs)), test_idx[:4])], "speaker"] = "ghost"  # a speaker never trained on
    d = sid_pool.make_data(data.pooled, segs)
    assert "ghost" not in d.speakers and (d.labels == -1).sum() == 4
    res, heads = sid.evaluate(d, {"all": [0, 1, 2, 3]}, lrs=[1e-2], seeds=[0], epochs=40)
    assert res["test_unenrolled"] == 4 and res["test_closed_set"] == len(test_idx) - 4
    assert res["all"]["per_seed"][0]["n"] == len(test_idx) - 4
    # the ghost segments are not errors: counted as such, the accuracy could not exceed 20/24
    assert res["all"]["test_accuracy"] > 20 / 24
    n = len(test_idx)
    assert res["all"]["target_trials"] + res["all"]["nontarget_trials"] == n * (n - 1) // 2
    # ghost pairs are targets among themselves (same speaker), not with everyone unenrolled
    spk = segs["speaker"].to_numpy()[test_idx]
    assert res["all"]["target_trials"] == sum(int((spk == s).sum() * ((spk == s).sum() - 1) // 2) for s in set(spk))


def test_heads_round_trip_through_safetensors(tmp_path):
    data = _planted(layer=1)
    res, picked = sid.evaluate(data, {"all": [0, 1, 2, 3], "last": [3]}, lrs=[1e-2], seeds=[0, 5], epochs=5)
    sid.save_heads(tmp_path / "h.safetensors", picked, [0, 5])
    back = sid.load_heads(tmp_path / "h.safetensors")
    x = torch.from_numpy(data.pooled)
    assert sorted(back) == ["all", "last"] and [s for s, _ in back["last"]] == [0, 5]
    with torch.no_grad():
        for nm in picked:
            for (sd, h), orig in zip(back[nm], picked[nm]):
                assert h.layers == orig.layers and torch.equal(h(x), orig(x))


def test_sid_needs_speakers_and_every_split():
    m = pd.DataFrame({"utt_id": ["a", "b", "c"], "path": ["a.wav"] * 3, "speaker": ["x", "y", "x"],
                      "split": ["train", "test", "train"], "duration": [1.0] * 3})
    with pytest.raises(ValueError, match="m.tsv: .* no dev segments.*sid.enabled: false"):
        sid_pool.check_splits(sid_pool.segments(m, None, 16000, 0.5), "m.tsv")
    m["split"] = ["train", "dev", "test"]
    sid_pool.check_splits(sid_pool.segments(m, None, 16000, 0.5), "m.tsv")
    m["speaker"] = ""
    with pytest.raises(ValueError, match="no speaker names"):
        sid_pool.check_splits(sid_pool.segments(m, None, 16000, 0.5), "m.tsv")


@pytest.mark.parametrize("frame_period,crop", [(20, 0.6), (10, 0.35), (20, 0.25)])
def test_sliced_crop_features_equal_the_features_of_each_cut_out_crop(tmp_path, frame_period, crop):
    """MelHuBERT's fast path: features sliced from the whole file equal those of the crop itself
    (0.25 s at 20 ms is not sliceable: starts fall mid-frame, and the per-crop fallback runs)."""
    from speaker_neurons.audio import load_audio

    model = tiny("melhubert20" if frame_period == 20 else "melhubert")
    man = _manifest(tmp_path, [1.31, 0.93, 2.07])
    segs = sid_pool.segments(man, crop, model.sample_rate, 0.5)
    for path, g in segs.groupby("path"):
        wav = torch.from_numpy(load_audio(path, model.sample_rate)[0])
        bounds = list(zip(g["start"], g["end"]))
        sliced = model.segment_features(wav, bounds)
        assert (sliced is None) == (frame_period == 20 and crop == 0.25)
        for (s, e), f in zip(bounds, sliced or []):
            own, _ = model.extract_features(wav[s:e].reshape(1, -1))
            # the same frames up to the last bits of float sums: bit for bit natively here, 1e-6 apart held
            # to AVX2 (FFT and filterbank sums over other lengths), of log-Mel values of 2.7 to 7.0; a frame
            # off by one would differ by tenths
            assert f.shape == own[0].shape and torch.allclose(f, own[0], rtol=1e-5, atol=1e-5)
    fast = sid_pool.pool_layer_means(model, segs, max_batch_seconds=2.0, progress=False)
    cache = {}
    again = sid_pool.pool_layer_means(model, segs, max_batch_seconds=2.0, progress=False, feature_cache=cache)
    assert len(cache) == len(segs) and np.array_equal(fast, again)
    model.feed_forwards()[0].output_dense.weight.data.mul_(0.5)  # a changed model reuses the cached features
    changed = sid_pool.pool_layer_means(model, segs, max_batch_seconds=2.0, progress=False, feature_cache=cache)
    assert not np.allclose(changed[:, 1:], fast[:, 1:]) and np.allclose(changed[:, 0], fast[:, 0], atol=1e-6)
    model.feed_forwards()[0].output_dense.weight.data.mul_(2.0)
    slow = np.zeros_like(fast)
    sid_pool._pool_from_audio(model, segs, slow, 2.0, 32, __import__("tqdm").tqdm(disable=True), torch.device("cpu"))
    assert float(np.abs(fast - slow).max()) < 1e-4


def test_a_pooled_file_keeps_its_segments_and_joins_paths_by_utterance(tmp_path):
    """The erase ablation reads the segments from the pooled file (not rebuilt from the config), the audio
    paths joined from the manifest by utt_id; a manifest without those utterances is named."""
    from speaker_neurons.data.manifest import write_manifest

    model = tiny("melhubert")
    m = _manifest(tmp_path, [1.3, 0.7, 2.1, 1.6, 1.2, 1.9])
    m["split"] = ["train", "train", "dev", "dev", "test", "test"]
    m["gender"], m["sample_rate"] = "F", 16000
    write_manifest(m, tmp_path / "m.tsv")
    info = sid_pool.pool_to_file(model, tmp_path / "m.tsv", 0.6, "tsv", 0.5, tmp_path / "pooled.npz", 2.0, False)
    want = sid_pool.segments(m, 0.6, model.sample_rate, 0.5)
    assert info["segments"] == len(want)
    reversed_manifest = m.iloc[::-1].reset_index(drop=True)  # the join is by utt_id, not by row order
    write_manifest(reversed_manifest, tmp_path / "r.tsv")
    got = sid_pool.read_segments(tmp_path / "pooled.npz", tmp_path / "r.tsv")
    pd.testing.assert_frame_equal(got[list(want.columns)].astype(str), want.astype(str))
    data, L = sid_pool.load_pooled(tmp_path / "pooled.npz")
    assert L == model.num_layers and data.pooled.shape[0] == len(want)
    write_manifest(m[m["utt_id"] != "u4"], tmp_path / "short.tsv")
    with pytest.raises(ValueError, match="short.tsv.*u4"):
        sid_pool.read_segments(tmp_path / "pooled.npz", tmp_path / "short.tsv")


# ------------------------------------------------------------------------------------------- bounded memory
def test_crop_auto_is_the_demo_choice_and_whole_utterances_elsewhere():
    from speaker_neurons.data.recipes.demo import DEMO_CROP_SECONDS

    assert sid_pool.crop_of("auto", "demo") == DEMO_CROP_SECONDS == 0.5
    assert sid_pool.crop_of("auto", "voxceleb1") is None and sid_pool.crop_of("auto", "tsv") is None
    assert sid_pool.crop_of(1.0, "voxceleb1") == 1.0 and sid_pool.crop_of(None, "demo") is None
    with pytest.raises(ValueError, match="auto"):
        sid_pool.crop_of("whole", "demo")


def test_the_pooled_store_is_float16_read_by_memory_map_and_equals_the_float32_means(tmp_path):
    """pool_to_file writes the means into a float16 memory map (no float32 copy of the store) and an
    uncompressed npz that np.load still reads; load_pooled maps it; whole utterances on a non-demo corpus."""
    from speaker_neurons.data.manifest import write_manifest

    model = tiny("wav2vec2")
    m = _manifest(tmp_path, [1.3, 0.7, 2.1, 1.6, 1.2, 1.9])
    m["split"] = ["train", "train", "dev", "dev", "test", "test"]
    m["gender"], m["sample_rate"] = "F", 16000
    write_manifest(m, tmp_path / "m.tsv")
    info = sid_pool.pool_to_file(model, tmp_path / "m.tsv", "auto", "voxceleb1", 0.5, tmp_path / "p.npz", 2.0, False)
    assert info["segments"] == 6 and info["crop_seconds"] is None
    assert sorted(p.name for p in tmp_path.glob("p.npz*")) == ["p.npz"]  # the temporary store is gone
    data, L = sid_pool.load_pooled(tmp_path / "p.npz")
    assert isinstance(data.pooled, np.memmap) and data.pooled.dtype == np.float16 and L == model.num_layers
    assert sid_pool.pooled_crop_seconds(tmp_path / "p.npz") is None and list(data.utt_id) == list(m["utt_id"])
    full = sid_pool.pool_layer_means(model, sid_pool.segments(m, None, 16000, 0.5), max_batch_seconds=2.0, progress=False)
    assert np.array_equal(np.asarray(data.pooled), full.astype(np.float16))
    with np.load(tmp_path / "p.npz") as z:
        assert np.array_equal(z["pooled"], np.asarray(data.pooled))
    sid_pool.pool_to_file(model, tmp_path / "m.tsv", "auto", "demo", 0.5, tmp_path / "d.npz", 2.0, False)
    assert sid_pool.pooled_crop_seconds(tmp_path / "d.npz") == 0.5 and len(sid_pool.load_pooled(tmp_path / "d.npz")[0].labels) > 6


def test_pooled_features_that_are_not_finite_stop_sid_naming_the_file_and_rows(tmp_path):
    """A pooled file whose features hold NaN or inf (a damaged file) is refused when it is loaded, naming the
    file and the rows, instead of being scored into a meaningless accuracy; the scan reads in chunks."""
    good = np.zeros((10, 3, 4), dtype=np.float16)
    sid_pool.check_finite(good, "p.npz", chunk_bytes=24)  # several chunks, nothing to report
    bad = good.copy()
    bad[3, 1, 2], bad[7, 0, 0] = np.nan, np.inf
    with pytest.raises(ValueError, match=r"p.npz: pooled features of row\(s\) \[3, 7\] are not finite"):
        sid_pool.check_finite(bad, "p.npz", chunk_bytes=24)
    segs = {c: np.asarray([f"x{i}" for i in range(10)]) for c in ("seg_id", "utt_id", "speaker")}
    segs["split"] = np.asarray(["train"] * 10)
    np.savez(tmp_path / "bad.npz", pooled=bad, **segs)
    with pytest.raises(ValueError, match=r"bad.npz: pooled features of row\(s\) \[3, 7\]"):
        sid_pool.load_pooled(tmp_path / "bad.npz")


def test_a_float16_store_out_of_range_is_a_clear_error():
    model = tiny("wav2vec2")

    class Out:
        hidden = [torch.full((1, 3, 4), 1e6)]

        def frame_mask(self):
            return torch.ones(1, 3, dtype=torch.bool)

    with pytest.raises(FloatingPointError, match="float16"):
        sid_pool._pool_into(np.zeros((1, 1, 4), np.float16), [0], Out())
    del model


def _reference_clipped(data, layers, lr, seed, steps, clip, batch_size=64):
    """torch.optim.Adam with clip_grad_norm_ on a lone head, `steps` steps, reshuffled at each pass."""
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    head = sid.SIDHead(layers, data.pooled.shape[2], len(data.speakers))
    opt = torch.optim.Adam(head.parameters(), lr=lr)
    tr = np.flatnonzero(data.split == "train")
    x, y = torch.from_numpy(np.asarray(data.pooled[tr], dtype=np.float32)), torch.from_numpy(data.labels[tr])
    done = 0
    while done < steps:
        perm = torch.randperm(len(tr), generator=g)
        for s in range(0, len(tr), batch_size):
            if done == steps:
                break
            idx = perm[s : s + batch_size]
            loss = torch.nn.functional.cross_entropy(head(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(head.parameters(), clip)
            opt.step()
            done += 1
    return head.eval()


def test_clipped_heads_with_a_step_budget_equal_torch_adam_with_clip_grad_norm():
    data = _planted(layer=2)
    specs = [sid.HeadSpec((0, 1, 2, 3), 1e-1, 0), sid.HeadSpec((3,), 1e-1, 0), sid.HeadSpec((1, 2), 1e-2, 4)]
    bank = sid.train_heads(data, specs, epochs=1, steps=7, grad_clip=0.05)  # 7 steps: beyond one pass of 2
    x = torch.from_numpy(data.pooled)
    for spec, head in zip(specs, bank):
        ref = _reference_clipped(data, list(spec.layers), spec.lr, spec.seed, steps=7, clip=0.05)
        with torch.no_grad():
            assert float((head(x) - ref(x)).abs().max()) < 1e-4
    unclipped, = sid.train_heads(data, specs[:1], epochs=1, steps=7)
    with torch.no_grad():
        assert float((unclipped(x) - bank[0](x)).abs().max()) > 1e-3  # the clipping acted


def test_best_dev_heads_keep_the_state_of_their_best_step():
    """eval_every: each head ends at the state of its best dev accuracy, the one a run stopped at that
    step would have; with a learning rate that diverges the best step is early, not the last."""
    data = _planted(layer=0, seed=3)
    specs = [sid.HeadSpec((0, 1, 2, 3), 3.0, 0), sid.HeadSpec((0,), 1e-2, 1)]
    bank = sid.train_heads(data, specs, epochs=1, steps=12, eval_every=2)
    x = torch.from_numpy(data.pooled)
    for spec, head in zip(specs, bank):
        assert head.best_step in range(2, 13, 2)
        again, = sid.train_heads(data, [spec], epochs=1, steps=head.best_step)
        with torch.no_grad():
            got, want = head(x), again(x)
        # the same state up to float rounding, relative to the logits' scale (the diverging rate's reach 6e3):
        # measured 2e-6 of it held to AVX2 (the heads trained one by one or as a bank sum in other orders)
        assert float((got - want).abs().max()) <= 1e-5 * float(want.abs().max())
        assert head.dev_accuracy == pytest.approx(sid.accuracy(head, data, "dev")[0] / len(sid.closed_set(data, "dev")))
        for s in range(2, 13, 2):  # no evaluated step did better on dev
            at, = sid.train_heads(data, [spec], epochs=1, steps=s)
            assert sid.accuracy(at, data, "dev")[0] <= sid.accuracy(head, data, "dev")[0]
    assert bank[0].best_step < 12  # lr 3 overshoots: its best dev state is not its last
    last, = sid.train_heads(data, specs[:1], epochs=1, steps=12)
    assert last.best_step == 12 and last.dev_accuracy is None


def test_training_streams_from_a_float16_memory_map_as_from_the_array(tmp_path, monkeypatch):
    """A memory-mapped float16 store (read a batch or a chunk at a time) trains and scores the same heads
    as the same values held in memory as float32; tiny chunks change nothing."""
    data = _planted(layer=1)
    f16 = data.pooled.astype(np.float16)
    mm = np.lib.format.open_memmap(tmp_path / "s.npy", mode="w+", dtype=np.float16, shape=f16.shape)
    mm[:] = f16
    mm.flush()
    mapped = sid_pool.SIDData(np.load(tmp_path / "s.npy", mmap_mode="r"), data.labels, data.split, data.speakers)
    inmem = sid_pool.SIDData(f16.astype(np.float32), data.labels, data.split, data.speakers)
    specs = [sid.HeadSpec((0, 1, 2, 3), 1e-2, 0), sid.HeadSpec((1,), 1e-2, 1)]
    a = sid.train_heads(mapped, specs, epochs=3, eval_every=3)
    monkeypatch.setattr(sid, "_CHUNK_BYTES", 4 * 4 * 8 * 3)  # three rows per chunk
    b = sid.train_heads(inmem, specs, epochs=3, eval_every=3)
    for h1, h2 in zip(a, b):
        assert h1.best_step == h2.best_step
        assert all(torch.equal(p, q) for p, q in zip(h1.state_dict().values(), h2.state_dict().values()))
        assert sid.accuracy(h1, mapped, "test") == sid.accuracy(h2, inmem, "test")


def test_trial_pairs_sample_without_the_square_of_the_segments():
    from speaker_neurons.evaluation import build_trials, trial_pairs

    spk = np.repeat(np.arange(5), 4)
    i, j = trial_pairs(spk, 1000)  # 190 pairs: every one
    assert len(i) == 190 and np.array_equal(np.c_[i, j], np.c_[np.triu_indices(20, 1)])
    big = np.repeat(np.arange(40000), 5)  # 200,000 items: 2e10 pairs, never enumerated
    i, j = trial_pairs(big, 10000, seed=3)
    assert len(i) == 10000 and (i < j).all() and len(np.unique(i * len(big) + j)) == 10000
    assert (big[i] == big[j]).sum() == 5000  # half same-speaker
    assert np.array_equal(np.lexsort((j, i)), np.arange(len(i)))
    i2, j2 = trial_pairs(big, 10000, seed=3)
    assert np.array_equal(i, i2) and np.array_equal(j, j2)
    assert not np.array_equal(i, trial_pairs(big, 10000, seed=4)[0])
    few = np.repeat(np.arange(300), 2)  # 300 target pairs only: all of them, the rest non-targets
    i, j = trial_pairs(few, 1000)
    assert (few[i] == few[j]).sum() == 300 and len(i) == 1000
    s, lab = build_trials(np.random.default_rng(0).normal(size=(len(few), 4)), few, max_trials=1000)
    x = np.random.default_rng(0).normal(size=(len(few), 4))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    assert np.allclose(s, np.einsum("nd,nd->n", x[i], x[j])) and lab.sum() == 300


def test_a_verification_list_is_scored_on_utterances_and_absent_ones_are_counted(tmp_path):
    data = _planted(layer=0)
    utt = np.array([f"id1{int(l):04d}-yt{k // 2}-{k % 2:05d}" for k, l in enumerate(data.labels)])
    data = sid_pool.SIDData(data.pooled, data.labels, data.split, data.speakers, None, utt)
    lines = ["1 id10000/yt0/00000.wav id10000/yt0/00001.wav", "0 id10000/yt0/00000.wav id10001/yt12/00000.wav",
             "1 id10001/yt12/00000.wav id10001/yt13/00001.wav", "0 id10002/yt30/00000.wav id10000/yt1/00000.wav"]
    (tmp_path / "veri.txt").write_text("\n".join(lines + ["1 id19999/zz/00001.wav id10000/yt0/00000.wav"]) + "\n")
    veri = evaluation.read_veri_list(tmp_path / "veri.txt")
    assert veri.iloc[0].tolist() == [1, "id10000-yt0-00000", "id10000-yt0-00001"]
    with pytest.raises(ValueError, match="veri.txt: 1 of 5 trials .*id19999-zz-00001.*max_veri_absent"):
        evaluation.veri_trials(veri, data, 0.1, tmp_path / "veri.txt")
    trials, absent = evaluation.veri_trials(veri, data, 0.2, tmp_path / "veri.txt")
    assert absent == 1 and len(trials) == 4
    res, heads = sid.evaluate(data, {"all": [0, 1, 2, 3]}, lrs=[1e-2], seeds=[0], epochs=20, trials=trials)
    assert res["all"]["target_trials"] == 2 and res["all"]["nontarget_trials"] == 2
    head = heads["all"][0]
    emb = sid.embeddings(head, data.pooled, np.arange(len(utt)))
    unit = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    row = {u: k for k, u in enumerate(utt)}
    cos = [float(unit[row[a]] @ unit[row[b]]) for a, b in zip(trials["enrol"], trials["test"])]
    from speaker_neurons.evaluation import equal_error_rate

    assert res["all"]["eer"] == pytest.approx(equal_error_rate(cos, trials["label"]))
    (tmp_path / "bad.txt").write_text("1 a.wav b.wav\n")
    with pytest.raises(ValueError, match="bad.txt, line 1: .*sid.veri_list"):
        evaluation.read_veri_list(tmp_path / "bad.txt")


def _interruptible_pooling(tmp_path, monkeypatch):
    """A tiny model, a manifest of 7 utterances in blocks of 2 (POOL_BLOCK), the uninterrupted pooled file
    `whole.npz`, and pool_layer_means wrapped to record each block's size in `calls` and to raise ("killed")
    at call number `fail_at[0]` (None: never). Returns (model, calls, fail_at)."""
    from speaker_neurons.data.manifest import write_manifest

    model = tiny("melhubert")
    m = _manifest(tmp_path, [1.3, 0.7, 2.1, 1.6, 1.2, 1.9, 0.8])
    m["split"] = ["train", "train", "train", "dev", "dev", "test", "test"]
    m["gender"], m["sample_rate"] = "F", 16000
    write_manifest(m, tmp_path / "m.tsv")
    monkeypatch.setattr(sid_pool, "POOL_BLOCK", 2)
    sid_pool.pool_to_file(model, tmp_path / "m.tsv", None, "tsv", 0.5, tmp_path / "whole.npz", 2.0, False)
    real, calls, fail_at = sid_pool.pool_layer_means, [], [3]

    def failing(*a, **k):
        calls.append(len(a[1]))
        if len(calls) == fail_at[0]:
            raise RuntimeError("killed")
        return real(*a, **k)

    monkeypatch.setattr(sid_pool, "pool_layer_means", failing)
    return model, calls, fail_at


def test_an_interrupted_pooling_resumes_at_its_first_unfinished_block(tmp_path, monkeypatch):
    """pool_to_file records each finished block; a rerun pools only the rest and writes the same bytes as
    an uninterrupted run; another model's leftover store is not reused."""
    model, calls, fail_at = _interruptible_pooling(tmp_path, monkeypatch)
    with pytest.raises(RuntimeError, match="killed"):
        sid_pool.pool_to_file(model, tmp_path / "m.tsv", None, "tsv", 0.5, tmp_path / "p.npz", 2.0, False)
    assert not (tmp_path / "p.npz").exists() and (tmp_path / "p.npz.store.json").exists()
    calls.clear()
    fail_at[0] = None
    sid_pool.pool_to_file(model, tmp_path / "m.tsv", None, "tsv", 0.5, tmp_path / "p.npz", 2.0, False)
    assert calls == [2, 1]  # blocks 3 and 4 of 2, 2, 2, 1 segments
    assert (tmp_path / "p.npz").read_bytes() == (tmp_path / "whole.npz").read_bytes()
    assert sorted(p.name for p in tmp_path.glob("p.npz*")) == ["p.npz"]
    # a leftover store of another model starts over
    calls.clear()
    fail_at[0] = 3
    with pytest.raises(RuntimeError):
        sid_pool.pool_to_file(model, tmp_path / "m.tsv", None, "tsv", 0.5, tmp_path / "q.npz", 2.0, False)
    fail_at[0] = None
    other = tiny("melhubert")
    other.feed_forwards()[0].output_dense.weight.data.mul_(0.5)
    calls.clear()
    sid_pool.pool_to_file(other, tmp_path / "m.tsv", None, "tsv", 0.5, tmp_path / "q.npz", 2.0, False)
    assert calls == [2, 2, 2, 1]


def test_a_damaged_pooled_store_is_pooled_again_not_resumed_from(tmp_path, monkeypatch, caplog):
    """A finished block whose bytes changed after it was recorded (overwritten, as a bad disk or a careless
    hand would) is pooled again, with a warning naming the store; a truncated store starts over.
    Either way the result is the uninterrupted run's, byte for byte: never NaN features used silently."""
    import logging

    model, calls, fail_at = _interruptible_pooling(tmp_path, monkeypatch)
    store = tmp_path / "p.npz.store.npy"
    for damage, expect in (("overwrite", [2, 2, 1]), ("truncate", [2, 2, 2, 1])):
        calls.clear()
        fail_at[0] = 3
        with pytest.raises(RuntimeError, match="killed"):
            sid_pool.pool_to_file(model, tmp_path / "m.tsv", None, "tsv", 0.5, tmp_path / "p.npz", 2.0, False)
        data = bytearray(store.read_bytes())
        if damage == "overwrite":
            mm = np.load(store, mmap_mode="r")
            start, size = mm.offset, mm[:2].nbytes  # block 0: its first 2 segments
            del mm
            data[start:start + size] = b"\xff" * size  # float16 NaNs over block 0, block 1 untouched
            store.write_bytes(bytes(data))
        else:
            store.write_bytes(bytes(data[: len(data) // 2]))
        calls.clear()
        fail_at[0] = None
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            sid_pool.pool_to_file(model, tmp_path / "m.tsv", None, "tsv", 0.5, tmp_path / "p.npz", 2.0, False)
        assert calls == expect, damage
        assert str(store) in caplog.text, damage
        assert (tmp_path / "p.npz").read_bytes() == (tmp_path / "whole.npz").read_bytes(), damage
        (tmp_path / "p.npz").unlink()
