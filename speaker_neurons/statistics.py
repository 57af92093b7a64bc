"""Every interval the workflow reports, in one place (docs/METHOD.md sections 9, 11 and 11a).

- `wilson_interval`: a binomial proportion (SID accuracy of one head, the i-vector SID);
- `eer_interval`: an equal error rate, as the Wilson interval of a miss rate over the target trials;
- `mean_interval`: the mean over head seeds with a Student-t interval;
- `paired_delta`: the mean paired change over test items (erase ablation) with a Student-t interval;
- `difference_interval`: the difference of two SID results (seed spread and test sampling of each);
- `bootstrap_interval`: a corpus-level ratio (PER = edits / reference phones) by a percentile
  bootstrap over utterances (`ratio_bootstrap`, which also gives the paired differences of
  `speaker_neurons.paired`).
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import numpy as np


def wilson_interval(correct: int, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
    """95% Wilson score interval of a binomial proportion (nan, nan) for n = 0."""
    if n == 0:
        return (float("nan"), float("nan"))
    p = correct / n
    den = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / den
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return (centre - half, centre + half)


def eer_interval(eer: float, target_trials: int) -> tuple[float, float]:
    """95% interval of an EER: the Wilson interval of a miss rate of `eer` over the target trials (the
    scarcer kind, which binds the estimate). Trials that share an utterance are not independent, so
    the true interval is wider; read it as a lower bound on the uncertainty."""
    return wilson_interval(int(round(eer * target_trials)), int(target_trials))


def _t_half(x: np.ndarray) -> float:
    """Half-width of the Student-t 95% interval of the mean of `x` (0 for fewer than two values)."""
    from scipy import stats

    n = len(x)
    return float(stats.t.ppf(0.975, n - 1) * x.std(ddof=1) / math.sqrt(n)) if n > 1 else 0.0


def mean_interval(values: Sequence[float]) -> tuple[float, float, float]:
    """(mean, low, high): Student-t 95% interval of the mean over seeds (a point when one seed)."""
    x = np.asarray(values, dtype=np.float64)
    m, half = float(x.mean()), _t_half(x)
    return (m, m - half, m + half)


def paired_delta(before: np.ndarray, after: np.ndarray) -> dict[str, float]:
    """Mean of after - before over segments (each a row's mean over head seeds; arrays (seeds, n) of
    0/1) with a Student-t 95% interval."""
    d = np.asarray(after, dtype=np.float64).mean(0) - np.asarray(before, dtype=np.float64).mean(0)
    if len(d) == 0:
        return {"delta": float("nan"), "ci95": [float("nan"), float("nan")], "n": 0}
    m, half = float(d.mean()), _t_half(d)
    return {"delta": m, "ci95": [m - half, m + half], "n": int(len(d))}


def difference_interval(a: Mapping[str, Any], b: Mapping[str, Any], z: float = 1.959963984540054
                        ) -> tuple[float, float, float]:
    """(difference, low, high) of two SID results' mean test accuracies (`sid.json` entries).

    The variance adds, for each side, the spread over head seeds (s^2 / seeds) and the binomial
    sampling of its test segments (p (1 - p) / n), as if the two were independent: where both score
    the same segments (one model's two layer sets, or a model and its control) their errors are
    positively correlated and the interval is conservative."""
    var, means = 0.0, []
    for r in (a, b):
        acc = np.array([s["accuracy"] for s in r["per_seed"]], dtype=np.float64)
        n = int(r["per_seed"][0]["n"])
        p = float(acc.mean())
        means.append(p)
        var += (acc.var(ddof=1) / len(acc) if len(acc) > 1 else 0.0) + p * (1 - p) / max(n, 1)
    d = means[0] - means[1]
    half = z * float(np.sqrt(var))
    return d, d - half, d + half


def per_difference_interval(a: Mapping[str, Any], b: Mapping[str, Any], z: float = 1.959963984540054
                            ) -> tuple[float, float, float]:
    """(difference, low, high) of two PR results' mean test PERs (`pr.json` layer-set entries), a - b.

    As `difference_interval`: for each side the spread over head seeds (s^2 / seeds) plus the sampling of
    its test utterances, here each seed's bootstrap interval read as a normal one ((high - low) / 2z,
    squared, averaged over the seeds, which score the same utterances); conservative where both sides
    score the same utterances."""
    var, means = 0.0, []
    for r in (a, b):
        per = np.array([s["per"] for s in r["per_seed"]], dtype=np.float64)
        boot = np.array([((s["ci95"][1] - s["ci95"][0]) / (2 * z)) ** 2 for s in r["per_seed"]], dtype=np.float64)
        means.append(float(per.mean()))
        var += (per.var(ddof=1) / len(per) if len(per) > 1 else 0.0) + float(boot.mean())
    d = means[0] - means[1]
    half = z * float(np.sqrt(var))
    return d, d - half, d + half


def bootstrap_interval(edits: Sequence[int], ref_lens: Sequence[int], resamples: int, seed: int,
                       level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of the corpus PER: resample utterances with replacement
    (`resamples` times, `numpy.random.default_rng(seed)`), recompute sum(edits) / sum(ref_lens)."""
    return ratio_bootstrap(edits, ref_lens, resamples, seed, level)


def ratio_bootstrap(numerator: Sequence[float], denominator: Sequence[float], resamples: int, seed: int,
                    level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of sum(numerator) / sum(denominator), one entry per utterance:
    resample utterances with replacement (`resamples` times, `numpy.random.default_rng(seed)`). A
    paired difference is a numerator of per-utterance differences (`paired.paired_difference`)."""
    e = np.asarray(numerator, dtype=np.float64)
    n = np.asarray(denominator, dtype=np.float64)
    if len(e) == 0:
        raise ValueError("bootstrap interval of no utterances")
    rng = np.random.default_rng(int(seed))
    stats = np.empty(int(resamples))
    chunk = max(1, 2_000_000 // len(e))  # bounded memory on large test sets
    for s in range(0, int(resamples), chunk):
        idx = rng.integers(0, len(e), size=(min(chunk, int(resamples) - s), len(e)))
        stats[s : s + len(idx)] = e[idx].sum(1) / np.maximum(n[idx].sum(1), 1.0)
    a = (1.0 - level) / 2
    lo, hi = np.quantile(stats, [a, 1.0 - a])
    return float(lo), float(hi)
