from pathlib import Path

from speaker_neurons.pipeline import evidence_report
from speaker_neurons.utils import setup_logging

setup_logging(snakemake.log[0])
evidence_report(
    snakemake.input.manifest,
    snakemake.input.labels,
    snakemake.input.clusters,
    Path(snakemake.output.summary).parent,
    snakemake.input.feature_dir,
    corpus_dir=snakemake.input.get("corpus"),
)
