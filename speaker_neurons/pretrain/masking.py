"""HuBERT span masking of the input frames (METHOD §7)."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch


def span_mask(
    lengths: Sequence[int] | np.ndarray | torch.Tensor,
    max_len: int | None = None,
    *,
    mask_prob: float,
    mask_length: int,
    min_masks: int,
    rng: np.random.Generator | int | None = None,
) -> torch.Tensor:
    """HuBERT span masking. Returns a bool tensor (B, max_len), True = masked.

    Per utterance of n valid frames, `int(mask_prob * n / mask_length + U[0,1))` span starts (at least
    `min_masks`, at most `n - mask_length + 1`) are drawn without replacement from the positions where a
    whole span fits, and each masks `mask_length` frames. Spans may overlap (as in fairseq's default), so
    the masked fraction is about `1 - (1 - mask_prob / mask_length) ** mask_length` (0.53 for 0.7 / 5).
    Padding is never masked; utterances shorter than one span get no mask.
    """
    if isinstance(lengths, torch.Tensor):
        lengths = lengths.detach().cpu().numpy()
    lengths = np.asarray(lengths, dtype=np.int64)
    if max_len is None:
        max_len = int(lengths.max()) if len(lengths) else 0
    if not isinstance(rng, np.random.Generator):
        rng = np.random.default_rng(rng)
    mask = np.zeros((len(lengths), max_len), dtype=bool)
    span = np.arange(mask_length)
    for b, n in enumerate(lengths):
        n = int(min(n, max_len))
        positions = n - mask_length + 1
        if positions <= 0:
            continue
        num = int(mask_prob * n / mask_length + rng.random())
        num = min(max(num, min_masks), positions)
        if num <= 0:
            continue
        starts = rng.choice(positions, size=num, replace=False)
        mask[b, (starts[:, None] + span[None, :]).ravel()] = True
    return torch.from_numpy(mask)


def expected_mask_fraction(mask_prob: float, mask_length: int) -> float:
    """Approximate fraction of frames `span_mask` masks in a long utterance."""
    q = min(1.0, mask_prob / mask_length)
    return 1.0 - (1.0 - q) ** mask_length
