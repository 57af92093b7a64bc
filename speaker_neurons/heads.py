"""What SUPERB's two downstream tasks share (METHOD §9, §11a): the layer sets a head reads, the
layer-mixing head, the learning rate picked on dev, the heads on disk, and the per-set result record.

Both SID (`speaker_neurons.sid`) and PR (`speaker_neurons.pr`) heads are a learnable softmax-weighted sum of
the hidden states of a layer set (hidden_0 is this project's input of layer 1: projected features plus
positional convolution, which the pruning never touches), a linear projector and a linear classifier
(`LayerMixHead`). SID mean-pools the projection over frames (`sid.SIDHead`); PR classifies every frame
for CTC (`pr.PRHead`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch
from torch import nn

from speaker_neurons.statistics import mean_interval

# The layer sets a head can read (config sid.layer_sets, shared by PR), defined once: all = SUPERB's
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


class LayerMixHead(nn.Module):
    """Softmax-weighted sum of the hidden states `layers` -> Linear(dim, proj_dim) -> Linear(proj_dim, n_out).
    What the sum runs over (pooled means, frames) and what follows the classifier are the subclass's."""

    def __init__(self, layers: Sequence[int], dim: int, n_out: int, proj_dim: int = 256):
        super().__init__()
        self.layers = [int(l) for l in layers]
        self.layer_logits = nn.Parameter(torch.zeros(len(self.layers)))
        self.projector = nn.Linear(dim, proj_dim)
        self.classifier = nn.Linear(proj_dim, n_out)

    def weights(self) -> torch.Tensor:
        """The softmax weights of the head's layers."""
        return torch.softmax(self.layer_logits, 0)


def pick_rate(dev: Mapping[float, float], higher_is_better: bool) -> float:
    """The learning rate with the best dev figure (`dev`: {rate: figure}); the smaller rate on ties."""
    sign = -1.0 if higher_is_better else 1.0
    return min(dev, key=lambda lr: (sign * dev[lr], lr))


def rates_of(result_json: str | os.PathLike, names: Sequence[str]) -> dict[str, float]:
    """The learning rate picked for each of `names` in a model's sid.json or pr.json (sid.sweep: base
    hands a derived model the rates of the model it comes from)."""
    rec = json.loads(Path(result_json).read_text())
    rec = rec.get("layer_sets", rec)  # pr.json nests its sets
    return {n: float(rec[n]["lr"]) for n in names if isinstance(rec.get(n), dict) and "lr" in rec[n]}


def set_record(layers: Sequence[int], lr: float, swept: bool, dev: Mapping[float, float], dev_name: str,
               per_seed: Sequence[Mapping[str, Any]], metric: str, test_name: str, **more: Any) -> dict[str, Any]:
    """A layer set's result record, as both tasks write it: its layers, the picked rate (and whether it was
    swept), the dev figure per rate (`dev_name`), the per-seed rows, and the seed mean of their `metric`
    with a Student-t 95% interval (`test_name`, `test_ci95`); `more` adds task-specific entries."""
    m, lo, hi = mean_interval([r[metric] for r in per_seed])
    return {"layers": list(layers), "lr": lr, "lr_swept": bool(swept), dev_name: {str(k): v for k, v in dev.items()},
            test_name: m, "test_ci95": [lo, hi], "per_seed": list(per_seed), **more}


# ------------------------------------------------------------------------------------------- heads on disk
def save_heads(path: str | os.PathLike, heads: Mapping[str, Sequence[tuple[int, LayerMixHead]]],
               **extra: Any) -> None:
    """The picked heads ({layer set: [(seed, head), ...]}) as safetensors, on the CPU; each set's layers and
    seeds, and `extra` (JSON-able: e.g. PR's vocabulary), in one metadata entry."""
    from safetensors.torch import save_file

    tensors, meta = {}, {}
    for nm, hs in heads.items():
        meta[nm] = {"layers": list(hs[0][1].layers), "seeds": [int(sd) for sd, _ in hs]}
        for sd, h in hs:
            for k, v in h.state_dict().items():
                tensors[f"{nm}/{int(sd)}/{k}"] = v.detach().cpu().contiguous()
    # one metadata key: safetensors writes a metadata map in an order that varies between processes
    save_file(tensors, str(path), metadata={"heads": json.dumps({"sets": meta, **extra}, sort_keys=True)})


def load_heads(path: str | os.PathLike, make: Callable[..., LayerMixHead]
               ) -> tuple[dict[str, list[tuple[int, LayerMixHead]]], dict[str, Any]]:
    """({layer set: [(seed, head), ...]}, the extra metadata) as `save_heads` wrote them; each head is
    `make(layers, dim, n_out, proj_dim)` with the saved weights, in eval mode."""
    from safetensors import safe_open

    out: dict[str, list[tuple[int, LayerMixHead]]] = {}
    with safe_open(str(path), framework="pt") as f:
        rec = json.loads(f.metadata()["heads"])
        meta, rec = (rec.pop("sets"), rec) if "sets" in rec else (rec, {})  # SID heads of older versions
        for nm, m in meta.items():
            for sd in m["seeds"]:
                sdict = {k.split("/", 2)[2]: f.get_tensor(k) for k in f.keys() if k.startswith(f"{nm}/{sd}/")}
                pw, cw = sdict["projector.weight"], sdict["classifier.weight"]
                h = make(m["layers"], pw.shape[1], cw.shape[0], pw.shape[0])
                h.load_state_dict(sdict)
                out.setdefault(nm, []).append((int(sd), h.eval()))
    return out, rec
