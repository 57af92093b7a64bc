"""What it takes for the demo model's FFNs to carry speaker information: each lever's effect on the two
positive controls, measured side by side.

Every setting is a set of `--config` overrides of the demo. Each runs the workflow in its own results
folder up to the SID of the pre-trained model and of its `-noffn` control (no i-vectors, analysis or
pruning strategies are needed for the controls), then the table prints, per setting: SID all layers,
SID hidden_0, SID of the control, the input-only gap and the FFN dependence with their 95% intervals
(speaker_neurons.statistics.difference_interval), the masked-frame accuracy and the wall time of the
pre-training job.

    .venv/bin/python benchmarks/speaker_levers.py --out /tmp/levers baseline steps_1400 ...
    .venv/bin/python benchmarks/speaker_levers.py --list

Settings of one corpus share it (synthesized once, copied with its times). Where a setting's folder
already holds its results, they are read, not recomputed (delete the folder to measure again).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from speaker_neurons.statistics import difference_interval  # noqa: E402

MODEL = "melhubert_demo"
SID_CORPUS = "demo_eval"  # the demo scores SID on its second synthesized corpus (stages.sid: auto)
# name -> config overrides, one YAML mapping per key (written to <out>/<name>.yaml, given with --configfile)
SETTINGS: dict[str, list[str]] = {
    "clean_corpus": ["corpus: {source: demo, demo: {channel: {enabled: false}}}"],
    "baseline": [],
    "steps_1400": ["pretrain: {train: {max_steps: 1400}}"],
    "lr_2e-3": ["pretrain: {train: {lr: 0.002}}"],
    "lr_5e-4": ["pretrain: {train: {lr: 0.0005}}"],
    "depth_8": ["pretrain: {model: {num_layers: 8}}"],
    "width_384": ["pretrain: {model: {hidden_dim: 384, num_heads: 6, ffn_dim: 1536}}"],
    "targets_512": ["pretrain: {train: {n_clusters: 512}}"],
    # HuBERT's second iteration: a new model on k-means targets of the baseline model's layer 3 (of 4)
    "iteration_2": ["models: [{name: melhubert_demo, kind: melhubert, source: checkpoint, format: native, "
                    "path: ITER2/model}]"],
    "speakers_96": ["corpus: {source: demo, demo: {n_speakers: 96, utterances_per_speaker: 12, split: [8, 2, 2]}}"],
    "corpus_x2": ["corpus: {source: demo, demo: {utterances_per_speaker: 48, split: [32, 8, 8]}}"],
    # denoising targets: the k-means clusters of each utterance's clean copy (pretrain.train.targets_audio: clean)
    "denoise": ["corpus: {source: demo, demo: {channel: {keep_clean: true}}}",
                "pretrain: {train: {targets_audio: clean}}"],
    "denoise_steps_700": ["corpus: {source: demo, demo: {channel: {keep_clean: true}}}",
                          "pretrain: {train: {targets_audio: clean, max_steps: 700}}"],
    "denoise_targets_512": ["corpus: {source: demo, demo: {channel: {keep_clean: true}}}",
                            "pretrain: {train: {targets_audio: clean, n_clusters: 512}}"],
    "denoise_lr_2e-3": ["corpus: {source: demo, demo: {channel: {keep_clean: true}}}",
                        "pretrain: {train: {targets_audio: clean, lr: 0.002}}"],
    "denoise_depth_6": ["corpus: {source: demo, demo: {channel: {keep_clean: true}}}",
                        "pretrain: {train: {targets_audio: clean}, model: {num_layers: 6}}"],
    "crop_1s": ["sid: {crop_seconds: 1.0}"],
    "crop_2s": ["sid: {crop_seconds: 2.0}"],
    "crop_whole": ["sid: {crop_seconds: null}"],
}


def corpus_key(overrides: list[str]) -> str:
    return next((o for o in overrides if o.startswith("corpus:")), "default")


def model_key(overrides: list[str]) -> str:
    """Settings that differ only in sid.* share the pre-trained model."""
    return " ".join(o for o in overrides if not o.startswith("sid:")) or "default"


def _copy(src: Path, dst: Path) -> None:
    if src.exists() and not dst.exists():
        shutil.copytree(src, dst, symlinks=True, copy_function=shutil.copy2)


def run_setting(name: str, overrides: list[str], out: Path, corpora: dict[str, Path], models: dict[str, Path],
                cores: int) -> dict:
    res = out / name
    targets = [f"{res}/models/{MODEL}/sid/{SID_CORPUS}/sid.json", f"{res}/models/{MODEL}-noffn/sid/{SID_CORPUS}/sid.json"]
    key, mkey = corpus_key(overrides), model_key(overrides)
    if key in corpora:  # the same corpus: copy it, times and all
        res.mkdir(parents=True, exist_ok=True)
        _copy(corpora[key] / "corpora", res / "corpora")
    if mkey in models:  # the same model (only SID differs): copy it and its pre-training record
        for part in ("model", "pretrain"):
            _copy(models[mkey] / "models" / MODEL / part, res / "models" / MODEL / part)
        _copy(models[mkey] / "benchmarks" / MODEL, res / "benchmarks" / MODEL)
    wall = None
    pre_dir = res / "models" / MODEL / "pretrain"
    ckpt = next((o.split("path: ")[1].rstrip("}]") for o in overrides if "source: checkpoint" in o and "ITER2" not in o),
                None)
    if ckpt:  # a model pre-trained elsewhere: its training record lies beside it
        pre_dir = Path(ckpt).parent
    if name == "iteration_2":
        pre_dir = second_iteration_model(out, res / "iter2")
        overrides = [o.replace("ITER2", str(pre_dir)) for o in overrides]
    if not all(Path(t).exists() for t in targets):
        extra = out / f"{name}.yaml"
        extra.write_text("".join(o + "\n" for o in overrides) or "{}\n")
        cmd = [str(ROOT / ".venv/bin/snakemake"), "--cores", str(cores), "--rerun-triggers", "mtime", "--configfile",
               str(ROOT / "config.yaml"), str(extra), "--config", f"results={res}", "--", *targets]
        t0 = time.monotonic()
        with open(out / f"{name}.log", "w") as logf:
            subprocess.run(cmd, cwd=ROOT, stdout=logf, stderr=subprocess.STDOUT, check=True)
        wall = time.monotonic() - t0
    corpora.setdefault(key, res)
    models.setdefault(mkey, res)
    base = json.loads(Path(targets[0]).read_text())
    ctrl = json.loads(Path(targets[1]).read_text())
    pre = json.loads((pre_dir / "summary.json").read_text())
    bench = res / "benchmarks" / MODEL / "pretrain_melhubert.tsv"
    pre_s = float(bench.read_text().splitlines()[1].split("\t")[0]) if bench.exists() else pre.get("total_seconds")
    return {"name": name, "base": base, "ctrl": ctrl, "masked_acc": pre.get("last_masked_acc"), "pretrain_s": pre_s,
            "wall_s": wall}


def second_iteration_model(out: Path, folder: Path) -> Path:
    """Train (once) the second-iteration model from the baseline setting's model, on its corpus."""
    if not (folder / "summary.json").exists():
        from speaker_neurons.models import load_native
        from speaker_neurons.pretrain import second_iteration

        base = out / "baseline"
        if not (base / "models" / MODEL / "model").exists():
            sys.exit("iteration_2 needs the baseline setting's model: run `baseline` first")
        teacher = load_native(base / "models" / MODEL / "model")
        second_iteration(teacher, base / "corpora" / "demo" / "manifest.tsv", folder, device="cpu", threads=2)
    return folder


def fmt(d) -> str:
    return f"{100 * d[0]:+.1f} [{100 * d[1]:+.1f}, {100 * d[2]:+.1f}]"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("settings", nargs="*", help=f"names among: {', '.join(SETTINGS)}")
    ap.add_argument("--out", type=Path, default=Path("results_levers"))
    ap.add_argument("--cores", type=int, default=2)
    ap.add_argument("--list", action="store_true")
    ap.add_argument("--checkpoint", action="append", default=[], metavar="NAME=PATH",
                    help="also evaluate this native model folder (pre-trained elsewhere) as setting NAME")
    args = ap.parse_args(argv)
    for spec in args.checkpoint:
        label, path = spec.split("=", 1)
        SETTINGS[label] = [f"models: [{{name: {MODEL}, kind: melhubert, source: checkpoint, format: native, "
                           f"path: {Path(path).resolve()}}}]"]
        args.settings.append(label)
    if args.list or not args.settings:
        for k, v in SETTINGS.items():
            print(f"{k:14s} {' '.join(v) or '(the demo as it is)'}")
        return 0
    unknown = [s for s in args.settings if s not in SETTINGS]
    if unknown:
        sys.exit(f"unknown setting(s) {unknown}; see --list")
    args.out = args.out.resolve()
    args.out.mkdir(parents=True, exist_ok=True)
    corpora: dict[str, Path] = {}
    models: dict[str, Path] = {}
    rows = []
    head = ("| setting | SID all (%) | SID hidden_0 (%) | SID control (%) | input-only gap (points) | "
            "FFN dependence (points) | masked acc | pre-training (s) |")
    for name in args.settings:
        r = run_setting(name, SETTINGS[name], args.out, corpora, models, args.cores)
        b, c = r["base"], r["ctrl"]
        gap = difference_interval(b["all"], b["hidden_0"])
        dep = difference_interval(b["all"], c["all"])
        row = (f"| {name} | {100 * b['all']['test_accuracy']:.1f} | {100 * b['hidden_0']['test_accuracy']:.1f} | "
               f"{100 * c['all']['test_accuracy']:.1f} | {fmt(gap)} | {fmt(dep)} | "
               f"{100 * (r['masked_acc'] or 0):.1f}% | {r['pretrain_s'] or 0:.0f} |")
        rows.append(row)
        print(row, flush=True)
        (args.out / "levers.md").write_text("\n".join([head, "|" + "---|" * 8, *rows]) + "\n")
    print()
    print((args.out / "levers.md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
