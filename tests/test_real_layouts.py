"""The README's real-data protocol on folders laid out like the released corpora: a LibriSpeech-shaped
analysis corpus (FLAC, trans.txt, SPEAKERS.TXT), a VoxCeleb1-shaped SID corpus in s3prl's layout
(<root>/dev/wav and <root>/test/wav, iden_split.txt, vox1_meta.csv) and a LibriSpeech-shaped PR corpus
with one folder per split, run end to end with a checkpoint model; a leak between the analysis corpus
and an evaluation corpus stops the run before any job, naming the file."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from conftest import run_snakemake
from speaker_neurons.data import layouts
from test_end_to_end import _native_wav2vec2  # the same small wav2vec2-style checkpoint

pytestmark = pytest.mark.slow

WORDS = ["HELLO", "WORLD", "SPEECH", "APPLE", "GARDEN", "MORNING", "WATER", "YELLOW", "DOCTOR", "WINDOW", "SUMMER",
         "BASKET", "CANDLE", "FISH", "MOUNTAIN", "RIVER"]
def _voice(rng: np.random.Generator, f0: float, seconds: float, sr: int = 16000) -> np.ndarray:
    """A crude voiced signal: harmonics of a wobbling f0 under a speaker-specific spectral tilt, plus noise."""
    t = np.arange(int(seconds * sr)) / sr
    f = f0 * (1 + 0.05 * np.sin(2 * np.pi * rng.uniform(2, 5) * t))
    phase = 2 * np.pi * np.cumsum(f) / sr
    x = sum((0.6 ** k) * np.sin(k * phase + rng.uniform(0, 6)) for k in range(1, 8))
    x *= 0.5 + 0.5 * np.abs(np.sin(2 * np.pi * rng.uniform(2, 4) * t))  # syllable-like envelope
    x += 0.02 * rng.standard_normal(len(t))
    return (0.25 * x / np.abs(x).max()).astype(np.float32)


def _librispeech(root: Path, split: str, speakers: dict[str, float], utts: int, rng) -> Path:
    return layouts.librispeech_split(root, split, [
        layouts.Utterance(spk, _voice(rng, f0, rng.uniform(1.5, 2.5)),
                          " ".join(rng.choice(WORDS, size=int(rng.integers(2, 5)))))
        for spk, f0 in speakers.items() for _ in range(utts)])


def _voxceleb1(root: Path, speakers: dict[str, float], rng) -> dict[str, str]:
    """s3prl's layout: utterances 0-3 train (1), 4 dev (2) in <root>/dev/wav; 5-6 test (3) in <root>/test/wav."""
    utts = [("train" if n < 4 else ("dev" if n == 4 else "test"),
             layouts.Utterance(spk, _voice(rng, f0, rng.uniform(1.5, 2.5))))
            for spk, f0 in speakers.items() for n in range(7)]
    return layouts.voxceleb1(root, utts, {s: "f" if f0 > 160 else "m" for s, f0 in speakers.items()}, archives=True)


def _config(tmp: Path, results: Path, vox: dict, extra: str = "") -> Path:
    ls = tmp / "LibriSpeech"
    cfg = tmp / "paper.yaml"
    cfg.write_text(f"""results: {results}
corpus:
  name: dev_clean
  source: librispeech
  librispeech: {{split_dir: {ls / 'dev-clean'}}}
corpora:
  - name: vox1
    source: voxceleb1
    voxceleb1: {{root: {vox['root']}, iden_split: {vox['iden_split']}, meta_csv: {vox['meta_csv']}}}
  - name: libriphone
    source: librispeech
    librispeech:
      split_dirs: {{train: {ls / 'train-clean-100'}, dev: {ls / 'dev-clean'}, test: {ls / 'test-clean'}}}
stages: {{analysis: dev_clean, sid: vox1, pr: libriphone}}
models:
  - {{name: w2v, kind: wav2vec2, path: {tmp / 'w2v'}, format: native}}
upstream: {{device: cpu}}
analysis: {{k_ssl: [3], max_frames: 20000}}
ivector: {{ubm_components: 4, ivector_dim: 4, ubm_iters: 2, tv_iters: 2}}
prune: {{strategies: [l1, protected, random], targets: [protected_size]}}
sid: {{layer_sets: [all], crop_seconds: 1.0, learning_rates: [0.01], seeds: [0, 1], epochs: 5}}
pr: {{pruned_models: true, learning_rates: [0.01], seeds: [0, 1], steps: 20, eval_every: 10, batch_size: 8, bootstrap: 200}}
# what the assertions read, no more: the erase ablation and the FFN controls run in the tiny chains
erase: {{enabled: false}}
controls: {{enabled: false}}
{extra}""")
    return cfg


@pytest.fixture(scope="module")
def corpora(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("real")
    rng = np.random.default_rng(0)
    ls = tmp / "LibriSpeech"
    dev = {"1001": 110.0, "1002": 190.0, "1003": 130.0, "1004": 220.0}
    _librispeech(ls, "dev-clean", dev, 4, rng)
    _librispeech(ls, "train-clean-100", {"2001": 120.0, "2002": 200.0}, 6, rng)
    _librispeech(ls, "test-clean", {"3001": 140.0, "3002": 210.0}, 3, rng)
    layouts.librispeech_speakers(ls, {s: "F" if f0 > 160 else "M" for s, f0 in
                                      {**dev, "2001": 120.0, "2002": 200.0, "3001": 140.0, "3002": 210.0}.items()})
    vox = _voxceleb1(tmp / "VoxCeleb1", {"id10001": 105.0, "id10002": 180.0, "id10003": 125.0, "id10004": 230.0}, rng)
    _native_wav2vec2(tmp / "w2v")
    return tmp, vox


@pytest.fixture(scope="module")
def run(corpora):
    tmp, vox = corpora
    results = tmp / "results"
    res = run_snakemake("--cores", "2", "--configfile", str(_config(tmp, results, vox)))
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-4000:]
    return results


def _test_clean_phones(tmp: Path) -> int:
    """The phones of test-clean's transcripts (every word is in CMUdict), counted from the corpus' own
    trans.txt files: the denominator of a right PER."""
    from speaker_neurons.data import lexicon as lx

    lex = lx.load_lexicon(None)
    words = [w for f in (tmp / "LibriSpeech" / "test-clean").rglob("*.trans.txt")
             for line in f.read_text().splitlines() for w in line.split()[1:]]
    return sum(len(lx.word_phones(w, lex)) for w in words)


def test_paper_protocol_runs_end_to_end_on_real_layouts(run, corpora):
    s = pd.read_csv(run / "summary.tsv", sep="\t")
    phones = _test_clean_phones(corpora[0])
    for strategy in ("l1", "protected", "random"):
        model = f"w2v-{strategy}-pset"
        sid = s[(s["section"] == "sid") & (s["metric"] == "accuracy_all") & (s["model"] == model)]
        per = s[(s["section"] == "pr") & (s["metric"] == "per_all") & (s["model"] == model)]
        assert len(sid) == 1 and len(per) == 1, model
        assert sid.iloc[0]["corpus"] == "vox1" and per.iloc[0]["corpus"] == "libriphone"
        # SID: the seed mean of each head's share of correctly identified test crops of VoxCeleb1's test
        # part (8 utterances, 1 s crops), as the stage counted them
        res = json.loads((run / "models" / model / "sid/vox1/sid.json").read_text())["all"]
        seeds = res["per_seed"]
        assert [r["seed"] for r in seeds] == [0, 1] and len({r["n"] for r in seeds}) == 1
        n = seeds[0]["n"]
        assert n >= 8 and all(0 <= r["correct"] <= n and r["accuracy"] == r["correct"] / n for r in seeds)
        assert sid.iloc[0]["value"] == pytest.approx(np.mean([r["correct"] / n for r in seeds]), abs=1e-6)
        assert sid.iloc[0]["n"] == n
        # PR: the seed mean of edits / phones, where the phones are test-clean's transcripts' own
        res = json.loads((run / "models" / model / "pr/libriphone/pr.json").read_text())["layer_sets"]["all"]
        assert res["test_phones"] == phones and res["test_utterances"] == 6
        for r in res["per_seed"]:
            assert r["ref_phones"] == phones and r["per"] == pytest.approx(r["edits"] / phones)
        assert per.iloc[0]["value"] == pytest.approx(np.mean([r["edits"] / phones for r in res["per_seed"]]),
                                                     abs=1e-6)
    assert set(s.loc[s["section"] == "ivectors", "corpus"]) == {"dev_clean"}
    # every corpus has its own folder, and the SID corpus kept VoxCeleb1's splits from both archives
    man = pd.read_csv(run / "corpora/vox1/manifest.tsv", sep="\t", keep_default_na=False)
    assert man["split"].value_counts().to_dict() == {"train": 16, "dev": 4, "test": 8}
    assert any("/test/wav/" in p for p in man["path"]) and any("/dev/wav/" in p for p in man["path"])
    phones = pd.read_csv(run / "corpora/libriphone/manifest.tsv", sep="\t", keep_default_na=False)
    assert phones["split"].value_counts().to_dict() == {"train": 12, "dev": 16, "test": 6}
    targets = pd.read_csv(run / "corpora/libriphone/phone_targets.tsv", sep="\t")
    assert len(targets) == 34 and targets["phones"].str.contains("1").all()  # ARPAbet with stress digits

    pr = json.loads((run / "models/w2v/pr/libriphone/pr.json").read_text())
    assert pr["corpus"] == "libriphone" and pr["splits"]["test"]["utterances"] == 6
    sid = json.loads((run / "models/w2v/sid/vox1/sid.json").read_text())
    assert sid["corpus"] == "vox1" and sid["speakers"] == 4
    assert not (run / "models/w2v/pr/libriphone/frames").exists()  # the frame cache is temporary
    md = (run / "summary.md").read_text()
    assert "analysis on **dev_clean**" in md and "sid on **vox1**" in md and "pr on **libriphone**" in md
    assert "## Phoneme recognition and pruning" in md and (run / "pr_vs_width.png").stat().st_size > 0


def test_a_leak_between_analysis_and_test_utterances_stops_before_any_job(corpora, tmp_path):
    tmp, vox = corpora
    leaked = tmp_path / "VoxLeak"
    shutil.copytree(vox["root"], leaked)
    victim = sorted((tmp / "LibriSpeech" / "dev-clean").glob("*/*/*.flac"))[0]
    test_file = sorted((leaked / "test" / "wav").glob("*/*/*.wav"))[0]
    data, sr = sf.read(victim)
    test_file.unlink()
    shutil.copy(victim, test_file)  # a dev-clean utterance's bytes as a VoxCeleb1 test file
    vox2 = {"root": str(leaked), "iden_split": str(leaked / "iden_split.txt"), "meta_csv": str(leaked / "vox1_meta.csv")}
    results = tmp_path / "results"
    res = run_snakemake("--cores", "2", "-n", "--configfile", str(_config(tmp, results, vox2)), timeout=300)
    out = res.stdout + res.stderr
    assert res.returncode != 0
    assert "Invalid configuration at key 'stages.sid'" in out and test_file.name in out and victim.name in out, out
    assert "Job stats" not in out and not results.exists()
