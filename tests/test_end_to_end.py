"""The whole chain on a tiny configuration, run twice: every stage's outputs, logs and provenance
exist and have the documented format, and the label files and neuron sets are byte-identical."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "tests" / "configs" / "tiny.yaml"
NEEDED = ("espeak-ng", "mbrola", "flite", "festival", "pico2wave")


def _run_chain(results: Path) -> None:
    res = subprocess.run(
        [sys.executable, "-m", "snakemake", "--cores", "2", "--configfile", str(TINY), "--config", f"results={results}"],
        cwd=ROOT, capture_output=True, text=True, timeout=900,
    )
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-4000:]


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    missing = [b for b in NEEDED if shutil.which(b) is None]
    if missing:
        pytest.skip(f"speech synthesizers missing ({', '.join(missing)}): run `make setup` as root")
    base = tmp_path_factory.mktemp("e2e")
    _run_chain(base / "a")
    _run_chain(base / "b")
    return base / "a", base / "b"


def _deterministic_files(root: Path) -> list[Path]:
    files = []
    for k in (3, 5):
        d = Path("analysis") / f"ssl_k{k}"
        files += [d / "labels.npz", d / "hubert.km", d / "activation_counts.npz", d / "neuron_counts.tsv"]
        files += sorted(p.relative_to(root) for p in (root / d / "neurons").glob("*.json"))
    files += [Path("analysis/ivectors/clusters.tsv"), Path("upstream/melhubert_demo/model/model.safetensors")]
    return files


def test_chain_is_byte_identical_when_run_twice(two_runs):
    a, b = two_runs
    files = _deterministic_files(a)
    assert len(files) >= 20
    for rel in files:
        assert (a / rel).read_bytes() == (b / rel).read_bytes(), f"{rel} differs between two runs"


def test_every_rule_logged_and_benchmarked(two_runs):
    a, _ = two_runs
    logs = {p.stem for p in (a / "logs").glob("*.log")}
    for rule in ("synthesize_demo_corpus", "build_manifest", "audio_qc", "pretrain_melhubert", "extract_features",
                 "frame_kmeans_k3", "frame_kmeans_k5", "ivectors", "ivector_clusters", "activation_stats_k3",
                 "neuron_sets_k3", "evidence_report_k3"):
        assert rule in logs, f"no log for {rule}"
        assert (a / "benchmarks" / f"{rule}.tsv").exists()


def test_counts_file_has_the_documented_format(two_runs):
    a, _ = two_runs
    meta = json.loads((a / "analysis/ssl_k3/activation_counts.json").read_text())
    with np.load(a / "analysis/ssl_k3/activation_counts.npz") as z:
        assert sorted(z.files) == ["classes", "counts_l1", "counts_l2", "frames"]
        assert z["classes"].tolist() == [[0, 0], [0, 1], [0, 2], [1, 0], [1, 1], [1, 2]]
        assert z["counts_l1"].shape == (6, 256) and z["counts_l1"].dtype == np.int64
        # every frame activates exactly K neurons per layer
        assert (z["counts_l1"].sum(1) == meta["K"][0] * z["frames"]).all()
        assert (z["counts_l2"].sum(1) == meta["K"][1] * z["frames"]).all()
    assert meta["K"] == [3, 3] and meta["widths"] == [256, 256] and meta["top_fraction"] == 0.01
    assert set(meta["inputs"]) and meta["upstream"]["kind"] == "melhubert"


def test_neuron_sets_recompute_from_the_counts(two_runs):
    from speaker_neurons.analysis.neuron_sets import recompute_from_npz

    a, _ = two_runs
    again = recompute_from_npz(a / "analysis/ssl_k3/activation_counts.npz", rho=0.8)
    for name in ("ssl_cluster", "ivector_cluster", "union", "unconditioned", "per_cluster"):
        saved = json.loads((a / f"analysis/ssl_k3/neurons/{name}.json").read_text())
        assert saved["set"] == name and saved["params"]["rho"] == 0.8
        assert {int(l): v for l, v in saved["layers"].items()} == {int(l): sorted(v) for l, v in again[name].items()}


def test_labels_join_model_frames_and_hubert_export(two_runs):
    from speaker_neurons.analysis.clusters import load_labels
    from speaker_neurons.data.manifest import read_manifest

    a, _ = two_runs
    labels = load_labels(a / "analysis/ssl_k3/labels.npz")
    manifest = read_manifest(a / "manifest/manifest.tsv")
    assert set(labels) == set(manifest["utt_id"])
    km_lines = (a / "analysis/ssl_k3/hubert.km").read_text().splitlines()
    tsv_lines = (a / "analysis/ssl_k3/hubert.tsv").read_text().splitlines()
    assert len(km_lines) == len(tsv_lines) - 1 == len(manifest)
    root = Path(tsv_lines[0])
    for line, km in zip(tsv_lines[1:], km_lines):
        rel, n = line.split("\t")
        utt = Path(rel).stem
        assert (root / rel).exists()
        assert [int(v) for v in km.split()] == labels[utt].tolist()
        # 20 ms MelHuBERT frames: ceil(kaldi frames / 2)
        kaldi = 1 + (int(n) - 400) // 160
        assert len(labels[utt]) == (kaldi + 1) // 2


def test_provenance_and_evidence(two_runs):
    a, _ = two_runs
    prov = json.loads((a / "analysis/ssl_k3/provenance/activation_stats.json").read_text())
    assert prov["inputs"] and all(len(h) == 64 for h in prov["inputs"].values())
    ev = json.loads((a / "analysis/ssl_k3/report/evidence.json").read_text())
    assert set(ev) == {"ssl_phone_composition_pct", "ivector_gender_purity"}
    assert (a / "analysis/ssl_k3/report/ssl_phone_composition.png").stat().st_size > 1000
    q = json.loads((a / "analysis/ivectors/quality.json").read_text())
    assert q["utterances"] == 48 and 0 <= q["sid_accuracy"] <= 1
