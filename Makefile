# sharpcomp: every target sets up what it needs (virtual environment, packages) by itself.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
# Offline copies of the datasets, when this checkout sits beside them (see README, "Data").
SHARED_DATA := $(abspath ../shared/data)
ifneq ($(wildcard $(SHARED_DATA)),)
export SHARPCOMP_DATA ?= $(SHARED_DATA)
endif
export MPLBACKEND ?= Agg

.PHONY: help install demo test test-slow test-all lint bench figures figures-quick clean

help:
	@echo "make demo        train vgg10 on two-class CIFAR-10 for a couple of minutes, write results under outputs/"
	@echo "make test        fast test suite (offline)"
	@echo "make test-slow   slow tests (multirun launchers, installed wheel, long runs)"
	@echo "make bench       metric-engine, training-throughput and records benchmarks"
	@echo "make figures     figures from every result under outputs/"
	@echo "make figures-quick  run every figure's sweep at the quick scale, then draw the figures"
	@echo "make lint        ruff"

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e '.[dev,bench]'
	touch $(STAMP)

DEMO_RUN := outputs/runs/cifar10_2class-vgg10/scale=demo
demo: $(STAMP)
	$(VENV)/bin/sharpcomp train scale=demo
	$(VENV)/bin/sharpcomp figures '$(DEMO_RUN)' --out outputs/figures/demo --only runs
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
	$(PY) scripts/bench_ensemble.py
	$(PY) scripts/bench_records.py

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

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
