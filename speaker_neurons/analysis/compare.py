"""Tables across k values and across models.

* `stack_neuron_counts`: one model's `neuron_counts.tsv` of every k_ssl in one table;
* `compare_models`: every model's neuron counts per layer and set in one long table, one row per model
  (structure, neuron totals per set, how phone-like its SSL clusters are) and a plot of the totals.
i-vector quality and i-vector clusters belong to the corpus, not to a model: they are not repeated here.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Mapping

import numpy as np
import pandas as pd


def stack_neuron_counts(tables: Mapping[int, str | os.PathLike], out_tsv: str | os.PathLike) -> pd.DataFrame:
    """Columns k_ssl, layer, one per set (rows of each k's table, `total` rows included)."""
    frames = []
    for k, path in sorted(tables.items()):
        df = pd.read_csv(path, sep="\t", dtype={"layer": str})
        df.insert(0, "k_ssl", k)
        frames.append(df)
    out = pd.concat(frames, ignore_index=True)
    out.to_csv(out_tsv, sep="\t", index=False)
    return out


def _phone_purity(evidence: Mapping) -> float | None:
    """Mean over SSL clusters of the share of the cluster's most common broad phone class (%)."""
    maj = evidence.get("ssl_majority_class")
    if not maj:
        return None
    return round(float(np.mean([v["pct"] for v in maj.values()])), 2)


def compare_models(tables: Mapping[str, str | os.PathLike], evidence: Mapping[tuple[str, int], str | os.PathLike],
                   describe: Mapping[str, str | os.PathLike], counts_tsv, models_tsv, plot_png) -> dict:
    """`tables[model]`, `describe[model]`: a model's stacked neuron counts and `describe` JSON (one row
    group per model, in the order of `tables`); `evidence[(model, k_ssl)]`: its evidence JSON."""
    long = []
    rows = []
    for name, table in tables.items():
        df = pd.read_csv(table, sep="\t", dtype={"layer": str})
        df.insert(0, "model", name)
        long.append(df)
        info = json.loads(Path(describe[name]).read_text())
        for k in sorted(df["k_ssl"].unique()):
            ev = json.loads(Path(evidence[(name, int(k))]).read_text())
            total = df[(df["k_ssl"] == k) & (df["layer"] == "total")].iloc[0]
            sets = [c for c in df.columns if c not in ("model", "k_ssl", "layer")]
            rows.append({"model": name, "kind": info["kind"], "layers": info["num_layers"],
                         "hidden_dim": info["hidden_dim"], "ffn_widths": ",".join(map(str, info["ffn_widths"])),
                         "parameters": info["param_counts"]["total"], "k_ssl": int(k),
                         **{f"{s}_total": int(total[s]) for s in sets},
                         "ssl_phone_purity_pct": _phone_purity(ev)})
    long_df = pd.concat(long, ignore_index=True)
    long_df.to_csv(counts_tsv, sep="\t", index=False)
    table = pd.DataFrame(rows)
    table.to_csv(models_tsv, sep="\t", index=False)
    _plot_totals(table, Path(plot_png))
    return {"models": list(tables), "rows": len(table)}


def _plot_totals(table: pd.DataFrame, path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    sets = [c[: -len("_total")] for c in table.columns if c.endswith("_total")]
    labels = [f"{r.model} (k={r.k_ssl})" for r in table.itertuples()]
    fig = Figure(figsize=(max(6.0, 1.2 * len(sets) * max(1, len(labels)) ** 0.5 + 2), 4.0))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    x = np.arange(len(sets))
    width = 0.8 / max(1, len(labels))
    for i, (label, row) in enumerate(zip(labels, table.itertuples(index=False))):
        vals = [getattr(row, f"{s}_total") for s in sets]
        ax.bar(x + (i - (len(labels) - 1) / 2) * width, vals, width, label=label)
    ax.set_xticks(x, sets)
    ax.set_ylabel("neurons (all layers)")
    ax.set_title("Neuron sets per model")
    ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
