"""Hugging Face folder reader: parity with transformers' own forward, name mapping, errors.

Needs `transformers` (requirements/parity.txt) to build reference models; the reader itself does not.
"""

from __future__ import annotations

import json
import logging

import pytest
import torch
import torchaudio

transformers = pytest.importorskip(
    "transformers", reason="transformers is optional (requirements/parity.txt); needed for the HF parity tests"
)

from safetensors.torch import load_file, save_file  # noqa: E402

from speaker_neurons.models.errors import CheckpointError, UnsafeCheckpointError  # noqa: E402
from speaker_neurons.models.hf import is_hf_folder, read_hf_folder  # noqa: E402

transformers.logging.set_verbosity_error()

SMALL = dict(hidden_size=16, num_hidden_layers=3, num_attention_heads=2, intermediate_size=24,
             conv_dim=(8, 8, 8), conv_kernel=(10, 3, 2), conv_stride=(5, 2, 2),
             num_conv_pos_embeddings=8, num_conv_pos_embedding_groups=2)
WAVLM = dict(num_buckets=16, max_bucket_distance=40)


def make_hf(model_type: str, cls_suffix: str, stable: bool, seed: int = 0):
    prefix = {"wav2vec2": "Wav2Vec2", "hubert": "Hubert", "wavlm": "WavLM"}[model_type]
    cfg_cls = getattr(transformers, f"{prefix}Config")
    kwargs = dict(SMALL, do_stable_layer_norm=stable, feat_extract_norm="layer" if stable else "group",
                  conv_bias=stable, vocab_size=7)
    if model_type == "wavlm":
        kwargs.update(WAVLM)
    torch.manual_seed(seed)
    model = getattr(transformers, f"{prefix}{cls_suffix}")(cfg_cls(**kwargs))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)  # layer norms away from (1, 0), biases and gates non-trivial
    return model.eval()


def base_of(model, model_type):
    return getattr(model, model_type, model)


def load_torchaudio(config, state):
    kw = {k: v for k, v in config.items() if k not in ("model_type", "normalize_waveform")}
    fn = torchaudio.models.wavlm_model if config["model_type"] == "wavlm" else torchaudio.models.wav2vec2_model
    model = fn(**kw)
    model.load_state_dict(state, strict=True)
    return model.eval()


def torchaudio_hidden(model, wav):
    """HF's hidden_states convention: the input of layer 1, each layer's output, the last one after the
    final layer norm (pre-LN models)."""
    captured = {}
    hook = model.encoder.transformer.layers[0].register_forward_pre_hook(
        lambda _m, args: captured.setdefault("x", args[0].clone())
    )
    with torch.no_grad():
        layers, _ = model.extract_features(wav)
        final, _ = model(wav)
    hook.remove()
    return [captured["x"], *layers[:-1], final]


def assert_parity(hf_model, model_type, config, state, tol=1e-4):
    wav = torch.randn(2, 4000, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        hf_out = base_of(hf_model, model_type)(wav, output_hidden_states=True)
    ours = torchaudio_hidden(load_torchaudio(config, state), wav)
    assert len(ours) == len(hf_out.hidden_states) == config["encoder_num_layers"] + 1
    for i, (a, b) in enumerate(zip(ours, hf_out.hidden_states)):
        assert a.shape == b.shape
        assert (a - b).abs().max().item() <= tol, f"hidden state {i} differs"
    assert (ours[-1] - hf_out.last_hidden_state).abs().max().item() <= tol


CASES = [
    ("wav2vec2", "Model", False, True),
    ("wav2vec2", "ForPreTraining", True, False),
    ("hubert", "Model", False, False),
    ("hubert", "ForCTC", True, True),
    ("wavlm", "Model", True, True),
    ("wavlm", "ForCTC", False, False),
]


CASE_IDS = [f"{c[0]}-{c[1]}-{'preLN' if c[2] else 'postLN'}-{'st' if c[3] else 'bin'}" for c in CASES]


@pytest.mark.parametrize("model_type,suffix,stable,safetensors", CASES, ids=CASE_IDS)
def test_parity_with_transformers(tmp_path, model_type, suffix, stable, safetensors):
    model = make_hf(model_type, suffix, stable)
    model.save_pretrained(tmp_path, safe_serialization=safetensors)
    assert (tmp_path / ("model.safetensors" if safetensors else "pytorch_model.bin")).is_file()
    assert is_hf_folder(tmp_path)
    config, state, dropped = read_hf_folder(tmp_path)
    assert config["model_type"] == model_type
    assert config["encoder_layer_norm_first"] is stable
    assert config["extractor_mode"] == ("layer_norm" if stable else "group_norm")
    assert config["extractor_conv_bias"] is stable
    assert config["extractor_conv_layer_config"] == [[8, 10, 5], [8, 3, 2], [8, 2, 2]]
    if model_type == "wavlm":
        assert (config["encoder_num_buckets"], config["encoder_max_distance"]) == (16, 40)
    # every tensor of the file is used or listed as dropped
    prefix = f"{model_type}." if suffix != "Model" else ""
    n_file = len(model.state_dict())
    n_used = n_file - len(dropped)
    if model_type == "wavlm":  # q, k, v are packed into one torchaudio tensor (weight and bias)
        n_used -= 4 * config["encoder_num_layers"]
    assert n_used == len(state)
    assert f"{prefix}masked_spec_embed" in dropped
    if suffix == "ForCTC":
        assert {"lm_head.weight", "lm_head.bias"} <= set(dropped)
    if suffix == "ForPreTraining":
        assert {"project_q.weight", "project_hid.weight", "quantizer.codevectors"} <= set(dropped)
    assert_parity(model, model_type, config, state)


def test_old_weight_norm_names_and_shards(tmp_path):
    # older transformers wrote weight_g / weight_v; big models come in shards with an index
    model = make_hf("wav2vec2", "Model", False, seed=4)
    model.save_pretrained(tmp_path)
    st = load_file(tmp_path / "model.safetensors")
    for old, new in (("weight_g", "original0"), ("weight_v", "original1")):
        st[f"encoder.pos_conv_embed.conv.{old}"] = st.pop(f"encoder.pos_conv_embed.conv.parametrizations.weight.{new}")
    (tmp_path / "model.safetensors").unlink()
    names = sorted(st)
    half = len(names) // 2
    shards = {"model-00001-of-00002.safetensors": names[:half], "model-00002-of-00002.safetensors": names[half:]}
    weight_map = {}
    for shard, keys in shards.items():
        save_file({k: st[k].contiguous() for k in keys}, tmp_path / shard, metadata={"format": "pt"})
        weight_map.update({k: shard for k in keys})
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    config, state, _ = read_hf_folder(tmp_path)
    assert_parity(model, "wav2vec2", config, state)


def test_normalize_flag(tmp_path, caplog):
    model = make_hf("hubert", "Model", False)
    model.save_pretrained(tmp_path)
    with caplog.at_level(logging.WARNING, logger="speaker_neurons"):
        assert read_hf_folder(tmp_path)[0]["normalize_waveform"] is False
    assert "preprocessor_config.json" in caplog.text
    (tmp_path / "preprocessor_config.json").write_text(json.dumps({"do_normalize": True, "sampling_rate": 16000}))
    assert read_hf_folder(tmp_path)[0]["normalize_waveform"] is True
    assert read_hf_folder(tmp_path, normalize=False)[0]["normalize_waveform"] is False
    (tmp_path / "preprocessor_config.json").write_text(json.dumps({"do_normalize": False}))
    assert read_hf_folder(tmp_path)[0]["normalize_waveform"] is False


def _saved(tmp_path, model_type="wav2vec2", suffix="Model"):
    model = make_hf(model_type, suffix, False)
    model.save_pretrained(tmp_path)
    return tmp_path / "model.safetensors"


def test_unknown_key_is_an_error(tmp_path):
    f = _saved(tmp_path)
    st = load_file(f)
    st["encoder.layers.0.attention.extra.weight"] = torch.zeros(2)
    save_file(st, f)
    with pytest.raises(CheckpointError, match=r"encoder\.layers\.0\.attention\.extra\.weight") as info:
        read_hf_folder(tmp_path)
    assert str(f) in str(info.value)


def test_unknown_top_level_key_of_head_model_is_an_error(tmp_path):
    f = _saved(tmp_path, "hubert", "ForCTC")
    st = load_file(f)
    st["adapter.weight"] = torch.zeros(2)
    save_file(st, f)
    with pytest.raises(CheckpointError, match=r"adapter\.weight"):
        read_hf_folder(tmp_path)


def test_missing_key_is_an_error(tmp_path):
    f = _saved(tmp_path)
    st = load_file(f)
    del st["encoder.layers.2.feed_forward.output_dense.bias"]
    save_file(st, f)
    with pytest.raises(CheckpointError, match=r"encoder\.layers\.2\.feed_forward\.output_dense\.bias") as info:
        read_hf_folder(tmp_path)
    assert info.value.key == "encoder.layers.2.feed_forward.output_dense.bias"


@pytest.mark.parametrize("key,value", [("hidden_act", "relu"), ("model_type", "data2vec-audio"),
                                       ("layer_norm_eps", 1e-6), ("feat_extract_norm", "batch"),
                                       ("num_hidden_layers", 2)])
def test_config_errors_name_file_and_key(tmp_path, key, value):
    _saved(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg[key] = value
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError) as info:
        read_hf_folder(tmp_path)
    # a wrong layer count surfaces as an unexpected tensor of the extra layer
    assert key in str(info.value) or "encoder.layers.2." in str(info.value)
    assert "config.json" in str(info.value) or "model.safetensors" in str(info.value)


def test_bin_goes_through_the_restricted_unpickler(tmp_path):
    class Payload:
        def __reduce__(self):
            return (print, ("pwned",))

    model = make_hf("wav2vec2", "Model", False)
    model.save_pretrained(tmp_path, safe_serialization=False)
    sd = dict(model.state_dict())
    sd["extra"] = Payload()
    torch.save(sd, tmp_path / "pytorch_model.bin")
    with pytest.raises(UnsafeCheckpointError, match="builtins.print"):
        read_hf_folder(tmp_path)


def test_not_a_folder(tmp_path):
    assert not is_hf_folder(tmp_path)
    with pytest.raises(CheckpointError, match="config.json"):
        read_hf_folder(tmp_path)
    _saved(tmp_path)
    (tmp_path / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="safetensors"):
        read_hf_folder(tmp_path)
