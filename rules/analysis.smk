# Stage 3b: label-free analysis of each model, under results/models/<model>/analysis/.
# Layer features -> frame k-means (SSL clusters); one streaming pass for activation counts per
# (i-vector cluster, SSL cluster); neuron sets; the evidence report (SSL clusters vs phone classes).
A = f"{RESULTS}/models/{{model}}/analysis"
K = f"{A}/ssl_k{{k}}"


rule extract_features:
    input:
        unpack(model_input),
        manifest=MANIFEST,
    output:
        feature_dir=directory(f"{A}/features"),
        provenance=f"{A}/provenance/extract_features.json",
    params:
        compute_threads=config["upstream"]["threads"],
        upstream=model_params,
        feature_layer=config["analysis"]["feature_layer"],
        max_batch_seconds=config["analysis"]["max_batch_seconds"],
        device=config["upstream"]["device"],
    log:
        f"{LOGS}/{{model}}/extract_features.log",
    benchmark:
        f"{BENCH}/{{model}}/extract_features.tsv"
    threads: config["upstream"]["threads"]
    resources:
        mem_mb=res("extract_features", "mem_mb"),
        runtime=res("extract_features", "runtime"),
        disk_mb=res("extract_features", "disk_mb"),
        gpu=GPU,
        gpu_model=GPU_MODEL,
    conda:
        "../envs/speaker-neurons.yaml"
    script:
        "../workflow_scripts/run_stage.py"


rule frame_kmeans:
    input:
        feature_dir=rules.extract_features.output.feature_dir,
        manifest=MANIFEST,
    output:
        labels=f"{K}/labels.npz",
        centroids=f"{K}/centroids.npy",
        hubert_tsv=f"{K}/hubert.tsv",
        hubert_km=f"{K}/hubert.km",
        kmeans_json=f"{K}/kmeans.json",
        provenance=f"{K}/provenance/frame_kmeans.json",
    params:
        compute_threads=config["upstream"]["threads"],
        k=lambda wc: int(wc.k),
        max_frames=config["analysis"]["max_frames"],
        seed=config["analysis"]["seed"],
    log:
        f"{LOGS}/{{model}}/frame_kmeans_k{{k}}.log",
    benchmark:
        f"{BENCH}/{{model}}/frame_kmeans_k{{k}}.tsv"
    threads: config["upstream"]["threads"]
    resources:
        mem_mb=res("frame_kmeans", "mem_mb"),
        runtime=res("frame_kmeans", "runtime"),
        disk_mb=res("frame_kmeans", "disk_mb"),
    conda:
        "../envs/speaker-neurons.yaml"
    script:
        "../workflow_scripts/run_stage.py"


rule activation_stats:
    input:
        unpack(model_input),
        manifest=MANIFEST,
        labels=rules.frame_kmeans.output.labels,
        clusters=rules.ivector_clusters.output.clusters,
        partitions=rules.ivector_clusters.output.partitions,
    output:
        counts=f"{K}/activation_counts.npz",
        meta=f"{K}/activation_counts.json",
        provenance=f"{K}/provenance/activation_stats.json",
    params:
        compute_threads=config["upstream"]["threads"],
        upstream=model_params,
        k=lambda wc: int(wc.k),
        k_ivector=config["analysis"]["k_ivector"],
        top_fraction=config["analysis"]["top_fraction"],
        max_mismatch=config["analysis"]["max_label_mismatch"],
        max_batch_seconds=config["analysis"]["max_batch_seconds"],
        device=config["upstream"]["device"],
    log:
        f"{LOGS}/{{model}}/activation_stats_k{{k}}.log",
    benchmark:
        f"{BENCH}/{{model}}/activation_stats_k{{k}}.tsv"
    threads: config["upstream"]["threads"]
    resources:
        mem_mb=res("activation_stats", "mem_mb"),
        runtime=res("activation_stats", "runtime"),
        disk_mb=res("activation_stats", "disk_mb"),
        gpu=GPU,
        gpu_model=GPU_MODEL,
    conda:
        "../envs/speaker-neurons.yaml"
    script:
        "../workflow_scripts/run_stage.py"


rule neuron_sets:
    input:
        counts=rules.activation_stats.output.counts,
        meta=rules.activation_stats.output.meta,
    output:
        sets=expand(f"{K}/neurons/{{name}}.json", name=NEURON_SETS, allow_missing=True),
        table=f"{K}/neuron_counts.tsv",
        tested_vs_rho=f"{K}/tested_vs_rho.tsv",
        partitions=f"{K}/ivector_partitions.tsv",
        plot=report(
            f"{K}/neuron_counts.png",
            caption="../report/neuron_counts.rst",
            category="2. Neurons",
            subcategory="{model}",
        ),
        provenance=f"{K}/provenance/neuron_sets.json",
    params:
        rho=config["analysis"]["rho"],
        fdr=config["analysis"]["fdr"],
        title=lambda wc: f"{wc.model}: neurons per layer and set (k_ssl={wc.k})",
    log:
        f"{LOGS}/{{model}}/neuron_sets_k{{k}}.log",
    benchmark:
        f"{BENCH}/{{model}}/neuron_sets_k{{k}}.tsv"
    threads: 1
    resources:
        mem_mb=res("neuron_sets", "mem_mb"),
        runtime=res("neuron_sets", "runtime"),
        disk_mb=res("neuron_sets", "disk_mb"),
    conda:
        "../envs/speaker-neurons.yaml"
    script:
        "../workflow_scripts/run_stage.py"


rule evidence_report:
    input:
        unpack(demo_corpus_input),
        feature_dir=rules.extract_features.output.feature_dir,
        labels=rules.frame_kmeans.output.labels,
    output:
        composition_tsv=f"{K}/report/ssl_phone_composition.tsv",
        composition_png=report(
            f"{K}/report/ssl_phone_composition.png",
            caption="../report/phone_composition.rst",
            category="5. Clusters",
            subcategory="{model}",
        ),
        summary=f"{K}/report/evidence.json",
        provenance=f"{K}/report/provenance/evidence_report.json",
    log:
        f"{LOGS}/{{model}}/evidence_report_k{{k}}.log",
    benchmark:
        f"{BENCH}/{{model}}/evidence_report_k{{k}}.tsv"
    threads: 1
    resources:
        mem_mb=res("evidence_report", "mem_mb"),
        runtime=res("evidence_report", "runtime"),
        disk_mb=res("evidence_report", "disk_mb"),
    conda:
        "../envs/speaker-neurons.yaml"
    script:
        "../workflow_scripts/run_stage.py"


rule neuron_counts_summary:
    input:
        unpack(k_tables),
    output:
        table=f"{A}/neuron_counts.tsv",
        provenance=f"{A}/provenance/neuron_counts_summary.json",
    log:
        f"{LOGS}/{{model}}/neuron_counts_summary.log",
    benchmark:
        f"{BENCH}/{{model}}/neuron_counts_summary.tsv"
    threads: 1
    resources:
        mem_mb=res("neuron_counts_summary", "mem_mb"),
        runtime=res("neuron_counts_summary", "runtime"),
        disk_mb=res("neuron_counts_summary", "disk_mb"),
    conda:
        "../envs/speaker-neurons.yaml"
    script:
        "../workflow_scripts/run_stage.py"


rule compare_models:
    input:
        unpack(compare_inputs),
    output:
        counts=f"{COMPARISON}/neuron_counts.tsv",
        models=f"{COMPARISON}/models.tsv",
        plot=report(
            f"{COMPARISON}/neuron_totals.png",
            caption="../report/neuron_totals.rst",
            category="2. Neurons",
        ),
        provenance=f"{COMPARISON}/provenance/compare_models.json",
    log:
        f"{LOGS}/compare_models.log",
    benchmark:
        f"{BENCH}/compare_models.tsv"
    threads: 1
    resources:
        mem_mb=res("compare_models", "mem_mb"),
        runtime=res("compare_models", "runtime"),
        disk_mb=res("compare_models", "disk_mb"),
    conda:
        "../envs/speaker-neurons.yaml"
    script:
        "../workflow_scripts/run_stage.py"


# SID (and the erase ablation, which scores with its heads) on the SID corpus: results/models/<model>/sid/<corpus>/
S = f"{RESULTS}/models/{{model}}/sid/{SID_CORPUS}"


rule pool_layers:
    input:
        unpack(model_input),
        manifest=SID_MANIFEST,
    output:
        pooled=f"{S}/pooled_layers.npz",
        provenance=f"{S}/provenance/pool_layers.json",
    params:
        compute_threads=config["upstream"]["threads"],
        upstream=model_params,
        crop_seconds=config["sid"]["crop_seconds"],
        corpus_source=CAT.corpus("sid").source,
        min_crop_fraction=config["sid"]["min_crop_fraction"],
        max_batch_seconds=config["analysis"]["max_batch_seconds"],
        amp=config["upstream"]["amp"],
        device=config["upstream"]["device"],
    log:
        f"{LOGS}/{{model}}/pool_layers.log",
    benchmark:
        f"{BENCH}/{{model}}/pool_layers.tsv"
    threads: config["upstream"]["threads"]
    resources:
        mem_mb=res("pool_layers", "mem_mb"),
        runtime=res("pool_layers", "runtime"),
        disk_mb=res("pool_layers", "disk_mb"),
        gpu=GPU,
        gpu_model=GPU_MODEL,
    conda:
        "../envs/speaker-neurons.yaml"
    script:
        "../workflow_scripts/run_stage.py"


rule sid_eval:
    input:
        unpack(sid_inputs),
        pooled=rules.pool_layers.output.pooled,
    output:
        result=f"{S}/sid.json",
        heads=f"{S}/heads.safetensors",
        predictions=f"{S}/predictions.tsv",
        provenance=f"{S}/provenance/sid_eval.json",
    params:
        compute_threads=config["upstream"]["threads"],
        sid=config["sid"],
        corpus=SID_CORPUS,
        lr_from_model=sid_lr_from,
        device=config["upstream"]["device"],
    log:
        f"{LOGS}/{{model}}/sid_eval.log",
    benchmark:
        f"{BENCH}/{{model}}/sid_eval.tsv"
    threads: config["upstream"]["threads"]
    resources:
        mem_mb=res("sid_eval", "mem_mb"),
        runtime=res("sid_eval", "runtime"),
        disk_mb=res("sid_eval", "disk_mb"),
        gpu=GPU,
        gpu_model=GPU_MODEL,
    conda:
        "../envs/speaker-neurons.yaml"
    script:
        "../workflow_scripts/run_stage.py"


rule erase_ablation:
    input:
        unpack(model_input),
        unpack(erase_pr_inputs),
        manifest=SID_MANIFEST,
        pooled=rules.pool_layers.output.pooled,
        heads=rules.sid_eval.output.heads,
        clusters=sid_ivector_clusters(),
        ssl_cluster=f"{K}/neurons/ssl_cluster.json",
        ivector_cluster=f"{K}/neurons/ivector_cluster.json",
    output:
        table=report(
            f"{K}/erase/erase.tsv",
            caption="../report/erase.rst",
            category="4. Erase ablation",
            subcategory="{model}",
        ),
        summary=f"{K}/erase/erase.json",
        pr_table=f"{K}/erase/erase_pr.tsv",
        plot=report(
            f"{K}/erase/erase.png",
            caption="../report/erase.rst",
            category="4. Erase ablation",
            subcategory="{model}",
        ),
        provenance=f"{K}/erase/provenance/erase_ablation.json",
    params:
        compute_threads=config["upstream"]["threads"],
        upstream=model_params,
        sets=config["erase"]["sets"],
        random_seeds=config["erase"]["random_seeds"],
        pr_bootstrap=config["pr"]["bootstrap"],
        pr_bootstrap_seed=config["pr"]["bootstrap_seed"],
        max_batch_seconds=config["analysis"]["max_batch_seconds"],
        device=config["upstream"]["device"],
        amp=config["upstream"]["amp"],
        corpus=SID_CORPUS,
        title=lambda wc: f"{wc.model}: erase ablation (k_ssl={wc.k})",
    log:
        f"{LOGS}/{{model}}/erase_ablation_k{{k}}.log",
    benchmark:
        f"{BENCH}/{{model}}/erase_ablation_k{{k}}.tsv"
    threads: config["upstream"]["threads"]
    resources:
        mem_mb=res("erase_ablation", "mem_mb"),
        runtime=res("erase_ablation", "runtime"),
        disk_mb=res("erase_ablation", "disk_mb"),
        gpu=GPU,
        gpu_model=GPU_MODEL,
    conda:
        "../envs/speaker-neurons.yaml"
    script:
        "../workflow_scripts/run_stage.py"
