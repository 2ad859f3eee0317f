# gatedrnn: two commands, `make demo` and `make test`. Everything installs into .venv at the repo root.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
# torch is pinned first: the local CPU build. A looser spec on an empty venv pulls a multi-GB CUDA build.
TORCH_SPEC ?= torch==2.13.0
EXTRAS ?= viz,train,data,music,bench,test
VENV := .venv
PY := $(VENV)/bin/python
# The venv's bin on PATH: the C++ engine's build calls ninja from there.
export PATH := $(abspath $(VENV))/bin:$(PATH)
STAMP := $(VENV)/.installed-$(shell echo "$(TORCH_SPEC) $(EXTRAS)" | cksum | cut -d' ' -f1)
PYTEST_ARGS ?=

# On a CUDA machine, in its own python3 (torch with CUDA and Triton installed; no venv, no downloads): the GPU
# parity suite, then the GPU benchmark, whose JSON lands in benchmarks/results/ named after the GPU.
GPU_PYTHON ?= python3
GPU_RESULTS ?= benchmarks/results

.PHONY: demo test bench readme install clean gpu-check

$(PY):
	$(PYTHON) -m venv $(VENV)

$(STAMP): $(PY) pyproject.toml
	$(PY) -m pip install "$(TORCH_SPEC)"
	$(PY) -m pip install -e ".[$(EXTRAS)]"
	rm -f $(VENV)/.installed-* && touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(PY) -m gatedrnn demo

test: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

bench: $(STAMP)
	$(PY) -m gatedrnn bench

# the README's demo transcript, task table and speed tables, from docs/results/ and benchmarks/results/
readme: $(STAMP)
	$(PY) -m gatedrnn.bench.readme

# The benchmark runs even when a test fails (the GPU's time is scarce); the target exits with pytest's status.
gpu-check:
	PYTHONPATH=src $(GPU_PYTHON) -m pytest -q -p no:cacheprovider tests/test_gpu.py tests/test_triton.py; tests=$$?; \
	PYTHONPATH=src $(GPU_PYTHON) -m gatedrnn.bench.gpu --out $(GPU_RESULTS) && exit $$tests

clean:
	rm -rf $(VENV) build src/*.egg-info
