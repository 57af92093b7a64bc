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

.PHONY: demo demo-model test test-avx2 test-fast setup system-packages test-packages python-env lint bench clean-results

demo: setup
	$(VENV)/bin/snakemake --cores $(CORES) $(SNAKEMAKE_ARGS)

# Re-make the shipped demo model (models/melhubert_demo/) with its recipe, configs/demo-model.yaml: the demo
# corpus, then pre-training far longer than a demo run affords (hours on 2 CPU cores; resumable: run it
# again after an interruption), then the copy into models/ with its provenance.
demo-model: setup
	$(VENV)/bin/snakemake --cores $(CORES) $(SNAKEMAKE_ARGS) --configfile configs/demo-model.yaml -- results_demo_model/models/melhubert_demo/model
	$(VENV)/bin/python scripts/ship_demo_model.py --results results_demo_model --config configs/demo-model.yaml

# Two pytest-xdist workers, whole files each, the workflow runs first (tests/conftest.py says why).
XDIST := -n 2 --dist loadfile --no-loadscope-reorder

test: setup test-packages
	$(VENV)/bin/python -m pytest $(XDIST) $(PYTEST_ARGS)

# The whole suite as a CPU without AVX-512 computes it: torch, oneDNN, MKL and OpenBLAS held to AVX2
# (oneDNN then reports no native bf16, so `amp: auto` trains in float32, as it does there). A test that
# passes natively and here does not depend on the kernels of the machine it ran on.
AVX2_ENV := ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2 OPENBLAS_CORETYPE=Haswell

test-avx2: setup test-packages
	$(AVX2_ENV) $(VENV)/bin/python -m pytest $(XDIST) $(PYTEST_ARGS)

# The unit tests only (under a minute): every test marked `slow` (it runs Snakemake, synthesizes a
# corpus or pre-trains) is left out; `make test` runs them all.
test-fast: setup
	$(VENV)/bin/python -m pytest $(XDIST) -m "not slow" $(PYTEST_ARGS)

setup: system-packages python-env

system-packages:
	@bash scripts/setup_system.sh

# The one-node SLURM cluster of tests/test_slurm.py (skipped with the reason where it cannot start).
test-packages:
	@bash scripts/setup_system.sh --test || echo "SLURM packages not installed: tests/test_slurm.py will skip"

python-env: $(STAMP)

# uv installs the packages (pip installs uv): from its cache (~/.cache/uv) a fresh clone's environment
# takes about 20 s where pip took 143 s on the same machine. uv reads its own settings, not pip's: set
# UV_INDEX_URL for a package mirror. Byte code is compiled at install, once, not at each first import.
UV := $(VENV)/bin/uv pip install -q --compile-bytecode --python $(VENV)/bin/python

$(STAMP): $(REQS)
	@test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q -c requirements/constraints.txt uv
	$(UV) -c requirements/constraints.txt -r requirements/test.txt
	$(UV) --no-deps -e .
	@rm -f $(VENV)/.installed-*
	@touch $@

lint: setup
	$(VENV)/bin/snakemake -n -q
	$(VENV)/bin/snakemake --lint
	$(VENV)/bin/snakefmt --check Snakefile rules/

# The self-contained benchmarks (benchmarks/README.md): each prints its table, with the CPU, to the terminal.
BENCH_OUT ?= benchmarks/out/bench
bench: setup
	@mkdir -p $(BENCH_OUT)
	$(VENV)/bin/python benchmarks/upstream_forward.py > $(BENCH_OUT)/upstream_forward.txt && cat $(BENCH_OUT)/upstream_forward.txt
	$(VENV)/bin/python benchmarks/topk_counts.py > $(BENCH_OUT)/topk_counts.txt && cat $(BENCH_OUT)/topk_counts.txt
	$(VENV)/bin/python benchmarks/activation_stats.py > $(BENCH_OUT)/activation_stats.txt && cat $(BENCH_OUT)/activation_stats.txt
	$(VENV)/bin/python benchmarks/throughput.py --minutes 10 > $(BENCH_OUT)/throughput.txt && cat $(BENCH_OUT)/throughput.txt
	$(VENV)/bin/python benchmarks/sid_scale.py > $(BENCH_OUT)/sid_scale.txt && cat $(BENCH_OUT)/sid_scale.txt
	$(VENV)/bin/python benchmarks/startup.py --files 20000 --repeats 2 > $(BENCH_OUT)/startup.txt && cat $(BENCH_OUT)/startup.txt

clean-results:
	rm -rf results .snakemake
