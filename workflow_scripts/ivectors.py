import torch

from speaker_neurons.pipeline import ivectors
from speaker_neurons.utils import setup_logging

setup_logging(snakemake.log[0])
torch.set_num_threads(snakemake.threads)
ivectors(
    snakemake.input.manifest,
    snakemake.output.ark,
    snakemake.output.scp,
    snakemake.output.quality,
    config=snakemake.params.ivector,
    device=snakemake.params.device,
)
