# MJFN-JAX. `make demo` and `make test` set up .venv themselves on a fresh machine (Python 3.11).
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
DATA_DIR ?= data/tfds
WORKDIR ?= workdirs/demo

.PHONY: demo test test-all lint format bench bench-gpu setup setup-dev clean

$(VENV)/.runtime: requirements.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip install -q --no-deps -e .
	touch $@

# torch's CPU wheel, the version requirements-dev.txt pins, from PyTorch's CPU index (PyPI's
# Linux wheel is the CUDA build); where that index cannot be reached, the next line installs
# torch from PyPI.
TORCH_INDEX ?= https://download.pytorch.org/whl/cpu
TORCH := $(shell grep '^torch==' requirements-dev.txt)

$(VENV)/.dev: requirements-dev.txt requirements.txt $(VENV)/.runtime
	-$(PY) -m pip install -q --retries 1 --no-deps --index-url $(TORCH_INDEX) "$(TORCH)"
	$(PY) -m pip install -q -r requirements-dev.txt
	touch $@

setup: $(VENV)/.runtime
setup-dev: $(VENV)/.dev

demo: $(VENV)/.runtime
	$(PY) -m experiments.demo --data_dir $(DATA_DIR) --workdir $(WORKDIR)

test: $(VENV)/.dev
	$(PY) -m pytest -q -m "not slow and not gpu" --durations=10 -n auto --dist loadfile --no-loadscope-reorder

test-all: $(VENV)/.dev
	MJFN_JAX_TEST_OPTIMIZED=1 $(PY) -m pytest -q -m "not gpu"

lint: $(VENV)/.dev
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

format: $(VENV)/.dev
	$(PY) -m ruff format .
	$(PY) -m ruff check --fix .

bench: $(VENV)/.dev
	$(PY) experiments/benchmark.py --preset cpu

# The gpu preset end to end on an NVIDIA GPU, for a machine with network and time (a short lent
# session runs the prioritised subset instead: experiments/gpu_session.sh): CUDA jaxlib, then
# both frameworks in fp32 and bf16, every strategy and the autotune choice, whole-process LOSO
# vs PyTorch, seeds in one run vs one per seed. Results in experiments/results/<device>/ (and
# <device>-bf16/), indexed in experiments/results/README.md.
bench-gpu: $(VENV)/.dev
	$(PY) -m pip install -q "jax[cuda12]==0.10.2"
	$(PY) -c "import jax; assert jax.default_backend() == 'gpu', jax.devices()"
	GPU=$$($(PY) -c "from experiments.benchmark_lib import default_machine_name as d; print(d())") && \
	$(PY) experiments/benchmark.py --preset gpu --machine $$GPU && \
	$(PY) experiments/benchmark.py --preset gpu --machine $$GPU-bf16 --config.model.dtype=bfloat16 && \
	$(PY) -m experiments.loso_wallclock --config benchmark:gpu --epochs 2,10 --machine $$GPU && \
	$(PY) -m experiments.seeds_wallclock --config benchmark:gpu --machine $$GPU

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
