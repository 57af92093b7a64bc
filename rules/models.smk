# Stage 2: the models. Each entry of config `models` is a model named by its folder,
# results/models/<name>/. A checkpoint model is read where it lies; a model the workflow makes is
# written by exactly one rule into results/models/<name>/model (a native folder), so a new kind of
# derived model (pruned, erased, continued) is one more rule restricted to its own names.


rule pretrain_melhubert:
    input:
        unpack(target_audio_input),
        unpack(given_centers_input),
        manifest=PRETRAIN_MANIFEST,
    output:
        model_dir=directory(f"{RESULTS}/models/{{model}}/model"),
        head=f"{RESULTS}/models/{{model}}/pretrain/head.pt",
        summary=f"{RESULTS}/models/{{model}}/pretrain/summary.json",
        train_log=f"{RESULTS}/models/{{model}}/pretrain/train_log.tsv",
        loss_curve=report(
            f"{RESULTS}/models/{{model}}/pretrain/loss_curve.png",
            caption="../report/loss_curve.rst",
            category="6. Pre-training",
            subcategory="{model}",
        ),
        kmeans_centers=f"{RESULTS}/models/{{model}}/pretrain/kmeans_centers.npy",
        checkpoints=directory(f"{RESULTS}/models/{{model}}/pretrain/checkpoints"),
        provenance=f"{RESULTS}/models/{{model}}/pretrain/provenance/pretrain_melhubert.json",
    wildcard_constraints:
        model=name_regex(PRETRAINED),
    params:
        resume_dir=lambda wc: f"{RESULTS}/resume/{wc.model}/pretrain_melhubert",
        compute_threads=config["upstream"]["threads"],
        model=config["pretrain"]["model"],
        train=config["pretrain"]["train"],
        device=config["upstream"]["device"],
    log:
        f"{LOGS}/{{model}}/pretrain_melhubert.log",
    benchmark:
        f"{BENCH}/{{model}}/pretrain_melhubert.tsv"
    threads: config["upstream"]["threads"]
    resources:
        mem_mb=res("pretrain_melhubert", "mem_mb"),
        runtime=res("pretrain_melhubert", "runtime"),
        disk_mb=res("pretrain_melhubert", "disk_mb"),
        gpu=GPU,
        gpu_model=GPU_MODEL,
    conda:
        "../envs/speaker-neurons.yaml"
    script:
        "../workflow_scripts/run_stage.py"


rule describe_model:
    input:
        unpack(model_input),
    output:
        info=f"{RESULTS}/models/{{model}}/model_info.json",
        provenance=f"{RESULTS}/models/{{model}}/provenance/describe_model.json",
    params:
        upstream=model_params,
    log:
        f"{LOGS}/{{model}}/describe_model.log",
    benchmark:
        f"{BENCH}/{{model}}/describe_model.tsv"
    threads: 1
    resources:
        mem_mb=res("describe_model", "mem_mb"),
        runtime=res("describe_model", "runtime"),
        disk_mb=res("describe_model", "disk_mb"),
    conda:
        "../envs/speaker-neurons.yaml"
    script:
        "../workflow_scripts/run_stage.py"


rule prune_model:
    input:
        unpack(prune_inputs),
    output:
        model_dir=directory(f"{RESULTS}/models/{{model}}/model"),
        record=f"{RESULTS}/models/{{model}}/prune.json",
        provenance=f"{RESULTS}/models/{{model}}/provenance/prune_model.json",
    wildcard_constraints:
        model=name_regex(PRUNED),
    params:
        upstream=parent_params,
        prune=prune_params,
        device="cpu",
    log:
        f"{LOGS}/{{model}}/prune_model.log",
    benchmark:
        f"{BENCH}/{{model}}/prune_model.tsv"
    threads: 1
    resources:
        mem_mb=res("prune_model", "mem_mb"),
        runtime=res("prune_model", "runtime"),
        disk_mb=res("prune_model", "disk_mb"),
    conda:
        "../envs/speaker-neurons.yaml"
    script:
        "../workflow_scripts/run_stage.py"


rule teacher_targets:
    input:
        unpack(model_input),
        manifest=PRETRAIN_MANIFEST,
    output:
        centers=f"{RESULTS}/models/{{model}}/pretrain/kmeans_centers.npy",
        record=f"{RESULTS}/models/{{model}}/pretrain/teacher_targets.json",
        provenance=f"{RESULTS}/models/{{model}}/pretrain/provenance/teacher_targets.json",
    wildcard_constraints:
        model=name_regex(TEACHERS),
    params:
        resume_dir=lambda wc: f"{RESULTS}/resume/{wc.model}/teacher_targets",
        compute_threads=config["upstream"]["threads"],
        upstream=model_params,
        train=config["pretrain"]["train"],
        layer=config["prune"]["continue"]["target_layer"],
        device=config["upstream"]["device"],
    log:
        f"{LOGS}/{{model}}/teacher_targets.log",
    benchmark:
        f"{BENCH}/{{model}}/teacher_targets.tsv"
    threads: config["upstream"]["threads"]
    resources:
        mem_mb=res("teacher_targets", "mem_mb"),
        runtime=res("teacher_targets", "runtime"),
        disk_mb=res("teacher_targets", "disk_mb"),
        gpu=GPU,
        gpu_model=GPU_MODEL,
    conda:
        "../envs/speaker-neurons.yaml"
    script:
        "../workflow_scripts/run_stage.py"


rule continue_pretraining:
    input:
        unpack(train_inputs),
    output:
        model_dir=directory(f"{RESULTS}/models/{{model}}/model"),
        head=f"{RESULTS}/models/{{model}}/pretrain/head.pt",
        summary=f"{RESULTS}/models/{{model}}/pretrain/summary.json",
        train_log=f"{RESULTS}/models/{{model}}/pretrain/train_log.tsv",
        loss_curve=report(
            f"{RESULTS}/models/{{model}}/pretrain/loss_curve.png",
            caption="../report/loss_curve.rst",
            category="6. Pre-training",
            subcategory="{model}",
        ),
        kmeans_centers=f"{RESULTS}/models/{{model}}/pretrain/kmeans_centers.npy",
        checkpoints=directory(f"{RESULTS}/models/{{model}}/pretrain/checkpoints"),
        provenance=f"{RESULTS}/models/{{model}}/pretrain/provenance/continue_pretraining.json",
    wildcard_constraints:
        model=name_regex(CONTINUED),
    params:
        resume_dir=lambda wc: f"{RESULTS}/resume/{wc.model}/continue_pretraining",
        teacher=teacher_params,
        compute_threads=config["upstream"]["threads"],
        train=train_config("continue"),
        upstream=parent_params,
        device=config["upstream"]["device"],
    log:
        f"{LOGS}/{{model}}/continue_pretraining.log",
    benchmark:
        f"{BENCH}/{{model}}/continue_pretraining.tsv"
    threads: config["upstream"]["threads"]
    resources:
        mem_mb=res("continue_pretraining", "mem_mb"),
        runtime=res("continue_pretraining", "runtime"),
        disk_mb=res("continue_pretraining", "disk_mb"),
        gpu=GPU,
        gpu_model=GPU_MODEL,
    conda:
        "../envs/speaker-neurons.yaml"
    script:
        "../workflow_scripts/run_stage.py"


rule iterative_step:
    input:
        unpack(train_inputs),
    output:
        model_dir=directory(f"{RESULTS}/models/{{model}}/model"),
        head=f"{RESULTS}/models/{{model}}/pretrain/head.pt",
        summary=f"{RESULTS}/models/{{model}}/pretrain/summary.json",
        train_log=f"{RESULTS}/models/{{model}}/pretrain/train_log.tsv",
        loss_curve=report(
            f"{RESULTS}/models/{{model}}/pretrain/loss_curve.png",
            caption="../report/loss_curve.rst",
            category="6. Pre-training",
            subcategory="{model}",
        ),
        kmeans_centers=f"{RESULTS}/models/{{model}}/pretrain/kmeans_centers.npy",
        checkpoints=directory(f"{RESULTS}/models/{{model}}/pretrain/checkpoints"),
        record=f"{RESULTS}/models/{{model}}/prune.json",
        provenance=f"{RESULTS}/models/{{model}}/pretrain/provenance/iterative_step.json",
    wildcard_constraints:
        model=name_regex(ITERATIVE),
    params:
        resume_dir=lambda wc: f"{RESULTS}/resume/{wc.model}/iterative_step",
        teacher=teacher_params,
        compute_threads=config["upstream"]["threads"],
        train=train_config("iterative"),
        upstream=parent_params,
        step=iterative_params,
        device=config["upstream"]["device"],
    log:
        f"{LOGS}/{{model}}/iterative_step.log",
    benchmark:
        f"{BENCH}/{{model}}/iterative_step.tsv"
    threads: config["upstream"]["threads"]
    resources:
        mem_mb=res("iterative_step", "mem_mb"),
        runtime=res("iterative_step", "runtime"),
        disk_mb=res("iterative_step", "disk_mb"),
        gpu=GPU,
        gpu_model=GPU_MODEL,
    conda:
        "../envs/speaker-neurons.yaml"
    script:
        "../workflow_scripts/run_stage.py"
