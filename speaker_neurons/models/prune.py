"""Structured FFN pruning (METHOD §5): drop neurons of the feed-forward layers, keeping track of which
neurons of the original, never-pruned model remain (`Upstream.kept_indices`)."""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch
from torch import nn

from speaker_neurons.models.base import Upstream

__all__ = ["prune_ffn", "current_kept_indices", "layer_index"]


def layer_index(k) -> int:
    """A 1-based layer key of a `keep` / `kept_indices` mapping (int or its string, as in JSON) as an int."""
    try:
        return int(k)
    except (TypeError, ValueError):
        raise ValueError(f"layer keys must be 1-based integers, got {k!r}") from None


def current_kept_indices(model: Upstream) -> dict[int, list[int]]:
    """Original indices of the current neurons, per 1-based layer (identity for a never-pruned model)."""
    if model.kept_indices is not None:
        return {int(k): list(v) for k, v in model.kept_indices.items()}
    return {l + 1: list(range(w)) for l, w in enumerate(model.ffn_widths)}


def prune_ffn(model: Upstream, keep: Mapping[Any, Sequence[int]]) -> Upstream:
    """Keep only the listed neurons (current indices, sorted, unique) of the given 1-based layers, in place.

    Removing neuron j deletes row j of W1, entry j of b1 and column j of W2; b2 stays. Layers not in `keep`
    are unchanged. `model.kept_indices` is updated to the original indices. Returns the model.
    """
    ffs = model.feed_forwards()
    plan: dict[int, torch.Tensor] = {}
    for k, idx in keep.items():
        layer = layer_index(k)
        if not 1 <= layer <= len(ffs):
            raise ValueError(f"layer {layer} out of range 1..{len(ffs)}")
        idx = [int(i) for i in idx]
        width = ffs[layer - 1].width
        if not idx:
            raise ValueError(f"layer {layer}: cannot keep zero neurons")
        if any(b <= a for a, b in zip(idx, idx[1:])):
            raise ValueError(f"layer {layer}: kept indices must be sorted and unique")
        if idx[0] < 0 or idx[-1] >= width:
            raise ValueError(f"layer {layer}: kept indices must lie in 0..{width - 1}")
        plan[layer] = torch.tensor(idx, dtype=torch.long)
    if model.kept_indices is None and model.original_ffn_widths is None:
        model.original_ffn_widths = list(model.ffn_widths)
    kept = current_kept_indices(model)
    for layer, idx in plan.items():
        ff = ffs[layer - 1]
        w1, b1, w2 = ff.intermediate_dense.weight, ff.intermediate_dense.bias, ff.output_dense.weight
        d_in, d_out = w1.shape[1], w2.shape[0]
        i = idx.to(w1.device)
        new1 = nn.Linear(d_in, len(idx), device=w1.device, dtype=w1.dtype)
        new2 = nn.Linear(len(idx), d_out, device=w2.device, dtype=w2.dtype)
        with torch.no_grad():
            new1.weight.copy_(w1.index_select(0, i))
            new1.bias.copy_(b1.index_select(0, i))
            new2.weight.copy_(w2.index_select(1, i))
            new2.bias.copy_(ff.output_dense.bias)
        new1.weight.requires_grad_(w1.requires_grad)
        new1.bias.requires_grad_(b1.requires_grad)
        new2.weight.requires_grad_(w2.requires_grad)
        new2.bias.requires_grad_(ff.output_dense.bias.requires_grad)
        ff.intermediate_dense = new1
        ff.output_dense = new2
        kept[layer] = [kept[layer][j] for j in idx.tolist()]
    model.kept_indices = kept
    return model
