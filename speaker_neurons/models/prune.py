"""Structured FFN pruning (METHOD §5): the bookkeeping of which neurons of the original, never-pruned
model remain (`Upstream.kept_indices`); the surgery itself is a method of the model
(`Upstream.prune_ffn`, `FeedForward.keep_`)."""

from __future__ import annotations

from typing import Any, Mapping, Sequence

from speaker_neurons.models.base import Upstream, current_kept_indices, layer_index

__all__ = ["prune_ffn", "current_kept_indices", "layer_index"]


def prune_ffn(model: Upstream, keep: Mapping[Any, Sequence[int]]) -> Upstream:
    """Keep only the listed neurons (current indices, sorted, unique) of the given 1-based layers, in place:
    `model.prune_ffn(keep)` (row j of W1, entry j of b1 and column j of W2 go; b2 stays; `kept_indices`
    is updated to the original indices). Returns the model."""
    return model.prune_ffn(keep)
