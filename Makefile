# Two commands set everything up on a fresh machine: `make train` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# torch is pinned to the CPU build that lies on this machine's disk; an unpinned torch would pull CUDA.
TORCH := torch==2.13.0

.PHONY: install train test test-fast lint bench profile clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q $(TORCH)
# sweeps + ray in one command so pip settles the cloudpickle pins together (see pyproject.toml).
	$(BIN)/pip install -q -e ".[dev,sweeps,ray]" $(TORCH)
	touch $(STAMP)

train: install
	$(BIN)/rlrun $(ARGS)

# Tests are mostly single-threaded subprocess runs: two workers use both cores.
PYTEST_ARGS ?= -n 2

test: install
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

test-fast: install
	$(BIN)/python -m pytest -q -m "not slow" $(PYTEST_ARGS)

lint: install
	$(BIN)/ruff check rlrun tests bench hydra_plugins

$(VENV)/.bench-installed: $(STAMP)
	$(BIN)/pip install -q -e ".[bench]" $(TORCH)
	touch $@

bench: install $(VENV)/.bench-installed
	$(BIN)/python bench/run_bench.py $(ARGS)

# Where each algorithm's training time goes (env, update, the rest; top torch operators): bench/profiles.md.
profile: install
	$(BIN)/python bench/hot_loops.py $(ARGS)

clean:
	rm -rf $(VENV) outputs multirun
