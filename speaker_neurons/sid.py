"""SUPERB speaker identification (METHOD §9) on a frozen upstream, from rule pool_layers' store
(`speaker_neurons.sid_pool`).

The SUPERB SID head is: a learnable softmax-weighted sum of the hidden states hidden_0..hidden_L
(`heads.LayerMixHead`), a linear projector to 256, mean pooling over the valid frames, and a linear
classifier; cross-entropy, Adam.

Every step before the softmax is linear, so mean-pooling can move to the front:
    mean_t(P(sum_l w_l h_l[t]) + b) = P(sum_l w_l mean_t(h_l[t])) + b.
`sid_pool.pool_layer_means` therefore runs the upstream once per model and keeps one (L+1, d) matrix per
segment; training and evaluating the head then costs seconds. `SIDHead.forward_frames` is the
frame-level path; the tests prove both give the same logits.

Results: test accuracy per seed with a Wilson 95% interval, the mean over seeds with a t-interval, the
learning rate picked on dev, the layer weights; EER of cosine scores of the 256-d pooled embeddings
(`evaluation.verification_eer`) on a verification list (VoxCeleb1's veri_test2.txt, `sid.veri_list`) or on
a seeded sample of test segment pairs (`sid.max_trials`; every pair when there are fewer).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from torch import nn

from speaker_neurons import heads as _heads
from speaker_neurons.evaluation import read_veri_list, verification_eer, veri_trials
from speaker_neurons.heads import LayerMixHead, layer_sets, pick_rate, rates_of, set_record
from speaker_neurons.sid_pool import SIDData, load_pooled, pooled_crop_seconds
from speaker_neurons.statistics import wilson_interval
from speaker_neurons.utils import fault_point, get_logger, write_json

log = get_logger("sid")

#: Rows of the pooled store read at once when scoring: about 16 MB of float32 per chunk (with each row's share of
#: the heads' intermediates), whatever the corpus. The peak grows with the corpus until one chunk holds all of
#: a split's rows, then stays: at 64 MB, sid_eval on 20,480 demo-shaped segments peaked 127 MB above 320.
_CHUNK_BYTES = 1 << 24


# ------------------------------------------------------------------------------------------- the head
class SIDHead(LayerMixHead):
    """Softmax-weighted sum of the chosen layers -> linear 256 -> mean over frames -> linear classes."""

    def __init__(self, layers: Sequence[int], dim: int, n_classes: int, proj_dim: int = 256):
        super().__init__(layers, dim, n_classes, proj_dim)

    def embed(self, pooled: torch.Tensor) -> torch.Tensor:
        """(B, L+1, d) layer means -> (B, proj_dim) pooled embeddings."""
        x = (self.weights()[None, :, None] * pooled[:, self.layers]).sum(1)
        return self.projector(x)

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.embed(pooled))

    def forward_frames(self, hidden: Sequence[torch.Tensor], frame_mask: torch.Tensor) -> torch.Tensor:
        """The frame-level path: hidden = L+1 tensors (B, T, d), frame_mask (B, T) bool."""
        stacked = torch.stack([hidden[l] for l in self.layers], 0)  # (K, B, T, d)
        x = (self.weights()[:, None, None, None] * stacked).sum(0)
        z = self.projector(x)  # (B, T, proj)
        m = frame_mask.unsqueeze(-1).to(z.dtype)
        return self.classifier((z * m).sum(1) / m.sum(1).clamp_min(1.0))



def _rows(pooled: np.ndarray, rows: np.ndarray, device: str | torch.device = "cpu") -> torch.Tensor:
    """Rows of the pooled store as float32 on `device`: read in ascending order (sequential on a memory
    map), moved in the store's dtype (float16: half the bytes to a GPU), converted there."""
    rows = np.asarray(rows, dtype=np.int64)
    if len(rows) > 1 and (np.diff(rows) < 0).any():
        u, inv = np.unique(rows, return_inverse=True)
        x = np.asarray(pooled[u])[inv]
    else:
        x = np.array(pooled[rows])
    return torch.from_numpy(np.ascontiguousarray(x)).to(device, non_blocking=True).float()


def _chunks(rows: np.ndarray, row_floats: int) -> list[np.ndarray]:
    """`rows` in chunks of about _CHUNK_BYTES of float32 at `row_floats` values per row."""
    size = max(1, _CHUNK_BYTES // (4 * max(1, row_floats)))
    return [rows[s : s + size] for s in range(0, len(rows), size)]


@dataclass(frozen=True)
class HeadSpec:
    layers: tuple[int, ...]
    lr: float
    seed: int


def _bank_init(specs: Sequence[HeadSpec], K: int, d: int, n: int) -> dict[str, torch.Tensor]:
    """Stacked parameters, head h initialised exactly as `SIDHead` is under torch.manual_seed(seed_h)."""
    parts: dict[str, list[torch.Tensor]] = {"logits": [], "pw": [], "pb": [], "cw": [], "cb": []}
    for s in specs:
        torch.manual_seed(s.seed)
        h = SIDHead(s.layers, d, n)
        parts["logits"].append(torch.zeros(K))  # SIDHead starts at zero logits; excluded layers are masked
        parts["pw"].append(h.projector.weight.detach())
        parts["pb"].append(h.projector.bias.detach())
        parts["cw"].append(h.classifier.weight.detach())
        parts["cb"].append(h.classifier.bias.detach())
    return {k: torch.stack(v).clone().requires_grad_(True) for k, v in parts.items()}


def train_heads(data: SIDData, specs: Sequence[HeadSpec], epochs: int, batch_size: int = 64, *,
                steps: int | None = None, grad_clip: float | None = None, eval_every: int | None = None,
                device: str | torch.device = "cpu", progress: bool = False) -> list[SIDHead]:
    """Train many SID heads at once, each exactly as if alone: its own initialisation and sample order
    (from its seed), its own Adam state and learning rate, its own layers (the others masked out of
    its softmax), its own gradient-norm clipping. Heads share nothing, so one stacked pass replaces
    len(specs) small loops: the whole learning-rate sweep x seeds x layer sets of one model trains at
    once. Only train segments of enrolled speakers are used (every train segment, by construction of
    `make_data`).

    Schedule (config sid): `steps` Adam steps of `batch_size` (None: `epochs` passes over the train
    segments; the order is reshuffled at each pass), each head's gradient norm clipped to `grad_clip`
    (None: no clipping; as torch.nn.utils.clip_grad_norm_), and with `eval_every` the dev accuracy of
    every head every that many steps and at the last, each head ending at its best-dev state (the
    earliest of ties; None: the last state). Each returned head carries `best_step` and `dev_accuracy`
    (at that step; None without `eval_every`).

    Memory: the pooled store is read one mini-batch of rows at a time (float16 -> float32 per batch),
    so a memory-mapped store is never loaded; heads that share a seed share their rows. On `device`
    (CUDA where there is one) the heads train there, the rows moved per batch.

    Adam (betas 0.9/0.999, eps 1e-8, bias-corrected) is written out because the learning rate differs
    per head; tests check it against torch.optim.Adam on a lone SIDHead."""
    from tqdm import tqdm

    if not specs:
        return []
    dev = torch.device(device)
    H, K, d = len(specs), data.pooled.shape[1], data.pooled.shape[2]
    n = len(data.speakers)
    tr = np.flatnonzero((data.split == "train") & (data.labels >= 0))
    if len(tr) == 0:
        raise ValueError("SID heads need train segments of enrolled speakers; there are none")
    params = {k: v.detach().to(dev).requires_grad_(True) for k, v in _bank_init(specs, K, d, n).items()}
    mask = torch.zeros(H, K, dtype=torch.bool)
    for h, s in enumerate(specs):
        mask[h, list(s.layers)] = True
    mask = mask.to(dev)
    lr = torch.tensor([s.lr for s in specs], dtype=torch.float32, device=dev)
    seeds = sorted({s.seed for s in specs})  # heads of one seed see the same rows in the same order
    groups = [[h for h, s in enumerate(specs) if s.seed == sd] for sd in seeds]
    order = torch.tensor([h for g in groups for h in g], device=dev)
    back = torch.argsort(order)
    gens = [torch.Generator().manual_seed(sd) for sd in seeds]
    state = {k: (torch.zeros_like(v), torch.zeros_like(v)) for k, v in params.items()}
    b1, b2, eps, step = 0.9, 0.999, 1e-8, 0
    total = int(steps) if steps is not None else int(epochs) * -(-len(tr) // batch_size)
    dev_rows = closed_set(data, "dev") if eval_every else np.zeros(0, np.int64)
    best = {k: v.detach().clone() for k, v in params.items()} if eval_every else params
    best_acc = torch.full((H,), -1.0, device=dev)
    best_step = torch.full((H,), total, dtype=torch.long, device=dev)
    bar = tqdm(total=total, desc=f"{H} SID heads", unit="step", disable=not progress, mininterval=5)
    while step < total:
        perms = [torch.randperm(len(tr), generator=g).numpy() for g in gens]
        for s0 in range(0, len(tr), batch_size):
            if step >= total:
                break
            rows = [tr[p[s0 : s0 + batch_size]] for p in perms]  # per seed
            x = _rows(data.pooled, np.concatenate(rows), dev).view(len(seeds), -1, K, d)
            y = torch.from_numpy(np.stack([data.labels[r] for r in rows])).to(dev)  # (seeds, B)
            w = torch.softmax(params["logits"].masked_fill(~mask, float("-inf")), dim=1)
            z = torch.cat([torch.einsum("hk,bkd->hbd", w[g], x[i]) for i, g in enumerate(groups)])[back]
            z = torch.einsum("hbd,hpd->hbp", z, params["pw"]) + params["pb"][:, None]
            o = torch.einsum("hbp,hnp->hbn", z, params["cw"]) + params["cb"][:, None]
            yh = torch.cat([y[i].expand(len(g), -1) for i, g in enumerate(groups)])[back]  # (H, B)
            loss = nn.functional.cross_entropy(o.reshape(-1, n), yh.reshape(-1), reduction="none")
            loss = loss.view(H, -1).mean(1).sum()  # each head's own mean loss; their sum separates the gradients
            grads = list(torch.autograd.grad(loss, list(params.values())))
            if grad_clip is not None:  # each head's own norm over all its parameters
                norm = torch.stack([g.reshape(H, -1).pow(2).sum(1) for g in grads]).sum(0).sqrt()
                coef = (float(grad_clip) / (norm + 1e-6)).clamp(max=1.0)
                grads = [g * coef.view(-1, *[1] * (g.dim() - 1)) for g in grads]
            step += 1
            fault_point("step")
            with torch.no_grad():
                step_size, bc2 = lr / (1 - b1**step), (1 - b2**step) ** 0.5  # torch.optim.Adam's arithmetic
                for (k, p), g in zip(params.items(), grads):
                    m, v = state[k]
                    m.mul_(b1).add_(g, alpha=1 - b1)
                    v.mul_(b2).addcmul_(g, g, value=1 - b2)
                    denom = v.sqrt().div_(bc2).add_(eps)
                    p.sub_(m.div(denom).mul_(step_size.view(-1, *[1] * (p.dim() - 1))))
                if eval_every and (step % int(eval_every) == 0 or step == total):
                    acc = _bank_accuracy(params, mask, data, dev_rows)
                    better = acc > best_acc
                    for k, p in params.items():
                        best[k][better] = p[better]
                    best_acc = torch.where(better, acc, best_acc)
                    best_step = torch.where(better, torch.full_like(best_step, step), best_step)
            bar.update(1)
    bar.close()
    final = best
    heads = []
    for h, s in enumerate(specs):
        head = SIDHead(s.layers, d, n)
        with torch.no_grad():
            head.layer_logits.copy_(final["logits"][h, list(s.layers)].cpu())
            head.projector.weight.copy_(final["pw"][h].cpu())
            head.projector.bias.copy_(final["pb"][h].cpu())
            head.classifier.weight.copy_(final["cw"][h].cpu())
            head.classifier.bias.copy_(final["cb"][h].cpu())
        head.best_step = int(best_step[h])
        head.total_steps = total
        head.dev_accuracy = float(best_acc[h]) if eval_every else None
        heads.append(head.eval())
    return heads


@torch.no_grad()
def _bank_accuracy(params: Mapping[str, torch.Tensor], mask: torch.Tensor, data: SIDData,
                   rows: np.ndarray) -> torch.Tensor:
    """(H,) accuracy of every head of a stacked bank on `rows` (segments of enrolled speakers), read in chunks."""
    H, K = mask.shape
    d, n = params["pw"].shape[2], params["cw"].shape[1]
    dev = mask.device
    correct = torch.zeros(H, device=dev)
    w = torch.softmax(params["logits"].masked_fill(~mask, float("-inf")), dim=1)
    for c in _chunks(rows, K * d + H * (d + n)):
        x = _rows(data.pooled, c, dev)
        z = torch.einsum("hk,bkd->hbd", w, x)
        z = torch.einsum("hbd,hpd->hbp", z, params["pw"]) + params["pb"][:, None]
        o = torch.einsum("hbp,hnp->hbn", z, params["cw"]) + params["cb"][:, None]
        correct += (o.argmax(2) == torch.from_numpy(data.labels[c]).to(dev)).sum(1)
    return correct / max(len(rows), 1)


def closed_set(data: SIDData, split: str) -> np.ndarray:
    """Indices of `split` segments of enrolled speakers: closed-set identification counts only these."""
    return np.flatnonzero((data.split == split) & (data.labels >= 0))


@torch.no_grad()
def predict(head: SIDHead, data: SIDData, split: str, pooled: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(segment rows, predicted speaker index) over the split's segments of enrolled speakers, read in
    chunks, on the head's device. `pooled` replaces data.pooled (the same segments seen through another
    model, e.g. an erased one)."""
    sel = closed_set(data, split)
    x = data.pooled if pooled is None else pooled
    if len(sel) == 0:
        return sel, np.zeros(0, dtype=np.int64)
    dev = next(head.parameters()).device
    pred = np.concatenate([head(_rows(x, c, dev)).argmax(1).cpu().numpy()
                           for c in _chunks(sel, x.shape[1] * x.shape[2])])
    return sel, pred


def accuracy(head: SIDHead, data: SIDData, split: str, pooled: np.ndarray | None = None) -> tuple[int, int]:
    """(correct, n) over the split's segments of enrolled speakers (`predict`)."""
    sel, pred = predict(head, data, split, pooled)
    return int((pred == data.labels[sel]).sum()), int(len(sel))


#: Columns of a SID evaluation's per-item test predictions (rule sid_eval's `predictions.tsv`)
PREDICTION_COLUMNS = ("layer_set", "seed", "item", "utt_id", "speaker", "prediction", "correct")


def predictions_table(data: SIDData, picked: Mapping[str, Sequence[SIDHead]], seeds: Sequence[int]) -> pd.DataFrame:
    """Every picked head's prediction on every closed-set test item: layer set, head seed, item (the
    segment's row in the pooled file), its utterance and speaker, the predicted speaker, and whether it
    is right. Any comparison of two models scored on the same items can be recomputed from these."""
    parts = []
    for nm, heads in picked.items():
        for sd, head in zip(seeds, heads):
            sel, pred = predict(head, data, "test")
            utt = data.utt_id[sel] if data.utt_id is not None else sel.astype(str)
            parts.append(pd.DataFrame({"layer_set": nm, "seed": int(sd), "item": sel, "utt_id": utt,
                                       "speaker": np.asarray(data.speakers, dtype=object)[data.labels[sel]],
                                       "prediction": np.asarray(data.speakers, dtype=object)[pred],
                                       "correct": (pred == data.labels[sel]).astype(np.int8)}))
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=PREDICTION_COLUMNS)


@torch.no_grad()
def embeddings(head: SIDHead, pooled: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """(len(rows), proj_dim) float32: the head's pooled embeddings of those rows, read in chunks, on the
    head's device."""
    out = np.zeros((len(rows), head.projector.out_features), dtype=np.float32)
    dev = next(head.parameters()).device
    s = 0
    for c in _chunks(np.asarray(rows, dtype=np.int64), pooled.shape[1] * pooled.shape[2]):
        out[s : s + len(c)] = head.embed(_rows(pooled, c, dev)).cpu().numpy()
        s += len(c)
    return out



def evaluate(data: SIDData, layer_sets: dict[str, Sequence[int]], lrs: Sequence[float], seeds: Sequence[int],
             epochs: int, fixed_lr: dict[str, float] | None = None, *, batch_size: int = 64, steps: int | None = None,
             grad_clip: float | None = None, eval_every: int | None = None, max_trials: int | None = None,
             trial_seed: int = 0, trials: pd.DataFrame | None = None, device: str | torch.device = "cpu",
             progress: bool = False) -> tuple[dict[str, Any], dict[str, list[SIDHead]]]:
    """Per layer set: the learning rate picked on dev accuracy of the first seed's heads, then the other
    seeds at that rate (each group of heads trained at once, `train_heads`, on the schedule `batch_size`,
    `steps` or `epochs`, `grad_clip`, `eval_every`); test accuracy per seed at that rate with Wilson
    intervals, their mean with a t-interval, the layer weights, and the verification EER of the first
    seed's head (on `trials`, or on `max_trials` sampled test pairs with `trial_seed`).
    `fixed_lr` ({layer set: rate}, e.g. the rates picked for the unpruned parent) skips the sweep for
    the sets it names: their heads train at that rate only (dev accuracy still reported).
    Returns (the result, the picked heads per layer set, one per seed)."""
    lrs, seeds = [float(x) for x in lrs], [int(x) for x in seeds]
    names = list(layer_sets)
    fixed = {nm: float(fixed_lr[nm]) for nm in names if fixed_lr and nm in fixed_lr}
    swept = [nm for nm in names if nm not in fixed]
    sched = dict(batch_size=int(batch_size), steps=steps, grad_clip=grad_clip, eval_every=eval_every, device=device,
                 progress=progress)
    # two stacked passes: the sweep (every swept set x rate, first seed; every seed of the fixed sets), then
    # the other seeds of the swept sets at their picked rates
    first = [HeadSpec(tuple(layer_sets[nm]), lr, seeds[0]) for nm in swept for lr in lrs]
    first += [HeadSpec(tuple(layer_sets[nm]), fixed[nm], sd) for nm in fixed for sd in seeds]
    trained = {sp: h.to(device) for sp, h in zip(first, train_heads(data, first, epochs, **sched))}  # scored there
    best_lr, dev_acc = dict(fixed), {}
    for nm in names:
        dev = {}
        for lr in ([fixed[nm]] if nm in fixed else lrs):
            c, n = accuracy(trained[HeadSpec(tuple(layer_sets[nm]), lr, seeds[0])], data, "dev")
            dev[lr] = c / max(n, 1)
        dev_acc[nm] = dev
        if nm not in fixed:
            best_lr[nm] = pick_rate(dev, higher_is_better=True)
    rest = [HeadSpec(tuple(layer_sets[nm]), best_lr[nm], sd) for nm in swept for sd in seeds[1:]]
    trained.update((sp, h.to(device)) for sp, h in zip(rest, train_heads(data, rest, epochs, **sched)))
    n_test = int((data.split == "test").sum())
    n_closed = len(closed_set(data, "test"))
    out: dict[str, Any] = {"speakers": len(data.speakers),
                           "segments": {s: int((data.split == s).sum()) for s in ("train", "dev", "test")},
                           "test_closed_set": n_closed, "test_unenrolled": n_test - n_closed}
    if n_test > n_closed:
        log.warning("%d test segments belong to speakers with no train segment: left out of closed-set "
                    "identification (counted in test_unenrolled), kept in the verification trials", n_test - n_closed)
    picked: dict[str, list[SIDHead]] = {}
    for nm in names:
        layers = tuple(layer_sets[nm])
        dev = dev_acc[nm]
        best = best_lr[nm]
        heads = [trained[HeadSpec(layers, best, sd)] for sd in seeds]
        per_seed = []
        for sd, head in zip(seeds, heads):
            c, n = accuracy(head, data, "test")
            per_seed.append({"seed": sd, "accuracy": c / max(n, 1), "correct": c, "n": n,
                             "ci95": list(wilson_interval(c, n)), "best_step": head.best_step})
        ver = verification_eer(lambda rows, head=heads[0]: embeddings(head, data.pooled, rows), data, "test",
                               max_trials=max_trials, seed=trial_seed, trials=trials)
        rec = set_record(layers, best, nm not in fixed, dev, "dev_accuracy", per_seed, "accuracy", "test_accuracy",
                         best_step=heads[0].best_step, steps=heads[0].total_steps, eval_every=eval_every, **ver,
                         layer_weights=heads[0].weights().detach().cpu().numpy().round(4).tolist())
        out[nm] = rec
        m, (lo, hi) = rec["test_accuracy"], rec["test_ci95"]
        picked[nm] = heads
        eer = ver["eer"]
        log.info("SID %s: %.2f%% [%.2f, %.2f] over %d seeds (lr %g, best step %d, %d test segments), EER %s over "
                 "%d+%d trials", nm, 100 * m, 100 * lo, 100 * hi, len(seeds), best, heads[0].best_step, n_closed,
                 "n/a" if eer is None else f"{100 * eer:.2f}%", ver["target_trials"], ver["nontarget_trials"])
    for hs in picked.values():
        for h in hs:
            h.cpu()
    return out, picked


def save_heads(path, picked: Mapping[str, Sequence[SIDHead]], seeds: Sequence[int]) -> None:
    """The picked heads (per layer set, one per seed) as safetensors (`heads.save_heads`)."""
    _heads.save_heads(path, {nm: list(zip(seeds, hs)) for nm, hs in picked.items()})


def load_heads(path) -> dict[str, list[tuple[int, SIDHead]]]:
    """{layer set: [(seed, head), ...]} as `save_heads` wrote them."""
    return _heads.load_heads(path, SIDHead)[0]


# ------------------------------------------------------------------------------------------- for the workflow
def run_sid(pooled_path: str | os.PathLike, cfg: Mapping[str, Any], lr_from: str | os.PathLike | None, corpus: str,
            lr_from_model: str | None, veri_list: str | os.PathLike | None, out_result: str | os.PathLike,
            out_heads: str | os.PathLike, device: str, out_predictions: str | os.PathLike | None = None
            ) -> dict[str, float]:
    """SUPERB SID (and EER) on a pooled file, per layer set of `cfg` (the config's `sid` section), on
    `device`; with `lr_from` (the root model's sid.json) the learning rates picked there; the EER on
    `veri_list` (sid.veri_list) when given, else on sid.max_trials sampled test pairs. Writes the result
    (JSON, with the corpus it was scored on), the picked heads (the erase ablation scores erased models
    with them) and, with `out_predictions`, every head's test predictions (`predictions_table`)."""
    data, L = load_pooled(pooled_path)
    trials, absent = (veri_trials(read_veri_list(veri_list), data, float(cfg["max_veri_absent"]), veri_list)
                      if veri_list else (None, 0))  # checked before any training
    fixed = rates_of(lr_from, cfg["layer_sets"]) if lr_from else None
    schedule = {k: cfg[k] for k in ("epochs", "steps", "batch_size", "grad_clip", "eval_every")}
    result, picked = evaluate(data, layer_sets(cfg["layer_sets"], L), cfg["learning_rates"], cfg["seeds"],
                              fixed_lr=fixed, max_trials=cfg["max_trials"], trial_seed=cfg["trial_seed"], trials=trials,
                              device=device, progress=True, **schedule)
    result.update(crop_seconds=pooled_crop_seconds(pooled_path), corpus=corpus,
                  lr_from=lr_from_model if fixed else None, schedule=schedule, device=str(device),
                  trials={"source": Path(veri_list).name if veri_list else "sampled test pairs",
                          "max_trials": None if veri_list else cfg["max_trials"], "absent": absent})
    write_json(out_result, result)
    save_heads(out_heads, picked, cfg["seeds"])
    if out_predictions is not None:
        predictions_table(data, picked, cfg["seeds"]).to_csv(out_predictions, sep="\t", index=False)
    return {k: v["test_accuracy"] for k, v in result.items() if isinstance(v, dict) and "test_accuracy" in v}
