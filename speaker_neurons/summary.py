"""The run's headline figures next to the paper's (METHOD §0, §3, §4, §5 and §9).

`build_summary` reads what the other stages wrote and writes three files:
* `summary.tsv`: one row per figure (section, metric, model, value, 95% interval, n, the paper's
  value where it has one, a note);
* `summary.md`: a short text: the corpus's clusters, the neurons found, SID of every model, the
  pruning comparison at equal widths with a verdict on the paper's direction, and the erase deltas;
* `sid_vs_width.png`: SID accuracy (and EER) against the kept share of FFN neurons, one line per
  strategy with its interval band, one panel per SID layer set;
* `paired_vs_width.png`: the paired differences between strategies (protected - l1, protected -
  random, l1 - random) against the kept share, with their intervals and the headroom.

The paper's model is MelHuBERT base (12 x 768 x 3072) on LibriSpeech / VoxCeleb1; a small demo model
on a synthesized corpus is not expected to match its values, only, where the method works, their
direction. The verdicts say which, from paired intervals over the same test items, with what the
test set can detect (`speaker_neurons.paired`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from speaker_neurons.statistics import difference_interval, per_difference_interval

PathLike = str | os.PathLike

# The published figures (docs/METHOD.md), as fractions like every value of summary.tsv: MelHuBERT base, k_ssl = 3,
# k_ivector = 2. Unpruned SID is "about 64-66%": 0.65 stands for it.
PAPER = {
    "purity_male": 0.9723,
    "purity_female": 0.8982,
    "ivector_cluster_total": 2002,
    "sid_unpruned": 0.65,
    "sid_l1_pset": 0.5408,
    "sid_protected_pset": 0.6296,
    "erase_ssl_cluster": -0.0382,
    "per_unpruned": 0.0817,  # Property Neurons, MelHuBERT (PR beside SID); 10.66 protected, 12.03 l1 at 577 rows
}


def controls_verdict(dependence: tuple[float, float, float] | None, gap: tuple[float, float, float] | None,
                     min_dependence: float, min_gap: float, ffn_keep: float) -> str:
    """In words: whether this model and task can show a difference between pruning strategies."""
    words = []
    if gap is not None and (gap[0] < min_gap or gap[1] <= 0):
        words.append(f"all layers score {100 * gap[0]:+.1f} points [{100 * gap[1]:+.1f}, {100 * gap[2]:+.1f}] over the "
                     f"input alone (hidden_0; threshold {100 * min_gap:g}): the Transformer adds nothing measurable "
                     "to its input")
    if dependence is not None and (dependence[0] < min_dependence or dependence[1] <= 0):
        words.append(f"keeping {100 * ffn_keep:g}% of the FFN neurons costs SID only {100 * dependence[0]:+.1f} points "
                     f"[{100 * dependence[1]:+.1f}, {100 * dependence[2]:+.1f}] (threshold {100 * min_dependence:g}): SID "
                     "does not depend on the FFNs, so **a comparison of pruning strategies on this model and task "
                     "cannot show anything**")
    if not words:
        return ("SID depends on the FFN neurons and the Transformer adds to its input: pruning strategies can "
                "differ here")
    return "; ".join(words)


def _read(path: PathLike | None) -> Any:
    return json.loads(Path(path).read_text()) if path else None


def _pct(x: float | None) -> str:
    return "n/a" if x is None or (isinstance(x, float) and np.isnan(x)) else f"{100 * x:.2f}"


def _cell(row, value: str) -> str:
    """'value [low, high]' in percent of a table row's `value` and its interval ('' without a row)."""
    if row is None:
        return ""
    v, lo, hi = (getattr(row, f) for f in (value, f"{value}_ci_low", f"{value}_ci_high"))
    return f"{100 * v:.1f} [{100 * lo:.1f}, {100 * hi:.1f}]"


def paired_table(table: pd.DataFrame, models: Sequence[Mapping[str, Any]], task: str,
                 comparison: Mapping[str, Any]) -> pd.DataFrame:
    """Every pair of strategies (`paired.STRATEGY_PAIRS`) run at one width of one parent, per layer set
    but hidden_0 (no pruning changes it): the paired difference of `task` ("sid" or "pr") over the same
    test items (`paired.paired_difference`), the kept share, and the headroom (unpruned minus the FFN
    control; PR: the control's PER minus the unpruned one)."""
    from speaker_neurons.paired import STRATEGY_PAIRS, headroom, paired_difference, read_predictions

    key = {"sid": "sid", "pr": "per"}[task]
    preds = {m["name"]: m.get(f"{task}_predictions") for m in models}
    ctrl_of = {m["parent"]: m["name"] for m in models if m.get("strategy") == "control"}
    loaded: dict[str, pd.DataFrame] = {}

    def pred(name):
        if name not in loaded:
            loaded[name] = read_predictions(preds[name])
        return loaded[name]

    rows = []
    if table.empty:
        return pd.DataFrame(rows)
    by_model = {(r.model, r.layer_set): r._asdict() for r in table.itertuples(index=False)}
    pruned = table[~table["strategy"].isin(["none", "control"])]
    for (parent, target, ls), g in pruned.groupby(["parent", "target", "layer_set"], sort=False):
        if ls == "hidden_0":
            continue
        by = {r.strategy: r for r in g.itertuples(index=False)}
        room = headroom(by_model.get((parent, ls)), by_model.get((ctrl_of.get(parent), ls)), key,
                        higher_is_better=task == "sid")
        for sa, sb in STRATEGY_PAIRS:
            if sa not in by or sb not in by or not preds.get(by[sa].model) or not preds.get(by[sb].model):
                continue
            ma, mb = by[sa].model, by[sb].model
            res = paired_difference(pred(ma), pred(mb), ls, task, resamples=int(comparison["resamples"]),
                                    seed=int(comparison["seed"]), names=(preds[ma], preds[mb]))
            rows.append({"parent": parent, "target": target, "layer_set": ls, "a": sa, "b": sb, "model_a": ma,
                         "model_b": mb, "kept_share": (by[sa].kept_share + by[sb].kept_share) / 2,
                         "difference": res["difference"], "ci_low": res["ci95"][0], "ci_high": res["ci95"][1],
                         "half_width": res["half_width"], "utterances": res["utterances"], "items": res["items"],
                         "headroom": room})
    return pd.DataFrame(rows)


def plot_paired(tables: Mapping[str, pd.DataFrame], png: PathLike) -> Path:
    """The paired differences (a - b, 95% interval) against the kept share of FFN neurons, one line
    per strategy pair, one panel per task, parent and layer set; the dotted lines are +- the headroom."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from speaker_neurons.utils import save_figure

    panels = [(task, p, ls) for task, t in tables.items() if not t.empty
              for p in dict.fromkeys(t["parent"]) for ls in dict.fromkeys(t[t["parent"] == p]["layer_set"])]
    if not panels:
        fig, ax = plt.subplots(figsize=(5, 2))
        ax.text(0.5, 0.5, "no two pruning strategies at one width in this run", ha="center", va="center")
        ax.axis("off")
        return save_figure(fig, png)
    fig, axes = plt.subplots(1, len(panels), figsize=(4.4 * len(panels), 3.4), squeeze=False)
    colours = {("protected", "l1"): "tab:red", ("protected", "random"): "tab:orange", ("l1", "random"): "tab:blue"}
    for ax, (task, parent, ls) in zip(axes[0], panels):
        t = tables[task]
        sub = t[(t["parent"] == parent) & (t["layer_set"] == ls)]
        for (a, b), g in sub.groupby(["a", "b"], sort=False):
            g = g.sort_values("kept_share")
            y = 100 * g["difference"].to_numpy(dtype=float)
            err = np.vstack([y - 100 * g["ci_low"].to_numpy(dtype=float), 100 * g["ci_high"].to_numpy(dtype=float) - y])
            ax.errorbar(100 * g["kept_share"].to_numpy(dtype=float), y, yerr=err, fmt="o-", capsize=3, color=colours.get((a, b)),
                        label=f"{a} - {b}")
        room = sub["headroom"].dropna()
        if len(room):
            for sign in (1, -1):
                ax.axhline(sign * 100 * float(room.iloc[0]), color="k", ls=":", lw=0.8)
        ax.axhline(0, color="k", lw=0.8)
        what = "SID accuracy" if task == "sid" else "PER"
        ax.set_title(f"{parent}: {what} difference, {ls}", fontsize="small")
        ax.set_xlabel("FFN neurons kept (%)")
        ax.set_ylabel("a - b (points), paired 95%")
        ax.legend(fontsize="x-small")
    return save_figure(fig, png)


def pruning_table(models: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    """One row per (model with SID, layer set): parent, strategy, target, kept share, SID and EER.
    An unpruned model is its own parent with strategy `none` and kept share 1."""
    rows = []
    for m in models:
        res = _read(m.get("sid"))
        if res is None:
            continue
        rec = _read(m.get("prune"))
        kept = rec["kept_total"] / rec["width_total"] if rec else 1.0
        for ls, r in res.items():
            if not isinstance(r, dict) or "test_accuracy" not in r:
                continue
            rows.append({"model": m["name"], "parent": m.get("parent") or m["name"],
                         "strategy": m.get("strategy") or "none", "target": str(m.get("target") or "none"),
                         "kept_share": kept, "kept_neurons": rec["kept_total"] if rec else None,
                         "protected_lost": rec["protected_lost_total"] if rec else None, "layer_set": ls,
                         "sid": r["test_accuracy"], "sid_ci_low": r["test_ci95"][0], "sid_ci_high": r["test_ci95"][1],
                         "n_test": r["per_seed"][0]["n"], "seeds": len(r["per_seed"]), "lr": r["lr"],
                         "eer": r.get("eer"), "eer_ci_low": (r.get("eer_ci95") or [None, None])[0],
                         "eer_ci_high": (r.get("eer_ci95") or [None, None])[1],
                         "trials": (r.get("target_trials") or 0) + (r.get("nontarget_trials") or 0)})
    return pd.DataFrame(rows)


def pr_table(models: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    """One row per (model with PR, layer set): parent, strategy, target, kept share, PER and its interval."""
    rows = []
    for m in models:
        res = _read(m.get("pr"))
        if res is None:
            continue
        rec = _read(m.get("prune"))
        kept = rec["kept_total"] / rec["width_total"] if rec else 1.0
        for ls, r in res["layer_sets"].items():
            rows.append({"model": m["name"], "parent": m.get("parent") or m["name"],
                         "strategy": m.get("strategy") or "none", "target": str(m.get("target") or "none"),
                         "kept_share": kept, "layer_set": ls, "per": r["test_per"], "per_ci_low": r["test_ci95"][0],
                         "per_ci_high": r["test_ci95"][1], "n_test": r.get("test_utterances"),
                         "phones": r.get("test_phones"), "seeds": len(r["per_seed"]), "lr": r["lr"]})
    return pd.DataFrame(rows)


STRATEGY_COLOURS = {"l1": "tab:blue", "protected": "tab:red", "random": "tab:gray", "control": "tab:green"}


def plot_vs_width(table: pd.DataFrame, png: PathLike, value: str, task: str, ylabel: str, empty: str,
                  eer: bool = False) -> Path:
    """Per parent and layer set: `value` (with its `<value>_ci_low/high` band) against the kept share
    of FFN neurons, one line per strategy from the unpruned model (a black square); with `eer`, a
    second row of verification EER."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from speaker_neurons.utils import save_figure

    if table.empty:
        fig, ax = plt.subplots(figsize=(5, 2))
        ax.text(0.5, 0.5, empty, ha="center", va="center")
        ax.axis("off")
        return save_figure(fig, png)
    panels = [(p, ls) for p in dict.fromkeys(table["parent"]) for ls in dict.fromkeys(table["layer_set"])]
    rows = 2 if eer else 1
    fig, axes = plt.subplots(rows, len(panels), figsize=(4.2 * len(panels), 3.2 * rows), squeeze=False, sharex=True)
    lo, hi = f"{value}_ci_low", f"{value}_ci_high"
    for j, (parent, ls) in enumerate(panels):
        sub = table[(table["parent"] == parent) & (table["layer_set"] == ls)]
        base = sub[sub["strategy"] == "none"]
        for strategy in [s for s in dict.fromkeys(sub["strategy"]) if s != "none"]:
            s = pd.concat([base, sub[sub["strategy"] == strategy]]).sort_values("kept_share")
            c = STRATEGY_COLOURS.get(strategy)
            axes[0][j].plot(100 * s["kept_share"], 100 * s[value], "o-", color=c, label=strategy)
            axes[0][j].fill_between(100 * s["kept_share"], 100 * s[lo], 100 * s[hi], color=c, alpha=0.15)
            if eer:
                e = s.dropna(subset=["eer"])
                axes[1][j].plot(100 * e["kept_share"], 100 * e["eer"].astype(float), "o-", color=c, label=strategy)
        if len(base):
            b = base.iloc[0]
            axes[0][j].errorbar([100.0], [100 * b[value]], yerr=[[100 * (b[value] - b[lo])], [100 * (b[hi] - b[value])]],
                                fmt="ks", label="unpruned", capsize=3)
        axes[0][j].set_title(f"{parent}: {task} head {ls}", fontsize="small")
        axes[rows - 1][j].set_xlabel("FFN neurons kept (%)")
    axes[0][0].set_ylabel(ylabel)
    if eer:
        axes[1][0].set_ylabel("verification EER (%)")
    axes[0][0].legend(fontsize="x-small")
    return save_figure(fig, png)


def plot_sid_vs_width(table: pd.DataFrame, png: PathLike) -> Path:
    """Per parent and layer set: SID (top) and EER (bottom) against the kept share of FFN neurons."""
    return plot_vs_width(table, png, "sid", "SID", "SID test accuracy (%), 95% band",
                         "no SID results in this run (sid.enabled: false)", eer=True)


def plot_pr_vs_width(table: pd.DataFrame, png: PathLike) -> Path:
    """Per parent and layer set: PER against the kept share of FFN neurons (lower is better); a note
    instead where PR scored no pruned model."""
    if not table.empty and (table["strategy"] == "none").all():
        table = table.iloc[0:0]
        empty = ("PR scored the unpruned models only\n(pr.pruned_models: false, the 10-minute demo;\n"
                 "configs/demo-full.yaml scores every pruned model)")
    else:
        empty = "no PR results in this run (pr.enabled: false)"
    return plot_vs_width(table, png, "per", "PR", "PER (%), 95% band (lower is better)", empty)


def _paired_section(pt: pd.DataFrame, task: str, add, null_share: float) -> list[str]:
    """Rows (section `pruning` for SID, `pr_pruning` for PR; model "a - b") and lines of summary.md for
    the paired differences of `paired_table`, each with its verdict in words and the power of the test,
    plus the headroom of each parent and layer set."""
    from speaker_neurons.paired import paired_verdict

    if pt.empty:
        return []
    section, name = ("pruning", "SID") if task == "sid" else ("pr_pruning", "PER")
    md = ["", f"Pruning at equal widths, paired: {name} of a minus {name} of b over the same test items, head seeds "
          "averaged, 95% interval from a bootstrap over whole test utterances. 'detects' is the interval's "
          "half-width; the headroom is what the task loses from the unpruned model to its FFN control"
          + (" (the paper, MelHuBERT base at its protected-set size: protected 62.96% vs l1 54.08%):" if task == "sid"
             else " (Property Neurons, MelHuBERT at 577 rows per layer: PER protected 10.66% vs l1 12.03%):"), ""]
    for (parent, ls), g in pt.groupby(["parent", "layer_set"], sort=False):
        room = g["headroom"].iloc[0]
        if room is not None and not pd.isna(room):
            add(section, f"headroom_{ls}", parent, float(room),
                note="unpruned minus its FFN control" if task == "sid" else "PER of the FFN control minus unpruned")
    for r in pt.itertuples(index=False):
        room = None if r.headroom is None or pd.isna(r.headroom) else float(r.headroom)
        v = paired_verdict(r.difference, r.ci_low, r.ci_high, room, r.a, r.b, max_null_share=null_share,
                           higher_is_better=task == "sid")
        add(section, f"{r.a}_minus_{r.b}_{r.layer_set}", f"{r.model_a} - {r.model_b}", r.difference, r.ci_low,
            r.ci_high, n=r.utterances, note=f"{v}; kept {100 * r.kept_share:.1f}%, {r.items} test items")
        md.append(f"- {r.parent}, target {r.target} (kept {100 * r.kept_share:.1f}%), {name} {r.layer_set}, "
                  f"{r.a} - {r.b}: {v}.")
    return md + [""]


def _lost_section(models: Sequence[Mapping[str, Any]], add) -> list[str]:
    """Rows (section `pruning`, metrics <set>_lost, n = the set's size) and a table of summary.md: how
    many of the parent's speaker (ivector_cluster) and SSL-cluster neurons each pruned model lost."""
    lines = []
    for m in models:
        rec = _read(m.get("prune"))
        if not rec or not rec.get("sets_lost") or m.get("strategy") in (None, "control"):
            continue
        lost = rec["sets_lost"]
        for name, v in lost.items():
            add("pruning", f"{name}_lost", m["name"], v["lost"], n=v["total"],
                note=f"{m['strategy']}, kept {100 * rec['kept_total'] / rec['width_total']:.1f}%")

        def cell(name):
            v = lost.get(name)
            return "" if v is None else f"{v['lost']} of {v['total']} ({100 * v['lost'] / max(v['total'], 1):.0f}%)"

        lines.append(f"| {m['name']} | {m['strategy']} | {100 * rec['kept_total'] / rec['width_total']:.1f}% | "
                     f"{cell('ivector_cluster')} | {cell('ssl_cluster')} |")
    if not lines:
        return []
    return (["", "Neurons of the parent each pruned model lost:", "",
             "| model | strategy | kept | speaker (i-vector-cluster) neurons lost | SSL-cluster neurons lost |",
             "|---|---|---|---|---|"] + lines)


def head_flags(models: Sequence[Mapping[str, Any]]) -> list[tuple[str, str, str, str]]:
    """(task, model, layer set, what) for every SID or PR head group that may not have reached its
    optimum: a learning rate picked at the edge of its own sweep (the optimum may lie outside the
    grid), or a best dev step at the last step of training for at least half of the head seeds (more
    steps may help; SID without sid.eval_every keeps the last state, so its best step is always the
    last; one seed's best at the last evaluation of a noisy plateau is not flagged)."""
    flags = []
    for m in models:
        sid_res, pr_res = _read(m.get("sid")) or {}, _read(m.get("pr")) or {}
        groups = [("sid", ls, r, r.get("dev_accuracy") or {}, r.get("steps"), [x.get("best_step") for x in r["per_seed"]])
                  for ls, r in sid_res.items() if isinstance(r, dict) and "test_accuracy" in r]
        groups += [("pr", ls, r, r.get("dev_per") or {}, pr_res.get("steps"), [x.get("best_step") for x in r["per_seed"]])
                   for ls, r in (pr_res.get("layer_sets") or {}).items()]
        for task, ls, r, dev, steps, best in groups:
            rates = sorted(float(x) for x in dev)
            if r.get("lr_swept", True) and len(rates) > 1 and float(r["lr"]) in (rates[0], rates[-1]):
                side = "lowest" if float(r["lr"]) == rates[0] else "highest"
                flags.append((task, m["name"], ls, f"picked the {side} learning rate of its sweep "
                              f"({', '.join(f'{x:g}' for x in rates)}): the optimum may lie outside the grid"))
            at_last = sum(b is not None and int(b) >= int(steps) for b in best) if steps else 0
            if at_last and 2 * at_last >= len(best):  # one seed of a noisy plateau is no sign of under-training
                why = (" (sid.eval_every is null: the last state is kept)" if task == "sid" and not r.get("eval_every")
                       else "")
                flags.append((task, m["name"], ls, f"best dev step is the last one ({int(steps)} of {int(steps)}) for "
                              f"{at_last} of {len(best)} head seeds{why}: more steps may help"))
    return flags


def _flags_section(models: Sequence[Mapping[str, Any]], add) -> list[str]:
    """Rows (section `sid` or `pr`, metric head_flag_<layer set>) and lines of summary.md for `head_flags`."""
    flags = head_flags(models)
    for task, model, ls, what in flags:
        add(task, f"head_flag_{ls}", model, None, note=what)
    if not flags:
        return []
    return (["## Heads that may not have reached their optimum", ""]
            + [f"- {model}, {task.upper()} {ls}: {what}." for task, model, ls, what in flags] + [""])


def _controls_section(models: Sequence[Mapping[str, Any]], controls: Mapping[str, Any], add) -> list[str]:
    """Per model of the config: SID's input-only gap (all - hidden_0) and FFN dependence (all, model -
    its control), for each layer set both have, and PR's input-only gap (`_pr_control`); rows in the
    table and lines of summary.md."""
    sids = {m["name"]: _read(m.get("sid")) for m in models if m.get("sid")}
    ctrl_of = {m["parent"]: m["name"] for m in models if m.get("strategy") == "control"}
    min_dep, min_gap = float(controls["min_ffn_dependence"]), float(controls["min_input_gap"])
    md: list[str] = []
    for m in models:
        if m.get("parent") or (m["name"] not in sids and not m.get("pr")):
            continue
        res = sids.get(m["name"]) or {}
        gap = dep = None
        if "all" in res and "hidden_0" in res:
            gap = difference_interval(res["all"], res["hidden_0"])
            add("controls", "input_only_gap_all", m["name"], *gap, n=res["all"]["per_seed"][0]["n"],
                note=f"SID all {100 * res['all']['test_accuracy']:.2f} - SID hidden_0 "
                     f"{100 * res['hidden_0']['test_accuracy']:.2f}")
        ctrl = sids.get(ctrl_of.get(m["name"], ""))
        lines = []
        for ls in [k for k in res if isinstance(res[k], dict) and "test_accuracy" in res[k] and k != "hidden_0"]:
            if ctrl is None or ls not in ctrl:
                continue
            d = difference_interval(res[ls], ctrl[ls])
            add("controls", f"ffn_dependence_{ls}", m["name"], *d, n=res[ls]["per_seed"][0]["n"],
                note=f"SID {100 * res[ls]['test_accuracy']:.2f} - SID of {ctrl_of[m['name']]} "
                     f"{100 * ctrl[ls]['test_accuracy']:.2f}")
            lines.append(f"  - SID {ls}: {100 * res[ls]['test_accuracy']:.1f}% unpruned, "
                         f"{100 * ctrl[ls]['test_accuracy']:.1f}% with {100 * float(controls['ffn_keep']):g}% "
                         f"of the FFN neurons: dependence {100 * d[0]:+.1f} points [{100 * d[1]:+.1f}, {100 * d[2]:+.1f}]")
            if ls == "all":
                dep = d
        pr_line = _pr_control(m, controls, add)
        if gap is None and dep is None and pr_line is None:
            continue
        if not md:
            md += ["## Positive controls: can this run show anything?", "",
                   "FFN dependence = SID of the model minus SID of its control (every FFN neuron removed but a "
                   "seeded random remainder); input-only gap = SID from all layers minus SID from hidden_0 (the "
                   "input of layer 1, which pruning never touches); for phoneme recognition, PER from hidden_0 "
                   "minus PER from all layers. Intervals: 95%, head seeds and test sampling.", ""]
        g = "" if gap is None else (f"input-only gap {100 * gap[0]:+.1f} points [{100 * gap[1]:+.1f}, "
                                    f"{100 * gap[2]:+.1f}] (hidden_0 {100 * res['hidden_0']['test_accuracy']:.1f}%)")
        dtxt = "" if dep is None else f"FFN dependence {100 * dep[0]:+.1f} points [{100 * dep[1]:+.1f}, {100 * dep[2]:+.1f}]"
        if gap is not None or dep is not None:
            v = controls_verdict(dep, gap, min_dep, min_gap, float(controls["ffn_keep"]))
            add("controls", "verdict", m["name"], None, note=v)
            md.append(f"- **{m['name']}**: " + "; ".join(x for x in (dtxt, g) if x) + f". Verdict: {v}.")
            md += lines
        if pr_line is not None:
            md.append(f"- **{m['name']}**, phoneme recognition: {pr_line}.")
    return md + ([""] if md else [])


def _pr_control(m: Mapping[str, Any], controls: Mapping[str, Any], add) -> str | None:
    """PR's input-only gap of a model of the config (PER hidden_0 - PER all; positive = the Transformer's
    layers help), as a row and a sentence; None without PR or without both layer sets."""
    res = _read(m.get("pr"))
    sets = (res or {}).get("layer_sets", {})
    if "all" not in sets or "hidden_0" not in sets:
        return None
    d = per_difference_interval(sets["hidden_0"], sets["all"])
    all_, h0 = sets["all"]["test_per"], sets["hidden_0"]["test_per"]
    add("controls", "pr_input_only_gap_all", m["name"], *d, n=sets["all"]["test_utterances"],
        note=f"PER hidden_0 {100 * h0:.2f} - PER all {100 * all_:.2f}")
    low = float(controls["min_pr_input_gap"])
    if d[0] < low or d[1] <= 0:
        v = (f"all layers do not beat the input alone (threshold {100 * low:g} points): **what pruning costs in PR "
             "cannot show on this model**")
    else:
        v = "the Transformer's layers add to PR: PER differences between pruned models can show"
    add("controls", "pr_verdict", m["name"], None, note=v)
    return (f"PER {100 * all_:.1f}% from all layers vs {100 * h0:.1f}% from hidden_0: input-only gap "
            f"{100 * d[0]:+.1f} points [{100 * d[1]:+.1f}, {100 * d[2]:+.1f}]. Verdict: {v}")


def plot_pr_dev_curves(models: Sequence[Mapping[str, Any]], png: PathLike) -> Path:
    """Dev PER against training step of every PR head of the models of the config (the picked learning
    rate; one line per head seed), one panel per model: whether the heads trained and settled."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = [(m["name"], _read(m.get("pr"))) for m in models if m.get("pr") and not m.get("parent")]
    fig, axes = plt.subplots(1, max(len(runs), 1), figsize=(5.5 * max(len(runs), 1), 3.8), squeeze=False)
    for ax, (name, res) in zip(axes[0], runs):
        for i, (ls, r) in enumerate(res["layer_sets"].items()):
            for j, sd in enumerate(r["per_seed"]):
                curve = np.asarray(sd["dev_curve"], dtype=float).reshape(-1, 2)
                ax.plot(curve[:, 0], 100 * curve[:, 1], color=f"C{i}", alpha=0.8, lw=1.2,
                        label=f"{ls} (lr {r['lr']:g})" if j == 0 else None)
        ax.set_title(f"{name}: PR heads, dev PER", fontsize=10)
        ax.set_xlabel("training step")
        ax.set_ylabel("dev PER (%)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    if not runs:
        axes[0][0].text(0.5, 0.5, "no PR results in this run", ha="center", va="center")
        axes[0][0].set_axis_off()
    from speaker_neurons.utils import save_figure

    return save_figure(fig, png, dpi=110)


# which stage's corpus each section of summary.tsv comes from
#: The files of a model the summary reads (each a key of the model dicts `build_summary` takes).
MODEL_FILES = ("sid", "sid_predictions", "pr", "pr_predictions", "prune", "neuron_counts", "ivector_partitions", "erase",
               "pretrain")

SECTION_STAGE = {"controls": "sid", "ivectors": "analysis", "pretrain": "pretrain", "neurons": "analysis",
                 "sid": "sid", "pruning": "sid", "erase": "sid", "pr": "pr", "pr_pruning": "pr", "erase_pr": "pr"}


def _partition_lines(st: Mapping[str, Any] | None, models: Sequence[Mapping[str, Any]], add) -> list[str]:
    """Which partition the neuron sets rest on, the consensus' own stability, and what another partition would
    change: the Jaccard overlap of the speaker neurons (set ivector_cluster) it gives against those the sets
    rest on, per analysed model (rows of `ivector_partitions.tsv`)."""
    md: list[str] = []
    st = st or {}
    rests = st.get("rests_on")
    if rests:
        why = {"auto": " (analysis.ivector_partition: auto; the extractor seeds "
                       + ("disagree)" if not st.get("stable", True) else "agree)"),
               "consensus": " (analysis.ivector_partition: consensus)",
               "extractor": " (analysis.ivector_partition: extractor)"}.get(st.get("partition_choice", ""), "")
        md.append(f"- the neuron sets rest on the **{rests}** partition{why}.")
    cons = st.get("consensus")
    if cons:
        figure = cons.get("halves", cons.get("min_leave_one_out"))
        what = ("the consensuses of two disjoint halves of the extractors agree at" if "halves" in cons else
                "leaving one extractor out, the consensus agrees at least at")
        add("ivectors", "consensus_stability_ari", "", figure, n=cons["partitions"],
            note=("halves" if "halves" in cons else "lowest leave-one-out") + f" of {cons['partitions']} extractors")
        add("ivectors", "consensus_vs_chosen_ari", "", cons["ari_vs_chosen"], n=cons["partitions"])
        md.append(f"- consensus of {cons['partitions']} extractors: {what} an adjusted Rand index of "
                  f"{figure:.3f}" + ("" if cons.get("stable") else " (**UNSTABLE**: more extractors, "
                                     "analysis.stability_extractors, make it steadier)")
                  + f"; against the chosen extractor's partition {cons['ari_vs_chosen']:.3f}.")
    for m in models:
        path = m.get("ivector_partitions")
        if not path or not Path(path).is_file() or Path(path).stat().st_size == 0:
            continue
        t = pd.read_csv(path, sep="\t", dtype={"layer": str})
        if t.empty:
            continue
        tot = t[t["layer"] == "total"]
        for r in tot.itertuples(index=False):
            per_layer = t[(t["partition"] == r.partition) & (t["layer"] != "total")]
            add("ivectors", f"speaker_neurons_jaccard_{r.partition}", m["name"], float(r.jaccard), n=int(r.rests_on),
                note=f"{int(r.other)} from that partition, {int(r.both)} in both; per layer "
                     + ", ".join(f"{x.layer}: {x.jaccard:.2f}" for x in per_layer.itertuples(index=False)))
        others = tot[tot["partition"] != rests]
        if not others.empty:
            lo, hi = float(others["jaccard"].min()), float(others["jaccard"].max())
            worst = others.loc[others["jaccard"].idxmin()]
            md.append(f"- {m['name']}: the speaker neurons the other partitions would give overlap those used at "
                      f"Jaccard {lo:.2f}-{hi:.2f} (lowest: {worst['partition']}, {int(worst['both'])} of "
                      f"{int(worst['rests_on'])} used and {int(worst['other'])} of its own in both); per layer in "
                      "summary.tsv.")
    return md


def build_summary(models: Sequence[Mapping[str, Any]], ivector_quality: PathLike | None, purity_tsv: PathLike | None,
                  k_ssl: int, out_tsv: PathLike, out_md: PathLike, out_png: PathLike,
                  stability: PathLike | None = None, *, controls: Mapping[str, Any],
                  comparison: Mapping[str, Any] | None = None, out_paired_png: PathLike | None = None,
                  out_pr_png: PathLike | None = None, out_pr_dev_png: PathLike | None = None, corpora: Mapping[str, str] | None = None) -> dict[str, Any]:
    """`models`: dicts with name, source, and the paths this run has for it (None where absent):
    sid (sid.json), pr (pr.json), prune (prune.json, pruned models), parent/strategy/target (pruned
    models), neuron_counts (analysis/neuron_counts.tsv), erase (erase.json), pretrain (pretrain
    summary.json), sid_predictions / pr_predictions (the per-item test predictions, which the paired
    comparisons of pruning strategies read; `comparison`: the config section). A model of strategy
    `control` is the FFN control of its parent (`controls`: the config section). `corpora`: the corpus
    of each stage (analysis, pretrain, sid, pr), written beside every figure."""
    from speaker_neurons.config import resolve

    comparison = resolve("comparison", comparison or {})
    null_share = float(comparison["max_null_share"])
    rows: list[dict[str, Any]] = []
    corpora = dict(corpora or {})

    def add(section, metric, model, value, lo=None, hi=None, n=None, paper=None, note=""):
        rows.append({"section": section, "metric": metric, "model": model, "value": value, "ci_low": lo,
                     "ci_high": hi, "n": n, "paper": paper, "note": note,
                     "corpus": corpora.get(SECTION_STAGE.get(section, ""), "")})

    md: list[str] = ["# Summary of this run", "",
                     "The paper's figures are for MelHuBERT base on LibriSpeech / VoxCeleb1; a different model "
                     "or corpus is compared by direction, not by value. Intervals are 95%.", ""]
    if corpora:
        md += ["Corpora: " + "; ".join(f"{stage} on **{name}**" for stage, name in corpora.items())
               + (" (the neurons are found on one corpus and evaluated on another, as in the paper)."
                  if corpora.get("analysis") not in (corpora.get("sid"), corpora.get("pr")) else
                  " (**an evaluation runs on the corpus the neurons are found on**: the paper separates them)."), ""]
    # ------------------------------------------------------------------ positive controls: the first thing to read
    ctrl_md = _controls_section(models, controls, add)
    md += ctrl_md
    # ------------------------------------------------------------------ corpus: i-vectors and clusters
    q = _read(ivector_quality)
    md += ["## i-vector clusters", ""]
    if q:
        sci = q.get("sid_ci95") or [None, None]
        eci = q.get("eer_ci95") or [None, None]
        add("ivectors", "sid_accuracy", "", q.get("sid_accuracy"), *sci, n=q.get("sid_test"),
            note=f"{q.get('sid_unenrolled', 0)} test utterances of unenrolled speakers left out")
        add("ivectors", "eer", "", q.get("eer"), *eci, n=q.get("trials"))
        md.append(f"- i-vector speaker ID {_pct(q.get('sid_accuracy'))}% [{_pct(sci[0])}, {_pct(sci[1])}] of "
                  f"{q.get('sid_test')} test utterances of enrolled speakers ({q.get('sid_unenrolled', 0)} of unenrolled "
                  f"speakers apart), EER {_pct(q.get('eer'))}% [{_pct(eci[0])}, {_pct(eci[1])}] over "
                  f"{q.get('target_trials', '?')} target and {q.get('nontarget_trials', '?')} non-target trials.")
    if purity_tsv and Path(purity_tsv).stat().st_size > 0:
        pur = pd.read_csv(purity_tsv, sep="\t")
        if {"majority", "purity"} <= set(pur.columns):
            for r in pur.itertuples(index=False):
                paper = PAPER["purity_male"] if r.majority == "M" else PAPER["purity_female"]
                add("ivectors", f"purity_cluster{r.ivector_cluster}", "", float(r.purity), n=int(r.F + r.M),
                    paper=paper, note=f"majority {r.majority}")
                md.append(f"- cluster {r.ivector_cluster}: {100 * r.purity:.1f}% {r.majority} of {int(r.F + r.M)} "
                          f"utterances (paper: {100 * paper:.2f}% for its {'male' if r.majority == 'M' else 'female'} "
                          "cluster).")
    st = _read(stability)
    for what, label in (("kmeans_seeds", "k-means seeds"), ("extractor_seeds", "i-vector extractor seeds")):
        part = (st or {}).get(what) or {}
        if not part.get("ari"):
            continue
        add("ivectors", f"stability_{what}_min_ari", "", part["min_ari"], n=len(part["ari"]),
            note=f"{label} {part['seeds']}, {st['n_init']} k-means initialisations each")
        rests = (st or {}).get("rests_on", "")
        unstable = ("the neuron sets rest on the consensus instead" if rests == "consensus" else
                    "the neuron sets rest on these clusters")
        md.append(f"- stability over {len(part['ari'])} other {label}: adjusted Rand index "
                  f"{min(part['ari']):.3f}-{max(part['ari']):.3f} against the chosen extractor's partition"
                  + ("." if min(part["ari"]) >= st["warn_below"] else f" (**UNSTABLE**: {unstable})."))
    md += _partition_lines(st, models, add)
    md.append("")
    # ------------------------------------------------------------------ neurons and pre-training
    md += [f"## Neurons found (k_ssl = {k_ssl})", "", "| model | ivector_cluster | ssl_cluster | union | unconditioned | per_cluster |",
           "|---|---|---|---|---|---|"]
    for m in models:
        if m.get("pretrain"):
            s = _read(m["pretrain"])
            for key in ("first_loss", "last_loss", "first_masked_acc", "last_masked_acc"):
                if key in s:
                    add("pretrain", key, m["name"], s[key])
        if not m.get("neuron_counts"):
            continue
        nc = pd.read_csv(m["neuron_counts"], sep="\t", dtype={"layer": str})
        tot = nc[(nc["k_ssl"] == k_ssl) & (nc["layer"] == "total")]
        if tot.empty:
            continue
        t = tot.iloc[0]
        sets = ["ivector_cluster", "ssl_cluster", "union", "unconditioned", "per_cluster"]
        for s in sets:
            if s in t:
                add("neurons", f"{s}_total", m["name"], int(t[s]),
                    paper=PAPER["ivector_cluster_total"] if s == "ivector_cluster" and k_ssl == 3 else None,
                    note=f"k_ssl={k_ssl}")
        md.append(f"| {m['name']} | " + " | ".join(str(int(t[s])) if s in t else "" for s in sets) + " |")
    md += ["", f"Paper (MelHuBERT base, 12 x 3072 neurons, k_ssl = 3): {PAPER['ivector_cluster_total']} "
           "i-vector-cluster neurons.", ""]
    # ------------------------------------------------------------------ SID and pruning
    table = pruning_table(models)
    plot_sid_vs_width(table, out_png)
    paired: dict[str, pd.DataFrame] = {}
    if not table.empty:
        md += ["## Speaker identification and pruning", "",
               "| model | kept | SID all (%) | SID layers 1..L (%) | SID last (%) | SID hidden_0 (%) | EER all (%) |",
               "|---|---|---|---|---|---|---|"]
        for name, g in table.groupby("model", sort=False):
            by = {r.layer_set: r for r in g.itertuples(index=False)}
            r0 = g.iloc[0]

            def cell(ls):
                return _cell(by.get(ls), "sid")

            md.append(f"| {name} | {100 * r0.kept_share:.1f}% | {cell('all')} | {cell('layers_1_L')} | {cell('last')} | {cell('hidden_0')} | "
                      f"{_pct(by['all'].eer) if 'all' in by else ''} |")
            for r in g.itertuples(index=False):
                paper = None
                if r.layer_set == "all":
                    paper = {("none", "none"): PAPER["sid_unpruned"],
                             ("l1", "protected_size"): PAPER["sid_l1_pset"],
                             ("protected", "protected_size"): PAPER["sid_protected_pset"]}.get((r.strategy, r.target))
                add("sid", f"accuracy_{r.layer_set}", r.model, r.sid, r.sid_ci_low, r.sid_ci_high, r.n_test,
                    paper=paper, note=f"kept {100 * r.kept_share:.1f}%, {r.seeds} seeds, lr {r.lr:g}")
                add("sid", f"eer_{r.layer_set}", r.model, r.eer, r.eer_ci_low, r.eer_ci_high, n=r.trials)
        md += _lost_section(models, add)
        paired["sid"] = paired_table(table, models, "sid", comparison)
        md += _paired_section(paired["sid"], "sid", add, null_share)
    # ------------------------------------------------------------------ phoneme recognition and pruning
    ptab = pr_table(models)
    if out_pr_png is not None:
        plot_pr_vs_width(ptab, out_pr_png)
    if out_pr_dev_png is not None:
        plot_pr_dev_curves(models, out_pr_dev_png)
    if not ptab.empty:
        md += ["## Phoneme recognition and pruning (what protecting speaker neurons costs)", "",
               "PER (%) with 95% intervals over head seeds; lower is better.", "",
               "| model | kept | PER all | PER layers 1..L | PER last | PER hidden_0 |", "|---|---|---|---|---|---|"]
        for name, g in ptab.groupby("model", sort=False):
            by = {r.layer_set: r for r in g.itertuples(index=False)}

            def pcell(ls):
                return _cell(by.get(ls), "per")

            md.append(f"| {name} | {100 * g.iloc[0].kept_share:.1f}% | {pcell('all')} | {pcell('layers_1_L')} | "
                      f"{pcell('last')} | {pcell('hidden_0')} |")
            for r in g.itertuples(index=False):
                paper = None
                if r.layer_set == "all":
                    paper = {("none", "none"): PAPER["per_unpruned"]}.get((r.strategy, r.target))
                add("pr", f"per_{r.layer_set}", r.model, r.per, r.per_ci_low, r.per_ci_high, r.n_test, paper=paper,
                    note=f"kept {100 * r.kept_share:.1f}%, {r.seeds} seeds, lr {r.lr:g}, {r.phones} test phones")
        paired["pr"] = paired_table(ptab, models, "pr", comparison)
        md += _paired_section(paired["pr"], "pr", add, null_share)
    if out_paired_png is not None:
        plot_paired(paired, out_paired_png)
    md += _flags_section(models, add)
    # ------------------------------------------------------------------ erase
    erased = [m for m in models if m.get("erase")]
    if erased:
        md += ["## Erase ablation (no retraining)", "",
               f"Paper: erasing the SSL-cluster neurons costs {-100 * PAPER['erase_ssl_cluster']:.2f} SID points.", ""]
    for m in erased:
        e = _read(m["erase"])
        for name, rec in (e.get("pr") or {}).items():  # the same sets, scored by phoneme recognition
            if name == "unerased":
                continue
            for ls, v in rec.items():
                if ls == "neurons":
                    continue
                add("erase_pr", f"{name}|{ls}", m["name"], v["delta_per"], *v["delta_ci95"], v["n"],
                    note=f"{rec['neurons']} neurons; random control {_pct(v['random_delta_mean'])} points of PER")
            if "all" in rec:
                v = rec["all"]
                md.append(f"- {m['name']}, erase {name} ({rec['neurons']} neurons), PER all: "
                          f"{100 * v['delta_per']:+.2f} [{100 * v['delta_ci95'][0]:+.2f}, {100 * v['delta_ci95'][1]:+.2f}] "
                          f"points (random {100 * v['random_delta_mean']:+.2f}).")
        for name, rec in e.items():
            if name in ("unerased", "k_ssl", "pr"):
                continue
            for ls, by_cluster in rec.items():
                if ls == "neurons":
                    continue
                for cluster, v in by_cluster.items():
                    paper = PAPER["erase_ssl_cluster"] if (name, ls, cluster) == ("ssl_cluster", "all", "all") else None
                    add("erase", f"{name}|{ls}|cluster_{cluster}", m["name"], v["delta"], *v["delta_ci95"], v["n"],
                        paper=paper, note=f"{rec['neurons']} neurons; random control {_pct(v['random_delta_mean'])} points")
            if "all" in rec:
                parts = [f"cluster {c}: {100 * v['delta']:+.2f} [{100 * v['delta_ci95'][0]:+.2f}, "
                         f"{100 * v['delta_ci95'][1]:+.2f}] (random {100 * v['random_delta_mean']:+.2f})"
                         for c, v in rec["all"].items()]
                md.append(f"- {m['name']}, erase {name} ({rec['neurons']} neurons), SID all: " + "; ".join(parts) + ".")
        md.append("")
    md += ["Figures: `sid_vs_width.png` and `pr_vs_width.png` here; per model `analysis/ssl_k*/erase/erase.png`, "
           "`analysis/ssl_k*/neuron_counts.png`; the HTML report: `snakemake --report report.html`.", ""]
    out = pd.DataFrame(rows, columns=["section", "metric", "model", "value", "ci_low", "ci_high", "n", "paper", "note",
                                      "corpus"])
    out.to_csv(out_tsv, sep="\t", index=False, float_format="%.6g")
    Path(out_md).write_text("\n".join(md))
    return {"rows": len(out), "models": len(models)}
