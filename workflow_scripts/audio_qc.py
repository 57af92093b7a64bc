"""Snakemake adapter: audio QC of a manifest (see speaker_neurons.data.qc.run_qc).

params.qc: config `qc` {min_duration, max_bad_fraction, sample_rate}; decoding threads = rule threads.
"""
# ruff: noqa: F821  (`snakemake` is injected by Snakemake's `script:` directive)

from pathlib import Path

from speaker_neurons.data.manifest import read_manifest, write_manifest
from speaker_neurons.data.qc import run_qc
from speaker_neurons.utils import setup_logging, write_provenance

setup_logging(snakemake.log[0])
params = dict(snakemake.params.qc)
if "sample_rate" in params:  # config name of run_qc's target_sr
    params["target_sr"] = params.pop("sample_rate")
params.setdefault("workers", snakemake.threads)
accepted = run_qc(read_manifest(snakemake.input.manifest), snakemake.output.report, **params)
write_manifest(accepted, snakemake.output.manifest)
write_provenance(Path(Path(snakemake.output.report).parent) / "provenance", snakemake.config, list(snakemake.input), name="audio_qc")
