"""Which class builds which model kind: `build_upstream(kind, config)` (used by the loader and the native format)."""

from __future__ import annotations

from typing import Any, Mapping

from speaker_neurons.models.base import Upstream
from speaker_neurons.models.melhubert import MelHuBERT
from speaker_neurons.models.wav2vec2 import MODEL_TYPES as WAV2VEC2_FAMILY
from speaker_neurons.models.wav2vec2 import Wav2Vec2Upstream

__all__ = ["build_upstream", "WAV2VEC2_FAMILY"]


def build_upstream(kind: str, config: Mapping[str, Any]) -> Upstream:
    """A randomly initialised model of `kind` from its constructor config (eval mode)."""
    if kind == "melhubert":
        return MelHuBERT(dict(config))
    if kind in WAV2VEC2_FAMILY:
        cfg = dict(config)
        if cfg.setdefault("model_type", kind) != kind:
            raise ValueError(f"kind {kind!r} but config model_type {cfg['model_type']!r}")
        return Wav2Vec2Upstream(cfg)
    raise ValueError(f"unknown model kind {kind!r} (expected melhubert, wav2vec2, hubert or wavlm)")
