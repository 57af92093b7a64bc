"""MelHuBERT pre-training: span masking, k-means targets, batching, and a tiny end-to-end run."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from speaker_neurons.batching import length_batches as make_batches
from speaker_neurons.config import complete
from speaker_neurons.kmeans import cluster_utterance_frames as kmeans_targets
from speaker_neurons.pretrain.loop import lr_at
from speaker_neurons.pretrain.masking import expected_mask_fraction, span_mask

TRAIN = complete({})["pretrain"]["train"]
MIN_MASKS = TRAIN["min_masks"]


def _runs(row: np.ndarray) -> list[int]:
    """Lengths of the runs of True in a 1-D bool array."""
    padded = np.concatenate([[False], row, [False]]).astype(np.int8)
    d = np.diff(padded)
    return (np.flatnonzero(d == -1) - np.flatnonzero(d == 1)).tolist()


# ------------------------------------------------------------------------------------------ masking
def test_span_mask_fraction_matches():
    m = span_mask([3000] * 16, mask_prob=0.7, mask_length=5, min_masks=MIN_MASKS, rng=0)
    frac = m.float().mean().item()
    assert abs(frac - expected_mask_fraction(0.7, 5)) < 0.02
    m = span_mask([3000] * 16, mask_prob=0.3, mask_length=5, min_masks=MIN_MASKS, rng=0)
    assert abs(m.float().mean().item() - expected_mask_fraction(0.3, 5)) < 0.02


def test_span_mask_spans_have_mask_length():
    # one span per utterance: exactly one run of 5 frames
    m = span_mask([50, 80, 200], mask_prob=1e-6, mask_length=5, rng=1, min_masks=1).numpy()
    for row in m:
        assert _runs(row) == [5]
    # sparse masks: every run is a union of whole spans (>= 5), and isolated spans are exactly 5
    m = span_mask([4000] * 4, mask_prob=0.1, mask_length=5, min_masks=MIN_MASKS, rng=2).numpy()
    runs = sum((_runs(r) for r in m), [])
    assert min(runs) >= 5
    assert np.mean(np.array(runs) == 5) > 0.8


def test_span_mask_never_masks_padding():
    lengths = torch.tensor([10, 37, 3, 100, 5])
    m = span_mask(lengths, 120, mask_prob=0.9, mask_length=5, min_masks=MIN_MASKS, rng=3)
    assert m.shape == (5, 120) and m.dtype == torch.bool
    for b, n in enumerate(lengths.tolist()):
        assert not m[b, n:].any()
    assert not m[2].any()  # shorter than a span: no mask
    assert m[4, :5].all()  # exactly one span fits
    assert m[0].any() and m[3].any()


def test_span_mask_seeded():
    kw = dict(mask_prob=0.7, mask_length=TRAIN["mask_length"], min_masks=MIN_MASKS)
    a = span_mask([300, 250, 120], rng=7, **kw)
    b = span_mask([300, 250, 120], rng=np.random.default_rng(7), **kw)
    c = span_mask([300, 250, 120], rng=8, **kw)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


# ------------------------------------------------------------------------------------------ targets / batching
def _blobs(seed=0, k=6, per=300, dim=8):
    rng = np.random.default_rng(seed)
    centres = rng.normal(scale=5.0, size=(k, dim))
    utts = []
    for i in range(10):
        ids = rng.integers(0, k, size=per // 2 + 13 * i)
        utts.append((centres[ids] + rng.normal(size=(len(ids), dim))).astype(np.float32))
    return utts


def test_kmeans_targets_deterministic_by_seed():
    utts = _blobs()
    kw = dict(max_frames=1000, batch_size=256, max_iter=TRAIN["kmeans_max_iter"], n_init=2, threads=1)
    t1, i1 = kmeans_targets(utts, 6, seed=3, **kw)
    t2, i2 = kmeans_targets([torch.from_numpy(u) for u in utts], 6, seed=3, **kw)
    assert [len(t) for t in t1] == [len(u) for u in utts]
    assert all(np.array_equal(a, b) for a, b in zip(t1, t2))
    assert np.array_equal(i1["centers"], i2["centers"])
    assert i1["fit_frames"] == 1000 and i1["total_frames"] == sum(len(u) for u in utts)
    assert i1["counts"].sum() == i1["total_frames"] and i1["centers"].shape == (6, 8)
    assert all(t.dtype == np.int64 and t.min() >= 0 and t.max() < 6 for t in t1)
    t3, _ = kmeans_targets(utts, 6, seed=4, **kw)
    # well-separated blobs: a different seed finds the same partition up to relabelling
    a, b = np.concatenate(t1), np.concatenate(t3)
    pairs = set(zip(a.tolist(), b.tolist()))
    assert len(pairs) <= 7


def test_make_batches_bounded_complete_deterministic():
    lengths = np.random.default_rng(0).integers(50, 600, size=200)
    b1 = make_batches(lengths, 2000, np.random.default_rng(5))
    b2 = make_batches(lengths, 2000, np.random.default_rng(5))
    assert b1 == b2
    assert sorted(i for b in b1 for i in b) == list(range(200))
    for b in b1:
        assert max(lengths[i] for i in b) * len(b) <= 2000
    assert make_batches([5000, 10], 1000, np.random.default_rng(0)) != []  # over-long utterance alone


def test_amp_auto_is_bf16_only_where_the_hardware_computes_it(monkeypatch):
    """The default precision never emulates bf16: auto = bf16 on CUDA and on CPUs with AVX512-BF16 / AMX,
    float32 on the rest; true and false mean the same on every device."""
    from speaker_neurons.pretrain import loop

    assert TRAIN["amp"] == "auto"
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    monkeypatch.setattr(loop, "native_bf16", lambda: False)  # an AVX2-only CPU
    assert loop.resolve_amp("auto", cpu) is False and loop.resolve_amp("auto", cuda) is True
    assert loop.resolve_amp(True, cpu) is True and loop.resolve_amp(False, cuda) is False
    monkeypatch.setattr(loop, "native_bf16", lambda: True)  # AVX512-BF16 or AMX
    assert loop.resolve_amp("auto", cpu) is True


def test_inference_autocast_is_bf16_on_cuda_only_by_default():
    """upstream.amp: auto runs evaluation forwards in float32 on every CPU (CPU results do not depend on
    the CPU's bf16 support) and in bf16 on CUDA; true / false force one precision."""
    from speaker_neurons.config import complete
    from speaker_neurons.utils import inference_autocast, inference_bf16

    assert complete({})["upstream"]["amp"] == "auto"
    lin = torch.nn.Linear(8, 8)
    x = torch.randn(2, 8)
    with inference_autocast("cpu", "auto"):
        assert lin(x).dtype == torch.float32
    with inference_autocast(torch.device("cpu"), True):
        assert lin(x).dtype == torch.bfloat16
    with inference_autocast("cpu", False):
        assert lin(x).dtype == torch.float32
    assert inference_bf16("cuda", "auto") and inference_bf16(torch.device("cuda:0"), "auto")
    assert not inference_bf16("cpu", "auto") and not inference_bf16("cuda", False) and inference_bf16("cpu", True)


def test_lr_schedule():
    assert lr_at(1, 1.0, 10, 100) == pytest.approx(0.1)
    assert lr_at(10, 1.0, 10, 100) == pytest.approx(1.0)
    assert lr_at(55, 1.0, 10, 100) == pytest.approx(0.5)
    assert lr_at(100, 1.0, 10, 100) == 0.0


# ------------------------------------------------------------------------------------------ end to end
TINY_MODEL = {
    "num_layers": 2,
    "hidden_dim": 64,
    "num_heads": 2,
    "ffn_dim": 128,
    "frame_period": 10,
    "n_mels": 40,
    "pos_conv_kernel": 16,
    "pos_conv_groups": 4,
}
TINY_TRAIN = {
    "n_clusters": 16,
    "kmeans_max_frames": 5000,
    "max_frames_per_batch": 1200,
    "max_steps": 30,
    "warmup_steps": 3,
    "lr": 2e-3,
    "checkpoint_every": 15,
    "log_every": 10,
    "progress": False,
}


def _synth_corpus(root, n_utts=12, sr=16000, seed=0):
    """Utterances of 2-3 s made of 60-250 ms segments: one of 5 tones (with a harmonic), noise or silence."""
    import soundfile as sf

    rng = np.random.default_rng(seed)
    freqs = [220.0, 400.0, 700.0, 1200.0, 2500.0]
    rows = []
    (root / "wav").mkdir(parents=True)
    for u in range(n_utts):
        parts = []
        total = int(sr * rng.uniform(2.0, 3.0))
        while sum(len(p) for p in parts) < total:
            n = int(sr * rng.uniform(0.06, 0.25))
            kind = rng.integers(0, 7)
            t = np.arange(n) / sr
            if kind < 5:
                f = freqs[kind]
                seg = 0.3 * np.sin(2 * np.pi * f * t) + 0.1 * np.sin(4 * np.pi * f * t)
            elif kind == 5:
                seg = 0.1 * rng.normal(size=n)
            else:
                seg = np.zeros(n)
            parts.append(seg + 1e-3 * rng.normal(size=n))
        wav = np.concatenate(parts)[:total].astype(np.float32)
        path = root / "wav" / f"u{u:02d}.wav"
        sf.write(str(path), wav, sr, subtype="PCM_16")
        split = "test" if u == n_utts - 1 else "train"
        rows.append(f"u{u:02d}\t{path.resolve()}\tspk{u % 3}\t{'FM'[u % 2]}\t{split}\t{total / sr:.3f}\t{sr}")
    manifest = root / "manifest.tsv"
    manifest.write_text("utt_id\tpath\tspeaker\tgender\tsplit\tduration\tsample_rate\n" + "\n".join(rows) + "\n")
    return manifest


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from speaker_neurons.pretrain import pretrain_melhubert

    root = tmp_path_factory.mktemp("pretrain")
    manifest = _synth_corpus(root / "corpus")
    out = root / "out"
    torch.manual_seed(123)
    summary, model, head = pretrain_melhubert(manifest, out, TINY_MODEL, TINY_TRAIN, device="cpu", threads=1,
                                              return_model=True)
    return manifest, out, summary, model


@pytest.mark.slow  # pre-trains
def test_pretrain_loss_falls(trained):
    _, out, summary, _ = trained
    assert summary["steps"] == 30 and summary["stopped_by"] == "max_steps"
    assert summary["utterances"] == 11  # the "test" row is left out
    rows = (out / "train_log.tsv").read_text().splitlines()
    assert rows[0].split("\t")[:5] == ["step", "loss", "masked_acc", "lr", "elapsed_s"]
    loss = np.array([float(r.split("\t")[1]) for r in rows[1:]])
    assert len(loss) == 30
    assert loss[-5:].mean() < loss[:5].mean() - 0.2, loss


@pytest.mark.slow  # pre-trains
def test_pretrain_outputs(trained):
    _, out, summary, _ = trained
    for name in ("model/model.safetensors", "model/config.json", "head.pt", "loss_curve.png", "summary.json",
                 "kmeans_centers.npy", "checkpoints/step_15/model.safetensors", "checkpoints/step_30/head.pt"):
        assert (out / name).is_file(), name
    assert (out / "loss_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    on_disk = json.loads((out / "summary.json").read_text())
    assert on_disk["steps"] == 30 and on_disk["device"] == "cpu"
    for key in ("first_loss", "last_loss", "train_seconds", "model_config", "train_config"):
        assert key in on_disk
    from speaker_neurons.pretrain.loop import native_bf16

    # the provenance says which precision ran, and auto followed the CPU
    assert on_disk["amp_setting"] == "auto" and on_disk["cpu_native_bf16"] == native_bf16()
    assert on_disk["precision"] == ("bf16 autocast" if native_bf16() else "float32")
    assert on_disk["checkpoints"] == ["step_15", "step_30"]
    head = torch.load(out / "head.pt")
    assert head["state_dict"]["weight"].shape == (16, 64)


@pytest.mark.slow  # pre-trains
def test_pretrained_model_reloads_identically(trained):
    from speaker_neurons.audio import load_audio
    from speaker_neurons.data.manifest import read_manifest
    from speaker_neurons.models.native import load_native

    manifest, out, _, trained_model = trained
    assert not trained_model.training
    model = load_native(out / "model")
    model.eval()
    path = read_manifest(manifest)["path"].iloc[-1]
    wav, _ = load_audio(path, model.sample_rate)
    w = torch.from_numpy(wav)[None]
    lens = torch.tensor([w.shape[1]])
    with torch.no_grad():
        ref = trained_model(w, lens, return_ffn=True)
        a = model(w, lens, return_ffn=True)
        b = load_native(out / "checkpoints" / "step_30").eval()(w, lens, return_ffn=True)
    assert len(a.hidden) == TINY_MODEL["num_layers"] + 1 and len(a.ffn) == TINY_MODEL["num_layers"]
    for x, y, z in zip(ref.hidden + ref.ffn, a.hidden + a.ffn, b.hidden + b.ffn):
        torch.testing.assert_close(y, x)
        torch.testing.assert_close(z, x)
    # the feature statistics were saved with the model: normalised features are ~ zero mean, unit std
    feats, n = model.extract_features(w, torch.tensor([w.shape[1]]))
    assert abs(feats[0, : int(n[0])].mean().item()) < 0.5


# ------------------------------------------------------------------------------------------ reproducibility
def _sha(path):
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


def _losses(path):
    return [r.split("\t")[:4] for r in path.read_text().splitlines()]  # step, loss, acc, lr (not the clock)


@pytest.mark.slow  # pre-trains
def test_slowed_down_run_ends_identical_to_a_fast_one(trained, tmp_path):
    """No result reads the clock: a run slowed by a sleep after every step writes the same model."""
    import time

    from speaker_neurons.pretrain import pretrain_melhubert

    manifest, out, summary, _ = trained
    slow = tmp_path / "slow"
    s2 = pretrain_melhubert(manifest, slow, TINY_MODEL, TINY_TRAIN, device="cpu", threads=1,
                            on_step=lambda step: time.sleep(0.15))
    assert s2["stopped_by"] == "max_steps" and s2["steps"] == summary["steps"]
    assert s2["train_seconds"] > summary["train_seconds"] + 3  # really slower
    for name in ("model/model.safetensors", "model/config.json", "head.pt", "kmeans_centers.npy",
                 "checkpoints/step_15/model.safetensors"):
        assert _sha(slow / name) == _sha(out / name), name
    assert _losses(slow / "train_log.tsv") == _losses(out / "train_log.tsv")


@pytest.mark.slow  # pre-trains
def test_resume_from_checkpoint_equals_uninterrupted_run(trained, tmp_path):
    """Continuing from a checkpoint taken in the middle of an epoch gives the same model, head and
    per-step losses as the run that never stopped; a checkpoint of another config is refused."""
    import shutil

    from speaker_neurons.pretrain import pretrain_melhubert

    manifest, _, _, _ = trained
    cfg = {**TINY_TRAIN, "checkpoint_every": 10}
    full = tmp_path / "full"
    pretrain_melhubert(manifest, full, TINY_MODEL, cfg, device="cpu", threads=1)
    state = torch.load(full / "checkpoints" / "step_10" / "state.pt", weights_only=False)
    assert state["pending"], "the checkpoint must fall inside an epoch for this test to mean something"
    resumed = tmp_path / "resumed"
    (resumed / "checkpoints").mkdir(parents=True)
    shutil.copytree(full / "checkpoints" / "step_10", resumed / "checkpoints" / "step_10")
    shutil.copytree(full / "checkpoints" / "step_30", resumed / "checkpoints" / "step_30")  # stale: removed
    s = pretrain_melhubert(manifest, resumed, TINY_MODEL, cfg, device="cpu", threads=1,
                           resume_from=resumed / "checkpoints" / "step_10")
    assert s["steps"] == 30 and s["resumed_from"].endswith("step_10")
    for name in ("model/model.safetensors", "head.pt", "checkpoints/step_20/model.safetensors",
                 "checkpoints/step_30/head.pt"):
        assert _sha(resumed / name) == _sha(full / name), name
    assert _losses(resumed / "train_log.tsv") == _losses(full / "train_log.tsv")
    with pytest.raises(ValueError, match="another training config"):
        pretrain_melhubert(manifest, tmp_path / "other", TINY_MODEL, {**cfg, "lr": 1e-3}, device="cpu", threads=1,
                           resume_from=full / "checkpoints" / "step_10")


@pytest.mark.slow  # pre-trains
def test_resume_with_auto_keeps_the_checkpoints_precision(trained, tmp_path, monkeypatch):
    """A job requeued onto a node whose CPU resolves `amp: auto` the other way continues in the precision
    its checkpoint was trained in: the same bytes as the run that never stopped."""
    import shutil

    from speaker_neurons.pretrain import loop, pretrain_melhubert

    manifest, _, _, _ = trained
    cfg = {**TINY_TRAIN, "max_steps": 14, "checkpoint_every": 7, "amp": "auto"}
    monkeypatch.setattr(loop, "native_bf16", lambda: True)
    full = tmp_path / "full"
    s_full = pretrain_melhubert(manifest, full, TINY_MODEL, cfg, device="cpu", threads=1)
    assert s_full["precision"] == "bf16 autocast"
    monkeypatch.setattr(loop, "native_bf16", lambda: False)  # the other node
    fresh = pretrain_melhubert(manifest, tmp_path / "fresh", TINY_MODEL, cfg, device="cpu", threads=1)
    assert fresh["precision"] == "float32"
    assert _sha(tmp_path / "fresh" / "head.pt") != _sha(full / "head.pt")  # the precisions differ in bytes
    resumed = tmp_path / "resumed"
    shutil.copytree(full / "checkpoints" / "step_7", resumed / "checkpoints" / "step_7")
    s = pretrain_melhubert(manifest, resumed, TINY_MODEL, cfg, device="cpu", threads=1,
                           resume_from=resumed / "checkpoints" / "step_7")
    assert s["precision"] == "bf16 autocast"
    for name in ("model/model.safetensors", "head.pt"):
        assert _sha(resumed / name) == _sha(full / name), name


@pytest.mark.slow  # pre-trains
def test_only_the_newest_checkpoints_are_kept_and_the_model_is_unchanged(trained, tmp_path):
    """pretrain.train.keep_checkpoints bounds the disk of a long run: the newest N complete checkpoints
    stay, the model is the same bytes as a run that kept every one, and a run resumes from the newest."""
    import shutil

    from speaker_neurons.pretrain import pretrain_melhubert

    manifest, _, _, _ = trained
    cfg = {**TINY_TRAIN, "max_steps": 20, "checkpoint_every": 5}
    s_all = pretrain_melhubert(manifest, tmp_path / "all", TINY_MODEL, {**cfg, "keep_checkpoints": None},
                               device="cpu", threads=1)
    s_two = pretrain_melhubert(manifest, tmp_path / "two", TINY_MODEL, {**cfg, "keep_checkpoints": 2},
                               device="cpu", threads=1)
    assert s_all["checkpoints"] == ["step_10", "step_15", "step_20", "step_5"]
    assert s_two["checkpoints"] == ["step_15", "step_20"]
    assert sorted(p.name for p in (tmp_path / "two" / "checkpoints").iterdir()) == ["step_15", "step_20"]
    for name in ("model/model.safetensors", "head.pt", "checkpoints/step_20/model.safetensors"):
        assert _sha(tmp_path / "two" / name) == _sha(tmp_path / "all" / name), name
    # resuming from the newest kept checkpoint of a rotated run ends where the run that kept all ended
    resumed = tmp_path / "resumed"
    shutil.copytree(tmp_path / "all" / "checkpoints" / "step_10", resumed / "checkpoints" / "step_10")
    pretrain_melhubert(manifest, resumed, TINY_MODEL, {**cfg, "keep_checkpoints": 1}, device="cpu", threads=1,
                       resume_from=resumed / "checkpoints" / "step_10")
    assert sorted(p.name for p in (resumed / "checkpoints").iterdir()) == ["step_20"]
    assert _sha(resumed / "model" / "model.safetensors") == _sha(tmp_path / "all" / "model" / "model.safetensors")


@pytest.mark.slow  # pre-trains
def test_sigterm_saves_that_step_and_the_resumed_run_ends_identical(trained, tmp_path):
    """SIGTERM (what SLURM sends at a job's time limit, before SIGKILL) at step 7, between the scheduled
    checkpoints (15, 30): the loop saves step 7 and stops with Terminated, SIGTERM's handler restored; the
    rerun resumes from step 7 and ends with the same model, head, losses and checkpoints (step 7 gone) as
    the run that never stopped."""
    import os
    import signal

    from speaker_neurons.pretrain import pretrain_melhubert
    from speaker_neurons.utils import Terminated

    manifest, out, summary, _ = trained
    run = tmp_path / "run"
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(Terminated, match="step 7 of 30"):
        pretrain_melhubert(manifest, run, TINY_MODEL, TINY_TRAIN, device="cpu", threads=1,
                           on_step=lambda step: os.kill(os.getpid(), signal.SIGTERM) if step == 7 else None)
    assert signal.getsignal(signal.SIGTERM) is before
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step_7"]
    s = pretrain_melhubert(manifest, run, TINY_MODEL, TINY_TRAIN, device="cpu", threads=1,
                           resume_from=run / "checkpoints" / "step_7")
    assert s["resumed_from"].endswith("step_7") and s["checkpoints"] == summary["checkpoints"] == ["step_15", "step_30"]
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step_15", "step_30"]
    for name in ("model/model.safetensors", "head.pt", "checkpoints/step_15/model.safetensors"):
        assert _sha(run / name) == _sha(out / name), name
    assert _losses(run / "train_log.tsv") == _losses(out / "train_log.tsv")


@pytest.mark.slow  # pre-trains
def test_clock_budget_is_opt_in_and_loud(trained, tmp_path, package_logs):
    import logging

    from speaker_neurons.pretrain import DEFAULT_TRAIN_CONFIG, pretrain_melhubert

    assert DEFAULT_TRAIN_CONFIG["max_minutes"] is None  # by default only the step count ends a run
    manifest, _, _, _ = trained
    with package_logs.at_level(logging.WARNING, logger="speaker_neurons"):
        s = pretrain_melhubert(manifest, tmp_path / "budget", TINY_MODEL, {**TINY_TRAIN, "max_minutes": 1e-6},
                               device="cpu", threads=1)
    assert s["stopped_by"] == "max_minutes" and s["steps"] < TINY_TRAIN["max_steps"]
    assert "STOPPED BY THE CLOCK" in package_logs.text


@pytest.mark.slow  # pre-trains
def test_continue_pretraining_a_pruned_model(trained, tmp_path):
    """The loop trains a given model with per-layer widths (a pruned one) on its parent's targets."""
    from speaker_neurons.models import load_native
    from speaker_neurons.pretrain import continue_pretraining, load_head

    manifest, out, _, _ = trained
    model = load_native(out / "model")
    model.prune_ffn({1: list(range(0, 128, 2)), 2: list(range(40))})
    centers = np.load(out / "kmeans_centers.npy")
    s = continue_pretraining(model, manifest, tmp_path / "cont", centers, {**TINY_TRAIN, "max_steps": 6},
                             head=load_head(out / "head.pt"), device="cpu", threads=1)
    assert s["steps"] == 6 and s["ffn_widths"] == [64, 40]
    again = load_native(tmp_path / "cont" / "model")
    assert again.ffn_widths == [64, 40] and again.kept_indices[1] == list(range(0, 128, 2))
    assert np.array_equal(np.load(tmp_path / "cont" / "kmeans_centers.npy"), centers)


@pytest.mark.slow  # pre-trains
def test_continued_pretraining_from_a_released_checkpoint_learns_its_teachers_clusters(trained, tmp_path):
    from speaker_neurons.config import resolve

    def resolve_train(c):
        return resolve("pretrain.train", c)

    """A chain whose root brings no targets (a released MelHuBERT): the targets are k-means clusters of the
    root's own hidden states at a layer (teacher_centers), assigned frame by frame from the root's hidden
    states; the head is new."""
    import json

    from speaker_neurons.models import load_native
    from speaker_neurons.pretrain import continue_pretraining, teacher_centers

    manifest, out, _, _ = trained
    teacher = load_native(out / "model")
    cfg = {**TINY_TRAIN, "n_clusters": 8, "max_steps": 6}
    rec = teacher_centers(teacher, manifest, cfg, None, 1, tmp_path / "centers.npy", tmp_path / "teacher.json")
    centers = np.load(tmp_path / "centers.npy")
    assert centers.shape == (8, TINY_MODEL["hidden_dim"]) and rec["teacher_layer"] == 2  # round(0.75 * 2)
    assert json.loads((tmp_path / "teacher.json").read_text())["n_clusters"] == 8
    student = load_native(out / "model")
    student.prune_ffn({1: list(range(64)), 2: list(range(64))})
    s = continue_pretraining(student, manifest, tmp_path / "cont", centers, cfg, head=None, device="cpu", threads=1,
                             teacher=teacher, teacher_layer=None)
    assert s["steps"] == 6 and s["kmeans"]["teacher_layer"] == 2 and s["kmeans"]["given_centers"]
    head = torch.load(tmp_path / "cont" / "head.pt")
    assert head["state_dict"]["weight"].shape == (8, TINY_MODEL["hidden_dim"])  # a new head over the teacher's clusters
    assert np.array_equal(np.load(tmp_path / "cont" / "kmeans_centers.npy"), centers)
    # every frame's target is the centre nearest to the teacher's own hidden state of that frame
    from speaker_neurons.kmeans import assign
    from speaker_neurons.pretrain import _teacher_data

    data = _teacher_data(manifest, student, resolve_train(cfg), teacher, None, centers)
    with torch.no_grad():
        hidden = [teacher.encode(f[None], return_ffn=False).hidden[2][0].float() for f in data.feats]
    for h, t in zip(hidden, data.targets):
        assert np.array_equal(t.numpy(), np.asarray(assign(h, centers), dtype=np.int64))
    assert len(np.unique(torch.cat(list(data.targets)).numpy())) > 1


@pytest.mark.slow  # pre-trains (a few steps)
def test_unmasked_weight_adds_the_visible_frames_loss(trained, tmp_path):
    """pretrain.train.unmasked_weight w adds w x (cross-entropy of the visible frames) to the masked loss: at
    step 1 (same seed, same batch, same initial model) the loss grows linearly in w by about log(K) per unit
    (an untrained head), and w = 0 is the masked-only loss of the default."""
    from speaker_neurons.pretrain import pretrain_melhubert

    manifest, out, _, _ = trained
    first = {}
    for w in (0.0, 1.0, 2.0):
        torch.manual_seed(123)
        pretrain_melhubert(manifest, tmp_path / str(w), TINY_MODEL, {**TINY_TRAIN, "max_steps": 1,
                                                                     "unmasked_weight": w},
                           device="cpu", threads=1)
        rows = (tmp_path / str(w) / "train_log.tsv").read_text().splitlines()
        first[w] = float(rows[1].split("\t")[1])
    default_first = float((out / "train_log.tsv").read_text().splitlines()[1].split("\t")[1])
    assert first[0.0] == pytest.approx(default_first, abs=1e-5)
    visible = first[1.0] - first[0.0]
    assert 0.5 * np.log(16) < visible < 1.5 * np.log(16)
    assert first[2.0] - first[0.0] == pytest.approx(2 * visible, rel=1e-4)


def test_prediction_loss_adds_the_visible_unpadded_frames_only():
    """The loss is the masked frames' cross-entropy plus w x that of the frames neither masked nor padding:
    computed by hand on random frames (masked, visible and padding frames with different targets)."""
    from torch.nn import functional as F

    from speaker_neurons.pretrain.loop import prediction_loss

    g = torch.Generator().manual_seed(0)
    head = torch.nn.Linear(8, 5)
    top = torch.randn(2, 7, 8, generator=g)
    y = torch.randint(0, 5, (2, 7), generator=g)
    y[1, 5:] = -100  # padding
    mask = torch.zeros(2, 7, dtype=torch.bool)
    mask[0, 1:4] = mask[1, 0:2] = True
    visible = ~mask & (y >= 0)
    masked_ce = F.cross_entropy(head(top[mask]), y[mask])
    visible_ce = F.cross_entropy(head(top[visible]), y[visible])
    loss0, logits, tgt = prediction_loss(head, top, y, mask)
    assert torch.allclose(loss0, masked_ce) and torch.equal(tgt, y[mask]) and logits.shape == (5, 5)
    loss2, _, _ = prediction_loss(head, top, y, mask, 2.0)
    assert torch.allclose(loss2, masked_ce + 2.0 * visible_ce)
    assert not torch.allclose(visible_ce, masked_ce)  # the two parts differ, so the sum tells them apart
