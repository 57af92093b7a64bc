"""SUPERB speaker identification (METHOD §9) on a frozen upstream, and verification EER.

The SUPERB SID head is: a learnable softmax-weighted sum of the hidden states hidden_0..hidden_L
(hidden_0 is this project's input of layer 1: projected features plus positional convolution, which
the pruning never touches), a linear projector to 256, mean pooling over the valid frames, and a
linear classifier; cross-entropy, Adam.

Every step before the softmax is linear, so mean-pooling can move to the front:
    mean_t(P(sum_l w_l h_l[t]) + b) = P(sum_l w_l mean_t(h_l[t])) + b.
`pool_layer_means` therefore runs the upstream once per model and keeps one (L+1, d) matrix per
segment; training and evaluating the head then costs seconds. `SIDHead.forward_frames` is the
frame-level path; the tests prove both give the same logits.

Segments: whole utterances, or (`crop_seconds`) consecutive crops of that length (a remainder shorter
than half a crop is dropped); short crops keep the task away from the ceiling on a small corpus.
Results: test accuracy per seed with a Wilson 95% interval, the mean over seeds with a t-interval, the
learning rate picked on dev, the layer weights; EER of cosine scores of the 256-d pooled embeddings
over all test segment pairs.
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

from speaker_neurons.statistics import eer_interval, mean_interval, wilson_interval
from speaker_neurons.utils import get_logger, write_json

log = get_logger("sid")

# The layer sets a SID head can read (config sid.layer_sets), defined once: all = SUPERB's
# hidden_0..hidden_L; layers_1_L = the layer outputs only; last = hidden_L, where pruning acts most;
# hidden_0 = the input of layer 1 alone, which no FFN pruning touches (the input-only control).
_LAYER_SETS = {"all": lambda L: list(range(L + 1)), "layers_1_L": lambda L: list(range(1, L + 1)),
               "last": lambda L: [L], "hidden_0": lambda L: [0]}
LAYER_SETS = tuple(_LAYER_SETS)


def layer_set(name: str, num_layers: int) -> list[int]:
    """The hidden-state indices of layer set `name` for a model of `num_layers` layers."""
    if name not in _LAYER_SETS:
        raise ValueError(f"unknown SID layer set {name!r}; known: {', '.join(LAYER_SETS)}")
    return _LAYER_SETS[name](int(num_layers))


def layer_sets(names: Sequence[str], num_layers: int) -> dict[str, list[int]]:
    """{name: hidden-state indices} of the configured layer sets (sid.layer_sets) for `num_layers` layers."""
    return {n: layer_set(n, num_layers) for n in names}


def rates_of(result_json: str | os.PathLike, names: Sequence[str]) -> dict[str, float]:
    """The learning rate picked for each of `names` in a model's sid.json or pr.json (sid.sweep: base
    hands a derived model the rates of the model it comes from)."""
    import json

    rec = json.loads(Path(result_json).read_text())
    rec = rec.get("layer_sets", rec)  # pr.json nests its sets
    return {n: float(rec[n]["lr"]) for n in names if isinstance(rec.get(n), dict) and "lr" in rec[n]}


# ------------------------------------------------------------------------------------------- segments
def segments(manifest: pd.DataFrame, crop_seconds: float | None, sample_rate: int,
             min_crop_fraction: float) -> pd.DataFrame:
    """One row per segment: seg_id, utt_id, path, speaker, split, start, end (samples at `sample_rate`, the
    rate the audio is decoded at: the model's), sorted. An utterance's last crop is kept when it holds at
    least `min_crop_fraction` of a crop (sid.min_crop_fraction)."""
    rows = []
    for r in manifest.sort_values("utt_id", kind="stable").itertuples(index=False):
        n = int(round(float(r.duration) * sample_rate))
        if not crop_seconds:
            bounds = [(0, n)]
        else:
            c = int(round(crop_seconds * sample_rate))
            bounds = [(s, min(s + c, n)) for s in range(0, n, c) if min(s + c, n) - s >= c * min_crop_fraction]
        for i, (s, e) in enumerate(bounds):
            rows.append((f"{r.utt_id}#{i}", r.utt_id, r.path, r.speaker, r.split, s, e))
    return pd.DataFrame(rows, columns=["seg_id", "utt_id", "path", "speaker", "split", "start", "end"])


@torch.inference_mode()
def pool_layer_means(model, segs: pd.DataFrame, *, max_batch_seconds: float, max_batch_size: int = 32,
                     progress: bool = True, feature_cache: dict | None = None) -> np.ndarray:
    """(segments, L+1, d) float32: each hidden layer's mean over the segment's valid frames.

    Crops of one file take the fast path where the model can slice them from the file's features
    (`segment_features`, MelHuBERT: exact): each file is decoded and featurised once instead of once
    per crop. `feature_cache` (a dict, kept by the caller) keeps those features between calls on the
    same segments: an erase ablation runs many variants of one model over the same test segments."""
    from tqdm import tqdm

    bar = tqdm(total=len(segs), desc="pooled layers", unit="seg", disable=not progress, mininterval=5)
    out = np.zeros((len(segs), model.num_layers + 1, model.hidden_dim), dtype=np.float32)
    device = next(model.parameters()).device
    if hasattr(model, "segment_features") and len(segs) > segs["path"].nunique():
        _pool_from_features(model, segs, out, max_batch_seconds, max_batch_size, bar, device, feature_cache)
    else:
        _pool_from_audio(model, segs, out, max_batch_seconds, max_batch_size, bar, device)
    bar.close()
    return out


def _pool_into(out: np.ndarray, idx: Sequence[int], o) -> None:
    mask = o.frame_mask().unsqueeze(-1).float()  # (B, T, 1)
    n = mask.sum(1).clamp_min(1.0)  # (B, 1)
    for l, h in enumerate(o.hidden):
        out[idx, l] = ((h.detach().float() * mask).sum(1) / n).cpu().numpy()


def _pool_from_audio(model, segs, out, max_batch_seconds, max_batch_size, bar, device) -> None:
    from speaker_neurons.batching import audio_batches

    items = pd.DataFrame({"utt_id": segs["seg_id"], "path": segs["path"], "start": segs["start"],
                          "end": segs["end"], "duration": (segs["end"] - segs["start"]) / model.sample_rate})
    row = {s: i for i, s in enumerate(segs["seg_id"])}
    for batch in audio_batches(items, max_batch_seconds, model.sample_rate, max_batch_size=max_batch_size):
        idx = [row[s] for s in batch.utt_ids]
        _pool_into(out, idx, model(batch.wavs.to(device), batch.lengths.to(device), return_ffn=False))
        bar.update(len(idx))


def _pool_from_features(model, segs, out, max_batch_seconds, max_batch_size, bar, device, cache) -> None:
    """Files in segment order, features sliced per crop (or, where the model cannot slice them exactly,
    computed per crop), crops encoded in batches."""
    from speaker_neurons.audio import load_audio

    by_path: dict[str, list[int]] = {}
    for i, p in enumerate(segs["path"].astype(str)):
        by_path.setdefault(p, []).append(i)
    starts, ends = segs["start"].to_numpy(), segs["end"].to_numpy()
    feats: dict[int, torch.Tensor] = {} if cache is None else cache
    pending: list[int] = []

    def flush():
        if not pending:
            return
        x = [feats[i] for i in pending]
        lengths = torch.tensor([len(f) for f in x], dtype=torch.long)
        batch = torch.zeros(len(x), int(lengths.max()), x[0].shape[1])
        for b, f in enumerate(x):
            batch[b, : len(f)] = f
        _pool_into(out, pending, model.encode(batch.to(device), lengths.to(device), return_ffn=False))
        bar.update(len(pending))
        if cache is None:
            for i in pending:
                del feats[i]
        pending.clear()

    seconds = 0.0
    for path, rows in by_path.items():
        if any(i not in feats for i in rows):
            wav = torch.from_numpy(load_audio(path, model.sample_rate)[0])
            bounds = [(int(starts[i]), int(ends[i])) for i in rows]
            sliced = model.segment_features(wav.to(device), bounds)
            if sliced is None:  # not sliceable exactly: each crop's own features, as the audio path computes them
                sliced = [model.extract_features(wav[s:e].reshape(1, -1).to(device))[0][0] for s, e in bounds]
            feats.update({i: f.cpu() for i, f in zip(rows, sliced)})
        for i in rows:
            dur = (ends[i] - starts[i]) / model.sample_rate
            if pending and (len(pending) >= max_batch_size or seconds + dur > max_batch_seconds):
                flush()
                seconds = 0.0
            pending.append(i)
            seconds += dur
    flush()


def check_splits(segs: pd.DataFrame, manifest_path: str = "the manifest") -> None:
    """SID needs speakers and train, dev and test segments; say which is missing and how to fix it."""
    have = segs.groupby("split")["speaker"].nunique().to_dict() if len(segs) else {}
    missing = [s for s in ("train", "dev", "test") if not have.get(s)]
    unnamed = segs["speaker"].isna().all() or (segs["speaker"].astype(str).str.strip() == "").all() if len(segs) else True
    if unnamed or missing:
        what = "no speaker names" if unnamed else f"no {'/'.join(missing)} segments"
        raise ValueError(f"{manifest_path}: SID evaluation needs speakers and a train/dev/test split, but it has {what}. "
                         "Give the corpus `speaker` and `split` columns (tsv source), or set sid.enabled: false "
                         "(and erase.enabled: false) in the config.")


# ------------------------------------------------------------------------------------------- the head
class SIDHead(nn.Module):
    """Softmax-weighted sum of the chosen layers -> linear 256 -> mean over frames -> linear classes."""

    def __init__(self, layers: Sequence[int], dim: int, n_classes: int, proj_dim: int = 256):
        super().__init__()
        self.layers = list(layers)
        self.layer_logits = nn.Parameter(torch.zeros(len(self.layers)))
        self.projector = nn.Linear(dim, proj_dim)
        self.classifier = nn.Linear(proj_dim, n_classes)

    def weights(self) -> torch.Tensor:
        return torch.softmax(self.layer_logits, 0)

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


# ------------------------------------------------------------------------------------------- intervals
# ------------------------------------------------------------------------------------------- training
@dataclass
class SIDData:
    pooled: np.ndarray  # (N, L+1, d)
    labels: np.ndarray  # (N,) int64 index into `speakers`; -1 = a speaker with no train segment (unenrolled)
    split: np.ndarray  # (N,) str
    speakers: list[str]  # the enrolled speakers (those with train segments), sorted
    speaker_of: np.ndarray | None = None  # (N,) str: every segment's speaker, enrolled or not (for trials)

    def trial_speakers(self) -> np.ndarray:
        if self.speaker_of is not None:
            return self.speaker_of
        return np.where(self.labels >= 0, self.labels.astype(str), np.char.add("?", np.arange(len(self.labels)).astype(str)))


def make_data(pooled: np.ndarray, segs: pd.DataFrame) -> SIDData:
    """Labels: each segment's index among the enrolled speakers (those with train segments), -1 else."""
    speakers = sorted(segs.loc[segs["split"] == "train", "speaker"].astype(str).unique())
    index = {s: i for i, s in enumerate(speakers)}
    spk = segs["speaker"].astype(str).to_numpy()
    labels = np.array([index.get(s, -1) for s in spk], dtype=np.int64)
    return SIDData(pooled, labels, segs["split"].astype(str).to_numpy(), speakers, spk)


def load_pooled(path: str | os.PathLike) -> tuple[SIDData, int]:
    """(the SID data, the number of layers L) of a `pooled_layers.npz` that rule pool_layers wrote."""
    with np.load(path) as z:
        segs = pd.DataFrame({"seg_id": z["seg_id"], "speaker": z["speaker"], "split": z["split"]})
        pooled = z["pooled"]
    return make_data(pooled, segs), pooled.shape[1] - 1


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


def train_heads(data: SIDData, specs: Sequence[HeadSpec], epochs: int, batch_size: int = 64) -> list[SIDHead]:
    """Train many SID heads at once, each exactly as if alone: its own initialisation and sample order
    (from its seed), its own Adam state and learning rate, its own layers (the others masked out of
    its softmax). Heads share nothing, so one stacked pass replaces len(specs) small loops: the whole
    learning-rate sweep x seeds x layer sets of one model trains in seconds. Only train segments of
    enrolled speakers are used (every train segment, by construction of `make_data`).

    Adam (betas 0.9/0.999, eps 1e-8, bias-corrected) is written out because the learning rate differs
    per head; tests check it against torch.optim.Adam on a lone SIDHead."""
    if not specs:
        return []
    H, K, d = len(specs), data.pooled.shape[1], data.pooled.shape[2]
    n = len(data.speakers)
    tr = np.flatnonzero((data.split == "train") & (data.labels >= 0))
    x = torch.from_numpy(np.ascontiguousarray(data.pooled[tr]))
    y = torch.from_numpy(data.labels[tr])
    params = _bank_init(specs, K, d, n)
    mask = torch.zeros(H, K, dtype=torch.bool)
    for h, s in enumerate(specs):
        mask[h, list(s.layers)] = True
    lr = torch.tensor([s.lr for s in specs], dtype=torch.float32)
    gens = [torch.Generator().manual_seed(s.seed) for s in specs]
    state = {k: (torch.zeros_like(v), torch.zeros_like(v)) for k, v in params.items()}
    b1, b2, eps, step = 0.9, 0.999, 1e-8, 0
    for _ in range(epochs):
        perms = torch.stack([torch.randperm(len(tr), generator=g) for g in gens])  # (H, N)
        for s0 in range(0, len(tr), batch_size):
            idx = perms[:, s0 : s0 + batch_size]  # (H, B)
            xb = x[idx]  # (H, B, K, d)
            w = torch.softmax(params["logits"].masked_fill(~mask, float("-inf")), dim=1)
            z = torch.einsum("hk,hbkd->hbd", w, xb)
            z = torch.einsum("hbd,hpd->hbp", z, params["pw"]) + params["pb"][:, None]
            o = torch.einsum("hbp,hnp->hbn", z, params["cw"]) + params["cb"][:, None]
            loss = nn.functional.cross_entropy(o.reshape(-1, n), y[idx].reshape(-1), reduction="none")
            loss = loss.view(H, -1).mean(1).sum()  # each head's own mean loss; their sum separates the gradients
            grads = torch.autograd.grad(loss, list(params.values()))
            step += 1
            with torch.no_grad():
                for (k, p), g in zip(params.items(), grads):
                    m, v = state[k]
                    m.mul_(b1).add_(g, alpha=1 - b1)
                    v.mul_(b2).addcmul_(g, g, value=1 - b2)
                    denom = (v / (1 - b2**step)).sqrt_().add_(eps)
                    p.sub_(lr.view(-1, *[1] * (p.dim() - 1)) * (m / (1 - b1**step)) / denom)
    heads = []
    for h, s in enumerate(specs):
        head = SIDHead(s.layers, d, n)
        with torch.no_grad():
            head.layer_logits.copy_(params["logits"][h, list(s.layers)])
            head.projector.weight.copy_(params["pw"][h])
            head.projector.bias.copy_(params["pb"][h])
            head.classifier.weight.copy_(params["cw"][h])
            head.classifier.bias.copy_(params["cb"][h])
        heads.append(head.eval())
    return heads


def closed_set(data: SIDData, split: str) -> np.ndarray:
    """Indices of `split` segments of enrolled speakers: closed-set identification counts only these."""
    return np.flatnonzero((data.split == split) & (data.labels >= 0))


@torch.no_grad()
def accuracy(head: SIDHead, data: SIDData, split: str, pooled: np.ndarray | None = None) -> tuple[int, int]:
    """(correct, n) over the split's segments of enrolled speakers. `pooled` replaces data.pooled (the
    same segments seen through another model, e.g. an erased one)."""
    sel = closed_set(data, split)
    x = data.pooled if pooled is None else pooled
    if len(sel) == 0:
        return 0, 0
    pred = head(torch.from_numpy(np.ascontiguousarray(x[sel]))).argmax(1).numpy()
    return int((pred == data.labels[sel]).sum()), int(len(sel))


@torch.no_grad()
def verification_eer(head: SIDHead, data: SIDData, split: str = "test") -> dict[str, Any]:
    """EER of cosine scores of the head's 256-d embeddings over all pairs of the split's segments
    (enrolled or not: verification needs no enrolment), with the trial counts."""
    from speaker_neurons.evaluation import build_trials, equal_error_rate

    sel = np.flatnonzero(data.split == split)
    with torch.no_grad():
        emb = head.embed(torch.from_numpy(np.ascontiguousarray(data.pooled[sel]))).numpy()
    scores, labels = build_trials(emb, data.trial_speakers()[sel])
    n_t = int(labels.sum())
    eer = equal_error_rate(scores, labels) if 0 < n_t < len(labels) else None
    ci = list(eer_interval(eer, n_t)) if eer is not None else None
    return {"eer": eer, "eer_ci95": ci, "target_trials": n_t, "nontarget_trials": int(len(labels) - n_t)}


def evaluate(data: SIDData, layer_sets: dict[str, Sequence[int]], lrs: Sequence[float], seeds: Sequence[int],
             epochs: int, fixed_lr: dict[str, float] | None = None) -> tuple[dict[str, Any], dict[str, list[SIDHead]]]:
    """Per layer set: the learning rate picked on dev accuracy of the first seed's heads, then the other
    seeds at that rate (each group of heads trained at once, `train_heads`); test accuracy per seed at that rate with Wilson intervals, their
    mean with a t-interval, the layer weights, and the verification EER of the first seed's head.
    `fixed_lr` ({layer set: rate}, e.g. the rates picked for the unpruned parent) skips the sweep for
    the sets it names: their heads train at that rate only (dev accuracy still reported).
    Returns (the result, the picked heads per layer set, one per seed)."""
    lrs, seeds = [float(x) for x in lrs], [int(x) for x in seeds]
    names = list(layer_sets)
    fixed = {nm: float(fixed_lr[nm]) for nm in names if fixed_lr and nm in fixed_lr}
    swept = [nm for nm in names if nm not in fixed]
    # two stacked passes: the sweep (every swept set x rate, first seed; every seed of the fixed sets), then
    # the other seeds of the swept sets at their picked rates
    first = [HeadSpec(tuple(layer_sets[nm]), lr, seeds[0]) for nm in swept for lr in lrs]
    first += [HeadSpec(tuple(layer_sets[nm]), fixed[nm], sd) for nm in fixed for sd in seeds]
    trained = dict(zip(first, train_heads(data, first, epochs)))
    best_lr, dev_acc = dict(fixed), {}
    for nm in names:
        dev = {}
        for lr in ([fixed[nm]] if nm in fixed else lrs):
            c, n = accuracy(trained[HeadSpec(tuple(layer_sets[nm]), lr, seeds[0])], data, "dev")
            dev[lr] = c / max(n, 1)
        dev_acc[nm] = dev
        if nm not in fixed:
            best_lr[nm] = max(lrs, key=lambda lr: (dev[lr], -lr))
    rest = [HeadSpec(tuple(layer_sets[nm]), best_lr[nm], sd) for nm in swept for sd in seeds[1:]]
    trained.update(zip(rest, train_heads(data, rest, epochs)))
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
                             "ci95": list(wilson_interval(c, n))})
        m, lo, hi = mean_interval([r["accuracy"] for r in per_seed])
        ver = verification_eer(heads[0], data, "test")
        out[nm] = {"layers": list(layers), "lr": best, "lr_swept": nm not in fixed,
                   "dev_accuracy": {str(k): v for k, v in dev.items()},
                   "test_accuracy": m, "test_ci95": [lo, hi], "per_seed": per_seed, **ver,
                   "layer_weights": heads[0].weights().detach().numpy().round(4).tolist()}
        picked[nm] = heads
        eer = ver["eer"]
        log.info("SID %s: %.2f%% [%.2f, %.2f] over %d seeds (lr %g, %d test segments), EER %s over %d+%d trials",
                 nm, 100 * m, 100 * lo, 100 * hi, len(seeds), best, n_closed,
                 "n/a" if eer is None else f"{100 * eer:.2f}%", ver["target_trials"], ver["nontarget_trials"])
    return out, picked


# ------------------------------------------------------------------------------------------- heads on disk
def save_heads(path, picked: dict[str, list[SIDHead]], seeds: Sequence[int]) -> None:
    """The picked heads (per layer set, per seed) as safetensors; layers and seeds in the metadata."""
    import json

    from safetensors.torch import save_file

    tensors, meta = {}, {}
    for nm, heads in picked.items():
        meta[nm] = {"layers": heads[0].layers, "seeds": [int(s) for s in seeds]}
        for sd, h in zip(seeds, heads):
            for k, v in h.state_dict().items():
                tensors[f"{nm}/{int(sd)}/{k}"] = v.detach().contiguous()
    save_file(tensors, str(path), metadata={"heads": json.dumps(meta, sort_keys=True)})


def load_heads(path) -> dict[str, list[tuple[int, SIDHead]]]:
    """{layer set: [(seed, head), ...]} as `save_heads` wrote them."""
    import json

    from safetensors import safe_open

    out: dict[str, list[tuple[int, SIDHead]]] = {}
    with safe_open(str(path), framework="pt") as f:
        meta = json.loads(f.metadata()["heads"])
        for nm, m in meta.items():
            for sd in m["seeds"]:
                sdict = {k.split("/", 2)[2]: f.get_tensor(k) for k in f.keys() if k.startswith(f"{nm}/{sd}/")}
                pw, cw = sdict["projector.weight"], sdict["classifier.weight"]
                h = SIDHead(m["layers"], pw.shape[1], cw.shape[0], proj_dim=pw.shape[0])
                h.load_state_dict(sdict)
                out.setdefault(nm, []).append((int(sd), h.eval()))
    return out


# ------------------------------------------------------------------------------------------- for the workflow
#: The segment columns a pooled file keeps (the audio paths stay in the manifest: joined by utt_id).
POOLED_SEGMENT_COLUMNS = ("seg_id", "utt_id", "speaker", "split", "start", "end")


def pool_to_file(model, manifest_path: str | os.PathLike, crop_seconds: float | None, min_crop_fraction: float,
                 out: str | os.PathLike, max_batch_seconds: float) -> dict[str, Any]:
    """Each hidden layer's mean over every segment of the manifest (the SID heads' input), with the
    segments themselves, as one npz (fixed-width strings and integers: no pickled objects)."""
    from speaker_neurons.data.manifest import read_manifest
    from speaker_neurons.utils import save_npz

    segs = segments(read_manifest(manifest_path), crop_seconds, model.sample_rate, min_crop_fraction)
    check_splits(segs, str(manifest_path))
    pooled = pool_layer_means(model, segs, max_batch_seconds=max_batch_seconds)
    cols = {c: (segs[c].to_numpy(np.int64) if c in ("start", "end") else np.asarray(segs[c].astype(str).tolist(), dtype=str))
            for c in POOLED_SEGMENT_COLUMNS}
    save_npz(out, {"pooled": pooled, **cols})
    return {"segments": len(segs), "shape": list(pooled.shape)}


def read_segments(pooled_path: str | os.PathLike, manifest_path: str | os.PathLike) -> pd.DataFrame:
    """The segments a pooled file was made from (rows as `segments` makes them), their audio paths
    joined from the manifest by utt_id."""
    from speaker_neurons.data.manifest import read_manifest

    with np.load(pooled_path) as z:
        absent = [c for c in POOLED_SEGMENT_COLUMNS if c not in z.files]
        if absent:
            raise ValueError(f"{pooled_path} has no segment column(s) {absent} (written by an older version); "
                             "re-run rule pool_layers")
        segs = pd.DataFrame({c: z[c] for c in POOLED_SEGMENT_COLUMNS})
    manifest = read_manifest(manifest_path)
    paths = dict(zip(manifest["utt_id"].astype(str), manifest["path"].astype(str)))
    missing = sorted(set(segs["utt_id"]) - set(paths))
    if missing:
        raise ValueError(f"{pooled_path} holds utterances that {manifest_path} lacks ({len(missing)}, e.g. "
                         f"{', '.join(missing[:5])}); re-run rule pool_layers")
    segs.insert(2, "path", segs["utt_id"].map(paths))
    return segs


def run_sid(pooled_path: str | os.PathLike, cfg: Mapping[str, Any], lr_from: str | os.PathLike | None, corpus: str,
            lr_from_model: str | None, out_result: str | os.PathLike, out_heads: str | os.PathLike) -> dict[str, float]:
    """SUPERB SID (and EER) on a pooled file, per layer set of `cfg` (the config's `sid` section); with
    `lr_from` (the root model's sid.json) the learning rates picked there. Writes the result (JSON, with
    the corpus it was scored on) and the picked heads (the erase ablation scores erased models with them)."""
    data, L = load_pooled(pooled_path)
    fixed = rates_of(lr_from, cfg["layer_sets"]) if lr_from else None
    result, picked = evaluate(data, layer_sets(cfg["layer_sets"], L), cfg["learning_rates"], cfg["seeds"],
                              epochs=int(cfg["epochs"]), fixed_lr=fixed)
    result.update(crop_seconds=cfg["crop_seconds"], corpus=corpus, lr_from=lr_from_model if fixed else None)
    write_json(out_result, result)
    save_heads(out_heads, picked, cfg["seeds"])
    return {k: v["test_accuracy"] for k, v in result.items() if isinstance(v, dict) and "test_accuracy" in v}
