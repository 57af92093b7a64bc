"""Upstream models (MelHuBERT, wav2vec 2.0, HuBERT, WavLM), checkpoint readers and the native format.

Public entry points (imported lazily by the rest of the package):
`load_upstream(spec, device)`, `build_upstream(kind, config)`, `describe(path)`,
`prune_ffn(model, keep)`, `save_upstream(model, dir, parent_sha256, kept_indices)`, `load_native(dir)`,
`Upstream`, `UpstreamOutput`, `CheckpointError`.
"""

from speaker_neurons.models.base import CheckpointError, Upstream, UpstreamOutput, resolve_device
from speaker_neurons.models.loader import build_upstream, describe, load_upstream
from speaker_neurons.models.native import load_native, prune_ffn, save_upstream

__all__ = [
    "CheckpointError",
    "Upstream",
    "UpstreamOutput",
    "build_upstream",
    "describe",
    "load_native",
    "load_upstream",
    "prune_ffn",
    "resolve_device",
    "save_upstream",
]
