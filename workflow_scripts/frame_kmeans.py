from pathlib import Path

from speaker_neurons.pipeline import frame_clusters
from speaker_neurons.utils import setup_logging

setup_logging(snakemake.log[0])
frame_clusters(
    snakemake.input.feature_dir,
    snakemake.input.manifest,
    int(snakemake.wildcards.k),
    Path(snakemake.output.labels).parent,
    max_frames=snakemake.params.max_frames,
    seed=snakemake.params.seed,
)
