# The two commands README.md gives: `make quickstart` (the main job) and `make test`.
# Each creates the virtual environment .venv and installs the package into it on first use.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: install quickstart quickstart-image test bench-cpu bench-gpu

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip
	$(BIN)/python -m pip install -e ".[eval,dev]"
	touch $@

install: $(BIN)/.installed

quickstart: install
	$(BIN)/diffwave quickstart

quickstart-image: install
	$(BIN)/diffimage quickstart

test: install
	@$(BIN)/python -m pytest -q; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests: failing" >&2; exit 1; fi; exit $$rc

bench-cpu: install
	$(BIN)/python benchmarks/run_cpu.py

bench-gpu: install
	$(BIN)/python benchmarks/run_gpu.py
