# speaker-neurons: label-free speaker neurons in self-supervised speech Transformers.
# Stages live in rules/*.smk; every algorithm lives in the speaker_neurons package.
from snakemake.utils import min_version

from speaker_neurons.config import check_resource_rules

min_version("9.0")


configfile: "config.yaml"


include: "rules/common.smk"


wildcard_constraints:
    model=name_regex(MODEL_NAMES),
    corpus=name_regex(USED_CORPORA),
    k=r"\d+",


include: "rules/corpus.smk"
include: "rules/models.smk"
include: "rules/ivectors.smk"
include: "rules/analysis.smk"
include: "rules/pr.smk"
include: "rules/report.smk"


# a rule named under `resources` that does not exist is a typo: stop before any job, naming it
try:
    check_resource_rules(config["resources"], [r.name for r in workflow.rules])
except ValueError as exc:
    raise WorkflowError(str(exc)) from None


rule all:
    input:
        all_outputs(),
    default_target: True
