"""The masked-prediction training loop (METHOD §7), for any MelHuBERT: a fresh one, or a given one
with any per-layer FFN widths (a pruned model), started anew or continued from a training checkpoint.

HuBERT span masking of the input frames (masked frames are set to zero through `frame_mask`); a linear
head (d -> n_clusters) on the last layer's output; cross-entropy on the masked frames only. HuBERT
itself projects to a small space and scores cosine similarity to label embeddings with a temperature;
for a single codebook a linear soft-max classifier plays the same role and is what we use. AdamW,
linear warm-up then linear decay to zero at `max_steps`, gradient-norm clipping, batches bounded by
total padded frames, everything seeded (utterance order, crops, masks, dropout).

The run ends by its step count. `max_minutes` is an opt-in wall-clock budget: when it fires, training
stops at a step boundary, the log warns and the summary says `stopped_by: max_minutes`; the model then
depends on the machine's speed. Nothing else reads the clock, so a slow run and a fast run of the same
config write the same model.

A training checkpoint (`state.pt` in `checkpoints/step_<n>/`, beside the encoder and `head.pt`) holds
the optimiser, the step and epoch, the remaining batches of the current epoch and every random
generator's state, so `resume_from` continues the run exactly where that checkpoint was taken.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import time
from contextlib import nullcontext
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from speaker_neurons.batching import length_batches
from speaker_neurons.pretrain.data import TrainingData
from speaker_neurons.pretrain.masking import span_mask
from speaker_neurons.utils import Terminated, fault_point, get_logger, sigterm_checkpoints

DATA_DIR = "data"  # the training data store inside a resumable run's scratch folder
LOG_HEADER = "step\tloss\tmasked_acc\tlr\telapsed_s\tepoch\tmasked_frames\tgrad_norm\n"


def native_bf16() -> bool:
    """Whether this CPU computes bf16 natively (oneDNN's own check: AVX512-BF16 or AMX). Unknown counts
    as no: float32 is never the slow choice."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def _precision(use_amp: bool) -> str:
    return "bf16 autocast" if use_amp else "float32"


def resolve_amp(setting, device: torch.device) -> bool:
    """`pretrain.train.amp` as it runs on `device`: true / false as given; auto = bf16 autocast where the
    hardware computes bf16 natively (CUDA, or a CPU with AVX512-BF16 / AMX), float32 elsewhere."""
    if setting == "auto":
        return device.type == "cuda" or (device.type == "cpu" and native_bf16())
    return bool(setting)


class CheckpointMismatch(ValueError):
    """A checkpoint written by a run of another training config or other targets: it cannot continue this one."""


@dataclass
class TrainOutputs:
    """Every file a training run writes; the caller (a rule) names them."""

    model_dir: Path  # native encoder (with its feature statistics)
    head: Path  # prediction head (torch file)
    summary: Path  # summary.json
    train_log: Path  # one row per step
    loss_curve: Path  # PNG
    kmeans_centers: Path  # the targets' k-means centres (npy)
    checkpoints: Path  # folder of step_<n>/ checkpoints

    @classmethod
    def under(cls, out_dir: str | os.PathLike) -> "TrainOutputs":
        """The conventional layout under one folder (for callers outside the workflow)."""
        d = Path(out_dir)
        return cls(d / "model", d / "head.pt", d / "summary.json", d / "train_log.tsv", d / "loss_curve.png",
                   d / "kmeans_centers.npy", d / "checkpoints")

    @classmethod
    def of(cls, outputs: Mapping[str, Any]) -> "TrainOutputs":
        """From a rule's named outputs (one per field, e.g. `model_dir`, `head`; others are ignored)."""
        return cls(**{f.name: outputs[f.name] for f in fields(cls)})

    def __post_init__(self) -> None:
        for name, value in vars(self).items():
            setattr(self, name, Path(value))


def lr_at(step: int, lr: float, warmup_steps: int, max_steps: int) -> float:
    """Linear warm-up over `warmup_steps` to `lr`, then linear decay to 0 at `max_steps` (step is 1-based)."""
    if warmup_steps > 0 and step <= warmup_steps:
        return lr * step / warmup_steps
    rest = max(1, max_steps - warmup_steps)
    return lr * max(0.0, (max_steps - step) / rest)


def new_head(model, n_clusters: int) -> nn.Linear:
    return nn.Linear(model.hidden_dim, int(n_clusters))


def save_head(head: nn.Linear, path: Path) -> None:
    torch.save({"state_dict": {k: v.detach().cpu() for k, v in head.state_dict().items()},
                "in_features": head.in_features, "n_clusters": head.out_features, "kind": "linear"}, path)


def load_head(path: str | os.PathLike) -> nn.Linear:
    obj = torch.load(path, map_location="cpu", weights_only=True)
    head = nn.Linear(int(obj["in_features"]), int(obj["n_clusters"]))
    head.load_state_dict(obj["state_dict"])
    return head


def _optimizer(params_decay, params_no_decay, cfg) -> torch.optim.Optimizer:
    return torch.optim.AdamW([{"params": params_decay, "weight_decay": float(cfg["weight_decay"])},
                              {"params": params_no_decay, "weight_decay": 0.0}],
                             lr=float(cfg["lr"]), betas=tuple(cfg["betas"]), eps=float(cfg["eps"]))


def _save_checkpoint(ck: Path, model, head, opt, state: dict) -> None:
    from speaker_neurons.models import save_upstream

    tmp = ck.with_name(ck.name + ".partial")
    if tmp.exists():
        shutil.rmtree(tmp)
    model.eval()
    save_upstream(model, tmp)
    model.train()
    save_head(head, tmp / "head.pt")
    torch.save({"optimizer": opt.state_dict(), **state}, tmp / "state.pt")
    if ck.exists():
        shutil.rmtree(ck)
    os.replace(tmp, ck)  # a checkpoint folder exists only once complete
    fault_point("checkpoint")


def rotate_checkpoints(folder: Path, keep: int | None) -> list[str]:
    """Delete all but the newest `keep` complete `step_<n>` checkpoints of `folder` (None: keep all);
    returns the names deleted."""
    if keep is None:
        return []
    done = sorted((p for p in Path(folder).glob("step_*") if p.name[5:].isdigit()), key=lambda p: int(p.name[5:]))
    gone = done[: max(0, len(done) - int(keep))]
    for p in gone:
        shutil.rmtree(p)
    return [p.name for p in gone]


def drop_unscheduled(folder: Path, every: int | None) -> None:
    """Delete the checkpoints of `folder` that are not on the schedule (every `every` steps): those a
    SIGTERM wrote. Called once a scheduled checkpoint or the end follows, so that a run stopped at its time
    limit and resumed keeps the same checkpoints as one that ran through."""
    for p in Path(folder).glob("step_*"):
        if p.name[5:].isdigit() and (not every or int(p.name[5:]) % int(every)):
            shutil.rmtree(p)


def _plot(log_rows: Sequence[tuple], path: Path, title: str, ref_loss: float | None = None) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7.5, 4.5), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    if log_rows:
        steps = np.array([r[0] for r in log_rows])
        loss = np.array([r[1] for r in log_rows])
        acc = np.array([r[2] for r in log_rows])
        w = max(1, min(20, len(steps) // 10))
        kern = np.ones(w) / w
        smooth = lambda y: np.convolve(y, kern, mode="valid")  # noqa: E731
        ax.plot(steps, loss, color="tab:blue", alpha=0.25, lw=0.8)
        ax.plot(steps[w - 1 :], smooth(loss), color="tab:blue", lw=1.6, label=f"loss (mean of {w})")
        if ref_loss is not None:
            ax.axhline(ref_loss, color="tab:gray", ls="--", lw=1, label="target unigram entropy")
        ax2 = ax.twinx()
        ax2.plot(steps[w - 1 :], smooth(acc) * 100, color="tab:orange", lw=1.4, label="masked accuracy")
        ax2.set_ylabel("masked-frame accuracy (%)", color="tab:orange")
        ax2.tick_params(axis="y", colors="tab:orange")
        h1, l1 = ax.get_legend_handles_labels()
        h2, l2 = ax2.get_legend_handles_labels()
        ax.legend(h1 + h2, l1 + l2, loc="upper right", fontsize=8)
    ax.set_xlabel("update step")
    ax.set_ylabel("cross-entropy on masked frames (nats)", color="tab:blue")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)


def _mean(xs: Sequence[float]) -> float | None:
    return float(np.mean(xs)) if len(xs) else None


def _fingerprint(cfg: dict, data: TrainingData) -> str:
    """What a checkpoint must share with the run it continues: the training config (the clock budget
    and display options aside) and the targets."""
    import hashlib

    h = hashlib.sha256()
    keep = {k: v for k, v in cfg.items() if k not in ("max_minutes", "progress", "log_every", "keep_checkpoints")}
    h.update(json.dumps(keep, sort_keys=True, default=str).encode())
    h.update(np.ascontiguousarray(data.centers).tobytes())
    for t in data.target_chunks():  # the bytes of every int64 target in order, read a chunk at a time
        h.update(t.tobytes())
    return h.hexdigest()[:16]


def _batch_tensors(batch, data: TrainingData, lengths, crop, rng, cfg):
    segs = []
    for i in batch:
        n = int(lengths[i])
        s = int(rng.integers(0, n - crop + 1)) if crop and n > crop else 0
        e = s + (min(n, crop) if crop else n)
        segs.append(data.segment(i, s, e))
    blen = torch.tensor([len(x) for x, _ in segs], dtype=torch.long)
    T = int(blen.max())
    x = torch.zeros(len(segs), T, data.dim)
    y = torch.full((len(segs), T), -100, dtype=torch.long)
    for b, (fx, fy) in enumerate(segs):
        x[b, : len(fx)] = fx
        y[b, : len(fy)] = fy
    mask = span_mask(blen, T, mask_prob=float(cfg["mask_prob"]), mask_length=int(cfg["mask_length"]),
                     min_masks=int(cfg["min_masks"]), rng=rng)
    return x, y, mask, blen


def prediction_loss(head: nn.Linear, top: torch.Tensor, y: torch.Tensor, mask: torch.Tensor,
                    unmasked_weight: float = 0.0, amp_ctx=nullcontext) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Masked prediction's loss on the last hidden state `top` (B, T, d) with targets `y` (B, T; -100 at
    padding) and the bool `mask` (B, T): cross-entropy of the masked frames, plus `unmasked_weight` times
    that of the visible (unmasked, unpadded) frames (HuBERT's pred_nomask_weight). Returns (loss, the
    masked frames' logits, their targets)."""
    with amp_ctx():
        logits = head(top[mask]).float()
    tgt = y[mask]
    loss = F.cross_entropy(logits, tgt)
    if unmasked_weight:
        seen = (y >= 0) & ~mask
        if seen.any():
            with amp_ctx():
                seen_logits = head(top[seen]).float()
            loss = loss + unmasked_weight * F.cross_entropy(seen_logits, y[seen])
    return loss, logits, tgt


def train_masked_prediction(
    model,
    data: TrainingData,
    cfg: dict[str, Any],
    outputs: TrainOutputs,
    device: torch.device,
    head: Optional[nn.Linear] = None,
    resume_from: str | os.PathLike | None = None,
    log: logging.Logger | None = None,
    on_step: Callable[[int], None] | None = None,
    t0: float | None = None,
    extra_summary: dict | None = None,
    parent_sha256: str | None = None,
) -> dict[str, Any]:
    """Train `model` (and `head`, a new one when None) by masked prediction of `data.targets` for
    `cfg["max_steps"]` steps; write every file of `outputs`; return the summary.

    `resume_from`: a checkpoint folder of an earlier run of the same config (model, head, optimiser,
    generators and position restored). `on_step(step)`: called after every step (tests slow a run down
    with it). `t0`: monotonic start of the whole call, for the opt-in `max_minutes` budget.
    """
    from tqdm import tqdm

    from speaker_neurons.models import load_native, save_upstream

    log = log or get_logger("pretrain")
    t0 = time.monotonic() if t0 is None else t0
    budget_s = float(cfg["max_minutes"]) * 60 if cfg["max_minutes"] else math.inf
    seed = int(cfg["seed"])
    max_steps = int(cfg["max_steps"])
    unmasked_weight = float(cfg["unmasked_weight"])
    crop = int(cfg["crop_frames"]) if cfg["crop_frames"] else None
    lengths = data.lengths
    batch_lengths = np.minimum(lengths, crop) if crop else lengths

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed + 1)
    step, epoch, pending = 0, 0, []
    log_rows: list[tuple] = []
    if head is None:
        head = new_head(model, data.n_clusters)
    fingerprint = _fingerprint(cfg, data)
    if resume_from is not None:
        ck = Path(resume_from)
        state = torch.load(ck / "state.pt", map_location="cpu", weights_only=False)
        if state.get("fingerprint") != fingerprint:
            raise CheckpointMismatch(f"{ck}: this checkpoint comes from another training config or other targets "
                             f"({state.get('fingerprint')} != {fingerprint}); it cannot continue this run")
        resumed = load_native(ck)
        model.load_state_dict(resumed.state_dict())
        head = load_head(ck / "head.pt")
    model.to(device)
    head.to(device)
    params = list(model.parameters()) + list(head.parameters())
    opt = _optimizer([q for q in params if q.ndim >= 2], [q for q in params if q.ndim < 2], cfg)
    if resume_from is not None:
        opt.load_state_dict(state["optimizer"])
        step, epoch, pending, log_rows = state["step"], state["epoch"], state["pending"], [tuple(r) for r in state["log_rows"]]
        rng.bit_generator.state = state["numpy_rng"]
        torch.set_rng_state(state["torch_rng"])
        if state.get("cuda_rng") is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda_rng"])
        log.info("resumed from %s at step %d (epoch %d)", ck, step, epoch)

    use_amp = resolve_amp(cfg["amp"], device)
    if resume_from is not None and state.get("use_amp") is not None and state["use_amp"] != use_amp:
        # only `auto` can resolve differently (explicit settings are in the fingerprint): a job requeued on a
        # node with other hardware continues in the checkpoint's precision, so the run stays one model
        log.warning("resuming in the checkpoint's precision (%s), not this machine's default (%s)",
                    _precision(state["use_amp"]), _precision(use_amp))
        use_amp = bool(state["use_amp"])
    amp_ctx = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if use_amp else (lambda: torch.autocast(device.type, enabled=False))
    n_params = sum(q.numel() for q in model.parameters())
    if use_amp and device.type == "cpu" and not native_bf16():
        log.warning("pretrain.train.amp is on but this CPU has no native bf16 (torch's CPU capability: %s; no "
                    "AVX512-BF16 or AMX): torch emulates it, far slower than float32 (docs/benchmarks.md, the demo's "
                    "time). Set pretrain.train.amp: auto or false here (a model trained in float32 differs from "
                    "the bf16 one in its last bits, so compare figures, not bytes, across the two)",
                    torch.backends.cpu.get_cpu_capability())
    log.info("model: %d layers, d=%d, FFN widths %s, %.2f M parameters; head %d -> %d; %s (amp: %s)",
             model.num_layers, model.hidden_dim, model.ffn_widths, n_params / 1e6, model.hidden_dim, data.n_clusters,
             _precision(use_amp), cfg["amp"])

    outputs.checkpoints.mkdir(parents=True, exist_ok=True)
    for old in outputs.checkpoints.glob("step_*"):  # stale checkpoints of an earlier run, or past the resumed step
        if resume_from is None or int(old.name.split("_")[1]) > step:
            shutil.rmtree(old)
    tsv = open(outputs.train_log, "w")
    tsv.write(LOG_HEADER)
    for r in log_rows:
        tsv.write("\t".join(r[5]) + "\n")
    stopped_by = "max_steps"
    t_train = time.monotonic()
    bar = tqdm(total=max_steps, initial=step, desc="pretrain", disable=not cfg["progress"], mininterval=5)
    model.train()
    head.train()
    every = int(cfg["checkpoint_every"] or 0)

    def checkpoint(at: Path) -> None:
        _save_checkpoint(at, model, head, opt, {
            "step": step, "epoch": epoch, "pending": pending, "log_rows": log_rows,
            "numpy_rng": rng.bit_generator.state, "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if device.type == "cuda" else None,
            "fingerprint": fingerprint, "use_amp": use_amp})

    term = sigterm_checkpoints().start()
    try:
        while step < max_steps and stopped_by == "max_steps":
            if not pending:
                epoch += 1
                pending = length_batches(batch_lengths, int(cfg["max_frames_per_batch"]), rng)
            while pending and step < max_steps:
                if time.monotonic() - t0 >= budget_s:
                    stopped_by = "max_minutes"
                    break
                batch = pending.pop(0)
                x, y, mask, blen = _batch_tensors(batch, data, lengths, crop, rng, cfg)
                if not mask.any():
                    continue
                x, y, mask, blen_d = x.to(device), y.to(device), mask.to(device), blen.to(device)
                step += 1
                fault_point("step")
                lr = lr_at(step, float(cfg["lr"]), int(cfg["warmup_steps"]), max_steps)
                for g in opt.param_groups:
                    g["lr"] = lr
                with amp_ctx():
                    outp = model.encode(x, blen_d, frame_mask=mask, return_ffn=False)
                loss, logits, tgt = prediction_loss(head, outp.hidden[-1], y, mask, unmasked_weight, amp_ctx)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                gn = torch.nn.utils.clip_grad_norm_(params, float(cfg["grad_clip"]))
                opt.step()
                with torch.no_grad():
                    acc = (logits.argmax(-1) == tgt).float().mean().item()
                lv = loss.item()
                el = time.monotonic() - t0
                fields = (str(step), f"{lv:.5f}", f"{acc:.5f}", f"{lr:.6g}", f"{el:.2f}", str(epoch),
                          str(int(tgt.numel())), f"{float(gn):.4f}")
                log_rows.append((step, lv, acc, lr, el, fields))
                tsv.write("\t".join(fields) + "\n")
                bar.update(1)
                bar.set_postfix(loss=f"{lv:.3f}", acc=f"{acc:.3f}", refresh=False)
                if not math.isfinite(lv):
                    raise FloatingPointError(f"non-finite loss at step {step}")
                if step % int(cfg["log_every"]) == 0 or step == 1:
                    tsv.flush()
                    log.info("step %d epoch %d loss %.4f masked acc %.3f lr %.2e grad %.2f (%.1f s)", step, epoch, lv,
                             acc, lr, float(gn), el)
                if every and step % every == 0:
                    checkpoint(outputs.checkpoints / f"step_{step}")
                    drop_unscheduled(outputs.checkpoints, every)
                    rotate_checkpoints(outputs.checkpoints, cfg["keep_checkpoints"])
                if on_step is not None:
                    on_step(step)
                if term.requested and step < max_steps:  # a time limit: save this step, stop; a rerun resumes
                    if not (every and step % every == 0):
                        checkpoint(outputs.checkpoints / f"step_{step}")
                    tsv.flush()
                    log.warning("SIGTERM (a time limit or preemption): checkpoint of step %d/%d saved in %s; "
                                "stopping, a rerun resumes from it", step, max_steps, outputs.checkpoints)
                    raise Terminated(f"stopped by SIGTERM at step {step} of {max_steps} (checkpoint saved)")
    finally:
        term.stop()
        bar.close()
        tsv.close()
    drop_unscheduled(outputs.checkpoints, every)
    train_s = time.monotonic() - t_train
    if stopped_by == "max_minutes":
        log.warning("STOPPED BY THE CLOCK: max_minutes=%s ran out at step %d of %d. This model depends on the "
                    "machine's speed and will differ from a run that reaches max_steps; unset pretrain.train."
                    "max_minutes for a reproducible model.", cfg["max_minutes"], step, max_steps)
    model.eval()
    head.eval()
    save_upstream(model, outputs.model_dir, parent_sha256=parent_sha256)
    save_head(head, outputs.head)
    np.save(outputs.kmeans_centers, data.centers)

    losses = [r[1] for r in log_rows]
    accs = [r[2] for r in log_rows]
    dev_name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    summary = {
        "steps": step,
        "max_steps": max_steps,
        "epochs": epoch,
        "stopped_by": stopped_by,
        "resumed_from": None if resume_from is None else str(resume_from),
        "first_loss": _mean(losses[:20]),
        "last_loss": _mean(losses[-20:]),
        "first_masked_acc": _mean(accs[:20]),
        "last_masked_acc": _mean(accs[-20:]),
        "target_unigram_entropy": data.unigram_entropy,
        "chance_loss": math.log(data.n_clusters),
        "train_seconds": round(train_s, 2),
        "total_seconds": round(time.monotonic() - t0, 2),
        "device": str(device),
        "device_name": dev_name,
        "threads": torch.get_num_threads(),
        "amp_setting": cfg["amp"],
        "precision": _precision(use_amp),
        "cpu_native_bf16": native_bf16(),
        "utterances": len(data.feats),
        "frames": int(lengths.sum()),
        "parameters": n_params,
        "ffn_widths": model.ffn_widths,
        "kmeans": data.kmeans,
        "checkpoints": sorted(p.name for p in outputs.checkpoints.glob("step_*")),
        "model_config": model.config,
        "train_config": cfg,
        **(extra_summary or {}),
    }
    title = (f"MelHuBERT masked prediction: {model.num_layers} layers, d={model.hidden_dim}, {data.n_clusters} "
             f"clusters, {len(data.feats)} utts\n{step} steps ({stopped_by}) on {dev_name}"
             + (f", {summary['threads']} thread(s)" if device.type == "cpu" else ""))
    _plot(log_rows, outputs.loss_curve, title, data.unigram_entropy)
    outputs.summary.write_text(json.dumps(summary, indent=2, default=str) + "\n")
    log.info("done: %d steps (%s), loss %.3f -> %.3f, masked acc %.3f -> %.3f, %.1f s", step, stopped_by,
             summary["first_loss"] or float("nan"), summary["last_loss"] or float("nan"),
             summary["first_masked_acc"] or float("nan"), summary["last_masked_acc"] or float("nan"),
             summary["total_seconds"])
    return summary


def data_dir(scratch: str | os.PathLike | None) -> Path | None:
    """Where `run_resumable(..., scratch)` keeps the training data store (None without a scratch folder)."""
    return Path(scratch) / DATA_DIR if scratch else None


def run_resumable(train, outs: TrainOutputs, scratch: str | os.PathLike | None) -> dict:
    """Run `train(outputs, resume_from)` so that a killed job resumes instead of starting again.

    A workflow deletes a failed job's declared outputs before it runs again, so the checkpoints go to
    `scratch`, a folder that is not an output: a rerun resumes from its newest complete `step_<n>`
    checkpoint (same weights, optimiser, schedule and random generators: the end is byte-identical to
    an uninterrupted run); a checkpoint of another config (`CheckpointMismatch`) is discarded and the
    run starts again; on success the checkpoints move to `outs.checkpoints` and `scratch` goes.
    `scratch` None: the checkpoints are written where they end.

    `scratch/data` (`DATA_DIR`, `data_dir`) is the training data store a caller's `train` may write
    (`prepare_training_data`'s `work_dir`): kept when the job is killed (the restart reuses it when complete)
    and when a checkpoint is discarded, removed on success before the checkpoints move."""
    import re

    final = Path(outs.checkpoints)
    scratch = Path(scratch) if scratch else final
    scratch.mkdir(parents=True, exist_ok=True)
    done = sorted((p for p in scratch.iterdir() if re.fullmatch(r"step_\d+", p.name)), key=lambda p: int(p.name[5:]))
    resume_from = done[-1] if done else None
    work = TrainOutputs(outs.model_dir, outs.head, outs.summary, outs.train_log, outs.loss_curve, outs.kmeans_centers,
                        scratch)
    log = get_logger("pretrain")
    if resume_from is not None:
        log.info("RESUMING from %s (a checkpoint of a job that did not finish)", resume_from)
    try:
        summary = train(work, resume_from)
    except CheckpointMismatch as e:
        log.warning("%s; starting again", e)
        for p in scratch.iterdir():  # the checkpoints; the data store (its own digest) stays
            if p.name != DATA_DIR:
                shutil.rmtree(p) if p.is_dir() else p.unlink()
        resume_from = None
        summary = train(work, None)
    if scratch != final:
        from speaker_neurons.pretrain.store import remove

        remove(scratch / DATA_DIR)
        if final.exists():
            shutil.rmtree(final)
        final.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(scratch), str(final))
    return {**summary, "resumed_from_step": int(resume_from.name[5:]) if resume_from else None}
