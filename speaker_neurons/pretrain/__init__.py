"""MelHuBERT pre-training by masked prediction (METHOD §7), in three parts:

* `data`: features and k-means targets (`prepare_training_data`);
* `masking`: HuBERT span masking;
* `loop`: the training loop for a given model, new or continued from a checkpoint.

`pretrain_melhubert` builds a fresh MelHuBERT and runs the three; `continue_pretraining` trains a
given model (a pruned one, any per-layer widths) with its parent's targets. Options and defaults: the
`pretrain.train` section of the config schema (`speaker_neurons.config`). `second_iteration` is HuBERT's
second iteration: a new model trained on targets from k-means of a first model's hidden states
(docs/METHOD.md, section 7).
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
    *,
    device: str | torch.device,
    log: logging.Logger | str | os.PathLike | None = None,
    threads: int | None = None,
    return_model: bool = False,
    on_step: Callable[[int], None] | None = None,
    resume_from: str | os.PathLike | None = None,
    target_paths: Mapping[str, str] | None = None,
    data_dir: str | os.PathLike | None = None,
    centers: np.ndarray | None = None,
):
    """Pre-train a new MelHuBERT (first iteration) on the manifest's training rows; returns the summary.
    `target_paths` ({utt_id: clean audio}): denoising targets (`prepare_training_data`). `centers`: label
    the frames with these k-means centres instead of fitting them (`pretrain.train.kmeans_centers`). `data_dir`: the
    folder of the file-backed features and targets (`prepare_training_data`'s `work_dir`; None: a
    temporary folder removed after the run).

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
    data = prepare_training_data(manifest_path, model, cfg, fit_stats=True, threads=torch.get_num_threads(),
                                 target_paths=dict(target_paths) if target_paths is not None else None,
                                 work_dir=data_dir, centers=centers)
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
    *,
    device: str | torch.device,
    log: logging.Logger | str | os.PathLike | None = None,
    threads: int | None = None,
    on_step: Callable[[int], None] | None = None,
    resume_from: str | os.PathLike | None = None,
    parent_sha256: str | None = None,
    target_paths: Mapping[str, str] | None = None,
    teacher=None,
    teacher_layer: int | None = None,
    data_dir: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """Continue masked-prediction training of a given MelHuBERT (any per-layer FFN widths, its own
    feature statistics) on the targets of `centers` (its parent's k-means centres), with `head` (its
    parent's, or a new one when None). `parent_sha256` goes into the saved model's config.json.

    With `teacher` (a released MelHuBERT at the root of the chain, which brings no targets of its own):
    `centers` are k-means centres of the teacher's hidden states at `teacher_layer` (`teacher_centers`),
    and every frame's target is the centre nearest to the teacher's hidden state of that frame, as in
    HuBERT's later iterations. `data_dir`: as for `pretrain_melhubert`."""
    t0 = time.monotonic()
    log, dev = _setup(log, threads, device)
    cfg = resolve("pretrain.train", train_config)
    outputs = outputs if isinstance(outputs, TrainOutputs) else TrainOutputs.under(outputs)
    if teacher is None:
        data = prepare_training_data(manifest_path, model, cfg, fit_stats=False, centers=centers,
                                     target_paths=dict(target_paths) if target_paths is not None else None,
                                     work_dir=data_dir)
    else:
        data = _teacher_data(manifest_path, model, cfg, teacher, teacher_layer, centers, data_dir)
    return train_masked_prediction(model, data, cfg, outputs, dev, head=head, resume_from=resume_from, log=log,
                                   on_step=on_step, t0=t0, extra_summary={"manifest": str(manifest_path)},
                                   parent_sha256=parent_sha256)


def _teacher_layer(teacher, layer: int | None) -> int:
    from speaker_neurons.analysis.features import default_feature_layer

    return default_feature_layer(teacher.num_layers) if layer is None else int(layer)


def _teacher_data(manifest_path, model, cfg, teacher, layer, centers, data_dir=None) -> TrainingData:
    """The student's input features and, as targets, the nearest of `centers` to the teacher's hidden
    state at `layer` of every frame (the student's normalised features are the teacher's: a pruned copy
    keeps its root's feature statistics), streamed from the store in `data_dir` (`pretrain.teacher`)."""
    from speaker_neurons.pretrain.data import prepare_features
    from speaker_neurons.pretrain.teacher import teacher_training_data

    inputs = prepare_features(manifest_path, model, cfg, fit_stats=False, work_dir=data_dir)
    return teacher_training_data(inputs, teacher, _teacher_layer(teacher, layer), cfg, centers)


def teacher_centers(teacher, manifest_path, train_config: Mapping, layer: int | None, threads: int | None,
                    out_centers, out_record, work_dir: str | os.PathLike | None = None) -> dict[str, Any]:
    """k-means centres (`pretrain.train` n_clusters and kmeans_* keys) of a released MelHuBERT's hidden
    states at `layer` (None: round(0.75 L)) over the training rows of the manifest: the targets of
    continued or iterative pruning from a checkpoint the workflow did not pre-train. Writes the centres
    (.npy) and a record (JSON). The features and hidden states are streamed through a store
    (`pretrain.teacher`) in `work_dir` (the workflow: the job's resume folder, reused when a killed job starts
    again and removed on success; None: a temporary folder)."""
    from speaker_neurons.pretrain.data import prepare_features
    from speaker_neurons.pretrain.store import remove
    from speaker_neurons.pretrain.teacher import teacher_kmeans
    from speaker_neurons.utils import write_json

    cfg = resolve("pretrain.train", train_config)
    inputs = prepare_features(manifest_path, teacher, cfg, fit_stats=False, work_dir=work_dir)
    layer = _teacher_layer(teacher, layer)
    centers, km = teacher_kmeans(inputs, teacher, layer, cfg, threads=threads)
    np.save(out_centers, np.asarray(centers, dtype=np.float32))
    record = {"teacher_layer": layer, "n_clusters": int(centers.shape[0]), "dim": int(centers.shape[1]),
              "utterances": len(inputs.feats), **km}
    write_json(out_record, record)
    if work_dir is not None:
        remove(work_dir, "teacher-target store")
    return record


def second_iteration(
    teacher,
    manifest_path: str | os.PathLike,
    outputs: TrainOutputs | str | os.PathLike,
    layer: int | None = None,
    model_config: Mapping | None = None,
    train_config: Mapping | None = None,
    *,
    device: str | torch.device,
    log: logging.Logger | str | os.PathLike | None = None,
    threads: int | None = None,
    data_dir: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """HuBERT's second iteration: a new MelHuBERT (same seed and architecture keys) trained by masked
    prediction of the k-means clusters of `teacher`'s hidden states at `layer` (None: round(0.75 L),
    as for the SSL clusters). The teacher's feature statistics are the new model's. The features, the
    teacher's hidden states and the targets are streamed from a store (`pretrain.teacher`) in `data_dir`
    (None: a temporary folder removed after the run)."""
    from speaker_neurons.models.melhubert import MelHuBERT
    from speaker_neurons.pretrain.data import prepare_features
    from speaker_neurons.pretrain.teacher import teacher_training_data

    t0 = time.monotonic()
    log, dev = _setup(log, threads, device)
    cfg = resolve("pretrain.train", train_config)
    outputs = outputs if isinstance(outputs, TrainOutputs) else TrainOutputs.under(outputs)
    layer = _teacher_layer(teacher, layer)
    teacher = teacher.to("cpu").eval()
    torch.manual_seed(int(cfg["seed"]))
    model = MelHuBERT(resolve("pretrain.model", model_config))
    model.set_feature_stats(teacher.feature_mean.cpu().numpy(), teacher.feature_std.cpu().numpy())
    inputs = prepare_features(manifest_path, model, cfg, fit_stats=False, work_dir=data_dir)
    data = teacher_training_data(inputs, teacher, layer, cfg, None, threads=torch.get_num_threads())
    log.info("second iteration: %d targets from layer %d of the teacher, unigram entropy %.3f nats",
             data.n_clusters, layer, data.unigram_entropy)
    return train_masked_prediction(model, data, cfg, outputs, dev, log=log, t0=t0,
                                   extra_summary={"manifest": str(manifest_path), "iteration": 2,
                                                  "teacher_layer": layer})


__all__ = ["DEFAULT_TRAIN_CONFIG", "DEMO_MODEL_CONFIG", "TrainOutputs", "TrainingData", "continue_pretraining",
           "load_head", "pretrain_melhubert", "prepare_training_data", "second_iteration",
           "teacher_centers", "train_masked_prediction"]


# ------------------------------------------------------------------------------------------- for the workflow
def target_paths(train_config: Mapping, corpus_dir: str | os.PathLike | None) -> dict[str, str] | None:
    """The clean copies the targets come from (`targets_audio: clean`: the demo corpus' channels.tsv), else None."""
    from speaker_neurons.pretrain.data import clean_audio_paths

    if train_config["targets_audio"] != "clean":
        return None
    if corpus_dir is None:
        raise ValueError("pretrain.train.targets_audio: clean needs the synthesized corpus' folder as an input")
    return clean_audio_paths(corpus_dir)


def pretrain_resumable(manifest_path, outputs: Mapping[str, Any], model_config: Mapping, train_config: Mapping,
                       scratch, device, threads: int, corpus_dir=None, centers_path=None) -> dict[str, Any]:
    """`pretrain_melhubert` into a rule's named outputs, resumable (`loop.run_resumable`, checkpoints and the
    training data store in `scratch` until it succeeds); `centers_path`: given k-means centres (.npy)."""
    from speaker_neurons.pretrain.loop import data_dir, run_resumable

    targets = target_paths(train_config, corpus_dir)
    centers = None if centers_path is None else np.load(centers_path)
    return run_resumable(lambda outs, resume_from: pretrain_melhubert(
        manifest_path, outs, model_config=model_config, train_config=train_config, device=device, threads=threads,
        resume_from=resume_from, target_paths=targets, data_dir=data_dir(scratch), centers=centers),
        TrainOutputs.of(outputs), scratch)


def continue_resumable(model, manifest_path, outputs: Mapping[str, Any], centers_path, head_path,
                       train_config: Mapping, scratch, device, threads: int, parent_sha256: str | None,
                       corpus_dir=None, teacher=None, teacher_layer: int | None = None) -> dict[str, Any]:
    """`continue_pretraining` of `model` on the root's k-means centres (`centers_path`) from the head at
    `head_path` (None: a new head), into a rule's named outputs, resumable like pre-training; with
    `teacher` (a released root) the targets come from its hidden states at `teacher_layer`."""
    from speaker_neurons.pretrain.loop import data_dir, run_resumable

    centers = np.load(centers_path)
    targets = None if teacher is not None else target_paths(train_config, corpus_dir)
    summary = run_resumable(lambda outs, resume_from: continue_pretraining(  # a fresh head for each start
        model, manifest_path, outs, centers, train_config=train_config,
        head=load_head(head_path) if head_path else None, device=device, threads=threads,
        parent_sha256=parent_sha256, resume_from=resume_from, target_paths=targets, teacher=teacher,
        teacher_layer=teacher_layer, data_dir=data_dir(scratch)), TrainOutputs.of(outputs), scratch)
    get_logger("pretrain").info("continued for %d steps: loss %.3f -> %.3f", summary["steps"],
                                summary.get("first_loss") or float("nan"), summary.get("last_loss") or float("nan"))
    return summary
