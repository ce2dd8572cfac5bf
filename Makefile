# Two entry points on a fresh machine: `make demo` and `make test`. Both create .venv and install first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# torch is pinned and installed first so the CPU build from the local wheel is used (no CUDA download).
TORCH := torch==2.13.0

# AVX2-only numerics and defaults on any x86 CPU: torch's kernels, oneDNN and MKL capped to AVX2, and every
# per-CPU choice rankwise makes (auto backend, int8 recipe, bf16) made as on an AVX2-only machine
AVX2 := ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2 RANKWISE_CPU_KIND=avx2

.PHONY: venv demo demo-avx2 test test-avx2 lint bench clean
venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q $(TORCH)
	$(BIN)/pip install -q -e '.[dev,integrations,postgres,ray]'
	touch $@

demo: venv
	HF_HUB_OFFLINE=1 $(BIN)/python -m rankwise.demo

# TESTS narrows either test target to some files, e.g. make test-avx2 TESTS=tests/test_training.py
TESTS ?=

test: venv
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q --durations=25 $(TESTS)

test-avx2: venv
	$(AVX2) HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q $(TESTS)

demo-avx2: venv
	$(AVX2) HF_HUB_OFFLINE=1 $(BIN)/python -m rankwise.demo

lint: venv
	$(BIN)/ruff check src tests benchmarks

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
