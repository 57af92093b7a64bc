"""Read Hugging Face wav2vec 2.0 / HuBERT / WavLM model folders without `transformers`.

A folder holds `config.json` and the weights: `model.safetensors` (preferred), `pytorch_model.bin` (read
through the restricted unpickler `safe_torch_load`, never `torch.load`), or a sharded variant with its
`*.index.json`. The base models (`Wav2Vec2Model`, `HubertModel`, `WavLMModel`) and the models with heads
(`...ForCTC`, `...ForPreTraining`, `...ForSequenceClassification`, ...: base weights under `wav2vec2.`,
`hubert.` or `wavlm.`) are accepted; heads are dropped and listed.

`read_hf_folder(path)` returns `(config, state_dict, dropped)` like `read_fairseq_checkpoint`: `config` is
the keyword arguments of torchaudio's `wav2vec2_model` / `wavlm_model` + `model_type` + `normalize_waveform`,
`state_dict` uses torchaudio's names (WavLM: q/k/v concatenated into `attention.attention.in_proj_*` as in
torchaudio's `WavLMSelfAttention`).

HF and torchaudio name the same modules: `feature_projection.*` -> `encoder.feature_projection.*`,
`encoder.*` -> `encoder.transformer.*`, the rest is identical. `encoder.layer_norm` is one module in both;
for `do_stable_layer_norm` (pre-LN, e.g. large models) it is applied after the last layer, otherwise
before the first one; torchaudio does the same under `encoder_layer_norm_first`.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Mapping

import torch

from speaker_neurons.models.errors import CheckpointError
from speaker_neurons.models.names import (
    POS_CONV_WEIGHT_G,
    POS_CONV_WEIGHT_V,
    NameSpec,
    assemble_state_dict,
    check_torchaudio_config,
    torchaudio_param_shapes,
)
from speaker_neurons.models.unpickler import safe_torch_load
from speaker_neurons.models.wav2vec2 import MODEL_TYPES as _MODEL_TYPES
from speaker_neurons.utils import get_logger

__all__ = ["read_hf_folder", "is_hf_folder", "HF_WEIGHTS"]

log = get_logger("models.hf")

#: weight files of a folder, in the order they are preferred, and how each is read
_WEIGHT_FILES = (
    ("model.safetensors", "safetensors"),
    ("model.safetensors.index.json", "safetensors-index"),
    ("pytorch_model.bin", "bin"),
    ("pytorch_model.bin.index.json", "bin-index"),
)
HF_WEIGHTS = tuple(name for name, _ in _WEIGHT_FILES)

# tensors of heads and pre-training modules outside the base model (top level of ...For* models)
_HEAD_DROP = re.compile(
    r"(lm_head|quantizer|project_hid|project_q|classifier|projector|tdnn|objective|feature_extractor|"
    r"dropout_features|final_proj|label_embeddings_concat)\..*|layer_weights|label_embeddings_concat"
)
_BASE_DROP = re.compile(r"masked_spec_embed")
_PACKED_ATTENTION = re.compile(r"(.*\.attention\.)attention\.(in_proj_weight|in_proj_bias|out_proj\.(?:weight|bias))")


def is_hf_folder(path: str | os.PathLike) -> bool:
    """True when `path` looks like a Hugging Face model folder: a config.json object with `model_type` or
    `architectures`, and a weights file (`HF_WEIGHTS`). Whether the model is supported is for
    `read_hf_folder` to say (its errors name the file and the key)."""
    p = Path(path)
    if not (p.is_dir() and (p / "config.json").is_file()) or not any((p / w).is_file() for w in HF_WEIGHTS):
        return False
    try:
        meta = json.loads((p / "config.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(meta, dict) and ("model_type" in meta or "architectures" in meta)


def _load_weights(folder: Path) -> tuple[dict[str, torch.Tensor], str]:
    """All tensors of the folder (shards merged) and a description of the file(s) for error messages."""
    for name, kind in _WEIGHT_FILES:
        f = folder / name
        if not f.is_file():
            continue
        if kind.endswith("index"):
            try:
                index = json.loads(f.read_text())
                shards = sorted(set(index["weight_map"].values()))
            except (ValueError, KeyError, AttributeError, TypeError) as exc:
                raise CheckpointError(f, f"malformed shard index: {exc}") from None
            state: dict[str, torch.Tensor] = {}
            for shard in shards:
                sp = folder / shard
                if Path(shard).name != shard or not sp.is_file():
                    raise CheckpointError(f, f"shard '{shard}' is missing or not inside the folder", key=shard)
                part = _load_one(sp, "safetensors" if kind.startswith("safetensors") else "bin")
                dup = set(part) & set(state)
                if dup:
                    raise CheckpointError(sp, f"tensor '{sorted(dup)[0]}' appears in two shards", key=sorted(dup)[0])
                state.update(part)
            return state, str(f)
        return _load_one(f, kind), str(f)
    raise CheckpointError(folder, "no model.safetensors / pytorch_model.bin (or sharded index) in the folder")


def _load_one(path: Path, kind: str) -> dict[str, torch.Tensor]:
    if kind == "safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            state = load_file(str(path), device="cpu")
        except (SafetensorError, OSError, ValueError) as exc:
            raise CheckpointError(path, f"cannot read safetensors file: {exc}") from None
    else:
        state = safe_torch_load(path)
        if isinstance(state, Mapping) and isinstance(state.get("state_dict"), Mapping):
            state = state["state_dict"]
    if not isinstance(state, Mapping) or not all(isinstance(k, str) for k in state):
        raise CheckpointError(path, "the weights file does not hold a name -> tensor mapping")
    return dict(state)


def _hf_config(cfg: Mapping, cfg_path: Path, normalize: bool) -> dict:
    def need(key):
        if key not in cfg or cfg[key] is None:
            raise CheckpointError(cfg_path, f"config.json lacks '{key}'", key=key)
        return cfg[key]

    def fail(key, msg):
        raise CheckpointError(cfg_path, f"'{key}': {msg}", key=key)

    model_type = cfg.get("model_type")
    if model_type not in _MODEL_TYPES:
        fail("model_type", f"{model_type!r} is not one of {', '.join(_MODEL_TYPES)}")
    for key in ("hidden_act", "feat_extract_activation"):
        if cfg.get(key, "gelu") != "gelu":
            fail(key, f"{cfg[key]!r} is not supported (only exact 'gelu')")
    eps = cfg.get("layer_norm_eps", 1e-5)
    if abs(float(eps) - 1e-5) > 1e-12:
        fail("layer_norm_eps", f"{eps} is not supported (torchaudio's layer norms use 1e-5)")
    if cfg.get("add_adapter"):
        fail("add_adapter", "models with an adapter are not supported")
    if model_type == "hubert":
        if cfg.get("feat_proj_layer_norm", True) is not True:
            fail("feat_proj_layer_norm", "HuBERT without the feature-projection layer norm is not supported")
        if cfg.get("conv_pos_batch_norm", False):
            fail("conv_pos_batch_norm", "a batch-normed positional convolution is not supported")
    if cfg.get("position_embeddings_type") not in (None, "conv"):
        fail("position_embeddings_type", f"{cfg['position_embeddings_type']!r} is not supported")
    norm = str(need("feat_extract_norm"))
    if norm not in ("group", "layer"):
        fail("feat_extract_norm", f"{norm!r} is not 'group' or 'layer'")
    dims, kernels, strides = need("conv_dim"), need("conv_kernel"), need("conv_stride")
    if not (len(dims) == len(kernels) == len(strides) and len(dims) > 0):
        fail("conv_dim", "conv_dim, conv_kernel and conv_stride differ in length")
    sr = cfg.get("sampling_rate")
    if sr is not None and int(sr) != 16000:
        fail("sampling_rate", f"{sr} is not 16000")
    config = {
        "model_type": model_type,
        "extractor_mode": f"{norm}_norm",
        "extractor_conv_layer_config": [[int(d), int(k), int(s)] for d, k, s in zip(dims, kernels, strides)],
        "extractor_conv_bias": bool(cfg.get("conv_bias", False)),
        "encoder_embed_dim": int(need("hidden_size")),
        "encoder_projection_dropout": float(cfg.get("feat_proj_dropout", 0.0)),
        "encoder_pos_conv_kernel": int(need("num_conv_pos_embeddings")),
        "encoder_pos_conv_groups": int(need("num_conv_pos_embedding_groups")),
        "encoder_num_layers": int(need("num_hidden_layers")),
        "encoder_num_heads": int(need("num_attention_heads")),
        "encoder_attention_dropout": float(cfg.get("attention_dropout", 0.0)),
        "encoder_ff_interm_features": int(need("intermediate_size")),
        "encoder_ff_interm_dropout": float(cfg.get("activation_dropout", 0.0)),
        "encoder_dropout": float(cfg.get("hidden_dropout", 0.0)),
        "encoder_layer_norm_first": bool(cfg.get("do_stable_layer_norm", False)),
        "encoder_layer_drop": float(cfg.get("layerdrop", 0.0)),
        "aux_num_out": None,
        "normalize_waveform": bool(normalize),
    }
    if model_type == "wavlm":
        config["encoder_num_buckets"] = int(need("num_buckets"))
        config["encoder_max_distance"] = int(need("max_bucket_distance"))
    check_torchaudio_config(config, cfg_path)
    return config


def _hf_spec(config: Mapping, prefix: str) -> NameSpec:
    p = prefix
    spec: NameSpec = {}
    shapes = torchaudio_param_shapes(config)
    for target in shapes:
        if target.startswith("feature_extractor."):
            spec[target] = [(p + target,)]
        elif target.startswith("encoder.feature_projection."):
            spec[target] = [(p + target[len("encoder."):],)]
        elif target == POS_CONV_WEIGHT_G:
            base = p + "encoder.pos_conv_embed.conv."
            spec[target] = [(base + "parametrizations.weight.original0",), (base + "weight_g",)]
        elif target == POS_CONV_WEIGHT_V:
            base = p + "encoder.pos_conv_embed.conv."
            spec[target] = [(base + "parametrizations.weight.original1",), (base + "weight_v",)]
        elif target.startswith("encoder.transformer."):
            src = p + "encoder." + target[len("encoder.transformer."):]
            m = _PACKED_ATTENTION.fullmatch(src)
            if m:  # WavLM: torchaudio wraps nn.MultiheadAttention with packed q, k, v
                head, what = m.groups()
                if what.startswith("in_proj"):
                    wb = "weight" if what.endswith("weight") else "bias"
                    spec[target] = [tuple(f"{head}{x}_proj.{wb}" for x in ("q", "k", "v"))]
                else:
                    spec[target] = [(head + what,)]
            else:
                spec[target] = [(src,)]
        else:
            raise AssertionError(target)
    return spec


def read_hf_folder(
    path: str | os.PathLike, *, normalize: bool | None = None
) -> tuple[dict, dict[str, torch.Tensor], list[str]]:
    """Read a Hugging Face wav2vec2 / hubert / wavlm folder.

    `normalize_waveform` comes from `normalize` when given, else from `preprocessor_config.json`'s
    `do_normalize`, else False (with a warning: the folder does not say how inputs were prepared).
    Returns (config, state_dict, dropped); errors (CheckpointError) name the file and the key.
    """
    folder = Path(path)
    cfg_path = folder / "config.json"
    if not cfg_path.is_file():
        raise CheckpointError(folder, "no config.json: not a Hugging Face model folder")
    try:
        cfg = json.loads(cfg_path.read_text())
    except ValueError as exc:
        raise CheckpointError(cfg_path, f"invalid JSON: {exc}") from None
    if not isinstance(cfg, dict):
        raise CheckpointError(cfg_path, "config.json is not a JSON object")
    if normalize is None:
        pre = folder / "preprocessor_config.json"
        if pre.is_file():
            try:
                pcfg = json.loads(pre.read_text())
            except ValueError as exc:
                raise CheckpointError(pre, f"invalid JSON: {exc}") from None
            normalize = bool(pcfg.get("do_normalize", False))
            sr = pcfg.get("sampling_rate")
            if sr is not None and int(sr) != 16000:
                raise CheckpointError(pre, f"'sampling_rate': {sr} is not 16000", key="sampling_rate")
        else:
            log.warning("%s: no preprocessor_config.json; assuming the waveform is not normalised", folder)
            normalize = False
    config = _hf_config(cfg, cfg_path, normalize)
    state, weights_desc = _load_weights(folder)
    base = config["model_type"] + "."
    prefix = base if any(k.startswith(base) for k in state) else ""

    def drop(key: str) -> bool:
        if prefix and not key.startswith(prefix):
            return _HEAD_DROP.fullmatch(key) is not None
        return _BASE_DROP.fullmatch(key[len(prefix):]) is not None

    spec = _hf_spec(config, prefix)
    state_dict, dropped = assemble_state_dict(weights_desc, state, spec, torchaudio_param_shapes(config), drop)
    log.info(
        "%s: HF %s (%s), %d layers, d=%d, %d tensors mapped, %d dropped",
        folder, config["model_type"], ",".join(cfg.get("architectures") or []) or "?",
        config["encoder_num_layers"], config["encoder_embed_dim"], len(state_dict), len(dropped),
    )
    return config, state_dict, dropped
