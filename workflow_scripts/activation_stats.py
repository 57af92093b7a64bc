import torch

from speaker_neurons.pipeline import activation_stats
from speaker_neurons.utils import setup_logging

setup_logging(snakemake.log[0])
torch.set_num_threads(snakemake.threads)
activation_stats(
    snakemake.input.manifest,
    snakemake.params.upstream,
    snakemake.input.labels,
    snakemake.input.clusters,
    snakemake.output.counts,
    k_ssl=int(snakemake.wildcards.k),
    k_ivector=snakemake.params.k_ivector,
    top_fraction=snakemake.params.top_fraction,
    device=snakemake.config["upstream"]["device"],
    max_mismatch=snakemake.params.max_mismatch,
    max_batch_seconds=snakemake.params.max_batch_seconds,
)
