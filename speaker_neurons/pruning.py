"""Which FFN neurons to keep (METHOD §5): importance, strategies and targets.

* importance of neuron j of a layer (`Upstream.ffn_importance`): `||W1[j,:]||_1 + |b1[j]| + ||W2[:,j]||_1`,
  ranked within the layer;
* strategies, each removing the same number of neurons per layer for a fair comparison:
  `l1` keeps the most important; `protected` keeps the protected set first, then the most important of
  the rest (when the target keeps fewer neurons than the protected set, the most important protected
  ones, and the loss is recorded); `random` keeps a seeded uniform draw (the control);
* targets: `protected_size` (keep exactly as many neurons per layer as the protected set has: the
  paper's one-shot setting) or a kept fraction of each layer's current width.

This module is policy only: the importance of a neuron (`FeedForward.importance`), the removal
(`Upstream.prune_ffn`) and the erase of the ablation (`Upstream.erase_ffn`: W2 columns zeroed, the
shape kept) are methods of the model.

Indices are the model's current neurons (0..width-1), as in the neuron sets computed on that model.
Ties in importance go to the lower index, so a plan is a pure function of the weights, the sets and
the seed.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

STRATEGIES = ("l1", "protected", "random")


def _layer_seed(seed: int, layer: int) -> int:
    return int.from_bytes(hashlib.sha256(f"{seed}:{layer}".encode()).digest()[:8], "little")


def _top(scores: np.ndarray, candidates: np.ndarray, k: int) -> np.ndarray:
    """The k candidates of highest score (ties to the lower index)."""
    if k <= 0:
        return np.empty(0, dtype=np.int64)
    order = np.lexsort((candidates, -scores[candidates]))  # by score descending, then index ascending
    return candidates[order[:k]]


def kept_widths(widths: Sequence[int], target: str | float, protected: Mapping[int, Sequence[int]] | None) -> dict[int, int]:
    """Neurons to keep per 1-based layer: the protected set's size (`protected_size`, at least 1) or
    round(fraction x width) (at least 1)."""
    out = {}
    for l, w in enumerate(widths, start=1):
        if target == "protected_size":
            if protected is None:
                raise ValueError("target protected_size needs a protected set")
            k = len(set(protected.get(l, ())))
        else:
            frac = float(target)
            if not 0 < frac <= 1:
                raise ValueError(f"a kept fraction must lie in (0, 1], got {target!r}")
            k = int(round(frac * w))
        out[l] = min(w, max(1, k))
    return out


def step_widths(widths: Sequence[int], rows_per_step: int, final_width: int) -> dict[int, int]:
    """One step of iterative pruning: per 1-based layer, `rows_per_step` fewer neurons, never below
    `final_width` (a layer already at or below it keeps its width)."""
    return {l: min(w, max(int(final_width), w - int(rows_per_step))) for l, w in enumerate(widths, start=1)}


def iterative_steps(width: int, rows_per_step: int, final_width: int) -> int:
    """How many steps take a layer of `width` down to `final_width`."""
    return max(0, -(-(int(width) - int(final_width)) // int(rows_per_step)))


def plan(model, strategy: str, target: str | float, protected: Mapping[int, Sequence[int]] | None = None, *,
         seed: int, keep_widths: Mapping[int, int] | None = None) -> tuple[dict[int, list[int]], dict[str, Any]]:
    """(neurons to keep per layer, sorted current indices; the per-layer record for `prune.json`).
    `keep_widths` (per 1-based layer) replaces the widths the target gives (iterative pruning)."""
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown pruning strategy {strategy!r}; known: {', '.join(STRATEGIES)}")
    if strategy == "protected" and protected is None:
        raise ValueError("strategy protected needs a protected set")
    widths = model.ffn_widths
    scores = model.ffn_importance()
    keep_n = dict(keep_widths) if keep_widths is not None else kept_widths(widths, target, protected)
    keep: dict[int, list[int]] = {}
    layers: dict[str, dict[str, int]] = {}
    for l, w in enumerate(widths, start=1):
        k = keep_n[l]
        prot = np.array(sorted({int(j) for j in (protected or {}).get(l, ())}), dtype=np.int64)
        if len(prot) and (prot[0] < 0 or prot[-1] >= w):
            raise ValueError(f"layer {l}: protected neuron indices must lie in 0..{w - 1}")
        everyone = np.arange(w, dtype=np.int64)
        if strategy == "l1":
            chosen = _top(scores[l], everyone, k)
        elif strategy == "random":
            chosen = np.random.default_rng(_layer_seed(seed, l)).choice(w, size=k, replace=False)
        else:
            if k >= len(prot):
                rest = np.setdiff1d(everyone, prot)
                chosen = np.concatenate([prot, _top(scores[l], rest, k - len(prot))])
            else:
                chosen = _top(scores[l], prot, k)
        chosen = np.sort(chosen.astype(np.int64))
        keep[l] = chosen.tolist()
        kept_protected = int(np.isin(prot, chosen).sum())
        layers[str(l)] = {"width": int(w), "kept": int(k), "removed": int(w - k), "protected": int(len(prot)),
                          "protected_kept": kept_protected, "protected_lost": int(len(prot) - kept_protected)}
    record = {"strategy": strategy, "target": target, "seed": int(seed), "layers": layers,
              "kept_total": int(sum(keep_n.values())), "width_total": int(sum(widths)),
              "protected_lost_total": int(sum(v["protected_lost"] for v in layers.values()))}
    return keep, record


def union_of_sets(paths: Sequence[str]) -> dict[int, list[int]]:
    """The union, per layer, of neuron-set files (`neurons/<set>.json`)."""
    from speaker_neurons.analysis.neuron_sets import read_neuron_set

    out: dict[int, set[int]] = {}
    for p in paths:
        for l, idx in read_neuron_set(p).items():
            out.setdefault(l, set()).update(idx)
    return {l: sorted(v) for l, v in sorted(out.items())}


def random_like(neurons: Mapping[int, Sequence[int]], widths: Sequence[int], seed: int) -> dict[int, list[int]]:
    """A seeded random set with the same number of neurons per layer (the control of an erase)."""
    return {int(l): sorted(np.random.default_rng(_layer_seed(seed, int(l))).choice(
        widths[int(l) - 1], size=len(set(idx)), replace=False).tolist()) for l, idx in neurons.items()}


def sets_lost(keep: Mapping[int, Sequence[int]], paths: Sequence[str]) -> dict[str, dict[str, int]]:
    """Per neuron-set file (named by its stem, e.g. ivector_cluster): how many of its neurons the kept
    indices `keep` (per 1-based layer) hold and how many they lost."""
    from speaker_neurons.analysis.neuron_sets import read_neuron_set

    out = {}
    for p in paths:
        neurons = read_neuron_set(p)
        total = sum(len(set(idx)) for idx in neurons.values())
        kept = sum(len(set(idx) & set(keep.get(int(l), ()))) for l, idx in neurons.items())
        out[Path(p).stem] = {"total": int(total), "kept": int(kept), "lost": int(total - kept)}
    return out


def prune(model, strategy: str, target: str | float, protected_paths: Sequence[str], seed: int, *, parent: str,
          parent_sha256: str | None, k_ssl: int, keep_widths: Mapping[int, int] | None = None,
          counted: Sequence[str] = (), **extra: Any) -> dict[str, Any]:
    """Plan (`plan`) and apply (`model.prune_ffn`) structured FFN pruning with the union of the neuron-set
    files `protected_paths` as the protected set; returns the record for `prune.json` (per layer: width,
    kept, removed, protected kept / lost; per file of `counted`, whatever the strategy, how many of its
    neurons were kept and lost (`sets_lost`); the parent, its sha256 and the set files by their place in
    the parent's analysis, no absolute path: two runs write the same bytes). `extra` goes into the record."""
    from speaker_neurons.utils import get_logger

    keep, record = plan(model, strategy, target, union_of_sets(protected_paths), seed=int(seed),
                        keep_widths=keep_widths)
    if counted:
        record["sets_lost"] = sets_lost(keep, counted)
    model.prune_ffn(keep)
    record.update(parent=parent, parent_sha256=parent_sha256, k_ssl=k_ssl, **extra,
                  protected_from=["/".join(Path(x).parts[-3:]) for x in protected_paths], ffn_widths=model.ffn_widths)
    get_logger("pruning").info("%s: kept %d of %d FFN neurons (%s, %s), widths %s; protected neurons lost: %d",
                               parent, record["kept_total"], record["width_total"], strategy, target,
                               model.ffn_widths, record["protected_lost_total"])
    return record


def iterative_prune(model, step: Mapping[str, Any], protected_paths: Sequence[str],
                    parent_sha256: str | None) -> dict[str, Any]:
    """One step of iterative pruning (`step`: strategy, index, rows_per_step, final_width, seed, parent,
    k_ssl): `rows_per_step` fewer neurons per layer, never below `final_width`, seeded by seed + index."""
    widths = step_widths(model.ffn_widths, step["rows_per_step"], step["final_width"])
    target = f"-{step['rows_per_step']} per layer (floor {step['final_width']})"
    return prune(model, step["strategy"], target, protected_paths, int(step["seed"]) + int(step["index"]),
                 parent=step["parent"], parent_sha256=parent_sha256, k_ssl=step["k_ssl"], keep_widths=widths,
                 step=step["index"])
