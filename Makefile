# The two commands README.md gives: `make quickstart` (the main job) and `make test`.
# Each creates the virtual environment .venv and installs the tested set (constraints.txt) into it on first use.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: install quickstart quickstart-image test bench-cpu bench-gpu lock gpu-dryrun

# The install is checked before it is marked done: `pip check` (declared requirements agree) and
# tools/check_install.py (every compiled extension loads and runs: an ABI mismatch such as torchaudio built for
# another torch shows only there).
$(BIN)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet "pip==26.3"
	$(BIN)/python -m pip install -c constraints.txt -e ".[eval,dev]"
	$(BIN)/python -m pip check
	$(BIN)/python tools/check_install.py
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

# The GPU call of tools/gpu_checks.sh run on this CPU, as the GPU machine would run it (docs/gpu.md): a venv of its
# versions (torch 2.11.0; about 3.5 GB downloaded once a machine, then reused from ~/.cache/diffstack-gpu-dryrun),
# the wheels and data that travel, no network, every step at toy size; it prints each part's wall and CPU seconds.
gpu-dryrun: install
	nice -n 10 bash tools/gpu_checks.sh dry-run

# Remake constraints.txt: a fresh environment with what pyproject.toml admits today, checked, then frozen.
# Review the diff, run `make test` in a clean clone, and commit it only if CI passes.
lock:
	rm -rf .lockenv
	$(PYTHON) -m venv .lockenv
	.lockenv/bin/python -m pip install --quiet "pip==26.3"
	.lockenv/bin/python -m pip install -e ".[eval,dev]"
	.lockenv/bin/python -m pip check
	.lockenv/bin/python tools/check_install.py
	{ sed -n '1,3p' constraints.txt; .lockenv/bin/pip freeze --all --exclude-editable | grep -v "^wheel=="; } > constraints.txt.new
	mv constraints.txt.new constraints.txt
	rm -rf .lockenv
