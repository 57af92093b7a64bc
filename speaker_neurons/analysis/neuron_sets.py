"""Neuron sets from activation counts (METHOD §4).

Notation, per layer l of width W with K = K_l activated neurons per frame:

- ``p(j | c) = counts[c, j] / frames[c]``; baseline ``b = K / W``.
- above baseline: ``A(c) = { j : p(j | c) > b }`` (strict), evaluated exactly on integers as
  ``counts[c, j] * W > K * frames[c]``. A class with no frames has p = 0 and is above for no neuron.
- group set: ``N(G) = { j : (1/|G|) * sum_{c in G} 1[j in A(c)] >= rho }``, evaluated exactly as
  ``n_above * q >= p * |G|`` where ``rho = p / q`` as a fraction (a float rho is read as the decimal
  it prints as, so 0.8 means 4/5: 4 of 5 classes meet it).
- exclusive union: ``E = U_i ( N(G_i) \\ U_{k != i} N(G_k) )`` = neurons in exactly one group's set.

Named definitions (classes of the counts are pairs (i-vector cluster g, SSL cluster c)):

- ``ssl_cluster``: pool rows by c (sum counts and frames over g); each SSL cluster is its own group;
  ``SSLN = E`` over the SSL clusters = neurons above baseline for exactly one SSL cluster.
- ``ivector_cluster`` (proposed, "speaker neurons"): group g = {(g, c) for every c};
  ``IVN = E`` over the i-vector groups of ``N(G_g)`` with ``rho``.
- ``union``: as ivector_cluster but ``N(G_g) = { j : j in A((g, c)) for ANY c }`` (rho -> ">0").
- ``unconditioned``: pool rows by g (sum over c); each i-vector cluster is its own group; E.
- ``per_cluster``: for each SSL cluster c, ``E_c`` = exclusive union over g of ``A((g, c))``; the set is
  ``U_c E_c``.

Outputs: ``neurons/<set>.json`` = ``{"set", "params", "layers": {"1": [sorted indices], ...},
"groups": {"<g>": {"1": [...], ...}}}`` and ``neuron_counts.tsv`` (rows = layers 1..L and ``total``,
one column per set). ``groups`` says which group each neuron is exclusive to (for ``ssl_cluster`` the
group is the SSL cluster, otherwise the i-vector cluster; for ``per_cluster`` a neuron can be exclusive to
different i-vector clusters in different SSL clusters and then appears under each).
"""

from __future__ import annotations

import csv
import json
import logging
import os
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Mapping, Sequence

import numpy as np

if TYPE_CHECKING:  # the counts module imports torch; the workflow imports SET_NAMES from here without it
    from speaker_neurons.analysis.counts_data import CountsData

__all__ = [
    "SET_NAMES",
    "activation_prob",
    "baseline",
    "above_baseline",
    "as_fraction",
    "group_set",
    "exclusive_union",
    "exclusive_groups",
    "pool_rows",
    "ssl_cluster",
    "ivector_cluster",
    "union",
    "unconditioned",
    "per_cluster",
    "layer_groups",
    "compute_neuron_sets",
    "neuron_set_params",
    "write_neuron_sets",
    "read_neuron_set",
    "read_neuron_counts",
    "plot_neuron_counts",
    "recompute_from_npz",
]

log = logging.getLogger("speaker_neurons.analysis.neuron_sets")

SET_NAMES: tuple[str, ...] = ("ssl_cluster", "ivector_cluster", "union", "unconditioned", "per_cluster",
                               "ssl_cluster_tested", "ivector_cluster_tested")


# ----------------------------------------------------------------------------------------------------
# Primitives
# ----------------------------------------------------------------------------------------------------
def activation_prob(counts: np.ndarray, frames: np.ndarray) -> np.ndarray:
    """``p[c, j] = counts[c, j] / frames[c]`` (float64); rows with 0 frames get p = 0 (and a warning)."""
    counts = np.asarray(counts)
    frames = np.asarray(frames)
    empty = frames == 0
    if np.any(empty):
        log.warning("classes with no frames (p = 0): %s", np.flatnonzero(empty).tolist())
    denom = np.where(empty, 1, frames).astype(np.float64)
    return np.where(empty[:, None], 0.0, counts / denom[:, None])


def baseline(K: int, W: int) -> float:
    """Random baseline ``b = K / W`` (what p would be if the K activated neurons were random)."""
    return K / W


def above_baseline(counts: np.ndarray, frames: np.ndarray, K: int) -> np.ndarray:
    """Bool ``(classes, W)``: ``p(j|c) > K / W`` strictly, computed exactly as
    ``counts[c, j] * W > K * frames[c]`` on integers (no float rounding: p exactly at the baseline is
    not above). Classes with 0 frames are above for no neuron."""
    counts = np.asarray(counts, dtype=np.int64)
    frames = np.asarray(frames, dtype=np.int64)
    if counts.ndim != 2 or frames.shape != (counts.shape[0],):
        raise ValueError(f"counts (classes, W) and frames (classes,) expected, got {counts.shape}, {frames.shape}")
    W = counts.shape[1]
    K = int(K)
    if not (1 <= K <= W):
        raise ValueError(f"K must be in [1, W={W}], got {K}")
    if frames.size and int(frames.max()) * max(W, K) >= 2**62:
        raise OverflowError("frame counts too large for exact int64 comparison")
    return counts * W > K * frames[:, None]


def benjamini_hochberg(p: np.ndarray, q: float) -> np.ndarray:
    """Bool mask of the same shape: the p-values rejected by the Benjamini-Hochberg step-up procedure
    at false discovery rate `q` over all entries: the largest k with p_(k) <= k q / m, then every
    p <= p_(k)."""
    p = np.asarray(p, dtype=np.float64)
    flat = p.ravel()
    m = flat.size
    if m == 0:
        return np.zeros(p.shape, dtype=bool)
    order = np.argsort(flat, kind="stable")
    ok = flat[order] <= q * np.arange(1, m + 1) / m
    if not ok.any():
        return np.zeros(p.shape, dtype=bool)
    cutoff = flat[order][np.flatnonzero(ok).max()]
    return (p <= cutoff)


def above_baseline_tested(counts: np.ndarray, frames: np.ndarray, K: int, fdr: float) -> np.ndarray:
    """Bool ``(classes, W)``: neurons whose activation count in class c is significantly above the
    baseline K / W: one-sided binomial test of ``counts[c, j]`` successes in ``frames[c]`` trials
    against ``p0 = K / W`` (p-value ``P(X >= counts[c, j])``), with the Benjamini-Hochberg
    procedure at false discovery rate `fdr` over every (class, neuron) of the matrix. Unlike
    `above_baseline`, a class with few frames cannot make a neuron "above" by chance: the test
    needs enough frames to see the excess. Classes with 0 frames are above for no neuron."""
    from scipy.stats import binom

    counts = np.asarray(counts, dtype=np.int64)
    frames = np.asarray(frames, dtype=np.int64)
    W = counts.shape[1]
    p0 = int(K) / W
    pvals = np.ones(counts.shape, dtype=np.float64)
    rows = frames > 0
    if rows.any():
        pvals[rows] = binom.sf(counts[rows] - 1, frames[rows][:, None], p0)
    return benjamini_hochberg(pvals, float(fdr)) & (counts * W > int(K) * frames[:, None])


def as_fraction(rho) -> Fraction:
    """rho as an exact fraction in (0, 1]. A float is read as the decimal it prints as
    (``Fraction(repr(0.8)) == 4/5``; ``Fraction(0.8)`` would be slightly above 4/5)."""
    if isinstance(rho, Fraction):
        f = rho
    elif isinstance(rho, (int, np.integer)):
        f = Fraction(int(rho))
    elif isinstance(rho, (float, np.floating)):
        f = Fraction(repr(float(rho)))
    else:
        f = Fraction(str(rho))
    if not (0 < f <= 1):
        raise ValueError(f"rho must be in (0, 1], got {rho}")
    return f


def group_set(above: np.ndarray, group: Sequence[int], rho) -> np.ndarray:
    """Bool ``(W,)``: ``N(G) = { j : (1/|G|) sum_{c in G} above[c, j] >= rho }``, exactly:
    ``n_above * rho.denominator >= rho.numerator * |G|``."""
    group = [int(c) for c in group]
    if not group:
        raise ValueError("a group needs at least one class")
    r = as_fraction(rho)
    n_above = np.asarray(above, dtype=bool)[group].sum(axis=0, dtype=np.int64)
    return n_above * r.denominator >= r.numerator * len(group)


def exclusive_groups(sets: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Per group i: ``N_i \\ U_{k != i} N_k`` (bool (W,) each)."""
    sets = [np.asarray(s, dtype=bool) for s in sets]
    if not sets:
        raise ValueError("no sets")
    n = np.sum(sets, axis=0, dtype=np.int64)
    return [s & (n == 1) for s in sets]


def exclusive_union(sets: Sequence[np.ndarray]) -> np.ndarray:
    """Bool ``(W,)``: ``E = U_i ( N_i \\ U_{k != i} N_k )`` = in exactly one of the sets."""
    sets = [np.asarray(s, dtype=bool) for s in sets]
    if not sets:
        raise ValueError("no sets")
    return np.sum(sets, axis=0, dtype=np.int64) == 1


def pool_rows(counts: np.ndarray, frames: np.ndarray, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sum the rows of counts and frames that share a key: returns (unique keys, counts, frames)."""
    keys = np.asarray(keys)
    uniq, inv = np.unique(keys, return_inverse=True)
    pc = np.zeros((len(uniq), counts.shape[1]), dtype=np.int64)
    np.add.at(pc, inv, np.asarray(counts, dtype=np.int64))
    pf = np.zeros(len(uniq), dtype=np.int64)
    np.add.at(pf, inv, np.asarray(frames, dtype=np.int64))
    return uniq, pc, pf


# ----------------------------------------------------------------------------------------------------
# Named definitions, one layer
# ----------------------------------------------------------------------------------------------------
def _check(counts, frames, classes):
    counts = np.asarray(counts, dtype=np.int64)
    frames = np.asarray(frames, dtype=np.int64)
    classes = np.asarray(classes, dtype=np.int64)
    if counts.ndim != 2 or frames.shape != (counts.shape[0],) or classes.shape != (counts.shape[0], 2):
        raise ValueError(
            f"counts (C, W), frames (C,), classes (C, 2) expected; got {counts.shape}, {frames.shape}, {classes.shape}"
        )
    return counts, frames, classes


def layer_groups(name: str, counts, frames, classes, K: int, rho: float, fdr: float) -> dict[int, np.ndarray]:
    """Per group (SSL cluster for ``ssl_cluster``, i-vector cluster otherwise), the bool (W,) mask of
    the neurons of set ``name`` that are exclusive to that group. The set is the OR over groups.
    ``<name>_tested``: the same definition with "above baseline" replaced by the significance test
    (`above_baseline_tested` at false discovery rate `fdr`, over the classes that definition uses)."""
    counts, frames, classes = _check(counts, frames, classes)
    if name.endswith("_tested"):
        return _layer_groups(name[: -len("_tested")], counts, frames, classes, K, rho,
                             lambda c, f, k: above_baseline_tested(c, f, k, fdr))
    return _layer_groups(name, counts, frames, classes, K, rho, above_baseline)


def _layer_groups(name, counts, frames, classes, K, rho, above_fn) -> dict[int, np.ndarray]:
    W = counts.shape[1]
    if name == "ssl_cluster":
        keys, pc, pf = pool_rows(counts, frames, classes[:, 1])
        above = above_fn(pc, pf, K)
        # each pooled SSL cluster is its own group: N({c}) = A(c) for any rho in (0, 1]
        sets = [group_set(above, [i], rho) for i in range(len(keys))]
        return {int(k): m for k, m in zip(keys, exclusive_groups(sets))}
    if name == "unconditioned":
        keys, pc, pf = pool_rows(counts, frames, classes[:, 0])
        above = above_fn(pc, pf, K)
        sets = [group_set(above, [i], rho) for i in range(len(keys))]
        return {int(k): m for k, m in zip(keys, exclusive_groups(sets))}
    above = above_fn(counts, frames, K)
    gs = np.unique(classes[:, 0])
    if name == "ivector_cluster":
        sets = [group_set(above, np.flatnonzero(classes[:, 0] == g), rho) for g in gs]
        return {int(g): m for g, m in zip(gs, exclusive_groups(sets))}
    if name == "union":
        sets = [above[classes[:, 0] == g].any(axis=0) for g in gs]
        return {int(g): m for g, m in zip(gs, exclusive_groups(sets))}
    if name == "per_cluster":
        out = {int(g): np.zeros(W, dtype=bool) for g in gs}
        for c in np.unique(classes[:, 1]):
            rows = np.flatnonzero(classes[:, 1] == c)
            # one class per (g, c); several rows with the same pair would be pooled first
            keys, pc, pf = pool_rows(counts[rows], frames[rows], classes[rows, 0])
            ab = above_fn(pc, pf, K)
            for g, m in zip(keys, exclusive_groups([ab[i] for i in range(len(keys))])):
                out[int(g)] |= m
        return out
    raise ValueError(f"unknown neuron set {name!r}; known: {SET_NAMES}")


def _set(name, counts, frames, classes, K, rho) -> np.ndarray:
    groups = _layer_groups(name, *_check(counts, frames, classes), K, rho, above_baseline)
    W = np.asarray(counts).shape[1]
    out = np.zeros(W, dtype=bool)
    for m in groups.values():
        out |= m
    return out


def ssl_cluster(counts, frames, classes, K, rho) -> np.ndarray:
    """SSLN: pool over i-vector clusters, ``A(c)`` per SSL cluster c, then
    ``E = {j : j in A(c) for exactly one c}`` (a one-class group meets any rho iff above)."""
    return _set("ssl_cluster", counts, frames, classes, K, rho)


def ivector_cluster(counts, frames, classes, K, rho) -> np.ndarray:
    """IVN: ``N(G_g) = {j : #{c : j in A((g, c))} / |G_g| >= rho}``, ``E`` over the groups g."""
    return _set("ivector_cluster", counts, frames, classes, K, rho)


def union(counts, frames, classes, K, rho) -> np.ndarray:
    """``N(G_g) = {j : j in A((g, c)) for some c}``, then ``E`` over g (rho is not used)."""
    return _set("union", counts, frames, classes, K, rho)


def unconditioned(counts, frames, classes, K, rho) -> np.ndarray:
    """Pool over SSL clusters, ``A(g)`` per i-vector cluster g, ``E = {j in exactly one A(g)}``."""
    return _set("unconditioned", counts, frames, classes, K, rho)


def per_cluster(counts, frames, classes, K, rho) -> np.ndarray:
    """``U_c E_c`` with ``E_c = {j : j in A((g, c)) for exactly one g}`` (rho is not used)."""
    return _set("per_cluster", counts, frames, classes, K, rho)


# ----------------------------------------------------------------------------------------------------
# All layers, files, plot
# ----------------------------------------------------------------------------------------------------
def compute_neuron_sets(
    counts_data: CountsData,
    rho: float,
    fdr: float,
    sets: Iterable[str] = SET_NAMES,
    return_groups: bool = False,
):
    """``{set: {layer (1-based int): sorted list of neuron indices}}`` for every layer of the counts.

    With ``return_groups=True`` returns ``(sets, groups)`` where
    ``groups[set][layer][group] = sorted list`` (see :func:`layer_groups`).
    """
    sets = list(sets)
    for name in sets:
        if name not in SET_NAMES:
            raise ValueError(f"unknown neuron set {name!r}; known: {SET_NAMES}")
    as_fraction(rho)  # validate early
    empty = np.flatnonzero(counts_data.frames == 0)
    if empty.size:
        log.warning(
            "classes with no frames (never above baseline): %s",
            [tuple(counts_data.classes[i].tolist()) for i in empty],
        )
    Ks = counts_data.K
    out: dict[str, dict[int, list[int]]] = {n: {} for n in sets}
    grp: dict[str, dict[int, dict[int, list[int]]]] = {n: {} for n in sets}
    for l, (cnt, K) in enumerate(zip(counts_data.counts, Ks), start=1):
        for name in sets:
            groups = layer_groups(name, cnt, counts_data.frames, counts_data.classes, K, rho, fdr)
            mask = np.zeros(cnt.shape[1], dtype=bool)
            for m in groups.values():
                mask |= m
            out[name][l] = np.flatnonzero(mask).tolist()
            grp[name][l] = {g: np.flatnonzero(m).tolist() for g, m in groups.items()}
    return (out, grp) if return_groups else out


def neuron_set_params(counts_data: CountsData, rho: float, fdr: float) -> dict:
    """The parameters recorded in every ``neurons/<set>.json``."""
    r = as_fraction(rho)
    return {
        "rho": float(r),
        "fdr": float(fdr),
        "rho_fraction": f"{r.numerator}/{r.denominator}",
        "top_fraction": counts_data.top_fraction,
        "K": counts_data.K,
        "widths": counts_data.widths,
        "k_ivector": int(len(np.unique(counts_data.classes[:, 0]))),
        "k_ssl": int(len(np.unique(counts_data.classes[:, 1]))),
        "frames": counts_data.frames.tolist(),
        "empty_classes": [list(map(int, counts_data.classes[i])) for i in np.flatnonzero(counts_data.frames == 0)],
    }


def write_neuron_sets(
    sets: Mapping[str, Mapping[int, Sequence[int]]],
    set_paths: Mapping[str, str | os.PathLike],
    params: Mapping | None,
    table: str | os.PathLike,
    groups: Mapping[str, Mapping[int, Mapping[int, Sequence[int]]]] | None = None,
) -> dict[str, Path]:
    """Write every set to its JSON file (`set_paths[name]`) and the layer x set count table (`table`).

    Returns ``{set name: json path, "neuron_counts": tsv path}``.
    """
    paths: dict[str, Path] = {}
    for name, layers in sets.items():
        rec: dict = {
            "set": name,
            "params": dict(params or {}),
            "layers": {str(int(l)): sorted(int(j) for j in idx) for l, idx in sorted(layers.items())},
        }
        if groups is not None and name in groups:
            by_group: dict[str, dict[str, list[int]]] = {}
            for l, gmap in sorted(groups[name].items()):
                for g, idx in sorted(gmap.items()):
                    by_group.setdefault(str(int(g)), {})[str(int(l))] = sorted(int(j) for j in idx)
            rec["groups"] = by_group
        p = Path(set_paths[name])
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(json.dumps(rec, indent=1) + "\n")
        paths[name] = p
    tsv = Path(table)
    names = list(sets)
    layers_all = sorted({int(l) for layers in sets.values() for l in layers})
    with open(tsv, "w", newline="") as f:
        w = csv.writer(f, delimiter="\t", lineterminator="\n")
        w.writerow(["layer", *names])
        for l in layers_all:
            w.writerow([l, *[len(sets[n].get(l, ())) for n in names]])
        w.writerow(["total", *[sum(len(v) for v in sets[n].values()) for n in names]])
    paths["neuron_counts"] = tsv
    return paths


def tested_vs_rho(sets: Mapping[str, Mapping[int, Sequence[int]]]) -> list[dict]:
    """For every set that has a ``_tested`` twin, per layer and in total: the sizes of the rho set and
    the tested set, how many neurons both hold, and the share of the rho set that survives the test."""
    rows = []
    for name in sets:
        twin = f"{name}_tested"
        if twin not in sets:
            continue
        layers = sorted(set(sets[name]) | set(sets[twin]))
        tot = [0, 0, 0]
        for l in list(layers) + ["total"]:
            if l == "total":
                a, b, both = tot
            else:
                ra, rb = set(sets[name].get(l, ())), set(sets[twin].get(l, ()))
                a, b, both = len(ra), len(rb), len(ra & rb)
                tot = [tot[0] + a, tot[1] + b, tot[2] + both]
            rows.append({"set": name, "layer": l, "rho_set": a, "tested_set": b, "both": both,
                         "rho_surviving_pct": round(100 * both / a, 1) if a else None})
    return rows


def read_neuron_set(path: str | os.PathLike) -> dict[int, list[int]]:
    """``{layer: sorted indices}`` from a ``neurons/<set>.json``."""
    rec = json.loads(Path(path).read_text())
    return {int(l): list(v) for l, v in rec["layers"].items()}


def read_neuron_counts(tsv: str | os.PathLike) -> dict[str, dict[int, int]]:
    """``{set: {layer: count}}`` from ``neuron_counts.tsv`` (the ``total`` row is dropped)."""
    with open(tsv, newline="") as f:
        rows = list(csv.reader(f, delimiter="\t"))
    header, body = rows[0], rows[1:]
    out: dict[str, dict[int, int]] = {n: {} for n in header[1:]}
    for row in body:
        if row[0] == "total":
            continue
        for n, v in zip(header[1:], row[1:]):
            out[n][int(row[0])] = int(v)
    return out


def plot_neuron_counts(tsv_or_dict, png_path: str | os.PathLike, title: str | None = None) -> Path:
    """Grouped bar plot: neurons per layer, one bar per set. Accepts ``neuron_counts.tsv``, a
    ``{set: {layer: count}}`` dict or the ``{set: {layer: [indices]}}`` of :func:`compute_neuron_sets`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if isinstance(tsv_or_dict, (str, os.PathLike)):
        data = read_neuron_counts(tsv_or_dict)
    else:
        data = {
            n: {int(l): (v if isinstance(v, (int, np.integer)) else len(v)) for l, v in layers.items()}
            for n, layers in tsv_or_dict.items()
        }
    names = list(data)
    layers = sorted({l for d in data.values() for l in d})
    x = np.arange(len(layers))
    width = 0.8 / max(1, len(names))
    fig, ax = plt.subplots(figsize=(max(6.0, 0.6 * len(layers) * max(1, len(names)) ** 0.5 + 2), 4.0))
    for i, n in enumerate(names):
        total = sum(data[n].values())
        ax.bar(x + (i - (len(names) - 1) / 2) * width, [data[n].get(l, 0) for l in layers], width,
               label=f"{n} (total {total})")
    ax.set_xticks(x, [str(l) for l in layers])
    ax.set_xlabel("layer")
    ax.set_ylabel("number of neurons")
    ax.set_title(title or "Neurons per layer and set")
    ax.legend(fontsize="small")
    from speaker_neurons.utils import save_figure

    return save_figure(fig, png_path)


def recompute_from_npz(npz_path: str | os.PathLike, rho: float, fdr: float, sets: Iterable[str] = SET_NAMES):
    """Recompute the neuron sets from a saved ``activation_counts.npz`` (+ its JSON) alone::

        from speaker_neurons.analysis.neuron_sets import recompute_from_npz
        sets = recompute_from_npz("activation_counts.npz", rho=0.8, fdr=0.05)  # analysis.rho, analysis.fdr
        sets["ivector_cluster"][1]   # sorted neuron indices of layer 1

    Equivalent by hand, per layer l: ``W = counts_l<l>.shape[1]``, ``K = json["K"][l-1]``,
    ``above = counts * W > K * frames[:, None]``, then the definitions of this module.
    """
    from speaker_neurons.analysis.counts_data import load_counts

    return compute_neuron_sets(load_counts(npz_path), rho=rho, fdr=fdr, sets=sets)


PARTITION_OVERLAP_COLUMNS = ["partition", "layer", "rests_on", "other", "both", "jaccard"]


def jaccard(a: Iterable[int], b: Iterable[int]) -> float:
    """|a & b| / |a | b|; 1.0 for two empty sets (they agree)."""
    a, b = set(a), set(b)
    return 1.0 if not (a | b) else len(a & b) / len(a | b)


def partition_overlap(data: CountsData, rho, fdr: float, used: Mapping[int, Sequence[int]] | None = None,
                      set_name: str = "ivector_cluster") -> list[dict]:
    """What the i-vector partition costs the neuron sets: for every other partition the counts hold
    (`CountsData.partitions`), the `set_name` set it would give, against the one of the partition the sets
    rest on (`used`, or computed from `data`), per layer and in all (layer "total"): neurons in each, in both,
    and their Jaccard overlap."""
    if used is None:
        used = compute_neuron_sets(data, rho=rho, fdr=fdr, sets=[set_name])[set_name]
    rows = []
    for name in data.partitions:
        other = compute_neuron_sets(data.for_partition(name), rho=rho, fdr=fdr, sets=[set_name])[set_name]
        for layer in sorted(used):
            a, b = set(used[layer]), set(other[layer])
            rows.append({"partition": name, "layer": str(layer), "rests_on": len(a), "other": len(b),
                         "both": len(a & b), "jaccard": round(jaccard(a, b), 4)})
        a = {(l, j) for l in used for j in used[l]}
        b = {(l, j) for l in other for j in other[l]}
        rows.append({"partition": name, "layer": "total", "rests_on": len(a), "other": len(b), "both": len(a & b),
                     "jaccard": round(jaccard(a, b), 4)})
    return rows


def run_neuron_sets(counts_npz: str | os.PathLike, counts_json: str | os.PathLike,
                    set_paths: Sequence[str | os.PathLike], rho, fdr: float, table: str | os.PathLike,
                    plot: str | os.PathLike, tested_table: str | os.PathLike, title: str | None,
                    partitions_table: str | os.PathLike | None = None) -> dict[str, int]:
    """Every set named by `set_paths` (one `<set>.json` each) from the activation counts, the layer x set
    table and its plot, the rho sets against their tested twins (`tested_table`) and, in `partitions_table`,
    the speaker neurons each other i-vector partition would give against those of the partition they rest on
    (`partition_overlap`; no rows when the counts hold no other partition). Returns the totals."""
    import pandas as pd

    from speaker_neurons.analysis.counts_data import load_counts
    from speaker_neurons.utils import get_logger

    log = get_logger("neuron_sets")
    data = load_counts(counts_npz, counts_json)
    paths = {Path(p).stem: Path(p) for p in set_paths}
    result, groups = compute_neuron_sets(data, rho=rho, sets=list(paths), return_groups=True, fdr=fdr)
    write_neuron_sets(result, paths, neuron_set_params(data, rho=rho, fdr=fdr), table, groups=groups)
    plot_neuron_counts(table, plot, title=title)
    comparison = pd.DataFrame(tested_vs_rho(result), columns=["set", "layer", "rho_set", "tested_set", "both",
                                                               "rho_surviving_pct"])
    comparison.to_csv(tested_table, sep="\t", index=False)
    for r in comparison[comparison["layer"] == "total"].itertuples(index=False):
        log.info("%s: rho set %d, tested set %d (FDR %g), both %d: %s%% of the rho set survives the test", r.set,
                 r.rho_set, r.tested_set, fdr, r.both, r.rho_surviving_pct)
    if partitions_table is not None:
        used = result.get("ivector_cluster")
        overlap = pd.DataFrame(partition_overlap(data, rho, fdr, used=used), columns=PARTITION_OVERLAP_COLUMNS)
        overlap.to_csv(partitions_table, sep="\t", index=False)
        for r in overlap[overlap["layer"] == "total"].itertuples(index=False):
            log.info("speaker neurons from partition %s: %d, against %d from the partition the sets rest on, %d in "
                     "both: Jaccard %.3f", r.partition, r.other, r.rests_on, r.both, r.jaccard)
    totals = {name: sum(len(v) for v in layers.values()) for name, layers in result.items()}
    log.info("neuron totals: %s", totals)
    return totals
