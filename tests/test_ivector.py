"""i-vectors (speaker_neurons.analysis.ivector): features, UBM, total variability, Kaldi I/O, quality.

Synthetic data come from known generating models, so the estimates are checked against the truth.
"""

from __future__ import annotations

import logging
import shutil
import subprocess

import numpy as np
import pytest
import torch
from scipy.linalg import subspace_angles
from scipy.optimize import linear_sum_assignment

from speaker_neurons.analysis import ivector as iv
from speaker_neurons import evaluation as ev
from speaker_neurons.analysis.kaldi_io_utils import KaldiIOError, kaldi_io_module
from speaker_neurons.config import complete

DEFAULTS = complete({})
N_INIT = DEFAULTS["analysis"]["ivector_n_init"]


@pytest.fixture(autouse=True)
def _one_thread():
    """The models here are tiny; one thread is faster and immune to a busy machine."""
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)


# ------------------------------------------------------------------------------------------------
# generating models


def _separated_means(rng, C, D, min_dist, scale):
    while True:
        mu = rng.normal(0.0, scale, (C, D))
        d = np.sqrt(((mu[:, None] - mu[None]) ** 2).sum(-1)) + np.eye(C) * 1e9
        if d.min() >= min_dist:
            return mu


def _tv_corpus(seed=0, C=8, D=4, R=5, U=300, frames=200, t_scale=0.5, speakers=None, within=0.0):
    """Frames from a diagonal GMM (unit variances) whose mean supervector is m + T w per utterance.
    With `speakers`, w = y_speaker + within * noise. Returns (feats, mu, T, W, spk)."""
    rng = np.random.default_rng(seed)
    mu = _separated_means(rng, C, D, 10.0, 8.0)
    weights = rng.dirichlet(np.full(C, 5.0))
    T = rng.normal(0.0, t_scale, (C * D, R))
    if speakers:
        Y = rng.normal(size=(speakers, R))
        spk = np.arange(U) % speakers
        W = Y[spk] + within * rng.normal(size=(U, R))
    else:
        spk = np.zeros(U, int)
        W = rng.normal(size=(U, R))
    feats = []
    for u in range(U):
        M = (mu.reshape(-1) + T @ W[u]).reshape(C, D)
        z = rng.choice(C, frames, p=weights)
        feats.append((M[z] + rng.normal(size=(frames, D))).astype(np.float32))
    return feats, mu, T, W, spk


def _match(learned_means, true_means):
    """perm[c] = learned component matched to true component c (Hungarian on squared distance)."""
    cost = ((learned_means[:, None] - true_means[None]) ** 2).sum(-1)
    r, c = linear_sum_assignment(cost)
    perm = np.empty(len(c), int)
    perm[c] = r
    return perm


# ------------------------------------------------------------------------------------------------
# (a) UBM


def test_gmm_em_recovers_planted_mixture():
    rng = np.random.default_rng(0)
    C, D, n = 5, 3, 30_000
    mu = _separated_means(rng, C, D, 8.0, 6.0)
    w = np.array([0.1, 0.15, 0.2, 0.25, 0.3])
    sd = rng.uniform(0.5, 1.5, (C, D))
    z = rng.choice(C, n, p=w)
    X = mu[z] + sd[z] * rng.normal(size=(n, D))
    cfg = DEFAULTS["ivector"]
    gmm = iv.train_diag_gmm(torch.tensor(X, dtype=torch.float32), C, num_iters=20, seed=0,
                            var_floor=cfg["ubm_var_floor"], min_occupancy=cfg["ubm_min_occupancy"],
                            init_frames=cfg["ubm_init_frames"], kmeans_iters=cfg["ubm_kmeans_iters"],
                            kmeans_restarts=cfg["ubm_kmeans_restarts"], chunk=cfg["frame_chunk"])
    perm = _match(gmm.means.numpy(), mu)
    # tolerances: means within 0.1 (sd <= 1.5, >= 3000 frames each), weights within 0.01,
    # variances within 10 % of the truth
    assert np.abs(gmm.means.numpy()[perm] - mu).max() < 0.1
    assert np.abs(gmm.weights.numpy()[perm] - w).max() < 0.01
    assert np.abs(gmm.variances.numpy()[perm] / sd**2 - 1).max() < 0.1
    assert abs(float(gmm.weights.sum()) - 1) < 1e-5


def test_gmm_posteriors_log_domain_and_pruning():
    gmm = iv.DiagGMM(torch.tensor([0.5, 0.5]), torch.tensor([[0.0], [1e4]]), torch.ones(2, 1))
    post, ll = gmm.posteriors(torch.tensor([[5e3 - 1.0], [1e4 + 3.0]]))
    assert torch.isfinite(post).all() and torch.isfinite(ll).all()  # no underflow to nan
    assert torch.allclose(post.sum(1), torch.ones(2))
    assert post[0, 0] > 0.999 and post[1, 1] > 0.999
    gmm3 = iv.DiagGMM(torch.tensor([0.49, 0.49, 0.02]), torch.tensor([[0.0], [0.0], [0.0]]), torch.ones(3, 1))
    post, _ = gmm3.posteriors(torch.zeros(1, 1), min_post=0.025)
    assert post[0, 2] == 0 and torch.allclose(post[0, :2], torch.tensor([0.5, 0.5]))


# ------------------------------------------------------------------------------------------------
# (b) total variability


def test_total_variability_recovers_planted_subspace():
    C, D, R, U = 8, 4, 5, 300
    feats, mu, T_true, W, _ = _tv_corpus(seed=0, C=C, D=D, R=R, U=U)
    cfg = {"ubm_components": C, "ivector_dim": R, "tv_iters": 10, "ubm_iters": 10, "min_post": 0.0}
    ext = iv.IVectorExtractor(cfg).fit(feats)
    perm = _match(ext.ubm.means.numpy(), mu)
    assert np.abs(ext.ubm.means.numpy()[perm] - mu).max() < 0.5
    T_learned = ext.T.numpy().reshape(C, D, R)[perm].reshape(C * D, R)
    cosines = np.cos(subspace_angles(T_learned, T_true))
    assert cosines.min() > 0.9, cosines  # every principal angle < 26 degrees
    # i-vectors = planted w up to an affine map
    ivecs = ext.transform(feats, normalize=False)
    A = np.c_[ivecs, np.ones(U)]
    coef, *_ = np.linalg.lstsq(A, W, rcond=None)
    r2 = 1 - (W - A @ coef).var(0) / W.var(0)
    assert r2.min() > 0.9, r2
    # minimum divergence keeps the prior standard: mean ~ 0, covariance ~ I on the training data
    assert ext.history[-1]["mean_w_norm"] < 0.05
    assert abs(ext.history[-1]["prior_cov_trace"] - 1) < 0.05
    # normalised output: centred with the training mean, unit length
    out = ext.transform(feats)
    assert np.allclose(np.linalg.norm(out, axis=1), 1, atol=1e-5)


def test_max_train_utts_uses_the_longest():
    feats, *_ = _tv_corpus(seed=1, U=40, frames=50)
    feats[3] = np.concatenate([feats[3]] * 4)
    feats[7] = feats[7][:0]  # an empty utterance: prior mean
    ext = iv.IVectorExtractor({"ubm_components": 8, "ivector_dim": 3, "tv_iters": 2, "ubm_iters": 3,
                               "tv_max_train_utts": 10}).fit(feats)
    out = ext.transform(feats, normalize=False)
    assert out.shape == (40, 3) and np.all(out[7] == 0)
    with pytest.raises(ValueError, match="unknown ivector config key"):
        iv.IVectorExtractor({"ubm_component": 8})


# ------------------------------------------------------------------------------------------------
# (c) Kaldi ark / scp


def test_kaldi_ark_scp_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    ids = [f"spk{i % 3}-utt{i}" for i in range(7)]
    vecs = rng.normal(size=(7, 10)).astype(np.float32)
    iv.write_ivectors(ids, vecs, tmp_path / "iv.ark", tmp_path / "iv.scp")
    for spec in (tmp_path / "iv.ark", tmp_path / "iv.scp", f"ark:{tmp_path / 'iv.ark'}", f"scp:{tmp_path / 'iv.scp'}"):
        got_ids, got = iv.read_ivectors(spec)
        assert got_ids == ids
        assert got.dtype == np.float32 and np.array_equal(got, vecs)
    # an scp whose entries are relative to its own folder (a moved Kaldi directory)
    (tmp_path / "rel.scp").write_text(
        "".join(line.replace(str((tmp_path / "iv.ark").resolve()), "iv.ark") + "\n"
                for line in (tmp_path / "iv.scp").read_text().splitlines())
    )
    assert np.array_equal(iv.read_ivectors(tmp_path / "rel.scp")[1], vecs)
    with pytest.raises(ValueError):
        iv.write_ivectors(ids, vecs[:3], tmp_path / "bad.ark")
    with pytest.raises(KaldiIOError, match="pipes"):
        iv.read_ivectors("copy-vector ark:x.ark ark:- |")


def test_reads_arks_written_by_kaldi_io_and_text_arks(tmp_path):
    kio = kaldi_io_module()
    rng = np.random.default_rng(1)
    vecs = {f"u{i}": rng.normal(size=5).astype(np.float32) for i in range(4)}
    with open(tmp_path / "kaldi.ark", "wb") as f:
        for k, v in vecs.items():
            kio.write_vec_flt(f, v, key=k)
    ids, got = iv.read_ivectors(tmp_path / "kaldi.ark")
    assert ids == list(vecs) and np.array_equal(got, np.stack(list(vecs.values())))
    # Kaldi text archive, as `copy-vector ark:- ark,t:-` prints it
    (tmp_path / "text.ark").write_text("a  [ 1 2.5 -3 ]\nb  [ 0 0.25 4 ]\n")
    ids, got = iv.read_ivectors(f"ark,t:{tmp_path / 'text.ark'}")
    assert ids == ["a", "b"] and np.allclose(got, [[1, 2.5, -3], [0, 0.25, 4]])
    # differing dimensions and duplicate keys are refused
    (tmp_path / "dims.ark").write_text("a  [ 1 2 ]\nb  [ 1 2 3 ]\n")
    with pytest.raises(ValueError, match="dimensions"):
        iv.read_ivectors(tmp_path / "dims.ark")
    (tmp_path / "dup.ark").write_text("a  [ 1 2 ]\na  [ 1 2 ]\n")
    with pytest.raises(KaldiIOError, match="duplicate"):
        iv.read_ivectors(tmp_path / "dup.ark")


# ------------------------------------------------------------------------------------------------
# (d) quality helpers


def test_speaker_id_on_synthetic_speakers():
    U, S = 192, 16
    feats, _, _, _, spk = _tv_corpus(seed=2, R=8, U=U, frames=200, speakers=S, within=0.2)
    ext = iv.IVectorExtractor({"ubm_components": 8, "ivector_dim": 8, "tv_iters": 6, "ubm_iters": 8})
    ivecs = ext.fit(feats).transform(feats)  # no labels used
    test = np.arange(U) % 5 == 0  # every speaker in both parts
    assert set(spk[test]) == set(spk[~test]) == set(range(S))
    acc = ev.speaker_id_accuracy(ivecs[~test], spk[~test], ivecs[test], spk[test])
    assert acc >= 0.97
    scores, labels = ev.build_trials(ivecs[test], spk[test])
    n = int(test.sum())
    per_spk = np.bincount(spk[test])
    assert len(scores) == n * (n - 1) // 2 and labels.sum() == (per_spk * (per_spk - 1) // 2).sum()
    assert ev.equal_error_rate(scores, labels) < 0.05


def test_equal_error_rate():
    rng = np.random.default_rng(0)
    labels = np.r_[np.ones(500), np.zeros(2000)]
    separable = np.r_[rng.uniform(1, 2, 500), rng.uniform(-1, 0.99, 2000)]
    assert ev.equal_error_rate(separable, labels) == 0.0
    random = rng.normal(size=2500)
    assert abs(ev.equal_error_rate(random, labels) - 0.5) < 0.05
    assert ev.equal_error_rate(-separable, labels) == 1.0
    # 1 target among 4 non-targets, ranked second: miss 1 or fa >= 0.25 at every threshold -> EER 0.25
    assert ev.equal_error_rate([3, 2, 1, 0, -1], [0, 1, 0, 0, 0]) == pytest.approx(0.25)
    assert ev.equal_error_rate(np.zeros(10), np.r_[np.ones(5), np.zeros(5)]) == pytest.approx(0.5)
    with pytest.raises(ValueError):
        ev.equal_error_rate([1, 2], [1, 1])
    s, lab = ev.build_trials(np.eye(4), ["a", "a", "b", "b"], max_trials=3)
    assert len(s) == 3


# ------------------------------------------------------------------------------------------------
# (e) determinism, save / load


def test_same_seed_same_ivectors_and_save_load(tmp_path):
    feats, *_ = _tv_corpus(seed=3, U=60, frames=80)
    cfg = {"ubm_components": 8, "ivector_dim": 4, "tv_iters": 3, "ubm_iters": 4, "seed": 7}
    a = iv.IVectorExtractor(cfg).fit(feats)
    b = iv.IVectorExtractor(cfg).fit(feats)
    ia, ib = a.transform(feats), b.transform(feats)
    assert np.array_equal(ia, ib)
    c = iv.IVectorExtractor({**cfg, "seed": 8}).fit(feats)
    assert not np.array_equal(ia, c.transform(feats))
    a.save(tmp_path / "ext.npz")
    loaded = iv.IVectorExtractor.load(tmp_path / "ext.npz")
    assert loaded.cfg == a.cfg
    assert np.allclose(loaded.transform(feats), ia, atol=1e-6)


# ------------------------------------------------------------------------------------------------
# front end


def _kaldi_vad_loop(e, thr, scale, ctx, prop):
    T = len(e)
    thr = thr + scale * e.sum() / T
    out = np.zeros(T, bool)
    for t in range(T):
        num = den = 0
        for t2 in range(t - ctx, t + ctx + 1):
            if 0 <= t2 < T:
                den += 1
                num += e[t2] > thr
        out[t] = num >= den * prop
    return out


def _kaldi_sliding_cmn_loop(x, window, norm_vars):
    T = len(x)
    out = np.empty_like(x)
    for t in range(T):
        start = t - window // 2
        end = start + window
        if start < 0:
            end -= start
            start = 0
        if end > T:
            start -= end - T
            end = T
            start = max(start, 0)
        seg = x[start:end]
        out[t] = x[t] - seg.mean(0)
        if norm_vars:
            out[t] /= np.sqrt(np.maximum((seg**2).mean(0) - seg.mean(0) ** 2, 1e-20))
    return out


def test_vad_cmn_deltas_follow_kaldi():
    rng = np.random.default_rng(0)
    e = rng.normal(8, 3, 500)
    for ctx, prop in ((2, 0.12), (0, 0.5), (3, 0.6)):
        got = iv.compute_vad(torch.tensor(e), 5.5, 0.5, ctx, prop).numpy()
        assert np.array_equal(got, _kaldi_vad_loop(e, 5.5, 0.5, ctx, prop))
    x = rng.normal(size=(700, 3))
    for T, window, nv in ((700, 300, False), (700, 301, True), (120, 300, False)):
        got = iv.sliding_cmn(torch.tensor(x[:T]), window, nv).numpy()
        assert np.allclose(got, _kaldi_sliding_cmn_loop(x[:T], window, nv), atol=1e-9)
    scales = [s.tolist() for s in iv._delta_scales(2, 2)]
    assert scales[1] == pytest.approx([-0.2, -0.1, 0.0, 0.1, 0.2])
    assert scales[2] == pytest.approx([0.04, 0.04, 0.01, -0.04, -0.1, -0.04, 0.01, 0.04, 0.04])
    feats = torch.tensor(x[:50, :2])
    d = iv.add_deltas(feats, 2, 2).numpy()
    assert d.shape == (50, 6)
    padded = np.r_[np.repeat(x[:1, :2], 4, 0), x[:50, :2], np.repeat(x[49:50, :2], 4, 0)]
    t = 0  # first frame: edges replicated
    assert np.allclose(d[t, 2:4], (np.array(scales[1])[:, None] * padded[t + 2 : t + 7]).sum(0))
    assert np.allclose(d[t, 4:6], (np.array(scales[2])[:, None] * padded[t : t + 9]).sum(0))


def test_silence_falls_back_to_all_frames(package_logs):
    rng = np.random.default_rng(0)
    t = np.arange(16000) / 16000
    speech = (0.3 * np.sin(2 * np.pi * 200 * t) * (t > 0.5) + 1e-4 * rng.normal(size=16000)).astype(np.float32)
    items = [("silent", np.zeros(16000, np.float32)), ("half", speech), ("tiny", np.zeros(100, np.float32))]
    with package_logs.at_level(logging.WARNING, logger="speaker_neurons"):
        ids, feats, counts = iv.extract_features(items, progress=False)
    assert ids == ["silent", "half", "tiny"]
    assert counts["no_voiced_fallback"] == 1 and counts["empty"] == 1
    assert feats[0].shape == (98, 60)  # 1 + (16000 - 400) // 160 frames, 20 MFCC x 3
    assert 40 < feats[1].shape[0] < 60  # the tone half is voiced
    assert feats[2].shape == (0, 60)
    assert "no voiced frame" in package_logs.text
    with pytest.raises(ValueError, match="duplicate"):
        iv.extract_features([("a", speech), ("a", speech)], progress=False)


def _espeak(tmp_path, voice, text, pitch):
    import soundfile as sf
    import torchaudio

    path = tmp_path / f"{voice}_{pitch}.wav"
    subprocess.run(["espeak-ng", "-v", voice, "-p", str(pitch), "-w", str(path), text], check=True,
                   capture_output=True, timeout=30)
    wav, sr = sf.read(str(path), dtype="float32")
    wav = torch.from_numpy(wav.reshape(len(wav), -1).mean(1))
    return torchaudio.functional.resample(wav, sr, 16000).numpy()


@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng is not installed")
def test_espeak_smoke(tmp_path):
    text = "The quick brown fox jumps over the lazy dog while seven wizards quietly hum."
    items = []
    for voice, pitch in (("en-us", 30), ("en-gb", 60), ("en-us+f3", 80)):
        wav = _espeak(tmp_path, voice, text, pitch)
        for i in range(3):
            seg = wav[i * len(wav) // 4 : (i + 2) * len(wav) // 4]
            items.append((f"{voice}-{pitch}-{i}", seg))
    ids, feats, counts = iv.extract_features(items, progress=False)
    for (_, wav), f in zip(items, feats):
        n_frames = 1 + (len(wav) - 400) // 160
        assert f.shape[1] == 60 and 0.3 * n_frames < f.shape[0] <= n_frames
        assert torch.isfinite(f).all()
    assert counts["no_voiced_fallback"] == 0 and 0.3 < counts["voiced_frames"] / counts["frames"] < 1.0
    cfg = {"ubm_components": 4, "ivector_dim": 3, "ubm_iters": 3, "tv_iters": 2}
    ids2, ivecs = iv.extract_ivectors(items, cfg, device="cpu", progress=False, model_out=tmp_path / "ext.npz")
    assert ids2 == ids and ivecs.shape == (9, 3)
    assert np.allclose(np.linalg.norm(ivecs, axis=1), 1, atol=1e-5)
    iv.write_ivectors(ids2, ivecs, tmp_path / "iv.ark", tmp_path / "iv.scp")
    assert np.array_equal(iv.read_ivectors(tmp_path / "iv.scp")[1], ivecs)
    # a saved extractor applied again gives the same i-vectors
    again = iv.extract_ivectors(items, None, progress=False, extractor=iv.IVectorExtractor.load(tmp_path / "ext.npz"),
                                num_threads=1, return_info=True)
    assert np.allclose(again[1], ivecs, atol=1e-5)
    assert again[2]["counts"]["utterances"] == 9 and again[2]["config"]["ivector_dim"] == 3
    # other extractor seeds: the same features, extractors fitted from other initialisations; the one with
    # the main seed reproduces the main i-vectors exactly, another seed gives other (unit-length) ones
    _, main, info = iv.extract_ivectors(items, {**cfg, "seed": 5}, progress=False, return_info=True, other_seeds=[5, 6])
    assert sorted(info["other_seeds"]) == [5, 6]
    assert np.allclose(info["other_seeds"][5], main, atol=1e-6)
    assert info["other_seeds"][6].shape == (9, 3) and not np.allclose(info["other_seeds"][6], main, atol=1e-3)
    assert np.allclose(np.linalg.norm(info["other_seeds"][6], axis=1), 1, atol=1e-5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_matches_cpu():
    rng = np.random.default_rng(0)
    t = np.arange(48000) / 16000
    items = []
    for u in range(12):
        f0 = 100 + 15 * (u % 4)
        wav = sum(np.sin(2 * np.pi * f0 * h * t + rng.uniform(0, 6)) / h for h in range(1, 30))
        wav = 0.1 * wav * (1 + 0.5 * np.sin(2 * np.pi * 3 * t)) + 0.01 * rng.normal(size=t.size)
        items.append((f"u{u}", wav.astype(np.float32)))
    cfg = {"ubm_components": 8, "ivector_dim": 4, "ubm_iters": 4, "tv_iters": 3}
    ids_c, cpu = iv.extract_ivectors(items, cfg, device="cpu", progress=False)
    ids_g, gpu = iv.extract_ivectors(items, cfg, device="cuda", progress=False)
    assert ids_c == ids_g
    cos = (cpu * gpu).sum(1)  # both unit length
    assert cos.min() > 0.99, cos
    _, again = iv.extract_ivectors(items, cfg, device="cuda", progress=False)
    assert np.allclose(gpu, again, atol=1e-6)


def test_embedding_quality_counts_only_enrolled_speakers_and_gives_intervals():
    """Test utterances of a speaker with no training utterance are not identification errors."""
    import pandas as pd

    from speaker_neurons.evaluation import embedding_quality
    from speaker_neurons.statistics import wilson_interval

    rng = np.random.default_rng(0)
    centres = {s: rng.normal(size=6) * 4 for s in ("a", "b", "c", "ghost")}
    rows, vecs = [], []
    for s in centres:
        for i in range(6):
            split = "test" if (s == "ghost" or i >= 4) else "train"
            rows.append({"utt_id": f"{s}{i}", "speaker": s, "split": split})
            vecs.append(centres[s] + rng.normal(size=6) * 0.1)
    man = pd.DataFrame(rows)
    q = embedding_quality(man["utt_id"].tolist(), np.array(vecs), man)
    assert q["sid_test"] == 6 and q["sid_unenrolled"] == 6 and q["sid_accuracy"] == 1.0
    assert q["sid_ci95"] == pytest.approx(list(wilson_interval(6, 6)))
    n = 12  # test utterances: 2 per enrolled speaker + 6 ghost
    assert q["trials"] == n * (n - 1) // 2 and q["target_trials"] == 3 * 1 + 15
    assert q["eer"] == 0.0 and q["eer_ci95"][0] == 0.0 and 0 < q["eer_ci95"][1] < 0.25


def test_partition_stability_of_utterance_clusters():
    from speaker_neurons.analysis.clusters import cluster_utterances, partition_stability

    rng = np.random.default_rng(0)
    two = np.concatenate([rng.normal(size=(40, 3)) + [6, 0, 0], rng.normal(size=(40, 3)) - [6, 0, 0]])
    ids = [f"u{i}" for i in range(80)]
    lab = cluster_utterances(ids, two, 2, seed=0, n_init=N_INIT)
    assert sorted(set(lab.values())) == [0, 1] and len({lab[i] for i in ids[:40]}) == 1
    st = partition_stability(two, np.array([lab[i] for i in ids]), 2, [1, 2, 3], n_init=N_INIT)
    assert st["ari"] == [1.0, 1.0, 1.0] and st["min_ari"] == 1.0
    blob = rng.normal(size=(80, 6))  # no structure: partitions move with the seed at one initialisation
    lab = cluster_utterances(ids, blob, 2, seed=0, n_init=1)
    st = partition_stability(blob, np.array([lab[i] for i in ids]), 2, range(1, 9), n_init=1)
    assert st["min_ari"] < 0.5 and len(st["ari"]) == 8


def test_extractor_partitions_are_clustered_like_the_chosen_one_and_numbered_alike():
    from sklearn.metrics import adjusted_rand_score

    from speaker_neurons.analysis.clusters import cluster_stability, cluster_utterances, ivector_partitions

    rng = np.random.default_rng(1)
    ids = [f"u{i}" for i in range(80)]
    two = np.concatenate([rng.normal(size=(40, 3)) + [6, 0, 0], rng.normal(size=(40, 3)) - [6, 0, 0]])
    labels = np.array([cluster_utterances(ids, two, 2, seed=0, n_init=N_INIT)[i] for i in ids])
    rotated = two @ np.linalg.qr(rng.normal(size=(3, 3)))[0]  # another extractor: the same structure, other axes
    flipped = two * [-1, 1, 1]  # cluster ids swapped: the same partition
    half = rng.normal(size=(80, 3))
    half[::2, 1] += 8  # another structure: even against odd utterances, unrelated to the chosen halves
    parts, _ = ivector_partitions(two, {11: rotated, 12: flipped, 13: half}, 2, seed=0, n_init=10, name="extractor_seed_0")
    assert list(parts) == ["extractor_seed_0", "extractor_seed_11", "extractor_seed_12", "extractor_seed_13", "consensus"]
    assert np.array_equal(parts["extractor_seed_0"], labels)
    assert np.array_equal(parts["extractor_seed_12"], labels)  # renumbered to match, not just the same partition
    assert np.array_equal(parts["consensus"], labels)  # three of four extractors agree
    st = cluster_stability(two, parts, 2, seed=0, n_init=10, runs=1, warn_below=0.9)
    assert st["extractor_seeds"]["seeds"] == [11, 12, 13] and st["extractor_seeds"]["ari"][:2] == [1.0, 1.0]
    other = cluster_utterances([str(i) for i in range(80)], half, 2, seed=0, n_init=10)
    expected = adjusted_rand_score(labels, [other[str(i)] for i in range(80)])
    assert st["extractor_seeds"]["ari"][2] == pytest.approx(expected) and expected < 0.2
    assert st["stable"] is False and st["min_ari"] == pytest.approx(expected)
    assert st["consensus"]["ari_vs_chosen"] == 1.0 and st["consensus"]["partitions"] == 4
    assert "halves" in st["consensus"]  # 4 extractors: two disjoint pairs


def test_match_cluster_ids_renumbers_by_the_largest_overlap():
    from speaker_neurons.analysis.clusters import match_cluster_ids

    ref = np.array([0, 0, 0, 1, 1, 2, 2, 2])
    perm = np.array([2, 2, 0, 0, 0, 1, 1, 1])  # clusters renamed 0->2, 1->0, 2->1, one utterance moved
    assert match_cluster_ids(perm, ref, 3).tolist() == [0, 0, 1, 1, 1, 2, 2, 2]
    assert match_cluster_ids(ref, ref, 3).tolist() == ref.tolist()


def test_consensus_recovers_a_partition_that_each_noisy_partition_misses():
    from sklearn.metrics import adjusted_rand_score

    from speaker_neurons.analysis.clusters import coassociation_embedding, consensus_partition, consensus_stability

    rng = np.random.default_rng(3)
    truth = np.repeat([0, 1], 100)
    parts = []
    for i in range(5):  # each extractor misplaces its own 15% of the utterances, and numbers clusters its own way
        p = truth.copy()
        moved = rng.choice(200, 30, replace=False)
        p[moved] = 1 - p[moved]
        parts.append(p if i % 2 else 1 - p)
    assert max(adjusted_rand_score(truth, p) for p in parts) < 0.6
    cons = consensus_partition(parts, 2, seed=0, n_init=10)
    assert adjusted_rand_score(truth, cons) > 0.9
    h = coassociation_embedding(parts, 2)  # squared distance = 2 P (1 - co-association)
    together = np.mean([p[0] == p[1] for p in parts])
    assert ((h[0] - h[1]) ** 2).sum() == pytest.approx(2 * 5 * (1 - together))
    st = consensus_stability(parts, 2, seed=0, n_init=10)
    assert st["partitions"] == 5 and len(st["leave_one_out"]) == 5 and 0.0 <= st["halves"] <= 1.0


def test_choose_partition_takes_the_consensus_when_the_extractors_disagree():
    from speaker_neurons.analysis.clusters import choose_partition

    parts = {"extractor_seed_0": np.zeros(3), "extractor_seed_1": np.zeros(3), "consensus": np.zeros(3)}
    assert choose_partition(parts, {"stable": False}, "auto") == "consensus"
    assert choose_partition(parts, {"stable": True}, "auto") == "extractor_seed_0"
    assert choose_partition(parts, {"stable": True}, "consensus") == "consensus"
    assert choose_partition(parts, {"stable": False}, "extractor") == "extractor_seed_0"
    alone = {"given": np.zeros(3)}
    assert choose_partition(alone, {"stable": False}, "auto") == "given"
    with pytest.raises(ValueError, match="stability_extractors"):
        choose_partition(alone, {"stable": True}, "consensus")


def test_whitening_gives_unit_covariance_and_each_step_is_a_key():
    rng = np.random.default_rng(0)
    raw = rng.normal(size=(500, 4)) @ np.array([[3, 1, 0, 0], [0, 1, 0, 0], [0, 0, 0.2, 0], [0, 0, 0, 5]]) + 7
    mean, w = iv.fit_postprocessing(raw, center=True, whiten=True)
    x = iv.apply_postprocessing(raw, mean, w, length_norm=False)
    assert np.allclose(x.mean(0), 0, atol=1e-4) and np.allclose(np.cov(x.T, bias=True), np.eye(4), atol=1e-3)
    assert np.allclose(w, w.T)  # ZCA: symmetric, no eigenvector signs to choose
    mean0, w0 = iv.fit_postprocessing(raw, center=False, whiten=False)
    assert w0 is None and not mean0.any()
    assert np.allclose(iv.apply_postprocessing(raw, mean0, None, length_norm=False), raw, atol=1e-4)
    y = iv.apply_postprocessing(raw, mean, w, length_norm=True)
    assert np.allclose(np.linalg.norm(y, axis=1), 1, atol=1e-5)


# ------------------------------------------------------------------------------------------------
# clusters of another corpus' utterances, from their own audio


def _voice(rng, kind, seconds=1.5, sr=16000):
    """A low harmonic voice ("L": f0 110 Hz) or a higher one ("H": 180 Hz); utterances of one kind differ
    only by their noise."""
    t = np.arange(int(seconds * sr)) / sr
    f0 = 110 if kind == "L" else 180
    wav = sum(np.sin(2 * np.pi * f0 * h * t + 0.3 * h) / h for h in range(1, 30) if f0 * h < 7000)
    wav = 0.1 * wav * (1 + 0.5 * np.sin(2 * np.pi * 3 * t)) + 0.003 * rng.normal(size=t.size)
    return wav.astype(np.float32)


def _corpus(tmp_path, name, kinds, seed):
    """A manifest of utterances u0, u1, ... whose audio is the given kinds of voice (ids do not depend on
    the audio: two corpora built here share every id)."""
    import pandas as pd
    import soundfile as sf

    from speaker_neurons.data.manifest import write_manifest

    rng = np.random.default_rng(seed)
    (tmp_path / name).mkdir()
    rows = []
    for i, kind in enumerate(kinds):
        p = tmp_path / name / f"u{i}.wav"
        sf.write(p, _voice(rng, kind), 16000, subtype="FLOAT")
        rows.append({"utt_id": f"u{i}", "path": str(p), "speaker": f"{kind}{i % 3}", "gender": "F" if kind == "H" else "M",
                     "split": "test" if i % 4 == 3 else "train", "duration": 1.5, "sample_rate": 16000})
    return write_manifest(pd.DataFrame(rows), tmp_path / name / "manifest.tsv")


# One i-vector dimension: these corpora vary in one way only (a low or a high voice; utterances of a kind
# differ by their noise alone), which one dimension of total variability holds. Further dimensions model
# the noise only, in directions as arbitrary as float rounding: with 4, the low and high voices' i-vectors
# (centred) met at cosines up to 0.6, and held to AVX2 one low utterance joined the high cluster; with 1
# they lie at cosine +1 within a kind and -1 across, with the native kernels and held to AVX2 alike.
IV_SMALL = {"ubm_components": 8, "ivector_dim": 1, "ubm_iters": 4, "tv_iters": 3, "utt_batch": 5}
CLUSTER_PARAMS = {"k": 2, "seed": 0, "n_init": 10, "stability_runs": 1, "stability_warn_below": 0.5}


@pytest.fixture(scope="module")
def analysed(tmp_path_factory):
    """An analysis corpus (L, H alternating) through rules ivectors and ivector_clusters."""
    from speaker_neurons.analysis.clusters import run_ivector_clusters

    d = tmp_path_factory.mktemp("analysis")
    man = _corpus(d, "ana", ["L", "H"] * 8, seed=0)
    f = {k: d / k for k in ("iv.ark", "iv.scp", "extractor.npz", "seeds.npz", "quality.json", "clusters.tsv", "purity.tsv",
                            "purity.png", "stability.json", "centres.npz", "partitions.tsv")}
    with iv.torch_threads(1):
        iv.run_ivectors(man, {**DEFAULTS["ivector"], **IV_SMALL}, 0, f["iv.ark"], f["iv.scp"], f["extractor.npz"],
                        f["seeds.npz"], f["quality.json"], num_threads=1)
    run_ivector_clusters(f["iv.scp"], man, None, CLUSTER_PARAMS, f["clusters.tsv"], f["partitions.tsv"], f["purity.tsv"],
                         f["purity.png"], f["stability.json"], f["centres.npz"])
    return d, man, f


def test_fitted_clusters_are_the_nearest_centres_renumbered_by_size():
    from speaker_neurons.analysis.clusters import assign_to_centres, fit_utterance_clusters

    rng = np.random.default_rng(4)
    x = np.concatenate([rng.normal(size=(30, 3)) + [5, 0, 0], rng.normal(size=(50, 3)) - [5, 0, 0]])
    labels, centres = fit_utterance_clusters(x, 2, seed=0, n_init=N_INIT)
    assert np.array_equal(labels, assign_to_centres(x, centres))
    assert (labels[30:] == 0).all() and (labels[:30] == 1).all()  # the larger cluster is 0
    assert np.allclose(centres[0], x[30:].mean(0)) and np.allclose(centres[1], x[:30].mean(0))


def test_assigning_the_analysis_corpus_from_its_audio_reproduces_its_clusters(analysed, tmp_path):
    """The assignment path (audio -> the saved extractor -> the saved centres) gives the analysis corpus'
    own utterances exactly the clusters rule ivector_clusters gave them: the same table, byte for byte."""
    from speaker_neurons.analysis.clusters import read_utterance_clusters, run_assign_ivector_clusters

    d, man, f = analysed
    got = read_utterance_clusters(f["clusters.tsv"])
    assert {got[f"u{i}"] for i in range(0, 16, 2)} != {got[f"u{i}"] for i in range(1, 16, 2)}  # L and H apart
    assert len({got[f"u{i}"] for i in range(0, 16, 2)}) == 1 and len({got[f"u{i}"] for i in range(1, 16, 2)}) == 1
    out = tmp_path / "assigned.tsv"
    with iv.torch_threads(1):
        rec = run_assign_ivector_clusters(man, "ana", man, "ana", f["extractor.npz"], f["centres.npz"], out)
    assert out.read_bytes() == f["clusters.tsv"].read_bytes()
    assert rec["utterances"] == 16 and sum(rec["sizes"]) == 16
    # the i-vectors themselves: those rule ivectors wrote (the corpus mean and the length normalisation)
    from speaker_neurons.data.manifest import read_manifest

    ids, written = iv.read_ivectors(f["iv.scp"])
    with iv.torch_threads(1):
        again_ids, again = iv.ivectors_of_manifest(read_manifest(man), iv.IVectorExtractor.load(f["extractor.npz"]),
                                                   progress=False)
    assert again_ids == ids and np.array_equal(again, written)


def test_an_extractor_trained_on_another_corpus_with_whitening_extracts_the_analysis_corpus(tmp_path):
    """stages.ivector_extractor: the UBM and T come from the other corpus (its longest utterances when
    tv_max_train_utts caps them), the post-processing from the analysis corpus; the extractor file carries the
    whitening, so assigning from audio reproduces the written i-vectors; a file whose config and content
    disagree is refused naming it."""
    from speaker_neurons.data.manifest import read_manifest

    ana = _corpus(tmp_path, "ana", ["L", "H"] * 6, seed=0)
    more = _corpus(tmp_path, "more", ["H", "L", "L"] * 6, seed=5)
    cfg = {**DEFAULTS["ivector"], **IV_SMALL, "whiten": True, "tv_max_train_utts": 10}
    f = {k: tmp_path / k for k in ("iv.ark", "iv.scp", "extractor.npz", "seeds.npz", "quality.json")}
    own = {k: tmp_path / f"own_{k}" for k in f}
    with iv.torch_threads(1):
        q = iv.run_ivectors(ana, cfg, 1, *f.values(), num_threads=1, train_manifest_path=more)
        iv.run_ivectors(ana, cfg, 0, *own.values(), num_threads=1)
    assert q["extractor_trained_on"]["utterances"] == 10 and q["extractor_trained_on"]["manifest"] == str(more)
    ext = iv.IVectorExtractor.load(f["extractor.npz"])
    assert ext.whitener is not None
    assert not np.array_equal(ext.ubm.means.numpy(), iv.IVectorExtractor.load(own["extractor.npz"]).ubm.means.numpy())
    ids, written = iv.read_ivectors(f["iv.scp"])
    assert ids == [f"u{i}" for i in range(12)] and np.allclose(np.linalg.norm(written, axis=1), 1, atol=1e-5)
    with iv.torch_threads(1):
        again_ids, again = iv.ivectors_of_manifest(read_manifest(ana), ext, progress=False)
    assert again_ids == ids and np.allclose(again, written, atol=1e-6)
    lo, hi = written[0::2], written[1::2]  # low and high voices on opposite sides
    assert (lo @ lo.mean(0) > 0).all() and (hi @ lo.mean(0) < 0).all()
    with np.load(f["extractor.npz"]) as z:
        arrays = {k: z[k] for k in z.files if k != "whitener"}
    np.savez(tmp_path / "broken.npz", **arrays)
    with pytest.raises(ValueError, match="broken.npz.*whiten=True.*re-run rule ivectors"):
        iv.IVectorExtractor.load(tmp_path / "broken.npz")


def test_clusters_of_an_evaluation_corpus_follow_its_own_audio_not_its_ids(analysed, tmp_path):
    """Two corpora sharing every utterance id, with the voices swapped: u0 is a low voice in the analysis
    corpus and a high one in the evaluation corpus. Each evaluation utterance gets the cluster of its own
    audio, which is the other cluster than the analysis utterance of the same id: a lookup by id would
    give every one of them the wrong cluster. The erase ablation's per-cluster groups follow the same
    table; the workflow's job stops on the shared ids, naming both corpora."""
    from speaker_neurons import erase
    from speaker_neurons.analysis.clusters import (assign_ivector_clusters, read_utterance_clusters,
                                                   run_assign_ivector_clusters, write_utterance_clusters)
    from speaker_neurons.data.manifest import read_manifest

    d, man, f = analysed
    ana = read_utterance_clusters(f["clusters.tsv"])
    low, high = ana["u0"], ana["u1"]
    ev_man = _corpus(tmp_path, "ev", ["H", "L"] * 5, seed=1)  # other draws, voices swapped against the ids
    ev = read_manifest(ev_man)
    with iv.torch_threads(1):
        got = assign_ivector_clusters(ev, f["extractor.npz"], f["centres.npz"], progress=False)
    expected = {f"u{i}": (high if i % 2 == 0 else low) for i in range(10)}
    assert got == expected
    assert all(got[u] != ana[u] for u in got)  # what an id join would have said, for every utterance
    write_utterance_clusters(got, tmp_path / "ev_clusters.tsv")
    test_ids = ev.loc[ev["split"] == "test", "utt_id"].tolist()
    groups = erase.cluster_groups(test_ids, tmp_path / "ev_clusters.tsv", "ev")
    assert groups.tolist() == [expected[u] for u in test_ids] and groups.tolist() != [ana[u] for u in test_ids]
    with pytest.raises(ValueError, match=r"corpora 'ana' and 'ev' share 10 utterance id\(s\), e\.g\. u0, u1"):
        run_assign_ivector_clusters(ev_man, "ev", man, "ana", f["extractor.npz"], f["centres.npz"],
                                    tmp_path / "never.tsv")
    assert not (tmp_path / "never.tsv").exists()


def test_the_erase_ablation_refuses_a_clusters_table_of_another_corpus(tmp_path):
    from speaker_neurons import erase
    from speaker_neurons.analysis.clusters import write_utterance_clusters

    write_utterance_clusters({"id10001-a-00001": 0, "id10001-a-00002": 1}, tmp_path / "c.tsv")
    assert erase.cluster_groups(["id10001-a-00002"], tmp_path / "c.tsv", "vox").tolist() == [1]
    with pytest.raises(ValueError, match=r"no i-vector cluster to 2 of the 3 test utterances of corpus 'libri'.*"
                                         r"e\.g\. 84-121123-0000"):
        erase.cluster_groups(["84-121123-0000", "id10001-a-00001", "84-121123-0001"], tmp_path / "c.tsv", "libri")


def test_cluster_centres_file_is_checked(tmp_path):
    from speaker_neurons.analysis.clusters import load_cluster_centres, save_cluster_centres
    from speaker_neurons.utils import save_npz

    c = np.arange(6, dtype=np.float64).reshape(2, 3)
    save_cluster_centres(tmp_path / "c.npz", c, 2, 0, 10, 3)
    assert np.array_equal(load_cluster_centres(tmp_path / "c.npz"), c)
    save_npz(tmp_path / "other.npz", {"T": c})
    with pytest.raises(ValueError, match="other.npz is not an i-vector cluster model"):
        load_cluster_centres(tmp_path / "other.npz")
