from pathlib import Path

from speaker_neurons.pipeline import neuron_sets
from speaker_neurons.utils import setup_logging

setup_logging(snakemake.log[0])
neuron_sets(snakemake.input.counts, Path(snakemake.output.table).parent, rho=snakemake.params.rho)
