"""The data side of phoneme recognition (`speaker_neurons.pr`): what a PR head trains on, at any corpus size.

Two on-disk stores, each one flat file plus `index.tsv` (utt_id, offset, length) and a JSON record (`DONE`,
with each file's size and sha256), written in one streaming pass as a folder `stores.start` and `stores.finish`
make complete (a killed job's store is never taken as finished; a damaged one is rewritten), and read by
explicit positioned reads (`os.pread`, never a memory map: mapped pages count in a process's resident memory
and would make it grow with the corpus):

* `AudioCache`: every utterance's decoded samples at the model's rate as int16 (32 kB per second of
  audio; 11.6 GB for LibriSpeech train-clean-100). The frozen upstream runs on it at every step.
* `FrameCache`: every utterance's stacked hidden states hidden_0..hidden_L as float16, frame-major
  (frames x (L+1) x d: about 1 MB per second of a base model's audio, 360 GB for train-clean-100), so
  that one utterance is one contiguous read. Only where `pr.feature_cache_gb` allows
  (`feature_cache_bytes` computes the need before anything is written).

Batches: `TrainPlan` is the one stream of training batches every head of a model shares: per epoch a
permutation from `numpy.random.default_rng([data_seed, epoch])`, sorted by length (longest first) inside
buckets of `BUCKET_BATCHES` batches, cut into batches of `batch_size` utterances, the batches shuffled by
the same generator. Batch k is a pure function of (seed, k), so a resumed run continues the stream
without replaying it and a `torch.utils.data.DataLoader` with any number of workers yields the same
batches in the same order (`loader`). Each worker opens the store itself and builds the padded float32
batch (and the targets), so batch assembly overlaps the model's compute.
"""

from __future__ import annotations

import json
import math
import os
import signal
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd
import torch

from speaker_neurons import stores
from speaker_neurons.rowfile import RowFile
from speaker_neurons.utils import get_logger

log = get_logger("pr")

BUCKET_BATCHES = 8  # batches per length bucket of the training stream (little padding, still well mixed)
DONE = "done.json"  # the store's record (`stores.finish`): a folder without it is not a finished store


# ------------------------------------------------------------------------------------------- one flat store
class _FlatStore:
    """A flat file of `dtype` rows of shape `row` (index.tsv: utt_id, offset, length in rows) read with pread."""

    data_name = ""

    def __init__(self, store_dir: str | os.PathLike):
        self.dir = Path(store_dir)
        p = self.dir / DONE
        if not p.is_file():
            raise FileNotFoundError(f"{self.dir}: no {DONE} (an unfinished store; it is rebuilt by the stage that "
                                    f"writes it)")
        self.info = json.loads(p.read_text())
        idx = pd.read_csv(self.dir / "index.tsv", sep="\t", dtype={"utt_id": str})
        self._where = {u: (int(o), int(n)) for u, o, n in zip(idx["utt_id"], idx["offset"], idx["length"])}
        self.dtype = np.dtype(self.info["dtype"])
        self.row = tuple(int(x) for x in self.info["row"])
        self._rows = RowFile(self.dir / self.data_name, self.dtype, int(np.prod(self.row, dtype=np.int64)),
                             int(self.info["rows"]))

    def __contains__(self, utt: str) -> bool:
        return utt in self._where

    def __len__(self) -> int:
        return len(self._where)

    def utterances(self) -> list[str]:
        return list(self._where)

    def length(self, utt: str) -> int:
        return self._where[utt][1]

    def read(self, utt: str) -> np.ndarray:
        """The utterance's rows (length, *row), a fresh array (not a view of a mapping)."""
        off, n = self._where[utt]
        return self._rows.read(off, off + n).reshape(n, *self.row)

    def close(self) -> None:
        self._rows.close()


def _write_store(items: Iterable[tuple[str, np.ndarray]], out_dir: str | os.PathLike, data_name: str, dtype,
                 meta: Mapping[str, Any]) -> dict:
    """Stream (utt_id, rows) into `out_dir/data_name` (+ index.tsv and the record DONE, with each file's size and
    sha256, the data file hashed as it is written: `store_ready` checks them). `out_dir` is the store's own
    folder: it is written as `<out_dir>.tmp` and renamed when complete (`stores.start`, `stores.finish`);
    a write that fails removes its `.tmp`. Holds one item at most."""
    import hashlib
    import shutil

    h = hashlib.sha256()
    tmp = stores.start(out_dir)
    try:
        seen: set[str] = set()
        index: list[tuple[str, int, int]] = []
        row: tuple[int, ...] | None = None
        offset = 0
        with open(tmp / data_name, "wb") as f:
            for utt, a in items:
                utt = str(utt)
                if utt in seen:
                    raise ValueError(f"utterance {utt!r} given twice to the store {out_dir}")
                seen.add(utt)
                a = np.ascontiguousarray(a, dtype=dtype)
                if row is None:
                    row = tuple(a.shape[1:])
                elif tuple(a.shape[1:]) != row:
                    raise ValueError(f"{utt}: rows of shape {a.shape[1:]} do not match the store's {row}")
                f.write(a.tobytes())
                h.update(a.tobytes())
                index.append((utt, offset, len(a)))
                offset += len(a)
        if row is None:
            raise ValueError(f"no utterances to write into {out_dir}")
        pd.DataFrame(index, columns=["utt_id", "offset", "length"]).to_csv(tmp / "index.tsv", sep="\t", index=False)
        nbytes = offset * int(np.prod(row, dtype=np.int64)) * np.dtype(dtype).itemsize
        info = {"utterances": len(index), "rows": offset, "row": list(row), "dtype": np.dtype(dtype).name,
                "bytes": nbytes, **dict(meta)}
        known = {data_name: {"bytes": nbytes, "sha256": h.hexdigest()}}
        record = stores.finish(tmp, DONE, info, known=known)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return record


def store_ready(store_dir: str | os.PathLike, digest: str) -> bool:
    """Whether a complete store of the same inputs (`digest`) is already there (a resumed job reuses it) and
    its files are the ones recorded when it was written (size, then sha256: one read of the store). A store
    whose file was truncated, altered or removed is not ready, with a warning naming the file: it is
    rewritten, never used."""
    return stores.ready(store_dir, DONE, digest, f"writing {store_dir} again", log)


# ------------------------------------------------------------------------------------------- frame features
class FrameCache(_FlatStore):
    """Stacked hidden states (T, L+1, d) float16 per utterance (`write_frame_cache`)."""

    data_name = "frames.f16"
    kind = "features"

    def __init__(self, cache_dir: str | os.PathLike):
        super().__init__(cache_dir)
        self.layers, self.dim = self.row

    def frames(self, utt: str) -> int:
        return self.length(utt)

    def frames_major(self, utt: str) -> np.ndarray:
        """(T, L+1, d) float16."""
        return self.read(utt)

    def get(self, utt: str) -> np.ndarray:
        """(L+1, T, d) float16: the stacked hidden states as the upstream gave them."""
        return np.transpose(self.read(utt), (1, 0, 2))

    def batch(self, utts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, T_max, L+1, d) float32 zero-padded and (B,) int64 frame counts."""
        lengths = [self.frames(u) for u in utts]
        x = np.zeros((len(utts), max(lengths, default=0), self.layers, self.dim), dtype=np.float32)
        for b, u in enumerate(utts):
            x[b, : lengths[b]] = self.read(u)
        return torch.from_numpy(x), torch.tensor(lengths, dtype=torch.long)


def write_frame_cache(items: Iterable[tuple[str, np.ndarray]], out_dir: str | os.PathLike,
                      meta: Mapping[str, Any] | None = None) -> dict:
    """Write (utt_id, hidden states (L+1, T, d)) items as one float16 frame-major file (see the module)."""

    def frame_major():
        for utt, h in items:
            h = np.asarray(h)
            if h.ndim != 3:
                raise ValueError(f"{utt}: expected hidden states (L+1, T, d), got shape {h.shape}")
            yield utt, np.transpose(h, (1, 0, 2))

    info = _write_store(frame_major(), out_dir, FrameCache.data_name, np.float16, meta or {})
    info.update(frames=info["rows"], layers=info["row"][0], dim=info["row"][1])
    return info


def feature_cache_bytes(frames: int, layers: int, dim: int) -> int:
    """Bytes of the float16 frame cache: frames x (L+1) x d x 2."""
    return int(frames) * int(layers) * int(dim) * 2


# ------------------------------------------------------------------------------------------- audio
class AudioCache(_FlatStore):
    """Decoded samples of every utterance as int16 (`write_audio_cache`); `read_float` gives float32."""

    data_name = "audio.i16"
    kind = "audio"

    def samples(self, utt: str) -> int:
        return self.length(utt)

    def read_float(self, utt: str) -> np.ndarray:
        return self.read(utt)[:, 0].astype(np.float32) / 32768.0


def to_int16(wav: np.ndarray) -> np.ndarray:
    """float samples in [-1, 1) -> int16 (x 32768, rounded, clipped): exact for 16-bit sources (LibriSpeech)."""
    return np.clip(np.rint(np.asarray(wav, dtype=np.float64) * 32768.0), -32768, 32767).astype(np.int16)


def write_audio_cache(rows: pd.DataFrame, out_dir: str | os.PathLike, sample_rate: int, max_batch_seconds: float,
                      meta: Mapping[str, Any], progress: bool = True) -> dict:
    """Decode every utterance of `rows` (utt_id, path, duration[, start, end]) at `sample_rate` into the int16
    audio cache (decoding in a background thread, `batching.audio_batches`; one batch in memory)."""
    from tqdm import tqdm

    from speaker_neurons.batching import audio_batches

    bar = tqdm(total=len(rows), desc="PR audio cache", unit="utt", disable=not progress, mininterval=5)

    def items():
        for batch in audio_batches(rows, max_batch_seconds, sample_rate):
            for i, u in enumerate(batch.utt_ids):
                yield u, to_int16(batch.wavs[i, : int(batch.lengths[i])].numpy())[:, None]
            bar.update(len(batch.utt_ids))

    info = _write_store(items(), out_dir, AudioCache.data_name, np.int16, {"sample_rate": int(sample_rate), **meta})
    bar.close()
    log.info("PR audio cache: %d utterances, %d samples at %d Hz as int16 (%.3g GB)", info["utterances"], info["rows"],
             sample_rate, info["bytes"] / 1e9)
    return info


# ------------------------------------------------------------------------------------------- batches
class TrainPlan:
    """The shared training stream: `batch(k)` = item indices of batch k (0-based), a pure function of
    (lengths, batch_size, seed, k) (see the module)."""

    def __init__(self, lengths: Sequence[int], batch_size: int, seed: int):
        self.lengths = np.asarray(lengths, dtype=np.int64)
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.per_epoch = math.ceil(len(self.lengths) / self.batch_size)
        self._epoch: tuple[int, list[np.ndarray]] | None = None

    def epoch(self, e: int) -> list[np.ndarray]:
        rng = np.random.default_rng([self.seed, int(e)])
        order = rng.permutation(len(self.lengths))
        bucket = BUCKET_BATCHES * self.batch_size
        seq = np.concatenate([sorted(order[s : s + bucket].tolist(), key=lambda i: (-self.lengths[i], i))
                              for s in range(0, len(order), bucket)]).astype(np.int64)
        batches = [seq[s : s + self.batch_size] for s in range(0, len(seq), self.batch_size)]
        return [batches[i] for i in rng.permutation(len(batches))]

    def batch(self, k: int) -> np.ndarray:
        e, i = divmod(int(k), self.per_epoch)
        if self._epoch is None or self._epoch[0] != e:
            self._epoch = (e, self.epoch(e))
        return self._epoch[1][i]


def eval_batches(lengths: Sequence[int], batch_size: int) -> list[np.ndarray]:
    """Fixed evaluation batches of item indices, longest first (little padding; ties by index)."""
    order = sorted(range(len(lengths)), key=lambda i: (-int(lengths[i]), i))
    return [np.asarray(order[s : s + batch_size], dtype=np.int64) for s in range(0, len(order), batch_size)]


class BatchSet(torch.utils.data.Dataset):
    """Item k = the padded batch of `plan(k)` (indices into `utts`): {utts, index, inputs (B, T, L+1, d)
    float32 features or (B, S) float32 audio, lengths (frames or samples), targets (flat int64),
    target_lengths}. `eos_id` is appended to every target when given."""

    def __init__(self, store: _FlatStore, utts: Sequence[str], targets: Mapping[str, np.ndarray],
                 plan: Callable[[int], np.ndarray], eos_id: int | None):
        self.store, self.utts, self.targets, self.plan, self.eos = store, list(utts), targets, plan, eos_id

    def __getitem__(self, k: int) -> dict[str, Any]:
        idx = self.plan(int(k))
        utts = [self.utts[i] for i in idx]
        arrays = [self.store.read(u) for u in utts]
        lengths = [len(a) for a in arrays]
        x = np.zeros((len(utts), max(lengths), *self.store.row), dtype=np.float32)
        for b, a in enumerate(arrays):
            x[b, : len(a)] = a
        if isinstance(self.store, AudioCache):
            x = x[..., 0] / np.float32(32768.0)
        tgt = [self.targets[u] if self.eos is None else np.append(self.targets[u], self.eos) for u in utts]
        return {"utts": utts, "index": torch.from_numpy(np.asarray(idx, dtype=np.int64)),
                "inputs": torch.from_numpy(x), "lengths": torch.tensor(lengths, dtype=torch.long),
                "targets": torch.from_numpy(np.concatenate(tgt).astype(np.int64)),
                "target_lengths": torch.tensor([len(t) for t in tgt], dtype=torch.long)}


def _one_thread(_):
    torch.set_num_threads(1)
    # SIGTERM (a time limit) is the main process's to answer: it saves a checkpoint and stops, which ends the
    # workers. A worker that died of it first would fail the main process before it could save.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def loader(dataset: BatchSet, start: int, stop: int, workers: int, device) -> torch.utils.data.DataLoader:
    """Items start..stop-1 of `dataset` in order; `workers` processes build them ahead (0 = in this
    process), pinned for a CUDA device. The order and content do not depend on `workers`."""
    cuda = torch.device(device).type == "cuda"
    return torch.utils.data.DataLoader(dataset, batch_size=None, sampler=range(int(start), int(stop)),
                                       num_workers=int(workers), pin_memory=cuda, worker_init_fn=_one_thread,
                                       prefetch_factor=2 if workers else None)
