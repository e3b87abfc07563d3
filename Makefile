# One entry point for the common jobs. `make setup` is idempotent; every other target depends on it.
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
STAMP   = $(VENV)/.installed
# OpenMP threads that spin-wait make each step of a CPU job many times slower on a shared 2-core machine.
export OMP_WAIT_POLICY ?= PASSIVE

.PHONY: setup test test-slow test-all lint info serve custom-ops cuda-check gpu-check container-check clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# CPU torch pinned first: an unpinned torch would pull several GB of CUDA wheels.
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $(STAMP)

setup: $(STAMP)

# The ONNX Runtime custom-op library (C++; needs cmake and a C++ compiler). Cached under build/: a second run
# compiles nothing and needs no network.
custom-ops: setup
	bash export/plugins/build.sh

# Compile check of the CUDA kernels, TensorRT plugins and CUDA ORT ops; prints SKIPPED where nvcc is absent.
cuda-check: setup
	bash export/plugins/build_cuda.sh

# The one device check (docs/gpu.md): kernels vs references, TensorRT plugins through IPluginV3, bench_gpu.
# Needs a CUDA GPU and build/cuda from `make cuda-check`; no setup (the GPU machine's own python3 and torch).
# Exit 3 without a CUDA device. Results: $(OUT) when set, else build/gpu_check.
GPU_PYTHON ?= $(if $(wildcard $(BIN)/python),$(BIN)/python,python3)
gpu-check:
	$(GPU_PYTHON) benchmarks/gpu_check.py --out $(or $(OUT),build/gpu_check)

# Builds the CPU image with podman and runs tests/deployment (incl. the slow image and compose-stack tests).
container-check: setup
	bash docker/ci_check.sh

lint: setup
	$(BIN)/ruff check faseg model export service tests benchmarks
	# import contracts of pyproject.toml [tool.importlinter] (lint-imports over the installed package layout)
	$(BIN)/python .ci/lint_imports.py

# What CI runs: the native libraries are built first, so the plugin-flavour tests run instead of skipping
# (FASEG_REQUIRE_CUSTOM_OPS=1 turns a missing library into a failure). `-ra` ends the run with every skip and
# its reason (GPU, TensorRT, container and browser tests skip where those are absent).
test: setup lint custom-ops cuda-check
	FASEG_REQUIRE_CUSTOM_OPS=1 $(BIN)/pytest -m "not slow" -q -ra

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
