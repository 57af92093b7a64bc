from speaker_neurons.pipeline import neuron_counts_summary
from speaker_neurons.utils import setup_logging

setup_logging(snakemake.log[0])
neuron_counts_summary(dict(zip(snakemake.params.k_ssl, snakemake.input.tables)), snakemake.output.table)
