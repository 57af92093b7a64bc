"""Upstream models (MelHuBERT, wav2vec 2.0, HuBERT, WavLM), checkpoint readers and the native format.

Public entry points (imported lazily by the rest of the package):
`load_upstream(spec, device)`, `build_upstream(kind, config)`, `describe(path)`,
`model.prune_ffn(keep)` (surgery is a method of the model), `save_upstream(model, dir, parent_sha256,
kept_indices)`, `load_native(dir)`,
`Upstream`, `UpstreamOutput`, `CheckpointError`, `resolve_device`.

Modules: `base` (the Upstream interface), `components` (layers), `melhubert` / `wav2vec2` (the models),
`registry` (kind -> class), `native` (the project's own format),
`unpickler` (restricted torch.load), `names` (parameter-name mapping), `fairseq_ckpt` / `hf` (readers),
`loader` (format detection and dispatch), `errors` (CheckpointError). Training lives in `speaker_neurons.pretrain`.
"""

from speaker_neurons.models.base import Upstream, UpstreamOutput, resolve_device
from speaker_neurons.models.errors import CheckpointError
from speaker_neurons.models.loader import describe, load_upstream
from speaker_neurons.models.native import load_native, save_upstream
from speaker_neurons.models.registry import build_upstream

__all__ = [
    "CheckpointError",
    "Upstream",
    "UpstreamOutput",
    "build_upstream",
    "describe",
    "load_native",
    "load_upstream",
    "resolve_device",
    "save_upstream",
]
