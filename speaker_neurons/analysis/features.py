"""Layer features for frame clustering.

One model pass over the manifest writes the hidden states of `feature_layer` (0 = the input of the
first layer, L = the last layer's output) into shards: `shard_00000.npz` ... each with
`feats` (frames, d) float16 (clustering does not need more precision and it halves disk and RAM),
`utt_ids` (n,), `lengths` (n,) int64 in the order the frames are concatenated. `index.tsv` lists
utt_id, shard, offset, frames so any utterance can be found without scanning.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

import numpy as np
import pandas as pd
import torch

from speaker_neurons.batching import audio_batches
from speaker_neurons.utils import get_logger, save_npz

log = get_logger("features")


def default_feature_layer(num_layers: int) -> int:
    """METHOD §3: layer 9 of 12; for a model of L layers, round(0.75 * L)."""
    return int(round(0.75 * num_layers))


def frame_period(model) -> float:
    """Seconds between model frames (0.010 for 10 ms MelHuBERT, 0.020 for wav2vec 2.0), from the
    frame count of 10 s of audio, rounded to the millisecond."""
    return round(10.0 / model.frames_for(160_000), 3)


@torch.inference_mode()
def extract_layer_features(
    model,
    manifest: pd.DataFrame,
    layer: int | str | None,
    out_dir: str | Path,
    shard_frames: int = 500_000,
    *,
    max_batch_seconds: float,
    progress: bool = True,
) -> dict:
    """Write the hidden states of `layer` for every utterance into float16 shards under `out_dir`
    (`layer` "auto" or None: `default_feature_layer`)."""
    from tqdm import tqdm

    layer = default_feature_layer(model.num_layers) if layer in (None, "auto") else int(layer)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if not 0 <= layer <= model.num_layers:
        raise ValueError(f"feature_layer {layer} is outside 0..{model.num_layers} for this model")
    device = next(model.parameters()).device
    buf: list[np.ndarray] = []
    ids: list[str] = []
    lens: list[int] = []
    index_rows = []
    shard = 0
    buffered = 0
    total = 0

    def flush():
        nonlocal shard, buffered, buf, ids, lens
        if not ids:
            return
        feats = np.concatenate(buf, axis=0)
        save_npz(out_dir / f"shard_{shard:05d}.npz", {"feats": feats, "utt_ids": np.array(ids), "lengths": np.array(lens, dtype=np.int64)})
        off = 0
        for u, n in zip(ids, lens):
            index_rows.append((u, shard, off, n))
            off += n
        shard += 1
        buf, ids, lens, buffered = [], [], [], 0

    bar = tqdm(total=len(manifest), desc=f"layer-{layer} features", unit="utt", disable=not progress)
    for batch in audio_batches(manifest, max_batch_seconds, model.sample_rate):
        out = model(batch.wavs.to(device), batch.lengths.to(device), return_ffn=False)
        hid = out.hidden[layer]
        for i, u in enumerate(batch.utt_ids):
            n = int(out.lengths[i])
            buf.append(hid[i, :n].float().cpu().numpy().astype(np.float16))
            ids.append(u)
            lens.append(n)
            buffered += n
            total += n
        if buffered >= shard_frames:
            flush()
        bar.update(len(batch.utt_ids))
    flush()
    bar.close()
    pd.DataFrame(index_rows, columns=["utt_id", "shard", "offset", "frames"]).to_csv(out_dir / "index.tsv", sep="\t", index=False)
    info = {
        "layer": layer,
        "utterances": len(manifest),
        "frames": total,
        "shards": shard,
        "dim": int(model.hidden_dim),
        "frame_period": frame_period(model),
    }
    (out_dir / "features.json").write_text(json.dumps(info, indent=2) + "\n")
    log.info("wrote %d frames of layer %d for %d utterances in %d shards", total, layer, len(manifest), shard)
    return info


def iter_feature_shards(feature_dir: str | Path) -> Iterator[tuple[list[str], np.ndarray, np.ndarray]]:
    """Yield (utt_ids, feats (frames, d) float16, lengths) shard by shard, in shard order."""
    shards = sorted(Path(feature_dir).glob("shard_*.npz"))
    if not shards:
        raise FileNotFoundError(f"{feature_dir}: no shard_*.npz feature files (run rule extract_features)")
    for p in shards:
        with np.load(p) as z:
            yield [str(u) for u in z["utt_ids"]], z["feats"], z["lengths"]
