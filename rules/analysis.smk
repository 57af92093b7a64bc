# Stage 3: label-free analysis. Layer features -> frame k-means (SSL clusters); i-vectors ->
# utterance k-means (i-vector clusters); one streaming pass for activation counts; neuron sets;
# the evidence report (clusters vs phone classes and genders).


rule extract_features:
    input:
        unpack(model_inputs),
        manifest=f"{RESULTS}/manifest/manifest.tsv",
    output:
        feature_dir=directory(f"{RESULTS}/analysis/features"),
    params:
        upstream=upstream_spec(),
        feature_layer=config["analysis"]["feature_layer"],
        max_batch_seconds=config["analysis"]["max_batch_seconds"],
    log:
        f"{LOGS}/extract_features.log",
    benchmark:
        f"{BENCH}/extract_features.tsv"
    threads: 2
    resources:
        mem_mb=8000,
        runtime=120,
    conda:
        "../envs/speaker-neurons.yaml"
    script:
        "../workflow_scripts/extract_features.py"


rule frame_kmeans:
    input:
        feature_dir=rules.extract_features.output.feature_dir,
        manifest=f"{RESULTS}/manifest/manifest.tsv",
    output:
        labels=f"{RESULTS}/analysis/ssl_k{{k}}/labels.npz",
        centroids=f"{RESULTS}/analysis/ssl_k{{k}}/centroids.npy",
        hubert_tsv=f"{RESULTS}/analysis/ssl_k{{k}}/hubert.tsv",
        hubert_km=f"{RESULTS}/analysis/ssl_k{{k}}/hubert.km",
    params:
        max_frames=config["analysis"]["max_frames"],
        seed=config["analysis"]["seed"],
    log:
        f"{LOGS}/frame_kmeans_k{{k}}.log",
    benchmark:
        f"{BENCH}/frame_kmeans_k{{k}}.tsv"
    threads: 2
    resources:
        mem_mb=8000,
        runtime=60,
    conda:
        "../envs/speaker-neurons.yaml"
    script:
        "../workflow_scripts/frame_kmeans.py"


rule ivectors:
    input:
        manifest=f"{RESULTS}/manifest/manifest.tsv",
    output:
        ark=f"{RESULTS}/analysis/ivectors/ivectors.ark",
        scp=f"{RESULTS}/analysis/ivectors/ivectors.scp",
        quality=f"{RESULTS}/analysis/ivectors/quality.json",
    params:
        ivector=config["ivector"],
        device=config["upstream"]["device"],
    log:
        f"{LOGS}/ivectors.log",
    benchmark:
        f"{BENCH}/ivectors.tsv"
    threads: 2
    resources:
        mem_mb=8000,
        runtime=120,
    conda:
        "../envs/speaker-neurons.yaml"
    script:
        "../workflow_scripts/ivectors.py"


rule ivector_clusters:
    input:
        scp=ivector_scp(),
    output:
        clusters=f"{RESULTS}/analysis/ivectors/clusters.tsv",
    params:
        k=config["analysis"]["k_ivector"],
        seed=config["analysis"]["seed"],
    log:
        f"{LOGS}/ivector_clusters.log",
    benchmark:
        f"{BENCH}/ivector_clusters.tsv"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    conda:
        "../envs/speaker-neurons.yaml"
    script:
        "../workflow_scripts/ivector_clusters.py"


rule activation_stats:
    input:
        unpack(model_inputs),
        manifest=f"{RESULTS}/manifest/manifest.tsv",
        labels=rules.frame_kmeans.output.labels,
        clusters=rules.ivector_clusters.output.clusters,
    output:
        counts=f"{RESULTS}/analysis/ssl_k{{k}}/activation_counts.npz",
        meta=f"{RESULTS}/analysis/ssl_k{{k}}/activation_counts.json",
    params:
        upstream=upstream_spec(),
        k_ivector=config["analysis"]["k_ivector"],
        top_fraction=config["analysis"]["top_fraction"],
        max_mismatch=config["analysis"]["max_label_mismatch"],
        max_batch_seconds=config["analysis"]["max_batch_seconds"],
    log:
        f"{LOGS}/activation_stats_k{{k}}.log",
    benchmark:
        f"{BENCH}/activation_stats_k{{k}}.tsv"
    threads: 2
    resources:
        mem_mb=8000,
        runtime=120,
    conda:
        "../envs/speaker-neurons.yaml"
    script:
        "../workflow_scripts/activation_stats.py"


rule neuron_sets:
    input:
        counts=rules.activation_stats.output.counts,
    output:
        sets=expand(
            f"{RESULTS}/analysis/ssl_k{{{{k}}}}/neurons/{{name}}.json",
            name=NEURON_SETS,
        ),
        table=f"{RESULTS}/analysis/ssl_k{{k}}/neuron_counts.tsv",
        plot=f"{RESULTS}/analysis/ssl_k{{k}}/neuron_counts.png",
    params:
        rho=config["analysis"]["rho"],
    log:
        f"{LOGS}/neuron_sets_k{{k}}.log",
    benchmark:
        f"{BENCH}/neuron_sets_k{{k}}.tsv"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    conda:
        "../envs/speaker-neurons.yaml"
    script:
        "../workflow_scripts/neuron_sets.py"


rule evidence_report:
    input:
        unpack(frame_classes_input),
        manifest=f"{RESULTS}/manifest/manifest.tsv",
        feature_dir=rules.extract_features.output.feature_dir,
        labels=rules.frame_kmeans.output.labels,
        clusters=rules.ivector_clusters.output.clusters,
    output:
        summary=f"{RESULTS}/analysis/ssl_k{{k}}/report/evidence.json",
    log:
        f"{LOGS}/evidence_report_k{{k}}.log",
    benchmark:
        f"{BENCH}/evidence_report_k{{k}}.tsv"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=10,
    conda:
        "../envs/speaker-neurons.yaml"
    script:
        "../workflow_scripts/evidence_report.py"


rule neuron_counts_summary:
    input:
        tables=expand(
            f"{RESULTS}/analysis/ssl_k{{k}}/neuron_counts.tsv",
            k=config["analysis"]["k_ssl"],
        ),
    output:
        table=f"{RESULTS}/analysis/neuron_counts.tsv",
    params:
        k_ssl=config["analysis"]["k_ssl"],
    log:
        f"{LOGS}/neuron_counts_summary.log",
    benchmark:
        f"{BENCH}/neuron_counts_summary.tsv"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=5,
    conda:
        "../envs/speaker-neurons.yaml"
    script:
        "../workflow_scripts/neuron_counts_summary.py"
