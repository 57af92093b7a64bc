"""Evidence that the label-free classes mean what the method assumes (SPEC §3).

- SSL cluster x broad phone class composition, where the corpus has phone timings (the demo's MBROLA
  voices); the paper reports cluster 1 = 78% vowels, cluster 3 = 46% unvoiced + 33% voiced consonants.
- i-vector cluster x gender purity, both clusters, as the paper reports it (97.23% of the male cluster
  is male, 89.82% of the female cluster is female).
Each table is written as TSV and drawn as a PNG.
"""

from __future__ import annotations

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


def _bar_png(table: pd.DataFrame, path: Path, title: str, xlabel: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    share = table.div(table.sum(axis=1), axis=0) * 100
    fig, ax = plt.subplots(figsize=(1.6 + 0.9 * len(share), 3.6))
    bottom = np.zeros(len(share))
    for col in share.columns:
        ax.bar([str(i) for i in share.index], share[col].values, bottom=bottom, label=str(col))
        bottom += share[col].values
    ax.set_ylabel("% of the cluster")
    ax.set_xlabel(xlabel)
    ax.set_title(title)
    ax.set_ylim(0, 100)
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.0, 0.5))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_evidence_report(out_dir, ssl_labels, utt_clusters, manifest, frame_classes=None, frame_period=0.010) -> dict:
    """Write `ssl_phone_composition.tsv/.png` (when phone classes exist) and
    `ivector_gender_purity.tsv/.png` (when genders exist). Returns the figures as a dict."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    summary: dict = {}
    if frame_classes:
        comp = phone_composition(ssl_labels, frame_classes, frame_period)
        if not comp.empty:
            pct = (comp.div(comp.sum(axis=1), axis=0) * 100).round(2)
            out = comp.join(pct.add_suffix(" %"))
            out.to_csv(out_dir / "ssl_phone_composition.tsv", sep="\t")
            _bar_png(comp, out_dir / "ssl_phone_composition.png", "SSL clusters by broad phone class", "SSL cluster")
            summary["ssl_phone_composition_pct"] = pct.to_dict(orient="index")
    pur = gender_purity(utt_clusters, manifest)
    if not pur.empty:
        pur.to_csv(out_dir / "ivector_gender_purity.tsv", sep="\t", float_format="%.4f")
        _bar_png(pur[["F", "M"]], out_dir / "ivector_gender_purity.png", "i-vector clusters by gender", "i-vector cluster")
        summary["ivector_gender_purity"] = {int(c): {"majority": r["majority"], "purity": float(r["purity"])} for c, r in pur.iterrows()}
    return summary
