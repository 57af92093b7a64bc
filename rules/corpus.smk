# Stage 1: audio in, per corpus (results/corpora/<corpus>/). The synthesized demo corpora, one
# manifest schema for every corpus (with its transcripts where it has them), audio QC.


rule synthesize_demo_corpus:
    output:
        corpus_dir=directory(f"{CORPORA}/{{corpus}}/audio"),
        provenance=f"{CORPORA}/{{corpus}}/provenance/synthesize_demo_corpus.json",
    wildcard_constraints:
        corpus=name_regex(SYNTHESIZED),
    params:
        demo=synth_params,
    log:
        f"{LOGS}/corpora/{{corpus}}/synthesize_demo_corpus.log",
    benchmark:
        f"{BENCH}/corpora/{{corpus}}/synthesize_demo_corpus.tsv"
    threads: config["upstream"]["threads"]
    resources:
        mem_mb=res("synthesize_demo_corpus", "mem_mb"),
        runtime=res("synthesize_demo_corpus", "runtime"),
        disk_mb=res("synthesize_demo_corpus", "disk_mb"),
    conda:
        "../envs/speaker-neurons.yaml"
    script:
        "../workflow_scripts/run_stage.py"


rule build_manifest:
    input:
        unpack(corpus_audio_input),
    output:
        manifest=f"{CORPORA}/{{corpus}}/manifest.raw.tsv",
        transcripts=f"{CORPORA}/{{corpus}}/transcripts.tsv",
        provenance=f"{CORPORA}/{{corpus}}/provenance/build_manifest.json",
    params:
        corpus=corpus_params,
        split=split_params,
    log:
        f"{LOGS}/corpora/{{corpus}}/build_manifest.log",
    benchmark:
        f"{BENCH}/corpora/{{corpus}}/build_manifest.tsv"
    threads: 1
    resources:
        mem_mb=res("build_manifest", "mem_mb"),
        runtime=res("build_manifest", "runtime"),
        disk_mb=res("build_manifest", "disk_mb"),
    conda:
        "../envs/speaker-neurons.yaml"
    script:
        "../workflow_scripts/run_stage.py"


rule audio_qc:
    input:
        manifest=rules.build_manifest.output.manifest,
    output:
        manifest=f"{CORPORA}/{{corpus}}/manifest.tsv",
        report=f"{CORPORA}/{{corpus}}/qc.tsv",
        provenance=f"{CORPORA}/{{corpus}}/provenance/audio_qc.json",
    params:
        qc=config["qc"],
    log:
        f"{LOGS}/corpora/{{corpus}}/audio_qc.log",
    benchmark:
        f"{BENCH}/corpora/{{corpus}}/audio_qc.tsv"
    threads: config["upstream"]["threads"]
    resources:
        mem_mb=res("audio_qc", "mem_mb"),
        runtime=res("audio_qc", "runtime"),
        disk_mb=res("audio_qc", "disk_mb"),
    conda:
        "../envs/speaker-neurons.yaml"
    script:
        "../workflow_scripts/run_stage.py"
