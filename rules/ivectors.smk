# Stage 3a: the corpus' own speaker structure, the same for every model. i-vectors (no labels; the
# extractor trained on stages.ivector_extractor) and their k-means clusters (the i-vector clusters: one
# extractor's, or the consensus of several), with their quality and their gender purity; an evaluation
# corpus' utterances get their cluster from their own audio (assign_ivector_clusters).


rule ivectors:
    input:
        unpack(ivector_extractor_input),
        manifest=MANIFEST,
    output:
        ark=f"{IVECTORS}/ivectors.ark",
        scp=f"{IVECTORS}/ivectors.scp",
        quality=f"{IVECTORS}/quality.json",
        extractor=f"{IVECTORS}/extractor.npz",
        other_seeds=f"{IVECTORS}/extractor_seeds.npz",
        provenance=f"{IVECTORS}/provenance/ivectors.json",
    params:
        compute_threads=config["upstream"]["threads"],
        ivector=config["ivector"],
        stability_extractors=config["analysis"]["stability_extractors"],
        device=config["upstream"]["device"],
    log:
        f"{LOGS}/ivectors.log",
    benchmark:
        f"{BENCH}/ivectors.tsv"
    threads: config["upstream"]["threads"]
    resources:
        mem_mb=res("ivectors", "mem_mb"),
        runtime=res("ivectors", "runtime"),
        disk_mb=res("ivectors", "disk_mb"),
        gpu=GPU,
        gpu_model=GPU_MODEL,
    conda:
        "../envs/speaker-neurons.yaml"
    script:
        "../workflow_scripts/run_stage.py"


rule ivector_clusters:
    input:
        scp=ivector_scp(),
        manifest=MANIFEST,
        other_seeds=ivector_other_seeds(),
    output:
        clusters=f"{IVECTORS}/clusters.tsv",
        partitions=f"{IVECTORS}/partitions.tsv",
        purity_tsv=report(
            f"{IVECTORS}/gender_purity.tsv",
            caption="../report/gender_purity.rst",
            category="5. Clusters",
        ),
        purity_png=report(
            f"{IVECTORS}/gender_purity.png",
            caption="../report/gender_purity.rst",
            category="5. Clusters",
        ),
        stability=f"{IVECTORS}/cluster_stability.json",
        centres=f"{IVECTORS}/cluster_centres.npz",
        provenance=f"{IVECTORS}/provenance/ivector_clusters.json",
    params:
        k=config["analysis"]["k_ivector"],
        seed=config["analysis"]["seed"],
        n_init=config["analysis"]["ivector_n_init"],
        stability_runs=config["analysis"]["stability_runs"],
        stability_warn_below=config["analysis"]["stability_warn_below"],
        partition=config["analysis"]["ivector_partition"],
        extractor_seed=(
            None if config["ivector"]["kaldi_ivectors"] else config["ivector"]["seed"]
        ),
    log:
        f"{LOGS}/ivector_clusters.log",
    benchmark:
        f"{BENCH}/ivector_clusters.tsv"
    threads: 1
    resources:
        mem_mb=res("ivector_clusters", "mem_mb"),
        runtime=res("ivector_clusters", "runtime"),
        disk_mb=res("ivector_clusters", "disk_mb"),
    conda:
        "../envs/speaker-neurons.yaml"
    script:
        "../workflow_scripts/run_stage.py"


# One job per evaluation corpus: each utterance's i-vector by the analysis corpus' extractor (and its mean
# i-vector), then the nearest of the analysis corpus' k-means centres; nothing is looked up by utterance id.
rule assign_ivector_clusters:
    input:
        manifest=f"{CORPORA}/{{corpus}}/manifest.tsv",
        analysis_manifest=MANIFEST,
        extractor=f"{IVECTORS}/extractor.npz",
        centres=rules.ivector_clusters.output.centres,
    output:
        clusters=f"{CORPORA}/{{corpus}}/ivector_clusters_from_{ANALYSIS_CORPUS}.tsv",
        provenance=f"{CORPORA}/{{corpus}}/provenance/ivector_clusters_from_{ANALYSIS_CORPUS}.json",
    params:
        compute_threads=config["upstream"]["threads"],
        corpus=lambda wc: wc.corpus,
        analysis_corpus=ANALYSIS_CORPUS,
        device=config["upstream"]["device"],
    log:
        f"{LOGS}/corpora/{{corpus}}/assign_ivector_clusters.log",
    benchmark:
        f"{BENCH}/corpora/{{corpus}}/assign_ivector_clusters.tsv"
    threads: config["upstream"]["threads"]
    resources:
        mem_mb=res("assign_ivector_clusters", "mem_mb"),
        runtime=res("assign_ivector_clusters", "runtime"),
        disk_mb=res("assign_ivector_clusters", "disk_mb"),
        gpu=GPU,
        gpu_model=GPU_MODEL,
    conda:
        "../envs/speaker-neurons.yaml"
    script:
        "../workflow_scripts/run_stage.py"
