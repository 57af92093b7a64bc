"""SUPERB phoneme recognition (METHOD §11a): edit distance, greedy CTC decoding, corpus-level PER and
its bootstrap interval, the linear head, the frame cache, and CTC training on a synthetic task."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from speaker_neurons import pr, statistics
from speaker_neurons.models.base import UpstreamOutput


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny tensors: one thread is fastest, and on a shared 2-core machine much faster than two."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# ------------------------------------------------------------------------------------------- scoring
def _levenshtein_reference(a, b):
    d = [[i + j if i * j == 0 else 0 for j in range(len(b) + 1)] for i in range(len(a) + 1)]
    for i in range(1, len(a) + 1):
        for j in range(1, len(b) + 1):
            d[i][j] = min(d[i - 1][j] + 1, d[i][j - 1] + 1, d[i - 1][j - 1] + (a[i - 1] != b[j - 1]))
    return d[-1][-1]


@pytest.mark.parametrize("ref,hyp,dist", [
    ("kitten", "sitting", 3),  # 2 substitutions + 1 insertion
    ("flaw", "lawn", 2),  # 1 deletion + 1 insertion
    ("abc", "abc", 0),
    ("", "abc", 3),
    ("abc", "", 3),
    ("", "", 0),
    ("abc", "cba", 2),
    ("aaaa", "aa", 2),
    ("ab", "ba", 2),  # no transpositions in Levenshtein
    ("intention", "execution", 5),
])
def test_edit_distance_hand_cases(ref, hyp, dist):
    assert pr.edit_distance([ord(c) for c in ref], [ord(c) for c in hyp]) == dist


def test_edit_distance_against_plain_dynamic_programming():
    rng = np.random.default_rng(0)
    for _ in range(200):
        a = rng.integers(0, 4, rng.integers(0, 12)).tolist()
        b = rng.integers(0, 4, rng.integers(0, 12)).tolist()
        assert pr.edit_distance(a, b) == _levenshtein_reference(a, b)


def test_greedy_decode_merges_repeats_and_drops_blanks():
    a, b, _ = 1, 2, 0
    assert pr.greedy_decode([a, a, _, a, b, b, _]) == [a, a, b]
    assert pr.greedy_decode([_, _, _]) == []
    assert pr.greedy_decode([]) == []
    assert pr.greedy_decode([b, b, 3, 3, _], drop=[3]) == [b]  # an end-of-sentence id is dropped too


def test_per_is_corpus_level():
    # utterance 1: 1 error in 10 phones; utterance 2: 2 errors in 2 phones
    edits, ref = [1, 2], [10, 2]
    assert pr.corpus_per(edits, ref) == pytest.approx(3 / 12)
    assert pr.corpus_per(edits, ref) != pytest.approx(np.mean([1 / 10, 2 / 2]))
    with pytest.raises(ValueError):
        pr.corpus_per([0], [0])


def test_bootstrap_interval_contains_point_and_shrinks():
    rng = np.random.default_rng(1)
    ref = rng.integers(20, 60, 40)
    edits = rng.binomial(ref, 0.2)
    point = pr.corpus_per(edits, ref)
    lo, hi = statistics.bootstrap_interval(edits, ref, 1000, 0)
    assert lo < point < hi
    assert statistics.bootstrap_interval(edits, ref, 1000, 0) == (lo, hi)  # seeded
    lo4, hi4 = statistics.bootstrap_interval(np.tile(edits, 16), np.tile(ref, 16), 1000, 0)  # 16x the utterances
    assert lo4 < point < hi4
    assert (hi4 - lo4) < 0.5 * (hi - lo)  # ~1/4 the width in theory
    # the resampling unit is the utterance: a corpus of one utterance has no spread
    assert statistics.bootstrap_interval([3], [10], 100, 0) == (0.3, 0.3)


# ------------------------------------------------------------------------------------------- the head
def test_head_is_affine_and_layer_weights_are_a_softmax():
    torch.manual_seed(0)
    head = pr.PRHead([0, 2, 3], dim=6, n_out=5, proj_dim=4)
    with torch.no_grad():
        head.layer_logits.copy_(torch.tensor([0.3, -1.0, 2.0]))
    w = head.weights().detach()
    assert torch.allclose(w, torch.exp(head.layer_logits) / torch.exp(head.layer_logits).sum())
    assert float(w.sum()) == pytest.approx(1.0)
    x, y = torch.randn(2, 7, 4, 6), torch.randn(2, 7, 4, 6)
    zero = torch.zeros_like(x)
    a, b = 1.7, -0.6
    with torch.no_grad():
        f = head
        lhs = f(a * x + b * y)
        rhs = a * f(x) + b * f(y) + (1 - a - b) * f(zero)  # affine: no activation between the linears
        assert torch.allclose(lhs, rhs, atol=1e-5)
        # the mix reads only the head's layers, with its weights
        mixed = w[0] * x[:, :, 0] + w[1] * x[:, :, 2] + w[2] * x[:, :, 3]
        assert torch.allclose(head.mix(x), mixed, atol=1e-6)
    assert [type(m) for m in head.children()] == [nn.Linear, nn.Linear]


def test_fused_forward_equals_the_two_linears_in_values_and_gradients():
    """forward composes classifier and projector before the frames; the logits and every parameter's
    gradient equal those of the two layers applied in turn."""
    torch.manual_seed(1)
    head = pr.PRHead([0, 1, 2], dim=16, n_out=9, proj_dim=12)
    x = torch.randn(3, 11, 3, 16, dtype=torch.float64)
    head = head.double()
    grads = []
    for fn in (head.forward, head.forward_unfused):
        head.zero_grad()
        out = fn(x)
        (out.sin().sum()).backward()
        grads.append((out.detach().clone(), [p.grad.clone() for p in head.parameters()]))
    assert torch.allclose(grads[0][0], grads[1][0], atol=1e-12)
    for g0, g1 in zip(grads[0][1], grads[1][1]):
        assert torch.allclose(g0, g1, atol=1e-10)


# ------------------------------------------------------------------------------------------- feature cache
class FakeUpstream(nn.Module):
    """Frames of 160 samples; hidden_l[t] = features of frame t's own samples (no context, so batching
    and padding change nothing), scaled per layer."""

    num_layers, hidden_dim, sample_rate = 2, 4, 16000

    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.tensor([1.0, -2.0, 3.0]))

    def frames_for(self, n):
        return int(n) // 160

    def forward(self, wavs, wav_lengths=None, return_ffn=True):
        B, S = wavs.shape
        T = S // 160
        fr = wavs[:, : T * 160].reshape(B, T, 160)
        base = torch.stack([fr.mean(-1), fr.std(-1), fr.max(-1).values, fr[..., 0]], -1)  # (B, T, 4)
        lengths = torch.tensor([self.frames_for(n) for n in wav_lengths.tolist()])
        return UpstreamOutput(hidden=[s * base + l for l, s in enumerate(self.scale)], lengths=lengths)


def test_frame_cache_round_trip(tmp_path):
    import soundfile as sf

    rng = np.random.default_rng(0)
    rows = []
    for i, n in enumerate([3200, 4800, 1600, 8000, 6400, 3360]):
        p = tmp_path / f"u{i}.wav"
        sf.write(p, (0.2 * rng.standard_normal(n)).astype(np.float32), 16000, subtype="FLOAT")
        rows.append({"utt_id": f"u{i}", "path": str(p), "duration": n / 16000})
    m = pd.DataFrame(rows)
    up = FakeUpstream()
    info = pr.extract_frame_features(up, m, tmp_path / "cache", amp="auto", max_batch_seconds=1.0, progress=False)
    assert info["utterances"] == 6 and info["layers"] == 3 and info["dim"] == 4 and info["frames"] == 171
    # one flat file: 171 frames x 3 layers x 4 x 2 bytes, nothing per shard
    assert (tmp_path / "cache" / "frames.f16").stat().st_size == 171 * 3 * 4 * 2 == info["bytes"]
    cache = pr.FrameCache(tmp_path / "cache")
    assert sorted(cache.utterances()) == sorted(m["utt_id"])
    with torch.no_grad():
        for r in rows:
            w = torch.from_numpy(sf.read(r["path"], dtype="float32")[0])[None]
            o = up(w, torch.tensor([w.shape[1]]))
            direct = torch.stack(o.hidden, 1)[0].numpy().astype(np.float16)  # (L+1, T, d)
            got = cache.get(r["utt_id"])
            assert not isinstance(cache.frames_major(r["utt_id"]).base, np.memmap)  # read, not mapped
            assert got.dtype == np.float16 and got.shape == direct.shape
            np.testing.assert_array_equal(got, direct)
    x, lengths = cache.batch(["u1", "u2"])
    assert x.shape == (2, 30, 3, 4) and lengths.tolist() == [30, 10]
    assert float(x[1, 10:].abs().sum()) == 0.0
    np.testing.assert_array_equal(x[1, :10].numpy(), cache.frames_major("u2").astype(np.float32))


def test_frame_cache_of_a_real_tiny_upstream(tmp_path):
    import soundfile as sf
    from test_models import tiny

    model = tiny("melhubert")
    rng = np.random.default_rng(0)
    rows = []
    for i, sec in enumerate([0.7, 1.3, 0.5]):
        p = tmp_path / f"r{i}.wav"
        sf.write(p, (0.1 * rng.standard_normal(int(sec * 16000))).astype(np.float32), 16000, subtype="FLOAT")
        rows.append({"utt_id": f"r{i}", "path": str(p), "duration": sec})
    info = pr.extract_frame_features(model, pd.DataFrame(rows), tmp_path / "c", amp="auto", max_batch_seconds=10.0,
                                     progress=False)
    assert info["layers"] == model.num_layers + 1 and info["frame_period"] == 0.01
    cache = pr.FrameCache(tmp_path / "c")
    with torch.no_grad():
        for r in rows:
            w = torch.from_numpy(sf.read(r["path"], dtype="float32")[0])[None]
            o = model(w, torch.tensor([w.shape[1]]), return_ffn=False)
            direct = torch.stack(o.hidden, 1)[0].numpy()
            got = cache.get(r["utt_id"]).astype(np.float32)
            assert got.shape == direct.shape
            np.testing.assert_allclose(got, direct, rtol=2e-3, atol=2e-3)  # float16, batched with padding


def test_frame_cache_rejects_mismatched_shapes_and_unfinished_stores(tmp_path):
    with pytest.raises(ValueError, match="do not match"):
        pr.write_frame_cache([("a", np.zeros((3, 5, 4))), ("b", np.zeros((2, 5, 4)))], tmp_path / "c")
    with pytest.raises(ValueError, match="twice"):
        pr.write_frame_cache([("a", np.zeros((3, 5, 4))), ("a", np.zeros((3, 5, 4)))], tmp_path / "c")
    assert not list(tmp_path.iterdir())  # a failed write leaves neither the store nor its .tmp
    with pytest.raises(FileNotFoundError, match="unfinished"):  # a killed writer leaves no done.json
        pr.FrameCache(tmp_path)


def test_audio_cache_is_int16_and_exact_for_16_bit_sources(tmp_path):
    import soundfile as sf

    from speaker_neurons import pr_data

    rng = np.random.default_rng(3)
    rows = []
    for i, n in enumerate([1600, 4000, 2400]):
        p = tmp_path / f"a{i}.wav"
        sf.write(p, rng.integers(-30000, 30000, n).astype(np.int16), 16000, subtype="PCM_16")
        rows.append({"utt_id": f"a{i}", "path": str(p), "duration": n / 16000})
    info = pr_data.write_audio_cache(pd.DataFrame(rows), tmp_path / "audio", 16000, 1.0, {"digest": "x"},
                                     progress=False)
    assert info["bytes"] == 8000 * 2 and pr_data.store_ready(tmp_path / "audio", "x")
    assert not pr_data.store_ready(tmp_path / "audio", "y")
    a = pr_data.AudioCache(tmp_path / "audio")
    for r in rows:
        src = sf.read(r["path"], dtype="float32")[0]
        np.testing.assert_array_equal(a.read_float(r["utt_id"]), src)


# ------------------------------------------------------------------------------------------- training
INVENTORY = ["A", "B", "C", "D", "E", "F"]
INFORMATIVE = 1


def _synthetic(tmp_path, n_utts=(64, 16, 24), seed=0):
    """Three layers of 8 dims; the phone of each frame is a one-hot in layer 1 (plus noise), layers 0 and 2
    are noise; every phone lasts 2-4 frames, no phone follows itself."""
    rng = np.random.default_rng(seed)
    phones, splits, items = {}, {}, []
    for sp, n in zip(("train", "dev", "test"), n_utts):
        for i in range(n):
            u = f"{sp}{i:03d}"
            seq = [int(rng.integers(6))]
            while len(seq) < rng.integers(4, 9):
                seq.append(int((seq[-1] + rng.integers(1, 6)) % 6))
            dur = rng.integers(2, 5, len(seq))
            frames = np.repeat(seq, dur)
            h = rng.standard_normal((3, len(frames), 8)).astype(np.float32)
            h[INFORMATIVE] *= 0.3
            h[INFORMATIVE, np.arange(len(frames)), frames] += 2.0
            items.append((u, h))
            phones[u] = [INVENTORY[p] for p in seq]
            splits[u] = sp
    pr.write_frame_cache(items, tmp_path / "cache")
    return tmp_path / "cache", phones, splits


FAST = {"proj_dim": 32, "batch_size": 16, "bootstrap": 200}


def test_ctc_training_learns_the_synthetic_task_and_its_layer(tmp_path):
    cache, phones, splits = _synthetic(tmp_path, (48, 16, 24))
    cfg = dict(FAST, learning_rates=[1e-2], seeds=[0], steps=100, eval_every=50)
    res = pr.train_and_evaluate(cache, phones, splits, {"all": [0, 1, 2], "noise": [0, 2]}, cfg, INVENTORY)
    assert res["vocabulary_size"] == 7 and res["splits"]["test"]["utterances"] == 24
    r = res["layer_sets"]["all"]
    chance = res["layer_sets"]["noise"]["test_per"]
    assert r["test_per"] < 0.2 < chance
    w = r["layer_weights"]
    assert int(np.argmax(w)) == INFORMATIVE and w[INFORMATIVE] > 0.45
    s = r["per_seed"][0]
    assert s["ci95"][0] <= s["per"] <= s["ci95"][1]
    assert s["best_step"] in (50, 100) and [c[0] for c in s["dev_curve"]] == [50, 100]
    assert s["dev_per"] == min(c[1] for c in s["dev_curve"])
    assert r["test_phones"] == sum(len(phones[u]) for u in phones if splits[u] == "test") == s["ref_phones"]
    json.dumps(res)


def test_sweep_seeds_and_determinism(tmp_path):
    cache, phones, splits = _synthetic(tmp_path, (24, 8, 8))
    cfg = dict(FAST, learning_rates=[1e-2, 1e-4], seeds=[0, 1], steps=20, eval_every=10)
    sets = {"all": [0, 1, 2], "last": [2]}
    a = pr.train_and_evaluate(cache, phones, splits, sets, cfg, INVENTORY)
    b = pr.train_and_evaluate(cache, phones, splits, sets, cfg, INVENTORY)
    assert json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)
    for nm, r in a["layer_sets"].items():
        dev = {float(k): v for k, v in r["dev_per"].items()}
        assert set(dev) == {1e-2, 1e-4} and r["lr"] == min(dev, key=lambda lr: (dev[lr], lr))
        assert [p["seed"] for p in r["per_seed"]] == [0, 1]
        assert r["test_per"] == pytest.approx(np.mean([p["per"] for p in r["per_seed"]]))
        assert r["test_ci95"][0] <= r["test_per"] <= r["test_ci95"][1]
        assert dev[r["lr"]] == pytest.approx(np.mean([p["dev_per"] for p in r["per_seed"]]))  # the seed mean
    assert a["layer_sets"]["last"]["layer_weights"] == [1.0]
    # fixed rates (sid.sweep: base): no sweep for the named set, the same heads as the sweep's at that rate
    c = pr.train_and_evaluate(cache, phones, splits, sets, cfg, INVENTORY, fixed_lr={"last": 1e-4})
    assert c["layer_sets"]["last"]["lr"] == 1e-4 and not c["layer_sets"]["last"]["lr_swept"]
    assert list(c["layer_sets"]["last"]["dev_per"]) == ["0.0001"]
    assert c["layer_sets"]["all"] == a["layer_sets"]["all"] and a["layer_sets"]["all"]["lr_swept"]
    assert c["layer_sets"]["last"]["dev_per"]["0.0001"] == a["layer_sets"]["last"]["dev_per"]["0.0001"]


def test_the_head_bank_follows_torch_adam_ctc_and_clipping(tmp_path):
    """The stacked bank trains each head as the plain recipe would: PRHead under the seed, CTCLoss
    (mean, zero_infinity), clip_grad_norm_ and torch.optim.Adam, step by step (a clip small enough to
    bind)."""
    cache, phones, splits = _synthetic(tmp_path, (16, 4, 4))
    ids = {p: i + 1 for i, p in enumerate(INVENTORY)}
    corpus = pr._Corpus(pr._CachedFeatures(pr.FrameCache(cache)),
                        {u: np.array([ids[p] for p in ph]) for u, ph in phones.items()}, None)
    tr = sorted(u for u in phones if splits[u] == "train")
    specs = [pr.PRSpec("all", (0, 1, 2), 1e-2, 5), pr.PRSpec("last", (2,), 3e-3, 5), pr.PRSpec("last", (2,), 3e-3, 6)]
    fc = pr.FrameCache(cache)
    bank = pr._HeadBank(specs, fc.layers, fc.dim, 7, 8, "cpu")
    refs = []
    for s in specs:
        torch.manual_seed(s.seed)
        h = pr.PRHead(s.layers, fc.dim, 7, 8)
        refs.append((h, torch.optim.Adam(h.parameters(), lr=s.lr)))
    ctc = nn.CTCLoss(blank=0, zero_infinity=True)
    rng = np.random.default_rng(0)
    for _ in range(5):
        utts = [tr[i] for i in rng.permutation(len(tr))[:6]]
        x, lengths = fc.batch(utts)
        tgt = [corpus.targets[u] for u in utts]
        flat = torch.from_numpy(np.concatenate(tgt))
        tlen = torch.tensor([len(t) for t in tgt])
        bank.step(x, flat, lengths, tlen, 0.05)
        for h, opt in refs:
            loss = ctc(torch.log_softmax(h(x), -1).transpose(0, 1), flat, lengths, tlen)
            opt.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(h.parameters(), 0.05)
            opt.step()
    for i, (h, _) in enumerate(refs):
        got = bank.head(i).state_dict()
        for k, v in h.state_dict().items():
            assert torch.allclose(got[k], v, atol=2e-5), (specs[i].layer_set, k)


def test_a_head_trains_in_its_group_as_alone(tmp_path):
    cache, phones, splits = _synthetic(tmp_path, (16, 4, 4))
    from speaker_neurons.config import resolve

    cfg = resolve("pr", dict(FAST, steps=6, eval_every=3))
    ids = {p: i + 1 for i, p in enumerate(INVENTORY)}
    corpus = pr._Corpus(pr._CachedFeatures(pr.FrameCache(cache)),
                        {u: np.array([ids[p] for p in ph]) for u, ph in phones.items()}, None)
    tr = sorted(u for u in phones if splits[u] == "train")
    dv = sorted(u for u in phones if splits[u] == "dev")
    a, b = pr.PRSpec("all", (0, 1, 2), 1e-2, 0), pr.PRSpec("last", (2,), 1e-3, 0)
    together = pr.train_group(corpus, tr, dv, [a, pr.PRSpec("all", (0, 1, 2), 1e-2, 1), b], cfg, 7)[::2]
    alone = pr.train_group(corpus, tr, dv, [b], cfg, 7)
    for k, v in together[1]["head"].state_dict().items():  # the same up to the order of float sums
        assert torch.allclose(v, alone[0]["head"].state_dict()[k], atol=1e-5)
    assert [c[0] for c in together[1]["dev_curve"]] == [c[0] for c in alone[0]["dev_curve"]]
    fc = corpus.data.store
    for r in together:  # the returned head is the best-dev checkpoint, not the last step's; decoded one by one
        e = []
        with torch.no_grad():
            for u in dv:
                x, n = fc.batch([u])
                e.append(pr.edit_distance(corpus.targets[u], pr.greedy_decode(r["head"](x).argmax(-1)[0].numpy())))
        assert pr.corpus_per(e, [len(corpus.targets[u]) for u in dv]) == r["dev_per"] == min(c[1] for c in r["dev_curve"])


def test_eos_option_and_input_errors(tmp_path):
    cache, phones, splits = _synthetic(tmp_path, (8, 4, 4))
    cfg = dict(FAST, learning_rates=[1e-2], seeds=[0], steps=4, eval_every=2, eos=True)
    res = pr.train_and_evaluate(cache, phones, splits, {"all": [0, 1, 2]}, cfg, INVENTORY)
    assert res["vocabulary_size"] == 8 and res["eos"] is True
    with pytest.raises(ValueError, match="not in the phone inventory"):
        pr.train_and_evaluate(cache, dict(phones, train000=["ZZ"]), splits, {"all": [0]}, cfg, INVENTORY)
    with pytest.raises(ValueError, match="no frames in the cache"):
        pr.train_and_evaluate(cache, dict(phones, extra=["A"]), dict(splits, extra="test"), {"all": [0]}, cfg,
                              INVENTORY)
    with pytest.raises(ValueError, match="outside the cache"):
        pr.train_and_evaluate(cache, phones, splits, {"all": [0, 3]}, cfg, INVENTORY)
    with pytest.raises(ValueError, match="unknown pr config key"):
        pr.train_and_evaluate(cache, phones, splits, {"all": [0]}, dict(cfg, step=3), INVENTORY)


def test_edit_distances_of_many_hypotheses_at_once():
    rng = np.random.default_rng(2)
    for _ in range(50):
        ref = rng.integers(0, 4, rng.integers(0, 10)).tolist()
        hyps = [rng.integers(0, 4, rng.integers(0, 12)).tolist() for _ in range(int(rng.integers(1, 6)))]
        assert pr.edit_distances(ref, hyps).tolist() == [_levenshtein_reference(ref, h) for h in hyps]


def test_the_training_stream_is_a_function_of_seed_and_step():
    from speaker_neurons.pr_data import BUCKET_BATCHES, TrainPlan

    lengths = np.random.default_rng(0).integers(10, 500, 203)
    plan = TrainPlan(lengths, 16, 7)
    n = plan.per_epoch
    assert n == 13
    for e in range(2):  # every epoch holds every item once, in batches of at most 16
        got = np.concatenate([plan.batch(e * n + i) for i in range(n)])
        assert sorted(got.tolist()) == list(range(203))
    # random access (a resumed run) gives the batches of the stream read in order
    fresh = TrainPlan(lengths, 16, 7)
    assert np.array_equal(fresh.batch(2 * n + 5), TrainPlan(lengths, 16, 7).batch(2 * n + 5))
    assert [fresh.batch(k).tolist() for k in (3 * n + 1, 1)] == [plan.batch(3 * n + 1).tolist(), plan.batch(1).tolist()]
    assert plan.batch(0).tolist() != TrainPlan(lengths, 16, 8).batch(0).tolist()  # the data seed
    assert plan.batch(0).tolist() != plan.batch(n).tolist()  # epochs differ
    # length buckets: inside a batch the lengths are close (sorted runs of BUCKET_BATCHES batches)
    spread = np.mean([np.ptp(lengths[plan.batch(i)]) for i in range(n - 1)])
    assert spread < 0.5 * np.ptp(lengths) and BUCKET_BATCHES > 1


def test_results_do_not_depend_on_the_loader_workers(tmp_path):
    cache, phones, splits = _synthetic(tmp_path, (24, 8, 8))
    cfg = dict(FAST, learning_rates=[1e-2], seeds=[0, 1], steps=8, eval_every=4)
    sets = {"all": [0, 1, 2]}
    a = pr.train_and_evaluate(cache, phones, splits, sets, dict(cfg, loader_workers=0), INVENTORY)
    b = pr.train_and_evaluate(cache, phones, splits, sets, dict(cfg, loader_workers=2), INVENTORY)
    assert json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


def test_a_damaged_audio_cache_is_not_ready(tmp_path, caplog):
    """The PR audio cache records its files' sizes and sha256 (hashed while written); a cache whose audio was
    altered or cut short, or whose index was edited, is not reused (pr_eval writes it again), with a warning
    naming the file."""
    import logging

    import soundfile as sf

    from speaker_neurons import pr_data
    from speaker_neurons.utils import sha256_file

    rng = np.random.default_rng(4)
    rows = []
    for i, n in enumerate([1600, 4000]):
        p = tmp_path / f"a{i}.wav"
        sf.write(p, rng.integers(-30000, 30000, n).astype(np.int16), 16000, subtype="PCM_16")
        rows.append({"utt_id": f"a{i}", "path": str(p), "duration": n / 16000})

    def fresh():
        pr_data.write_audio_cache(pd.DataFrame(rows), tmp_path / "audio", 16000, 1.0, {"digest": "x"}, progress=False)
        return tmp_path / "audio" / "audio.i16", tmp_path / "audio" / "index.tsv"

    audio, index = fresh()
    info = json.loads((tmp_path / "audio" / pr_data.DONE).read_text())
    assert info["files"]["audio.i16"] == {"bytes": 11200, "sha256": sha256_file(audio)}
    assert pr_data.store_ready(tmp_path / "audio", "x")
    for damage, message in (("alter", "does not hold the bytes recorded"), ("truncate", "(truncated or replaced)"),
                            ("index", "does not hold the bytes recorded")):
        audio, index = fresh()
        target = index if damage == "index" else audio
        data = bytearray(target.read_bytes())
        if damage == "truncate":
            data = data[:-2]
        else:
            data[len(data) // 2] ^= 0x01
        target.write_bytes(bytes(data))
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            assert not pr_data.store_ready(tmp_path / "audio", "x"), damage
        assert str(target) in caplog.text and message in caplog.text, damage


def test_the_libriphone_schedule():
    from speaker_neurons.config import resolve

    c = pr.apply_schedule(resolve("pr", {"schedule": "libriphone", "steps": 7}))
    assert (c["steps"], c["batch_size"], c["eval_every"]) == (100_000, 32, 1000)
    assert c["learning_rates"] == resolve("pr", {})["learning_rates"]
    assert pr.apply_schedule(resolve("pr", {"steps": 7}))["steps"] == 7


# ------------------------------------------------------------------------------------------- the stage's function
@pytest.fixture
def pr_job(tmp_path):
    """A tiny MelHuBERT, a manifest of 20 short utterances (12 train, 4 dev, 4 test) and CMUdict phone targets."""
    import soundfile as sf

    from speaker_neurons.data.lexicon import load_lexicon, phone_inventory
    from speaker_neurons.data.manifest import write_manifest
    from test_models import tiny

    inv = phone_inventory(load_lexicon(None))
    rng = np.random.default_rng(0)
    rows, lines = [], ["utt_id\tphones"]
    for i in range(20):
        sp = "train" if i < 12 else "dev" if i < 16 else "test"
        n = int(rng.integers(5600, 12800))
        p = tmp_path / "wav" / f"p{i:02d}.wav"
        p.parent.mkdir(exist_ok=True)
        sf.write(p, rng.integers(-3000, 3000, n).astype(np.int16), 16000, subtype="PCM_16")
        rows.append({"utt_id": f"p{i:02d}", "path": str(p), "speaker": f"s{i % 3}", "gender": "", "split": sp,
                     "duration": n / 16000, "sample_rate": 16000})
        lines.append(f"p{i:02d}\t" + " ".join(inv[j] for j in rng.integers(0, len(inv), int(rng.integers(3, 7)))))
    write_manifest(pd.DataFrame(rows), tmp_path / "manifest.tsv")
    (tmp_path / "phones.tsv").write_text("\n".join(lines) + "\n")
    return tiny("melhubert"), tmp_path


def _run_pr(job, out, **cfg):
    model, d = job
    cfg = {**FAST, "learning_rates": [1e-2, 1e-3], "seeds": [0, 1], "steps": 6, "eval_every": 2,
           "checkpoint_every": 2, "loader_workers": 0, **cfg}
    out.mkdir(parents=True, exist_ok=True)
    return pr.run_pr(model, d / "phones.tsv", d / "manifest.tsv", ["all", "last"], cfg, None, "toy", None,
                     out / "pr.json", out / "heads.safetensors", amp="auto", resume_dir=out / "resume" / "m" / "pr_eval",
                     max_batch_seconds=2.0, device="cpu")


@pytest.mark.parametrize("budget,kind", [(0, "on_the_fly"), (1, "cached")])
def test_a_killed_pr_eval_resumes_byte_identical(pr_job, tmp_path, monkeypatch, caplog, budget, kind):
    """An exception after step 5 (the checkpoint of step 4 on disk) then a rerun: pr.json and the heads
    are byte-identical to an uninterrupted run; the rerun resumes at step 4 and reuses the cache; the
    scratch and resume folders are gone at the end."""
    _run_pr(pr_job, tmp_path / "a", feature_cache_gb=budget)
    res = json.loads((tmp_path / "a" / "pr.json").read_text())
    model, d = pr_job
    from speaker_neurons.data.manifest import read_manifest

    frames = sum(model.frames_for(round(x * 16000)) for x in read_manifest(d / "manifest.tsv")["duration"])
    assert res["features"] == kind  # decided on frames x (L+1) x d x 2 bytes against the budget
    assert res["feature_cache_bytes"] == frames * (model.num_layers + 1) * model.hidden_dim * 2 < 1e9
    assert not (tmp_path / "a" / "resume" / "m" / "pr_eval").exists()

    def kill(step):
        if step == 5:
            raise KeyboardInterrupt("killed")

    monkeypatch.setattr(pr, "_after_step", kill)
    with pytest.raises(KeyboardInterrupt):
        _run_pr(pr_job, tmp_path / "b", feature_cache_gb=budget)
    resume = tmp_path / "b" / "resume" / "m" / "pr_eval"
    assert (resume / "bank" / "bank.pt").is_file()
    store = resume / "scratch" / ("audio" if kind == "on_the_fly" else "features")
    assert (store / "done.json").is_file()
    monkeypatch.setattr(pr, "_after_step", None)
    caplog.clear()  # the rerun's records only (the runs above log at INFO where an in-process stage set it)
    with caplog.at_level("INFO", logger="speaker_neurons.pr"):
        _run_pr(pr_job, tmp_path / "b", feature_cache_gb=budget)
    assert "RESUMING the PR heads at step 4/6" in caplog.text
    for f in ("pr.json", "heads.safetensors"):
        assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes(), f
    assert not resume.exists()
    # the cache was reused: the rerun wrote none
    assert "PR frame cache:" not in caplog.text and "PR audio cache:" not in caplog.text


def _sigterm_the_job(step: int) -> None:
    """What SLURM does at a job's time limit: SIGTERM to every process of the job (here this one and its
    children, the loader's worker among them), sent by another process (slurmstepd there, `kill` here: a
    torch loader worker exits quietly when its parent sends it, and dies of it otherwise)."""
    import os
    import subprocess
    import time
    from pathlib import Path

    me = os.getpid()
    pids = [d.name for d in Path("/proc").iterdir()
            if d.name.isdigit() and (d / "stat").exists()
            and int((d / "stat").read_text().rsplit(")", 1)[1].split()[1]) == me]
    subprocess.run(["kill", "-TERM", *pids, str(me)], check=False)
    time.sleep(0.5)  # the rest of the step the signal fell into: time for a worker's death to reach this process


@pytest.mark.parametrize("workers", [0, 1])
def test_sigterm_saves_that_step_and_the_rerun_ends_byte_identical(pr_job, tmp_path, monkeypatch, caplog, workers):
    """SIGTERM to the job (what SLURM sends at its time limit, before SIGKILL) after step 5, between the
    scheduled checkpoints (every 2): that step is saved (the loader's worker ignores it and leaves the
    answer to the main process), the job stops with Terminated (SIGTERM's handler restored), and the rerun
    resumes at step 5 rather than 4 and ends byte-identical to an uninterrupted run."""
    import signal

    from speaker_neurons.utils import Terminated

    _run_pr(pr_job, tmp_path / "a", feature_cache_gb=0)
    before = signal.getsignal(signal.SIGTERM)
    monkeypatch.setattr(pr, "_after_step", lambda s: _sigterm_the_job(s) if s == 5 else None)
    with caplog.at_level("WARNING", logger="speaker_neurons.pr"), pytest.raises(Terminated, match="step 5 of 6"):
        _run_pr(pr_job, tmp_path / "b", feature_cache_gb=0, loader_workers=workers)
    assert "SIGTERM" in caplog.text and signal.getsignal(signal.SIGTERM) is before
    monkeypatch.setattr(pr, "_after_step", None)
    with caplog.at_level("INFO", logger="speaker_neurons.pr"):
        _run_pr(pr_job, tmp_path / "b", feature_cache_gb=0, loader_workers=workers)
    assert "RESUMING the PR heads at step 5/6" in caplog.text
    for f in ("pr.json", "heads.safetensors"):
        assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes(), f


def test_a_checkpoint_of_other_settings_is_not_resumed(pr_job, tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(pr, "_after_step", lambda s: (_ for _ in ()).throw(KeyboardInterrupt()) if s == 3 else None)
    with pytest.raises(KeyboardInterrupt):
        _run_pr(pr_job, tmp_path / "b", feature_cache_gb=0)
    monkeypatch.setattr(pr, "_after_step", None)
    caplog.clear()
    with caplog.at_level("INFO", logger="speaker_neurons.pr"):
        _run_pr(pr_job, tmp_path / "b", feature_cache_gb=0, data_seed=1)
    assert "starting again" in caplog.text and "RESUMING" not in caplog.text


def test_the_scratch_folder(tmp_path, monkeypatch):
    resume = tmp_path / "resume" / "m1" / "pr_eval"
    assert pr.scratch_folder("", resume) == resume / "scratch"  # kept with the checkpoints across a kill
    monkeypatch.setenv("JOBTMP", str(tmp_path / "node"))
    a = pr.scratch_folder("$JOBTMP/x", resume)
    assert a.parent == tmp_path / "node" / "x" and a.name.startswith("pr_m1_")
    assert pr.scratch_folder("$JOBTMP/x", tmp_path / "resume" / "m2" / "pr_eval") != a  # one per job
    monkeypatch.delenv("JOBTMP")
    with pytest.raises(ValueError, match="unset environment variable"):
        pr.scratch_folder("$JOBTMP/x", resume)


def test_a_failed_pr_eval_removes_a_node_local_scratch_and_keeps_one_in_its_resume_folder(pr_job, tmp_path,
                                                                                          monkeypatch):
    """A job that fails keeps the cache a rerun reuses (in its resume folder, the default) and removes one on a
    node's own disk (pr.scratch_dir), which a rerun on another node could not use."""
    from speaker_neurons import pr_data

    monkeypatch.setattr(pr, "_after_step", lambda s: (_ for _ in ()).throw(RuntimeError("failed")) if s == 3 else None)
    with pytest.raises(RuntimeError, match="failed"):
        _run_pr(pr_job, tmp_path / "a", feature_cache_gb=0)
    kept = pr.scratch_folder("", tmp_path / "a" / "resume" / "m" / "pr_eval")
    assert (kept / "audio" / pr_data.DONE).is_file()
    monkeypatch.setenv("NODE_TMP", str(tmp_path / "node"))
    with pytest.raises(RuntimeError, match="failed"):
        _run_pr(pr_job, tmp_path / "b", feature_cache_gb=0, scratch_dir="$NODE_TMP")
    assert (tmp_path / "node").is_dir() and not list((tmp_path / "node").iterdir())


@pytest.mark.slow  # three fresh processes (~50 s); the in-process interruption above is the fast check
def test_a_sigkilled_pr_eval_resumes_byte_identical(pr_job, tmp_path):
    """The process (and its loader worker) killed by SIGKILL right after step 5: nothing is cleaned up or
    flushed on the way out, the rerun resumes from the checkpoint of step 4 and ends byte-identical."""
    import os
    import subprocess
    import sys

    model, d = pr_job
    torch.save(model, tmp_path / "model.pt")
    code = ("import logging, os, signal, sys, torch\n"
            "logging.basicConfig(level=logging.INFO)\n"
            "sys.path.insert(0, sys.argv[3])\n"
            "import test_pr\n"
            "from pathlib import Path\n"
            "from speaker_neurons import pr\n"
            "if sys.argv[2] == 'kill':\n"
            "    pr._after_step = lambda s: os.kill(os.getpid(), signal.SIGKILL) if s == 5 else None\n"
            "m = torch.load(sys.argv[1] + '/model.pt', weights_only=False)\n"
            "test_pr._run_pr((m, Path(sys.argv[1])), Path(sys.argv[1]) / sys.argv[4], feature_cache_gb=0, "
            "loader_workers=1)\n")
    here = str(__import__("pathlib").Path(__file__).parent)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    def run(mode, out):
        return subprocess.run([sys.executable, "-c", code, str(d), mode, here, out], env=env, cwd=d,
                              capture_output=True, text=True)

    assert run("plain", "a").returncode == 0
    killed = run("kill", "b")
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert (d / "b" / "resume" / "m" / "pr_eval" / "bank" / "bank.pt").is_file()
    again = run("plain", "b")
    assert again.returncode == 0, again.stderr[-2000:]
    assert "RESUMING the PR heads at step 4/6" in again.stderr
    for f in ("pr.json", "heads.safetensors"):
        assert (d / "a" / f).read_bytes() == (d / "b" / f).read_bytes(), f
