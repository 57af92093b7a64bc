"""`python -m speaker_neurons describe|dump` on a tiny saved model and generated audio."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from speaker_neurons.__main__ import main
from speaker_neurons.models import load_native, save_upstream
from speaker_neurons.models.melhubert import MelHuBERT

TINY = {"num_layers": 2, "hidden_dim": 32, "num_heads": 4, "ffn_dim": 24, "pos_conv_kernel": 8,
        "pos_conv_groups": 4, "frame_period": 20}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    torch.manual_seed(0)
    m = MelHuBERT(TINY)
    m.set_feature_stats(torch.full((40,), 8.0), torch.full((40,), 4.0))
    m.prune_ffn({2: list(range(0, 24, 3))})
    return save_upstream(m, tmp_path_factory.mktemp("cli") / "model", parent_sha256="0" * 64)


def test_describe(model_dir, capsys):
    assert main(["describe", str(model_dir)]) == 0
    out = capsys.readouterr().out
    assert "kind:        melhubert" in out and "layers:      2" in out and "native" in out
    assert "    1         24" in out and "    2          8" in out
    assert main(["describe", "--json", str(model_dir)]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["ffn_widths"] == [24, 8] and info["original_ffn_widths"] == [24, 24]
    assert info["param_counts"]["ffn_per_layer"] == [2 * 32 * 24 + 24 + 32, 2 * 32 * 8 + 8 + 32]


@pytest.mark.parametrize("sr,subtype", [(8000, "PCM_16"), (16000, "PCM_16"), (8000, "FLOAT"), (16000, "FLOAT"),
                                        (22050, "PCM_24")])
def test_dump(model_dir, tmp_path, write_audio, sr, subtype, capsys):
    rng = np.random.default_rng(sr)
    seconds = 0.53
    data = (0.2 * rng.standard_normal((int(seconds * sr), 2))).astype(np.float32)  # stereo: downmixed
    wav = write_audio(tmp_path / f"a_{sr}.wav", sr=sr, subtype=subtype, data=data)
    out = tmp_path / "sub" / "dump.npz"
    assert main(["dump", str(model_dir), wav, str(out)]) == 0
    z = np.load(out)
    model = load_native(model_dir)
    from speaker_neurons.audio import load_audio

    audio, _ = load_audio(wav, 16000)
    n = model.frames_for(len(audio))
    assert sorted(z.files) == sorted([f"hidden_{i}" for i in range(3)] + ["ffn_1", "ffn_2"])
    for i in range(3):
        assert z[f"hidden_{i}"].shape == (n, 32) and z[f"hidden_{i}"].dtype == np.float32
    assert z["ffn_1"].shape == (n, 24) and z["ffn_2"].shape == (n, 8)
    with torch.no_grad():
        ref = model(torch.from_numpy(audio)[None])
    assert np.allclose(z["hidden_2"], ref.hidden[2][0].numpy(), atol=1e-5)
    assert np.allclose(z["ffn_2"], ref.ffn[1][0].numpy(), atol=1e-5)


def test_errors(model_dir, tmp_path, capsys):
    missing = tmp_path / "missing_model"
    assert main(["describe", str(missing)]) == 2
    err = capsys.readouterr().err
    assert str(missing) in err and "no such file" in err and "Traceback" not in err

    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"this is not a checkpoint")
    assert main(["describe", str(junk)]) == 2
    assert str(junk) in capsys.readouterr().err

    other = tmp_path / "other.pt"
    torch.save({"something": torch.zeros(1)}, other)
    assert main(["describe", str(other)]) == 2
    err = capsys.readouterr().err
    assert "unknown checkpoint format" in err and str(other) in err

    (tmp_path / "emptydir").mkdir()
    assert main(["describe", str(tmp_path / "emptydir")]) == 2
    assert "unknown checkpoint format" in capsys.readouterr().err

    assert main(["dump", str(model_dir), str(tmp_path / "nope.wav"), str(tmp_path / "o.npz")]) == 2
    err = capsys.readouterr().err
    assert "nope.wav" in err

    notaudio = tmp_path / "notaudio.wav"
    notaudio.write_text("hello, not audio")
    assert main(["dump", str(model_dir), str(notaudio), str(tmp_path / "o.npz")]) == 2
    err = capsys.readouterr().err
    assert "notaudio.wav" in err
    assert not (tmp_path / "o.npz").exists()


def test_subprocess_exit_code(tmp_path):
    """The real entry point: exit status 2, one error line, no traceback."""
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    r = subprocess.run([sys.executable, "-m", "speaker_neurons", "describe", str(tmp_path / "absent")],
                       capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 2
    assert "absent" in r.stderr and "Traceback" not in r.stderr
