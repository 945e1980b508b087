# `make demo` and `make test` create (or reuse) the git-ignored virtualenv .venv, install into it, then run.
VENV   ?= .venv
PYTHON ?= python3
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
TORCH  := torch==2.14.1 torchvision==0.29.1

# Nothing may download weights or data at run time; DeepSpeed picks its CPU accelerator when there is no GPU.
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export PYTHONUNBUFFERED := 1

.PHONY: setup demo demo-fusion test test-quick bench clean

$(STAMP): setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --no-compile $(TORCH)
	$(PY) -m pip install -q --no-compile -e '.[dev]'
	touch $@

setup: $(STAMP)

demo: $(STAMP)
	$(PY) -m launch.demo

# after `make demo`: the fusion stage itself (train a fuser, fuse the world's captions, a fourth scaling line)
demo-fusion: $(STAMP)
	$(PY) -m launch.demo_fusion

test: $(STAMP)
	$(PY) -m pytest -q tests

# the unit tier (no DeepSpeed ranks, no training processes, no Slurm): the development loop
test-quick: $(STAMP)
	$(PY) -m pytest -q -m unit tests

bench: $(STAMP)
	$(PY) benchmarks/step_overhead.py

clean:
	rm -rf demo_output runs .pytest_cache
