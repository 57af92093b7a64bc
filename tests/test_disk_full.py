"""A full disk (docs/usage.md, "When things go wrong"): a job whose results or scratch folder fills up stops with
an error naming the folder and the space it asked for, leaves no partial file a later run would take as
complete, and, rerun once space is freed, ends byte-identical to an uninterrupted run.

The small disk is a tmpfs mounted inside the test's folder, which needs root (CI runs as root); elsewhere
these tests skip, saying why."""

from __future__ import annotations

import errno
import os
import shutil
import subprocess

import numpy as np
import pandas as pd
import pytest

from speaker_neurons import pr_data, stages
from speaker_neurons.runner import DiskFull

pytestmark = pytest.mark.skipif(os.geteuid() != 0 or shutil.which("mount") is None,
                                reason="mounting a small tmpfs needs root and mount(8)")


@pytest.fixture
def small_disk(tmp_path):
    """A 1 MB tmpfs at tmp_path/small (unmounted afterwards)."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], capture_output=True, text=True)
    if done.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


def _fill(disk, leave: int) -> None:
    """Write a filler file on `disk` leaving about `leave` bytes free."""
    room = shutil.disk_usage(disk).free - leave
    with open(disk / "filler", "wb") as f:
        while room > 0:
            n = min(room, 1 << 16)
            try:
                f.write(b"\0" * n)
                f.flush()
            except OSError:
                break
            room -= n


def _corpus(tmp_path):
    """12 utterances of 3 s (two speakers, train/dev/test), a tiny native MelHuBERT; pooled in 0.1 s crops
    (360 segments: a float16 store of about 69 kB)."""
    import soundfile as sf

    from speaker_neurons.data.manifest import write_manifest
    from speaker_neurons.models import save_upstream
    from test_models import tiny

    rng = np.random.default_rng(0)
    rows = []
    for i in range(12):
        p = tmp_path / "audio" / f"u{i:02d}.wav"
        p.parent.mkdir(exist_ok=True)
        sf.write(p, (0.1 * rng.standard_normal(48000)).astype(np.float32), 16000, subtype="FLOAT")
        rows.append({"utt_id": f"u{i:02d}", "path": str(p), "speaker": f"s{i % 2}", "gender": "F",
                     "split": "train" if i < 6 else ("dev" if i < 9 else "test"), "duration": 3.0,
                     "sample_rate": 16000})
    write_manifest(pd.DataFrame(rows), tmp_path / "manifest.tsv")
    model = save_upstream(tiny("melhubert"), tmp_path / "model")
    return {"model": str(model), "manifest": str(tmp_path / "manifest.tsv")}


def _pool(inputs, folder, log):
    params = {"upstream": {"kind": "melhubert", "format": "native"}, "crop_seconds": 0.1, "corpus_source": "tsv",
              "min_crop_fraction": 0.5, "max_batch_seconds": 10.0, "amp": False, "device": "cpu"}
    outputs = {"pooled": str(folder / "sid" / "pooled_layers.npz"),
               "provenance": str(folder / "sid" / "provenance" / "pool_layers.json")}
    return stages.run_stage("pool_layers", inputs, outputs, params, log_path=str(log), disk_mb=5)


@pytest.mark.parametrize("leave", [24 << 10, 0], ids=["store-fits-npz-does-not", "nothing-fits"])
def test_a_full_results_folder_stops_the_job_naming_it_and_a_rerun_ends_identical(tmp_path, small_disk, leave,
                                                                                     package_logs):
    inputs = _corpus(tmp_path)
    _pool(inputs, tmp_path / "ref", tmp_path / "ref.log")
    reference = (tmp_path / "ref" / "sid" / "pooled_layers.npz").read_bytes()
    store = len(reference) - 20_000  # the float16 store is most of the file
    assert store > 60_000
    _fill(small_disk, store + leave if leave else 0)
    with pytest.raises(DiskFull) as err:
        _pool(inputs, small_disk, tmp_path / "full.log")
    said = str(err.value)
    assert str(small_disk / "sid") in said and "MB free" in said and "asks for 5 MB" in said
    left = sorted(str(p.relative_to(small_disk)) for p in small_disk.rglob("*") if p.is_file())
    assert "sid/pooled_layers.npz" not in left and not any(n.endswith(".tmp") for n in left), left
    if leave:  # the finished store stays for the rerun to resume from (it is not an output)
        assert "sid/pooled_layers.npz.store.npy" in left
    else:  # the store could not even be allocated: nothing of it is left
        assert left == ["filler"] and "cannot allocate the pooled store" in said
    assert "ran out of disk space" in (tmp_path / "full.log").read_text()
    (small_disk / "filler").unlink()
    _pool(inputs, small_disk, tmp_path / "again.log")
    assert (small_disk / "sid" / "pooled_layers.npz").read_bytes() == reference
    assert not list((small_disk / "sid").glob("pooled_layers.npz.*"))


def test_a_full_scratch_folder_leaves_no_store_and_a_rerun_writes_the_same_one(tmp_path, small_disk):
    """PR's decoded-audio cache (its scratch): a write that fills the disk removes its .tmp and leaves no
    store that `store_ready` would take; written again once there is room, it is the store a roomy disk gets."""
    inputs = _corpus(tmp_path)
    rows = pd.read_csv(inputs["manifest"], sep="\t").head(6)  # 6 x 3 s x 32 kB/s = 576 kB of int16
    pr_data.write_audio_cache(rows, tmp_path / "ref", 16000, 10.0, {"digest": "x"}, progress=False)
    _fill(small_disk, 200_000)
    with pytest.raises(OSError) as err:
        pr_data.write_audio_cache(rows, small_disk / "audio", 16000, 10.0, {"digest": "x"}, progress=False)
    assert err.value.errno == errno.ENOSPC
    assert sorted(p.name for p in small_disk.iterdir()) == ["filler"]
    assert not pr_data.store_ready(small_disk / "audio", "x")
    (small_disk / "filler").unlink()
    pr_data.write_audio_cache(rows, small_disk / "audio", 16000, 10.0, {"digest": "x"}, progress=False)
    assert pr_data.store_ready(small_disk / "audio", "x")
    for name in ("audio.i16", "index.tsv", pr_data.DONE):
        assert (small_disk / "audio" / name).read_bytes() == (tmp_path / "ref" / name).read_bytes()
