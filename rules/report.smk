# Stage 4: the run's headline figures next to the paper's (results/summary.tsv, summary.md,
# sid_vs_width.png). `snakemake --report report.html` gathers every figure marked report(...) with its
# caption from report/.


rule summarize:
    input:
        unpack(summary_inputs),
    output:
        tsv=report(
            f"{RESULTS}/summary.tsv",
            caption="../report/summary.rst",
            category="1. Summary",
        ),
        md=f"{RESULTS}/summary.md",
        sid_png=report(
            f"{RESULTS}/sid_vs_width.png",
            caption="../report/sid_vs_width.rst",
            category="1. Summary",
        ),
        paired_png=report(
            f"{RESULTS}/paired_vs_width.png",
            caption="../report/paired_vs_width.rst",
            category="1. Summary",
        ),
        pr_png=report(
            f"{RESULTS}/pr_vs_width.png",
            caption="../report/pr_vs_width.rst",
            category="1. Summary",
        ),
        pr_dev_png=report(
            f"{RESULTS}/pr_dev_curves.png",
            caption="../report/pr_dev_curves.rst",
            category="1. Summary",
        ),
        provenance=f"{RESULTS}/provenance/summarize.json",
    params:
        models=summary_models(),
        k_ssl=SETS_K,
        controls=config["controls"],
        comparison=config["comparison"],
        corpora={s: c for s, c in CAT.stages.items() if s != "pr" or CAT.pr_runs},
    log:
        f"{LOGS}/summarize.log",
    benchmark:
        f"{BENCH}/summarize.tsv"
    threads: 1
    resources:
        mem_mb=res("summarize", "mem_mb"),
        runtime=res("summarize", "runtime"),
        disk_mb=res("summarize", "disk_mb"),
    conda:
        "../envs/speaker-neurons.yaml"
    script:
        "../workflow_scripts/run_stage.py"
