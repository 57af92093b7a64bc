"""The erase ablation (METHOD §5): zero the W2 columns of a neuron set, no retraining, and score
the erased model with the SID heads trained on the unerased one.

Sets erased: the SSL-cluster neurons, and each i-vector cluster's own neurons (the `groups` of
`ivector_cluster.json`: the neurons exclusive to that cluster), each beside seeded random sets of the
same per-layer sizes (the control). Expected, if the sets mean what the method says: erasing cluster
g's neurons costs the segments of cluster g more than those of the other cluster, and more than a
random set of the same size.

Only the test segments are run through each erased model (the heads are fixed): one batched pass per
variant, every head reading the same pooled layers. The unerased model is run on the same segments in
the same batches, so an erase is the only difference between the two. Accuracy counts test segments of
enrolled speakers (closed set), overall and per i-vector cluster of the segment's utterance, with a
Wilson interval. An evaluation corpus' utterances get their cluster from their own audio (the analysis
corpus' i-vector extractor and k-means centres, rule assign_ivector_clusters), never by looking up
their id among the analysis corpus' utterances; the change against the unerased model is a paired
difference over segments (each segment's correctness averaged over the head seeds), with a Student-t
95% interval: the unit of sampling is the segment, and the heads' seeds are averaged, not counted as
samples.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
import torch

from speaker_neurons import pruning, sid, sid_pool
from speaker_neurons.statistics import bootstrap_interval, paired_delta, wilson_interval
from speaker_neurons.utils import get_logger, save_figure, write_json

log = get_logger("erase")


def erase_sets(ssl_cluster_json: str | Path | None, ivector_cluster_json: str | Path | None) -> dict[str, dict[int, list[int]]]:
    """{name: {layer: neurons}}: `ssl_cluster` (the whole SSLN set) and `ivector_cluster:<g>` per
    i-vector cluster g (its own neurons)."""
    from speaker_neurons.analysis.neuron_sets import read_neuron_set

    out: dict[str, dict[int, list[int]]] = {}
    if ssl_cluster_json:
        out["ssl_cluster"] = read_neuron_set(ssl_cluster_json)
    if ivector_cluster_json:
        rec = json.loads(Path(ivector_cluster_json).read_text())
        if "groups" not in rec:
            raise ValueError(f"{ivector_cluster_json} has no 'groups' (which cluster each neuron belongs to); "
                             "re-run rule neuron_sets")
        for g, layers in sorted(rec["groups"].items(), key=lambda kv: int(kv[0])):
            out[f"ivector_cluster:{int(g)}"] = {int(l): list(v) for l, v in layers.items()}
    return out


def _correct(heads: Sequence[sid.SIDHead], pooled: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """(seeds, n) bool: each head's correctness on each segment."""
    x = torch.from_numpy(np.ascontiguousarray(pooled, dtype=np.float32))
    with torch.no_grad():
        return np.stack([h(x).argmax(1).numpy() == labels for h in heads])


def _rows(label: str, kind: str, seed: int | None, correct: Mapping[str, np.ndarray], base: Mapping[str, np.ndarray],
          groups: np.ndarray, sizes: Mapping[int, int]) -> list[dict[str, Any]]:
    rows = []
    for ls, ok in correct.items():
        for cluster in ["all", *sorted({int(g) for g in groups.tolist()} - {-1})]:
            m = np.ones(len(groups), bool) if cluster == "all" else groups == cluster
            c = float(ok[:, m].mean(0).sum())  # correct segments, averaged over head seeds
            n = int(m.sum())
            lo, hi = wilson_interval(int(round(c)), n)
            pd_ = paired_delta(base[ls][:, m], ok[:, m])
            rows.append({"erased": label, "kind": kind, "random_seed": -1 if seed is None else int(seed),
                         "neurons": int(sum(sizes.values())), "layer_set": ls, "cluster": str(cluster), "n": n,
                         "accuracy": c / max(n, 1), "acc_ci_low": lo, "acc_ci_high": hi, "delta": pd_["delta"],
                         "delta_ci_low": pd_["ci95"][0], "delta_ci_high": pd_["ci95"][1]})
    return rows


#: Test segments pooled per call (whole utterances, so a file's crops are featurised together): the pooled
#: layers of one such block are kept at a time, and of every variant only each segment's correctness.
SEGMENTS_PER_BLOCK = 2048


def _blocks(test_segs: pd.DataFrame, size: int | None = None) -> list[np.ndarray]:
    """Row indices of `test_segs` in blocks of about `size` (`SEGMENTS_PER_BLOCK`) segments that never
    split an utterance."""
    size = SEGMENTS_PER_BLOCK if size is None else int(size)
    utt = test_segs["utt_id"].astype(str).to_numpy()
    cuts = [0] + [i for i in range(1, len(utt)) if utt[i] != utt[i - 1]] + [len(utt)]
    blocks, start = [], 0
    for a, b in zip(cuts[:-1], cuts[1:]):
        if b - start >= size or b == len(utt):
            blocks.append(np.arange(start, b))
            start = b
    return [x for x in blocks if len(x)]


def run_ablation(model, test_segs: pd.DataFrame, labels: np.ndarray, groups: np.ndarray,
                 heads: Mapping[str, Sequence[sid.SIDHead]], sets: Mapping[str, Mapping[int, Sequence[int]]],
                 random_seeds: Sequence[int], max_batch_seconds: float, amp: bool | str) -> pd.DataFrame:
    """One row per (erased set or its random control, layer set, cluster): accuracy and its change.

    `test_segs`: the segments to score (rows as `sid_pool.segments` makes them), `labels` their enrolled
    speaker index (all >= 0), `groups` their i-vector cluster (-1 = none), `heads` the unerased model's
    SID heads per layer set (one per seed). Each variant (the unerased model, each erased set, each
    random control) is one batched pass of the upstream over the test segments, on the model's device
    under `utils.inference_autocast(device, amp)` (config upstream.amp); every head reads the same pooled
    layers, block by block (`SEGMENTS_PER_BLOCK`), and only each segment's correctness is kept."""
    if (labels < 0).any():
        raise ValueError("run_ablation scores enrolled speakers only (labels >= 0)")
    blocks = _blocks(test_segs)
    caches: list[dict] = [{} for _ in blocks]  # each block's features, computed once for every variant

    def score(m) -> dict[str, np.ndarray]:
        from tqdm import tqdm

        out = {ls: np.zeros((len(hs), len(test_segs)), dtype=bool) for ls, hs in heads.items()}
        bar = tqdm(total=len(test_segs), desc="erase variant", unit="seg", mininterval=5)
        for rows, cache in zip(blocks, caches):
            part = test_segs.iloc[rows].reset_index(drop=True)
            pooled = sid_pool.pool_layer_means(m, part, max_batch_seconds=max_batch_seconds, progress=False,
                                               feature_cache=cache, amp=amp)
            for ls, hs in heads.items():
                out[ls][:, rows] = _correct(hs, pooled, labels[rows])
            bar.update(len(rows))
        bar.close()
        return out

    base = score(model)
    rows = _rows("none", "unerased", None, base, base, groups, {})
    for label, sizes, kind, seed, erased in _variants(model, sets, random_seeds):
        rows += _rows(label, kind, seed, score(erased), base, groups, sizes)
        del erased
    return pd.DataFrame(rows)


def _variants(model, sets: Mapping[str, Mapping[int, Sequence[int]]], random_seeds: Sequence[int]):
    """(set name, per-layer sizes, kind, random seed, erased copy of the model) for every set and, after
    it, its seeded random controls of the same per-layer sizes."""
    widths = model.ffn_widths
    for label, neurons in sets.items():
        sizes = {int(l): len(set(v)) for l, v in neurons.items()}
        variants = [("set", None, neurons)] + [("random", s, pruning.random_like(neurons, widths, s))
                                               for s in random_seeds]
        for kind, seed, ns in variants:
            log.info("erasing %s%s (%d neurons)", label, "" if seed is None else f" random seed {seed}",
                     sum(sizes.values()))
            yield label, sizes, kind, seed, copy.deepcopy(model).erase_ffn(ns)


def run_pr_ablation(model, test_rows: pd.DataFrame, targets: Mapping[str, np.ndarray],
                    heads: Mapping[str, Sequence[Any]], sets: Mapping[str, Mapping[int, Sequence[int]]],
                    random_seeds: Sequence[int], resamples: int, seed: int,
                    max_batch_seconds: float, amp: bool | str) -> pd.DataFrame:
    """The erase ablation in phoneme recognition: one row per (erased set or its random control, PR
    layer set): the PER of the unerased model's PR heads (`heads`, one per seed) decoding the erased
    model on the PR test utterances `test_rows`, and its change against the unerased model, with a
    paired bootstrap interval over utterances (each utterance's edits averaged over the head seeds).
    Each variant is one batched pass of the upstream (`pr.utterance_edits`, every head on the same
    hidden states) under `utils.inference_autocast(device, amp)`."""
    from speaker_neurons.pr import utterance_edits as edits_of
    from speaker_neurons.utils import inference_autocast

    def utterance_edits(m, *args):
        with inference_autocast(next(m.parameters()).device, amp):
            return edits_of(m, *args)

    ref = np.array([len(targets[u]) for u in test_rows["utt_id"]], dtype=np.float64)

    def rows(label, kind, seed_, edits, base, sizes):
        out = []
        for ls, e in edits.items():
            mean_e = e.mean(0)
            diff = mean_e - base[ls].mean(0)
            per, dper = float(mean_e.sum() / ref.sum()), float(diff.sum() / ref.sum())
            lo, hi = bootstrap_interval(mean_e, ref, resamples, seed)
            dlo, dhi = bootstrap_interval(diff, ref, resamples, seed)
            out.append({"erased": label, "kind": kind, "random_seed": -1 if seed_ is None else int(seed_),
                        "neurons": int(sum(sizes.values())), "layer_set": ls, "n": len(ref), "phones": int(ref.sum()),
                        "per": per, "per_ci_low": lo, "per_ci_high": hi, "delta": dper, "delta_ci_low": dlo,
                        "delta_ci_high": dhi})
        return out

    base = utterance_edits(model, test_rows, targets, heads, max_batch_seconds)
    table = rows("none", "unerased", None, base, base, {})
    for label, sizes, kind, s, erased in _variants(model, sets, random_seeds):
        table += rows(label, kind, s, utterance_edits(erased, test_rows, targets, heads, max_batch_seconds), base, sizes)
    return pd.DataFrame(table)


def summarize_pr(table: pd.DataFrame) -> dict[str, Any]:
    """Per erased set and PR layer set: the change in PER with its interval and its random controls' mean."""
    out: dict[str, Any] = {}
    for r in table[table["kind"] == "set"].itertuples(index=False):
        ctrl = table[(table["kind"] == "random") & (table["erased"] == r.erased) & (table["layer_set"] == r.layer_set)]
        out.setdefault(r.erased, {"neurons": int(r.neurons)})[r.layer_set] = {
            "per": r.per, "delta_per": r.delta, "delta_ci95": [r.delta_ci_low, r.delta_ci_high], "n": int(r.n),
            "random_delta_mean": float(ctrl["delta"].mean()) if len(ctrl) else None,
            "random_delta_range": [float(ctrl["delta"].min()), float(ctrl["delta"].max())] if len(ctrl) else None}
    base = table[table["kind"] == "unerased"]
    out["unerased"] = {r.layer_set: {"per": r.per, "ci95": [r.per_ci_low, r.per_ci_high], "n": int(r.n)}
                       for r in base.itertuples(index=False)}
    return out


def summarize(table: pd.DataFrame) -> dict[str, Any]:
    """Per erased set, layer set and cluster: the set's delta with its interval and its random controls'
    mean delta (min..max over seeds)."""
    out: dict[str, Any] = {}
    real = table[table["kind"] == "set"]
    for r in real.itertuples(index=False):
        ctrl = table[(table["kind"] == "random") & (table["erased"] == r.erased) & (table["layer_set"] == r.layer_set)
                     & (table["cluster"] == r.cluster)]["delta"]
        out.setdefault(r.erased, {"neurons": int(r.neurons)}).setdefault(r.layer_set, {})[r.cluster] = {
            "accuracy": r.accuracy, "n": int(r.n), "delta": r.delta, "delta_ci95": [r.delta_ci_low, r.delta_ci_high],
            "random_delta_mean": float(ctrl.mean()) if len(ctrl) else None,
            "random_delta_range": [float(ctrl.min()), float(ctrl.max())] if len(ctrl) else None}
    base = table[table["kind"] == "unerased"]
    out["unerased"] = {ls: {r.cluster: {"accuracy": r.accuracy, "n": int(r.n), "ci95": [r.acc_ci_low, r.acc_ci_high]}
                            for r in g.itertuples(index=False)} for ls, g in base.groupby("layer_set", sort=False)}
    return out


def plot(table: pd.DataFrame, png: str | Path, title: str = "") -> Path:
    """Per layer set: the change in SID accuracy (points) per erased set and i-vector cluster, with
    the paired 95% interval, beside the random controls' mean (hatched, min..max as a bar)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    real = table[table["kind"] == "set"]
    layer_sets = list(dict.fromkeys(real["layer_set"]))
    erased = list(dict.fromkeys(real["erased"]))
    clusters = list(dict.fromkeys(real["cluster"]))
    fig, axes = plt.subplots(1, max(1, len(layer_sets)), figsize=(4.5 * max(1, len(layer_sets)), 3.8), sharey=True,
                             squeeze=False)
    width = 0.8 / max(1, len(clusters))
    for ax, ls in zip(axes[0], layer_sets):
        x = np.arange(len(erased))
        for i, c in enumerate(clusters):
            sel = real[(real["layer_set"] == ls) & (real["cluster"] == c)].set_index("erased").reindex(erased)
            off = x + (i - (len(clusters) - 1) / 2) * width
            d = 100 * sel["delta"].to_numpy()
            err = 100 * np.abs(np.stack([sel["delta"] - sel["delta_ci_low"], sel["delta_ci_high"] - sel["delta"]]))
            bars = ax.bar(off - width / 4, d, width / 2, yerr=err, capsize=2, label=f"cluster {c}")
            ctrl = table[(table["kind"] == "random") & (table["layer_set"] == ls) & (table["cluster"] == c)]
            g = ctrl.groupby("erased")["delta"]
            mean, lo, hi = (100 * g.mean().reindex(erased), 100 * g.min().reindex(erased), 100 * g.max().reindex(erased))
            ax.bar(off + width / 4, mean, width / 2, yerr=np.stack([mean - lo, hi - mean]), capsize=2, hatch="//",
                   color=bars.patches[0].get_facecolor(), alpha=0.4)
        ax.axhline(0, color="k", lw=0.6)
        ax.set_xticks(x, erased, rotation=20, fontsize="small")
        ax.set_title(f"SID head: {ls}", fontsize="small")
    axes[0][0].set_ylabel("change in SID accuracy (points)")
    axes[0][0].legend(fontsize="x-small", title="solid: set, hatched: random", title_fontsize="x-small")
    fig.suptitle(title or "Erase ablation", fontsize="small")
    return save_figure(fig, png)


# ------------------------------------------------------------------------------------------- for the workflow
def cluster_groups(utt_ids: Sequence[str], clusters_tsv: str | Path, corpus: str) -> np.ndarray:
    """(n,) int64: the i-vector cluster of each of `utt_ids` (utterances of corpus `corpus`) in the clusters
    table `clusters_tsv`, which must label this corpus' utterances: the analysis corpus' own
    `clusters.tsv` when `corpus` is the analysis corpus, else the clusters assigned to `corpus` from each
    utterance's own audio (`clusters.run_assign_ivector_clusters`). An utterance the table does not
    name is an error: the table labels another corpus."""
    from speaker_neurons.analysis.clusters import read_utterance_clusters

    clusters = read_utterance_clusters(clusters_tsv)
    missing = [u for u in utt_ids if u not in clusters]
    if missing:
        raise ValueError(f"{clusters_tsv} gives no i-vector cluster to {len(missing)} of the {len(utt_ids)} test "
                         f"utterances of corpus {corpus!r} (e.g. {', '.join(map(str, missing[:5]))}): it labels another "
                         "corpus. An evaluation corpus' clusters are assigned from its own audio (rule "
                         "assign_ivector_clusters); re-run the workflow rather than passing another corpus' table.")
    return np.array([clusters[u] for u in utt_ids], dtype=np.int64)


def run(model, pooled_path, manifest_path, clusters_tsv, sid_heads, sets: Mapping[str, Mapping[int, Sequence[int]]],
        random_seeds: Sequence[int], max_batch_seconds: float, out_table, out_summary, out_plot, out_pr_table,
        title: str, k_ssl: int | None, pr: Mapping[str, Any] | None, amp: bool | str, corpus: str) -> dict[str, Any]:
    """The erase ablation of `model` on the test segments of its pooled file (`sid.read_segments`) of
    corpus `corpus` with the SID heads `sid_heads`, accuracy per i-vector cluster of each segment's
    utterance (`clusters_tsv`, labelling this corpus' utterances: `cluster_groups`); with `pr` (heads,
    manifest, phones, bootstrap, bootstrap_seed) the same sets decoded by the PR heads on the PR test
    split (else `out_pr_table` is left empty). Forwards under `utils.inference_autocast(device, amp)`.
    Writes the tables, the summary JSON and the plot."""
    segs = sid_pool.read_segments(pooled_path, manifest_path)
    data = sid_pool.make_data(np.empty((len(segs), 0, 0), dtype=np.float32), segs)  # labels and splits only
    sel = sid.closed_set(data, "test")
    test = segs.iloc[sel].reset_index(drop=True)
    groups = cluster_groups(test["utt_id"].astype(str).tolist(), clusters_tsv, corpus)
    heads = {ls: [h for _, h in hs] for ls, hs in sid.load_heads(sid_heads).items()}
    table = run_ablation(model, test, data.labels[sel], groups, heads, sets, random_seeds,
                         max_batch_seconds=max_batch_seconds, amp=amp)
    table.to_csv(out_table, sep="\t", index=False, float_format="%.6f")
    summary = summarize(table)
    if pr is not None:
        summary["pr"] = _pr_ablation(model, pr, sets, random_seeds, max_batch_seconds, out_pr_table, amp)
    else:
        Path(out_pr_table).write_text("")
    summary["k_ssl"] = k_ssl
    write_json(out_summary, summary)
    plot(table, out_plot, title=title)
    for name in sets:
        s = summary[name].get("all") or summary[name].get(next(iter(heads))) or {}
        for c, v in s.items():
            log.info("erase %s, cluster %s: %+.2f points [%+.2f, %+.2f]; random %+.2f", name, c, 100 * v["delta"],
                     100 * v["delta_ci95"][0], 100 * v["delta_ci95"][1], 100 * (v["random_delta_mean"] or 0))
    return {"sets": list(sets), "test_segments": len(test), "corpus": corpus,
            "test_segments_per_cluster": {str(c): int(n) for c, n in zip(*np.unique(groups, return_counts=True))}}


def _pr_ablation(model, pr: Mapping[str, Any], sets, random_seeds, max_batch_seconds, out_table,
                 amp) -> dict[str, Any]:
    from speaker_neurons.data.lexicon import read_phone_targets
    from speaker_neurons.data.manifest import read_manifest
    from speaker_neurons.pr import load_heads

    heads, vocab = load_heads(pr["heads"])
    ids = {ph: i for i, ph in enumerate(vocab)}
    phones = read_phone_targets(pr["phones"])
    rows = read_manifest(pr["manifest"])
    rows = rows[(rows["split"] == "test") & rows["utt_id"].isin(set(phones))].reset_index(drop=True)
    targets = {u: np.array([ids[ph] for ph in phones[u]], dtype=np.int64) for u in rows["utt_id"]}
    table = run_pr_ablation(model, rows, targets, heads, sets, random_seeds, int(pr["bootstrap"]),
                            int(pr["bootstrap_seed"]), max_batch_seconds=max_batch_seconds, amp=amp)
    table.to_csv(out_table, sep="\t", index=False, float_format="%.6f")
    return summarize_pr(table)
