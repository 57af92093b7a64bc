"""The stage layer: one function per workflow rule, each one call into the package that owns its work.

A stage is registered under its rule's name and run through `run_stage` (`speaker_neurons.runner`: the
log, the threads, the provenance). It reads the rule's named inputs, outputs and params from `ctx`
(`StageContext`) and nothing else: a model is loaded from the rule's declared input (`ctx.model`),
inputs of several models or k are joined by their names (`ctx.keyed`), never by position, and every
value comes from the resolved config the rule passes (the schema holds the defaults).

Tests and other programs call `run_stage` the same way the workflow does; the package imports nothing
of Snakemake.
"""

from __future__ import annotations

from speaker_neurons.runner import STAGES, StageContext, run_stage, stage

__all__ = ["STAGES", "StageContext", "run_stage", "stage"]


# ------------------------------------------------------------------------------------------- corpus
@stage
def synthesize_demo_corpus(ctx: StageContext) -> dict:
    from speaker_neurons.data.synth import synthesize_corpus

    return synthesize_corpus(ctx.outputs["corpus_dir"], **ctx.params["demo"], workers=ctx.threads)


@stage
def build_manifest(ctx: StageContext) -> dict:
    from speaker_neurons.data.recipes import make_manifest

    return make_manifest(ctx.params["corpus"], ctx.params["split"], *ctx.outs("manifest", "transcripts"))


@stage
def audio_qc(ctx: StageContext) -> dict:
    from speaker_neurons.data.qc import qc_manifest

    return qc_manifest(ctx.inputs["manifest"], *ctx.outs("report", "manifest"), ctx.params["qc"], workers=ctx.threads)


# ------------------------------------------------------------------------------------------- models
@stage
def pretrain_melhubert(ctx: StageContext) -> dict:
    from speaker_neurons.pretrain import pretrain_resumable

    p = ctx.params
    return pretrain_resumable(ctx.inputs["manifest"], ctx.outputs, p["model"], p["train"], p["resume_dir"], ctx.device,
                              ctx.threads, corpus_dir=ctx.inputs.get("corpus"), centers_path=ctx.inputs.get("centers"))


@stage
def describe_model(ctx: StageContext) -> dict:
    """What a model is (kind, layers, widths, parameters), as JSON, for the reports."""
    from speaker_neurons.models import describe

    info = describe(ctx.inputs["model"], format=ctx.params["upstream"]["format"], mean_std=ctx.inputs.get("mean_std"))
    info.pop("path")
    return ctx.write_json("info", info)


@stage
def prune_model(ctx: StageContext) -> dict:
    """Structured FFN pruning of the parent (METHOD §5): a native model folder and `prune.json`."""
    from speaker_neurons import pruning
    from speaker_neurons.models import save_upstream

    p, model = ctx.params["prune"], ctx.model("parent", device="cpu")
    record = pruning.prune(model, p["strategy"], p["target"], ctx.inputs["protected"], p["seed"], parent=p["parent"],
                           parent_sha256=ctx.sha("parent"), k_ssl=p["k_ssl"], counted=ctx.inputs.get("counted", []))
    save_upstream(model, ctx.outputs["model_dir"], parent_sha256=ctx.sha("parent"))
    return ctx.write_json("record", record)


@stage
def continue_pretraining(ctx: StageContext) -> dict:
    """Continued pre-training of a pruned model (METHOD §5): the parent's weights and per-layer widths,
    the root model's targets and the parent's prediction head."""
    return _continue(ctx, ctx.model("parent", device="cpu"))


@stage
def iterative_step(ctx: StageContext) -> dict:
    """One step of iterative pruning (METHOD §5): prune the previous model (its own neuron sets
    protected), then continue pre-training."""
    from speaker_neurons import pruning

    model = ctx.model("parent", device="cpu")
    record = ctx.write_json("record", pruning.iterative_prune(model, ctx.params["step"], ctx.inputs["protected"],
                                                              ctx.sha("parent")))
    return {"prune": record, "train": _continue(ctx, model)}


def _continue(ctx: StageContext, model) -> dict:
    from speaker_neurons.pretrain import continue_resumable

    i, t = ctx.inputs, ctx.params["teacher"]
    teacher = ctx.model("teacher", device="cpu", spec=t["upstream"], mean_std_key="teacher_mean_std") \
        if "teacher" in i else None
    return continue_resumable(model, i["manifest"], ctx.outputs, i["centers"], i.get("head"), ctx.params["train"],
                              ctx.params["resume_dir"], ctx.device, ctx.threads, ctx.sha("parent"),
                              corpus_dir=i.get("corpus"), teacher=teacher, teacher_layer=t["layer"])


@stage
def teacher_targets(ctx: StageContext) -> dict:
    """The targets of continued or iterative pre-training from a released MelHuBERT: k-means centres of
    its hidden states at a layer (features and hidden states streamed through a store in the job's resume
    folder)."""
    from speaker_neurons.pretrain import teacher_centers

    return teacher_centers(ctx.model("model", device="cpu"), ctx.inputs["manifest"], ctx.params["train"],
                           ctx.params["layer"], ctx.threads, *ctx.outs("centers", "record"),
                           work_dir=ctx.params["resume_dir"])


# ------------------------------------------------------------------------------------------- i-vectors
@stage
def ivectors(ctx: StageContext) -> dict:
    """i-vectors for every utterance (METHOD §6: no labels used), and their quality."""
    from speaker_neurons.analysis.ivector import run_ivectors

    return run_ivectors(ctx.inputs["manifest"], ctx.params["ivector"], ctx.params["stability_extractors"],
                        *ctx.outs("ark", "scp", "extractor", "other_seeds", "quality"), device=ctx.device,
                        num_threads=ctx.threads, train_manifest_path=ctx.inputs.get("train_manifest"))


@stage
def ivector_clusters(ctx: StageContext) -> dict:
    """k-means on the i-vectors, the clusters against gender and their stability."""
    from speaker_neurons.analysis.clusters import run_ivector_clusters

    return run_ivector_clusters(ctx.inputs["scp"], ctx.inputs["manifest"], ctx.inputs.get("other_seeds"), ctx.params,
                                *ctx.outs("clusters", "partitions", "purity_tsv", "purity_png", "stability",
                                          "centres"))


@stage
def assign_ivector_clusters(ctx: StageContext) -> dict:
    """An evaluation corpus' utterances in the analysis corpus' i-vector clusters, from their own audio."""
    from speaker_neurons.analysis.clusters import run_assign_ivector_clusters

    i, p = ctx.inputs, ctx.params
    return run_assign_ivector_clusters(i["manifest"], p["corpus"], i["analysis_manifest"], p["analysis_corpus"],
                                       i["extractor"], i["centres"], ctx.out("clusters"), device=ctx.device,
                                       num_threads=ctx.threads)


# ------------------------------------------------------------------------------------------- analysis
@stage
def extract_features(ctx: StageContext) -> dict:
    """Hidden states of `feature_layer` (auto: round(0.75 L)) for every utterance, in shards."""
    from speaker_neurons.analysis.features import extract_layer_features
    from speaker_neurons.data.manifest import read_manifest

    return extract_layer_features(ctx.model(), read_manifest(ctx.inputs["manifest"]), ctx.params["feature_layer"],
                                  ctx.outputs["feature_dir"], max_batch_seconds=ctx.params["max_batch_seconds"])


@stage
def frame_kmeans(ctx: StageContext) -> dict:
    from speaker_neurons.analysis.clusters import run_frame_clustering

    p = ctx.params
    return run_frame_clustering(ctx.inputs["feature_dir"], ctx.inputs["manifest"], p["k"],
                                *ctx.outs("labels", "centroids", "hubert_tsv", "hubert_km", "kmeans_json"),
                                max_frames=p["max_frames"], seed=p["seed"], threads=ctx.threads)


@stage
def activation_stats(ctx: StageContext) -> dict:
    from speaker_neurons.analysis.clusters import read_partitions, read_utterance_clusters
    from speaker_neurons.analysis.frame_labels import load_labels
    from speaker_neurons.analysis.stats import activation_statistics
    from speaker_neurons.data.manifest import read_manifest

    p, i = ctx.params, ctx.inputs
    return activation_statistics(
        ctx.model(), read_manifest(i["manifest"]), load_labels(i["labels"]), read_utterance_clusters(i["clusters"]),
        p["k"], p["k_ivector"], p["top_fraction"], ctx.out("counts"), meta={"upstream": p["upstream"],
        "inputs": ctx.checksums}, out_json=ctx.out("meta"), max_mismatch=p["max_mismatch"],
        max_batch_seconds=p["max_batch_seconds"], partitions=read_partitions(i["partitions"]))


@stage
def neuron_sets(ctx: StageContext) -> dict:
    """Every named neuron set (METHOD §4) from the counts, the layer x set table and its plot."""
    from speaker_neurons.analysis.neuron_sets import run_neuron_sets

    return run_neuron_sets(ctx.inputs["counts"], ctx.inputs["meta"], ctx.outputs["sets"], ctx.params["rho"],
                           ctx.params["fdr"], *ctx.outs("table", "plot", "tested_vs_rho"), ctx.params["title"],
                           partitions_table=ctx.out("partitions"))


@stage
def evidence_report(ctx: StageContext) -> dict:
    """SSL clusters vs broad phone classes (where the corpus has frame phone classes)."""
    from speaker_neurons.analysis.report import evidence_report as report

    return report(ctx.inputs["feature_dir"], ctx.inputs["labels"], ctx.inputs.get("corpus"),
                  *ctx.outs("composition_tsv", "composition_png", "summary"))


@stage
def neuron_counts_summary(ctx: StageContext) -> dict:
    """One table of one model's neuron counts over every k_ssl (inputs `table/k<k>`)."""
    from speaker_neurons.analysis.compare import stack_neuron_counts

    tables = {int(k[1:]): path for k, path in ctx.keyed("table").items()}
    return {"rows": len(stack_neuron_counts(tables, ctx.out("table")))}


@stage
def compare_models(ctx: StageContext) -> dict:
    """The cross-model tables (inputs `table/<model>`, `info/<model>`, `evidence/<model>/k<k>`)."""
    from speaker_neurons.analysis.compare import compare_models as compare

    evidence = {(m, int(k[1:])): path for key, path in ctx.keyed("evidence").items() for m, k in [key.rsplit("/", 1)]}
    return compare(ctx.keyed("table"), evidence, ctx.keyed("info"), *ctx.outs("counts", "models", "plot"))


# ------------------------------------------------------------------------------------------- SID
@stage
def pool_layers(ctx: StageContext) -> dict:
    """Each hidden layer's mean over every segment's frames (the SID head's input), once per model."""
    from speaker_neurons import sid_pool

    p = ctx.params
    return sid_pool.pool_to_file(ctx.model(), ctx.inputs["manifest"], p["crop_seconds"], p["corpus_source"],
                                 p["min_crop_fraction"], ctx.out("pooled"), p["max_batch_seconds"], p["amp"])


@stage
def sid_eval(ctx: StageContext) -> dict:
    """SUPERB SID (and EER) of one model on its pooled layers, per layer set."""
    from speaker_neurons import sid

    return sid.run_sid(ctx.inputs["pooled"], ctx.params["sid"], ctx.inputs.get("lr_from"), ctx.params["corpus"],
                       ctx.params["lr_from_model"], ctx.inputs.get("veri_list"), *ctx.outs("result", "heads"),
                       ctx.device, ctx.out("predictions"))


@stage
def erase_ablation(ctx: StageContext) -> dict:
    """Erase neuron sets (W2 columns zeroed, no retraining) and score with the unerased model's heads."""
    from speaker_neurons import erase

    p, i = ctx.params, ctx.inputs
    sets = erase.erase_sets(*(i[s] if s in p["sets"] else None for s in ("ssl_cluster", "ivector_cluster")))
    pr = {"heads": i["pr_heads"], "manifest": i["pr_manifest"], "phones": i["phones"], "bootstrap": p["pr_bootstrap"],
          "bootstrap_seed": p["pr_bootstrap_seed"]} if "pr_heads" in i else None
    return erase.run(ctx.model(), i["pooled"], i["manifest"], i["clusters"], i["heads"], sets, p["random_seeds"],
                     p["max_batch_seconds"], *ctx.outs("table", "summary", "plot", "pr_table"), title=p["title"],
                     k_ssl=int(ctx.wildcards["k"]), pr=pr, amp=p["amp"], corpus=p["corpus"])


# ------------------------------------------------------------------------------------------- PR
@stage
def phone_targets(ctx: StageContext) -> dict:
    """A corpus' transcripts through the lexicon: phone targets per utterance."""
    from speaker_neurons.data.lexicon import phone_targets as make

    return make(ctx.inputs["transcripts"], ctx.inputs.get("lexicon"), bool(ctx.params["drop_oov"]), ctx.out("phones"))


@stage
def pr_eval(ctx: StageContext) -> dict:
    """SUPERB PR of one model: the CTC heads of every layer set on the frozen upstream (on the fly, or
    a frame cache within pr.feature_cache_gb), PER with intervals; resumable from params resume_dir."""
    from speaker_neurons.pr import run_pr

    i, p = ctx.inputs, ctx.params
    return run_pr(ctx.model(), i["phones"], i["manifest"], p["layer_sets"], p["pr"], i.get("lr_from"), p["corpus"],
                  p["lr_from_model"], *ctx.outs("result", "heads"), amp=p["amp"], resume_dir=p["resume_dir"],
                  max_batch_seconds=p["max_batch_seconds"], device=ctx.device,
                  out_predictions=ctx.out("predictions"))


# ------------------------------------------------------------------------------------------- summary
@stage
def summarize(ctx: StageContext) -> dict:
    """results/summary.tsv, summary.md and the plots: this run's headline figures beside the paper's."""
    from speaker_neurons.summary import MODEL_FILES, build_summary

    models = [{**m, **{f: ctx.inputs.get(f"{f}/{m['name']}") for f in MODEL_FILES}} for m in ctx.params["models"]]
    i = ctx.inputs
    return build_summary(models, i.get("quality"), i["purity"], int(ctx.params["k_ssl"]),
                         *ctx.outs("tsv", "md", "sid_png"), stability=i["stability"], controls=ctx.params["controls"],
                         comparison=ctx.params["comparison"], out_paired_png=ctx.out("paired_png"),
                         out_pr_png=ctx.out("pr_png"), out_pr_dev_png=ctx.out("pr_dev_png"),
                         corpora=ctx.params["corpora"])
