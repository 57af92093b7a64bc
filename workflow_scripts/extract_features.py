import torch

from speaker_neurons.pipeline import extract_features
from speaker_neurons.utils import setup_logging

setup_logging(snakemake.log[0])
torch.set_num_threads(snakemake.threads)
extract_features(
    snakemake.input.manifest,
    snakemake.params.upstream,
    snakemake.output.feature_dir,
    feature_layer=snakemake.params.feature_layer,
    device=snakemake.config["upstream"]["device"],
    max_batch_seconds=snakemake.params.max_batch_seconds,
)
