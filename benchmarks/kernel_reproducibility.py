"""What of the shipped demo model's recipe (configs/demo-model.yaml) a CPU with other SIMD kernels reproduces:
the first training losses from the shipped targets (models/melhubert_demo/kmeans_centers.npy), and the
k-means fit of the targets themselves.

    .venv/bin/python benchmarks/kernel_reproducibility.py              # native and AVX2 kernels, 5 steps
    .venv/bin/python benchmarks/kernel_reproducibility.py --steps 3 --results /tmp/kr   # elsewhere, fewer steps

What it does:
1. Makes the recipe's corpus and manifest with the workflow (`snakemake` on configs/demo-model.yaml, its
   results folder under --out): the same synthesis as `make demo-model`'s.
2. Per kernel set, in a child process with that environment: `native` (what torch, oneDNN and MKL pick on
   this CPU) and `avx2` (torch, oneDNN, MKL and OpenBLAS, which numpy, scipy and scikit-learn's k-means
   use, held to AVX2: ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2
   OPENBLAS_CORETYPE=Haswell, as a CPU without AVX-512 runs), the pre-training stage's call
   (`speaker_neurons.pretrain.pretrain_melhubert`, the recipe's config, `--steps` steps, 2 threads) twice:
   with the k-means fitted as the recipe fits it, and from the shipped centres
   (pretrain.train.kmeans_centers). Each run's losses, fitted centres and frame labels are kept.
3. Prints, per kernel set: the largest difference of the first losses from the shipped train_log.tsv, with
   given and with fitted centres; the fitted centres' largest difference from the shipped ones; the share
   of frames whose fitted label equals the shipped targets' label (the same cluster index) and the adjusted
   Rand index of the two labellings (the same partition, whatever the indices); and the same figures between
   the two kernel sets. The table goes to stdout and to <out>/kernel_reproducibility.md (--out defaults to
   benchmarks/out/kernel_reproducibility, gitignored).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from common import ROOT, cpu_model  # noqa: E402  (and the project on sys.path)
RECIPE = ROOT / "configs" / "demo-model.yaml"
SHIPPED = ROOT / "models" / "melhubert_demo"
KERNELS = {
    "native": {},
    "avx2": {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_ENABLE_INSTRUCTIONS": "AVX2",
             "OPENBLAS_CORETYPE": "Haswell"},
}


def losses(train_log: Path, n: int) -> list[float]:
    rows = [r.split("\t") for r in train_log.read_text().splitlines()[1:]]
    return [float(r[1]) for r in rows[:n]]


def stored_labels(data_dir: Path) -> np.ndarray:
    """Every frame's target label from the training data store's target part (`pretrain.store`)."""
    from speaker_neurons.pretrain import store

    info = json.loads((data_dir / "targets" / store.INFO).read_text())
    return store.RowFile(data_dir / "targets" / info["file"], info["dtype"], None, info["rows"]).read(0, info["rows"])


def child(args) -> None:
    """One kernel set: the recipe's first steps with fitted and with the shipped centres."""
    import torch
    import yaml

    from speaker_neurons.config import resolve
    from speaker_neurons.pretrain import pretrain_melhubert, target_paths

    recipe = yaml.safe_load(RECIPE.read_text())
    # targets_audio auto is clean for the demo corpus (the workflow's catalogue resolves it so)
    train = resolve("pretrain.train", {**recipe["pretrain"]["train"], "max_steps": args.steps, "progress": False,
                                       "targets_audio": "clean"})
    model = recipe["pretrain"].get("model")
    out = Path(args.child)
    data = out / "data"
    targets = target_paths(train, args.results / "corpora" / "demo" / "audio")
    manifest = args.results / "corpora" / "demo" / "manifest.tsv"
    from threadpoolctl import threadpool_info

    blas = sorted({i.get("architecture") or "" for i in threadpool_info() if i.get("internal_api") == "openblas"})
    record = {"torch_cpu_capability": torch.backends.cpu.get_cpu_capability(), "openblas": ",".join(blas)}
    for name, centers in (("fitted", None), ("given", np.load(SHIPPED / "kmeans_centers.npy"))):
        t0 = time.monotonic()
        pretrain_melhubert(manifest, out / name, model_config=model, train_config=train, device="cpu", threads=2,
                           target_paths=targets, data_dir=data, centers=centers, log=out / f"{name}.log")
        np.save(out / f"{name}_labels.npy", stored_labels(data))
        record[name] = {"losses": losses(out / name / "train_log.tsv", args.steps),
                        "seconds": round(time.monotonic() - t0, 1)}
    (out / "record.json").write_text(json.dumps(record, indent=2) + "\n")


def run_kernels(args) -> dict[str, Path]:
    folders = {}
    for kernel, env in KERNELS.items():
        folder = args.out / kernel
        folder.mkdir(parents=True, exist_ok=True)
        print(f"[{kernel}] the recipe's first {args.steps} steps, fitted and given centres ...", flush=True)
        res = subprocess.run([sys.executable, __file__, "--child", str(folder), "--steps", str(args.steps),
                              "--results", str(args.results)], env={**os.environ, **env}, cwd=ROOT)
        if res.returncode:
            sys.exit(f"the {kernel} run failed: see {folder}/*.log")
        folders[kernel] = folder
    return folders


def make_corpus(args) -> None:
    manifest = args.results / "corpora" / "demo" / "manifest.tsv"
    res = subprocess.run([sys.executable, "-m", "snakemake", "--cores", "2", "--configfile", str(RECIPE), "--config",
                          f"results={args.results}", "--", str(manifest)], cwd=ROOT)
    if res.returncode:
        sys.exit("the recipe's corpus could not be made (see Snakemake's output above)")


def table(folders: dict[str, Path], steps: int) -> str:
    from sklearn.metrics import adjusted_rand_score

    shipped_losses = losses(SHIPPED / "train_log.tsv", steps)
    shipped_centers = np.load(SHIPPED / "kmeans_centers.npy")
    rec = {k: json.loads((f / "record.json").read_text()) for k, f in folders.items()}
    lab = {k: {n: np.load(f / f"{n}_labels.npy") for n in ("fitted", "given")} for k, f in folders.items()}
    # the fitted run's own copy (the store's centres are the given run's by now)
    cen = {k: np.load(f / "fitted" / "kmeans_centers.npy") for k, f in folders.items()}

    def dloss(a, b):
        return max(abs(x - y) for x, y in zip(a, b))

    lines = [f"CPU: {cpu_model()}; {steps} steps of configs/demo-model.yaml; losses against the shipped "
             "train_log.tsv, labels against the shipped centres' labels of the same frames", "",
             "| kernels | torch / OpenBLAS kernels | max abs loss diff, given centres | max abs loss diff, fitted centres "
             "| fitted centres: max abs diff from shipped | frames with the shipped label | ARI vs shipped labels |",
             "|---|---|---|---|---|---|---|"]
    for k in folders:
        same = float(np.mean(lab[k]["fitted"] == lab[k]["given"]))
        ari = adjusted_rand_score(lab[k]["given"], lab[k]["fitted"])
        lines.append(f"| {k} | {rec[k]['torch_cpu_capability']} / {rec[k]['openblas']} | {dloss(rec[k]['given']['losses'], shipped_losses):.2e} "
                     f"| {dloss(rec[k]['fitted']['losses'], shipped_losses):.2e} "
                     f"| {np.abs(cen[k] - shipped_centers).max():.3g} | {100 * same:.2f}% | {ari:.4f} |")
    if len(folders) == 2:
        a, b = folders
        lines += ["", f"Between {a} and {b}:", "",
                  "| figure | value |", "|---|---|",
                  f"| max abs loss diff, given centres | {dloss(rec[a]['given']['losses'], rec[b]['given']['losses']):.2e} |",
                  f"| max abs loss diff, fitted centres | {dloss(rec[a]['fitted']['losses'], rec[b]['fitted']['losses']):.2e} |",
                  f"| fitted centres: max abs diff | {np.abs(cen[a] - cen[b]).max():.3g} |",
                  f"| frames with the same fitted label | {100 * float(np.mean(lab[a]['fitted'] == lab[b]['fitted'])):.2f}% |",
                  f"| ARI of the fitted labellings | {adjusted_rand_score(lab[a]['fitted'], lab[b]['fitted']):.4f} |",
                  f"| frames with the same given-centre label | {100 * float(np.mean(lab[a]['given'] == lab[b]['given'])):.4f}% |"]
    lines += ["", "First losses (step: shipped | " + " | ".join(f"{k} given | {k} fitted" for k in folders) + "):", ""]
    for i, s in enumerate(shipped_losses):
        lines.append(f"- {i + 1}: {s:.5f} | " + " | ".join(
            f"{rec[k]['given']['losses'][i]:.5f} | {rec[k]['fitted']['losses'][i]:.5f}" for k in folders))
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "out" / "kernel_reproducibility")
    ap.add_argument("--results", type=Path, default=None, help="the recipe's results folder (default: <out>/results)")
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    args.out = args.out.resolve()
    args.results = (args.results or args.out / "results").resolve()
    if args.child:
        return child(args)
    make_corpus(args)
    text = table(run_kernels(args), args.steps)
    (args.out / "kernel_reproducibility.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
