# Config validation, the model dimension, paths and input functions shared by every stage.
import re
from pathlib import Path

from snakemake.exceptions import WorkflowError
from snakemake.utils import validate

SCHEMA = str(Path(workflow.basedir) / "speaker_neurons" / "config.schema.yaml")


def _config_error(exc):
    """Turn snakemake's schema error into one line that names the offending key."""
    import jsonschema

    candidates = [*exc.args, exc.__cause__, exc.__context__]
    err = next(
        (a for a in candidates if isinstance(a, jsonschema.ValidationError)), None
    )
    if err is None:
        return str(exc)
    key = ".".join(str(p) for p in err.absolute_path) or "<top level>"
    return (
        f"Invalid configuration at key '{key}': {err.message}. "
        "Allowed keys, types and defaults: speaker_neurons/config.schema.yaml"
    )


_old_upstream = {"kind", "path", "format"} & set(config.get("upstream") or {})
if _old_upstream:
    raise WorkflowError(
        f"Invalid configuration at key 'upstream.{sorted(_old_upstream)[0]}': a model is now an entry of "
        "'models', e.g. models: [{name: hubert_base, kind: hubert, path: /models/hubert_base_ls960.pt}]; "
        "'upstream' keeps only 'device'."
    )
try:
    validate(config, SCHEMA)
except WorkflowError as exc:
    raise WorkflowError(_config_error(exc)) from None

RESULTS = config["results"].rstrip("/")
LOGS = f"{RESULTS}/logs"
BENCH = f"{RESULTS}/benchmarks"
MANIFEST = f"{RESULTS}/manifest/manifest.tsv"
IVECTORS = f"{RESULTS}/ivectors"
COMPARISON = f"{RESULTS}/comparison"
K_SSL = config["analysis"]["k_ssl"]
NEURON_SETS = [
    "ssl_cluster",
    "ivector_cluster",
    "union",
    "unconditioned",
    "per_cluster",
    "ssl_cluster_tested",
    "ivector_cluster_tested",
]


# ---------------------------------------------------------------------------------- models
# A model is a name and a folder: results/models/<name>/. Its weights are the checkpoint at `path`
# (source: checkpoint) or a native folder results/models/<name>/model that one rule writes
# (source: pretrain; later sources such as pruning add one rule each, restricted to their names).
def _check_models(entries):
    names = [m["name"] for m in entries]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise WorkflowError(
            f"Invalid configuration at key 'models': name {dupes[0]!r} is listed twice."
        )
    for m in entries:
        where = f"Invalid configuration at key 'models' (entry {m['name']!r})"
        if m["source"] == "checkpoint" and not m["path"]:
            raise WorkflowError(
                f"{where}: source checkpoint needs 'path' (or use source: pretrain)."
            )
        if m["source"] == "pretrain" and m["kind"] not in ("melhubert", "auto"):
            raise WorkflowError(
                f"{where}: the workflow pre-trains MelHuBERT only, not {m['kind']!r}."
            )
        if m["source"] == "pretrain" and (m["path"] or m["mean_std"]):
            raise WorkflowError(
                f"{where}: a pre-trained model is made by the workflow (section 'pretrain'); "
                "'path' and 'mean_std' belong to source: checkpoint."
            )
        released = m["format"] == "melhubert" or (
            m["kind"] == "melhubert"
            and m["source"] == "checkpoint"
            and m["path"]
            and Path(m["path"]).is_file()
        )
        if released and not m["mean_std"]:
            raise WorkflowError(
                f"{where}: a released MelHuBERT checkpoint ({m['path']}) stores no fbank "
                "normalisation; set 'mean_std' to its mean-std.npy in this entry. Without it "
                "every feature would be silently wrong."
            )
    return {m["name"]: m for m in entries}


def _target_tag(target):
    return "pset" if target == "protected_size" else f"keep{float(target):g}"


def _pruned_models(models):
    """One derived model per (parent, strategy, target) of config `prune`."""
    pr = config["prune"]
    parents = list(models) if pr["parents"] is None else pr["parents"]
    for parent in parents:
        if parent not in models:
            raise WorkflowError(
                f"Invalid configuration at key 'prune.parents': {parent!r} is not the name of an "
                f"entry of 'models' ({', '.join(models)})."
            )
    k = pr["k_ssl"] if pr["k_ssl"] is not None else K_SSL[0]
    if k not in K_SSL:
        raise WorkflowError(
            f"Invalid configuration at key 'prune.k_ssl': {k} is not one of analysis.k_ssl {K_SSL}."
        )
    out = {}
    for parent in parents:
        for strategy in pr["strategies"]:
            for target in pr["targets"]:
                name = f"{parent}-{strategy}-{_target_tag(target)}"
                if name in models:
                    raise WorkflowError(
                        f"Invalid configuration at key 'models': {name!r} is the name of a pruned model."
                    )
                out[name] = {
                    "name": name,
                    "kind": "auto",
                    "source": "prune",
                    "path": "",
                    "format": "native",
                    "mean_std": "",
                    "parent": parent,
                    "strategy": strategy,
                    "target": target,
                    "k_ssl": k,
                }
    return out


if config["erase"]["enabled"] and not config["sid"]["enabled"]:
    raise WorkflowError(
        "Invalid configuration at key 'erase.enabled': the erase ablation scores erased models with the "
        "SID heads of the unerased one; set sid.enabled: true, or erase.enabled: false."
    )
SETS_K = config["prune"]["k_ssl"] if config["prune"]["k_ssl"] is not None else K_SSL[0]


def _root_of(models, name):
    """The model at the root of `name`'s chain of derived models (itself for a model of the config)."""
    while models[name].get("parent"):
        name = models[name]["parent"]
    return name


def _pretrained_root(models, name, key):
    """The model at the root of `name`'s chain, which must be pre-trained by the workflow (its targets
    and head continue training)."""
    root = _root_of(models, name)
    if models[root]["source"] != "pretrain":
        raise WorkflowError(
            f"Invalid configuration at key '{key}': continued pre-training needs the targets and head of a model "
            f"pre-trained by the workflow, but {name!r} comes from {root!r} (source {models[root]['source']}). "
            f"Set {key} off for it, or prune a model with source: pretrain."
        )
    return root


def _continued_models(models):
    """<pruned>-cpt for every one-shot pruned model when prune.continue.steps > 0."""
    if config["prune"]["continue"]["steps"] == 0:
        return {}
    out = {}
    for name, m in models.items():
        if m["source"] != "prune" or m.get("control"):
            continue
        root = _pretrained_root(models, name, "prune.continue.steps")
        out[f"{name}-cpt"] = {
            **m,
            "name": f"{name}-cpt",
            "source": "continue",
            "parent": name,
            "root": root,
            "target": f"{m['target']}+cpt",
        }
    return out


def _iterative_models(models):
    """<parent>-<strategy>-iter<i>, i = 1..n, for every parent and strategy of prune.iterative."""
    it = config["prune"]["iterative"]
    if not it["enabled"]:
        return {}
    from speaker_neurons.pruning import iterative_steps

    pr = config["prune"]
    if pr["protected_file"] and "protected" in it["strategies"]:
        raise WorkflowError(
            "Invalid configuration at key 'prune.protected_file': iterative pruning recomputes the protected "
            "set on every step's model (prune.protected_sets); a fixed file would name the wrong neurons "
            "after the first step."
        )
    parents = (
        [m["name"] for m in config["models"]]
        if pr["parents"] is None
        else pr["parents"]
    )
    out = {}
    for parent in parents:
        _pretrained_root(models, parent, "prune.iterative.enabled")
        width = config["pretrain"]["model"]["ffn_dim"]
        n = iterative_steps(width, it["rows_per_step"], it["final_width"])
        for strategy in it["strategies"]:
            prev = parent
            for i in range(1, n + 1):
                name = f"{parent}-{strategy}-iter{i}"
                out[name] = {
                    "name": name,
                    "kind": "auto",
                    "source": "iterative",
                    "path": "",
                    "format": "native",
                    "mean_std": "",
                    "parent": prev,
                    "root": parent,
                    "strategy": strategy,
                    "target": f"iter{i}",
                    "index": i,
                    "k_ssl": SETS_K,
                }
                prev = name
    return out


def _control_models(models):
    """<model>-noffn for every model of the config (controls.enabled): every FFN neuron removed but a
    seeded random remainder of controls.ffn_keep, evaluated like any pruned model."""
    c = config["controls"]
    if not (c["enabled"] and config["sid"]["enabled"]):
        return {}
    out = {}
    for parent in [m["name"] for m in config["models"]]:
        name = f"{parent}-noffn"
        if name in models:
            raise WorkflowError(
                f"Invalid configuration at key 'models': {name!r} is the name of a control model."
            )
        out[name] = {
            "name": name,
            "kind": "auto",
            "source": "prune",
            "path": "",
            "format": "native",
            "mean_std": "",
            "parent": parent,
            "strategy": "random",
            "target": c["ffn_keep"],
            "k_ssl": None,
            "control": True,
        }
    return out


MODELS = _check_models(config["models"])
MODELS.update(_pruned_models(MODELS))
MODELS.update(_control_models(MODELS))
MODELS.update(_continued_models(MODELS))
MODELS.update(_iterative_models(MODELS))
MODEL_NAMES = list(MODELS)
PRETRAINED = [n for n, m in MODELS.items() if m["source"] == "pretrain"]
PRUNED = [n for n, m in MODELS.items() if m["source"] == "prune"]
CONTINUED = [n for n, m in MODELS.items() if m["source"] == "continue"]
ITERATIVE = [n for n, m in MODELS.items() if m["source"] == "iterative"]
# one-shot pruned and continued models are analysed on request; iterative steps always (their sets
# make the next step)
ANALYSED = [
    n
    for n in MODEL_NAMES
    if not MODELS[n].get("control")
    and (MODELS[n]["source"] not in ("prune", "continue") or config["prune"]["analyse"])
]


def model_dir(name):
    return f"{RESULTS}/models/{name}"


def model_path(name):
    """Where the model's weights are: the user's checkpoint, or the folder a rule writes."""
    m = MODELS[name]
    return m["path"] if m["source"] == "checkpoint" else f"{model_dir(name)}/model"


def upstream_spec(name):
    """The dict speaker_neurons.models.load_upstream builds the model from."""
    m = MODELS[name]
    if m["source"] == "checkpoint":
        spec = {"kind": m["kind"], "path": m["path"], "format": m["format"]}
        if m["mean_std"]:
            spec["mean_std"] = m["mean_std"]
        return spec
    kind = "melhubert" if m["source"] == "pretrain" else "auto"
    return {"kind": kind, "path": model_path(name), "format": "native"}


def model_input(wildcards):
    """The model's weights (and statistics) are inputs of every rule that runs it."""
    m = MODELS[wildcards.model]
    out = {"model": model_path(wildcards.model)}
    if m["source"] == "checkpoint" and m["mean_std"]:
        out["mean_std"] = m["mean_std"]
    return out


def model_params(wildcards):
    return upstream_spec(wildcards.model)


def name_regex(names):
    return "|".join(re.escape(n) for n in names) if names else "^$"


def prune_inputs(wildcards):
    """The parent's weights and the neuron sets that make the protected set."""
    m = MODELS[wildcards.model]
    pr = config["prune"]
    if m.get("control"):  # a random remainder: no protected set
        sets = []
    elif pr["protected_file"]:
        sets = [pr["protected_file"]]
    else:
        base = f"{analysis_dir(m['parent'])}/ssl_k{m['k_ssl']}/neurons"
        sets = [f"{base}/{s}.json" for s in pr["protected_sets"]]
    return {"parent": model_path(m["parent"]), "protected": sets}


def prune_params(wildcards):
    m = MODELS[wildcards.model]
    return {
        "parent": m["parent"],
        "parent_spec": upstream_spec(m["parent"]),
        "strategy": m["strategy"],
        "target": m["target"],
        "seed": (
            config["controls"]["seed"] if m.get("control") else config["prune"]["seed"]
        ),
        "k_ssl": m["k_ssl"],
    }


def head_of(name):
    """The prediction head that continues `name`'s training: its own if it was trained, else its parent's."""
    m = MODELS[name]
    if m["source"] in ("pretrain", "continue", "iterative"):
        return f"{model_dir(name)}/pretrain/head.pt"
    return head_of(m["parent"])


def train_inputs(wildcards):
    """Continued pre-training: the parent's weights, the root's targets, the head to continue, the corpus."""
    m = MODELS[wildcards.model]
    out = {
        "parent": model_path(m["parent"]),
        "centers": f"{model_dir(m['root'])}/pretrain/kmeans_centers.npy",
        "head": head_of(m["parent"]),
        "manifest": MANIFEST,
        **target_audio_input(wildcards),
    }
    if m["source"] == "iterative":
        base = f"{analysis_dir(m['parent'])}/ssl_k{m['k_ssl']}/neurons"
        out["protected"] = [
            f"{base}/{s}.json" for s in config["prune"]["protected_sets"]
        ]
    return out


def train_config(section):
    """pretrain.train with the steps, rate and warm-up of prune.continue or prune.iterative."""
    c = config["prune"][section]
    steps = c["steps"] if section == "continue" else c["steps_between"]
    return {
        **config["pretrain"]["train"],
        "max_steps": steps,
        "lr": c["lr"],
        "warmup_steps": c["warmup_steps"],
    }


def continue_params(wildcards):
    m = MODELS[wildcards.model]
    return {"parent": m["parent"], "parent_spec": upstream_spec(m["parent"])}


def iterative_params(wildcards):
    m = MODELS[wildcards.model]
    it = config["prune"]["iterative"]
    return {
        "parent": m["parent"],
        "parent_spec": upstream_spec(m["parent"]),
        "strategy": m["strategy"],
        "index": m["index"],
        "rows_per_step": it["rows_per_step"],
        "final_width": it["final_width"],
        "seed": config["prune"]["seed"],
        "k_ssl": m["k_ssl"],
    }


# ---------------------------------------------------------------------------------- resources
def res(rule, key, default):
    """A rule's resource (mem_mb, runtime in minutes): config resources.<rule>.<key>, else its default."""
    return config["resources"].get(rule, {}).get(key, default)


# A GPU for the rules that run a model, only when upstream.device asks for CUDA (gpu=0 asks for none).
GPU = 1 if config["upstream"]["device"] == "cuda" else 0
GPU_MODEL = config["upstream"]["gpu_model"] if GPU else ""


# ---------------------------------------------------------------------------------- corpus
def corpus_kwargs():
    """Keyword arguments of speaker_neurons.data.manifest.build_manifest for the chosen source."""
    source = config["corpus"]["source"]
    if source == "demo":
        return {"source": "demo", "corpus_dir": f"{RESULTS}/corpus/demo"}
    kwargs = {"source": source, **config["corpus"][source]}
    missing = [k for k, v in kwargs.items() if v == "" and k != "speakers_txt"]
    if missing:
        raise WorkflowError(
            f"corpus.source is '{source}' but corpus.{source}.{missing[0]} is empty: "
            f"set it in config.yaml (or with --config)."
        )
    return kwargs


_HAS_CLEAN = (
    config["corpus"]["source"] == "demo"
    and config["corpus"]["demo"]["channel"]["enabled"]
    and config["corpus"]["demo"]["channel"]["keep_clean"]
)
if (
    config["pretrain"]["train"]["targets_audio"] == "auto"
):  # resolved here, so every rule sees one value
    config["pretrain"]["train"]["targets_audio"] = "clean" if _HAS_CLEAN else "input"
if config["pretrain"]["train"]["targets_audio"] == "clean" and not _HAS_CLEAN:
    raise WorkflowError(
        "Invalid configuration at key 'pretrain.train.targets_audio': clean takes the targets from the clean "
        "copy of every utterance, which only the demo corpus with its channels has (corpus.source: demo, "
        "corpus.demo.channel.enabled and keep_clean: true); use targets_audio: input for this corpus."
    )


def target_audio_input(wildcards):
    """The corpus whose clean copies make the targets (pretrain.train.targets_audio: clean)."""
    if config["pretrain"]["train"]["targets_audio"] == "clean":
        return {"corpus": f"{RESULTS}/corpus/demo"}
    return {}


def demo_corpus_input(wildcards):
    """The synthesized corpus is an input only for the demo (it also has frame phone classes)."""
    if config["corpus"]["source"] == "demo":
        return {"corpus": f"{RESULTS}/corpus/demo"}
    return {}


def ivector_scp():
    """i-vectors made by the workflow, or the user's own Kaldi i-vectors (ark or scp)."""
    return config["ivector"]["kaldi_ivectors"] or f"{IVECTORS}/ivectors.scp"


def ivector_other_seeds():
    """The i-vectors of the extractors trained with other seeds (stability check); none for the user's own."""
    return (
        [] if config["ivector"]["kaldi_ivectors"] else f"{IVECTORS}/extractor_seeds.npz"
    )


def sid_inputs(wildcards):
    """With sid.sweep: base, a derived model's SID uses the learning rates picked for its chain's root."""
    root = _root_of(MODELS, wildcards.model)
    if config["sid"]["sweep"] == "base" and root != wildcards.model:
        return {"lr_from": f"{analysis_dir(root)}/sid/sid.json"}
    return {}


def sid_lr_from(wildcards):
    return _root_of(MODELS, wildcards.model) if sid_inputs(wildcards) else ""


# ---------------------------------------------------------------------------------- targets
def analysis_dir(name):
    return f"{model_dir(name)}/analysis"


def analysed(name):
    """Every model gets the label-free analysis; one-shot pruned and continued ones only with prune.analyse."""
    return name in ANALYSED


def model_outputs(name):
    base = analysis_dir(name)
    outs = [f"{base}/neuron_counts.tsv"] if analysed(name) else []
    if config["sid"]["enabled"]:
        outs.append(f"{base}/sid/sid.json")
    if config["erase"]["enabled"] and MODELS[name]["source"] in (
        "pretrain",
        "checkpoint",
    ):
        outs.append(f"{base}/ssl_k{SETS_K}/erase/erase.json")
    if analysed(name):
        outs += [f"{base}/ssl_k{k}/report/evidence.json" for k in K_SSL]
    return outs


def all_outputs():
    outs = [MANIFEST, f"{RESULTS}/qc/qc.tsv", f"{IVECTORS}/clusters.tsv"]
    if not config["ivector"]["kaldi_ivectors"]:
        outs.append(f"{IVECTORS}/quality.json")
    for name in MODEL_NAMES:
        outs += model_outputs(name)
    if len(ANALYSED) > 1:
        outs.append(f"{COMPARISON}/models.tsv")
    outs.append(f"{RESULTS}/summary.md")
    return outs


# ---------------------------------------------------------------------------------- summary and report
def summary_models():
    """Per model, what the summary reads (paths of this run; None where the run makes none)."""
    out = []
    for name, m in MODELS.items():
        base = analysis_dir(name)
        out.append(
            {
                "name": name,
                "source": m["source"],
                "parent": m.get("parent"),
                "strategy": "control" if m.get("control") else m.get("strategy"),
                "target": m.get("target"),
                "sid": f"{base}/sid/sid.json" if config["sid"]["enabled"] else None,
                "prune": (
                    f"{model_dir(name)}/prune.json"
                    if m["source"] in ("prune", "iterative")
                    else (
                        f"{model_dir(m['parent'])}/prune.json"
                        if m["source"] == "continue"
                        else None
                    )
                ),
                "neuron_counts": (
                    f"{base}/neuron_counts.tsv" if analysed(name) else None
                ),
                "erase": (
                    f"{base}/ssl_k{SETS_K}/erase/erase.json"
                    if config["erase"]["enabled"]
                    and m["source"] in ("pretrain", "checkpoint")
                    else None
                ),
                "pretrain": (
                    f"{model_dir(name)}/pretrain/summary.json"
                    if m["source"] in ("pretrain", "continue", "iterative")
                    else None
                ),
            }
        )
    return out


def summary_inputs(wildcards):
    files = [
        p
        for m in summary_models()
        for k, p in m.items()
        if k in ("sid", "prune", "neuron_counts", "erase", "pretrain") and p
    ]
    out = {
        "models": files,
        "purity": f"{IVECTORS}/gender_purity.tsv",
        "stability": f"{IVECTORS}/cluster_stability.json",
    }
    if not config["ivector"]["kaldi_ivectors"]:
        out["quality"] = f"{IVECTORS}/quality.json"
    return out
