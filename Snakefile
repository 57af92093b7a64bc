# speaker-neurons: label-free speaker neurons in self-supervised speech Transformers.
# Stages live in rules/*.smk; every algorithm lives in the speaker_neurons package.
import os

from snakemake.utils import min_version

min_version("9.0")


configfile: "config.yaml"


# Jobs import the package from this checkout, with or without `pip install -e .`.
os.environ["PYTHONPATH"] = os.pathsep.join(
    p for p in (workflow.basedir, os.environ.get("PYTHONPATH", "")) if p
)


include: "rules/common.smk"
include: "rules/corpus.smk"
include: "rules/upstream.smk"
include: "rules/analysis.smk"


rule all:
    input:
        qc_outputs(),
        analysis_outputs(),
    default_target: True
