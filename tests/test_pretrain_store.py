"""The file-backed training data of pre-training (speaker_neurons.pretrain.store): what it streams equals the
in-memory computation frame for frame, and a complete store is reused while a stale or unfinished one is
rebuilt."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import soundfile as sf
import torch
from test_pretrain import _synth_corpus

import speaker_neurons.kmeans as kmeans_module
from speaker_neurons.config import defaults
from speaker_neurons.kmeans import assign, cluster_utterance_frames
from speaker_neurons.models.melhubert import MelHuBERT
from speaker_neurons.pretrain import data as pdata
from speaker_neurons.pretrain.data import compute_features, feature_stats, normalise_features, prepare_training_data

MODEL = {**defaults("pretrain.model"), "hidden_dim": 32, "num_heads": 2, "ffn_dim": 64, "num_layers": 1,
         "pos_conv_kernel": 8, "pos_conv_groups": 2}  # 20 ms frames: stacked rows, odd last frames
CFG = {**defaults("pretrain.train"), "n_clusters": 8, "kmeans_max_frames": 700, "progress": False, "splits": None,
       "mask_length": 10}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """8 utterances of 2-3 s, one of 0.15 s (shorter than a mask span: left out), and a noisy copy of each
    (the same length) as the 'clean' target audio."""
    root = tmp_path_factory.mktemp("store")
    manifest = _synth_corpus(root / "c", n_utts=8, seed=4)
    rng = np.random.default_rng(1)
    short = root / "c" / "wav" / "short.wav"
    sf.write(str(short), (0.1 * rng.normal(size=2400)).astype(np.float32), 16000, subtype="PCM_16")
    lines = manifest.read_text().splitlines()
    lines.insert(3, f"u03a\t{short}\tspk0\tF\ttrain\t0.150\t16000")
    manifest.write_text("\n".join(lines) + "\n")
    clean = {}
    for line in lines[1:]:
        u, path = line.split("\t")[:2]
        x, sr = sf.read(path, dtype="float32")
        out = root / "c" / f"{u}_other.wav"
        sf.write(str(out), np.clip(x + 0.05 * rng.normal(size=len(x)), -1, 1).astype(np.float32), sr,
                 subtype="PCM_16")
        clean[u] = str(out)
    return manifest, clean


def _model():
    torch.manual_seed(0)
    return MelHuBERT(MODEL)


def _reference(manifest, cfg, clean=None):
    """The in-memory computation (features of every file, corpus statistics, normalisation, k-means)."""
    from speaker_neurons.data.manifest import read_manifest

    df = pdata.select_rows(read_manifest(manifest), cfg["splits"], cfg["max_utterances"], int(cfg["seed"]))
    model = _model()
    raw, n10 = compute_features(model, df["path"].tolist(), progress=False)
    model.set_feature_stats(*feature_stats(raw, n10, model.n_mels))
    feats = normalise_features(model, raw, n10)
    keep = [i for i, f in enumerate(feats) if len(f) >= int(cfg["mask_length"])]
    feats = [feats[i] for i in keep]
    target_feats = feats
    if clean is not None:
        raw_t, n10_t = compute_features(model, [clean[df["utt_id"].iloc[i]] for i in keep], progress=False)
        target_feats = normalise_features(model, raw_t, n10_t)
    targets, km = cluster_utterance_frames(
        target_feats, int(cfg["n_clusters"]), max_frames=int(cfg["kmeans_max_frames"]), seed=int(cfg["seed"]),
        batch_size=int(cfg["kmeans_batch_size"]), max_iter=int(cfg["kmeans_max_iter"]), n_init=int(cfg["kmeans_n_init"]))
    return model, feats, targets, km, len(df)


@pytest.mark.parametrize("denoise", [False, True])
def test_streamed_data_equals_the_in_memory_computation(corpus, tmp_path, denoise):
    manifest, clean = corpus
    ref_model, ref_feats, ref_targets, ref_km, n_rows = _reference(manifest, CFG, clean if denoise else None)
    model = _model()
    data = prepare_training_data(manifest, model, CFG, fit_stats=True, target_paths=clean if denoise else None,
                                 work_dir=tmp_path / "w")
    assert n_rows == 9 and len(data.feats) == len(ref_feats) == 8  # the short utterance is left out
    assert torch.equal(model.feature_mean, ref_model.feature_mean)
    assert torch.equal(model.feature_std, ref_model.feature_std)
    assert any(len(f) * 2 > n for f, n in zip(ref_feats, data.feats.n10))  # an odd last 10 ms frame is read
    assert np.array_equal(data.lengths, [len(f) for f in ref_feats])
    for i, (f, t) in enumerate(zip(ref_feats, ref_targets)):
        assert torch.equal(data.feats[i], f), i  # normalised, the zero partner of an odd last frame zero
        assert torch.equal(data.targets[i], torch.from_numpy(t)), i
        n = len(f)
        for s, e in ((0, n), (3, n), (1, n - 2), (n - 1, n)):  # what training crops read
            x, y = data.segment(i, s, e)
            assert torch.equal(x, f[s:e]) and torch.equal(y, torch.from_numpy(t[s:e])), (i, s, e)
    assert np.array_equal(data.centers, ref_km["centers"])
    assert data.kmeans == {"inertia": ref_km["inertia"], "fit_frames": 700, "total_frames": ref_km["total_frames"]}
    assert np.array_equal(np.concatenate(list(data.target_chunks())), np.concatenate(ref_targets))
    assert np.array_equal(data.target_counts(), ref_km["counts"])
    assert (tmp_path / "w" / "features" / "clean.f32").exists() == denoise
    # given centres (continued pre-training): every frame labelled by them
    again = prepare_training_data(manifest, _model(), CFG, fit_stats=True, centers=data.centers,
                                  target_paths=clean if denoise else None, work_dir=tmp_path / "w2")
    assert again.kmeans == {"given_centers": True, "total_frames": ref_km["total_frames"]}
    assert all(torch.equal(a, b) for a, b in zip(again.targets, data.targets))


def test_a_complete_store_is_reused_and_a_stale_or_unfinished_one_rebuilt(corpus, tmp_path, monkeypatch, caplog):
    manifest, _ = corpus
    work = tmp_path / "w"
    calls = {"fbank": 0, "kmeans": 0}
    raw_features, fit_kmeans = pdata._raw_features, kmeans_module.fit_kmeans

    def counting_fbank(*a, **k):
        calls["fbank"] += 1
        return raw_features(*a, **k)

    def counting_kmeans(*a, **k):
        calls["kmeans"] += 1
        return fit_kmeans(*a, **k)

    monkeypatch.setattr(pdata, "_raw_features", counting_fbank)
    monkeypatch.setattr("speaker_neurons.kmeans.fit_kmeans", counting_kmeans)

    def run(cfg=CFG):
        model = _model()
        d = prepare_training_data(manifest, model, cfg, fit_stats=True, work_dir=work)
        return model, [f.clone() for f in d.feats], [t.clone() for t in d.targets]

    model1, feats1, targets1 = run()
    assert calls == {"fbank": 9, "kmeans": 1}
    model2, feats2, targets2 = run()  # complete: read as it is (a resumed job)
    assert calls == {"fbank": 9, "kmeans": 1}
    assert torch.equal(model1.feature_mean, model2.feature_mean) and torch.equal(model1.feature_std, model2.feature_std)
    assert all(torch.equal(a, b) for a, b in zip(feats1, feats2))
    assert all(torch.equal(a, b) for a, b in zip(targets1, targets2))

    run({**CFG, "n_clusters": 6})  # other targets: the features are reused, the k-means is not
    assert calls == {"fbank": 9, "kmeans": 2}

    # a job killed during the feature pass leaves only features.tmp: started again, the pass is redone
    (work / "features").rename(work / "features.tmp")
    model3, feats3, targets3 = run()
    assert calls == {"fbank": 18, "kmeans": 3}
    assert not (work / "features.tmp").exists() and not (work / "targets.tmp").exists()
    assert all(torch.equal(a, b) for a, b in zip(feats1, feats3))
    assert all(torch.equal(a, b) for a, b in zip(targets1, targets3))

    # a killed k-means / labelling pass: only the targets are redone
    (work / "targets").rename(work / "targets.tmp")
    run()
    assert calls == {"fbank": 18, "kmeans": 4}

    # an input that changed (another file at the same path) rebuilds the store
    path = manifest.read_text().splitlines()[1].split("\t")[1]
    x, sr = sf.read(path, dtype="float32")
    sf.write(path, x[::-1].copy(), sr, subtype="PCM_16")
    model4, feats4, targets4 = run()
    assert calls == {"fbank": 27, "kmeans": 5}

    # a finished part whose file changed afterwards (one byte altered; a file cut short) is rebuilt, with a
    # warning naming the file, and gives what it gave before: never used as it is
    f = work / "features" / "input.f32"
    data = bytearray(f.read_bytes())
    data[100] ^= 0xFF
    f.write_bytes(bytes(data))
    with caplog.at_level(logging.WARNING):
        model5, feats5, targets5 = run()
    assert calls["fbank"] == 36 and f"{f} does not hold the bytes recorded" in caplog.text
    assert all(torch.equal(a, b) for a, b in zip(feats4, feats5))
    labels = next((work / "targets").glob("labels.*"))
    size = labels.stat().st_size
    labels.write_bytes(labels.read_bytes()[:-2])
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        _, _, targets6 = run()
    assert calls["fbank"] == 36  # only the targets are rebuilt
    assert f"{labels} is {size - 2} bytes where {size} bytes were recorded in info.json (truncated or replaced)" in caplog.text
    assert labels.stat().st_size == size and all(torch.equal(a, b) for a, b in zip(targets5, targets6))


def test_stored_reads_check_their_ranges(corpus, tmp_path):
    manifest, _ = corpus
    data = prepare_training_data(manifest, _model(), CFG, work_dir=tmp_path / "w")
    n = int(data.lengths[0])
    with pytest.raises(IndexError):
        data.segment(0, 0, n + 1)
    with pytest.raises(IndexError):
        data.feats[len(data.feats)]
    assert torch.equal(data.feats[-1], data.feats[len(data.feats) - 1])
    assert data.dim == 80 and assign(data.feats[0], data.centers).shape == (n,)


# ------------------------------------------------------------------------------------------ targets from a teacher
def _teacher():
    torch.manual_seed(5)
    m = MelHuBERT({**MODEL, "num_layers": 2})
    m.set_feature_stats(np.linspace(-4.0, 2.0, m.n_mels), np.linspace(0.5, 3.0, m.n_mels))
    return m.eval()


def test_teacher_targets_streamed_equal_the_in_memory_computation(corpus, tmp_path, monkeypatch):
    """The teacher's hidden states go to the store and come back as they were computed; k-means on the sample read
    back and the chunked labelling give the centres, record and labels of the in-memory computation (k-means of
    every utterance's hidden states); given centres label every frame by its own hidden state; a complete part is
    reused, another teacher's rebuilt; teacher_centers gives the same centres and removes its store."""
    import copy
    import json

    from speaker_neurons.data.manifest import read_manifest
    from speaker_neurons.pretrain import teacher as pteacher
    from speaker_neurons.pretrain import teacher_centers

    manifest, _ = corpus
    teacher, layer = _teacher(), 1
    student = copy.deepcopy(teacher)  # a pruned copy keeps its root's statistics: its features are the teacher's
    student.prune_ffn({1: list(range(0, 64, 3))})
    # in memory: features, every utterance's hidden states, k-means of all of them
    df = pdata.select_rows(read_manifest(manifest), CFG["splits"], CFG["max_utterances"], int(CFG["seed"]))
    raw, n10 = compute_features(student, df["path"].tolist(), progress=False)
    feats = [f for f in normalise_features(student, raw, n10) if len(f) >= CFG["mask_length"]]
    with torch.no_grad():
        hidden = [teacher.encode(f[None], return_ffn=False).hidden[layer][0].float() for f in feats]
    kw = dict(max_frames=CFG["kmeans_max_frames"], seed=CFG["seed"], batch_size=CFG["kmeans_batch_size"],
              max_iter=CFG["kmeans_max_iter"], n_init=CFG["kmeans_n_init"])
    ref_targets, ref = cluster_utterance_frames(hidden, CFG["n_clusters"], **kw)
    assert ref["fit_frames"] == 700 < ref["total_frames"]  # a sample: its indices must hit the right rows

    calls = {"teacher": 0}
    write_hidden = pteacher._write_hidden

    def counting(*a, **k):
        calls["teacher"] += 1
        return write_hidden(*a, **k)

    monkeypatch.setattr(pteacher, "_write_hidden", counting)
    work = tmp_path / "w"
    inputs = pdata.prepare_features(manifest, student, CFG, fit_stats=False, work_dir=work)
    data = pteacher.teacher_training_data(inputs, teacher, layer, CFG, None)  # HuBERT's second iteration
    assert len(data.feats) == len(feats) == 8 and calls["teacher"] == 1
    stored, _ = pteacher.hidden_states(teacher, inputs, layer)
    assert calls["teacher"] == 1  # complete: reused
    assert np.array_equal(stored.offsets, np.cumsum([0] + [len(h) for h in hidden]))
    for i, (f, h, t) in enumerate(zip(feats, hidden, ref_targets)):
        assert torch.equal(data.feats[i], f) and torch.equal(stored[i], h), i
        assert torch.equal(data.targets[i], torch.from_numpy(t)), i
        n = len(t)
        for s, e in ((0, n), (2, n), (n - 1, n)):
            assert torch.equal(data.segment(i, s, e)[1], torch.from_numpy(t[s:e])), (i, s, e)
    rows = [x for _, x in stored.chunks(97)]  # chunks that straddle utterances
    assert torch.equal(torch.cat(rows), torch.cat(hidden))
    assert np.array_equal(data.centers, ref["centers"])
    assert data.kmeans == {"inertia": ref["inertia"], "fit_frames": 700, "total_frames": ref["total_frames"],
                           "teacher_layer": layer}
    assert np.array_equal(data.target_counts(), ref["counts"])

    # given centres (a chain from a released root): each frame's nearest centre to its own hidden state
    rng = np.random.default_rng(0)
    centers = torch.cat(hidden)[rng.choice(ref["total_frames"], 8, replace=False)].numpy()
    given = pteacher.teacher_training_data(inputs, teacher, layer, CFG, centers)
    assert calls["teacher"] == 1 and given.kmeans == {"given_centers": True, "teacher_layer": layer,
                                                      "total_frames": ref["total_frames"]}
    want = np.split(assign(torch.cat(hidden), centers), np.cumsum([len(h) for h in hidden])[:-1])
    assert all(np.array_equal(t.numpy(), w) for t, w in zip(given.targets, want))
    assert len(np.unique(np.concatenate(want))) > 1

    other = _teacher()
    with torch.no_grad():
        other.encoder.feature_projection.projection.weight.mul_(1.5)
    pteacher.hidden_states(other, inputs, layer)
    assert calls["teacher"] == 2  # another teacher's hidden states are not reused

    # rule teacher_targets: the teacher's own features; the store in its resume folder, removed on success
    rec = teacher_centers(teacher, manifest, CFG, layer, None, tmp_path / "c.npy", tmp_path / "r.json",
                          work_dir=tmp_path / "resume")
    assert np.array_equal(np.load(tmp_path / "c.npy"), ref["centers"]) and not (tmp_path / "resume").exists()
    assert rec == json.loads((tmp_path / "r.json").read_text()) == {
        "teacher_layer": layer, "n_clusters": 8, "dim": 32, "utterances": 8, "inertia": ref["inertia"],
        "fit_frames": 700, "total_frames": ref["total_frames"]}
