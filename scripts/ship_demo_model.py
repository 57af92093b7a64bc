"""Copy the model the demo-model recipe trained into `models/<name>/`, the folder the project commits,
with its provenance beside it. Run by `make demo-model` after the recipe's Snakemake run:

    python scripts/ship_demo_model.py --results results_demo_model --config configs/demo-model.yaml

What lands in `models/<name>/`:
  model/              the native folder (model.safetensors + config.json), what the demo loads
  head.pt, kmeans_centers.npy
                      the masked-prediction head and the k-means centres of its targets (what continued
                      pre-training of a pruned copy needs)
  train_log.tsv, loss_curve.png, summary.json
                      the training run as the recipe's rule wrote them
  recipe.yaml         the recipe's config file, verbatim
  PROVENANCE.json     the recipe, the resolved training and model config, the corpus and its seed, the steps,
                      the precision that ran, the machine, the commit, what another machine reproduces
                      (`reproducible`), and the sha256 of every file above
"""

from __future__ import annotations

import argparse
import hashlib
import json
import platform
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MAX_MB = 20.0  # the committed folder stays small enough for a git repository
# What of the recipe another machine reproduces (benchmarks/kernel_reproducibility.py, docs/demo.md "What
# reproduces where"), written into PROVENANCE.json
REPRODUCIBLE = {
    "same_machine": "bit for bit: a re-run of the recipe on the machine (CPU and libraries) that made it writes "
                    "the same centres, model, head and train log",
    "given_targets": "to float tolerance on any CPU: training from kmeans_centers.npy "
                     "(pretrain.train.kmeans_centers) gives the first losses of train_log.tsv (tests/test_demo_model.py)",
    "kmeans_fit": "not across CPUs: the 500-cluster mini-batch k-means moves with the SIMD kernels' float sums "
                  "(other centres and cluster indices; the first losses move by up to 0.2), so a re-made model differs "
                  "from this one after its first steps",
}


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def ship(results: Path, recipe: Path, name: str, out_root: Path) -> dict:
    src = results / "models" / name
    pre = src / "pretrain"
    needed = [src / "model" / "model.safetensors", src / "model" / "config.json", pre / "head.pt",
              pre / "kmeans_centers.npy", pre / "train_log.tsv", pre / "loss_curve.png", pre / "summary.json"]
    missing = [str(p) for p in needed if not p.is_file()]
    if missing:
        sys.exit(f"the recipe has not finished: missing {', '.join(missing)} (run `make demo-model`)")
    out = out_root / name
    if out.exists():
        shutil.rmtree(out)
    (out / "model").mkdir(parents=True)
    for p in needed:
        shutil.copy2(p, out / ("model" if p.parent.name == "model" else ".") / p.name)
    shutil.copy2(recipe, out / "recipe.yaml")
    summary = json.loads((pre / "summary.json").read_text())
    prov_rule = json.loads((pre / "provenance" / "pretrain_melhubert.json").read_text())
    corpus_cfg = prov_rule.get("config", {}).get("corpus", {})
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    files = sorted(p for p in out.rglob("*") if p.is_file())
    record = {
        "name": name,
        "recipe": "configs/demo-model.yaml (copied here as recipe.yaml); re-make with `make demo-model`",
        "corpus": {"source": corpus_cfg.get("source"), "seed": (corpus_cfg.get("demo") or {}).get("seed"),
                   "utterances": summary["utterances"], "frames": summary["frames"]},
        "steps": summary["steps"], "stopped_by": summary["stopped_by"], "epochs": summary["epochs"],
        "precision": summary.get("precision"), "amp_setting": summary.get("amp_setting"),
        "first_loss": summary["first_loss"], "last_loss": summary["last_loss"],
        "first_masked_acc": summary["first_masked_acc"], "last_masked_acc": summary["last_masked_acc"],
        "train_seconds": summary["train_seconds"], "threads": summary["threads"], "device": summary["device"],
        "cpu": _cpu_model(), "parameters": summary["parameters"],
        "model_config": summary["model_config"], "train_config": summary["train_config"],
        "targets": summary.get("targets_audio") or summary["train_config"].get("targets_audio"),
        "shipped_at_commit": commit, "versions": prov_rule.get("versions"), "reproducible": REPRODUCIBLE,
        "sha256": {str(p.relative_to(out)): _sha(p) for p in files},
    }
    (out / "PROVENANCE.json").write_text(json.dumps(record, indent=2, sort_keys=True, default=str) + "\n")
    size_mb = sum(p.stat().st_size for p in out.rglob("*") if p.is_file()) / 2**20
    if size_mb > MAX_MB:
        sys.exit(f"{out} holds {size_mb:.1f} MB, over the {MAX_MB:.0f} MB a committed model may take")
    print(f"shipped {out} ({size_mb:.1f} MB): {summary['steps']} steps, loss {summary['first_loss']:.3f} -> "
          f"{summary['last_loss']:.3f}, masked acc {summary['first_masked_acc']:.3f} -> {summary['last_masked_acc']:.3f}")
    return record


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--results", type=Path, default=ROOT / "results_demo_model")
    ap.add_argument("--config", type=Path, default=ROOT / "configs" / "demo-model.yaml")
    ap.add_argument("--name", default="melhubert_demo")
    ap.add_argument("--out", type=Path, default=ROOT / "models")
    a = ap.parse_args()
    ship(a.results, a.config, a.name, a.out)


if __name__ == "__main__":
    main()
