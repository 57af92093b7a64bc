# Stage 3d: SUPERB phoneme recognition on the PR corpus (results/models/<model>/pr/<corpus>/): the
# corpus' transcripts through the lexicon into phone targets; then, in one job per model, the CTC heads
# of every layer set on the frozen upstream (run on the fly on an int16 audio cache, or once into a frame
# cache where pr.feature_cache_gb allows) with PER and its intervals. The caches (pr.scratch_dir) and the
# heads' checkpoints (resume_dir) are not outputs: a killed job resumes from them, and they are removed
# when the job ends.
P = f"{RESULTS}/models/{{model}}/pr/{PR_CORPUS}"


rule phone_targets:
    input:
        unpack(lexicon_input),
        transcripts=f"{CORPORA}/{{corpus}}/transcripts.tsv",
    output:
        phones=f"{CORPORA}/{{corpus}}/phone_targets.tsv",
        provenance=f"{CORPORA}/{{corpus}}/provenance/phone_targets.json",
    params:
        drop_oov=config["pr"]["drop_oov"],
    log:
        f"{LOGS}/corpora/{{corpus}}/phone_targets.log",
    benchmark:
        f"{BENCH}/corpora/{{corpus}}/phone_targets.tsv"
    threads: 1
    resources:
        mem_mb=res("phone_targets", "mem_mb"),
        runtime=res("phone_targets", "runtime"),
        disk_mb=res("phone_targets", "disk_mb"),
    conda:
        "../envs/speaker-neurons.yaml"
    script:
        "../workflow_scripts/run_stage.py"


rule pr_eval:
    input:
        unpack(model_input),
        unpack(pr_inputs),
        phones=f"{CORPORA}/{PR_CORPUS}/phone_targets.tsv",
        manifest=PR_MANIFEST,
    output:
        result=f"{P}/pr.json",
        heads=f"{P}/heads.safetensors",
        predictions=f"{P}/predictions.tsv",
        provenance=f"{P}/provenance/pr_eval.json",
    params:
        compute_threads=config["upstream"]["threads"],
        upstream=model_params,
        max_batch_seconds=config["analysis"]["max_batch_seconds"],
        pr=config["pr"],
        layer_sets=config["sid"]["layer_sets"],
        corpus=PR_CORPUS,
        lr_from_model=pr_lr_from,
        device=config["upstream"]["device"],
        amp=config["upstream"]["amp"],
        resume_dir=lambda wc: f"{RESULTS}/resume/{wc.model}/pr_eval",
    log:
        f"{LOGS}/{{model}}/pr_eval.log",
    benchmark:
        f"{BENCH}/{{model}}/pr_eval.tsv"
    threads: config["upstream"]["threads"]
    resources:
        mem_mb=res("pr_eval", "mem_mb"),
        runtime=res("pr_eval", "runtime"),
        disk_mb=res("pr_eval", "disk_mb"),
        gpu=GPU,
        gpu_model=GPU_MODEL,
    conda:
        "../envs/speaker-neurons.yaml"
    script:
        "../workflow_scripts/run_stage.py"
