"""Rule pool_layers' SID store: each hidden layer's mean over every segment of a corpus (METHOD §9), the
input of the SID heads (`speaker_neurons.sid`).

The SUPERB SID head is linear up to its classifier, so mean-pooling can move to the front (see
`speaker_neurons.sid`): `pool_layer_means` runs the upstream once per model and keeps one (L+1, d) matrix per
segment.

Segments: whole utterances (SUPERB's test protocol; the default on every corpus but the demo), or
(`crop_seconds`) consecutive crops of that length (a remainder shorter than half a crop is dropped);
short crops keep the small demo away from the ceiling (`crop_seconds: auto`).

Bounded memory: the pooled store is float16 (accumulated in float32), written into a memory map as the
segments are pooled, block by block (resumable: `stores.BlockLog`), and stored uncompressed, so that
training and scoring read it by memory map, one mini-batch or chunk at a time (`load_pooled`): VoxCeleb1 on
whole utterances is 3 GB, and sid_eval needs that (as page cache) plus a constant.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd
import torch

from speaker_neurons.stores import BlockLog, array_digest
from speaker_neurons.utils import fault_point, get_logger, release_memory

log = get_logger("sid")


# ------------------------------------------------------------------------------------------- segments
def crop_of(crop_seconds: float | str | None, corpus_source: str) -> float | None:
    """sid.crop_seconds resolved for a corpus of source `corpus_source`: auto = its recipe's `sid_crop_seconds`
    (0.5 s on the synthesized demo, whose few short utterances would put whole-utterance SID at the
    ceiling; None, whole utterances as SUPERB scores, on every other corpus); a number or None as given."""
    if crop_seconds == "auto":
        from speaker_neurons.data.recipes import recipe

        return recipe(corpus_source).sid_crop_seconds
    if isinstance(crop_seconds, str):
        raise ValueError(f"sid.crop_seconds must be a number of seconds, null or auto, not {crop_seconds!r}")
    return None if crop_seconds is None else float(crop_seconds)


def segments(manifest: pd.DataFrame, crop_seconds: float | None, sample_rate: int,
             min_crop_fraction: float) -> pd.DataFrame:
    """One row per segment: seg_id, utt_id, path, speaker, split, start, end (samples at `sample_rate`, the
    rate the audio is decoded at: the model's), sorted. An utterance's last crop is kept when it holds at
    least `min_crop_fraction` of a crop (sid.min_crop_fraction)."""
    rows = []
    for r in manifest.sort_values("utt_id", kind="stable").itertuples(index=False):
        n = int(round(float(r.duration) * sample_rate))
        if not crop_seconds:
            bounds = [(0, n)]
        else:
            c = int(round(crop_seconds * sample_rate))
            bounds = [(s, min(s + c, n)) for s in range(0, n, c) if min(s + c, n) - s >= c * min_crop_fraction]
        for i, (s, e) in enumerate(bounds):
            rows.append((f"{r.utt_id}#{i}", r.utt_id, r.path, r.speaker, r.split, s, e))
    return pd.DataFrame(rows, columns=["seg_id", "utt_id", "path", "speaker", "split", "start", "end"])


@torch.inference_mode()
def pool_layer_means(model, segs: pd.DataFrame, *, max_batch_seconds: float, max_batch_size: int = 32,
                     progress: bool = True, feature_cache: dict | None = None, out: np.ndarray | None = None,
                     amp: bool | str = False) -> np.ndarray:
    """(segments, L+1, d): each hidden layer's mean over the segment's valid frames, accumulated in
    float32; returned as a new float32 array, or written into `out` (e.g. a float16 memory map: rule
    pool_layers never holds the store in memory) and `out` returned. `amp` (config upstream.amp) runs
    the upstream under `utils.inference_autocast`; False = float32.

    Crops of one file take the fast path where the model can slice them from the file's features
    (`segment_features`, MelHuBERT: exact): each file is decoded and featurised once instead of once
    per crop. `feature_cache` (a dict, kept by the caller) keeps those features between calls on the
    same segments: an erase ablation runs many variants of one model over the same test segments."""
    from tqdm import tqdm

    from speaker_neurons.utils import inference_autocast

    shape = (len(segs), model.num_layers + 1, model.hidden_dim)
    if out is None:
        out = np.zeros(shape, dtype=np.float32)
    elif tuple(out.shape) != shape:
        raise ValueError(f"pool_layer_means: `out` has shape {tuple(out.shape)}, the segments need {shape}")
    bar = tqdm(total=len(segs), desc="pooled layers", unit="seg", disable=not progress, mininterval=5)
    device = next(model.parameters()).device
    with inference_autocast(device, amp):
        if hasattr(model, "segment_features") and len(segs) > segs["path"].nunique():
            _pool_from_features(model, segs, out, max_batch_seconds, max_batch_size, bar, device, feature_cache)
        else:
            _pool_from_audio(model, segs, out, max_batch_seconds, max_batch_size, bar, device)
    bar.close()
    return out


def _pool_into(out: np.ndarray, idx: Sequence[int], o) -> None:
    mask = o.frame_mask().unsqueeze(-1).float()  # (B, T, 1)
    n = mask.sum(1).clamp_min(1.0)  # (B, 1)
    means = torch.stack([(h.detach().float() * mask).sum(1) / n for h in o.hidden], 1).cpu().numpy()  # (B, L+1, d)
    if means.dtype != out.dtype:
        with np.errstate(over="ignore"):
            means = means.astype(out.dtype)
        if not np.isfinite(means).all():
            raise FloatingPointError(f"a layer mean is beyond the range of {out.dtype} (|x| > "
                                     f"{float(np.finfo(out.dtype).max):g}): this model's hidden states cannot be "
                                     "stored in the float16 pooled store")
    out[np.asarray(idx)] = means


def _pool_from_audio(model, segs, out, max_batch_seconds, max_batch_size, bar, device) -> None:
    from speaker_neurons.batching import audio_batches

    items = pd.DataFrame({"utt_id": segs["seg_id"], "path": segs["path"], "start": segs["start"],
                          "end": segs["end"], "duration": (segs["end"] - segs["start"]) / model.sample_rate})
    row = {s: i for i, s in enumerate(segs["seg_id"])}
    for batch in audio_batches(items, max_batch_seconds, model.sample_rate, max_batch_size=max_batch_size):
        idx = [row[s] for s in batch.utt_ids]
        _pool_into(out, idx, model(batch.wavs.to(device), batch.lengths.to(device), return_ffn=False))
        bar.update(len(idx))


def _pool_from_features(model, segs, out, max_batch_seconds, max_batch_size, bar, device, cache) -> None:
    """Files in segment order, features sliced per crop (or, where the model cannot slice them exactly,
    computed per crop), crops encoded in batches."""
    from speaker_neurons.audio import load_audio

    by_path: dict[str, list[int]] = {}
    for i, p in enumerate(segs["path"].astype(str)):
        by_path.setdefault(p, []).append(i)
    starts, ends = segs["start"].to_numpy(), segs["end"].to_numpy()
    feats: dict[int, torch.Tensor] = {} if cache is None else cache
    pending: list[int] = []

    def flush():
        if not pending:
            return
        x = [feats[i] for i in pending]
        lengths = torch.tensor([len(f) for f in x], dtype=torch.long)
        batch = torch.zeros(len(x), int(lengths.max()), x[0].shape[1])
        for b, f in enumerate(x):
            batch[b, : len(f)] = f
        _pool_into(out, pending, model.encode(batch.to(device), lengths.to(device), return_ffn=False))
        fault_point("batch")
        release_memory()
        bar.update(len(pending))
        if cache is None:
            for i in pending:
                del feats[i]
        pending.clear()

    seconds = 0.0
    for path, rows in by_path.items():
        if any(i not in feats for i in rows):
            wav = torch.from_numpy(load_audio(path, model.sample_rate)[0])
            bounds = [(int(starts[i]), int(ends[i])) for i in rows]
            sliced = model.segment_features(wav.to(device), bounds)
            if sliced is None:  # not sliceable exactly: each crop's own features, as the audio path computes them
                sliced = [model.extract_features(wav[s:e].reshape(1, -1).to(device))[0][0] for s, e in bounds]
            feats.update({i: f.cpu() for i, f in zip(rows, sliced)})
        for i in rows:
            dur = (ends[i] - starts[i]) / model.sample_rate
            if pending and (len(pending) >= max_batch_size or seconds + dur > max_batch_seconds):
                flush()
                seconds = 0.0
            pending.append(i)
            seconds += dur
    flush()


def check_splits(segs: pd.DataFrame, manifest_path: str = "the manifest") -> None:
    """SID needs speakers and train, dev and test segments; say which is missing and how to fix it."""
    have = segs.groupby("split")["speaker"].nunique().to_dict() if len(segs) else {}
    missing = [s for s in ("train", "dev", "test") if not have.get(s)]
    unnamed = segs["speaker"].isna().all() or (segs["speaker"].astype(str).str.strip() == "").all() if len(segs) else True
    if unnamed or missing:
        what = "no speaker names" if unnamed else f"no {'/'.join(missing)} segments"
        raise ValueError(f"{manifest_path}: SID evaluation needs speakers and a train/dev/test split, but it has {what}. "
                         "Give the corpus `speaker` and `split` columns (tsv source), or set sid.enabled: false "
                         "(and erase.enabled: false) in the config.")

@dataclass
class SIDData:
    pooled: np.ndarray  # (N, L+1, d)
    labels: np.ndarray  # (N,) int64 index into `speakers`; -1 = a speaker with no train segment (unenrolled)
    split: np.ndarray  # (N,) str
    speakers: list[str]  # the enrolled speakers (those with train segments), sorted
    speaker_of: np.ndarray | None = None  # (N,) str: every segment's speaker, enrolled or not (for trials)
    utt_id: np.ndarray | None = None  # (N,) str: each segment's utterance (verification lists name utterances)

    def trial_speakers(self) -> np.ndarray:
        if self.speaker_of is not None:
            return self.speaker_of
        return np.where(self.labels >= 0, self.labels.astype(str), np.char.add("?", np.arange(len(self.labels)).astype(str)))


def make_data(pooled: np.ndarray, segs: pd.DataFrame) -> SIDData:
    """Labels: each segment's index among the enrolled speakers (those with train segments), -1 else."""
    speakers = sorted(segs.loc[segs["split"] == "train", "speaker"].astype(str).unique())
    index = {s: i for i, s in enumerate(speakers)}
    spk = segs["speaker"].astype(str).to_numpy()
    labels = np.array([index.get(s, -1) for s in spk], dtype=np.int64)
    utt = segs["utt_id"].astype(str).to_numpy() if "utt_id" in segs else None
    return SIDData(pooled, labels, segs["split"].astype(str).to_numpy(), speakers, spk, utt)


def _stored_member(path: str | os.PathLike, name: str) -> np.ndarray | None:
    """The npz member `name` as a read-only memory map where it is stored uncompressed (as rule
    pool_layers writes it: np.load would read it whole); None where it is compressed."""
    import struct
    import zipfile

    with zipfile.ZipFile(path) as zf:
        info = zf.getinfo(f"{name}.npy")
    if info.compress_type != zipfile.ZIP_STORED:
        return None
    with open(path, "rb") as f:
        f.seek(info.header_offset)
        local = f.read(30)
        if local[:4] != b"PK\x03\x04":
            raise ValueError(f"{path}: {name}.npy has no local zip header where the directory says; "
                             "re-run rule pool_layers")
        name_len, extra_len = struct.unpack("<HH", local[26:30])
        f.seek(info.header_offset + 30 + name_len + extra_len)
        version = np.lib.format.read_magic(f)
        read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, fortran, dtype = read_header(f)
        offset = f.tell()
    if dtype.hasobject:
        raise ValueError(f"{path}: {name}.npy holds Python objects; re-run rule pool_layers")
    if int(np.prod(shape)) == 0:
        return np.zeros(shape, dtype=dtype)
    return np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=shape, order="F" if fortran else "C")


def load_pooled(path: str | os.PathLike) -> tuple[SIDData, int]:
    """(the SID data, the number of layers L) of a `pooled_layers.npz` that rule pool_layers wrote. The
    pooled layers (float16; float32 in files of older versions) stay on disk as a read-only memory map:
    train and score by rows (`_rows`), never all at once."""
    with np.load(path) as z:
        segs = pd.DataFrame({c: z[c] for c in ("seg_id", "utt_id", "speaker", "split") if c in z.files})
        pooled = _stored_member(path, "pooled")
        if pooled is None:  # a compressed npz (not written by the workflow): read whole
            log.warning("%s is compressed: its pooled layers are read into memory", path)
            pooled = z["pooled"]
    check_finite(pooled, path)
    return make_data(pooled, segs), pooled.shape[1] - 1


def check_finite(pooled: np.ndarray, path: str | os.PathLike, chunk_bytes: int = 1 << 26) -> None:
    """Stop on pooled features that are not finite (NaN or inf: a damaged file, an overflow), naming the file
    and the first rows (segments): scored, they would give a meaningless accuracy without an error. Read in
    chunks of about 64 MB, so memory stays flat."""
    row_bytes = max(1, int(np.prod(pooled.shape[1:])) * pooled.dtype.itemsize)
    step = max(1, chunk_bytes // row_bytes)
    bad: list[int] = []
    for s in range(0, len(pooled), step):
        block = np.asarray(pooled[s : s + step])
        ok = np.isfinite(block).reshape(len(block), -1).all(1)
        if not ok.all():
            bad += (s + np.flatnonzero(~ok)).tolist()
            if len(bad) >= 5:
                break
    if bad:
        raise ValueError(f"{path}: pooled features of row(s) {bad[:5]} are not finite (NaN or inf): the file is "
                         "damaged or the model overflowed; remove it and re-run rule pool_layers")


def pooled_crop_seconds(path: str | os.PathLike) -> float | None:
    """The crop length the pooled file's segments were cut at (None: whole utterances)."""
    with np.load(path) as z:
        if "crop_seconds" not in z.files:
            return None
        c = float(z["crop_seconds"])
    return None if np.isnan(c) else c


# ------------------------------------------------------------------------------------------- for the workflow
#: The segment columns a pooled file keeps (the audio paths stay in the manifest: joined by utt_id).
POOLED_SEGMENT_COLUMNS = ("seg_id", "utt_id", "speaker", "split", "start", "end")


#: Segments per block of rule pool_layers: a block's means are written and recorded before the next
#: starts, so an interrupted job resumes at its first unfinished block.
POOL_BLOCK = 2048


def _pool_fingerprint(model, segs: pd.DataFrame, *settings: Any) -> str:
    """What a pooled store depends on (the model's weights, the segments, the settings): a store of an
    interrupted run is resumed only where this matches."""
    import hashlib

    h = hashlib.sha256(repr(settings).encode())
    for k, v in model.state_dict().items():
        h.update(f"{k}:{v.dtype}:{tuple(v.shape)}".encode())
        h.update(v.detach().cpu().reshape(-1).view(torch.uint8).numpy().tobytes())
    h.update(pd.util.hash_pandas_object(segs[list(POOLED_SEGMENT_COLUMNS)], index=False).to_numpy().tobytes())
    return h.hexdigest()


def _open_store(tmp: Path, shape: tuple[int, ...]) -> np.ndarray | None:
    """An interrupted run's float16 store `tmp`, read-only, or None (with a warning naming it) where it cannot be
    opened with the shape `shape` (truncated, replaced): every block is then pooled again."""
    try:
        store = np.load(tmp, mmap_mode="r")
    except (OSError, ValueError) as e:
        log.warning("%s cannot be opened (%s): pooling starts over", tmp, e)
        return None
    if store.shape != shape or store.dtype != np.float16:
        log.warning("%s holds %s %s, not float16 %s: pooling starts over", tmp, store.dtype, store.shape, shape)
        return None
    return store


def _allocate_store(tmp: Path, shape: tuple[int, ...]) -> None:
    """Create the float16 store `tmp` with its disk allocated up front: a disk too small for it fails here
    with an error naming the file and the bytes (a sparse memory map would instead be killed by SIGBUS at
    the first page the disk cannot hold)."""
    try:
        np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float16, shape=shape)  # the header, a sparse file
        fd = os.open(tmp, os.O_RDWR)
        try:
            os.posix_fallocate(fd, 0, os.fstat(fd).st_size)
        finally:
            os.close(fd)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        need = int(np.prod(shape, dtype=np.int64)) * 2
        raise OSError(e.errno, f"cannot allocate the pooled store's {need / 1e6:.1f} MB ({e.strerror})",
                      str(tmp)) from None


def pool_to_file(model, manifest_path: str | os.PathLike, crop_seconds: float | str | None, corpus_source: str,
                 min_crop_fraction: float, out: str | os.PathLike, max_batch_seconds: float,
                 amp: bool | str) -> dict[str, Any]:
    """Each hidden layer's mean over every segment of the manifest (the SID heads' input), with the
    segments themselves and the crop length (`crop_of(crop_seconds, corpus_source)`; NaN = whole
    utterances), as one uncompressed npz (fixed-width strings and integers: no pickled objects).

    The means (float32 sums) go into a float16 memory map beside `out` (`<out>.store.npy`) block by
    block (POOL_BLOCK segments; `<out>.store.json` records the finished ones), which is then streamed
    into the npz: memory stays one block, whatever the corpus; the disk holds the store twice for a
    moment. An interrupted job resumes at its first unfinished block when the model, the segments and
    the settings are the same (else it starts over), reusing a finished block only where it still holds the
    bytes recorded with it (sha256; `stores.BlockLog`). `load_pooled` reads the result by memory map."""
    from tqdm import tqdm

    from speaker_neurons.data.manifest import read_manifest
    from speaker_neurons.utils import save_npz

    crop = crop_of(crop_seconds, corpus_source)
    segs = segments(read_manifest(manifest_path), crop, model.sample_rate, min_crop_fraction)
    check_splits(segs, str(manifest_path))
    shape = (len(segs), model.num_layers + 1, model.hidden_dim)
    tmp = Path(f"{out}.store.npy")
    fingerprint = _pool_fingerprint(model, segs, crop, str(amp), float(max_batch_seconds), POOL_BLOCK, shape)
    blocks = [slice(s, min(s + POOL_BLOCK, len(segs))) for s in range(0, len(segs), POOL_BLOCK)]
    record = BlockLog(f"{out}.store.json", tmp, fingerprint)
    opened: list[np.ndarray | None] = []

    def recorded_block(b: int) -> str | None:  # the store is opened once, when the log is found to be ours
        if not opened:
            opened.append(_open_store(tmp, shape))
        return array_digest(opened[0][blocks[b]]) if opened[0] is not None and b < len(blocks) else None

    done = list(record.finished(recorded_block))
    opened.clear()
    log.info("%d segments (%s) -> a float16 store of %.2f GB%s", len(segs),
             "whole utterances" if crop is None else f"{crop:g} s crops", np.prod(shape) * 2 / 1e9,
             f"; resuming after {len(done)} finished blocks of {POOL_BLOCK}" if done else "")
    if not done:
        _allocate_store(tmp, shape)
    store = np.lib.format.open_memmap(tmp, mode="r+", dtype=np.float16, shape=shape)
    bar = tqdm(total=len(segs), initial=sum(blocks[b].stop - blocks[b].start for b in done), desc="pooled layers",
               unit="seg", mininterval=5)
    for b, rows in enumerate(blocks):
        if b in done:
            continue
        pool_layer_means(model, segs.iloc[rows].reset_index(drop=True), max_batch_seconds=max_batch_seconds,
                         progress=False, out=store[rows], amp=amp)
        store.flush()
        record.add(b, array_digest(store[rows]))
        bar.update(rows.stop - rows.start)
    bar.close()
    cols = {c: (segs[c].to_numpy(np.int64) if c in ("start", "end")
                else np.asarray(segs[c].astype(str).tolist(), dtype=str)) for c in POOLED_SEGMENT_COLUMNS}
    save_npz(out, {"pooled": store, **cols, "crop_seconds": np.float64(np.nan if crop is None else crop)})
    del store
    record.remove()
    return {"segments": len(segs), "shape": list(shape), "crop_seconds": crop, "dtype": "float16"}


def read_segments(pooled_path: str | os.PathLike, manifest_path: str | os.PathLike) -> pd.DataFrame:
    """The segments a pooled file was made from (rows as `segments` makes them), their audio paths
    joined from the manifest by utt_id."""
    from speaker_neurons.data.manifest import read_manifest

    with np.load(pooled_path) as z:
        absent = [c for c in POOLED_SEGMENT_COLUMNS if c not in z.files]
        if absent:
            raise ValueError(f"{pooled_path} has no segment column(s) {absent} (written by an older version); "
                             "re-run rule pool_layers")
        segs = pd.DataFrame({c: z[c] for c in POOLED_SEGMENT_COLUMNS})
    manifest = read_manifest(manifest_path)
    paths = dict(zip(manifest["utt_id"].astype(str), manifest["path"].astype(str)))
    missing = sorted(set(segs["utt_id"]) - set(paths))
    if missing:
        raise ValueError(f"{pooled_path} holds utterances that {manifest_path} lacks ({len(missing)}, e.g. "
                         f"{', '.join(missing[:5])}); re-run rule pool_layers")
    segs.insert(2, "path", segs["utt_id"].map(paths))
    return segs

