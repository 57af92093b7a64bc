# Config validation, paths and input functions shared by every stage.
from snakemake.exceptions import WorkflowError
from snakemake.utils import validate


def _config_error(exc):
    """Turn snakemake's schema error into one line that names the offending key."""
    import jsonschema

    err = next(
        (a for a in exc.args if isinstance(a, jsonschema.ValidationError)), None
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
