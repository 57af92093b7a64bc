"""The workflow as users meet it: dry run, lint, formatting, config validation.

Tests that start Snakemake are marked `slow`. Every config that must stop before any job is checked
in this process through `catalogue.checked_catalogue`, the one function rules/common.smk calls; the
configs whose stop needs Snakemake itself (its DAG, its wiring of that function) get a `snakemake -n`
process of their own, started side by side by one fixture."""

from __future__ import annotations

import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from conftest import ROOT, run_snakemake

SCHEMA = str(ROOT / "speaker_neurons" / "config.schema.yaml")
slow = pytest.mark.slow


BAD_CONFIGS = [
    ("corpus: {source: librivox}", "Invalid configuration at key 'corpus.source'"),
    ("qc: {max_bad_fraction: 2}", "Invalid configuration at key 'qc.max_bad_fraction'"),
    ("qc: {min_duration: short}", "Invalid configuration at key 'qc.min_duration'"),
    ("analysis: {k_ssl: 3}", "Invalid configuration at key 'analysis.k_ssl'"),
    ("analysis: {topfraction: 0.01}", "Invalid configuration at key 'analysis'"),
    ("ivector: {ubm_component: 8}", "Invalid configuration at key 'ivector'"),
    ("ivector: {cmn: global}", "Invalid configuration at key 'ivector.cmn'"),
    ("pretrain: {train: {max_step: 10}}", "Invalid configuration at key 'pretrain.train'"),
    ("pretrain: {model: {frame_period: 30}}", "Invalid configuration at key 'pretrain.model.frame_period'"),
    ("models: [{name: 1x, source: pretrain}]", "Invalid configuration at key 'models.0.name'"),
    ("models: [{name: rel, kind: melhubert, path: CKPT}]", "set 'mean_std'"),
    ("models: [{name: rel, kind: melhubert, format: melhubert, path: CKPT}]", "set 'mean_std'"),
    ("models: [{name: a, source: pretrain}, {name: a, source: pretrain}]", "name 'a' is listed twice"),
    ("models: [{name: h, kind: hubert}]", "source checkpoint needs 'path'"),
    ("upstream: {kind: hubert, path: /models/hubert.pt}", "Invalid configuration at key 'upstream.kind'"),
    ("models: [{name: p, source: pretrain}]\npretrain: {train: {kmeans_centers: /nonexistent/c.npy}}",
     "Invalid configuration at key 'pretrain.train.kmeans_centers': /nonexistent/c.npy does not exist"),
    # the shipped centres are 500 x 80; the defaults are 100 clusters of a 20 ms model (40 mels x 2)
    ("models: [{name: p, source: pretrain}]\npretrain: {train: {kmeans_centers: ROOT/models/melhubert_demo/kmeans_centers.npy}}",
     "holds centres of shape (500, 80), the model needs (n_clusters, n_mels x frame_period / 10) = (100, 80)"),
]
# configs that must stop before any job, checked by Snakemake itself, each written under its own folder:
# a schema error and a catalogue error (the Snakefile's wiring of checked_catalogue) and a missing input
# (Snakemake's DAG)
STOPPING = {
    "schema": "corpus: {source: librivox}",
    "librispeech_without_paths": "corpus: {source: librispeech}",
    "missing_checkpoint": "models: [{name: hub, kind: hubert, path: DIR/nope/hubert_base.pt}]",
    "misspelt_resources": "resources: {pool_layer: {mem_mb: 1000}}",
}


def _stop_in_process(override: str, tmp_path: Path) -> str:
    """The ConfigError's message for config.yaml overlaid with `override` (as Snakemake overlays a
    --configfile), checked as rules/common.smk checks it; fails when the config passes."""
    import yaml
    from snakemake.utils import update_config, validate

    from speaker_neurons.catalogue import ConfigError, checked_catalogue

    ckpt = tmp_path / "melhubert.ckpt"  # a released MelHuBERT file (not read by the checks)
    ckpt.write_bytes(b"")
    config = yaml.safe_load((ROOT / "config.yaml").read_text())
    update_config(config, yaml.safe_load(override.replace("CKPT", str(ckpt)).replace("ROOT", str(ROOT))))
    with pytest.raises(ConfigError) as err:
        checked_catalogue(config, lambda c: validate(c, SCHEMA))
    return str(err.value)


@pytest.fixture(scope="module")
def stopping_dry_runs(tmp_path_factory):
    """{case: (its folder, the CompletedProcess of `snakemake -n --configfile <its config>`)} for every
    config of STOPPING: one process per config, side by side (each process is mostly Snakemake's
    single-threaded start-up, so they share 2 CPUs well)."""
    base = tmp_path_factory.mktemp("stopping")

    def run(case):
        d = base / case
        d.mkdir()
        cfg = d / "c.yaml"
        cfg.write_text(f"results: {d}/results\n{STOPPING[case].replace('DIR', str(d))}\n")
        return case, (d, run_snakemake("-n", "--configfile", str(cfg)))

    with ThreadPoolExecutor(max_workers=len(STOPPING)) as pool:
        return dict(pool.map(run, STOPPING))


@slow
def test_dry_run_default_config_is_clean(tmp_path):
    res = run_snakemake("-n", "--config", f"results={tmp_path}/results")
    assert res.returncode == 0, res.stdout + res.stderr
    out = res.stdout + res.stderr
    for rule in ("synthesize_demo_corpus", "audio_qc", "activation_stats", "neuron_sets", "evidence_report"):
        assert rule in out, f"rule {rule} missing from the dry run"
    assert "rule pretrain_melhubert" not in out  # the demo starts from the shipped model


@slow
def test_lint_is_clean():
    res = run_snakemake("--lint")
    out = res.stdout + res.stderr
    assert res.returncode == 0, out
    assert "Lints for" not in out, out


def test_rules_are_snakefmt_formatted():
    snakefmt = shutil.which("snakefmt", path=str(Path(sys.executable).parent))
    if snakefmt is None:
        pytest.skip("snakefmt is not installed in this environment (make test installs it)")
    files = ["Snakefile", *sorted(str(p.relative_to(ROOT)) for p in (ROOT / "rules").glob("*.smk"))]
    res = subprocess.run([snakefmt, "--check", *files], cwd=ROOT, capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr


@pytest.mark.parametrize("override, message", BAD_CONFIGS)
def test_bad_config_stops_before_any_job_naming_the_key(override, message, tmp_path):
    out = _stop_in_process(override, tmp_path)
    assert message in out, out
    if override.startswith("upstream"):  # the old single-model key points to its replacement
        assert "models: [{name:" in out


@slow
def test_the_workflow_stops_on_a_bad_config_before_any_job(stopping_dry_runs):
    """The Snakefile runs the checks above before it plans: the error names the key, no job is planned
    and nothing is written."""
    d, res = stopping_dry_runs["schema"]
    out = res.stdout + res.stderr
    assert res.returncode != 0 and "Invalid configuration at key 'corpus.source'" in out, out
    assert "config.schema.yaml" in out and "Job stats" not in out and not (d / "results").exists()


def test_resources_of_an_unknown_rule_stop_the_run_naming_it():
    from speaker_neurons.config import check_resource_rules

    rules = ["pool_layers", "sid_eval", "pr_eval"]
    check_resource_rules({"pool_layers": {"mem_mb": 1000}, "pr_eval": {"runtime": 5}}, rules)
    check_resource_rules({}, rules)
    with pytest.raises(ValueError, match=r"key 'resources.pool_layer'.*did you mean pool_layers"):
        check_resource_rules({"pool_layers": {}, "pool_layer": {"mem_mb": 1000}}, rules)
    with pytest.raises(ValueError, match="no rule is called 'gpu_jobs'"):
        check_resource_rules({"gpu_jobs": {}}, rules)


@slow
def test_a_misspelt_rule_under_resources_stops_the_workflow_before_any_job(stopping_dry_runs):
    """The Snakefile checks the names under `resources` against its rules once every rule is included."""
    d, res = stopping_dry_runs["misspelt_resources"]
    out = res.stdout + res.stderr
    assert res.returncode != 0 and "Invalid configuration at key 'resources.pool_layer'" in out, out
    assert "did you mean pool_layers" in out and "Job stats" not in out and not (d / "results").exists()


def _planned(tmp_path, config_text: str) -> str:
    """The output of `snakemake -n` with config.yaml overlaid by `config_text` (results under tmp_path);
    fails when the plan does."""
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"results: {tmp_path}/r\n{config_text}")
    res = run_snakemake("-n", "--configfile", str(cfg))
    out = res.stdout + res.stderr
    assert res.returncode == 0, out[-3000:]
    return out


@slow
def test_the_ivector_extractor_trains_on_the_corpus_its_stage_names(tmp_path):
    """stages.ivector_extractor: rule ivectors reads that corpus' manifest (made by the usual corpus rules),
    beside the analysis corpus'; without the key it reads the analysis corpus' alone."""
    import re

    def ivectors_inputs(out: str) -> str:
        block = out[out.index("rule ivectors:"):]
        return re.search(r"input: ([^\n]*)", block).group(1)

    extra = ("corpora:\n  - {name: more, source: demo, demo: {seed: 7, n_speakers: 8, utterances_per_speaker: 6}}\n"
             "stages: {ivector_extractor: more}\n")
    out = _planned(tmp_path, extra)
    assert "corpora/more/manifest.tsv" in ivectors_inputs(out) and "corpora/demo/manifest.tsv" in ivectors_inputs(out)
    assert "wildcards: corpus=more" in out  # synthesized and listed like any corpus
    (tmp_path / "plain").mkdir()
    plain = _planned(tmp_path / "plain", "")
    assert "corpora/more" not in plain and "corpora/demo/manifest.tsv" in ivectors_inputs(plain)


@slow
@pytest.mark.parametrize("pruned", [False, True])
def test_pr_of_pruned_models_follows_its_key(tmp_path, pruned):
    """pr.pruned_models: false (the 10-minute demo) scores PR on the config's model only, its erase ablation
    still decoding with its heads; true (the full grid) on every pruned model and the control too."""
    out = _planned(tmp_path, f"pr: {{pruned_models: {str(pruned).lower()}}}\n")
    jobs = [blk.split("wildcards: model=", 1)[1].split("\n", 1)[0] for blk in out.split("rule pr_eval:")[1:]]
    derived = ["melhubert_demo-l1-keep0.3", "melhubert_demo-protected-keep0.3", "melhubert_demo-random-keep0.3",
               "melhubert_demo-noffn"]
    assert sorted(jobs) == sorted(["melhubert_demo"] + (derived if pruned else []))
    erase = out.split("rule erase_ablation:", 1)[1].split("\nrule ", 1)[0]
    assert "pr/demo_eval/heads.safetensors" in erase


@slow
def test_a_chain_from_a_released_melhubert_plans_its_teacher_targets(tmp_path):
    (tmp_path / "m.ckpt").write_bytes(b"")
    (tmp_path / "ms.npy").write_bytes(b"")
    out = _planned(tmp_path, f"models: [{{name: rel, kind: melhubert, path: {tmp_path}/m.ckpt, mean_std: "
                             f"{tmp_path}/ms.npy}}]\nprune: {{strategies: [l1], targets: [protected_size], "
                             "continue: {steps: 3}}\n")
    teacher = out.split("rule teacher_targets:", 1)[1].split("\nrule ", 1)[0]
    assert f"{tmp_path}/m.ckpt" in teacher and "models/rel/pretrain/kmeans_centers.npy" in teacher
    cont = out.split("rule continue_pretraining:", 1)[1].split("\nrule ", 1)[0]
    assert f"{tmp_path}/m.ckpt" in cont and "models/rel/pretrain/kmeans_centers.npy" in cont
    assert "head.pt" not in cont.split("output:", 1)[0]  # a new head: no head among its inputs


def test_schema_fills_defaults_for_keys_left_out():
    from snakemake.utils import validate

    config: dict = {}
    validate(config, SCHEMA)
    assert config["corpus"]["source"] == "demo"
    assert config["qc"] == {"min_duration": 0.5, "max_bad_fraction": 0.05, "sample_rate": 16000, "keep_truncated": False,
                            "silence_peak": 1e-6}
    assert config["analysis"]["k_ssl"] == [3] and config["analysis"]["rho"] == 0.8
    assert config["analysis"]["top_fraction"] == 0.01 and config["analysis"]["k_ivector"] == 2


def test_config_yaml_matches_schema_defaults():
    """config.yaml is the embedded demo: every value it sets is the schema's default (the one place
    where defaults live), so the two cannot silently diverge."""
    import yaml
    from snakemake.utils import validate

    defaults: dict = {}
    validate(defaults, SCHEMA)
    shipped = yaml.safe_load((ROOT / "config.yaml").read_text())
    validate(shipped, SCHEMA)
    # the one deliberate difference: the demo starts from the shipped model, the schema's default pre-trains
    assert shipped.pop("models") == [{"name": "melhubert_demo", "kind": "melhubert", "source": "checkpoint",
                                      "path": "models/melhubert_demo/model", "format": "native", "mean_std": ""}]
    assert defaults.pop("models")[0]["source"] == "pretrain"
    # the other deliberate differences: what the 10-minute demo evaluates; configs/demo-full.yaml puts
    # back exactly the schema's defaults for them
    trimmed = {("prune", "targets"): [0.3], ("prune", "protected_sets"): ["ivector_cluster"],
               ("sid", "layer_sets"): ["all", "hidden_0"], ("pr", "pruned_models"): False,
               ("pr", "learning_rates"): [0.01], ("erase", "random_seeds"): [0]}
    full = yaml.safe_load((ROOT / "configs/demo-full.yaml").read_text())
    assert full.pop("results") != shipped["results"]
    for (section, key), value in trimmed.items():
        assert shipped[section].pop(key) == value
        assert full[section].pop(key) == defaults[section].pop(key)
    # and what the demo model needs, which the full grid keeps: the SID schedule its heads reach their
    # optimum with, and the evaluation corpus' test utterances
    for section, key, value in [("sid", "learning_rates", [0.003, 0.001, 0.0003, 0.0001]), ("sid", "epochs", 100),
                                ("sid", "batch_size", 128), ("sid", "eval_every", 100)]:
        assert shipped[section].pop(key) == value and key not in full.get(section, {})
        defaults[section].pop(key)
    assert shipped["upstream"].pop("threads") == 1 and "threads" not in full.get("upstream", {})
    defaults["upstream"].pop("threads")
    assert shipped["corpus"]["demo"].pop("eval_corpus") == {"utterances_per_speaker": 26, "split": [16, 4, 6]}
    defaults["corpus"]["demo"].pop("eval_corpus")
    assert all(not rest for rest in full.values())
    assert shipped == defaults


def test_package_defaults_come_from_the_schema():
    """The package reads its defaults from the schema; a key the schema does not list is an error."""
    import yaml

    from speaker_neurons import config
    from speaker_neurons.analysis.ivector import DEFAULT_IVECTOR_CONFIG
    from speaker_neurons.models.melhubert import MELHUBERT_DEFAULTS
    from speaker_neurons.pretrain import DEFAULT_TRAIN_CONFIG, DEMO_MODEL_CONFIG

    props = yaml.safe_load(Path(SCHEMA).read_text())["properties"]
    iv = props["ivector"]["properties"]
    assert DEFAULT_IVECTOR_CONFIG == {k: iv[k]["default"] for k in iv if k != "kaldi_ivectors"}
    train = props["pretrain"]["properties"]["train"]["properties"]
    assert DEFAULT_TRAIN_CONFIG == {k: v["default"] for k, v in train.items()}
    model = props["pretrain"]["properties"]["model"]["properties"]
    assert DEMO_MODEL_CONFIG == {k: v["default"] for k, v in model.items()}
    assert set(model) <= set(MELHUBERT_DEFAULTS)  # every schema key is one the model accepts
    with pytest.raises(ValueError, match="max_step"):
        config.resolve("pretrain.train", {"max_step": 3})


def test_the_package_lists_are_the_schema_enums():
    """A name list the package defines (with what each name means) is the one the schema allows."""
    from speaker_neurons import heads, pruning
    from speaker_neurons.analysis.neuron_sets import SET_NAMES
    from speaker_neurons.config import choices
    from speaker_neurons.data.recipes import RECIPES

    assert SET_NAMES == choices("prune.protected_sets[]") and set(choices("erase.sets[]")) <= set(SET_NAMES)
    assert heads.LAYER_SETS == choices("sid.layer_sets[]")
    assert pruning.STRATEGIES == choices("prune.strategies[]")
    assert set(RECIPES) == set(choices("corpus.source"))


@slow
def test_non_demo_source_without_paths_names_the_missing_key(stopping_dry_runs, tmp_path):
    d, res = stopping_dry_runs["librispeech_without_paths"]  # corpus: {source: librispeech}, no paths
    out = res.stdout + res.stderr
    assert res.returncode != 0
    assert "Invalid configuration at key 'corpus.librispeech.split_dir'" in out and "names no folder" in out, out
    assert "Job stats" not in out and not (d / "results").exists()
    assert "'corpus.librispeech.split_dir'" in _stop_in_process(STOPPING["librispeech_without_paths"], tmp_path)


def _broken_corpus(root: Path, n_good: int = 12) -> Path:
    """A generic-TSV corpus: good files plus one of each kind of broken file."""
    import numpy as np
    import soundfile as sf

    rng = np.random.default_rng(0)
    rows = []
    for i in range(n_good):
        p = root / f"good{i:02d}.wav"
        sf.write(p, 0.1 * rng.standard_normal(16000 + 800 * i).astype(np.float32), 16000, subtype="PCM_16")
        rows.append((p.name, f"s{i % 3}"))
    (root / "notaudio.wav").write_text("this is text, not audio\n")
    sf.write(root / "empty.wav", np.zeros(0, dtype=np.float32), 16000)
    sf.write(root / "short.wav", 0.1 * rng.standard_normal(3200).astype(np.float32), 16000, subtype="PCM_16")
    nan = 0.1 * rng.standard_normal(16000).astype(np.float32)
    nan[100] = np.nan
    sf.write(root / "nan.wav", nan, 16000, subtype="FLOAT")
    sf.write(root / "silent.wav", np.zeros(16000, dtype=np.float32), 16000, subtype="PCM_16")
    rows += [(n, "s9") for n in ("notaudio.wav", "empty.wav", "short.wav", "nan.wav", "silent.wav")]
    tsv = root / "corpus.tsv"
    tsv.write_text("path\tspeaker\n" + "".join(f"{p}\t{s}\n" for p, s in rows))
    return tsv


@slow
def test_broken_files_are_reported_and_the_rest_goes_on(tmp_path):
    tsv = _broken_corpus(tmp_path)
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"results: {tmp_path}/r\ncorpus: {{source: tsv, tsv: {{path: {tsv}}}}}\nqc: {{max_bad_fraction: 0.5}}\n")
    res = run_snakemake("--cores", "1", "--configfile", str(cfg), "--", f"{tmp_path}/r/corpora/tsv/manifest.tsv")
    assert res.returncode == 0, res.stdout + res.stderr
    import pandas as pd

    report = pd.read_csv(tmp_path / "r" / "corpora" / "tsv" / "qc.tsv", sep="\t")
    reasons = {Path(p).name: r.split()[0].rstrip(":") for p, r in zip(report["path"], report["reason"])}
    assert set(reasons) == {"notaudio.wav", "empty.wav", "short.wav", "nan.wav", "silent.wav"}
    assert reasons["short.wav"].startswith("too_short") and reasons["silent.wav"].startswith("silent")
    kept = pd.read_csv(tmp_path / "r" / "corpora" / "tsv" / "manifest.tsv", sep="\t")
    assert len(kept) == 12 and all(Path(p).name.startswith("good") for p in kept["path"])


@slow
def test_too_many_broken_files_stop_the_run_naming_the_report(tmp_path):
    tsv = _broken_corpus(tmp_path)
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"results: {tmp_path}/r\ncorpus: {{source: tsv, tsv: {{path: {tsv}}}}}\n")
    res = run_snakemake("--cores", "1", "--configfile", str(cfg), "--", f"{tmp_path}/r/corpora/tsv/manifest.tsv")
    assert res.returncode != 0
    log = (tmp_path / "r" / "logs" / "corpora" / "tsv" / "audio_qc.log").read_text()
    assert "qc.tsv" in log and not (tmp_path / "r" / "corpora" / "tsv" / "manifest.tsv").exists()


@slow
def test_missing_checkpoint_is_named_before_any_job(stopping_dry_runs):
    d, res = stopping_dry_runs["missing_checkpoint"]  # models: [{name: hub, kind: hubert, path: <d>/nope/...}]
    out = res.stdout + res.stderr
    assert res.returncode != 0 and f"{d}/nope/hubert_base.pt" in out and "Missing input" in out


@slow
def test_two_models_plan_side_by_side(tmp_path):
    """Each listed model gets its own analysis jobs under results/models/<name>/, and a cross-model
    table joins them; with prune.analyse a pruned model is analysed and joined like its parent (the
    no-FFN control never is)."""
    native = tmp_path / "w2v"
    native.mkdir()
    (native / "config.json").write_text("{}")
    (native / "model.safetensors").write_bytes(b"")
    out = _planned(tmp_path, "analysis: {k_ssl: [3, 5]}\nmodels: [{name: demo, kind: melhubert, source: pretrain}, "
                             f"{{name: w2v, kind: wav2vec2, path: {native}, format: native}}]\n"
                             "prune: {parents: [demo], strategies: [protected], targets: [protected_size], analyse: true}\n")
    for model in ("demo", "w2v", "demo-protected-pset"):
        for k in (3, 5):
            assert f"{tmp_path}/r/models/{model}/analysis/ssl_k{k}/activation_counts.npz" in out
    assert f"{tmp_path}/r/models/demo-noffn/sid/" in out and f"{tmp_path}/r/models/demo-noffn/analysis" not in out
    compare = out.split("rule compare_models:", 1)[1].split("rule ", 1)[0]
    assert f"{tmp_path}/r/models/demo-protected-pset/analysis/neuron_counts.tsv" in compare
    assert "compare_models" in out and f"{tmp_path}/r/comparison/models.tsv" in out
    assert out.count("rule pretrain_melhubert:") == 1  # only the pretrain entry is trained
    assert f"input: {native}" in out  # the checkpoint entry is read where it lies
