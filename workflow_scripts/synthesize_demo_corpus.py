"""Snakemake adapter: synthesize the demo corpus (see speaker_neurons.data.synth.synthesize_corpus).

params.demo: {seed, n_speakers, utterances_per_speaker, min_duration, max_duration, split}.
"""
# ruff: noqa: F821  (`snakemake` is injected by Snakemake's `script:` directive)

from pathlib import Path

from speaker_neurons.data.synth import synthesize_corpus
from speaker_neurons.utils import setup_logging, write_provenance

setup_logging(snakemake.log[0])
synthesize_corpus(snakemake.output.corpus_dir, **dict(snakemake.params.demo), workers=snakemake.threads)
write_provenance(Path(snakemake.output.corpus_dir) / "provenance", snakemake.config, list(snakemake.input), name="synthesize_demo_corpus")
