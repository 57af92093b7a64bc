"""Memory and time of SID (rules pool_layers and sid_eval: `sid_pool.pool_to_file`, `sid.run_sid`) as the corpus
grows: a synthetic corpus at 1x and 4x utterances (same speakers, more utterances each), a tiny random
MelHuBERT, whole utterances. Each step runs in its own child process, which reports its peak RSS
(resource.getrusage); a child that only imports the package gives the baseline. Prints a table: pooled
store bytes, wall time, peak RSS, sid_eval's peak RSS beyond the store (the store is memory-mapped, so
its pages count in RSS as they are read) and the 4x/1x ratios. Target: sid_eval's RSS beyond the store
4x/1x <= 1.2 (memory bounded by the store plus a constant).

    .venv/bin/python benchmarks/sid_scale.py                    # about 1.5 minutes on 2 idle cores
    .venv/bin/python benchmarks/sid_scale.py --utterances 2000 --dim 512 --scales 1 4 16

`--base-stores N`: sid_eval alone on synthetic pooled stores of a base model's shape (13 x 768, float16,
20 kB per segment) of N and 4N segments, where the store, not the interpreter, is most of the memory.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import common  # noqa: E402  (and the project on sys.path)
from common import cpu_model, peak_rss_mb  # noqa: E402


def synth_corpus(folder: Path, utterances: int, speakers: int, seconds: float, seed: int = 0) -> Path:
    """`utterances` noisy tone mixtures of `seconds` (+-20%), each speaker its own three tones; 70/15/15
    train/dev/test per speaker. Returns the manifest."""
    per = -(-utterances // speakers)
    common.synth_corpus(folder, utterances, samples=lambda rng: int(16000 * seconds * rng.uniform(0.8, 1.2)),
                        signal="tones", seed=seed, speakers=speakers, name="s{s:03d}_{k:05d}", speaker="s{s:03d}",
                        genders="F", subtype="FLOAT",
                        split=lambda i, k: "train" if k < 0.7 * per else ("dev" if k < 0.85 * per else "test"))
    return folder / "manifest.tsv"


def synth_store(path: Path, segments: int, speakers: int, layers: int, dim: int, seed: int = 0) -> None:
    """A pooled file as rule pool_layers writes it (float16, uncompressed), speaker-shifted noise."""
    import numpy as np

    from speaker_neurons.sid_pool import POOLED_SEGMENT_COLUMNS
    from speaker_neurons.utils import save_npz

    rng = np.random.default_rng(seed)
    spk = np.arange(segments) % speakers
    k = np.arange(segments) // speakers
    per = -(-segments // speakers)
    centres = rng.normal(size=(speakers, dim)).astype(np.float32)
    store = np.lib.format.open_memmap(path.with_suffix(".tmp.npy"), mode="w+", dtype=np.float16,
                                      shape=(segments, layers + 1, dim))
    for s in range(0, segments, 4096):
        r = slice(s, min(s + 4096, segments))
        store[r] = rng.normal(size=(r.stop - r.start, layers + 1, dim)) + centres[spk[r]][:, None]
    split = np.where(k < 0.7 * per, "train", np.where(k < 0.85 * per, "dev", "test"))
    utt = np.char.add("u", np.arange(segments).astype(str))
    cols = {"seg_id": np.char.add(utt, "#0"), "utt_id": utt, "speaker": np.char.add("s", spk.astype(str)),
            "split": split, "start": np.zeros(segments, np.int64), "end": np.full(segments, 16000, np.int64)}
    assert set(cols) == set(POOLED_SEGMENT_COLUMNS)
    save_npz(path, {"pooled": store, **cols, "crop_seconds": np.float64(np.nan)})
    del store
    path.with_suffix(".tmp.npy").unlink()


def child(a) -> dict:
    import torch

    torch.set_num_threads(a.threads)
    from speaker_neurons import sid, sid_pool
    from speaker_neurons.config import defaults

    t0 = time.perf_counter()
    if a.child == "baseline":
        info = {}
    elif a.child == "pool":
        from speaker_neurons.models.melhubert import MelHuBERT

        torch.manual_seed(0)
        model = MelHuBERT({"num_layers": a.layers, "hidden_dim": a.dim, "num_heads": 4, "ffn_dim": 2 * a.dim,
                           "pos_conv_kernel": 8, "pos_conv_groups": 4, "frame_period": 10}).eval()
        model.set_feature_stats(torch.full((40,), 5.0), torch.full((40,), 3.0))
        info = sid_pool.pool_to_file(model, a.manifest, None, "tsv", 0.5, a.out, 20.0, False)
    else:
        cfg = {**defaults("sid"), "layer_sets": ["all", "last"], "learning_rates": [1e-2, 1e-3], "seeds": [0, 1],
               "epochs": a.epochs, "max_trials": 20000}
        out = Path(a.out)
        info = sid.run_sid(a.pooled, cfg, None, "synthetic", None, None, out / "sid.json", out / "heads.safetensors",
                           "cpu")
    return {"seconds": time.perf_counter() - t0, "peak_mb": peak_rss_mb(), "info": info}


def run_child(*args: str) -> dict:
    cmd = [sys.executable, __file__, *args]
    done = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    if done.returncode:
        sys.exit(f"{' '.join(cmd)} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--utterances", type=int, default=600, help="utterances at 1x")
    ap.add_argument("--speakers", type=int, default=20)
    ap.add_argument("--seconds", type=float, default=0.5, help="mean utterance length")
    ap.add_argument("--dim", type=int, default=256, help="hidden width of the tiny model")
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--epochs", type=int, default=2, help="sid.epochs")
    ap.add_argument("--scales", type=int, nargs="+", default=[1, 4])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--base-stores", type=int, default=0, help="segments at 1x of the base-shape stores (0: none)")
    ap.add_argument("--child", choices=["baseline", "pool", "sid"], help=argparse.SUPPRESS)
    ap.add_argument("--manifest", help=argparse.SUPPRESS)
    ap.add_argument("--pooled", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        print(json.dumps(child(a), default=str))
        return
    print(f"CPU: {cpu_model()}, {a.threads} threads; tiny MelHuBERT {a.layers} x {a.dim}, {a.speakers} speakers, "
          f"utterances {a.seconds:g} s, whole utterances, sid: 2 layer sets x 2 rates x 2 seeds, {a.epochs} epochs")
    base = run_child("--child", "baseline", "--threads", str(a.threads))
    print(f"baseline (import torch + speaker_neurons.sid): peak RSS {base['peak_mb']:.0f} MB")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for scale in a.scales:
            d = Path(tmp) / f"x{scale}"
            manifest = synth_corpus(d / "audio", scale * a.utterances, a.speakers, a.seconds)
            pooled = d / "pooled_layers.npz"
            pool = run_child("--child", "pool", "--manifest", str(manifest), "--out", str(pooled),
                             "--threads", str(a.threads))
            store = Path(pooled).stat().st_size / 1e6
            ev = run_child("--child", "sid", "--pooled", str(pooled), "--out", str(d), "--epochs", str(a.epochs),
                           "--threads", str(a.threads))
            rows.append({"scale": f"{scale}x", "utts": scale * a.utterances, "store_MB": store,
                         "pool_s": pool["seconds"], "pool_MB": pool["peak_mb"], "sid_s": ev["seconds"],
                         "sid_MB": ev["peak_mb"], "sid_beyond_store_MB": ev["peak_mb"] - store,
                         "sid_beyond_base_MB": ev["peak_mb"] - store - base["peak_mb"]})
    cols = list(rows[0])
    print("".join(f"{c:>20}" for c in cols))
    for r in rows:
        print("".join(f"{v:>20}" if isinstance(v, str) or isinstance(v, int) else f"{v:>20.1f}" for v in r.values()))
    first = rows[0]
    for r in rows[1:]:
        print("".join([f"{r['scale'] + '/' + first['scale']:>20}"]
                      + [f"{r[c] / first[c]:>20.2f}" if first[c] else f"{'-':>20}" for c in cols[1:]]))
    worst = max(r["sid_beyond_store_MB"] / first["sid_beyond_store_MB"] for r in rows[1:]) if len(rows) > 1 else 1.0
    print(f"sid_eval peak RSS beyond the store, largest/1x: {worst:.2f} (target <= 1.2)")
    if not a.base_stores:
        return
    print(f"sid_eval alone on stores of a base model's shape (13 x 768 float16), 100 speakers, {a.epochs} epochs")
    print(f"{'segments':>10}{'store_MB':>10}{'sid_s':>8}{'sid_MB':>8}{'beyond_store_MB':>17}{'beyond_base_MB':>16}")
    got = []
    with tempfile.TemporaryDirectory() as tmp:
        for scale in a.scales:
            n = scale * a.base_stores
            path = Path(tmp) / f"b{scale}.npz"
            synth_store(path, n, 100, 12, 768)
            store = path.stat().st_size / 1e6
            ev = run_child("--child", "sid", "--pooled", str(path), "--out", tmp, "--epochs", str(a.epochs),
                           "--threads", str(a.threads))
            got.append(ev["peak_mb"] - store)
            print(f"{n:>10}{store:>10.1f}{ev['seconds']:>8.1f}{ev['peak_mb']:>8.0f}{ev['peak_mb'] - store:>17.0f}"
                  f"{ev['peak_mb'] - store - base['peak_mb']:>16.0f}")
    print(f"beyond the store, largest/1x: {max(got) / got[0]:.2f} (target <= 1.2)")


if __name__ == "__main__":
    main()
