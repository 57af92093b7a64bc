"""Session variability: the per-utterance recording channel of the demo corpus."""

from __future__ import annotations

import csv
import shutil

import numpy as np
import pytest
import soundfile as sf
from scipy.signal import sosfreqz

from speaker_neurons.config import defaults
from speaker_neurons.data import channel as ch
from speaker_neurons.data import synth

SR = 16000
CFG = defaults("corpus.demo.channel")


def _speechlike(seconds=2.0, seed=0):
    """A voiced buzz with pauses: an active part and silences, like an utterance."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SR)) / SR
    x = sum(np.sin(2 * np.pi * 150 * k * t) / k for k in range(1, 20)) * 0.1
    x *= (np.sin(2 * np.pi * 1.5 * t) > -0.3)
    return x + 1e-4 * rng.standard_normal(len(t))


def test_draw_is_a_function_of_the_generator_and_within_the_ranges():
    a = [ch.draw_channel(np.random.default_rng(i), CFG) for i in range(200)]
    b = [ch.draw_channel(np.random.default_rng(i), CFG) for i in range(200)]
    assert a == b
    for p in a:
        assert len(p["eq_freqs_hz"]) == CFG["eq_bands"]
        assert all(CFG["eq_freq_hz"][0] <= f <= CFG["eq_freq_hz"][1] for f in p["eq_freqs_hz"])
        assert all(abs(g) <= CFG["eq_gain_db"] for g in p["eq_gains_db"])
        assert CFG["highpass_hz"][0] <= p["highpass_hz"] <= CFG["highpass_hz"][1]
        assert CFG["lowpass_hz"][0] <= p["lowpass_hz"] <= CFG["lowpass_hz"][1]
        assert CFG["snr_db"][0] <= p["snr_db"] <= CFG["snr_db"][1]
        assert p["rt60_s"] == 0 or CFG["rt60_s"][0] <= p["rt60_s"] <= CFG["rt60_s"][1]
    reverberant = sum(p["rt60_s"] > 0 for p in a) / len(a)
    assert abs(reverberant - CFG["reverb_fraction"]) < 0.12


def test_peaking_filter_has_its_gain_at_its_centre():
    for gain in (-10.0, 6.0):
        sos = ch.peaking_sos(1000.0, gain, 1.0, SR)
        w, h = sosfreqz(sos, worN=[1000.0, 50.0, 7000.0], fs=SR)
        db = 20 * np.log10(np.abs(h))
        assert db[0] == pytest.approx(gain, abs=1e-6)
        assert abs(db[1]) < 0.5 and abs(db[2]) < 0.5  # far from the centre: flat


def test_noise_is_at_the_drawn_snr_and_the_level_is_kept():
    x = _speechlike()
    p = {"eq_freqs_hz": [], "eq_gains_db": [], "eq_qs": [], "highpass_hz": 20.0, "lowpass_hz": 7900.0, "rt60_s": 0.0,
         "drr_db": None, "noise": "white", "snr_db": 10.0, "noise_seed": 3}
    y = ch.apply_channel(x, p, SR)
    assert len(y) == len(x)
    assert ch.active_rms(y) == pytest.approx(ch.active_rms(x), rel=1e-9)
    clean = ch.apply_channel(x, {**p, "snr_db": 300.0}, SR)  # the filtered speech alone, at the same level
    n = ch.coloured_noise(len(x), "white", np.random.default_rng(3))  # the channel's noise draw (no room: first)
    (alpha, beta), *_ = np.linalg.lstsq(np.stack([clean, n], axis=1), y, rcond=None)
    assert np.abs(y - alpha * clean - beta * n).max() < 1e-9  # y is speech plus that noise, nothing else
    snr = 20 * np.log10(ch.active_rms(alpha * clean) / np.sqrt(np.mean((beta * n) ** 2)))
    assert snr == pytest.approx(10.0, abs=1e-6)


def test_pink_and_brown_noise_tilt_down():
    rng = np.random.default_rng(0)
    for colour, slope in (("white", 0.0), ("pink", -1.0), ("brown", -2.0)):
        x = ch.coloured_noise(2 ** 16, colour, rng)
        assert np.sqrt(np.mean(x ** 2)) == pytest.approx(1.0)
        f = np.fft.rfftfreq(len(x), 1 / SR)
        psd = np.abs(np.fft.rfft(x)) ** 2
        band = lambda lo, hi: psd[(f >= lo) & (f < hi)].mean()  # noqa: E731
        measured = np.log10(band(4000, 5000) / band(400, 500))  # one decade up
        assert measured == pytest.approx(slope, abs=0.15)


def test_room_response_decays_by_its_rt60_and_keeps_the_drr():
    rng = np.random.default_rng(1)
    h = ch.room_impulse_response(0.5, 6.0, SR, rng)
    assert h[0] == 1.0
    assert 10 * np.log10(1.0 / np.sum(h[1:] ** 2)) == pytest.approx(6.0, abs=1e-9)
    n = int(0.05 * SR)
    early, late = np.mean(h[1:n + 1] ** 2), np.mean(h[-n:] ** 2)
    assert 10 * np.log10(early / late) == pytest.approx(60.0 * (0.5 - 0.05) / 0.5, abs=6.0)


def test_reverberation_keeps_the_length_and_changes_the_signal():
    x = _speechlike()
    p = ch.draw_channel(np.random.default_rng(0), {**CFG, "reverb_fraction": 1.0})
    y = ch.apply_channel(x, p, SR)
    assert len(y) == len(x) and p["rt60_s"] > 0
    assert np.corrcoef(x, y)[0, 1] < 0.95


@pytest.mark.parametrize("key,value,match", [
    ("highpass_hz", [400, 50], "reversed"),
    ("lowpass_hz", [3400, 9000], "must lie in"),
    ("highpass_hz", [50, 4000], "must end below"),
])
def test_bad_channel_config_is_named(key, value, match):
    with pytest.raises(ValueError, match=f"corpus.demo.channel.*{match}"):
        ch.check_config({**CFG, key: value}, SR)


# ---- in the corpus ---------------------------------------------------------------------------------
NEEDED = ["espeak-ng", "mbrola", "flite", "festival", "pico2wave"]
missing = [p for p in NEEDED if shutil.which(p) is None]
SMALL = dict(seed=5, n_speakers=4, utterances_per_speaker=3, split=(1, 1, 1), voices=["us1", "slt", "us2", "awb"],
             min_duration=defaults("corpus.demo")["min_duration"], max_duration=defaults("corpus.demo")["max_duration"])


def _tsv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f, delimiter="\t"))


@pytest.fixture(scope="module")
def channel_corpora(tmp_path_factory):
    """(folder, summaries): the SMALL corpus synthesized clean, with channels, and with channels again on
    one worker; read-only for the tests below."""
    if missing:
        pytest.skip(f"synthesizers not installed: {missing} (make setup)")
    base = tmp_path_factory.mktemp("channels")
    clean = synth.synthesize_corpus(base / "clean", **SMALL, channel={**CFG, "enabled": False})
    noisy = synth.synthesize_corpus(base / "noisy", **SMALL, channel=CFG)
    again = synth.synthesize_corpus(base / "again", **SMALL, channel=CFG, workers=1)
    return base, (clean, noisy, again)


@pytest.mark.slow  # synthesizes corpora
@pytest.mark.skipif(bool(missing), reason=f"synthesizers not installed: {missing} (make setup)")
def test_corpus_with_channels(channel_corpora):
    tmp_path, (clean, noisy, again) = channel_corpora
    assert clean["channels"] is None and _tsv(tmp_path / "clean" / "channels.tsv") == []
    rows = _tsv(tmp_path / "noisy" / "channels.tsv")
    utts = _tsv(tmp_path / "noisy" / "utterances.tsv")
    assert [r["utt_id"] for r in rows] == [u["utt_id"] for u in utts]  # one channel per utterance
    assert list(rows[0]) == ["utt_id", "clean_path", *ch.CHANNEL_COLUMNS]
    assert len({r["eq_freqs_hz"] for r in rows}) == len(rows)  # every utterance its own channel
    assert noisy["parameters"]["channel"]["snr_db"] == CFG["snr_db"]
    # the same utterances, durations, texts and phone timings; other audio
    assert utts == _tsv(tmp_path / "clean" / "utterances.tsv")
    assert (tmp_path / "noisy" / "phones.tsv").read_bytes() == (tmp_path / "clean" / "phones.tsv").read_bytes()
    for u in utts:
        a, _ = sf.read(tmp_path / "clean" / u["path"], dtype="int16")
        b, _ = sf.read(tmp_path / "noisy" / u["path"], dtype="int16")
        assert len(a) == len(b) and not np.array_equal(a, b)
        assert (tmp_path / "again" / u["path"]).read_bytes() == (tmp_path / "noisy" / u["path"]).read_bytes()
    # the clean copy of each utterance (denoising targets) is the clean corpus' audio, byte for byte
    for r, u in zip(rows, utts):
        assert r["clean_path"] == "clean/" + u["path"][4:]
        assert (tmp_path / "noisy" / r["clean_path"]).read_bytes() == (tmp_path / "clean" / u["path"]).read_bytes()


@pytest.mark.slow  # synthesizes a corpus (the one of test_corpus_with_channels, shared)
@pytest.mark.skipif(bool(missing), reason=f"synthesizers not installed: {missing} (make setup)")
def test_denoising_targets_come_from_the_clean_copies(channel_corpora, tmp_path):
    """targets_audio clean: the model reads the channel's audio and predicts the clusters of the clean copy."""
    import torch

    from speaker_neurons.data.manifest import write_manifest
    from speaker_neurons.data.recipes.demo import demo_manifest
    from speaker_neurons.kmeans import assign
    from speaker_neurons.models.melhubert import MelHuBERT
    from speaker_neurons.pretrain.data import clean_audio_paths, compute_features, normalise_features, \
        prepare_training_data

    corpus = channel_corpora[0] / "noisy"  # SMALL with channels (CFG), as this test synthesized it before
    write_manifest(demo_manifest(corpus), tmp_path / "m.tsv")
    cfg = {**defaults("pretrain.train"), "n_clusters": 8, "kmeans_max_frames": 5000, "progress": False,
           "splits": None}
    clean = clean_audio_paths(corpus)
    model = MelHuBERT({**defaults("pretrain.model"), "hidden_dim": 32, "num_heads": 2, "ffn_dim": 64, "num_layers": 1,
                       "pos_conv_kernel": 8, "pos_conv_groups": 2})
    plain = prepare_training_data(tmp_path / "m.tsv", model, cfg, fit_stats=True)
    denoise = prepare_training_data(tmp_path / "m.tsv", model, cfg, fit_stats=False, target_paths=clean)
    assert all(torch.equal(a, b) for a, b in zip(plain.feats, denoise.feats))  # the same input
    ids = sorted(clean)
    raw, n10 = compute_features(model, [clean[u] for u in ids], progress=False)
    clean_feats = normalise_features(model, raw, n10)
    for f, t in zip(clean_feats, denoise.targets):  # every frame's target: its clean frame's nearest centre
        assert np.array_equal(assign(f, denoise.centers), t.numpy())
    assert any(not torch.equal(a, b) for a, b in zip(plain.targets, denoise.targets))
    # continued training with given centres labels the clean copies too
    again = prepare_training_data(tmp_path / "m.tsv", model, cfg, fit_stats=False, centers=denoise.centers,
                                  target_paths=clean)
    assert all(torch.equal(a, b) for a, b in zip(again.targets, denoise.targets))
    with pytest.raises(ValueError, match="no clean audio"):
        prepare_training_data(tmp_path / "m.tsv", model, cfg, fit_stats=False, target_paths={})


def test_clean_targets_need_the_channels_table(tmp_path):
    from speaker_neurons.pretrain.data import clean_audio_paths

    with pytest.raises(FileNotFoundError, match="channels.tsv does not exist"):
        clean_audio_paths(tmp_path)
    (tmp_path / "channels.tsv").write_text("utt_id\tclean_path\na\t\n")
    with pytest.raises(ValueError, match="keep_clean: true"):
        clean_audio_paths(tmp_path)
