"""Parameter names of our wav2vec 2.0 / HuBERT / WavLM modules, and the mapping of a foreign state dict onto them.

Our `Wav2Vec2Upstream` uses torchaudio's parameter names key for key, so the target of every reader is
torchaudio's `wav2vec2_model(...)` / `wavlm_model(...)` state dict:

* `torchaudio_param_shapes(config)`: every parameter name and its shape, from the config alone;
* `check_torchaudio_config(config, path)`: the structural constraints a stored configuration must meet;
* `assemble_state_dict(path, source, spec, shapes, drop)`: builds that state dict from a file's tensors under a
  `NameSpec` (target name -> alternative source names), accounting for every tensor of the file (used, or
  deliberately dropped) and every parameter of the model.

Shared by the fairseq (`fairseq_ckpt`) and Hugging Face (`hf`) readers.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import torch

from speaker_neurons.models.components import expand_widths
from speaker_neurons.models.errors import CheckpointError

__all__ = [
    "POS_CONV_WEIGHT_G",
    "POS_CONV_WEIGHT_V",
    "NameSpec",
    "assemble_state_dict",
    "check_torchaudio_config",
    "torchaudio_param_shapes",
]

#: names of the weight-normalised positional convolution, as torchaudio's state_dict() writes them
#: (torch.nn.utils.parametrizations.weight_norm; `original0` is g, `original1` is v)
POS_CONV_WEIGHT_G = "encoder.transformer.pos_conv_embed.conv.parametrizations.weight.original0"
POS_CONV_WEIGHT_V = "encoder.transformer.pos_conv_embed.conv.parametrizations.weight.original1"


def torchaudio_param_shapes(config: Mapping) -> dict[str, tuple[int, ...]]:
    """Every parameter of torchaudio's `wav2vec2_model(**kw)` / `wavlm_model(**kw)` and its shape, from the
    config alone (`model_type` 'wavlm' selects the WavLM attention). The pos-conv weight uses
    `POS_CONV_WEIGHT_G/V`; `encoder_ff_interm_features` may be a per-layer list."""
    shapes: dict[str, tuple[int, ...]] = {}
    convs = [tuple(int(v) for v in c) for c in config["extractor_conv_layer_config"]]
    mode = config["extractor_mode"]
    in_ch = 1
    for i, (out_ch, k, _s) in enumerate(convs):
        p = f"feature_extractor.conv_layers.{i}"
        if mode == "layer_norm" or (mode == "group_norm" and i == 0):
            shapes[f"{p}.layer_norm.weight"] = (out_ch,)
            shapes[f"{p}.layer_norm.bias"] = (out_ch,)
        shapes[f"{p}.conv.weight"] = (out_ch, in_ch, k)
        if config["extractor_conv_bias"]:
            shapes[f"{p}.conv.bias"] = (out_ch,)
        in_ch = out_ch
    d = int(config["encoder_embed_dim"])
    h = int(config["encoder_num_heads"])
    k = int(config["encoder_pos_conv_kernel"])
    g = int(config["encoder_pos_conv_groups"])
    shapes["encoder.feature_projection.layer_norm.weight"] = (in_ch,)
    shapes["encoder.feature_projection.layer_norm.bias"] = (in_ch,)
    shapes["encoder.feature_projection.projection.weight"] = (d, in_ch)
    shapes["encoder.feature_projection.projection.bias"] = (d,)
    shapes["encoder.transformer.pos_conv_embed.conv.bias"] = (d,)
    shapes[POS_CONV_WEIGHT_G] = (1, 1, k)
    shapes[POS_CONV_WEIGHT_V] = (d, d // g, k)
    shapes["encoder.transformer.layer_norm.weight"] = (d,)
    shapes["encoder.transformer.layer_norm.bias"] = (d,)
    wavlm = config.get("model_type") == "wavlm"
    widths = expand_widths(config["encoder_ff_interm_features"], config["encoder_num_layers"],
                           "encoder_ff_interm_features")
    for i, w in enumerate(widths):
        p = f"encoder.transformer.layers.{i}"
        if wavlm:
            if i == 0:
                shapes[f"{p}.attention.rel_attn_embed.weight"] = (int(config["encoder_num_buckets"]), h)
            shapes[f"{p}.attention.attention.in_proj_weight"] = (3 * d, d)
            shapes[f"{p}.attention.attention.in_proj_bias"] = (3 * d,)
            shapes[f"{p}.attention.attention.out_proj.weight"] = (d, d)
            shapes[f"{p}.attention.attention.out_proj.bias"] = (d,)
            shapes[f"{p}.attention.gru_rel_pos_const"] = (1, h, 1, 1)
            shapes[f"{p}.attention.gru_rel_pos_linear.weight"] = (8, d // h)
            shapes[f"{p}.attention.gru_rel_pos_linear.bias"] = (8,)
        else:
            for proj in ("k_proj", "v_proj", "q_proj", "out_proj"):
                shapes[f"{p}.attention.{proj}.weight"] = (d, d)
                shapes[f"{p}.attention.{proj}.bias"] = (d,)
        shapes[f"{p}.layer_norm.weight"] = (d,)
        shapes[f"{p}.layer_norm.bias"] = (d,)
        shapes[f"{p}.feed_forward.intermediate_dense.weight"] = (w, d)
        shapes[f"{p}.feed_forward.intermediate_dense.bias"] = (w,)
        shapes[f"{p}.feed_forward.output_dense.weight"] = (d, w)
        shapes[f"{p}.feed_forward.output_dense.bias"] = (d,)
        shapes[f"{p}.final_layer_norm.weight"] = (d,)
        shapes[f"{p}.final_layer_norm.bias"] = (d,)
    if config.get("aux_num_out"):
        shapes["aux.weight"] = (int(config["aux_num_out"]), d)
        shapes["aux.bias"] = (int(config["aux_num_out"]),)
    return shapes


def check_torchaudio_config(config: Mapping, path) -> None:
    """CheckpointError (naming `path`) when a reader's config cannot describe one of our models."""
    d, h, g = config["encoder_embed_dim"], config["encoder_num_heads"], config["encoder_pos_conv_groups"]
    if d <= 0 or h <= 0 or d % h:
        raise CheckpointError(path, f"encoder_embed_dim {d} is not a multiple of the {h} attention heads")
    if g <= 0 or d % g:
        raise CheckpointError(path, f"encoder_embed_dim {d} is not a multiple of the {g} pos-conv groups")
    if config["extractor_mode"] not in ("group_norm", "layer_norm"):
        raise CheckpointError(path, f"unsupported extractor_mode {config['extractor_mode']!r}")
    try:
        expand_widths(config["encoder_ff_interm_features"], config["encoder_num_layers"], "encoder_ff_interm_features")
    except ValueError as e:
        raise CheckpointError(path, str(e), key="encoder_ff_interm_features") from None


# A mapping spec: target (torchaudio) name -> list of alternatives; each alternative is a tuple of source
# names whose tensors are concatenated along dim 0 (one name: used as is). The first complete alternative wins.
NameSpec = dict[str, list[tuple[str, ...]]]


def assemble_state_dict(
    path,
    source: Mapping[str, Any],
    spec: NameSpec,
    shapes: Mapping[str, tuple[int, ...]],
    drop: Callable[[str], bool],
    synthesize: Mapping[str, Callable[[], torch.Tensor]] | None = None,
) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Build a torchaudio-named state dict from `source`.

    Errors (CheckpointError naming `path` and the key): a source key that is neither used by `spec` nor
    accepted by `drop`; a target whose sources are absent (unless `synthesize` provides it); a shape that
    differs from `shapes`; a non-tensor value. Returns (state_dict as float32, sorted dropped source keys).
    """
    if set(spec) != set(shapes):
        missing = sorted(set(shapes) - set(spec))
        raise CheckpointError(path, f"internal: no source name for {missing[:3]}")
    known = {s for alts in spec.values() for alt in alts for s in alt}
    dropped = []
    for key in source:
        if key in known:
            continue
        if drop(key):
            dropped.append(key)
            continue
        raise CheckpointError(path, f"unexpected tensor '{key}' (not part of the supported encoder and not a "
                              "known pre-training/head tensor)", key=key)
    out: dict[str, torch.Tensor] = {}
    used: set[str] = set()
    for target, alts in spec.items():
        chosen = next((alt for alt in alts if all(s in source for s in alt)), None)
        if chosen is None:
            if synthesize and target in synthesize:
                out[target] = synthesize[target]()
                continue
            want = " or ".join(" + ".join(alt) for alt in alts)
            raise CheckpointError(path, f"missing tensor '{want}' (needed for {target})", key=alts[0][0])
        parts = []
        for s in chosen:
            v = source[s]
            if not isinstance(v, torch.Tensor):
                raise CheckpointError(path, f"'{s}' is a {type(v).__name__}, not a tensor", key=s)
            parts.append(v)
            used.add(s)
        t = parts[0] if len(parts) == 1 else torch.cat(parts, dim=0)
        if tuple(t.shape) != tuple(shapes[target]):
            raise CheckpointError(
                path,
                f"'{' + '.join(chosen)}' has shape {tuple(t.shape)} but the stored configuration implies "
                f"{tuple(shapes[target])} for {target}",
                key=chosen[0],
            )
        if not t.is_floating_point():
            raise CheckpointError(path, f"'{chosen[0]}' is not a floating-point tensor", key=chosen[0])
        out[target] = t.detach().to(torch.float32).contiguous()
    # sources of alternatives that were not chosen (e.g. both weight_g and parametrizations present)
    for key in sorted(known & set(source) - used):
        raise CheckpointError(path, f"tensor '{key}' is redundant with another name for the same parameter", key=key)
    return out, sorted(dropped)
