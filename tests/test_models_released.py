"""A released MelHuBERT checkpoint carries no fbank statistics: loading it needs `mean_std` (the mean-std.npy
shipped with it); without one the loader and `dump` stop with a CheckpointError naming the checkpoint and
`mean_std`, while `describe` still shows the structure with a note."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from test_models import ENTRY, MEL_TINY, to_released  # noqa: E402  (tests/ is on sys.path under pytest)

from speaker_neurons.__main__ import main
from speaker_neurons.models import CheckpointError, describe, load_upstream, save_upstream
from speaker_neurons.models.melhubert import MelHuBERT

HP = {"feat_emb_dim": 40, "encoder_layers": 2, "encoder_embed_dim": 32, "encoder_ffn_embed_dim": 48,
      "encoder_attention_heads": 4, "conv_pos": 8, "conv_pos_groups": 4}


@pytest.fixture(scope="module")
def released(tmp_path_factory):
    """(checkpoint path, mean-std.npy path, the model it was made from with those statistics)."""
    d = tmp_path_factory.mktemp("released")
    torch.manual_seed(0)
    model = MelHuBERT(dict(MEL_TINY))
    rng = np.random.default_rng(0)
    mean, std = rng.standard_normal(40), rng.random(40) + 0.5
    model.set_feature_stats(mean, std)
    torch.save({"Upstream_Config": {"melhubert": HP}, "model": to_released(model)}, d / "melhubert.ckpt")
    np.save(d / "mean-std.npy", np.stack([mean, std]))
    return d / "melhubert.ckpt", d / "mean-std.npy", model


@pytest.mark.parametrize("spec", [{"kind": "melhubert"}, {"kind": "auto"}, {"format": "melhubert"},
                                  {"kind": "melhubert", "mean_std": ""}])
def test_load_without_mean_std_is_an_error(released, spec):
    ckpt, _, _ = released
    with pytest.raises(CheckpointError, match="mean_std") as info:
        load_upstream(dict(ENTRY, **spec, path=str(ckpt)), device="cpu")
    err = info.value
    assert err.path == str(ckpt) and err.key == "mean_std"
    assert str(err).startswith(f"{ckpt}: a released MelHuBERT checkpoint stores no fbank normalisation")
    assert "`models`" in str(err) and "--mean-std" in str(err)


def test_load_with_mean_std(released):
    ckpt, ms, model = released
    loaded = load_upstream({**ENTRY, "kind": "melhubert", "path": str(ckpt), "mean_std": str(ms)}, device="cpu")
    assert torch.allclose(loaded.feature_mean, model.feature_mean) and torch.allclose(loaded.feature_std, model.feature_std)
    x = torch.randn(1, 4000) * 0.1
    with torch.no_grad():
        a, b = model(x), loaded(x)
    assert all(torch.allclose(h1, h2, atol=1e-5) for h1, h2 in zip(a.hidden, b.hidden))


def test_native_folder_needs_no_mean_std(released, tmp_path):
    ckpt, ms, model = released
    loaded = load_upstream({**ENTRY, "kind": "melhubert", "path": str(ckpt), "mean_std": str(ms)}, device="cpu")
    folder = save_upstream(loaded, tmp_path / "native")
    again = load_upstream({**ENTRY, "kind": "melhubert", "path": str(folder)}, device="cpu")
    assert torch.equal(again.feature_mean, loaded.feature_mean) and torch.equal(again.feature_std, loaded.feature_std)
    assert "note" not in describe(folder, "auto")


def test_describe_without_mean_std_notes_it(released, capsys):
    ckpt, ms, _ = released
    info = describe(ckpt, "auto")
    assert info["format"] == "melhubert" and info["ffn_widths"] == [48, 48]
    assert "mean_std" in info["note"]
    assert "note" not in describe(ckpt, "auto", mean_std=str(ms))
    assert main(["describe", str(ckpt)]) == 0
    out = capsys.readouterr().out
    assert "layers:      2" in out and "note: features need mean_std" in out
    assert main(["describe", "--json", str(ckpt)]) == 0
    assert "mean_std" in json.loads(capsys.readouterr().out)["note"]


def test_dump_without_mean_std_exits_with_the_message(released, tmp_path, write_audio, capsys):
    ckpt, ms, _ = released
    wav = write_audio(tmp_path / "a.wav", seconds=0.3)
    out = tmp_path / "o.npz"
    assert main(["dump", str(ckpt), wav, str(out)]) == 2
    err = capsys.readouterr().err
    assert str(ckpt) in err and "mean_std" in err and "--mean-std" in err and "Traceback" not in err
    assert not out.exists()
    assert main(["dump", "--mean-std", str(ms), str(ckpt), wav, str(out)]) == 0
    assert out.exists()
