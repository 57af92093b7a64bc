from speaker_neurons.pipeline import utterance_clusters
from speaker_neurons.utils import setup_logging

setup_logging(snakemake.log[0])
utterance_clusters(snakemake.input.scp, snakemake.output.clusters, k=snakemake.params.k, seed=snakemake.params.seed)
