"""The one protocol of the resumable on-disk stores: what a store records when it is finished, how a
restarted job tells a reusable store from a partial, stale or damaged one, and how a partial one is left.

Three stores use it: the pre-training data store's parts (`pretrain/store.py`: features, teacher hidden
states, targets), PR's decoded-audio and frame caches (`pr_data.py`), and rule pool_layers' float16 SID store
(`sid_pool.py`). Two shapes of store:

* **A folder written whole** (`start`, `finish`, `ready`): written under `<name>.tmp`, which `finish`
  renames to `<name>` after writing the record (JSON, `record_name`) with the store's `digest` (a hash of
  everything that determines it) and every file's size and sha256. A folder without the `.tmp` suffix is
  therefore complete; a killed job leaves only a `.tmp` folder, which the next `start` removes. `ready`
  reuses a folder only when its digest is the one wanted and every file still has its recorded size and
  sha256 (`damaged_file`); a damaged one is rebuilt, with a warning naming the file.
* **A file written block by block** (`BlockLog`): a job that is killed resumes at its first unfinished
  block. The log (a JSON beside the store, replaced atomically after each block) records the store's
  `fingerprint` and each finished block's sha256; a restarted job reuses a block only when the
  fingerprint matches and the block still holds the bytes recorded (`BlockLog.finished`), else it writes
  the block again, with a warning naming the store.

Nothing here knows what a store holds.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import numpy as np

from speaker_neurons.utils import fault_point, get_logger, sha256_file, write_text_atomic

log = get_logger("stores")


def file_records(folder: str | os.PathLike, names: Iterable[str]) -> dict:
    """{name: {bytes, sha256}} of the files `names` below `folder`: what a store records when it is finished,
    so that `damaged_file` can tell, before it is reused, that a file changed."""
    folder = Path(folder)
    return {str(n): {"bytes": (folder / n).stat().st_size, "sha256": sha256_file(folder / n)} for n in names}


def damaged_file(folder: str | os.PathLike, records, recorded_in: str) -> str | None:
    """None when every file of `records` ({name: {bytes, sha256}}) below `folder` has its recorded size and
    sha256; else a sentence naming the first that does not (missing, truncated or replaced, altered).
    `records` None (a store written before records were kept) is a damage too: it cannot be checked."""
    folder = Path(folder)
    if not isinstance(records, dict):
        return f"{folder} records no file sizes and checksums (written by an older version)"
    for name, rec in sorted(records.items()):
        f = folder / name
        size = f.stat().st_size if f.is_file() else None
        if size != rec["bytes"]:
            return (f"{f} is {'missing' if size is None else f'{size} bytes'} where {rec['bytes']} bytes were "
                    f"recorded in {recorded_in} (truncated or replaced)")
        if sha256_file(f) != rec["sha256"]:
            return f"{f} does not hold the bytes recorded in {recorded_in} (altered or damaged)"
    return None


def ready(folder: str | os.PathLike, record_name: str, digest: str, then: str, logger=log) -> bool:
    """Whether `folder` holds a finished store of the inputs `digest` (its record `record_name`, written by
    `finish`) whose files are still the ones the record lists (`damaged_file`). A damaged one is not
    reusable, with a warning naming the file and what happens `then` (e.g. "rebuilding it")."""
    folder = Path(folder)
    try:
        info = json.loads((folder / record_name).read_text())
    except (OSError, ValueError):
        return False
    if not isinstance(info, dict) or info.get("digest") != digest:
        return False
    damage = damaged_file(folder, info.get("files"), record_name)
    if damage:
        logger.warning("%s: %s", damage, then)
        return False
    return True


def start(folder: str | os.PathLike) -> Path:
    """Remove a stale store `folder` (and an unfinished `<folder>.tmp`) and return the empty `.tmp` folder to
    write into."""
    folder = Path(folder)
    tmp = folder.with_name(folder.name + ".tmp")
    for old in (folder, tmp):
        if old.exists():
            shutil.rmtree(old)
    tmp.mkdir(parents=True)
    return tmp


def finish(tmp: str | os.PathLike, record_name: str, info: Mapping[str, Any],
           known: Mapping[str, Mapping[str, Any]] | None = None) -> dict[str, Any]:
    """Write the record `record_name` (`info`, which holds the `digest`, plus each file's size and sha256:
    `ready` checks them) and rename `<name>.tmp` to `<name>`: the store is complete. `known` gives the
    records of files already hashed as they were written (not read again). Returns the record."""
    tmp = Path(tmp)
    if not tmp.name.endswith(".tmp"):
        raise ValueError(f"{tmp} is not a folder made by stores.start")
    known = dict(known or {})
    names = [str(f.relative_to(tmp)) for f in sorted(tmp.rglob("*"))
             if f.is_file() and f.name != record_name and str(f.relative_to(tmp)) not in known]
    record = {**dict(info), "files": {**known, **file_records(tmp, names)}}
    (tmp / record_name).write_text(json.dumps(record, indent=2, sort_keys=True, default=str) + "\n")
    final = tmp.with_name(tmp.name[: -len(".tmp")])
    fault_point("store")
    os.replace(tmp, final)
    return record


def array_digest(block: np.ndarray) -> str:
    """sha256 of an array's bytes (a block of a store written block by block)."""
    return hashlib.sha256(np.ascontiguousarray(block).view(np.uint8).reshape(-1).data).hexdigest()


class BlockLog:
    """The record of `store`, a file written block by block: the store's `fingerprint` (what it depends
    on) and the sha256 of each finished block, in the JSON file `path`."""

    def __init__(self, path: str | os.PathLike, store: str | os.PathLike, fingerprint: str):
        self.path, self.store, self.fingerprint = Path(path), Path(store), fingerprint
        self.digests: dict[int, str] = {}

    def finished(self, digest_of: Callable[[int], str | None]) -> dict[int, str]:
        """The blocks of an interrupted run that can be reused: the log must exist and belong to this
        `fingerprint`, and each block must still hold the bytes it was recorded with (`digest_of(b)`, None
        for a block the store cannot hold). A block that does not is written again, with a warning naming
        the store: a damaged store is never used silently. Returns {block: sha256}, kept as this log's."""
        self.digests = {}
        if not (self.path.is_file() and self.store.is_file()):
            return {}
        try:
            saved = json.loads(self.path.read_text())
        except (OSError, ValueError):
            log.warning("%s cannot be read: %s is written again from the start", self.path, self.store)
            return {}
        if not isinstance(saved, dict) or saved.get("fingerprint") != self.fingerprint:
            log.info("%s belongs to other inputs or settings: it is written again from the start", self.store)
            return {}
        recorded = saved.get("digests", {})
        damaged = []
        for b in (int(b) for b in saved.get("done", [])):
            digest = digest_of(b)
            if digest is not None and recorded.get(str(b)) == digest:
                self.digests[b] = digest
            else:
                damaged.append(b)
        if damaged:
            log.warning("%s: finished block(s) %s no longer hold the bytes recorded in %s (a damaged or altered "
                        "store): writing them again", self.store, damaged, self.path.name)
        return dict(self.digests)

    def add(self, block: int, digest: str) -> None:
        """Record `block` as finished (the log replaced atomically: a kill leaves the old one or the new)."""
        self.digests[int(block)] = digest
        write_text_atomic(self.path, json.dumps({"fingerprint": self.fingerprint, "done": list(self.digests),
                                                 "digests": {str(b): d for b, d in self.digests.items()}}))
        fault_point("block")

    def remove(self) -> None:
        """Remove the store and its log (the store was moved into its final form)."""
        self.store.unlink(missing_ok=True)
        self.path.unlink(missing_ok=True)
