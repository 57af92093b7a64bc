"""The catalogue of corpora and models (speaker_neurons.catalogue), in-process, without Snakemake:
the names and chains a configuration expands into, the corpus of every stage, and the checks that
stop a run before any job."""

from __future__ import annotations

import shutil

import pytest

from speaker_neurons.catalogue import ConfigError, build_catalogue
from speaker_neurons.leaks import check_leaks, find_leaks
from speaker_neurons.config import complete


def cat(**over):
    return build_catalogue(complete(over))


def _ls_folder(root, name, speakers=("11", "12"), utts=2, payload=b"x"):
    """A LibriSpeech-shaped folder (files need not be real audio for the planning checks)."""
    d = root / name
    for spk in speakers:
        ch = d / spk / "100"
        ch.mkdir(parents=True)
        lines = []
        for u in range(utts):
            (ch / f"{spk}-100-{u:04d}.flac").write_bytes(payload + f"{name}{spk}{u}".encode())
            lines.append(f"{spk}-100-{u:04d} HELLO WORLD")
        (ch / f"{spk}-100.trans.txt").write_text("\n".join(lines) + "\n")
    return d


def _vox_folder(root, files):
    """A VoxCeleb1-shaped folder: wav/<id>/<yt>/<n>.wav with iden_split.txt (all test) and vox1_meta.csv."""
    lines = []
    for rel, data in files.items():
        p = root / "wav" / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
        lines.append(f"3 {rel}")
    (root / "iden_split.txt").write_text("\n".join(lines) + "\n")
    (root / "vox1_meta.csv").write_text("VoxCeleb1 ID\tVGGFace1 ID\tGender\tNationality\tSet\n")
    return {"root": str(root), "iden_split": str(root / "iden_split.txt"), "meta_csv": str(root / "vox1_meta.csv")}


# ------------------------------------------------------------------------------------------- models
def test_default_demo_expands_into_the_pruned_models_and_the_control():
    c = cat()
    names = list(c.models)
    assert names[0] == "melhubert_demo"
    pruned = [n for n, m in c.models.items() if m.source == "prune" and not m.control]
    assert len(pruned) == 9 and "melhubert_demo-protected-pset" in pruned and "melhubert_demo-l1-keep0.5" in pruned
    ctrl = c.models["melhubert_demo-noffn"]
    assert ctrl.control and ctrl.strategy == "random" and ctrl.parent == "melhubert_demo" and ctrl.k_ssl is None
    assert all(c.models[n].parent == "melhubert_demo" and c.models[n].k_ssl == 3 for n in pruned)
    assert "melhubert_demo-noffn" not in c.analysed and "melhubert_demo-protected-pset" not in c.analysed
    assert c.analysed == ["melhubert_demo"] and c.sets_k == 3


def test_chains_of_continued_and_iterative_models():
    c = cat(prune={"strategies": ["protected"], "targets": ["protected_size"], "continue": {"steps": 3},
                   "iterative": {"enabled": True, "strategies": ["l1"], "rows_per_step": 256, "final_width": 512}})
    cpt = c.models["melhubert_demo-protected-pset-cpt"]
    assert cpt.source == "continue" and cpt.parent == "melhubert_demo-protected-pset" and cpt.root == "melhubert_demo"
    assert cpt.target == "protected_size+cpt"
    steps = [n for n, m in c.models.items() if m.source == "iterative"]
    assert steps == ["melhubert_demo-l1-iter1", "melhubert_demo-l1-iter2"]  # 1024 -> 768 -> 512
    assert c.models["melhubert_demo-l1-iter2"].parent == "melhubert_demo-l1-iter1"
    assert c.root_of("melhubert_demo-l1-iter2") == "melhubert_demo"
    assert c.head_of("melhubert_demo-protected-pset") == "melhubert_demo"  # pruned: the parent's head
    assert c.head_of("melhubert_demo-l1-iter2") == "melhubert_demo-l1-iter2"
    assert set(c.analysed) == {"melhubert_demo", *steps}  # iterative steps are always analysed


def test_prune_analyse_adds_the_pruned_and_continued_models_never_the_controls():
    c = cat(prune={"strategies": ["protected"], "targets": ["protected_size"], "continue": {"steps": 3},
                   "analyse": True})
    assert c.analysed == ["melhubert_demo", "melhubert_demo-protected-pset", "melhubert_demo-protected-pset-cpt"]
    assert "melhubert_demo-noffn" in c.models


@pytest.mark.parametrize("over, key, words", [
    ({"models": [{"name": "a", "source": "pretrain"}, {"name": "a", "source": "pretrain"}]}, "models",
     "name 'a' is listed twice"),
    ({"models": [{"name": "h", "kind": "hubert"}]}, "models.0", "source checkpoint needs 'path'"),
    ({"models": [{"name": "h", "kind": "hubert", "source": "pretrain"}]}, "models.0", "pre-trains MelHuBERT only"),
    ({"models": [{"name": "m", "format": "melhubert", "path": "/x.ckpt"}]}, "models.0", "set 'mean_std'"),
    ({"prune": {"parents": ["nope"]}}, "prune.parents", "'nope' is not the name"),
    ({"prune": {"k_ssl": 5}}, "prune.k_ssl", "5 is not one of analysis.k_ssl"),
    ({"models": [{"name": "melhubert_demo-noffn", "source": "pretrain"}, {"name": "melhubert_demo", "source": "pretrain"}]},
     "models", "control model"),
    ({"prune": {"protected_file": "/p.json", "iterative": {"enabled": True}}}, "prune.protected_file", "recomputes"),
    ({"models": [{"name": "h", "kind": "hubert", "path": "/h.pt"}], "prune": {"continue": {"steps": 2}}},
     "prune.continue.steps", "comes from 'h'"),
    ({"erase": {"enabled": True}, "sid": {"enabled": False}}, "erase.enabled", "SID heads"),
])
def test_bad_model_configurations_name_the_key(over, key, words):
    with pytest.raises(ConfigError, match=words) as exc:
        cat(**over)
    assert exc.value.key == key
    assert str(exc.value).startswith(f"Invalid configuration at key '{key}'")


# ------------------------------------------------------------------------------------------- corpora
def test_demo_is_analysed_on_one_corpus_and_evaluated_on_another():
    c = cat()
    assert c.stages == {"analysis": "demo", "pretrain": "demo", "ivector_extractor": "demo", "sid": "demo_eval",
                        "pr": "demo_eval"}
    ev, ana = c.corpora["demo_eval"], c.corpora["demo"]
    assert ev.synthesized and ev.derived_from == "demo"
    assert ev.settings["seed"] == ana.settings["seed"] + 1000  # other pseudo-speakers
    assert {k: v for k, v in ev.settings.items() if k not in ("seed", "id_prefix")} == \
        {k: v for k, v in ana.settings.items() if k != "seed"}
    # the demo's ids do not depend on its seed: the evaluation corpus' speakers and utterances carry its name
    assert ev.settings["id_prefix"] == "demo_eval-" and "id_prefix" not in ana.settings
    assert c.targets_audio == "clean"  # the demo keeps clean copies: denoising targets
    assert find_leaks(ana, ev) == []


def test_every_synthesized_corpus_but_the_first_prefixes_its_ids_with_its_name():
    c = cat(corpora=[{"name": "again", "source": "demo", "demo": {"seed": 3}}], stages={"sid": "again", "pr": "again"})
    assert c.corpora["again"].settings["id_prefix"] == "again-" and "id_prefix" not in c.corpora["demo"].settings
    from speaker_neurons.catalogue import id_prefix

    assert id_prefix("demo_eval") == "demo_eval-"


def test_corpora_sharing_utterance_ids_are_named_with_examples():
    import pandas as pd

    from speaker_neurons.data.manifest import check_distinct_ids

    a = pd.DataFrame({"utt_id": ["f01_us1-0000", "f01_us1-0001", "x"]})
    b = pd.DataFrame({"utt_id": ["f01_us1-0001", "f01_us1-0000", "y"]})
    check_distinct_ids({"demo": a, "other": pd.DataFrame({"utt_id": ["demo_eval-f01_us1-0000"]})})
    with pytest.raises(ValueError, match=r"corpora 'demo' and 'demo_eval' share 2 utterance id\(s\), e\.g\. "
                                         r"f01_us1-0000, f01_us1-0001;"):
        check_distinct_ids({"demo": a, "demo_eval": b})


def test_own_kaldi_ivectors_cannot_cluster_another_corpus_for_the_erase_ablation():
    with pytest.raises(ConfigError, match="assigning each evaluation utterance from its own audio") as exc:
        cat(ivector={"kaldi_ivectors": "/data/ivectors.scp"})
    assert exc.value.key == "ivector.kaldi_ivectors"
    cat(ivector={"kaldi_ivectors": "/data/ivectors.scp"}, erase={"enabled": False})
    cat(ivector={"kaldi_ivectors": "/data/ivectors.scp"}, stages={"sid": "demo", "pr": "demo"})


def test_one_corpus_configs_keep_working_and_are_said(tmp_path):
    d = _ls_folder(tmp_path, "dev-clean")
    (tmp_path / "SPEAKERS.TXT").write_text("11 | F | dev-clean | 1 | A\n12 | M | dev-clean | 1 | B\n")
    cfg = complete({"corpus": {"source": "librispeech", "librispeech": {"split_dir": str(d)}}})
    c = build_catalogue(cfg)
    assert list(c.corpora) == ["librispeech"] and set(c.stages.values()) == {"librispeech"}
    assert c.targets_audio == "input"
    warnings = check_leaks(c, cfg)
    assert any("sid is scored on the corpus the neurons are found on" in w for w in warnings)


def test_stage_corpora_by_name(tmp_path):
    vox = _vox_folder(tmp_path / "vox", {"id10001/yt/00001.wav": b"a"})
    c = cat(corpora=[{"name": "vox", "source": "voxceleb1", "voxceleb1": vox}], stages={"sid": "vox", "pr": "demo"})
    assert c.stages["sid"] == "vox" and c.stages["pr"] == "demo" and "demo_eval" not in c.corpora
    assert c.used == ["demo", "vox"]  # the analysis corpus (also pre-training and PR), then SID's


@pytest.mark.parametrize("over, key, words", [
    ({"stages": {"sid": "nope"}}, "stages.sid", "no corpus is named 'nope'"),
    ({"corpora": [{"name": "demo"}]}, "corpora.0.name", "used twice"),
    ({"corpora": [{"source": "demo"}]}, "corpora.0.name", "needs a name"),
    ({"corpora": [{"name": "v", "source": "voxceleb1"}]}, "corpora.0.voxceleb1.root", "corpus 'v'"),
    ({"corpus": {"source": "librispeech"}}, "corpus.librispeech.split_dir", "names no folder"),
    ({"corpus": {"source": "tsv"}}, "corpus.tsv.path", "is empty"),
    ({"corpus": {"source": "librispeech", "librispeech": {"split_dir": "/a", "split_dirs": {"test": "/b"}}}},
     "corpus.librispeech", "both split_dir and split_dirs"),
    ({"corpus": {"source": "tsv", "tsv": {"path": "/a.tsv"}}, "pretrain": {"train": {"targets_audio": "clean"}}},
     "pretrain.train.targets_audio", "has none"),
])
def test_bad_corpus_configurations_name_the_key(over, key, words):
    with pytest.raises(ConfigError, match=words) as exc:
        cat(**over)
    assert exc.value.key == key


def test_a_stage_whose_corpus_lacks_what_it_needs_is_named(tmp_path):
    vox = _vox_folder(tmp_path / "vox", {"id10001/yt/00001.wav": b"a"})
    with pytest.raises(ConfigError, match="needs transcripts, but corpus 'vox'") as exc:
        cat(corpora=[{"name": "vox", "source": "voxceleb1", "voxceleb1": vox}], stages={"sid": "vox"})
    assert exc.value.key == "stages.pr"  # PR follows SID's corpus unless told otherwise
    tsv = tmp_path / "list.tsv"
    tsv.write_text("path\n/a.wav\n")
    with pytest.raises(ConfigError, match="SID needs speakers, but corpus 'mine'"):
        cat(corpora=[{"name": "mine", "source": "tsv", "tsv": {"path": str(tsv)}}], stages={"sid": "mine", "pr": "demo"})
    tsv.write_text("path\tspeaker\n/a.wav\ts1\n")
    with pytest.raises(ConfigError, match="split.fractions"):
        cat(corpora=[{"name": "mine", "source": "tsv", "tsv": {"path": str(tsv)}, "split": {"fractions": None}}],
            stages={"sid": "mine", "pr": "demo"})
    tsv.write_text("path\tspeaker\ttext\n/a.wav\ts1\thello\n")  # a text column makes it a PR corpus
    c = cat(corpora=[{"name": "mine", "source": "tsv", "tsv": {"path": str(tsv)}}], stages={"sid": "mine"})
    assert c.corpus("pr").name == "mine" and c.corpus("pr").has_transcripts


# ------------------------------------------------------------------------------------------- leaks
def test_leak_by_path_and_by_audio_bytes_is_named(tmp_path):
    dev = _ls_folder(tmp_path / "LibriSpeech", "dev-clean")
    (tmp_path / "LibriSpeech" / "SPEAKERS.TXT").write_text("11 | F | dev-clean | 1 | A\n")
    one = next(dev.glob("*/*/*.flac"))
    vox = tmp_path / "vox"
    files = {"id10001/yt/00001.wav": b"unrelated audio", "id10001/yt/00002.wav": one.read_bytes()}
    cfg = complete({"corpus": {"name": "ls", "source": "librispeech", "librispeech": {"split_dir": str(dev)}},
                    "corpora": [{"name": "vox", "source": "voxceleb1", "voxceleb1": _vox_folder(vox, files)}],
                    "stages": {"sid": "vox", "pr": "ls"}, "pr": {"enabled": False}})
    c = build_catalogue(cfg)
    with pytest.raises(ConfigError, match="00002.wav \\(the same audio as .*" + one.name) as exc:
        check_leaks(c, cfg)
    assert exc.value.key == "stages.sid" and "00001.wav" not in str(exc.value)
    # the same file reached through the evaluation corpus' own folder
    (vox / "wav" / "id10001" / "yt" / "00002.wav").unlink()
    (vox / "wav" / "id10001" / "yt" / "00002.wav").symlink_to(one)
    with pytest.raises(ConfigError, match="the same file"):
        check_leaks(c, cfg)
    shutil.rmtree(vox)
    _vox_folder(vox, {"id10001/yt/00001.wav": b"unrelated audio"})
    assert check_leaks(c, cfg) == []


def test_leak_between_librispeech_splits_only_counts_the_test_folder(tmp_path):
    ls = tmp_path / "LibriSpeech"
    dev = _ls_folder(ls, "dev-clean")
    test = _ls_folder(ls, "test-clean", speakers=("21",))
    train = _ls_folder(ls, "train-clean-100", speakers=("31",))
    cfg = complete({"corpus": {"name": "ana", "source": "librispeech", "librispeech": {"split_dir": str(dev)}},
                    "corpora": [{"name": "phones", "source": "librispeech",
                                 "librispeech": {"split_dirs": {"train": str(train), "dev": str(dev), "test": str(test)}}}],
                    "stages": {"sid": "phones", "pr": "phones"}})
    c = build_catalogue(cfg)
    assert check_leaks(c, cfg) == []  # dev-clean is PR's model selection split: a known, harmless overlap
    cfg["corpora"][0]["librispeech"]["split_dirs"]["test"] = str(dev)
    with pytest.raises(ConfigError, match="dev-clean"):
        check_leaks(build_catalogue(cfg), cfg)


def test_the_ivector_extractor_corpus_is_named_and_checked_for_leaks():
    c = cat(corpora=[{"name": "more", "source": "demo", "demo": {"seed": 7}}], stages={"ivector_extractor": "more"})
    assert c.stages["ivector_extractor"] == "more" and "more" in c.used
    assert "more" not in cat(corpora=[{"name": "more", "source": "demo", "demo": {"seed": 7}}],
                             stages={"ivector_extractor": "more"}, ivector={"kaldi_ivectors": "given.scp"},
                             erase={"enabled": False}).used
    with pytest.raises(ConfigError, match="no corpus is named 'nowhere'") as exc:
        cat(stages={"ivector_extractor": "nowhere"})
    assert exc.value.key == "stages.ivector_extractor"
    # an extractor trained on the SID corpus itself would have heard its test utterances
    cfg = complete({"stages": {"ivector_extractor": "demo_eval"}})
    with pytest.raises(ConfigError, match="i-vector extractor is trained") as exc:
        check_leaks(build_catalogue(cfg), cfg)
    assert exc.value.key == "stages.ivector_extractor"
    cfg = complete({"corpora": [{"name": "more", "source": "demo", "demo": {"seed": 7}}],
                    "stages": {"ivector_extractor": "more"}})
    assert check_leaks(build_catalogue(cfg), cfg) == []


def test_two_synthesized_corpora_with_the_same_settings_leak():
    cfg = complete({"corpora": [{"name": "again", "source": "demo"}], "stages": {"sid": "again", "pr": "again"}})
    with pytest.raises(ConfigError, match="same settings"):
        check_leaks(build_catalogue(cfg), cfg)
    cfg["corpora"][0]["demo"]["seed"] = 7
    assert check_leaks(build_catalogue(cfg), cfg) == []


def test_pr_is_left_out_with_a_note_for_an_unnamed_corpus_without_transcripts(tmp_path):
    vox = _vox_folder(tmp_path / "vox", {"id10001/yt/00001.wav": b"a"})
    cfg = complete({"corpus": {"source": "voxceleb1", "voxceleb1": vox}})
    c = build_catalogue(cfg)
    assert not c.pr_runs and any("phoneme recognition is left out" in n for n in c.notes)
    assert any("left out" in w for w in check_leaks(c, cfg))
    cfg["stages"]["pr"] = "voxceleb1"  # named: the user asked for it, so it is an error
    with pytest.raises(ConfigError, match="needs transcripts"):
        build_catalogue(cfg)


def test_a_missing_corpus_path_is_named_before_any_job(tmp_path):
    d = _ls_folder(tmp_path, "dev-clean")
    with pytest.raises(ConfigError, match=f"corpus 'vox': {tmp_path}/nope does not exist") as exc:
        cat(corpus={"source": "librispeech", "librispeech": {"split_dir": str(d)}},
            corpora=[{"name": "vox", "source": "voxceleb1",
                      "voxceleb1": {"root": str(tmp_path / "nope"), "iden_split": "/x", "meta_csv": "/y"}}],
            stages={"sid": "vox", "pr": "librispeech"})
    assert exc.value.key == "corpora.0.voxceleb1.root"
    # a configured corpus that no stage uses is not read
    c = cat(corpora=[{"name": "vox", "source": "voxceleb1",
                      "voxceleb1": {"root": str(tmp_path / "nope"), "iden_split": "/x", "meta_csv": "/y"}}])
    assert c.used == ["demo", "demo_eval"]


# ------------------------------------------------------------------------------------------- devices
def test_model_jobs_ask_for_a_gpu_with_cuda_and_with_auto_on_real_speech(tmp_path):
    from speaker_neurons.costs import model_jobs_want_gpu

    demo = cat()
    assert not model_jobs_want_gpu(demo, "auto") and not model_jobs_want_gpu(demo, "cpu")
    assert model_jobs_want_gpu(demo, "cuda")
    d = _ls_folder(tmp_path, "dev-clean")
    real = build_catalogue(complete({"corpus": {"source": "librispeech", "librispeech": {"split_dir": str(d)}}}))
    assert model_jobs_want_gpu(real, "auto") and model_jobs_want_gpu(real, "cuda")
    assert not model_jobs_want_gpu(real, "cpu")


def test_models_over_real_speech_on_the_cpu_are_said_with_the_hours(tmp_path):
    from speaker_neurons.costs import cpu_warning
    from speaker_neurons.costs import BASE, CPU_GFLOPS_PER_THREAD

    d = _ls_folder(tmp_path, "dev-clean", speakers=("11",), utts=1, payload=b"\0" * int(32000 * 0.55 * 3600))
    (d / "11" / "100" / "extra.wav").write_bytes(b"\0" * 32000 * 1800)  # half an hour of 16 kHz int16
    real = build_catalogue(complete({"corpus": {"source": "librispeech", "librispeech": {"split_dir": str(d)}}}))
    note = cpu_warning(real, "cpu", threads=2, n_models=3)
    assert "about 1.5 h of audio" in note, note  # 1 h of FLAC at 55% + 0.5 h of WAV; the .txt is not audio
    per_pass = 1.5 * BASE.gflop_per_audio_second / (2 * CPU_GFLOPS_PER_THREAD)
    assert f"about {per_pass:.1f} CPU hours at 2 thread(s)" in note and "3 model(s)" in note
    assert f"about {per_pass / 2:.1f} CPU hours at 4 thread(s)" in cpu_warning(real, "cpu", threads=4, n_models=3)
    assert cpu_warning(real, "auto", threads=2, n_models=3) is None and cpu_warning(real, "cuda", 2, 3) is None
    assert cpu_warning(cat(), "cpu", threads=2, n_models=3) is None  # the demo on a CPU is what it is made for


def test_leak_check_runs_once_per_config_and_folder_state(tmp_path, monkeypatch):
    """checked_catalogue's disk check is cached by the configuration and the corpora's folders: a second
    start reads no audio file; a changed folder or config checks again; a failure is never cached; a job
    (disk_checks false) skips it."""
    from speaker_neurons import leaks as catmod
    from speaker_neurons.catalogue import checked_catalogue

    dev, test = _ls_folder(tmp_path, "dev-clean"), _ls_folder(tmp_path, "test-clean", speakers=("21", "22"))
    (tmp_path / "SPEAKERS.TXT").write_text("".join(f"{s} | F | x | 1 | A\n" for s in ("11", "12", "21", "22")))

    def config():
        return complete({"corpus": {"name": "ana", "source": "librispeech", "librispeech": {"split_dir": str(dev)}},
                         "corpora": [{"name": "ev", "source": "librispeech", "librispeech": {"split_dir": str(test)}}],
                         "stages": {"sid": "ev", "pr": "ev"}})

    calls = []
    real_find = catmod.find_leaks
    monkeypatch.setattr(catmod, "find_leaks", lambda a, e, **kw: calls.append(e.name) or real_find(a, e, **kw))
    cache = tmp_path / "cache"
    checked_catalogue(config(), lambda c: None, cache_dir=cache)
    n = len(calls)
    assert n > 0
    checked_catalogue(config(), lambda c: None, cache_dir=cache)
    assert len(calls) == n  # cached
    checked_catalogue(config(), lambda c: None, disk_checks=False)
    assert len(calls) == n  # a job never checks
    other = config()
    other["sid"]["seeds"] = [5]
    checked_catalogue(other, lambda c: None, cache_dir=cache)
    assert len(calls) > n  # another configuration checks
    n = len(calls)
    # the same audio appears in the evaluation corpus (a new chapter folder): the state changed, and it leaks
    leaked = test / "21" / "200"
    leaked.mkdir()
    (leaked / "21-200-0000.flac").write_bytes((dev / "11" / "100" / "11-100-0000.flac").read_bytes())
    (leaked / "21-200.trans.txt").write_text("21-200-0000 HELLO\n")
    for _ in range(2):  # a failure is not cached: the second start fails again
        with pytest.raises(ConfigError, match="the same audio as"):
            checked_catalogue(config(), lambda c: None, cache_dir=cache)
    assert len(calls) > n + 1
    assert len(list(cache.glob("checks-*.json"))) == 2


def test_an_iterative_chain_is_evaluated_every_kth_step_and_at_its_end():
    c = cat(prune={"iterative": {"enabled": True, "strategies": ["l1"], "rows_per_step": 128, "final_width": 384,
                                 "evaluate_every": 2}})
    steps = {n: m for n, m in c.models.items() if m.source == "iterative"}
    assert [m.index for m in steps.values()] == [1, 2, 3, 4, 5]  # 1024 -> 384 by 128
    assert [m.evaluated for m in steps.values()] == [False, True, False, True, True]  # every 2nd, and the last
    assert set(c.analysed) >= set(steps)  # the next step needs every step's neuron sets
    assert all(m.evaluated for m in c.models.values() if m.source != "iterative")


def test_continued_and_iterative_chains_may_start_from_a_released_melhubert(tmp_path):
    ckpt, ms = tmp_path / "melhubert.ckpt", tmp_path / "mean_std.npy"
    ckpt.write_bytes(b"")
    ms.write_bytes(b"")
    released = {"name": "rel", "kind": "melhubert", "path": str(ckpt), "mean_std": str(ms)}
    c = cat(models=[released], prune={"strategies": ["l1"], "targets": ["protected_size"], "continue": {"steps": 3},
                                      "iterative": {"enabled": True, "strategies": ["l1"], "rows_per_step": 512,
                                                    "final_width": 2048, "start_width": 3072}})
    assert [n for n, m in c.models.items() if m.source == "iterative"] == ["rel-l1-iter1", "rel-l1-iter2"]
    assert c.models["rel-l1-pset-cpt"].root == "rel" and c.teacher_of("rel-l1-pset-cpt") == "rel"
    assert c.head_of("rel-l1-pset") is None  # no trained head in the chain yet: continued training starts a new one
    assert c.teacher_of("rel-l1-iter1") == "rel" and c.head_of("rel-l1-iter1") == "rel-l1-iter1"
    assert cat().teacher_of("melhubert_demo") is None  # a root pre-trained here brings its own targets
    with pytest.raises(ConfigError, match="prune.iterative.start_width"):
        cat(models=[released], prune={"iterative": {"enabled": True}})
    with pytest.raises(ConfigError, match="continued pre-training trains a MelHuBERT"):
        cat(models=[{"name": "w2v", "kind": "wav2vec2", "path": str(ckpt)}], prune={"continue": {"steps": 3}})


def test_pr_enabled_false_leaves_phoneme_recognition_out():
    assert cat().pr_runs and "demo_eval" in cat().used
    off = cat(pr={"enabled": False})
    assert not off.pr_runs
