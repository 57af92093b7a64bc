"""One entry point for every upstream model file: `load_upstream(spec)`, `describe(path)`.

A spec is the config entry `{kind, path, format}`:
* `kind`: `melhubert` | `wav2vec2` | `hubert` | `wavlm` | `auto` (a native folder, pruned or not, says its own kind);
* `format`: `auto` | `native` (folder: config.json + model.safetensors) | `melhubert` (released torch file) |
  `fairseq` (`.pt` pickle) | `hf` (Hugging Face folder);
* `mean_std`: a MelHuBERT `mean-std.npy`, required for released MelHuBERT checkpoints (they carry no feature
  statistics); native folders store theirs.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Mapping, Optional

import torch

from speaker_neurons.config import choices
from speaker_neurons.models.base import Upstream, resolve_device
from speaker_neurons.models.errors import CheckpointError
from speaker_neurons.models.hf import is_hf_folder
from speaker_neurons.models.melhubert import MISSING_MEAN_STD, load_released
from speaker_neurons.models.native import is_native_dir, load_native
from speaker_neurons.models.registry import WAV2VEC2_FAMILY, build_upstream
from speaker_neurons.models.unpickler import safe_torch_load

log = logging.getLogger("speaker_neurons.models.loader")

#: the model kinds and file formats a `models` entry may name (the schema's enums)
KINDS = choices("models[].kind")
FORMATS = choices("models[].format")


def _sniff_pickle(obj: Any) -> Optional[str]:
    if isinstance(obj, dict):
        if "Upstream_Config" in obj and "model" in obj:
            return "melhubert"
        if "model" in obj and ("cfg" in obj or "args" in obj):
            return "fairseq"
    return None


def detect_format(path: str | os.PathLike, kind: str) -> tuple[str, Any]:
    """(format, already-loaded object or None). Raises CheckpointError naming the path when unknown."""
    p = Path(path)
    if not p.exists():
        raise CheckpointError(p, "no such file or folder")
    if p.is_dir():
        if is_native_dir(p):
            return "native", None
        if is_hf_folder(p):
            return "hf", None
        raise CheckpointError(p, "unknown checkpoint format: the folder is neither a native model "
                              "(config.json + model.safetensors) nor a Hugging Face model (config.json + weights)")
    if kind == "melhubert":
        return "melhubert", None
    if kind in WAV2VEC2_FAMILY:
        return "fairseq", None
    obj = safe_torch_load(p)
    fmt = _sniff_pickle(obj)
    if fmt is None:
        keys = list(obj)[:8] if isinstance(obj, dict) else type(obj).__name__
        raise CheckpointError(p, f"unknown checkpoint format: a torch file with top-level {keys}; expected a "
                              "MelHuBERT checkpoint (Upstream_Config, model) or a fairseq one (model, cfg|args)")
    return fmt, obj


def _kind_family(kind: str) -> str:
    return "melhubert" if kind == "melhubert" else "wav2vec2"


def _load(spec: Mapping[str, Any], device, require_mean_std: bool = True) -> tuple[Upstream, str]:
    if "path" not in spec or not spec["path"]:
        raise CheckpointError(None, "model spec has no 'path'")
    path = Path(str(spec["path"]))
    kind = str(spec["kind"])
    fmt = str(spec["format"])
    if kind not in KINDS:
        raise CheckpointError(path, f"unknown model kind {kind!r} (expected one of {', '.join(KINDS)})")
    if fmt not in FORMATS:
        raise CheckpointError(path, f"unknown format {fmt!r} (expected one of {', '.join(FORMATS)})")
    obj = None
    if fmt == "auto":
        fmt, obj = detect_format(path, kind)
    elif not path.exists():
        raise CheckpointError(path, "no such file or folder")

    if fmt == "native":
        model = load_native(path, device="cpu")
    elif fmt == "melhubert":
        model = load_released(obj if obj is not None else path, mean_std=spec.get("mean_std") or None, source=path,
                              require_mean_std=require_mean_std)
    elif fmt in ("fairseq", "hf"):
        # the readers are looked up at call time (tests substitute them)
        if fmt == "fairseq":
            from speaker_neurons.models.fairseq_ckpt import read_fairseq_checkpoint as reader
        else:
            from speaker_neurons.models.hf import read_hf_folder as reader
        try:
            result = reader(path)
        except CheckpointError:
            raise
        except FileNotFoundError:
            raise CheckpointError(path, "no such file or folder") from None
        except ValueError as e:  # the readers' own errors name the file already
            raise CheckpointError(None, str(e)) from e
        config, state = dict(result[0]), result[1]  # readers may return (config, state_dict[, dropped])
        if "model_type" not in config:
            if kind in WAV2VEC2_FAMILY:
                config["model_type"] = kind
            elif any("rel_attn_embed" in k for k in state):
                config["model_type"] = "wavlm"
        try:
            model = build_upstream(config.get("model_type", "wav2vec2"), config)
        except ValueError as e:
            raise CheckpointError(path, f"unsupported model configuration: {e}") from None
        model.load_state_dict_checked(state, path)
    else:  # pragma: no cover - guarded above
        raise CheckpointError(path, f"unknown format {fmt!r}")

    if kind != "auto" and _kind_family(kind) != _kind_family(model.kind):
        raise CheckpointError(path, f"the spec says kind {kind!r} but the file holds a {model.kind} model")
    if kind in WAV2VEC2_FAMILY and kind != model.kind:
        log.warning("%s: spec kind %s, file holds a %s model", path, kind, model.kind)
    return model.to(resolve_device(device)).eval(), fmt


def load_upstream(spec: Mapping[str, Any], device: str | torch.device) -> Upstream:
    """Load the model a spec names, in eval mode on `device` (`auto` | `cpu` | `cuda`)."""
    return _load(spec, device)[0]


def describe(path: str | os.PathLike, format: str, mean_std: Optional[str] = None) -> dict[str, Any]:
    """What a model file is: format, kind, layers, hidden size, per-layer FFN widths, parameter counts.

    A released MelHuBERT checkpoint is described without its `mean_std` (the structure does not need it);
    the result then carries a `note` that computing features does.
    """
    model, fmt = _load({"path": str(path), "format": format, "kind": "auto", "mean_std": mean_std}, device="cpu",
                       require_mean_std=False)
    counts = model.param_counts()
    out: dict[str, Any] = {
        "path": str(path),
        "format": fmt,
        "kind": model.kind,
        "num_layers": model.num_layers,
        "hidden_dim": model.hidden_dim,
        "ffn_widths": model.ffn_widths,
        "param_counts": counts,
        "frame_shift_ms": _frame_shift_ms(model),
        "config": model.config,
    }
    if model.original_ffn_widths is not None:
        out["original_ffn_widths"] = list(model.original_ffn_widths)
    if model.parent_sha256:
        out["parent_sha256"] = model.parent_sha256
    if fmt == "melhubert" and not mean_std:
        out["note"] = f"features need mean_std: {MISSING_MEAN_STD}"
    return out


def _frame_shift_ms(model: Upstream) -> float:
    if model.kind == "melhubert":
        return float(model.config["frame_period"])
    stride = 1
    for b in model.feature_extractor.conv_layers:
        stride *= b.stride
    return 1000.0 * stride / model.sample_rate
