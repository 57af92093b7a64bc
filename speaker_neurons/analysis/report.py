"""Evidence that the label-free classes mean what the method assumes (METHOD §3).

- SSL cluster x broad phone class composition, where the corpus has phone timings (the demo's MBROLA
  voices); the paper reports cluster 1 = 78% vowels, cluster 3 = 46% unvoiced + 33% voiced consonants.
- i-vector cluster x gender purity, both clusters, as the paper reports it (97.23% of the male cluster
  is male, 89.82% of the female cluster is female).
Each table is written as TSV and drawn as a PNG (files that say so where the corpus lacks the labels).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

PHONE_CLASSES = {"V": "vowel", "D": "voiced consonant", "U": "unvoiced consonant", "S": "silence"}


def read_frame_classes(path: str | Path) -> dict[str, str]:
    df = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)
    return dict(zip(df["utt_id"], df["labels"]))


def phone_composition(ssl_labels: dict[str, np.ndarray], frame_classes: dict[str, str], frame_period: float = 0.010) -> pd.DataFrame:
    """Frames per (SSL cluster, phone class). Model frame i is matched to the 10 ms phone frame
    int(i * frame_period / 0.010) (exact for 10 ms models; the first of two for 20 ms models)."""
    ratio = frame_period / 0.010
    counts: dict[tuple[int, str], int] = {}
    for utt, labs in ssl_labels.items():
        classes = frame_classes.get(utt)
        if not classes:
            continue
        idx = (np.arange(len(labs)) * ratio).astype(np.int64)
        ok = idx < len(classes)
        cls_arr = np.frombuffer(classes.encode("ascii"), dtype="S1")[idx[ok]]
        for c, p in zip(labs[ok].tolist(), cls_arr.tolist()):
            key = (int(c), p.decode())
            counts[key] = counts.get(key, 0) + 1
    if not counts:
        return pd.DataFrame()
    table = pd.Series(counts).unstack(fill_value=0)
    table.index.name = "ssl_cluster"
    table = table.rename(columns=PHONE_CLASSES)
    cols = [c for c in PHONE_CLASSES.values() if c in table.columns]
    return table[cols].sort_index()


def gender_purity(utt_clusters: dict[str, int], manifest: pd.DataFrame) -> pd.DataFrame:
    """Utterances per (i-vector cluster, gender), the majority gender of each cluster and its share."""
    g = manifest.set_index("utt_id")["gender"].fillna("").astype(str)
    rows = [(c, g.get(u, "")) for u, c in utt_clusters.items()]
    df = pd.DataFrame(rows, columns=["cluster", "gender"])
    df = df[df["gender"].isin(["F", "M"])]
    if df.empty:
        return pd.DataFrame()
    table = df.groupby(["cluster", "gender"]).size().unstack(fill_value=0)
    for col in ("F", "M"):
        if col not in table.columns:
            table[col] = 0
    table = table[["F", "M"]]
    table["majority"] = table[["F", "M"]].idxmax(axis=1)
    table["purity"] = table[["F", "M"]].max(axis=1) / table[["F", "M"]].sum(axis=1)
    table.index.name = "ivector_cluster"
    return table


def _bar_png(table: pd.DataFrame, path: Path, title: str, xlabel: str, empty_note: str = "") -> None:
    """Stacked bars of each row's shares; an empty table draws `empty_note` instead, so the declared
    PNG exists whatever the corpus provides."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(1.6 + 0.9 * max(1, len(table)), 3.6))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    if table.empty:
        ax.text(0.5, 0.5, empty_note, ha="center", va="center", wrap=True, fontsize=9)
        ax.set_axis_off()
    else:
        share = table.div(table.sum(axis=1), axis=0) * 100
        bottom = np.zeros(len(share))
        for col in share.columns:
            ax.bar([str(i) for i in share.index], share[col].values, bottom=bottom, label=str(col))
            bottom += share[col].values
        ax.set_ylabel("% of the cluster")
        ax.set_xlabel(xlabel)
        ax.set_ylim(0, 100)
        ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.0, 0.5))
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def write_phone_composition(ssl_labels, frame_classes, frame_period, tsv_path, png_path) -> dict:
    """SSL cluster x broad phone class: counts and row shares (TSV) and stacked bars (PNG). Without
    phone classes (corpora other than the demo) both files say so. Returns the shares per cluster
    and each cluster's majority class."""
    comp = phone_composition(ssl_labels, frame_classes, frame_period) if frame_classes else pd.DataFrame()
    note = "no frame phone classes for this corpus (the demo's MBROLA voices have them)"
    if comp.empty:
        Path(tsv_path).write_text(f"# {note}\nssl_cluster\n")
        _bar_png(comp, Path(png_path), "SSL clusters by broad phone class", "SSL cluster", note)
        return {"ssl_phone_composition_pct": None}
    pct = (comp.div(comp.sum(axis=1), axis=0) * 100).round(2)
    comp.join(pct.add_suffix(" %")).to_csv(tsv_path, sep="\t")
    _bar_png(comp, Path(png_path), "SSL clusters by broad phone class", "SSL cluster")
    return {"ssl_phone_composition_pct": pct.to_dict(orient="index"),
            "ssl_majority_class": {int(c): {"class": str(r.idxmax()), "pct": float(r.max())} for c, r in pct.iterrows()}}


def write_gender_purity(utt_clusters, manifest, tsv_path, png_path) -> dict | None:
    """i-vector cluster x gender (TSV, PNG); None (and files that say so) without genders."""
    pur = gender_purity(utt_clusters, manifest)
    if pur.empty:
        note = "no F/M genders in the manifest"
        Path(tsv_path).write_text(f"# {note}\nivector_cluster\n")
        _bar_png(pur, Path(png_path), "i-vector clusters by gender", "i-vector cluster", note)
        return None
    pur.to_csv(tsv_path, sep="\t", float_format="%.4f")
    _bar_png(pur[["F", "M"]], Path(png_path), "i-vector clusters by gender", "i-vector cluster")
    return {int(c): {"majority": r["majority"], "purity": float(r["purity"])} for c, r in pur.iterrows()}


def evidence_report(feature_dir: str | os.PathLike, labels_npz: str | os.PathLike, corpus_dir: str | os.PathLike | None,
                    tsv_path, png_path, summary_json) -> dict:
    """SSL clusters (frame labels) against the broad phone classes of the corpus' `frame_classes.tsv`
    (where the corpus has one: the demo's), at the frame period of the features; the summary as JSON."""
    import json

    from speaker_neurons.analysis.frame_labels import load_labels
    from speaker_neurons.utils import write_json

    frame_period = json.loads((Path(feature_dir) / "features.json").read_text())["frame_period"]
    fc_path = Path(corpus_dir) / "frame_classes.tsv" if corpus_dir else None
    fc = read_frame_classes(fc_path) if fc_path and fc_path.exists() else None
    summary = write_phone_composition(load_labels(labels_npz), fc, frame_period, tsv_path, png_path)
    write_json(summary_json, summary)
    return summary
