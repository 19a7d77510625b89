# One command each: `make demo` trains the embedded default, `make test` runs the tests. Both set up first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# Pinned on purpose: on the project's CPU machines 2.13.0 is a local CPU wheel (seconds); elsewhere pip takes
# PyPI's normal build of the same release. Override, e.g. TORCH_SPEC="torch==2.13.0 --index-url .../cpu".
TORCH_SPEC ?= torch==2.13.0
# A nanoGPT checkout (git clone https://github.com/karpathy/nanoGPT) that `make bench` runs as the LM baseline in the
# same session; left empty, the LM benchmark quotes the issue's measurement of nanoGPT instead and says so.
NANOGPT ?=
LM_BASELINE = $(if $(NANOGPT),--nanogpt $(NANOGPT))

.PHONY: setup demo test test-all bench clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH_SPEC)
	$(PY) -m pip install -q -e ".[test]"
	touch $@

demo: setup
	$(PY) run.py classify fit

# What CI runs. The tests marked slow repeat, for every other task, a mechanism that `make test` checks on one task
# (a real `python run.py` DDP launch, each kind of stop and resume): `make test-all` runs them too.
test: setup
	$(PY) -m pytest -q -n 2 -m "not slow"

test-all: setup
	$(PY) -m pytest -q -n 2

# Real-data runs and speed comparisons (tens of minutes on 2 CPU cores); each appends to benchmarks/results.jsonl.
bench: setup
	$(PY) benchmarks/throughput.py
	$(PY) benchmarks/sst2.py --which both
	$(PY) benchmarks/rte.py
	$(PY) benchmarks/lm_shakespeare.py --config configs/lm/shakespeare_char_cpu.yaml $(LM_BASELINE) --record
	$(PY) benchmarks/lm_shakespeare.py --config configs/lm/shakespeare_char_cpu_tuned.yaml $(LM_BASELINE) --record
	PATH="$(abspath $(VENV))/bin:$$PATH" sh benchmarks/ner_chain.sh

clean:
	rm -rf runs wandb lightning_logs .pytest_cache
