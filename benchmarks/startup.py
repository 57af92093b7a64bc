"""How long a Snakemake start takes on a VoxCeleb1-sized folder: the plan-time corpus checks (the leak
check reads the corpora's files) run once per configuration and state of the corpora's folders, cached
under .snakemake/speaker_neurons/, and never in a job of the run.

Builds, under --dir, a VoxCeleb1-shaped folder of --files WAV files (wav/<id>/<yt>/<n>.wav, tiny files of
distinct sizes: the checks read no audio), iden_split.txt and vox1_meta.csv, and a LibriSpeech dev-clean-shaped
analysis folder of 2,703 files; then times, each as a whole process:

  cold    `snakemake -n` with no cached checks (the first plan of a configuration)
  warm    `snakemake -n` again (what every later plan costs)
  job     the start of one job as a cluster node runs it (`snakemake --mode remote`, one target job, dry),
          which skips the checks

    python benchmarks/startup.py --files 150000 --dir /tmp/startup   # about 2 minutes to build the folder

Prints one table; the target is under 5 s for `warm` and `job`.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
from pathlib import Path

from common import ROOT, cpu_model  # noqa: E402  (and the project on sys.path)

SNAKEMAKE = [sys.executable, "-m", "snakemake"]


def build(d: Path, n_files: int) -> Path:
    """The two corpus folders, a checkpoint file and the config; reused when already built."""
    cfg = d / "config.yaml"
    if cfg.is_file() and (d / f".built-{n_files}").is_file():
        return cfg
    shutil.rmtree(d, ignore_errors=True)
    vox, libri = d / "VoxCeleb1", d / "LibriSpeech" / "dev-clean"
    per_yt, per_spk = 7, 120  # about VoxCeleb1's shape: ~18 videos per speaker, ~8 files per video
    lines, meta = [], ["VoxCeleb1 ID\tVGGFace1 ID\tGender\tNationality\tSet"]
    n = 0
    spk = 0
    while n < n_files:
        sid = f"id{10001 + spk}"
        meta.append(f"{sid}\tName_{spk}\t{'mf'[spk % 2]}\tUSA\tdev")
        for k in range(min(per_spk, n_files - n)):
            rel = f"{sid}/yt{k // per_yt:04d}/{k % per_yt:05d}.wav"
            p = vox / "wav" / rel
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes(b"\0" * (44 + n % 5000))
            lines.append(f"{(1, 1, 1, 1, 1, 1, 1, 1, 2, 3)[k % 10]} {rel}")
            n += 1
        spk += 1
    (vox / "iden_split.txt").write_text("\n".join(lines) + "\n")
    (vox / "vox1_meta.csv").write_text("\n".join(meta) + "\n")
    genders = []
    for s in range(40):
        ch = libri / str(100 + s) / "1"
        ch.mkdir(parents=True)
        trans = []
        for u in range(68 if s < 23 else 67):
            uid = f"{100 + s}-1-{u:04d}"
            (ch / f"{uid}.flac").write_bytes(b"\1" * (7000 + 41 * s + u))
            trans.append(f"{uid} HELLO WORLD")
        (ch / f"{100 + s}-1.trans.txt").write_text("\n".join(trans) + "\n")
        genders.append(f"{100 + s} | {'FM'[s % 2]} | dev-clean | 1 | R")
    (libri.parent / "SPEAKERS.TXT").write_text("\n".join(genders) + "\n")
    (d / "hubert_base.pt").write_bytes(b"")
    cfg.write_text(f"""results: {d}/results
corpus: {{name: dev_clean, source: librispeech, librispeech: {{split_dir: {libri}}}}}
corpora:
  - {{name: vox1, source: voxceleb1, voxceleb1: {{root: {vox}, iden_split: {vox}/iden_split.txt, meta_csv: {vox}/vox1_meta.csv}}}}
stages: {{analysis: dev_clean, sid: vox1, pr: dev_clean}}
models: [{{name: hubert_base, kind: hubert, path: {d}/hubert_base.pt}}]
""")
    (d / f".built-{n_files}").write_text("")
    return cfg


def timed(args: list[str]) -> float:
    t0 = time.perf_counter()
    res = subprocess.run(SNAKEMAKE + args, cwd=ROOT, capture_output=True, text=True)
    dt = time.perf_counter() - t0
    if res.returncode != 0:
        sys.exit(f"snakemake {' '.join(args)} failed:\n{res.stderr[-3000:]}")
    return dt


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--files", type=int, default=150000)
    ap.add_argument("--dir", type=Path, default=Path("/tmp/speaker_neurons_startup"))
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args()
    t0 = time.perf_counter()
    cfg = build(a.dir, a.files)
    print(f"folders: {a.files} VoxCeleb1-shaped files + 2,703 LibriSpeech-shaped files under {a.dir} "
          f"(built in {time.perf_counter() - t0:.0f} s); CPU: {cpu_model()}")
    cache = ROOT / ".snakemake" / "speaker_neurons"
    plan = ["-n", "-q", "--configfile", str(cfg)]
    job = ["-n", "-q", "--mode", "remote", "--target-jobs", "build_manifest:corpus=vox1", "--configfile", str(cfg)]
    rows = {"cold": [], "warm": [], "job": []}
    for _ in range(a.repeats):
        shutil.rmtree(cache, ignore_errors=True)
        rows["cold"].append(timed(plan))
        rows["warm"].append(timed(plan))
        rows["job"].append(timed(job))
    print(f"\n| start | what it does | seconds (min / median / max of {a.repeats}) | target |")
    print("|---|---|---|---|")
    what = {"cold": "snakemake -n, checks run and are cached", "warm": "snakemake -n, cached checks",
            "job": "one job's start on a node (--mode remote)"}
    for k, v in rows.items():
        v = sorted(v)
        target = "" if k == "cold" else "< 5 s"
        print(f"| {k} | {what[k]} | {v[0]:.2f} / {v[len(v) // 2]:.2f} / {v[-1]:.2f} | {target} |")


if __name__ == "__main__":
    main()
