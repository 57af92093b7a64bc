"""Frame labels (the SSL clusters of every frame): stored per utterance (`labels.npz`: one int16 array per
utterance id) and joined to a model's frames by utterance id and frame index, never by line order."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from speaker_neurons.utils import save_npz


def save_labels(labels: dict[str, np.ndarray], path: str | Path) -> None:
    save_npz(path, {u: labels[u] for u in sorted(labels)})


def load_labels(path: str | Path) -> dict[str, np.ndarray]:
    with np.load(path) as z:
        return {k: z[k] for k in z.files}


def align_labels(labels: np.ndarray, n_frames: int, utt_id: str, max_mismatch: int) -> tuple[np.ndarray, bool]:
    """Join frame labels to `n_frames` model frames of one utterance by frame index.

    Lengths that differ by at most `max_mismatch` (different front ends) are truncated to the
    shorter; the flag says it happened (frames past the shorter side get no label: -1). A larger
    difference is an error naming the utterance.
    """
    diff = len(labels) - n_frames
    if abs(diff) > max_mismatch:
        raise ValueError(
            f"utterance {utt_id}: {len(labels)} frame labels for {n_frames} model frames "
            f"(difference {diff:+d} exceeds {max_mismatch}); labels and model frames must come from the same frame rate"
        )
    out = np.full(n_frames, -1, dtype=np.int64)
    m = min(len(labels), n_frames)
    out[:m] = labels[:m]
    return out, diff != 0
