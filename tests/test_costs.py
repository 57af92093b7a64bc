"""Resources from the work (speaker_neurons.costs) and the plan with costs (python -m speaker_neurons plan)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from conftest import ROOT
from speaker_neurons import costs
from speaker_neurons.config import complete

CFG = complete({})
BASE = costs.BASE


def _c(rule, hours, utts, model=BASE, gpu=False, cfg=CFG, threads=2):
    return costs.rule_costs(rule, costs.CorpusSize(hours, utts, 0.1), model, cfg, gpu, threads)


def test_model_jobs_grow_with_the_audio_and_their_memory_does_not():
    for rule in ("extract_features", "activation_stats", "pool_layers", "erase_ablation"):
        small, big = _c(rule, 10, 40000), _c(rule, 40, 160000)
        assert big["runtime"] > small["runtime"] and big["compute_hours"] == pytest.approx(4 * small["compute_hours"],
                                                                                          rel=0.05), rule
        if rule != "erase_ablation":
            assert big["audio_hours"] == 40
    # streaming passes: memory bounded by the batch, not the corpus; the pooled store's disk grows with it
    assert _c("pool_layers", 40, 160000)["mem_mb"] == _c("pool_layers", 10, 40000)["mem_mb"]
    assert _c("pool_layers", 40, 160000)["disk_mb"] > 3 * _c("pool_layers", 10, 40000)["disk_mb"]
    # sid_eval holds the float16 store (13 x 768 x 2 bytes per utterance): 153,516 utterances ~ 3 GB
    assert _c("sid_eval", 352, 153516)["mem_mb"] > 1.5 * 153516 * 13 * 768 * 2 / 2**20


def test_a_gpu_and_more_threads_shorten_the_estimate():
    cpu2, cpu4, gpu = _c("pool_layers", 100, 40000), _c("pool_layers", 100, 40000, threads=4), \
        _c("pool_layers", 100, 40000, gpu=True)
    assert cpu4["compute_hours"] == pytest.approx(cpu2["compute_hours"] / 2, rel=0.01)
    assert gpu["compute_hours"] < cpu2["compute_hours"] / 100
    # one CPU pass of a base model over an hour of audio on 2 threads, at the calibrated rate
    one = _c("pool_layers", 1.0, 100)
    expected = 3600 * BASE.gflop_per_audio_second / (2 * costs.CPU_GFLOPS_PER_THREAD) / 3600
    assert one["compute_hours"] == pytest.approx(expected, rel=0.01) and 0.1 < expected < 0.5


def test_pr_caches_features_only_within_the_budget_else_its_disk_is_the_audio():
    demo = _c("pr_eval", 1.1, 1152)
    paper = _c("pr_eval", 100.6, 28539, cfg=complete({"pr": {"schedule": "libriphone"}}), gpu=True)
    feat = 1.1 * 3600 * 50 * 13 * 768 * 2 / 2**20
    assert demo["disk_mb"] >= feat  # 1.1 h of frames fits the default budget: cached
    audio_mb = 100.6 * 3600 * 32000 / 2**20
    assert audio_mb <= paper["disk_mb"] <= 1.5 * audio_mb + 500  # train-clean-100: on the fly over int16 audio
    assert paper["audio_hours"] > 10 * 100.6  # 100k steps of 32 utterances run the upstream over ~10^4 h


def test_the_config_overrides_and_the_work_sizes_the_jobs(tmp_path):
    extra = tmp_path / "res.yaml"  # --config reads 1234 as a string; a config file gives the integer
    extra.write_text(f"results: {tmp_path}/r\nresources: {{pool_layers: {{mem_mb: 1234, disk_mb: 77}}}}\n")
    res = subprocess.run([sys.executable, "-m", "snakemake", "-n", "--configfile", str(extra)], cwd=ROOT,
                         capture_output=True, text=True)
    out = res.stdout + res.stderr
    assert res.returncode == 0, out[-3000:]
    blocks = {b.split(":", 1)[0].strip(): b for b in out.split("\nrule ")[1:]}
    assert "mem_mb=1234" in blocks["pool_layers"] and "disk_mb=77" in blocks["pool_layers"]
    for rule in ("sid_eval", "pr_eval", "audio_qc", "extract_features"):
        assert "disk_mb=" in blocks[rule] and "mem_mb=" in blocks[rule] and "runtime=" in blocks[rule], rule


@pytest.mark.slow
def test_the_plan_lists_every_job_with_its_costs_and_the_totals(tmp_path):
    res = subprocess.run([sys.executable, "-m", "speaker_neurons", "plan", "--config", f"results={tmp_path}/r"],
                         cwd=ROOT, capture_output=True, text=True)
    out = res.stdout
    assert res.returncode == 0, res.stderr[-3000:]
    rows = [l for l in out.splitlines() if l.startswith("| ") and not l.startswith("| rule")]
    rules = {r.split("|")[1].strip() for r in rows}
    assert {"pool_layers", "sid_eval", "pr_eval", "erase_ablation", "summarize"} <= rules
    pool = next(r for r in rows if r.startswith("| pool_layers | melhubert_demo |"))
    assert pool.split("|")[3].strip() == "demo_eval" and float(pool.split("|")[4]) == pytest.approx(1.1, abs=0.1)
    assert "CPU" in pool  # the demo stays on the CPU
    assert "jobs; ESTIMATED:" in out and "CPU-hours" in out


def test_training_memory_does_not_grow_with_the_corpus_but_its_disk_does():
    """Pre-training and the teacher targets stream from a file-backed store: memory bounded (the k-means
    sample, one chunk), the store on disk growing with the corpus."""
    for rule in ("pretrain_melhubert", "teacher_targets", "continue_pretraining"):
        small, big = _c(rule, 100, 28000), _c(rule, 960, 281000)
        assert big["peak_mb"] == small["peak_mb"] and big["mem_mb"] == small["mem_mb"], rule
        assert big["disk_mb"] > 5 * small["disk_mb"], rule


def test_a_native_checkpoint_is_sized_from_its_config():
    """The shipped demo model (4 x 256, FFN 1024, 20 ms) is costed as itself, not as a base model."""
    from speaker_neurons.catalogue import Model

    class Cat:
        models = {"m": Model("m", "melhubert", "checkpoint", str(ROOT / "models/melhubert_demo/model"), "native")}

    size = costs.model_size(Cat, CFG, "m")
    assert (size.layers, size.dim, size.ffn, size.frames_per_second) == (4, 256, 1024, 50.0)
    assert size.gflop_per_audio_second < BASE.gflop_per_audio_second / 20
