"""Read fairseq wav2vec 2.0 / HuBERT checkpoints without fairseq, omegaconf or unrestricted unpickling.

The file is read by the restricted unpickler (`speaker_neurons.models.unpickler.safe_torch_load`), which turns
fairseq's stored configuration (`cfg` as a dict or omegaconf object, or the old flat `args` Namespace) into
plain data; this module parses that configuration and maps the tensors onto our (torchaudio's) parameter
names with `speaker_neurons.models.names`.

`read_fairseq_checkpoint(path)` turns a pre-training (or CTC fine-tuning) checkpoint into
`(config, state_dict, dropped)`: `config` holds the keyword arguments of torchaudio's
`wav2vec2_model(...)` plus `model_type` and `normalize_waveform`; `state_dict` uses torchaudio's parameter
names exactly; `dropped` lists the tensors of the file deliberately left out (quantizer, projections for
the pre-training loss, label embeddings, mask embedding, CTC head). Any other tensor of the file raises
`CheckpointError` naming it, and so does any parameter of the model the file does not provide.
"""

from __future__ import annotations

import argparse
import ast
import os
import re
from typing import Any, Iterable, Mapping

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
from speaker_neurons.utils import get_logger

__all__ = ["read_fairseq_checkpoint", "parse_conv_layers"]

log = get_logger("models.fairseq_ckpt")


def parse_conv_layers(spec: str | Iterable, path=None) -> list[list[int]]:
    """fairseq's `conv_feature_layers` string, e.g. "[(512, 10, 5)] + [(512, 3, 2)] * 4 + [(512,2,2)] * 2",
    evaluated without `eval`: only list/tuple literals of integers, `+` of lists and `* int` are accepted.
    Returns [[dim, kernel, stride], ...]."""

    def ev(node):
        if isinstance(node, ast.Expression):
            return ev(node.body)
        if isinstance(node, (ast.List, ast.Tuple)):
            vals = [ev(e) for e in node.elts]
            return vals if isinstance(node, ast.List) else tuple(vals)
        if isinstance(node, ast.Constant) and isinstance(node.value, int) and not isinstance(node.value, bool):
            return node.value
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
            a, b = ev(node.left), ev(node.right)
            if isinstance(a, list) and isinstance(b, list):
                return a + b
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Mult):
            a, b = ev(node.left), ev(node.right)
            if isinstance(a, list) and isinstance(b, int) and 0 <= b <= 1000:
                return a * b
            if isinstance(b, list) and isinstance(a, int) and 0 <= a <= 1000:
                return b * a
        raise ValueError(f"unsupported expression {ast.dump(node)[:80]}")

    if isinstance(spec, str):
        try:
            value = ev(ast.parse(spec, mode="eval"))
        except (SyntaxError, ValueError, RecursionError) as exc:
            raise CheckpointError(path, f"cannot parse conv_feature_layers {spec!r}: {exc}") from None
    else:
        value = list(spec)
    out = []
    for layer in value if isinstance(value, list) else [None]:
        ok = isinstance(layer, (list, tuple)) and len(layer) == 3
        if not (ok and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in layer)):
            raise CheckpointError(path, f"conv_feature_layers {spec!r}: every layer must be (dim, kernel, stride)")
        out.append([int(v) for v in layer])
    if not out:
        raise CheckpointError(path, f"conv_feature_layers {spec!r} is empty")
    return out



# --------------------------------------------------------------------------------------------------
# fairseq


_FAIRSEQ_DROP = re.compile(
    r"(mask_emb|label_embs_concat|quantizer\..*|input_quantizer\..*|project_q\..*|project_inp\..*|"
    r"final_proj\..*|final_proj\.\d+\..*|target_glu\..*|w2v_encoder\.proj\..*|w2v_encoder\.w2v_model\.("
    r"mask_emb|label_embs_concat|quantizer\..*|project_q\..*|final_proj\..*|target_glu\..*))"
)

#: defaults of fairseq's Wav2Vec2Config / HubertConfig for fields old checkpoints may lack
_FAIRSEQ_DEFAULTS = {
    "extractor_mode": "default",
    "encoder_layers": 12,
    "encoder_embed_dim": 768,
    "encoder_ffn_embed_dim": 3072,
    "encoder_attention_heads": 12,
    "activation_fn": "gelu",
    "dropout": 0.1,
    "attention_dropout": 0.1,
    "activation_dropout": 0.0,
    "encoder_layerdrop": 0.0,
    "dropout_input": 0.0,
    "layer_norm_first": False,
    "conv_bias": False,
    "conv_pos": 128,
    "conv_pos_groups": 16,
}


def _as_dict(x, path, what) -> dict:
    if isinstance(x, argparse.Namespace):
        return dict(vars(x))
    if isinstance(x, Mapping):
        return dict(x)
    raise CheckpointError(path, f"{what} is a {type(x).__name__}, expected a mapping")


_INTERP = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*)\}")


def _resolve_interpolations(root: Any) -> Any:
    """Replace string values that are exactly an absolute omegaconf interpolation '${a.b}' by the value
    they point to (as omegaconf would); anything else is left as is."""

    def lookup(dotted):
        cur = root
        for part in dotted.split("."):
            if isinstance(cur, argparse.Namespace):
                cur = vars(cur)
            if not isinstance(cur, Mapping) or part not in cur:
                return _INTERP  # sentinel: unresolved
            cur = cur[part]
        return cur

    def walk(x, depth=0):
        if isinstance(x, str):
            m = _INTERP.fullmatch(x)
            if m and depth < 10:
                v = lookup(m.group(1))
                if v is not _INTERP:
                    return walk(v, depth + 1)
            return x
        if isinstance(x, dict):
            return {k: walk(v, depth) for k, v in x.items()}
        if isinstance(x, argparse.Namespace):
            return argparse.Namespace(**{k: walk(v, depth) for k, v in vars(x).items()})
        if isinstance(x, list):
            return [walk(v, depth) for v in x]
        return x

    return walk(root)


def _fairseq_sections(ckpt: Mapping, path) -> tuple[dict, dict]:
    """(model hyper-parameters, task hyper-parameters) from `cfg` (dict / omegaconf / with Namespaces) or
    the old flat `args` Namespace."""
    cfg = ckpt.get("cfg")
    if cfg is not None:
        cfg = _resolve_interpolations(_as_dict(cfg, path, "'cfg'"))
        if cfg.get("model") is None:
            raise CheckpointError(path, "'cfg' has no 'model' section")
        model = _as_dict(cfg["model"], path, "cfg.model")
        task = _as_dict(cfg["task"], path, "cfg.task") if cfg.get("task") is not None else {}
        return model, task
    args = ckpt.get("args")
    if args is not None:
        flat = _resolve_interpolations(_as_dict(args, path, "'args'"))
        return flat, flat
    raise CheckpointError(path, "neither 'cfg' nor 'args' is stored: the hyper-parameters are unknown")


def _model_name(model: Mapping) -> str:
    name = model.get("_name", model.get("arch"))
    return str(name) if name is not None else ""


def _fairseq_config(model: Mapping, task: Mapping, path) -> tuple[dict, str]:
    name = _model_name(model)
    if name.startswith("wav2vec2"):
        model_type = "wav2vec2"
    elif name.startswith("hubert"):
        model_type = "hubert"
    else:
        raise CheckpointError(path, f"unsupported fairseq model '{name}' (expected wav2vec2 or hubert)")

    used_defaults = []

    def get(key):
        if key in model and model[key] is not None:
            return model[key]
        if key not in _FAIRSEQ_DEFAULTS:
            raise CheckpointError(path, f"the stored configuration lacks '{key}'", key=key)
        used_defaults.append(key)
        return _FAIRSEQ_DEFAULTS[key]

    if "conv_feature_layers" not in model:
        raise CheckpointError(path, "the stored configuration lacks 'conv_feature_layers'", key="conv_feature_layers")
    act = str(get("activation_fn"))
    if act != "gelu":
        raise CheckpointError(path, f"activation_fn {act!r} is not supported (only exact 'gelu')", key="activation_fn")
    if str(model.get("layer_type", "transformer")) != "transformer":
        raise CheckpointError(path, f"layer_type {model['layer_type']!r} is not supported", key="layer_type")
    if int(model.get("pos_conv_depth", 1) or 1) != 1:
        raise CheckpointError(path, "pos_conv_depth > 1 is not supported", key="pos_conv_depth")
    if model.get("quantize_input"):
        raise CheckpointError(path, "quantize_input models are not supported", key="quantize_input")
    mode = str(get("extractor_mode"))
    if mode not in ("default", "layer_norm"):
        raise CheckpointError(path, f"unknown extractor_mode {mode!r}", key="extractor_mode")
    sr = task.get("sample_rate")
    if sr is not None and int(sr) != 16000:
        raise CheckpointError(path, f"task.sample_rate is {sr}, only 16000 is supported", key="sample_rate")
    normalize = task.get("normalize")
    if normalize is None:
        normalize = False
        used_defaults.append("normalize")
    config = {
        "model_type": model_type,
        "extractor_mode": "group_norm" if mode == "default" else "layer_norm",
        "extractor_conv_layer_config": parse_conv_layers(model["conv_feature_layers"], path),
        "extractor_conv_bias": bool(get("conv_bias")),
        "encoder_embed_dim": int(get("encoder_embed_dim")),
        "encoder_projection_dropout": float(get("dropout_input")),
        "encoder_pos_conv_kernel": int(get("conv_pos")),
        "encoder_pos_conv_groups": int(get("conv_pos_groups")),
        "encoder_num_layers": int(get("encoder_layers")),
        "encoder_num_heads": int(get("encoder_attention_heads")),
        "encoder_attention_dropout": float(get("attention_dropout")),
        "encoder_ff_interm_features": int(get("encoder_ffn_embed_dim")),
        "encoder_ff_interm_dropout": float(get("activation_dropout")),
        "encoder_dropout": float(get("dropout")),
        "encoder_layer_norm_first": bool(get("layer_norm_first")),
        "encoder_layer_drop": float(get("encoder_layerdrop")),
        "aux_num_out": None,
        "normalize_waveform": bool(normalize),
    }
    if used_defaults:
        log.warning("%s: not stored, fairseq defaults used for: %s", path, ", ".join(sorted(used_defaults)))
    check_torchaudio_config(config, path)
    return config, name


def _fairseq_spec(config: Mapping, prefix: str) -> NameSpec:
    p = prefix
    spec: NameSpec = {}

    def one(target, *alts):
        spec[target] = [(p + a,) for a in alts]

    for i, _ in enumerate(config["extractor_conv_layer_config"]):
        t = f"feature_extractor.conv_layers.{i}"
        one(f"{t}.conv.weight", f"feature_extractor.conv_layers.{i}.0.weight")
        if config["extractor_conv_bias"]:
            one(f"{t}.conv.bias", f"feature_extractor.conv_layers.{i}.0.bias")
        for wb in ("weight", "bias"):
            if config["extractor_mode"] == "layer_norm":
                one(f"{t}.layer_norm.{wb}", f"feature_extractor.conv_layers.{i}.2.1.{wb}")
            elif i == 0:
                one(f"{t}.layer_norm.{wb}", f"feature_extractor.conv_layers.0.2.{wb}")
    for wb in ("weight", "bias"):
        one(f"encoder.feature_projection.layer_norm.{wb}", f"layer_norm.{wb}")
        one(f"encoder.feature_projection.projection.{wb}", f"post_extract_proj.{wb}")
        one(f"encoder.transformer.layer_norm.{wb}", f"encoder.layer_norm.{wb}")
    one("encoder.transformer.pos_conv_embed.conv.bias", "encoder.pos_conv.0.bias")
    one(POS_CONV_WEIGHT_G, "encoder.pos_conv.0.weight_g", "encoder.pos_conv.0.parametrizations.weight.original0")
    one(POS_CONV_WEIGHT_V, "encoder.pos_conv.0.weight_v", "encoder.pos_conv.0.parametrizations.weight.original1")
    for i in range(int(config["encoder_num_layers"])):
        t, s = f"encoder.transformer.layers.{i}", f"encoder.layers.{i}"
        for wb in ("weight", "bias"):
            for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
                one(f"{t}.attention.{proj}.{wb}", f"{s}.self_attn.{proj}.{wb}")
            one(f"{t}.layer_norm.{wb}", f"{s}.self_attn_layer_norm.{wb}")
            one(f"{t}.feed_forward.intermediate_dense.{wb}", f"{s}.fc1.{wb}")
            one(f"{t}.feed_forward.output_dense.{wb}", f"{s}.fc2.{wb}")
            one(f"{t}.final_layer_norm.{wb}", f"{s}.final_layer_norm.{wb}")
    return spec


def read_fairseq_checkpoint(path: str | os.PathLike) -> tuple[dict, dict[str, torch.Tensor], list[str]]:
    """Read a fairseq wav2vec 2.0 / HuBERT checkpoint (pre-training, or CTC fine-tuning: the encoder only).

    Returns `(config, state_dict, dropped)`:
      config: torchaudio `wav2vec2_model` keyword arguments (`aux_num_out` None) + `model_type`
        ('wav2vec2' | 'hubert') + `normalize_waveform` (fairseq `task.normalize`); conv layers as
        [[dim, kernel, stride], ...].
      state_dict: torchaudio parameter names (see `torchaudio_param_shapes`), float32 CPU tensors.
      dropped: source keys deliberately left out (quantizer, project_q, final_proj, label_embs_concat,
        mask_emb, target_glu, CTC projection).
    Raises UnsafeCheckpointError / CheckpointError (naming the file, and the key when one is at fault).
    """
    path = os.fspath(path)
    ckpt = safe_torch_load(path)
    if not isinstance(ckpt, Mapping) or not isinstance(ckpt.get("model"), Mapping):
        raise CheckpointError(path, "not a fairseq checkpoint: no 'model' state dict")
    state = ckpt["model"]
    for k in state:
        if not isinstance(k, str):
            raise CheckpointError(path, f"non-string key {k!r} in the model state dict")
    model, task = _fairseq_sections(ckpt, path)
    prefix = ""
    if "w2v_args" in model or any(k.startswith("w2v_encoder.") for k in state):
        # fine-tuned model: the pre-trained encoder's own configuration is nested in w2v_args
        inner = model.get("w2v_args")
        if inner is None:
            raise CheckpointError(path, "fine-tuned checkpoint without 'w2v_args' (the encoder configuration)",
                                  key="w2v_args")
        inner_model, inner_task = _fairseq_sections({"cfg": inner} if "model" in _as_dict(inner, path, "w2v_args")
                                                    else {"args": inner}, path)
        if "normalize" in task and task["normalize"] is not None:
            inner_task = dict(inner_task, normalize=task["normalize"])
        model, task = inner_model, inner_task
        prefix = "w2v_encoder.w2v_model."
    config, name = _fairseq_config(model, task, path)
    shapes = torchaudio_param_shapes(config)
    spec = _fairseq_spec(config, prefix)

    synth = {}
    convs = config["extractor_conv_layer_config"]
    if convs[-1][0] == config["encoder_embed_dim"]:
        # fairseq has no post_extract_proj when the conv output already has the model width
        d = config["encoder_embed_dim"]
        synth["encoder.feature_projection.projection.weight"] = lambda: torch.eye(d)
        synth["encoder.feature_projection.projection.bias"] = lambda: torch.zeros(d)

    def drop(key: str) -> bool:
        return _FAIRSEQ_DROP.fullmatch(key) is not None

    state_dict, dropped = assemble_state_dict(path, state, spec, shapes, drop, synth)
    log.info(
        "%s: fairseq %s (%s), %d layers, d=%d, %d tensors mapped, %d dropped",
        path, name, config["model_type"], config["encoder_num_layers"], config["encoder_embed_dim"],
        len(state_dict), len(dropped),
    )
    return config, state_dict, dropped
