"""Paired comparisons of two models scored on the same test items (docs/METHOD.md, "Paired comparisons").

Every SID and PR evaluation writes its per-item test predictions (`sid.predictions_table`,
`pr.PREDICTION_COLUMNS`). Two pruned models of one parent are scored on the same items by heads of the
same seeds, so their difference is measured item by item:

* SID: accuracy(a) - accuracy(b), each the mean over head seeds, is sum over utterances of
  (mean-over-seeds correct crops of a - of b) / the number of crops;
* PR: PER(a) - PER(b), each the mean over head seeds, is sum over utterances of (mean-over-seeds edits
  of a - of b) / the reference phones.

Its 95% interval is a percentile bootstrap that resamples whole utterances (the crops of one utterance
are correlated, so they go together; `statistics.ratio_bootstrap`). Its half-width is the smallest
difference this test set can detect; against the headroom (unpruned minus the FFN control) it says
whether a null result is informative (`paired_verdict`).
"""

from __future__ import annotations

import os
from typing import Any, Mapping

import numpy as np
import pandas as pd

from speaker_neurons.statistics import ratio_bootstrap

PathLike = str | os.PathLike

#: The strategy pairs compared at every width, each as a - b
STRATEGY_PAIRS = (("protected", "l1"), ("protected", "random"), ("l1", "random"))


def read_predictions(path: PathLike) -> pd.DataFrame:
    """A predictions.tsv of rule sid_eval or pr_eval, utterance ids as strings."""
    return pd.read_csv(path, sep="\t", dtype={"utt_id": str, "speaker": str, "prediction": str}, keep_default_na=False)


def _per_utterance(pred: pd.DataFrame, layer_set: str, value: str, weight: str | None, key: list[str],
                   name: PathLike) -> tuple[pd.DataFrame, list[int]]:
    """Per utterance: the mean over seeds of the summed `value` over its items, and its weight (items,
    or the `weight` column); plus the seeds."""
    sub = pred[pred["layer_set"] == layer_set]
    if sub.empty:
        raise ValueError(f"{name} has no predictions of layer set {layer_set!r}")
    seeds = sorted(int(s) for s in sub["seed"].unique())
    first = sub[sub["seed"] == seeds[0]]
    w = (first.groupby("utt_id", sort=True).size() if weight is None
         else first.groupby("utt_id", sort=True)[weight].sum())
    per_seed = sub.groupby(["seed", "utt_id"], sort=True)[value].sum().unstack(0).fillna(0.0)
    out = pd.DataFrame({"value": per_seed.mean(1), "weight": w}).fillna(0.0)
    items = sorted(map(tuple, first[key].astype(str).to_numpy().tolist()))
    out.attrs["items"] = items
    return out, seeds


def paired_difference(pred_a: pd.DataFrame, pred_b: pd.DataFrame, layer_set: str, task: str, *,
                      resamples: int = 2000, seed: int = 0, names: tuple[PathLike, PathLike] = ("a", "b")
                      ) -> dict[str, Any]:
    """a - b over the same test items (`task`: "sid", accuracy; "pr", PER), head seeds averaged, with a
    95% paired bootstrap interval over utterances. Raises ValueError where the two were not scored on the
    same items or with the same head seeds (then they cannot be paired)."""
    if task == "sid":
        value, weight, key = "correct", None, ["item", "utt_id"]
    elif task == "pr":
        value, weight, key = "edits", "ref_phones", ["utt_id"]
    else:
        raise ValueError(f"task {task!r}: sid or pr")
    a, seeds_a = _per_utterance(pred_a, layer_set, value, weight, key, names[0])
    b, seeds_b = _per_utterance(pred_b, layer_set, value, weight, key, names[1])
    if seeds_a != seeds_b:
        raise ValueError(f"{names[0]} and {names[1]} were scored with head seeds {seeds_a} and {seeds_b}: a paired "
                         "comparison needs the same seeds")
    if a.attrs["items"] != b.attrs["items"] or not np.array_equal(a["weight"].to_numpy(), b["weight"].to_numpy()):
        raise ValueError(f"{names[0]} and {names[1]} were not scored on the same test items (layer set {layer_set}): "
                         "re-run them on one corpus")
    num = (a["value"] - b["value"]).to_numpy(dtype=np.float64)
    den = a["weight"].to_numpy(dtype=np.float64)
    d = float(num.sum() / max(den.sum(), 1.0))
    lo, hi = ratio_bootstrap(num, den, resamples, seed)
    total = max(den.sum(), 1.0)
    return {"difference": d, "ci95": [lo, hi], "half_width": (hi - lo) / 2,
            "a": float(a["value"].sum() / total), "b": float(b["value"].sum() / total),
            "utterances": int(len(den)), "items": len(a.attrs["items"]), "seeds": seeds_a}


def paired_verdict(d: float, lo: float, hi: float, headroom: float | None, a: str, b: str, *,
                   max_null_share: float, higher_is_better: bool = True) -> str:
    """In words, with the power of the test: a difference whose interval excludes 0 is said with its
    direction; a null is "no difference larger than X points" (X the larger end of the interval) when
    the interval's half-width is at most `max_null_share` of the headroom (what the task loses from the
    unpruned model to the FFN control), else "this test set cannot tell"."""
    half = (hi - lo) / 2
    better = (lo > 0) if higher_is_better else (hi < 0)
    worse = (hi < 0) if higher_is_better else (lo > 0)
    span = f"{100 * d:+.1f} points [{100 * lo:+.1f}, {100 * hi:+.1f}]"
    if better:
        return f"{a} keeps it better than {b}: {span}"
    if worse:
        return f"{a} keeps it worse than {b}: {span}"
    room = "no headroom measured" if headroom is None else f"headroom {100 * headroom:.1f} points"
    if headroom is not None and headroom > 0 and half <= max_null_share * headroom:
        bound = max(abs(lo), abs(hi))
        return (f"no difference larger than {100 * bound:.1f} points ({span}; the test set detects "
                f"{100 * half:.1f} points, {room})")
    return f"this test set cannot tell ({span}: it detects {100 * half:.1f} points, {room})"


def headroom(unpruned: Mapping[str, Any] | None, control: Mapping[str, Any] | None, key: str,
             higher_is_better: bool = True) -> float | None:
    """What pruning could lose at most: the unpruned model's score minus its FFN control's (SID), or the
    control's PER minus the unpruned PER (PR); None without both."""
    if unpruned is None or control is None:
        return None
    u, c = float(unpruned[key]), float(control[key])
    return u - c if higher_is_better else c - u
