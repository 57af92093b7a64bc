"""The one protocol of the resumable stores (`speaker_neurons.stores`): a folder written whole is complete only
once renamed with its record, a damaged one is not reused, and a block-by-block store reuses exactly the blocks
that still hold their recorded bytes."""

from __future__ import annotations

import json
import logging

import numpy as np

from speaker_neurons import stores


def _write(folder, payload: bytes, digest: str = "d1"):
    tmp = stores.start(folder)
    (tmp / "data.bin").write_bytes(payload)
    (tmp / "sub").mkdir()
    (tmp / "sub" / "index.tsv").write_text("a\t1\n")
    return stores.finish(tmp, "info.json", {"digest": digest})


def test_a_folder_store_is_complete_only_after_finish_and_damage_is_refused(tmp_path, caplog):
    folder = tmp_path / "part"
    tmp = stores.start(folder)
    (tmp / "data.bin").write_bytes(b"half")
    assert tmp.name == "part.tmp" and not folder.exists()  # killed here: nothing looks finished
    assert not stores.ready(folder, "info.json", "d1", "rebuilding it")
    returned = _write(folder, b"0123456789")
    assert folder.is_dir() and not (tmp_path / "part.tmp").exists()  # start removed the stale .tmp
    rec = json.loads((folder / "info.json").read_text())
    assert returned == rec  # finish returns the record it wrote
    assert rec["digest"] == "d1" and sorted(rec["files"]) == ["data.bin", "sub/index.tsv"]
    assert rec["files"]["data.bin"]["bytes"] == 10
    assert stores.ready(folder, "info.json", "d1", "rebuilding it")
    assert not stores.ready(folder, "info.json", "d2", "rebuilding it")  # other inputs
    for damage, said in ((b"0123456780", "altered or damaged"), (b"01234", "truncated or replaced")):
        (folder / "data.bin").write_bytes(damage)
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            assert not stores.ready(folder, "info.json", "d1", "rebuilding it")
        assert f"{folder / 'data.bin'}" in caplog.text and said in caplog.text and "rebuilding it" in caplog.text
    (folder / "data.bin").unlink()
    assert not stores.ready(folder, "info.json", "d1", "rebuilding it")


def test_finish_takes_records_of_files_hashed_as_they_were_written(tmp_path):
    tmp = stores.start(tmp_path / "s")
    (tmp / "big.bin").write_bytes(b"x" * 100)
    known = {"big.bin": {"bytes": 100, "sha256": stores.file_records(tmp, ["big.bin"])["big.bin"]["sha256"]}}
    assert stores.finish(tmp, "done.json", {"digest": "k"}, known=known)["files"]["big.bin"] == known["big.bin"]
    assert stores.ready(tmp_path / "s", "done.json", "k", "again")


def test_a_block_log_reuses_only_blocks_that_hold_their_recorded_bytes(tmp_path, caplog):
    store = tmp_path / "s.npy"
    arr = np.lib.format.open_memmap(store, mode="w+", dtype=np.float16, shape=(6, 2))
    blocks = [slice(0, 2), slice(2, 4), slice(4, 6)]
    log = stores.BlockLog(tmp_path / "s.json", store, "fp")
    for b in (0, 1):  # a job killed before block 2
        arr[blocks[b]] = b + 1
        arr.flush()
        log.add(b, stores.array_digest(arr[blocks[b]]))
    del arr

    def digest_of(b):
        return stores.array_digest(np.load(store, mmap_mode="r")[blocks[b]])

    assert stores.BlockLog(tmp_path / "s.json", store, "fp").finished(digest_of) == {
        0: digest_of(0), 1: digest_of(1)}
    assert stores.BlockLog(tmp_path / "s.json", store, "other").finished(digest_of) == {}  # other inputs
    arr = np.load(store, mmap_mode="r+")
    arr[0, 0] = np.nan  # block 0 altered after it was recorded
    arr.flush()
    del arr
    again = stores.BlockLog(tmp_path / "s.json", store, "fp")
    with caplog.at_level(logging.WARNING):
        assert list(again.finished(digest_of)) == [1]
    assert str(store) in caplog.text and "[0]" in caplog.text
    again.add(0, digest_of(0))  # written again: the log keeps block 1 and records block 0
    assert json.loads((tmp_path / "s.json").read_text())["done"] == [1, 0]
    again.remove()
    assert not store.exists() and not (tmp_path / "s.json").exists()
