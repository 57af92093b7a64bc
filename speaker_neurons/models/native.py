"""The project's own model format (METHOD §5): `save_upstream`, `load_native`.

A native model is a folder with
* `model.safetensors`: the state dict (our key names, feature statistics included for MelHuBERT);
* `config.json`: `format` ("speaker-neurons-native"), `format_version`, `kind`, the full constructor `config`
  (FFN widths per layer), `ffn_widths`, `original_ffn_widths`, `kept_indices` (per 1-based layer, the
  indices in the original, never-pruned model of the neurons kept), `parent_sha256`, `param_counts`
  (`total`, `ffn`), `sample_rate`, `speaker_neurons_version`.
`load_native` rebuilds the model from `config.json` and loads the tensors with strict key / shape checks.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import torch

from speaker_neurons.models.base import Upstream, resolve_device
from speaker_neurons.models.errors import CheckpointError
from speaker_neurons.models.base import current_kept_indices, layer_index
from speaker_neurons.models.registry import build_upstream
from speaker_neurons.utils import sha256_file

NATIVE_FORMAT = "speaker-neurons-native"
NATIVE_VERSION = 1
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"


def save_upstream(model: Upstream, out_dir: str | os.PathLike, parent_sha256: Optional[str] = None,
                  kept_indices: Optional[Mapping[Any, Sequence[int]]] = None) -> Path:
    """Write `model.safetensors` + `config.json` into `out_dir` (created). Returns the folder.

    `kept_indices`: original indices per layer (default: what `prune_ffn` / `load_native` recorded, else
    identity). `parent_sha256` defaults to the model's own record (a reloaded native model keeps it).
    """
    from safetensors.torch import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    widths = model.ffn_widths
    if kept_indices is None:
        kept = current_kept_indices(model)
    else:
        kept = {layer_index(k): [int(i) for i in v] for k, v in kept_indices.items()}
    if sorted(kept) != list(range(1, len(widths) + 1)):
        raise ValueError(f"kept_indices must list every layer 1..{len(widths)}, got {sorted(kept)}")
    for l, w in enumerate(widths, start=1):
        if len(kept[l]) != w:
            raise ValueError(f"kept_indices of layer {l} has {len(kept[l])} entries but the layer has width {w}")
    original = model.original_ffn_widths
    if original is None and model.kept_indices is None and kept_indices is None:
        original = widths
    if parent_sha256 is None:
        parent_sha256 = model.parent_sha256
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    counts = model.param_counts()
    meta = {
        "format": NATIVE_FORMAT,
        "format_version": NATIVE_VERSION,
        "kind": model.kind,
        "config": model.config,
        "ffn_widths": widths,
        "original_ffn_widths": list(original) if original is not None else None,
        "kept_indices": {str(l): kept[l] for l in sorted(kept)},
        "parent_sha256": parent_sha256,
        "param_counts": {"total": counts["total"], "ffn": counts["ffn"]},
        "sample_rate": model.sample_rate,
        "speaker_neurons_version": _version(),
    }
    tmp_w = out / (WEIGHTS_NAME + ".tmp")
    # one metadata key only: safetensors writes a metadata map in hash order, so several keys would
    # make the bytes differ between identical saves (the kind is in config.json)
    save_file(tensors, str(tmp_w), metadata={"format": "pt"})
    os.replace(tmp_w, out / WEIGHTS_NAME)
    meta["weights"] = {"file": WEIGHTS_NAME, "bytes": (out / WEIGHTS_NAME).stat().st_size,
                       "sha256": sha256_file(out / WEIGHTS_NAME)}  # load_native checks them
    tmp_c = out / (CONFIG_NAME + ".tmp")
    tmp_c.write_text(_dumps(meta))
    os.replace(tmp_c, out / CONFIG_NAME)
    return out


def _dumps(meta: dict[str, Any]) -> str:
    """Indented JSON with every list of numbers on one line (kept_indices stays compact and readable)."""
    text = json.dumps(meta, indent=1)

    def flat(m: "re.Match[str]") -> str:
        return "[" + ", ".join(x.strip() for x in m.group(1).split(",")) + "]"

    return re.sub(r"\[\s*(-?[\d.eE+-]+(?:,\s*-?[\d.eE+-]+)*)\s*\]", flat, text) + "\n"


def _version() -> str:
    from speaker_neurons import __version__

    return __version__


def is_native_dir(path: str | os.PathLike) -> bool:
    p = Path(path)
    if not (p.is_dir() and (p / CONFIG_NAME).is_file()):
        return False
    try:
        meta = json.loads((p / CONFIG_NAME).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(meta, dict) and meta.get("format") == NATIVE_FORMAT


def read_native_config(path: str | os.PathLike) -> dict[str, Any]:
    p = Path(path)
    cfg_path = p / CONFIG_NAME
    if not p.exists():
        raise CheckpointError(p, "no such file or folder")
    if not cfg_path.is_file():
        raise CheckpointError(p, f"not a native model folder (no {CONFIG_NAME})")
    try:
        meta = json.loads(cfg_path.read_text())
    except ValueError as e:
        raise CheckpointError(cfg_path, f"invalid JSON ({e})") from None
    if not isinstance(meta, dict) or meta.get("format") != NATIVE_FORMAT:
        raise CheckpointError(cfg_path, f"not a {NATIVE_FORMAT} config (format={meta.get('format') if isinstance(meta, dict) else None!r})")
    if int(meta.get("format_version", 0)) > NATIVE_VERSION:
        raise CheckpointError(cfg_path, f"format_version {meta.get('format_version')} is newer than this code ({NATIVE_VERSION})")
    for k in ("kind", "config"):
        if k not in meta:
            raise CheckpointError(cfg_path, f"missing field {k!r}")
    return meta


def _check_weights(weights: Path, record: Mapping[str, Any] | None, config: Path) -> None:
    """The weights file is the one `config.json` recorded (size, then sha256; folders written before the
    record was kept have none and are read as they are): a truncated or altered checkpoint is refused."""
    from speaker_neurons.stores import damaged_file

    if not record:
        return
    damage = damaged_file(weights.parent, {weights.name: {"bytes": int(record["bytes"]), "sha256": record["sha256"]}},
                          str(config))
    if damage:
        raise CheckpointError(None, f"{damage}; re-run the rule that wrote it")


def load_native(path: str | os.PathLike, device: str | torch.device = "cpu") -> Upstream:
    """Rebuild a native model; strict: every tensor must match a model key with the same shape and vice versa."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    p = Path(path)
    meta = read_native_config(p)
    weights = p / WEIGHTS_NAME
    if not weights.is_file():
        raise CheckpointError(p, f"missing {WEIGHTS_NAME}")
    try:
        model = build_upstream(meta["kind"], meta["config"])
    except ValueError as e:
        raise CheckpointError(p / CONFIG_NAME, f"invalid model config: {e}") from None
    _check_weights(weights, meta.get("weights"), p / CONFIG_NAME)
    try:
        sd = load_file(str(weights))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(weights, f"not a readable safetensors file ({e})") from None
    model.load_state_dict_checked(sd, weights)
    widths = model.ffn_widths
    if "ffn_widths" in meta and list(meta["ffn_widths"]) != widths:
        raise CheckpointError(p / CONFIG_NAME, f"ffn_widths {meta['ffn_widths']} disagree with the config's {widths}")
    kept = meta.get("kept_indices")
    if kept is not None:
        kept = {layer_index(k): [int(i) for i in v] for k, v in kept.items()}
        if sorted(kept) != list(range(1, len(widths) + 1)) or any(len(kept[l]) != w for l, w in enumerate(widths, 1)):
            raise CheckpointError(p / CONFIG_NAME, "kept_indices do not match the layer widths")
        identity = all(kept[l] == list(range(w)) for l, w in enumerate(widths, 1))
        orig = meta.get("original_ffn_widths")
        if identity and (orig is None or list(orig) == widths):
            kept = None
    model.kept_indices = kept
    model.original_ffn_widths = meta.get("original_ffn_widths")
    model.parent_sha256 = meta.get("parent_sha256")
    return model.to(resolve_device(device)).eval()
