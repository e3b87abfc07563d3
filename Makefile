# One entry point for the common jobs. `make setup` is idempotent; every other target depends on it.
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
STAMP   = $(VENV)/.installed
# OpenMP threads that spin-wait make each step of a CPU job many times slower on a shared 2-core machine.
export OMP_WAIT_POLICY ?= PASSIVE

.PHONY: setup test test-slow test-all lint info serve custom-ops cuda-check container-check clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# CPU torch pinned first: an unpinned torch would pull several GB of CUDA wheels.
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $(STAMP)

setup: $(STAMP)

custom-ops: setup
	bash export/plugins/build.sh

cuda-check: setup
	bash export/plugins/build_cuda.sh

# Builds the CPU image with podman and runs tests/deployment (incl. the slow image and compose-stack tests).
container-check: setup
	bash docker/ci_check.sh

lint: setup
	$(BIN)/ruff check faseg model export service tests benchmarks
	# import contracts of pyproject.toml [tool.importlinter] (lint-imports over the installed package layout)
	$(BIN)/python .ci/lint_imports.py

test: setup lint
	$(BIN)/pytest -m "not slow" -q

test-slow: setup
	$(BIN)/pytest -m slow -q

test-all: setup lint
	$(BIN)/pytest -q

info: setup
	$(BIN)/faseg info --preset faseg_r50_ade20k --size 512x512

serve: setup
	$(BIN)/faseg serve

clean:
	rm -rf build .pytest_cache .ruff_cache
