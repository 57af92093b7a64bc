"""Rule `pretrain_melhubert`: pre-train a MelHuBERT (first iteration) on the manifest's training rows.

input: manifest; output: model_dir (= <out_dir>/model); params: model, train, device; log; threads.
"""

from pathlib import Path

from speaker_neurons.models.pretrain import pretrain_melhubert
from speaker_neurons.utils import setup_logging, write_provenance

sm = snakemake  # noqa: F821
log = setup_logging(sm.log[0])
pretrain_melhubert(
    sm.input.manifest,
    Path(sm.output.model_dir).parent,
    model_config=dict(sm.params.get("model") or {}),
    train_config=dict(sm.params.get("train") or {}),
    device=sm.params.get("device") or "auto",
    log=log,
    threads=sm.threads,
)
write_provenance(Path(Path(sm.output.model_dir).parent) / "provenance", sm.config, list(sm.input), name="pretrain_melhubert")
