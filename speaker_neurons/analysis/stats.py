"""The activation-statistics pass: one streaming forward over the analysis set.

For every frame and layer the FFN activations (post-GELU, the input of W2) go through
`ActivationCounter`, which keeps only a (classes x width) count matrix per layer and a frame count per
class: memory does not grow with the corpus, and the activations are consumed inside the forward
(`ffn_hook`) instead of being kept. The class of a frame is (i-vector cluster g, SSL cluster c),
row index g * k_ssl + c; frames whose utterance has no i-vector cluster or whose label is missing get
class -1 and are not counted.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from speaker_neurons.analysis.frame_labels import align_labels
from speaker_neurons.analysis.counts import ActivationCounter, classes_table
from speaker_neurons.batching import audio_batches
from speaker_neurons.utils import get_logger

log = get_logger("stats")


@torch.inference_mode()
def activation_statistics(
    model,
    manifest: pd.DataFrame,
    ssl_labels: dict[str, np.ndarray],
    utt_clusters: dict[str, int],
    k_ssl: int,
    k_ivector: int,
    top_fraction: float,
    out_npz: str | Path,
    meta: dict | None = None,
    out_json: str | Path | None = None,
    *,
    max_mismatch: int,
    max_batch_seconds: float,
    progress: bool = True,
    partitions: Mapping[str, Mapping[str, int]] | None = None,
) -> dict:
    """Count, per layer, how often each neuron is among the top-K (by |a|) of a frame, per class.

    Writes `activation_counts.npz` (+ `.json`) through `ActivationCounter.save` and returns a summary.
    `partitions` ({name: {utt_id: cluster}}, e.g. every extractor's and the consensus): every frame is also
    counted in its classes of each of these partitions, in the same pass (the top-K computed once), so that
    the neuron sets of each can be computed from the file (`CountsData.for_partition`); memory and file grow
    with the number of partitions, not with the corpus.
    """
    from tqdm import tqdm

    usable = manifest[manifest["utt_id"].isin(ssl_labels) & manifest["utt_id"].isin(utt_clusters)]
    skipped = len(manifest) - len(usable)
    if usable.empty:
        raise ValueError("no utterance has both SSL frame labels and an i-vector cluster: nothing to count")
    if skipped:
        log.warning("%d utterances lack frame labels or an i-vector cluster and are skipped", skipped)
    names = list(partitions or {})
    missing = [n for n in names if not set(usable["utt_id"]) <= set(partitions[n])]
    if missing:
        raise ValueError(f"partition(s) {missing} lack utterances that the i-vector clusters have")
    bad = [n for n in names if any(not 0 <= int(partitions[n][u]) < k_ivector for u in usable["utt_id"])]
    if bad:
        raise ValueError(f"partition(s) {bad} name clusters outside 0..{k_ivector - 1}")
    # column q of an utterance: its class block offset plus its cluster in partition q (q = 0: the one used)
    groups = {u: np.asarray([utt_clusters[u]] + [int(partitions[n][u]) for n in names], dtype=np.int64)
              + k_ivector * np.arange(1 + len(names)) for u in usable["utt_id"]}
    device = next(model.parameters()).device
    counter = ActivationCounter((1 + len(names)) * k_ivector * k_ssl, list(model.ffn_widths), top_fraction,
                                device=device)
    truncated = 0
    bar = tqdm(total=len(usable), desc="activation counts", unit="utt", disable=not progress)
    for batch in audio_batches(usable, max_batch_seconds, model.sample_rate):
        n_frames = [model.frames_for(int(n)) for n in batch.lengths]
        class_ids = torch.full((len(batch.utt_ids), max(n_frames), 1 + len(names)), -1, dtype=torch.long)
        for i, (u, n) in enumerate(zip(batch.utt_ids, n_frames)):
            lab, cut = align_labels(ssl_labels[u], n, u, max_mismatch)
            truncated += int(cut)
            cls = np.where(lab[:, None] >= 0, groups[u][None, :] * k_ssl + lab[:, None], -1)
            class_ids[i, :n] = torch.from_numpy(cls)
        class_ids = class_ids.to(device)

        def hook(layer, acts, frame_mask):
            t = acts.shape[1]
            ids = class_ids[:, :t]
            if ids.shape[1] < t:
                ids = torch.nn.functional.pad(ids, (0, 0, 0, t - ids.shape[1]), value=-1)
            counter.update(layer, acts, frame_mask, ids)

        out = model(batch.wavs.to(device), batch.lengths.to(device), return_ffn=False, ffn_hook=hook)
        if [int(n) for n in out.lengths] != n_frames:
            raise RuntimeError(f"model frame counts {out.lengths.tolist()} differ from frames_for() {n_frames}")
        bar.update(len(batch.utt_ids))
    bar.close()
    info = {
        "utterances": len(usable),
        "skipped_utterances": skipped,
        "truncated_utterances": truncated,
        "k_ssl": k_ssl,
        "k_ivector": k_ivector,
        **(meta or {}),
    }
    counter.save(out_npz, classes_table(k_ivector, k_ssl), info, json_path=out_json, partition_names=names)
    if truncated:
        log.warning("%d utterances had label/model lengths differing by <= %d frames: truncated", truncated, max_mismatch)
    return info
