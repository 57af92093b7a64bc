import math
import pickle

import numpy as np
import pytest
import soundfile as sf
import torch
import torchaudio.functional as taf

from speaker_neurons.audio import AudioError, kaldi_num_frames, load_audio


def test_mono_16k_pcm_is_returned_unchanged(tmp_path, write_audio):
    p = write_audio(tmp_path / "a.wav", seconds=0.5)
    ref, _ = sf.read(p, dtype="float32")
    x, sr = load_audio(p, 16000)
    assert sr == 16000
    assert x.dtype == np.float32 and x.ndim == 1
    assert x.shape == (8000,)
    np.testing.assert_array_equal(x, ref)
    assert 0.25 < np.abs(x).max() <= 0.3 + 1e-4  # scaled to [-1, 1], not raw int16


def test_stereo_is_downmixed_by_mean(tmp_path, write_audio):
    data = np.stack([np.full(1600, 0.5), np.full(1600, 0.1)], axis=1).astype(np.float32)
    p = write_audio(tmp_path / "st.wav", data=data, subtype="FLOAT")
    x, sr = load_audio(p, 16000)
    assert sr == 16000 and x.shape == (1600,)
    np.testing.assert_allclose(x, 0.3, atol=1e-7)


def test_resample_44k_stereo_to_16k(tmp_path, write_audio):
    n = 30316
    t = np.arange(n) / 44100
    left = 0.4 * np.sin(2 * np.pi * 440.0 * t)
    data = np.stack([left, 0.5 * left], axis=1).astype(np.float32)
    p = write_audio(tmp_path / "b.wav", data=data, sr=44100, subtype="FLOAT")
    x, sr = load_audio(p, 16000)
    assert sr == 44100  # the native rate is reported
    assert x.shape == (math.ceil(n * 16000 / 44100),)
    expected = taf.resample(torch.from_numpy(data.mean(axis=1)), 44100, 16000).numpy()
    np.testing.assert_allclose(x, expected, atol=1e-6)
    spectrum = np.abs(np.fft.rfft(x))
    peak_hz = np.argmax(spectrum) * 16000 / len(x)
    assert abs(peak_hz - 440.0) < 3.0


def test_target_sr_other_than_16k(tmp_path, write_audio):
    p = write_audio(tmp_path / "c.wav", seconds=1.0, sr=16000)
    x, sr = load_audio(p, target_sr=8000)
    assert sr == 16000 and x.shape == (8000,)


def test_flac_is_read(tmp_path, write_audio):
    p = write_audio(tmp_path / "d.flac", seconds=0.25)
    x, sr = load_audio(p, 16000)
    assert sr == 16000 and x.shape == (4000,)


def test_missing_file(tmp_path):
    p = tmp_path / "nope.wav"
    with pytest.raises(AudioError) as ei:
        load_audio(p, 16000)
    e = ei.value
    assert e.code == "missing" and e.path == str(p)
    assert str(p) in str(e) and "not found" in str(e)


def test_text_file_is_not_audio(tmp_path):
    p = tmp_path / "fake.wav"
    p.write_text("this is not audio\n")
    with pytest.raises(AudioError) as ei:
        load_audio(p, 16000)
    e = ei.value
    assert e.code == "unreadable"
    assert str(p) in str(e) and "not a readable audio file" in e.reason
    assert e.fix and "fix:" in str(e)


def test_empty_and_non_finite_files(tmp_path, write_audio):
    empty = write_audio(tmp_path / "empty.wav", data=np.zeros(0, np.float32))
    with pytest.raises(AudioError) as ei:
        load_audio(empty, 16000)
    assert ei.value.code == "empty" and empty in str(ei.value)

    data = np.full(1600, 0.1, np.float32)
    data[[5, 9]] = [np.nan, np.inf]
    bad = write_audio(tmp_path / "nan.wav", data=data, subtype="FLOAT")
    with pytest.raises(AudioError) as ei:
        load_audio(bad, 16000)
    assert ei.value.code == "non_finite" and "2 of 1600" in ei.value.reason


def test_audio_error_pickles():
    e = AudioError("/x.wav", "broken", "re-export", code="empty")
    f = pickle.loads(pickle.dumps(e))
    assert (f.path, f.reason, f.fix, f.code, str(f)) == (e.path, e.reason, e.fix, e.code, str(e))


@pytest.mark.parametrize(
    "n,frames", [(0, 0), (399, 0), (400, 1), (559, 1), (560, 2), (16000, 98), (160000, 998)]
)
def test_kaldi_num_frames(n, frames):
    assert kaldi_num_frames(n) == frames


def test_kaldi_num_frames_array_and_custom_window():
    np.testing.assert_array_equal(kaldi_num_frames(np.array([0, 400, 16000])), [0, 1, 98])
    assert kaldi_num_frames(1000, win=200, hop=100) == 9
