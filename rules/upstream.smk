# Stage 2: the upstream model. With upstream.path empty the workflow pre-trains the demo MelHuBERT
# on the corpus itself; otherwise the checkpoint at upstream.path is used as it is.


rule pretrain_melhubert:
    input:
        manifest=f"{RESULTS}/manifest/manifest.tsv",
    output:
        model_dir=directory(f"{RESULTS}/upstream/melhubert_demo/model"),
        loss_curve=f"{RESULTS}/upstream/melhubert_demo/loss_curve.png",
        train_log=f"{RESULTS}/upstream/melhubert_demo/train_log.tsv",
    params:
        model=config["pretrain"]["model"],
        train=config["pretrain"]["train"],
        device=config["upstream"]["device"],
    log:
        f"{LOGS}/pretrain_melhubert.log",
    benchmark:
        f"{BENCH}/pretrain_melhubert.tsv"
    threads: 2
    resources:
        mem_mb=8000,
        runtime=60,
    conda:
        "../envs/speaker-neurons.yaml"
    script:
        "../workflow_scripts/pretrain_melhubert.py"
