"""fairseq checkpoint reader: restricted unpickling, config parsing, name mapping, parity with torchaudio.

fairseq itself does not run on this Python, so the checkpoints are built here: a small torchaudio model with
random weights is converted to fairseq's parameter names (the inverse mapping below, checked against
torchaudio's own fairseq importer), saved with `cfg` as a dict, with an old-style `args` Namespace, in the
legacy (pre-1.6) torch format, or as a CTC fine-tuned model; tests/fixtures holds two checkpoints whose
`cfg` is a real omegaconf object (see make_fairseq_omegaconf_fixtures.py).
"""

from __future__ import annotations

import argparse
import builtins
import collections
import functools
import inspect
import json
import os
import pickle
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from fairseq_names import to_fairseq  # noqa: E402  (tests/ is on sys.path under pytest)
import torchaudio
from torchaudio.models.wav2vec2.utils import import_fairseq

from speaker_neurons.models.errors import CheckpointError, UnsafeCheckpointError
from speaker_neurons.models.fairseq_ckpt import parse_conv_layers, read_fairseq_checkpoint
from speaker_neurons.models.names import torchaudio_param_shapes
from speaker_neurons.models.unpickler import safe_torch_load

FIXTURES = Path(__file__).parent / "fixtures"
EXTRA_KEYS = ("model_type", "normalize_waveform")


# ------------------------------------------------------------------------------------------------ helpers


def ta_kwargs(config: dict) -> dict:
    return {k: v for k, v in config.items() if k not in EXTRA_KEYS}


def build_torchaudio(config: dict) -> torch.nn.Module:
    fn = torchaudio.models.wavlm_model if config.get("model_type") == "wavlm" else torchaudio.models.wav2vec2_model
    return fn(**ta_kwargs(config))


def load_torchaudio(config: dict, state: dict) -> torch.nn.Module:
    model = build_torchaudio(config)
    model.load_state_dict(state, strict=True)
    return model.eval()


def random_model(config: dict, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = build_torchaudio(config)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)  # layer norms away from (1, 0), biases non-zero
    return model.eval()


def layer_outputs(model: torch.nn.Module, wav: torch.Tensor) -> list[torch.Tensor]:
    """Conv features, the input of layer 1, every layer's output and the final output."""
    captured = {}
    hook = model.encoder.transformer.layers[0].register_forward_pre_hook(
        lambda _m, args: captured.setdefault("x", args[0].clone())
    )
    with torch.no_grad():
        feats, _ = model.feature_extractor(wav, None)
        layers, _ = model.extract_features(wav)
        final, _ = model(wav)
    hook.remove()
    return [feats, captured["x"], *layers, final]


def assert_same_outputs(a: torch.nn.Module, b: torch.nn.Module, tol: float = 1e-4) -> None:
    wav = torch.randn(2, 3200, generator=torch.Generator().manual_seed(5))
    outs_a, outs_b = layer_outputs(a, wav), layer_outputs(b, wav)
    assert len(outs_a) == len(outs_b)
    for i, (x, y) in enumerate(zip(outs_a, outs_b)):
        assert x.shape == y.shape, i
        assert (x - y).abs().max().item() <= tol, f"output {i} differs"


def ta_name_from_torchaudio_importer(fairseq_key: str) -> str | None:
    """torchaudio's own fairseq key mapping, with its weight-norm names in today's parametrization form."""
    name = import_fairseq._map_key(fairseq_key)
    if name is None:
        return None
    return name.replace("conv.weight_g", "conv.parametrizations.weight.original0").replace(
        "conv.weight_v", "conv.parametrizations.weight.original1"
    )


def conv_string(layers) -> str:
    # fairseq style: "[(a, b, c)] + [(d, e, f)] * n"
    groups = []
    for layer in layers:
        if groups and groups[-1][0] == tuple(layer):
            groups[-1][1] += 1
        else:
            groups.append([tuple(layer), 1])
    return " + ".join(f"[{t}]" + (f" * {n}" if n > 1 else "") for t, n in groups)


def fairseq_model_fields(config: dict) -> dict:
    return {
        "_name": config["model_type"],
        "extractor_mode": "default" if config["extractor_mode"] == "group_norm" else "layer_norm",
        "encoder_layers": config["encoder_num_layers"],
        "encoder_embed_dim": config["encoder_embed_dim"],
        "encoder_ffn_embed_dim": config["encoder_ff_interm_features"],
        "encoder_attention_heads": config["encoder_num_heads"],
        "activation_fn": "gelu",
        "dropout": 0.1,
        "attention_dropout": 0.1,
        "activation_dropout": 0.0,
        "encoder_layerdrop": 0.05,
        "dropout_input": 0.1,
        "dropout_features": 0.1,
        "final_dim": 8,
        "layer_norm_first": config["encoder_layer_norm_first"],
        "conv_feature_layers": conv_string(config["extractor_conv_layer_config"]),
        "conv_bias": config["extractor_conv_bias"],
        "conv_pos": config["encoder_pos_conv_kernel"],
        "conv_pos_groups": config["encoder_pos_conv_groups"],
        "latent_temp": (2.0, 0.5, 0.999995),
    }


def pretraining_extras(config: dict, g: torch.Generator) -> dict:
    d = config["encoder_embed_dim"]
    c = config["extractor_conv_layer_config"][-1][0]
    extras = {"mask_emb": torch.rand(d, generator=g), "final_proj.weight": torch.randn(8, d, generator=g),
              "final_proj.bias": torch.randn(8, generator=g)}
    if config["model_type"] == "hubert":
        extras["label_embs_concat"] = torch.randn(7, 8, generator=g)
    else:
        extras.update({"quantizer.vars": torch.randn(1, 20, 4, generator=g),
                       "quantizer.weight_proj.weight": torch.randn(20, c, generator=g),
                       "quantizer.weight_proj.bias": torch.randn(20, generator=g),
                       "project_q.weight": torch.randn(8, 8, generator=g),
                       "project_q.bias": torch.randn(8, generator=g)})
    return extras


def make_config(model_type="wav2vec2", mode="group_norm", ln_first=False, bias=False, heads=2, ffn=24):
    return {
        "model_type": model_type,
        "extractor_mode": mode,
        "extractor_conv_layer_config": [[12, 10, 5], [12, 3, 2], [12, 3, 2], [12, 2, 2]],
        "extractor_conv_bias": bias,
        "encoder_embed_dim": 16,
        "encoder_projection_dropout": 0.0,
        "encoder_pos_conv_kernel": 8,
        "encoder_pos_conv_groups": 4,
        "encoder_num_layers": 2,
        "encoder_num_heads": heads,
        "encoder_attention_dropout": 0.0,
        "encoder_ff_interm_features": ffn,
        "encoder_ff_interm_dropout": 0.0,
        "encoder_dropout": 0.0,
        "encoder_layer_norm_first": ln_first,
        "encoder_layer_drop": 0.0,
        "aux_num_out": None,
        "normalize_waveform": False,
    }


ARCH_KEYS = ("model_type", "extractor_mode", "extractor_conv_layer_config", "extractor_conv_bias",
             "encoder_embed_dim", "encoder_pos_conv_kernel", "encoder_pos_conv_groups", "encoder_num_layers",
             "encoder_num_heads", "encoder_ff_interm_features", "encoder_layer_norm_first", "aux_num_out")


def write_checkpoint(path: Path, config: dict, state: dict, style: str, normalize: bool, legacy: bool = False):
    fields = fairseq_model_fields(config)
    task_name = "hubert_pretraining" if config["model_type"] == "hubert" else "audio_pretraining"
    task = {"_name": task_name, "data": "/data", "normalize": normalize, "sample_rate": 16000}
    if style == "dict":
        ckpt = {"args": None, "cfg": {"_name": None, "common": {"fp16": True, "seed": 1}, "model": fields,
                                      "task": task, "criterion": {"_name": "x"}},
                "model": state, "criterion": None, "optimizer_history": [{"num_updates": 10}],
                "task_state": {}, "extra_state": {"metrics": collections.OrderedDict(), "train_iterator": {"epoch": 2}}}
    elif style == "args":
        ns = dict(fields)
        ns.pop("_name")
        args = argparse.Namespace(arch=config["model_type"], task=task_name, normalize=normalize, sample_rate=16000,
                                  data="/data", lr=[0.0005], **ns)
        ckpt = {"args": args, "model": state, "optimizer_history": [], "extra_state": {"epoch": 1}}
    elif style == "finetuned":
        inner = {"model": fields, "task": dict(task), "common": {"seed": 1}}
        ckpt = {"cfg": {"model": {"_name": "wav2vec_ctc", "w2v_path": "/pre.pt", "w2v_args": inner, "apply_mask": True},
                        "task": {"_name": "audio_finetuning", "normalize": normalize, "labels": "ltr"}},
                "model": state}
    else:
        raise ValueError(style)
    torch.save(ckpt, path, _use_new_zipfile_serialization=not legacy)


# ------------------------------------------------------------------------------------------- the mapping


@pytest.mark.parametrize("mode", ["group_norm", "layer_norm"])
def test_inverse_mapping_agrees_with_torchaudio_importer(mode):
    config = make_config(mode=mode, bias=True)
    ta_state = random_model(config, 0).state_dict()
    fs = to_fairseq(ta_state, mode)
    assert len(fs) == len(ta_state)
    back = {ta_name_from_torchaudio_importer(k): k for k in fs}
    assert set(back) == set(ta_state)
    for name in ("mask_emb", "quantizer.vars", "project_q.weight", "final_proj.bias"):
        assert import_fairseq._map_key(name) is None  # torchaudio drops these too


@pytest.mark.parametrize("model_type", ["wav2vec2", "hubert", "wavlm"])
@pytest.mark.parametrize("mode,ln_first,bias", [("group_norm", False, False), ("layer_norm", True, True)])
def test_param_shapes_match_torchaudio(model_type, mode, ln_first, bias):
    config = make_config(model_type, mode, ln_first, bias)
    if model_type == "wavlm":
        config.update(encoder_num_buckets=16, encoder_max_distance=40)
    model = build_torchaudio(config)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert torchaudio_param_shapes(config) == expected


def test_param_shapes_per_layer_widths():
    config = make_config(ffn=24)
    config["encoder_ff_interm_features"] = [24, 7]
    shapes = torchaudio_param_shapes(config)
    assert shapes["encoder.transformer.layers.1.feed_forward.intermediate_dense.weight"] == (7, 16)
    assert shapes["encoder.transformer.layers.1.feed_forward.output_dense.weight"] == (16, 7)
    assert shapes["encoder.transformer.layers.0.feed_forward.output_dense.weight"] == (16, 24)


# ---------------------------------------------------------------------------------------- round trips

CASES = [
    # id, model_type, extractor mode, pre-LN, conv bias, cfg style, legacy torch format, normalize
    ("w2v2-base-dict", "wav2vec2", "group_norm", False, False, "dict", False, False),
    ("w2v2-large-args-legacy", "wav2vec2", "layer_norm", True, True, "args", True, True),
    ("hubert-dict", "hubert", "group_norm", False, False, "dict", False, False),
    ("hubert-large-legacy", "hubert", "layer_norm", True, False, "dict", True, True),
    ("w2v2-finetuned", "wav2vec2", "group_norm", False, False, "finetuned", False, True),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_round_trip_matches_original(tmp_path, case):
    _, model_type, mode, ln_first, bias, style, legacy, normalize = case
    config = make_config(model_type, mode, ln_first, bias, heads=4 if ln_first else 2)
    original = random_model(config, 1)
    fs = to_fairseq(original.state_dict(), mode)
    g = torch.Generator().manual_seed(2)
    extras = pretraining_extras(config, g)
    if style == "finetuned":
        fs = {f"w2v_encoder.w2v_model.{k}": v for k, v in fs.items()}
        extras = {"w2v_encoder.proj.weight": torch.randn(5, 16, generator=g), "w2v_encoder.proj.bias": torch.randn(5)}
    fs.update(extras)
    path = tmp_path / "ckpt.pt"
    write_checkpoint(path, config, fs, style, normalize, legacy)

    got_config, state, dropped = read_fairseq_checkpoint(path)
    assert {k: got_config[k] for k in ARCH_KEYS} == {k: config[k] for k in ARCH_KEYS}
    assert got_config["normalize_waveform"] is normalize
    assert sorted(dropped) == sorted(extras)
    assert set(state) == set(original.state_dict())
    assert all(v.dtype == torch.float32 for v in state.values())
    assert_same_outputs(load_torchaudio(got_config, state), original)


def test_stored_dropouts_are_kept(tmp_path):
    config = make_config()
    fs = to_fairseq(random_model(config, 3).state_dict(), "group_norm")
    write_checkpoint(tmp_path / "c.pt", config, fs, "dict", False)
    got, _, _ = read_fairseq_checkpoint(tmp_path / "c.pt")
    assert got["encoder_dropout"] == 0.1 and got["encoder_attention_dropout"] == 0.1
    assert got["encoder_projection_dropout"] == 0.1 and got["encoder_layer_drop"] == 0.05
    assert set(got) == set(inspect.signature(torchaudio.models.wav2vec2_model).parameters) | set(EXTRA_KEYS)


@pytest.mark.parametrize("normalize", [True, False, None])
def test_normalize_flag(tmp_path, normalize):
    config = make_config()
    fs = to_fairseq(random_model(config, 4).state_dict(), "group_norm")
    path = tmp_path / "c.pt"
    write_checkpoint(path, config, fs, "dict", bool(normalize))
    if normalize is None:  # not stored: fairseq's default (False)
        ckpt = torch.load(path, weights_only=False)
        del ckpt["cfg"]["task"]["normalize"]
        torch.save(ckpt, path)
    got, _, _ = read_fairseq_checkpoint(path)
    assert got["normalize_waveform"] is bool(normalize)


def test_post_extract_proj_absent_when_widths_match(tmp_path):
    # fairseq has no post_extract_proj when the conv output already has the model width
    config = make_config()
    config["extractor_conv_layer_config"] = [[16, 10, 5], [16, 3, 2]]
    original = random_model(config, 6)
    with torch.no_grad():
        original.encoder.feature_projection.projection.weight.copy_(torch.eye(16))
        original.encoder.feature_projection.projection.bias.zero_()
    fs = to_fairseq(original.state_dict(), "group_norm")
    del fs["post_extract_proj.weight"], fs["post_extract_proj.bias"]
    write_checkpoint(tmp_path / "c.pt", config, fs, "dict", False)
    got, state, _ = read_fairseq_checkpoint(tmp_path / "c.pt")
    assert_same_outputs(load_torchaudio(got, state), original)


# ---------------------------------------------------------------------------------- real omegaconf cfg


@pytest.mark.parametrize("name", ["fairseq_hubert_omegaconf20", "fairseq_wav2vec2_omegaconf23"])
def test_real_omegaconf_fixtures(name):
    meta = json.loads((FIXTURES / f"{name}.json").read_text())
    path = FIXTURES / f"{name}.pt"
    config, state, dropped = read_fairseq_checkpoint(path)
    expected = dict(meta["torchaudio_config"], model_type=meta["model_type"])
    assert {k: config[k] for k in ARCH_KEYS} == {k: expected[k] for k in ARCH_KEYS}
    assert config["normalize_waveform"] is meta["normalize"]
    assert dropped == meta["dropped"]
    # every tensor is the file's own, under the name torchaudio's importer gives it
    raw = safe_torch_load(path)["model"]
    reference = {ta_name_from_torchaudio_importer(k): v for k, v in raw.items()}
    reference = {k: v for k, v in reference.items() if k is not None and k != "label_embs_concat"}
    assert set(reference) == set(state)
    for k, v in state.items():
        assert torch.equal(v, reference[k]), k
    load_torchaudio(config, state)  # strict load


def test_omegaconf_fixture_config_is_plain_data():
    ckpt = safe_torch_load(FIXTURES / "fairseq_hubert_omegaconf20.pt")
    cfg = ckpt["cfg"]
    assert type(cfg) is dict and type(cfg["model"]) is dict
    assert cfg["model"]["extractor_mode"] == "default"  # an enum member of a fairseq class -> its value
    assert cfg["model"]["latent_temp"] == [2.0, 0.5, 0.999995]
    assert cfg["model"]["label_rate"] == "${task.label_rate}"  # interpolation kept verbatim here
    assert isinstance(cfg["task"], argparse.Namespace) and cfg["task"].normalize is False
    assert cfg["criterion"]["loss_weights"] == [10.0]
    assert ckpt["extra_state"]["train_iterator"] == {"epoch": 3, "iterations_in_epoch": 0}


# ------------------------------------------------------------------------------------ unsafe pickles


class _Payload:
    def __init__(self, fn, args):
        self.fn, self.args = fn, args

    def __reduce__(self):
        return self.fn, self.args


def _payloads(marker: Path):
    m = str(marker)
    return {
        "os.system": _Payload(os.system, (f"touch {m}",)),
        "builtins.eval": _Payload(builtins.eval, (f"open({m!r}, 'w')",)),
        "builtins.exec": _Payload(builtins.exec, (f"open({m!r}, 'w')",)),
        "subprocess.call": _Payload(subprocess.call, (["touch", m],)),
        "functools.partial": _Payload(functools.partial(os.mkdir, m), ()),
        "builtins.open": _Payload(builtins.open, (m, "w")),
        "os.mkdir": _Payload(os.mkdir, (m,)),
    }


@pytest.mark.parametrize("container", ["zip", "legacy", "raw-pickle"])
@pytest.mark.parametrize("payload", ["os.system", "builtins.eval", "builtins.exec", "subprocess.call",
                                     "functools.partial", "builtins.open", "os.mkdir"])
def test_crafted_pickle_is_refused_and_never_runs(tmp_path, container, payload):
    marker = tmp_path / "pwned"
    evil = _payloads(marker)[payload]
    ckpt = {"cfg": {"model": {"_name": "wav2vec2", "nested": [1, {"x": evil}]}}, "model": {"w": torch.zeros(2)}}
    path = tmp_path / "evil.pt"
    if container == "raw-pickle":
        path.write_bytes(pickle.dumps(ckpt, protocol=2))
    else:
        torch.save(ckpt, path, _use_new_zipfile_serialization=container == "zip")
    for reader in (safe_torch_load, read_fairseq_checkpoint):
        with pytest.raises(UnsafeCheckpointError) as info:
            reader(path)
        assert str(path) in str(info.value)
        assert info.value.global_name.split(".")[0] in {"posix", "os", "io", "builtins", "subprocess", "functools"}
        assert not marker.exists()


def test_payload_is_live_under_plain_pickle(tmp_path):
    # positive control: the same kind of file does run code under an unrestricted unpickler
    marker = tmp_path / "ran"
    data = pickle.dumps({"cfg": _Payload(os.mkdir, (str(marker),))}, protocol=2)
    pickle.loads(data)
    assert marker.is_dir()


def test_refusal_names_the_global(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"x": _Payload(os.system, ("true",))}, path)
    with pytest.raises(UnsafeCheckpointError, match=r"'(posix|os)\.system'"):
        safe_torch_load(path)


def test_attribute_access_through_allowed_class_is_refused(tmp_path):
    # a bound classmethod pickles as builtins.getattr(OrderedDict, 'fromkeys')
    path = tmp_path / "getattr.pkl"
    path.write_bytes(pickle.dumps(_Payload(collections.OrderedDict.fromkeys, ([1, 2],)), protocol=4))
    with pytest.raises(UnsafeCheckpointError, match="builtins.getattr"):
        safe_torch_load(path)
    # protocol 4 STACK_GLOBAL with a dotted name: 'collections' 'OrderedDict.fromkeys'
    mod, name = b"collections", b"OrderedDict.fromkeys"
    path.write_bytes(b"\x80\x04\x8c" + bytes([len(mod)]) + mod + b"\x8c" + bytes([len(name)]) + name + b"\x93.")
    with pytest.raises(UnsafeCheckpointError, match="OrderedDict.fromkeys"):
        safe_torch_load(path)


def test_torchscript_archive_is_refused(tmp_path):
    path = tmp_path / "script.pt"
    torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), str(path))
    with pytest.raises(CheckpointError, match="TorchScript"):
        safe_torch_load(path)


def test_tensor_rebuild_rejects_foreign_storage(tmp_path):
    # _rebuild_tensor_v2 is allowed, but only with storages read from the file itself
    path = tmp_path / "fake.pkl"
    fake = _Payload(torch._utils._rebuild_tensor_v2, ("not a storage", 0, (2,), (1,), False, collections.OrderedDict()))
    path.write_bytes(pickle.dumps({"t": fake}, protocol=2))
    with pytest.raises(CheckpointError, match="storage"):
        safe_torch_load(path)


def test_plain_containers_and_tensors_survive(tmp_path):
    base = torch.randn(6, 4)
    obj = {"view": base[1:4, 1:3], "base": base, "half": torch.randn(3).half(), "long": torch.arange(4),
           "od": collections.OrderedDict(a=1), "ns": argparse.Namespace(a=[1, 2]), "bytes": b"\x00\xff",
           "tuple": (1, 2.5, None), "set": {3}, "param": torch.nn.Parameter(torch.ones(2)),
           "np_scalar": np.float64(2.5), "np_array": np.arange(6, dtype=np.int16).reshape(2, 3)}
    for legacy in (False, True):
        torch.save(obj, tmp_path / "o.pt", _use_new_zipfile_serialization=not legacy)
        got = safe_torch_load(tmp_path / "o.pt")
        for k in ("view", "base", "half", "long", "param"):
            assert torch.equal(got[k], obj[k].detach()) and got[k].stride() == obj[k].stride()
        assert got["od"] == obj["od"] and vars(got["ns"]) == {"a": [1, 2]}
        assert got["bytes"] == b"\x00\xff" and got["tuple"] == (1, 2.5, None) and got["set"] == {3}
        assert got["np_scalar"] == 2.5 and np.array_equal(got["np_array"], obj["np_array"])


def test_numpy_object_arrays_are_refused(tmp_path):
    torch.save({"o": np.array([1, "a"], dtype=object)}, tmp_path / "o.pt")
    with pytest.raises(CheckpointError, match="object arrays"):
        safe_torch_load(tmp_path / "o.pt")


# ----------------------------------------------------------------------------------------- key checks


def _good(tmp_path):
    config = make_config()
    fs = to_fairseq(random_model(config, 7).state_dict(), "group_norm")
    return config, fs


def test_unknown_key_is_an_error(tmp_path):
    config, fs = _good(tmp_path)
    fs["encoder.layers.0.self_attn.extra_proj.weight"] = torch.zeros(2)
    write_checkpoint(tmp_path / "c.pt", config, fs, "dict", False)
    with pytest.raises(CheckpointError, match=r"encoder\.layers\.0\.self_attn\.extra_proj\.weight") as info:
        read_fairseq_checkpoint(tmp_path / "c.pt")
    assert info.value.key == "encoder.layers.0.self_attn.extra_proj.weight"
    assert str(tmp_path / "c.pt") in str(info.value)


def test_missing_key_is_an_error(tmp_path):
    config, fs = _good(tmp_path)
    del fs["encoder.layers.1.fc2.bias"]
    write_checkpoint(tmp_path / "c.pt", config, fs, "dict", False)
    with pytest.raises(CheckpointError, match=r"encoder\.layers\.1\.fc2\.bias") as info:
        read_fairseq_checkpoint(tmp_path / "c.pt")
    assert info.value.key == "encoder.layers.1.fc2.bias"


def test_shape_disagreeing_with_config_is_an_error(tmp_path):
    config, fs = _good(tmp_path)
    write_checkpoint(tmp_path / "c.pt", dict(config, encoder_ff_interm_features=32), fs, "dict", False)
    with pytest.raises(CheckpointError, match=r"encoder\.layers\.0\.fc1\.weight.*shape"):
        read_fairseq_checkpoint(tmp_path / "c.pt")


def test_extra_layer_is_an_error(tmp_path):
    config, fs = _good(tmp_path)
    write_checkpoint(tmp_path / "c.pt", dict(config, encoder_num_layers=1), fs, "dict", False)
    with pytest.raises(CheckpointError, match=r"encoder\.layers\.1\."):
        read_fairseq_checkpoint(tmp_path / "c.pt")


@pytest.mark.parametrize("field,value,match", [
    ("activation_fn", "relu", "activation_fn"),
    ("layer_type", "conformer", "layer_type"),
    ("_name", "data2vec_audio", "data2vec_audio"),
    ("conv_feature_layers", "__import__('os').system('true')", "conv_feature_layers"),
])
def test_unsupported_configs(tmp_path, field, value, match):
    config, fs = _good(tmp_path)
    path = tmp_path / "c.pt"
    write_checkpoint(path, config, fs, "dict", False)
    ckpt = torch.load(path, weights_only=False)
    ckpt["cfg"]["model"][field] = value
    torch.save(ckpt, path)
    with pytest.raises(CheckpointError, match=match):
        read_fairseq_checkpoint(path)


def test_no_hyper_parameters_is_an_error(tmp_path):
    config, fs = _good(tmp_path)
    torch.save({"model": fs}, tmp_path / "c.pt")
    with pytest.raises(CheckpointError, match="cfg"):
        read_fairseq_checkpoint(tmp_path / "c.pt")


def test_interpolations_are_resolved(tmp_path):
    config, fs = _good(tmp_path)
    path = tmp_path / "c.pt"
    write_checkpoint(path, config, fs, "dict", True)
    ckpt = torch.load(path, weights_only=False)
    ckpt["cfg"]["model"]["layer_norm_first"] = "${common.pre_ln}"
    ckpt["cfg"]["common"]["pre_ln"] = False
    ckpt["cfg"]["task"]["normalize"] = "${common.norm}"
    ckpt["cfg"]["common"]["norm"] = True
    torch.save(ckpt, path)
    got, _, _ = read_fairseq_checkpoint(path)
    assert got["encoder_layer_norm_first"] is False and got["normalize_waveform"] is True


def test_parse_conv_layers():
    assert parse_conv_layers("[(512, 10, 5)] + [(512, 3, 2)] * 4 + [(512,2,2)] * 2") == (
        [[512, 10, 5]] + [[512, 3, 2]] * 4 + [[512, 2, 2]] * 2
    )
    assert parse_conv_layers("[(512, 10, 5), (512, 8, 4)] + 2 * [(512, 4, 2)]") == (
        [[512, 10, 5], [512, 8, 4]] + [[512, 4, 2]] * 2
    )
    for bad in ("__import__('os')", "[(1, 2)]", "[(1, 2, 3)] * 10**9", "[x]", "[(1.5, 2, 3)]", "[]"):
        with pytest.raises(CheckpointError):
            parse_conv_layers(bad)
