# Config validation, paths and input functions shared by every stage.
from snakemake.exceptions import WorkflowError
from snakemake.utils import validate


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
        "Allowed keys, types and defaults: schemas/config.schema.yaml"
    )


try:
    validate(config, "../schemas/config.schema.yaml")
except WorkflowError as exc:
    raise WorkflowError(_config_error(exc)) from None

RESULTS = config["results"].rstrip("/")
LOGS = f"{RESULTS}/logs"
BENCH = f"{RESULTS}/benchmarks"


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


def manifest_inputs(wildcards):
    """The raw manifest depends on the synthesized corpus only for the demo."""
    if config["corpus"]["source"] == "demo":
        return {"corpus": f"{RESULTS}/corpus/demo"}
    return {}


def qc_outputs():
    return [f"{RESULTS}/manifest/manifest.tsv", f"{RESULTS}/qc/qc.tsv"]


NEURON_SETS = [
    "ssl_cluster",
    "ivector_cluster",
    "union",
    "unconditioned",
    "per_cluster",
]
DEMO_MODEL = f"{RESULTS}/upstream/melhubert_demo/model"


def upstream_spec():
    """The config entry that speaker_neurons.models.load_upstream builds the model from."""
    up = config["upstream"]
    path = up["path"] or DEMO_MODEL
    fmt = up["format"] if up["path"] else "native"
    return {"kind": up["kind"], "path": path, "format": fmt}


def model_inputs(wildcards):
    """The model file is an input of the rules that run it (a missing one is named up front)."""
    return {"model": config["upstream"]["path"] or DEMO_MODEL}


def ivector_scp():
    """i-vectors made by the workflow, or the user's own Kaldi i-vectors (ark or scp)."""
    return (
        config["ivector"]["kaldi_ivectors"]
        or f"{RESULTS}/analysis/ivectors/ivectors.scp"
    )


def frame_classes_input(wildcards):
    """Phone classes per frame exist for the demo corpus (MBROLA voices) only."""
    if config["corpus"]["source"] == "demo":
        return {"corpus": f"{RESULTS}/corpus/demo"}
    return {}


def analysis_outputs():
    outs = []
    for k in config["analysis"]["k_ssl"]:
        base = f"{RESULTS}/analysis/ssl_k{k}"
        outs += [f"{base}/neuron_counts.tsv", f"{base}/report/evidence.json"]
    outs.append(f"{RESULTS}/analysis/neuron_counts.tsv")
    if not config["ivector"]["kaldi_ivectors"]:
        outs.append(f"{RESULTS}/analysis/ivectors/quality.json")
    return outs
