# Two entry points on a fresh machine: `make demo` and `make test`. Both create .venv and install first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# torch is pinned and installed first so the CPU build from the local wheel is used (no CUDA download).
TORCH := torch==2.13.0

.PHONY: venv demo test lint bench clean
venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q $(TORCH)
	$(BIN)/pip install -q -e '.[dev,integrations]'
	touch $@

demo: venv
	HF_HUB_OFFLINE=1 $(BIN)/python -m rankwise.demo

test: venv
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q

lint: venv
	$(BIN)/ruff check src tests benchmarks

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
