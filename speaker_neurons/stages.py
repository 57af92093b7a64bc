"""The stage layer: every workflow rule runs through `run_stage`, and only through it.

A stage is a function `fn(ctx) -> dict` registered under its rule's name. `ctx` carries the rule's
named `inputs`, `outputs` (every file the stage writes, named by the rule: the package never chooses a
result's name), `params`, `threads`, the resolved `device` and the inputs' `checksums`. `run_stage` sets
up the log (the job, its device, threads and the time of every stage), holds torch and the BLAS pools
to the rule's threads, runs the stage and writes its provenance (`outputs["provenance"]`: parameters,
the resolved config, the inputs' sha256 and the package versions), in one place for every stage.

Tests and other programs call `run_stage` the same way the workflow does; the package imports nothing
of Snakemake.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

from speaker_neurons.utils import get_logger, setup_logging, sha256_paths, write_provenance

log = get_logger("stages")

STAGES: dict[str, Callable[["StageContext"], dict]] = {}


def stage(fn: Callable[["StageContext"], dict]) -> Callable[["StageContext"], dict]:
    STAGES[fn.__name__] = fn
    return fn


@dataclass
class StageContext:
    name: str
    inputs: dict[str, Any]
    outputs: dict[str, Any]
    params: dict[str, Any]
    threads: int = 1
    device: str = "cpu"
    checksums: dict[str, str] = field(default_factory=dict)
    wildcards: dict[str, str] = field(default_factory=dict)

    def out(self, key: str) -> Path:
        """An output path (its folder created)."""
        if key not in self.outputs:
            raise KeyError(f"stage {self.name}: the rule declares no output {key!r}")
        p = Path(self.outputs[key])
        p.parent.mkdir(parents=True, exist_ok=True)
        return p


def _flat(paths: Mapping[str, Any]) -> list[str]:
    out: list[str] = []
    for v in paths.values():
        out += [str(x) for x in v] if isinstance(v, (list, tuple)) else [str(v)]
    return [p for p in out if p]


class _Tee:
    """A text stream that writes to two: the job's stderr and the rule's log, so that progress bars
    (tqdm writes to sys.stderr) land in the log of a batch job, which has no terminal."""

    def __init__(self, first, second):
        self.first, self.second = first, second

    def write(self, text):
        self.second.write(text)
        self.second.flush()
        return self.first.write(text)

    def flush(self):
        self.first.flush()
        self.second.flush()

    def isatty(self):
        return False

    def __getattr__(self, name):
        return getattr(self.first, name)


def run_stage(name: str, inputs: Mapping[str, Any], outputs: Mapping[str, Any], params: Mapping[str, Any] | None = None,
              log_path: str | None = None, threads: int = 1, config: Mapping[str, Any] | None = None,
              wildcards: Mapping[str, str] | None = None) -> dict:
    """Run stage `name` (a rule's name) and write its provenance; returns the stage's summary."""
    import torch
    from threadpoolctl import threadpool_limits

    from speaker_neurons.models import resolve_device

    if name not in STAGES:
        raise KeyError(f"no stage {name!r}; known: {sorted(STAGES)}")
    setup_logging(log_path)
    params = dict(params or {})
    wanted = params.get("device", (config or {}).get("upstream", {}).get("device", "cpu"))
    device = str(resolve_device(wanted))
    threads = max(1, int(threads))
    if "compute_threads" in params:  # a config value: results depend on it bit for bit, not on the machine
        compute = int(params["compute_threads"])
        if compute > threads:
            log.warning("Snakemake gave this job %d thread(s); computing with upstream.threads=%d all the same, so "
                        "that the results do not depend on the cores of this run", threads, compute)
        threads = compute
    job = ", ".join(f"{k}={v}" for k, v in (wildcards or {}).items())
    where = f"host {socket.gethostname()}"
    if os.environ.get("SLURM_JOB_ID"):  # a batch job: name it, so that the log and squeue/sacct meet
        where += f", SLURM job {os.environ['SLURM_JOB_ID']}"
    gpu = f" ({torch.cuda.get_device_name(torch.device(device))})" if device.startswith("cuda") else ""
    log.info("stage %s%s: device %s%s (asked %s), %d thread(s), %s", name, f" [{job}]" if job else "", device, gpu,
             wanted, threads, where)
    t0 = time.monotonic()
    checksums = sha256_paths(_flat(inputs))
    log.info("inputs hashed in %.1f s", time.monotonic() - t0)
    ctx = StageContext(name, dict(inputs), dict(outputs), params, threads, device, checksums, dict(wildcards or {}))
    saved_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    t1 = time.monotonic()
    saved_stderr = sys.stderr
    log_file = open(log_path, "a") if log_path else None
    if log_file is not None:
        sys.stderr = _Tee(saved_stderr, log_file)
    try:
        with threadpool_limits(limits=threads):
            result = STAGES[name](ctx) or {}
    except BaseException:  # the rule's log must say why it failed (a batch job has no terminal)
        log.exception("stage %s FAILED after %.1f s", name, time.monotonic() - t1)
        raise
    finally:
        torch.set_num_threads(saved_threads)
        sys.stderr = saved_stderr
        if log_file is not None:
            log_file.close()
    log.info("stage %s done in %.1f s", name, time.monotonic() - t1)
    if "provenance" in outputs:
        write_provenance(ctx.out("provenance"), stage=name, params=params, config=config, checksums=checksums,
                         wildcards=ctx.wildcards)
    return result


def _upstream(ctx: StageContext):
    from speaker_neurons.models import load_upstream

    return load_upstream(ctx.params["upstream"], device=ctx.device)


def _json(path: Path, obj: Any) -> None:
    path.write_text(json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


# ------------------------------------------------------------------------------------------- corpus
@stage
def synthesize_demo_corpus(ctx: StageContext) -> dict:
    from speaker_neurons.data.synth import synthesize_corpus

    return synthesize_corpus(ctx.outputs["corpus_dir"], **ctx.params["demo"], workers=ctx.threads)


@stage
def build_manifest(ctx: StageContext) -> dict:
    from speaker_neurons.data.manifest import (assign_splits, build_manifest as build, read_transcripts,
                                               write_manifest, write_transcripts)

    df = build(**ctx.params["corpus"])
    split = ctx.params["split"]
    if split["fractions"] is not None:
        df = assign_splits(df, split["fractions"], int(split["seed"]))
    write_manifest(df, ctx.out("manifest"))
    if "transcripts" in ctx.outputs:
        text = read_transcripts(**ctx.params["corpus"])
        write_transcripts(text[text["utt_id"].isin(set(df["utt_id"]))], ctx.out("transcripts"))
    return {"utterances": len(df), "splits": df["split"].value_counts().to_dict()}


@stage
def audio_qc(ctx: StageContext) -> dict:
    from speaker_neurons.data.manifest import read_manifest, write_manifest
    from speaker_neurons.data.qc import run_qc

    qc = dict(ctx.params["qc"])
    qc["target_sr"] = qc.pop("sample_rate", 16000)
    accepted = run_qc(read_manifest(ctx.inputs["manifest"]), ctx.out("report"), workers=ctx.threads, **qc)
    write_manifest(accepted, ctx.out("manifest"))
    return {"accepted": len(accepted)}


# ------------------------------------------------------------------------------------------- models
@stage
def pretrain_melhubert(ctx: StageContext) -> dict:
    from speaker_neurons.pretrain import pretrain_melhubert as pretrain

    targets = _target_paths(ctx)
    return _resumable(ctx, lambda outs, resume_from: pretrain(
        ctx.inputs["manifest"], outs, model_config=ctx.params["model"], train_config=ctx.params["train"],
        device=ctx.device, threads=ctx.threads, resume_from=resume_from, target_paths=targets))


def _target_paths(ctx: StageContext):
    """The clean copies the targets come from (pretrain.train.targets_audio: clean), else None."""
    from speaker_neurons.pretrain.data import clean_audio_paths

    if ctx.params["train"]["targets_audio"] != "clean":
        return None
    return clean_audio_paths(ctx.inputs["corpus"])


def _resumable(ctx: StageContext, train) -> dict:
    """Run `train(outputs, resume_from)` resumably (`pretrain.loop.run_resumable`), its checkpoints in
    params.resume_dir until it succeeds."""
    from speaker_neurons.pretrain import TrainOutputs
    from speaker_neurons.pretrain.loop import run_resumable

    o = ctx.outputs
    outs = TrainOutputs(o["model_dir"], o["head"], o["summary"], o["train_log"], o["loss_curve"], o["kmeans_centers"],
                        o["checkpoints"])
    return run_resumable(train, outs, ctx.params.get("resume_dir"))


@stage
def prune_model(ctx: StageContext) -> dict:
    """Structured FFN pruning of the parent (METHOD §5): a native model folder and `prune.json` (per
    layer: width, kept, removed, protected kept / lost)."""
    from speaker_neurons import pruning
    from speaker_neurons.models import load_upstream, prune_ffn, save_upstream

    p = ctx.params["prune"]
    model = load_upstream(p["parent_spec"], device="cpu")
    protected = pruning.union_of_sets(ctx.inputs["protected"])
    keep, record = pruning.plan(model, p["strategy"], p["target"], protected, seed=int(p["seed"]))
    parent_sha = ctx.checksums.get(str(ctx.inputs["parent"]))
    prune_ffn(model, keep)
    save_upstream(model, ctx.outputs["model_dir"], parent_sha256=parent_sha)
    # the set files by their place in the parent's analysis (no absolute path: two runs write the same bytes)
    record.update(parent=p["parent"], parent_sha256=parent_sha, k_ssl=p["k_ssl"],
                  protected_from=["/".join(Path(x).parts[-3:]) for x in ctx.inputs["protected"]],
                  ffn_widths=model.ffn_widths)
    _json(ctx.out("record"), record)
    log.info("%s: kept %d of %d FFN neurons (%s, %s); protected neurons lost: %d", p["parent"], record["kept_total"],
             record["width_total"], p["strategy"], p["target"], record["protected_lost_total"])
    return record


# ------------------------------------------------------------------------------------------- i-vectors
@stage
def ivectors(ctx: StageContext) -> dict:
    """i-vectors for every utterance (METHOD §6: no labels used), as a Kaldi ark/scp, and their quality
    where the manifest has speakers and a train/test split (labels used only to score)."""
    import numpy as np

    from speaker_neurons.analysis import ivector as iv
    from speaker_neurons.audio import load_audio
    from speaker_neurons.data.manifest import read_manifest
    from speaker_neurons.evaluation import embedding_quality
    from speaker_neurons.utils import save_npz

    cfg = {k: v for k, v in ctx.params["ivector"].items() if k != "kaldi_ivectors"}
    manifest = read_manifest(ctx.inputs["manifest"])
    items = ((row.utt_id, load_audio(row.path)[0]) for row in manifest.itertuples(index=False))
    n_other = int(ctx.params.get("stability_extractors", 0))
    other_seeds = [int(cfg.get("seed", 0)) + 1 + i for i in range(n_other)]
    utt_ids, vecs, info = iv.extract_ivectors(items, cfg, device=ctx.device, model_out=ctx.out("extractor"),
                                              num_threads=ctx.threads, return_info=True, other_seeds=other_seeds)
    iv.write_ivectors(utt_ids, vecs, ctx.out("ark"), ctx.out("scp"))
    if "other_seeds" in ctx.outputs:
        others = info["other_seeds"]
        stack = np.stack([others[s] for s in other_seeds]) if other_seeds else np.zeros((0, *vecs.shape), np.float32)
        save_npz(ctx.out("other_seeds"), {"utt_id": np.asarray(list(utt_ids), dtype=str),
                                          "seeds": np.asarray(other_seeds, dtype=np.int64), "ivectors": stack})
    quality = {**embedding_quality(utt_ids, vecs, manifest, "i-vector"), "config": info["config"]}
    _json(ctx.out("quality"), quality)
    return quality


@stage
def ivector_clusters(ctx: StageContext) -> dict:
    """k-means on the i-vectors (`clusters`: utt_id, cluster) and the clusters against gender."""
    import numpy as np

    from speaker_neurons.analysis.clusters import cluster_stability, cluster_utterances, write_utterance_clusters
    from speaker_neurons.analysis.ivector import read_ivectors
    from speaker_neurons.analysis.report import write_gender_purity
    from speaker_neurons.data.manifest import read_manifest

    p = ctx.params
    utt_ids, vecs = read_ivectors(ctx.inputs["scp"])
    vecs = np.asarray(vecs)
    labels = cluster_utterances(list(utt_ids), vecs, int(p["k"]), int(p["seed"]), int(p["n_init"]))
    write_utterance_clusters(labels, ctx.out("clusters"))
    purity = write_gender_purity(labels, read_manifest(ctx.inputs["manifest"]), ctx.out("purity_tsv"), ctx.out("purity_png"))
    stab = cluster_stability(vecs, utt_ids, np.array([labels[u] for u in utt_ids]), int(p["k"]), int(p["seed"]),
                             int(p["n_init"]), int(p["stability_runs"]), p["stability_warn_below"],
                             ctx.inputs.get("other_seeds") or None)
    _json(ctx.out("stability"), stab)
    return {"k": int(p["k"]), "sizes": np.bincount(list(labels.values()), minlength=int(p["k"])).tolist(),
            "gender_purity": purity, "stability": stab}


# ------------------------------------------------------------------------------------------- analysis
@stage
def extract_features(ctx: StageContext) -> dict:
    """Hidden states of `feature_layer` (default round(0.75 L)) for every utterance, in shards."""
    from speaker_neurons.analysis.features import default_feature_layer, extract_layer_features
    from speaker_neurons.data.manifest import read_manifest

    model = _upstream(ctx)
    layer = ctx.params["feature_layer"]
    layer = default_feature_layer(model.num_layers) if layer in (None, "auto") else int(layer)
    return extract_layer_features(model, read_manifest(ctx.inputs["manifest"]), layer, ctx.outputs["feature_dir"],
                                  max_batch_seconds=ctx.params["max_batch_seconds"])


@stage
def frame_kmeans(ctx: StageContext) -> dict:
    from speaker_neurons.analysis.clusters import run_frame_clustering

    return run_frame_clustering(ctx.inputs["feature_dir"], ctx.inputs["manifest"], int(ctx.params["k"]),
                                ctx.out("labels"), ctx.out("centroids"), ctx.out("hubert_tsv"), ctx.out("hubert_km"),
                                ctx.out("kmeans_json"), max_frames=ctx.params["max_frames"], seed=ctx.params["seed"],
                                threads=ctx.threads)


@stage
def activation_stats(ctx: StageContext) -> dict:
    from speaker_neurons.analysis.clusters import load_labels, read_utterance_clusters
    from speaker_neurons.analysis.stats import activation_statistics
    from speaker_neurons.data.manifest import read_manifest

    p = ctx.params
    model = _upstream(ctx)
    return activation_statistics(
        model, read_manifest(ctx.inputs["manifest"]), load_labels(ctx.inputs["labels"]),
        read_utterance_clusters(ctx.inputs["clusters"]), int(p["k"]), int(p["k_ivector"]), p["top_fraction"],
        ctx.out("counts"), meta={"upstream": p["upstream"], "inputs": ctx.checksums}, out_json=ctx.out("meta"),
        max_mismatch=p["max_mismatch"], max_batch_seconds=p["max_batch_seconds"])


@stage
def neuron_sets(ctx: StageContext) -> dict:
    """Every named neuron set (METHOD §4) from the counts, the layer x set table and its plot."""
    import pandas as pd

    from speaker_neurons.analysis import neuron_sets as ns
    from speaker_neurons.analysis.counts import load_counts

    data = load_counts(ctx.inputs["counts"], ctx.inputs.get("meta"))
    paths = {Path(p).stem: Path(p) for p in ctx.outputs["sets"]}  # the sets the rule declares
    fdr = float(ctx.params.get("fdr", ns.DEFAULT_FDR))
    result, groups = ns.compute_neuron_sets(data, rho=ctx.params["rho"], sets=list(paths), return_groups=True, fdr=fdr)
    ns.write_neuron_sets(result, paths, ns.neuron_set_params(data, ctx.params["rho"], fdr), ctx.out("table"),
                         groups=groups)
    ns.plot_neuron_counts(ctx.outputs["table"], ctx.out("plot"), title=ctx.params.get("title"))
    comparison = pd.DataFrame(ns.tested_vs_rho(result), columns=["set", "layer", "rho_set", "tested_set", "both",
                                                                   "rho_surviving_pct"])
    comparison.to_csv(ctx.out("tested_vs_rho"), sep="\t", index=False)
    for r in comparison[comparison["layer"] == "total"].itertuples(index=False):
        log.info("%s: rho set %d, tested set %d (FDR %g), both %d: %s%% of the rho set survives the test", r.set,
                 r.rho_set, r.tested_set, fdr, r.both, r.rho_surviving_pct)
    totals = {name: sum(len(v) for v in layers.values()) for name, layers in result.items()}
    log.info("neuron totals: %s", totals)
    return totals


@stage
def evidence_report(ctx: StageContext) -> dict:
    """SSL clusters vs broad phone classes (where the corpus has frame phone classes)."""
    from speaker_neurons.analysis.clusters import load_labels
    from speaker_neurons.analysis.report import read_frame_classes, write_phone_composition

    frame_period = json.loads((Path(ctx.inputs["feature_dir"]) / "features.json").read_text())["frame_period"]
    corpus = ctx.inputs.get("corpus")
    fc_path = Path(corpus) / "frame_classes.tsv" if corpus else None
    fc = read_frame_classes(fc_path) if fc_path and fc_path.exists() else None
    summary = write_phone_composition(load_labels(ctx.inputs["labels"]), fc, frame_period, ctx.out("composition_tsv"),
                                      ctx.out("composition_png"))
    _json(ctx.out("summary"), summary)
    return summary


@stage
def neuron_counts_summary(ctx: StageContext) -> dict:
    """One table of one model's neuron counts over every k_ssl: columns k_ssl, layer, one per set."""
    from speaker_neurons.analysis.compare import stack_neuron_counts

    df = stack_neuron_counts(dict(zip(ctx.params["k_ssl"], ctx.inputs["tables"])), ctx.out("table"))
    return {"rows": len(df)}


@stage
def compare_models(ctx: StageContext) -> dict:
    """The cross-model tables: neuron counts per layer and set, and one row per model."""
    from speaker_neurons.analysis.compare import compare_models as compare

    evidence = {(m, int(k)): path for (m, k), path in zip(ctx.params["evidence_keys"], ctx.inputs["evidence"])}
    return compare(ctx.params["models"], ctx.inputs["tables"], evidence, ctx.inputs["describe"],
                   ctx.out("counts"), ctx.out("models"), ctx.out("plot"))


@stage
def describe_model(ctx: StageContext) -> dict:
    """What a model is (kind, layers, widths, parameters), as JSON, for the reports."""
    from speaker_neurons.models import describe

    up = ctx.params["upstream"]
    info = describe(up["path"], format=up.get("format", "auto"), mean_std=up.get("mean_std"))
    info.pop("path", None)
    _json(ctx.out("info"), info)
    return info


# ------------------------------------------------------------------------------------------- SID
@stage
def pool_layers(ctx: StageContext) -> dict:
    """Each hidden layer's mean over every segment's frames (the SID head's input), once per model."""
    import numpy as np

    from speaker_neurons import sid
    from speaker_neurons.data.manifest import read_manifest
    from speaker_neurons.utils import save_npz

    segs = sid.segments(read_manifest(ctx.inputs["manifest"]), ctx.params["crop_seconds"])
    sid.check_splits(segs, ctx.inputs["manifest"])
    pooled = sid.pool_layer_means(_upstream(ctx), segs, max_batch_seconds=ctx.params["max_batch_seconds"])
    text = {c: np.asarray(segs[c].astype(str).tolist(), dtype=str) for c in ("seg_id", "speaker", "split")}
    save_npz(ctx.out("pooled"), {"pooled": pooled, **text})  # fixed-width strings: no pickled objects
    return {"segments": len(segs), "shape": list(pooled.shape)}


@stage
def sid_eval(ctx: StageContext) -> dict:
    """SUPERB SID (and EER) of one model on its pooled layers, per layer set."""
    from speaker_neurons import sid

    cfg = ctx.params["sid"]
    data, L = sid.load_pooled(ctx.inputs["pooled"])
    fixed = sid.rates_of(ctx.inputs["lr_from"], cfg["layer_sets"]) if ctx.inputs.get("lr_from") else None
    result, picked = sid.evaluate(data, sid.layer_sets(cfg["layer_sets"], L), cfg["learning_rates"], cfg["seeds"],
                                  epochs=int(cfg["epochs"]), fixed_lr=fixed)
    result.update(crop_seconds=cfg["crop_seconds"], corpus=ctx.params["corpus"],
                  lr_from=ctx.params["lr_from_model"] if fixed else None)
    _json(ctx.out("result"), result)
    sid.save_heads(ctx.out("heads"), picked, cfg["seeds"])  # the erase ablation scores erased models with these
    return {k: v["test_accuracy"] for k, v in result.items() if isinstance(v, dict) and "test_accuracy" in v}


# ------------------------------------------------------------------------------------------- PR
@stage
def phone_targets(ctx: StageContext) -> dict:
    """A corpus' transcripts through the lexicon: phone targets per utterance."""
    from speaker_neurons.data.lexicon import phone_targets as make

    return make(ctx.inputs["transcripts"], ctx.params["lexicon"] or None, bool(ctx.params["drop_oov"]),
                ctx.out("phones"))


@stage
def pr_features(ctx: StageContext) -> dict:
    """Every layer's frames of every utterance of the PR corpus, once per model (a temporary cache)."""
    from speaker_neurons.data.manifest import read_manifest
    from speaker_neurons.pr import extract_frame_features

    rows = read_manifest(ctx.inputs["manifest"])
    return extract_frame_features(_upstream(ctx), rows[rows["split"] != ""], ctx.outputs["frames"],
                                  shard_mb=ctx.params["shard_mb"], max_batch_seconds=ctx.params["max_batch_seconds"])


@stage
def pr_eval(ctx: StageContext) -> dict:
    """SUPERB PR of one model on its frame cache, per layer set (PER with intervals)."""
    from speaker_neurons import sid
    from speaker_neurons.data.lexicon import read_phone_targets
    from speaker_neurons.data.manifest import read_manifest
    from speaker_neurons.pr import FrameCache, train_and_evaluate

    rows, names = read_manifest(ctx.inputs["manifest"]), ctx.params["layer_sets"]
    fixed = sid.rates_of(ctx.inputs["lr_from"], names) if ctx.inputs.get("lr_from") else None
    result = train_and_evaluate(ctx.inputs["frames"], read_phone_targets(ctx.inputs["phones"]),
                                dict(zip(rows["utt_id"], rows["split"])),
                                sid.layer_sets(names, FrameCache(ctx.inputs["frames"]).layers - 1), ctx.params["pr"],
                                device=ctx.device, fixed_lr=fixed, heads_path=ctx.out("heads"))
    result.update(corpus=ctx.params["corpus"], lr_from=ctx.params["lr_from_model"] if fixed else None)
    _json(ctx.out("result"), result)
    return {k: v["test_per"] for k, v in result["layer_sets"].items()}


@stage
def erase_ablation(ctx: StageContext) -> dict:
    """Erase neuron sets (W2 columns zeroed, no retraining) and score with the unerased model's SID heads:
    accuracy per i-vector cluster against seeded random sets of the same per-layer sizes."""
    import numpy as np

    from speaker_neurons import erase, sid
    from speaker_neurons.analysis.clusters import read_utterance_clusters
    from speaker_neurons.data.manifest import read_manifest

    p = ctx.params
    segs = sid.segments(read_manifest(ctx.inputs["manifest"]), p["crop_seconds"])
    with np.load(ctx.inputs["pooled"]) as z:
        if z["seg_id"].tolist() != segs["seg_id"].tolist():
            raise ValueError(f"{ctx.inputs['pooled']} was pooled from other segments than the manifest and "
                             "sid.crop_seconds give now; re-run rule pool_layers")
    data = sid.make_data(np.empty((len(segs), 0, 0), dtype=np.float32), segs)  # labels and splits only
    sel = sid.closed_set(data, "test")
    test = segs.iloc[sel].reset_index(drop=True)
    clusters = read_utterance_clusters(ctx.inputs["clusters"])
    groups = np.array([clusters.get(u, -1) for u in test["utt_id"]], dtype=np.int64)
    sets = erase.erase_sets(ctx.inputs["ssl_cluster"] if "ssl_cluster" in p["sets"] else None,
                            ctx.inputs["ivector_cluster"] if "ivector_cluster" in p["sets"] else None)
    heads = {ls: [h for _, h in hs] for ls, hs in sid.load_heads(ctx.inputs["heads"]).items()}
    table = erase.run_ablation(_upstream(ctx), test, data.labels[sel], groups, heads, sets, p["random_seeds"],
                               max_batch_seconds=p["max_batch_seconds"])
    table.to_csv(ctx.out("table"), sep="\t", index=False, float_format="%.6f")
    summary = erase.summarize(table)
    if ctx.inputs.get("pr_heads"):  # the same sets erased, scored by phoneme recognition on the PR test split
        summary["pr"] = _erase_pr(ctx, sets)
    else:
        Path(ctx.out("pr_table")).write_text("")
    summary["k_ssl"] = int(ctx.wildcards.get("k", -1)) if ctx.wildcards.get("k") else None
    _json(ctx.out("summary"), summary)
    erase.plot(table, ctx.out("plot"), title=p.get("title", ""))
    for name in sets:
        s = summary[name].get("all") or summary[name].get(next(iter(heads))) or {}
        for c, v in s.items():
            log.info("erase %s, cluster %s: %+.2f points [%+.2f, %+.2f]; random %+.2f", name, c, 100 * v["delta"],
                     100 * v["delta_ci95"][0], 100 * v["delta_ci95"][1], 100 * (v["random_delta_mean"] or 0))
    return {"sets": list(sets), "test_segments": len(test)}


def _erase_pr(ctx: StageContext, sets) -> dict:
    import numpy as np

    from speaker_neurons import erase
    from speaker_neurons.data.lexicon import read_phone_targets
    from speaker_neurons.data.manifest import read_manifest
    from speaker_neurons.pr import load_heads

    p = ctx.params
    heads, vocab = load_heads(ctx.inputs["pr_heads"])
    ids = {ph: i for i, ph in enumerate(vocab)}
    phones = read_phone_targets(ctx.inputs["phones"])
    rows = read_manifest(ctx.inputs["pr_manifest"])
    rows = rows[(rows["split"] == "test") & rows["utt_id"].isin(set(phones))].reset_index(drop=True)
    targets = {u: np.array([ids[ph] for ph in phones[u]], dtype=np.int64) for u in rows["utt_id"]}
    table = erase.run_pr_ablation(_upstream(ctx), rows, targets, heads, sets, p["random_seeds"],
                                  int(p["pr_bootstrap"]), int(p["pr_bootstrap_seed"]),
                                  max_batch_seconds=p["max_batch_seconds"])
    table.to_csv(ctx.out("pr_table"), sep="\t", index=False, float_format="%.6f")
    return erase.summarize_pr(table)


@stage
def summarize(ctx: StageContext) -> dict:
    """results/summary.tsv, summary.md and sid_vs_width.png: this run's headline figures beside the paper's."""
    from speaker_neurons.summary import build_summary

    return build_summary(ctx.params["models"], ctx.inputs.get("quality"), ctx.inputs.get("purity"),
                         int(ctx.params["k_ssl"]), ctx.out("tsv"), ctx.out("md"), ctx.out("sid_png"),
                         stability=ctx.inputs.get("stability"), controls=ctx.params["controls"],
                         out_pr_png=ctx.out("pr_png"), corpora=ctx.params["corpora"])


def _continue(ctx: StageContext, model, parent_sha: str | None) -> dict:
    """Continued masked-prediction pre-training of `model` on the root's targets, from the given head
    (resumable like pre-training)."""
    import numpy as np

    from speaker_neurons.pretrain import continue_pretraining, load_head

    centers = np.load(ctx.inputs["centers"])
    return _resumable(ctx, lambda outs, resume_from: continue_pretraining(
        model, ctx.inputs["manifest"], outs, centers, train_config=ctx.params["train"],
        head=load_head(ctx.inputs["head"]), device=ctx.device, threads=ctx.threads, parent_sha256=parent_sha,
        resume_from=resume_from, target_paths=_target_paths(ctx)))


@stage
def continue_pretraining(ctx: StageContext) -> dict:
    """Continued pre-training of a pruned model (METHOD §5): the parent's weights and per-layer widths,
    the root model's targets and the parent's prediction head."""
    from speaker_neurons.models import load_upstream

    p = ctx.params["continued"]
    model = load_upstream(p["parent_spec"], device="cpu")
    summary = _continue(ctx, model, ctx.checksums.get(str(ctx.inputs["parent"])))
    log.info("continued %s for %d steps: loss %.3f -> %.3f", p["parent"], summary["steps"],
             summary.get("first_loss") or float("nan"), summary.get("last_loss") or float("nan"))
    return summary


@stage
def iterative_step(ctx: StageContext) -> dict:
    """One step of iterative pruning (METHOD §5): remove rows_per_step neurons per layer of the previous
    model (the protected set from that model's own neuron sets), then continue pre-training."""
    from speaker_neurons import pruning
    from speaker_neurons.models import load_upstream, prune_ffn

    p = ctx.params["step"]
    model = load_upstream(p["parent_spec"], device="cpu")
    protected = pruning.union_of_sets(ctx.inputs["protected"])
    widths = pruning.step_widths(model.ffn_widths, p["rows_per_step"], p["final_width"])
    keep, record = pruning.plan(model, p["strategy"], f"-{p['rows_per_step']} per layer (floor {p['final_width']})",
                                protected, seed=int(p["seed"]) + int(p["index"]), keep_widths=widths)
    parent_sha = ctx.checksums.get(str(ctx.inputs["parent"]))
    prune_ffn(model, keep)
    record.update(parent=p["parent"], parent_sha256=parent_sha, k_ssl=p["k_ssl"], step=p["index"],
                  protected_from=["/".join(Path(x).parts[-3:]) for x in ctx.inputs["protected"]],
                  ffn_widths=model.ffn_widths)
    _json(ctx.out("record"), record)
    summary = _continue(ctx, model, parent_sha)
    log.info("iterative step %d of %s (%s): widths %s, protected lost %d; continued %d steps", p["index"], p["parent"],
             p["strategy"], model.ffn_widths, record["protected_lost_total"], summary["steps"])
    return {"prune": record, "train": summary}
