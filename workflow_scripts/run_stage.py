"""Every rule's script: run the stage named like the rule through speaker_neurons.stages.run_stage.

The rule names each file it reads (input), each file it writes (output, `provenance` included) and
its parameters; the package writes exactly what it is given. `snakemake` is injected by Snakemake.
"""

import sys

try:
    from speaker_neurons.stages import run_stage
except ImportError as exc:  # the rule runs in a Python without the package
    sys.exit(f"{exc}: the package speaker_neurons is not installed in {sys.executable}. "
             "Run `make setup` (or `pip install --no-deps -e .` in this environment) from the workflow's folder.")

smk = snakemake  # noqa: F821
run_stage(
    smk.rule,
    inputs=dict(smk.input.items()),
    outputs=dict(smk.output.items()),
    params=dict(smk.params.items()),
    log_path=smk.log[0],
    threads=smk.threads,
    config=smk.config,
    wildcards=dict(smk.wildcards.items()),
    disk_mb=getattr(getattr(smk, "resources", None), "disk_mb", None),
)
