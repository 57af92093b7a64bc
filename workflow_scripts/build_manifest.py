"""Snakemake adapter: build the corpus manifest (see speaker_neurons.data.manifest.build_manifest).

params.corpus: {source: demo|librispeech|voxceleb1|tsv, <that builder's arguments>}.
"""
# ruff: noqa: F821  (`snakemake` is injected by Snakemake's `script:` directive)

from pathlib import Path

from speaker_neurons.data.manifest import build_manifest, write_manifest
from speaker_neurons.utils import setup_logging, write_provenance

setup_logging(snakemake.log[0])
df = build_manifest(**dict(snakemake.params.corpus))
write_manifest(df, snakemake.output.manifest)
write_provenance(Path(Path(snakemake.output.manifest).parent) / "provenance", snakemake.config, list(snakemake.input), name="build_manifest")
