#!/usr/bin/env bash
# Snakemake runs this inside the new conda environment, from the directory it was started in (the
# workflow's root): the rules' scripts import the installed package, so install it (no dependencies:
# the environment file pins them).
set -euo pipefail
if [ ! -f pyproject.toml ] || ! grep -q 'name = "speaker-neurons"' pyproject.toml; then
  echo "post-deploy: run snakemake from the speaker-neurons folder so the package can be installed" >&2
  exit 1
fi
python -m pip install --no-deps -e .
