"""A planted positive control for the pruning comparison (METHOD §11b, `benchmarks/planted_control.py`).

When the summary says that protecting the speaker neurons keeps SID no better than l1, a user cannot
tell a model without a protection benefit from a chain that would miss one. The planted control makes
a model where the benefit exists by construction, and a sham twin where it does not:

* **which neurons**: in every chosen layer, the `2 x per_group` neurons of *lowest* l1 importance
  (`FeedForward.importance`, ties to the lower index), so that l1 pruning drops them;
* **planted**: each of those neurons is given a gate group (half of them the synthesizer's female
  speakers, half the male ones) and trained, the rest of the model frozen, so that
    - it is among the frame's most active neurons (|a| at least `magnitude`, the median over frames of
      the layer's K-th largest |a|, K as in METHOD §1) on three quarters of each utterance's frames
      of its group, and quiet on the others (pre-activation at most -1, so |a| <= 0.17) (the *gate*
      loss);
    - the pooled activations of the planted neurons tell the plant corpus' speakers apart (the *code*
      loss: a linear head on their means over frames; `objective`: the speakers themselves, or the
      synthesizer's metadata that separates pseudo-speakers, which carries over to unheard ones);
    - the model's pooled hidden states do too (the *readout* loss: the same targets from a linear head
      on the mean over frames of hidden_0..hidden_L, SID's own view), so that what the neurons code
      reaches the layers that SID reads;
* **sham**: the same neurons, budgets, magnitudes, steps and seed, gated and trained on an attribute of
  the recording channel that the synthesizer draws per utterance, never per speaker (the low-pass
  edge below or above the corpus median; classes: its quartile x reverberant or dry; metadata: the
  low-pass and high-pass edges and the SNR);
* **low norm kept**: after every step, a planted neuron's importance `||w1||_1 + |b1| + ||w2||_1` is
  scaled back to at most `budget`, the layer's `budget_quantile` of the original importances, so the
  planted neurons stay far below what l1 keeps at any kept share above `1 - budget_quantile`; with
  `readout: one_hot` (the default) each planted neuron's W2 column has one non-zero entry, its own
  residual dimension, where a budget buys the most effect (`one_hot_dims`).

**The ceiling** (`train_speaker_code`, `benchmarks/plant_ceiling.py`): the same neurons trained with no gate
for nothing but telling speakers apart, under the same budget or none, measure the most a plant of
low-importance neurons can add to SID on a given model.

The recipe reads only its own corpus (a synthesized corpus with other pseudo-speakers, seed and id
prefix than the analysis and evaluation corpora) and the synthesizer's metadata (speakers.tsv gender,
channels.tsv): never the workflow's clusters, neuron sets or any pruning result.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from speaker_neurons.analysis.counts import topk_mask
from speaker_neurons.analysis.counts_data import top_k_for
from speaker_neurons.audio import load_audio
from speaker_neurons.models.base import Upstream

KINDS = ("planted", "sham")


@dataclass(frozen=True)
class PlantSpec:
    layers: tuple[int, ...] = (1, 2, 3, 4)   # 1-based layers that get planted neurons
    per_group: int = 8                       # neurons per gate group and layer (two groups)
    budget_quantile: float = 0.25            # importance ceiling: this quantile of the layer's importances
    top_fraction: float = 0.01               # METHOD §1's K = round(top_fraction x width), for the magnitude
    steps: int = 300
    batch_size: int = 16
    crop_seconds: float = 2.0
    lr: float = 3e-3
    seed: int = 0
    objective: str = "metadata"              # what the code and readout heads predict (OBJECTIVES)
    readout: str = "one_hot"                 # W2 columns: `one_hot` (one_hot_dims) or `dense` (every entry trained)


def one_hot_dims(n: int, d: int) -> list[int]:
    """The residual dimension each of n planted neurons of a layer writes into (`readout: one_hot`):
    spread evenly over the d dimensions. Under an l1 budget a column with one entry has the largest
    Euclidean norm, so the most effect on what the next layer norm passes on (a dense column of the
    same l1 norm has sqrt(d) times less)."""
    return [(i * d) // n for i in range(n)]


#: `identity`: the plant corpus' own speakers (or channel classes), a cross-entropy; `metadata`: the same
#: cross-entropy over the synthesizer's voice (or channel class) plus a regression on the continuous
#: parameters that tell one pseudo-speaker of a voice from another (pitch, vocal-tract length, tempo; for
#: the sham the channel's low-pass and high-pass edges and SNR), z-scored: what carries over to speakers
#: the plant never heard
OBJECTIVES = ("identity", "metadata")
READOUTS = ("one_hot", "dense")
SPEAKER_PARAMS = ("pitch_semitones", "vtl_factor", "tempo")
CHANNEL_PARAMS = ("lowpass_hz", "highpass_hz", "snr_db")


# --------------------------------------------------------------------------------------- the corpus
def plant_corpus_table(corpus_dir: str | Path) -> pd.DataFrame:
    """One row per utterance of a synthesized corpus: utt_id, path, speaker, its gender, voice and
    SPEAKER_PARAMS, the utterance's channel (rt60_s and CHANNEL_PARAMS)."""
    d = Path(corpus_dir)
    utts = pd.read_csv(d / "utterances.tsv", sep="\t", dtype=str, keep_default_na=False)
    spk = pd.read_csv(d / "speakers.tsv", sep="\t", dtype=str, keep_default_na=False)
    chan_path = d / "channels.tsv"
    if not chan_path.is_file():
        raise FileNotFoundError(f"{chan_path}: the sham needs the corpus' recording channels (corpus.demo.channel.enabled)")
    chan = pd.read_csv(chan_path, sep="\t", dtype=str, keep_default_na=False)
    t = utts.merge(spk[["speaker", "gender", "voice", *SPEAKER_PARAMS]], on="speaker", how="left", validate="many_to_one")
    t = t.merge(chan[["utt_id", "rt60_s", *CHANNEL_PARAMS]], on="utt_id", how="left", validate="one_to_one")
    if t["gender"].isna().any() or t["lowpass_hz"].isna().any():
        raise ValueError(f"{d}: every utterance needs its speaker's gender and its channel")
    t["path"] = [str(d / p) for p in t["path"]]
    for col in ("rt60_s", *SPEAKER_PARAMS, *CHANNEL_PARAMS):
        t[col] = t[col].astype(float)
    return t.sort_values("utt_id").reset_index(drop=True)


def labels_for(table: pd.DataFrame, kind: str, objective: str = "metadata"
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]:
    """(gate group 0/1 per utterance, class per utterance, z-scored regression targets per utterance
    (N, R; R = 0 for `identity`), gate group names) for `planted` or `sham` (see OBJECTIVES)."""
    if objective not in OBJECTIVES:
        raise ValueError(f"objective must be one of {OBJECTIVES}, got {objective!r}")
    if kind == "planted":
        gate = (table["gender"].to_numpy() == "M").astype(np.int64)
        classes = pd.factorize(table["speaker" if objective == "identity" else "voice"], sort=True)[0]
        params, names = SPEAKER_PARAMS, ["F", "M"]
    elif kind == "sham":
        lp = table["lowpass_hz"].to_numpy()
        gate = (lp > np.median(lp)).astype(np.int64)
        quart = np.searchsorted(np.quantile(lp, [0.25, 0.5, 0.75]), lp, side="right")
        classes = quart * 2 + (table["rt60_s"].to_numpy() > 0)
        params, names = CHANNEL_PARAMS, ["low-pass below median", "low-pass above median"]
    else:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    if objective == "identity":
        targets = np.zeros((len(table), 0), dtype=np.float32)
    else:
        x = table[list(params)].to_numpy(dtype=np.float64)
        targets = ((x - x.mean(0)) / np.where(x.std(0) > 0, x.std(0), 1.0)).astype(np.float32)
    return gate, np.asarray(classes, dtype=np.int64), targets, names


def load_crops(paths: Sequence[str], sample_rate: int, crop_seconds: float) -> list[np.ndarray]:
    """Every utterance as float32 audio, padded by repetition to at least one crop."""
    n = int(round(crop_seconds * sample_rate))
    out = []
    for p in paths:
        x, _ = load_audio(p, sample_rate)
        x = np.asarray(x, dtype=np.float32)
        if len(x) < n:
            x = np.tile(x, int(np.ceil(n / max(1, len(x)))))
        out.append(x)
    return out


# --------------------------------------------------------------------------------------- the neurons
def lowest_importance(model: Upstream, layers: Sequence[int], n: int) -> dict[int, list[int]]:
    """The n neurons of lowest importance in each layer (ties to the lower index), sorted."""
    imp = model.ffn_importance()
    out = {}
    for l in layers:
        s = np.asarray(imp[l])
        order = np.lexsort((np.arange(len(s)), s))
        out[l] = sorted(int(j) for j in order[:n])
    return out


def _batch(wavs: list[np.ndarray], idx: np.ndarray, n: int, rng: np.random.Generator) -> torch.Tensor:
    rows = []
    for i in idx:
        x = wavs[i]
        s = int(rng.integers(0, len(x) - n + 1))
        rows.append(torch.from_numpy(x[s:s + n]))
    return torch.stack(rows)


@torch.no_grad()
def layer_magnitudes(model: Upstream, wavs: list[np.ndarray], spec: PlantSpec, sample_rate: int) -> dict[int, float]:
    """Per layer: the median over frames of the K-th largest |a| (what a neuron must reach to be among
    the frame's activated ones about half the time)."""
    n = int(round(spec.crop_seconds * sample_rate))
    rng = np.random.default_rng(spec.seed + 7)
    kth: dict[int, list[np.ndarray]] = {l: [] for l in spec.layers}
    for start in range(0, len(wavs), spec.batch_size):
        idx = np.arange(start, min(len(wavs), start + spec.batch_size))
        out = model(_batch(wavs, idx, n, rng), None, return_ffn=True)
        for l in spec.layers:
            a = out.ffn[l - 1].abs()
            kth[l].append(a.topk(top_k_for(a.shape[-1], spec.top_fraction), dim=-1).values[..., -1].flatten().numpy())
    return {l: float(np.median(np.concatenate(v))) for l, v in kth.items()}


def train_plant(model: Upstream, wavs: list[np.ndarray], gate: np.ndarray, classes: np.ndarray,
                targets: np.ndarray, neurons: Mapping[int, Sequence[int]], spec: PlantSpec, sample_rate: int,
                progress: Any = None) -> tuple[Upstream, dict[str, Any]]:
    """Train the given neurons of `model` in place (everything else frozen) as the module docstring says.

    `neurons[l]`: 2 x per_group indices of layer l; the first half is gated on group 0, the second on
    group 1. Returns the model (eval mode) and a record: budgets, magnitudes, the loss curve, and per
    neuron its final importance and the fraction of own-group / other-group frames where it reaches the
    magnitude.
    """
    if spec.readout not in READOUTS:
        raise ValueError(f"readout must be one of {READOUTS}, got {spec.readout!r}")
    torch.manual_seed(spec.seed)
    rng = np.random.default_rng(spec.seed)
    model.eval()
    budgets = _budgets(model, spec.layers, spec.budget_quantile)
    mags = layer_magnitudes(model, wavs, spec, sample_rate)
    idx = {l: torch.tensor(list(neurons[l]), dtype=torch.long) for l in spec.layers}
    group = {l: torch.tensor([0] * (len(neurons[l]) // 2) + [1] * (len(neurons[l]) - len(neurons[l]) // 2))
             for l in spec.layers}
    params, masks = _trainable(model, idx, {l: budgets[l] / 2 for l in spec.layers}
                               if spec.readout == "one_hot" else None)
    n_classes, n_reg = int(classes.max()) + 1, targets.shape[1]
    code_dim = sum(len(neurons[l]) for l in spec.layers)
    code_head = torch.nn.Linear(code_dim, n_classes + n_reg)
    read_head = torch.nn.Linear((model.num_layers + 1) * model.hidden_dim, n_classes + n_reg)
    opt = torch.optim.Adam([*params, *code_head.parameters(), *read_head.parameters()], lr=spec.lr)
    n = int(round(spec.crop_seconds * sample_rate))
    gate_t, cls_t, reg_t = torch.from_numpy(gate), torch.from_numpy(classes), torch.from_numpy(targets)

    def task_loss(pred: torch.Tensor, b: np.ndarray) -> torch.Tensor:
        loss = F.cross_entropy(pred[:, :n_classes], cls_t[b])
        return loss + F.mse_loss(pred[:, n_classes:], reg_t[b]) if n_reg else loss
    z: dict[int, torch.Tensor] = {}  # the planted neurons' pre-activations W1 x + b1 of the current batch
    hooks = [model.feed_forwards()[l - 1].intermediate_dense.register_forward_hook(
        lambda mod, inp, out, l=l: z.__setitem__(l, out[..., idx[l]])) for l in spec.layers]
    curve = []
    for step in range(1, spec.steps + 1):
        b = rng.choice(len(wavs), size=min(spec.batch_size, len(wavs)), replace=False)
        out = model(_batch(wavs, b, n, rng), None, return_ffn=True)
        g = gate_t[b]
        gate_loss, codes = 0.0, []
        for l in spec.layers:
            a = out.ffn[l - 1][:, :, idx[l]]                      # (B, T, P)
            own = (g[:, None] == group[l][None, :]).to(a.dtype)[:, None, :]  # (B, 1, P)
            m = mags[l]
            # own group: the upper three quarters of each utterance's frames reach the magnitude (the
            # neuron may stay quiet where a frame says nothing of the speaker, yet fires in every SSL
            # cluster of its group, silence included, as METHOD §4's rho = 0.8 asks); other group:
            # z <= -1 everywhere (|a| <= 0.17, far below the magnitude), so the neuron is among the most
            # active there on (nearly) no frame and stays exclusive to its group
            upper = (a >= a.quantile(0.25, dim=1, keepdim=True)).to(a.dtype).detach()
            gate_loss = gate_loss + ((F.relu(m - a) * own * upper).sum() / (own * upper).sum().clamp(min=1)
                                     + 2 * (F.relu(z[l] + 1.0) * (1 - own)).sum() / (1 - own).expand_as(a).sum().clamp(min=1)) / m
            codes.append(a.mean(1))
        code = code_head(torch.cat(codes, 1))
        pooled = torch.stack(out.hidden, 1).mean(2).flatten(1)      # (B, (L+1) d)
        code_loss, read_loss = task_loss(code, b), task_loss(read_head(pooled), b)
        loss = gate_loss / len(spec.layers) + code_loss + read_loss
        opt.zero_grad()
        loss.backward()
        for p, m in zip(params, masks):
            p.grad.mul_(m)
        opt.step()
        _project(model, idx, budgets)
        curve.append([step, float(gate_loss.detach()) / len(spec.layers), float(code_loss.detach()), float(read_loss.detach())])
        if progress is not None:
            progress(step, curve[-1])
    for h in hooks:
        h.remove()
    for p in params:
        p.requires_grad_(False)
    model.eval()
    rec = {"spec": asdict(spec), "budgets": budgets, "magnitudes": mags,
           "neurons": {str(l): [int(j) for j in neurons[l]] for l in spec.layers},
           "gate_of_neuron": {str(l): group[l].tolist() for l in spec.layers},
           "curve": curve, "per_neuron": _gate_rates(model, wavs, gate, idx, group, mags, spec, sample_rate)}
    imp = model.ffn_importance()
    for row in rec["per_neuron"]:
        row["importance"] = float(imp[row["layer"]][row["neuron"]])
        row["budget"] = budgets[row["layer"]]
    return model, rec


def _budgets(model: Upstream, layers: Sequence[int], quantile: float) -> dict[int, float]:
    """Per layer: the `quantile` of its neurons' importances, the ceiling a planted neuron is held under."""
    imp = model.ffn_importance()
    return {l: float(np.quantile(np.asarray(imp[l]), quantile)) for l in layers}


def _trainable(model: Upstream, idx: Mapping[int, torch.Tensor], one_hot: Mapping[int, float] | None = None
               ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Freeze the model but the W1 rows, b1 entries and W2 columns of the neurons `idx[l]`; returns those
    tensors and their gradient masks. `one_hot` (readout `one_hot`): per layer, the value each planted
    neuron's W2 column starts from in its `one_hot_dims` row, every other entry zero and kept there."""
    for p in model.parameters():
        p.requires_grad_(False)
    params, masks = [], []
    for l, j in idx.items():
        ff = model.feed_forwards()[l - 1]
        rows = torch.zeros(ff.width, dtype=torch.bool)
        rows[j] = True
        w2_mask = rows[None, :].expand_as(ff.output_dense.weight)
        if one_hot is not None:  # each planted neuron writes into one residual dimension of its own
            w2_mask = torch.zeros_like(ff.output_dense.weight, dtype=torch.bool)
            dims = one_hot_dims(len(j), ff.output_dense.weight.shape[0])
            with torch.no_grad():
                ff.output_dense.weight[:, j] = 0.0
                ff.output_dense.weight[dims, j] = one_hot[l]
            w2_mask[dims, j] = True
        for p, m in ((ff.intermediate_dense.weight, rows[:, None]), (ff.intermediate_dense.bias, rows),
                     (ff.output_dense.weight, w2_mask)):
            p.requires_grad_(True)
            params.append(p)
            masks.append(m.expand_as(p).to(p.dtype))
    return params, masks


def train_speaker_code(model: Upstream, wavs: list[np.ndarray], speakers: np.ndarray,
                       neurons: Mapping[int, Sequence[int]], *, budget_quantile: float | None, steps: int,
                       sample_rate: int, crop_seconds: float = 0.5, batch_size: int = 32, lr: float = 3e-3,
                       seed: int = 0, progress: Any = None) -> tuple[Upstream, dict[str, Any]]:
    """The plant most favourable to an own effect, to measure its ceiling (`benchmarks/plant_ceiling.py`):
    no gate, no code head; the given neurons are trained in place, everything else frozen, so that a head
    of SID's own form (`sid.SIDHead` over every layer) tells the plant corpus' speakers (`speakers`:
    class per utterance) apart from crops of `crop_seconds`. `budget_quantile`: after every step each
    neuron's importance is scaled back under the layer's quantile, as in `train_plant`; None: no ceiling
    on their norm. Returns the model (eval mode) and a record: budgets, the loss curve, and per layer the
    neurons' final importances."""
    from speaker_neurons.heads import layer_set
    from speaker_neurons.sid import SIDHead

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model.eval()
    layers = sorted(neurons)
    budgets = None if budget_quantile is None else _budgets(model, layers, budget_quantile)
    idx = {l: torch.tensor(list(neurons[l]), dtype=torch.long) for l in layers}
    params, masks = _trainable(model, idx)
    head = SIDHead(layer_set("all", model.num_layers), model.hidden_dim, int(speakers.max()) + 1)
    opt = torch.optim.Adam([*params, *head.parameters()], lr=lr)
    n = int(round(crop_seconds * sample_rate))
    target = torch.from_numpy(np.asarray(speakers, dtype=np.int64))
    curve = []
    for step in range(1, steps + 1):
        b = rng.choice(len(wavs), size=min(batch_size, len(wavs)), replace=False)
        out = model(_batch(wavs, b, n, rng), None)
        mask = torch.ones(out.hidden[0].shape[:2], dtype=torch.bool)
        loss = F.cross_entropy(head.forward_frames(out.hidden, mask), target[b])
        opt.zero_grad()
        loss.backward()
        for p, m in zip(params, masks):
            p.grad.mul_(m)
        opt.step()
        if budgets is not None:
            _project(model, idx, budgets)
        curve.append([step, float(loss.detach())])
        if progress is not None:
            progress(step, curve[-1])
    for p in params:
        p.requires_grad_(False)
    imp = model.ffn_importance()
    return model, {"budget_quantile": budget_quantile, "budgets": budgets, "steps": steps, "curve": curve,
                   "importance": {l: [float(imp[l][j]) for j in neurons[l]] for l in layers}}


@torch.no_grad()
def _project(model: Upstream, idx: Mapping[int, torch.Tensor], budgets: Mapping[int, float]) -> None:
    for l, j in idx.items():
        ff = model.feed_forwards()[l - 1]
        w1, b1, w2 = ff.intermediate_dense.weight, ff.intermediate_dense.bias, ff.output_dense.weight
        s = w1[j].abs().sum(1) + b1[j].abs() + w2[:, j].abs().sum(0)
        scale = torch.clamp(budgets[l] / s, max=1.0)
        w1[j] *= scale[:, None]
        b1[j] *= scale
        w2[:, j] *= scale[None, :]


@torch.no_grad()
def _gate_rates(model, wavs, gate, idx, group, mags, spec, sample_rate) -> list[dict[str, Any]]:
    """Per planted neuron: the share of own-group and other-group frames where a >= magnitude, and where
    it is among the frame's K most active (METHOD §1)."""
    n = int(round(spec.crop_seconds * sample_rate))
    rng = np.random.default_rng(spec.seed + 11)
    acc = {l: np.zeros((len(idx[l]), 2, 3)) for l in idx}  # [neuron, own/other, (frames, >= mag, top-K)]
    for start in range(0, len(wavs), spec.batch_size):
        b = np.arange(start, min(len(wavs), start + spec.batch_size))
        out = model(_batch(wavs, b, n, rng), None, return_ffn=True)
        g = torch.from_numpy(gate[b])
        for l in idx:
            full = out.ffn[l - 1]
            top = topk_mask(full.flatten(0, 1), top_k_for(full.shape[-1], spec.top_fraction)).view(full.shape)[:, :, idx[l]]
            a = full[:, :, idx[l]]
            own = (g[:, None] == group[l][None, :])[:, None, :].expand_as(a)
            for side, mask in ((0, own), (1, ~own)):
                acc[l][:, side, 0] += mask.sum((0, 1)).numpy()
                acc[l][:, side, 1] += ((a >= mags[l]) & mask).sum((0, 1)).numpy()
                acc[l][:, side, 2] += (top & mask).sum((0, 1)).numpy()
    rows = []
    for l in idx:
        for i, j in enumerate(idx[l].tolist()):
            c = acc[l][i]
            rows.append({"layer": l, "neuron": j, "gate": int(group[l][i]),
                         "own_at_magnitude": c[0, 1] / max(1, c[0, 0]), "other_at_magnitude": c[1, 1] / max(1, c[1, 0]),
                         "own_top_k": c[0, 2] / max(1, c[0, 0]), "other_top_k": c[1, 2] / max(1, c[1, 0])})
    return rows
