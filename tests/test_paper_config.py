"""configs/paper.yaml, the paper's protocol as shipped: its folders named once (`paths`), it plans on
folders laid out like LibriSpeech and VoxCeleb1, every job that runs a model asks for a GPU, and a
`{name}` that `paths` does not define stops the run naming the key."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import yaml

from conftest import ROOT, run_snakemake
from speaker_neurons.data import layouts

PAPER = ROOT / "configs" / "paper.yaml"
WORDS = ["HELLO", "WORLD", "SPEECH", "WATER"]
MODEL_RULES = ("extract_features", "activation_stats", "pool_layers", "pr_eval", "erase_ablation")


def _audio(rng, seconds=1.2):
    return (0.1 * rng.standard_normal(int(seconds * layouts.SAMPLE_RATE))).astype(np.float32)


def _data_root(root: Path) -> Path:
    """<root>/LibriSpeech (three splits, SPEAKERS.TXT, a lexicon) and <root>/VoxCeleb1, a few files each."""
    rng = np.random.default_rng(0)
    libri = root / "LibriSpeech"
    genders = {"11": "F", "12": "M", "13": "F", "14": "M"}
    for split in ("dev-clean", "train-clean-100", "test-clean"):
        utts = [layouts.Utterance(s, _audio(rng), " ".join(WORDS[: 2 + i % 3])) for s in genders for i in range(3)]
        if split == "test-clean":  # other speakers than the analysis corpus' (no leak)
            utts = [layouts.Utterance(str(int(u.speaker) + 10), u.audio, u.text) for u in utts]
        layouts.librispeech_split(libri, split, utts)
    layouts.librispeech_speakers(libri, {**genders, **{str(int(s) + 10): g for s, g in genders.items()}})
    (libri / "librispeech-lexicon.txt").write_text("HELLO HH AH0 L OW1\nWORLD W ER1 L D\nSPEECH S P IY1 CH\n"
                                                   "WATER W AO1 T ER0\n")
    vox = [(sp, layouts.Utterance(f"id1000{s}", _audio(rng))) for s in range(4) for sp in ("train", "train", "dev", "test")]
    layouts.voxceleb1(root / "VoxCeleb1", vox, {f"id1000{s}": "mf"[s % 2] for s in range(4)})
    return root


def _checkpoints(root: Path) -> Path:
    root.mkdir(parents=True)
    for name in ("melhubert_base.ckpt", "melhubert_mean_std.npy", "wav2vec_small.pt"):
        (root / name).write_bytes(b"")  # a dry run checks that they exist; it reads no weights
    return root


def test_paper_config_names_its_folders_once_and_comments_its_sources():
    text = PAPER.read_text()
    cfg = yaml.safe_load(text)
    assert set(cfg["paths"]) == {"data", "checkpoints"}
    used = set(re.findall(r"\{([a-z_]+)\}", text))
    assert used == {"data", "checkpoints"}, used
    assert "/data" not in text.split("paths:", 1)[1].split("\n", 3)[3], "a folder written out below paths"
    # every value that differs from the demo carries a comment naming its source
    for key in ("feature_layer", "crop_seconds", "steps", "grad_clip", "eval_every", "schedule", "device"):
        line = next(l for l in text.splitlines() if l.strip().startswith(f"{key}:"))
        assert re.search(r"#\s*(paper|s3prl|Kaldi|choice)", line), line


@pytest.mark.slow
def test_paper_config_plans_on_real_layouts_with_a_gpu_per_model_job(tmp_path):
    data = _data_root(tmp_path / "data")
    ckpt = _checkpoints(tmp_path / "models")
    paths = f"paths={{data: {data}, checkpoints: {ckpt}}}"
    res = run_snakemake("-n", "--configfile", str(PAPER), "--config", paths, f"results={tmp_path}/results")
    out = res.stdout + res.stderr
    assert res.returncode == 0, out
    jobs = re.split(r"\n(?=(?:local)?rule \w+:)", out)
    seen = set()
    for block in jobs:
        m = re.match(r"(?:local)?rule (\w+):", block.strip())
        if m and m.group(1) in MODEL_RULES:
            seen.add(m.group(1))
            assert re.search(r"\bgpu=1\b", block), block
    assert seen == set(MODEL_RULES), seen
    for model in ("melhubert_base", "wav2vec2_base"):
        assert f"models/{model}/sid/vox1/sid.json" in out and f"models/{model}/pr/libriphone/pr.json" in out
        # config.yaml's 10-minute demo trims the grid; the paper's protocol puts it back
        for derived in ("l1-pset", "protected-pset", "random-pset", "noffn"):
            assert f"models/{model}-{derived}/pr/libriphone/pr.json" in out
        assert "keep0.5" not in out  # the paper prunes at the protected set's width only
    assert not (tmp_path / "results").exists()  # a plan writes nothing


def test_an_undefined_path_name_stops_before_any_job(tmp_path):
    from snakemake.utils import validate

    from speaker_neurons.catalogue import ConfigError, checked_catalogue

    cfg = yaml.safe_load(PAPER.read_text())
    del cfg["paths"]["checkpoints"]
    with pytest.raises(ConfigError, match=r"key 'models.0.path'.*\{checkpoints\} names no entry of 'paths'"):
        checked_catalogue(cfg, lambda c: validate(c, str(ROOT / "speaker_neurons" / "config.schema.yaml")))
