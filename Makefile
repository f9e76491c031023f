# sharpcomp: every target sets up what it needs (virtual environment, packages) by itself.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
# Offline copies of the datasets, when this checkout sits beside them (see README, "Your own network and data").
SHARED_DATA := $(abspath ../shared/data)
ifneq ($(wildcard $(SHARED_DATA)),)
export SHARPCOMP_DATA ?= $(SHARED_DATA)
endif
export MPLBACKEND ?= Agg

.PHONY: help install demo test test-slow test-all lint bench bench-gpu figures figures-quick paper clean

help:
	@echo "make demo        train vgg10 on two-class CIFAR-10 for a couple of minutes, write results under outputs/"
	@echo "make test        fast test suite (offline)"
	@echo "make test-slow   slow tests (multirun launchers, installed wheel, long runs)"
	@echo "make bench       metric-engine, training-throughput, records and curvature benchmarks"
	@echo "make figures     figures from every result under outputs/"
	@echo "make figures-quick  run every figure's sweep at the quick scale, then draw the figures"
	@echo "make paper       the whole study at the paper's scale (ensembles; resumable), then the figures"
	@echo "make bench-gpu   eager vs CUDA-graph steps, checkpoint cost, projected paper-scale times"
	@echo "make lint        ruff"

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e '.[dev,bench,monitor]'
	@# An editable install cannot list Hydra's plugin namespace (a wheel can): expose the launcher's
	@# folder as hydra_plugins/sharpcomp_ensemble on a path entry of this venv (a link into the checkout).
	mkdir -p $(VENV)/sharpcomp-plugin/hydra_plugins
	ln -sfn $(CURDIR)/sharpcomp/hydra_plugin $(VENV)/sharpcomp-plugin/hydra_plugins/sharpcomp_ensemble
	echo $(abspath $(VENV))/sharpcomp-plugin > "$$($(PY) -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/sharpcomp-plugin.pth"
	touch $(STAMP)

DEMO_RUN := outputs/runs/cifar10_2class-vgg10/scale=demo
demo: $(STAMP)
	$(VENV)/bin/sharpcomp train scale=demo
	$(VENV)/bin/sharpcomp figures '$(DEMO_RUN)' out=outputs/figures/demo only=runs
	@echo "results: $(DEMO_RUN)/metrics.parquet (one row per checkpoint); figure: outputs/figures/demo/runs.png"

test: $(STAMP)
	$(PY) -m pytest -q

test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow

test-all: $(STAMP)
	$(PY) -m pytest -q -m ''

lint: $(STAMP)
	$(VENV)/bin/ruff check sharpcomp tests scripts

bench: $(STAMP)
	$(PY) scripts/bench_metrics.py
	$(PY) scripts/bench_train.py
	$(PY) scripts/bench_flatness.py
	$(PY) scripts/bench_ensemble.py
	$(PY) scripts/bench_records.py
	$(PY) scripts/bench_curvature.py
	$(PY) scripts/bench_network_wide.py

figures: $(STAMP)
	$(VENV)/bin/sharpcomp figures outputs

# Every figure's sweep at the quick scale, one after another, then the figures. Rerunning resumes.
# LAUNCHER=joblib (or ensemble) runs several runs at once; EXPERIMENTS picks a subset.
EXPERIMENTS ?= figE8 figD4 figE7 figD6 figD6_batch fig1 fig2 fig3 figD5 figD5_batch
LAUNCHER ?= basic
figures-quick: $(STAMP)
	set -e; for e in $(EXPERIMENTS); do \
	  $(VENV)/bin/sharpcomp -m train +experiment=$$e scale=quick progress=false hydra/launcher=$(LAUNCHER); \
	done
	$(VENV)/bin/sharpcomp figures outputs

# The whole study at the paper's scale (500,000 iterations, a checkpoint every 200): the projected time
# on this device first (scripts/paper_plan.py: a few seconds of measured steps and one checkpoint per
# model), then every experiment with the ensemble launcher, then the figures. Rerunning resumes every
# run; runs shared between experiments train once. PAPER_ARGS adds overrides (e.g. device=cuda:1).
PAPER_ARGS ?=
paper: $(STAMP)
	$(PY) scripts/paper_plan.py $(EXPERIMENTS)
	set -e; for e in $(EXPERIMENTS); do \
	  $(VENV)/bin/sharpcomp -m train +experiment=$$e scale=paper progress=false hydra/launcher=ensemble $(PAPER_ARGS); \
	done
	$(VENV)/bin/sharpcomp figures outputs

bench-gpu: $(STAMP)
	$(PY) scripts/bench_gpu.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
