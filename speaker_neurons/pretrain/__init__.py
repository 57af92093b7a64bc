"""MelHuBERT pre-training by masked prediction (SPEC section 7), in three parts:

* `data`: features and k-means targets (`prepare_training_data`);
* `masking`: HuBERT span masking;
* `loop`: the training loop for a given model, new or continued from a checkpoint.

`pretrain_melhubert` builds a fresh MelHuBERT and runs the three; `continue_pretraining` trains a
given model (a pruned one, any per-layer widths) with its parent's targets. Options and defaults: the
`pretrain.train` section of the config schema (`speaker_neurons.config`). A second HuBERT iteration
(re-clustering a model's hidden states) is out of scope; `speaker_neurons.kmeans` takes any features.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any, Callable, Mapping

import numpy as np
import torch

from speaker_neurons.config import defaults, resolve
from speaker_neurons.pretrain.data import TrainingData, prepare_training_data
from speaker_neurons.pretrain.loop import TrainOutputs, load_head, train_masked_prediction
from speaker_neurons.utils import get_logger, setup_logging

#: The training options and their defaults (the schema's `pretrain.train` section).
DEFAULT_TRAIN_CONFIG: dict[str, Any] = defaults("pretrain.train")
#: The demo MelHuBERT (the schema's `pretrain.model` section): 4 x 256, FFN 1024, 20 ms frames.
DEMO_MODEL_CONFIG: dict[str, Any] = defaults("pretrain.model")


def _setup(log, threads, device):
    from speaker_neurons.models import resolve_device

    if log is None:
        log = get_logger("pretrain")
    elif not isinstance(log, logging.Logger):
        log = setup_logging(log)
    if threads:
        torch.set_num_threads(int(threads))
    return log, resolve_device(device)


def pretrain_melhubert(
    manifest_path: str | os.PathLike,
    outputs: TrainOutputs | str | os.PathLike,
    model_config: Mapping | None = None,
    train_config: Mapping | None = None,
    device: str | torch.device = "auto",
    log: logging.Logger | str | os.PathLike | None = None,
    threads: int | None = None,
    return_model: bool = False,
    on_step: Callable[[int], None] | None = None,
    resume_from: str | os.PathLike | None = None,
):
    """Pre-train a new MelHuBERT (first iteration) on the manifest's training rows; returns the summary.

    `outputs`: a `TrainOutputs` (every path named) or a folder for the conventional layout.
    `model_config`: `MelHuBERT` keys (keys left out take the demo model's values, `DEMO_MODEL_CONFIG`);
    `train_config`: keys of `DEFAULT_TRAIN_CONFIG`; unknown keys raise. `return_model`: return (summary, model, head).
    """
    from speaker_neurons.models.melhubert import MelHuBERT

    t0 = time.monotonic()
    log, dev = _setup(log, threads, device)
    cfg = resolve("pretrain.train", train_config)
    outputs = outputs if isinstance(outputs, TrainOutputs) else TrainOutputs.under(outputs)
    torch.manual_seed(int(cfg["seed"]))
    model = MelHuBERT(resolve("pretrain.model", model_config))
    log.info("pre-training a new MelHuBERT on %s -> %s (device %s, %d threads)", manifest_path, outputs.model_dir, dev,
             torch.get_num_threads())
    data = prepare_training_data(manifest_path, model, cfg, fit_stats=True, threads=torch.get_num_threads())
    log.info("features and targets ready after %.1f s", time.monotonic() - t0)
    summary = train_masked_prediction(model, data, cfg, outputs, dev, resume_from=resume_from, log=log,
                                      on_step=on_step, t0=t0, extra_summary={"manifest": str(manifest_path)})
    if return_model:
        return summary, model, load_head(outputs.head)
    return summary


def continue_pretraining(
    model,
    manifest_path: str | os.PathLike,
    outputs: TrainOutputs | str | os.PathLike,
    centers: np.ndarray,
    train_config: Mapping | None = None,
    head: torch.nn.Linear | None = None,
    device: str | torch.device = "auto",
    log: logging.Logger | str | os.PathLike | None = None,
    threads: int | None = None,
    on_step: Callable[[int], None] | None = None,
    resume_from: str | os.PathLike | None = None,
    parent_sha256: str | None = None,
) -> dict[str, Any]:
    """Continue masked-prediction training of a given MelHuBERT (any per-layer FFN widths, its own
    feature statistics) on the targets of `centers` (its parent's k-means centres), with `head` (its
    parent's, or a new one when None). `parent_sha256` goes into the saved model's config.json."""
    t0 = time.monotonic()
    log, dev = _setup(log, threads, device)
    cfg = resolve("pretrain.train", train_config)
    outputs = outputs if isinstance(outputs, TrainOutputs) else TrainOutputs.under(outputs)
    data = prepare_training_data(manifest_path, model, cfg, fit_stats=False, centers=centers)
    return train_masked_prediction(model, data, cfg, outputs, dev, head=head, resume_from=resume_from, log=log,
                                   on_step=on_step, t0=t0, extra_summary={"manifest": str(manifest_path)},
                                   parent_sha256=parent_sha256)


__all__ = ["DEFAULT_TRAIN_CONFIG", "DEMO_MODEL_CONFIG", "TrainOutputs", "TrainingData", "continue_pretraining",
           "load_head", "pretrain_melhubert", "prepare_training_data", "train_masked_prediction"]
