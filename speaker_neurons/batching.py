"""Every batch the package makes: items packed greedily under a padded-size budget.

`pack` is the one rule: walk the items in a given order and start a new batch when adding the next
item would make (longest item x items) exceed the budget, or the batch hold `max_count` items. An item
larger than the budget forms a batch of its own. Two orders use it:

* `length_batches`: training (pre-training, continued pre-training): a seeded shuffle, sorted by
  length inside buckets (little padding), batches shuffled, one call per epoch;
* `audio_batches`: inference over a manifest (features, activation statistics): shortest first,
  deterministic, with audio decoded in a background thread so decoding overlaps the forward pass.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np
import pandas as pd
import torch

from speaker_neurons.utils import fault_point, release_memory


def pack(order: Sequence[int], sizes: Sequence[float], max_total: float, max_count: int | None = None) -> list[list[int]]:
    """Cut `order` (item indices) into consecutive batches with max(size) * len(batch) <= max_total
    (and len(batch) <= max_count when given)."""
    batches: list[list[int]] = []
    cur: list[int] = []
    cur_max = 0.0
    for i in order:
        size = float(sizes[i])
        new_max = max(cur_max, size)
        if cur and ((max_count is not None and len(cur) >= max_count) or new_max * (len(cur) + 1) > max_total):
            batches.append(cur)
            cur, new_max = [], size
        cur.append(int(i))
        cur_max = new_max
    if cur:
        batches.append(cur)
    return batches


def length_batches(lengths: Sequence[int], max_frames: int, rng: np.random.Generator, bucket: int = 256) -> list[list[int]]:
    """One epoch of training batches (lists of item indices) with padded size max_len * B <= max_frames.

    Items are shuffled, sorted by length (longest first, then index) inside buckets of `bucket`, packed,
    and the batches shuffled; everything is drawn from `rng`, so the same generator state gives the
    same epoch.
    """
    lengths = np.asarray(lengths)
    order = rng.permutation(len(lengths))
    seq: list[int] = []
    for s in range(0, len(order), bucket):
        seq += sorted(order[s : s + bucket].tolist(), key=lambda i: (-lengths[i], i))
    batches = pack(seq, lengths, max_frames)
    perm = rng.permutation(len(batches))
    return [batches[i] for i in perm]


@dataclass
class Batch:
    utt_ids: list[str]
    wavs: torch.Tensor  # (B, S) float32, zero padded
    lengths: torch.Tensor  # (B,) int64 samples


def audio_batches(
    manifest: pd.DataFrame,
    max_batch_seconds: float,
    sample_rate: int,
    max_batch_size: int = 16,
    prefetch: int = 2,
) -> Iterator[Batch]:
    """The manifest's utterances in padded batches, shortest first (little padding, deterministic
    order: duration, then utterance id), at most `max_batch_seconds` of padded audio each, decoded at
    `sample_rate` (the model's).

    Rows with `start` / `end` columns (samples) are segments of their file: each file of a batch is
    decoded once however many of its segments the batch holds."""
    from concurrent.futures import ThreadPoolExecutor

    from speaker_neurons.audio import load_audio

    rows = manifest.sort_values(["duration", "utt_id"], kind="stable").reset_index(drop=True)
    groups = pack(range(len(rows)), rows["duration"].astype(float).to_numpy(), max_batch_seconds, max_batch_size)

    segmented = {"start", "end"} <= set(rows.columns)

    def load_group(group: list[int]) -> Batch:
        decoded: dict[str, np.ndarray] = {}
        waves = []
        for i in group:
            path = rows.at[i, "path"]
            if path not in decoded:
                decoded[path] = load_audio(path, sample_rate)[0]
            wav = decoded[path]
            if segmented:
                wav = wav[int(rows.at[i, "start"]) : int(rows.at[i, "end"])]
            waves.append(torch.from_numpy(np.ascontiguousarray(wav)))
        lengths = torch.tensor([w.numel() for w in waves], dtype=torch.long)
        out = torch.zeros(len(waves), int(lengths.max()))
        for j, w in enumerate(waves):
            out[j, : w.numel()] = w
        return Batch([str(rows.at[i, "utt_id"]) for i in group], out, lengths)

    with ThreadPoolExecutor(max_workers=1) as pool:
        futures = [pool.submit(load_group, g) for g in groups[:prefetch]]
        for i in range(len(groups)):
            if i:  # the previous batch is done with: its memory back to the system (`utils.release_memory`)
                release_memory()
            batch = futures[i].result()
            if i + prefetch < len(groups):
                futures.append(pool.submit(load_group, groups[i + prefetch]))
            futures[i] = None  # free the batch once consumed
            fault_point("batch")
            yield batch
