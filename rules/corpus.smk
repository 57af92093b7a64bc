# Stage 1: audio in. The synthesized demo corpus, one manifest schema for every corpus, audio QC.


rule synthesize_demo_corpus:
    output:
        corpus_dir=directory(f"{RESULTS}/corpus/demo"),
        provenance=f"{RESULTS}/corpus/provenance/synthesize_demo_corpus.json",
    params:
        demo=config["corpus"]["demo"],
    log:
        f"{LOGS}/synthesize_demo_corpus.log",
    benchmark:
        f"{BENCH}/synthesize_demo_corpus.tsv"
    threads: config["upstream"]["threads"]
    resources:
        mem_mb=res("synthesize_demo_corpus", "mem_mb", 2000),
        runtime=res("synthesize_demo_corpus", "runtime", 30),
    conda:
        "../envs/speaker-neurons.yaml"
    script:
        "../workflow_scripts/run_stage.py"


rule build_manifest:
    input:
        unpack(demo_corpus_input),
    output:
        manifest=f"{RESULTS}/manifest/manifest.raw.tsv",
        provenance=f"{RESULTS}/manifest/provenance/build_manifest.json",
    params:
        corpus=corpus_kwargs(),
        split=config["corpus"]["split"],
    log:
        f"{LOGS}/build_manifest.log",
    benchmark:
        f"{BENCH}/build_manifest.tsv"
    threads: 1
    resources:
        mem_mb=res("build_manifest", "mem_mb", 2000),
        runtime=res("build_manifest", "runtime", 30),
    conda:
        "../envs/speaker-neurons.yaml"
    script:
        "../workflow_scripts/run_stage.py"


rule audio_qc:
    input:
        manifest=rules.build_manifest.output.manifest,
    output:
        manifest=MANIFEST,
        report=f"{RESULTS}/qc/qc.tsv",
        provenance=f"{RESULTS}/qc/provenance/audio_qc.json",
    params:
        qc=config["qc"],
    log:
        f"{LOGS}/audio_qc.log",
    benchmark:
        f"{BENCH}/audio_qc.tsv"
    threads: config["upstream"]["threads"]
    resources:
        mem_mb=res("audio_qc", "mem_mb", 4000),
        runtime=res("audio_qc", "runtime", 60),
    conda:
        "../envs/speaker-neurons.yaml"
    script:
        "../workflow_scripts/run_stage.py"
