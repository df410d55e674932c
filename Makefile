# MJFN-JAX. `make demo` and `make test` set up .venv themselves on a fresh machine (Python 3.11).
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
DATA_DIR ?= data/tfds
WORKDIR ?= workdirs/demo

.PHONY: demo test test-all lint format bench setup setup-dev clean

$(VENV)/.runtime: requirements.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip install -q --no-deps -e .
	touch $@

$(VENV)/.dev: requirements-dev.txt requirements.txt $(VENV)/.runtime
	$(PY) -m pip install -q -r requirements-dev.txt
	touch $@

setup: $(VENV)/.runtime
setup-dev: $(VENV)/.dev

demo: $(VENV)/.runtime
	$(PY) -m experiments.demo --data_dir $(DATA_DIR) --workdir $(WORKDIR)

test: $(VENV)/.dev
	$(PY) -m pytest -q -m "not slow and not gpu"

test-all: $(VENV)/.dev
	$(PY) -m pytest -q -m "not gpu"

lint: $(VENV)/.dev
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

format: $(VENV)/.dev
	$(PY) -m ruff format .
	$(PY) -m ruff check --fix .

bench: $(VENV)/.dev
	$(PY) experiments/benchmark.py --preset cpu

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
