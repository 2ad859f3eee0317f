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

.PHONY: demo test bench readme install clean

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

clean:
	rm -rf $(VENV) build src/*.egg-info
