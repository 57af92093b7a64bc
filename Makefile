# Two entry points (see README): `make demo` and `make test`. Both are idempotent: a second call
# skips the installs already done (a few seconds) and lets Snakemake skip outputs already up to date.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
CORES ?= all
SNAKEMAKE_ARGS ?=
PYTEST_ARGS ?=
REQS := requirements/constraints.txt requirements/base.txt requirements/test.txt pyproject.toml
STAMP := $(VENV)/.installed-$(shell cat $(REQS) 2>/dev/null | sha256sum | cut -c1-12)

.PHONY: demo test test-fast setup system-packages test-packages python-env lint clean-results

demo: setup
	$(VENV)/bin/snakemake --cores $(CORES) $(SNAKEMAKE_ARGS)

test: setup test-packages
	$(VENV)/bin/python -m pytest $(PYTEST_ARGS)

# The unit tests only (about 2 minutes): every test marked `slow` (it runs Snakemake, synthesizes a
# corpus or pre-trains) is left out; `make test` runs them all.
test-fast: setup
	$(VENV)/bin/python -m pytest -m "not slow" $(PYTEST_ARGS)

setup: system-packages python-env

system-packages:
	@bash scripts/setup_system.sh

# The one-node SLURM cluster of tests/test_slurm.py (skipped with the reason where it cannot start).
test-packages:
	@bash scripts/setup_system.sh --test || echo "SLURM packages not installed: tests/test_slurm.py will skip"

python-env: $(STAMP)

$(STAMP): $(REQS)
	@test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -c requirements/constraints.txt -r requirements/test.txt
	$(VENV)/bin/pip install -q --no-deps -e .
	@rm -f $(VENV)/.installed-*
	@touch $@

lint: setup
	$(VENV)/bin/snakemake -n -q
	$(VENV)/bin/snakemake --lint
	$(VENV)/bin/snakefmt --check Snakefile rules/

clean-results:
	rm -rf results .snakemake
