# aand_lightning — `make help` lists the targets.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PROTOCOL ?= quick

.DEFAULT_GOAL := help
.PHONY: help install demo test test-slow lint benchmark bench-speed bench-aupro bench-synthesis bench-rehearsal clean

help: ## List the targets
	@grep -E '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "} {printf "  %-16s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[dev,export]"
	@touch $(STAMP)

install: $(STAMP) ## Create the virtualenv (if missing) and install the project with dev extras

demo: install ## Both stages + test on the generated demo data, pretrained teacher, offline; prints the table
	$(PY) -m aand_lightning.train -m experiment=demo

test: install ## Run the default test suite (slow tests excluded), one worker per core
	$(PY) -m pytest -m "not slow" -n auto --dist loadfile --durations=15

test-slow: install ## Run only the slow tests
	$(PY) -m pytest -m slow

lint: install ## ruff
	$(VENV)/bin/ruff check src tests benchmarks

benchmark: install ## AAND vs RD baseline under PROTOCOL=quick (demo data, CPU), paper or paper_vit (BENCH_ARGS="--root mvtec=...")
	$(PY) benchmarks/run.py --protocol $(PROTOCOL) $(BENCH_ARGS)

bench-speed: install ## Speed vs anomalib's RD (own env with anomalib): stage-2 epochs with the feature cache, steps, FLOPs, fast paths; SPEED_ARGS="--device cuda"
	PY_BENCH=$$(bash benchmarks/anomalib_env.sh) && $$PY_BENCH -W ignore benchmarks/speed.py $(SPEED_ARGS)

bench-aupro: install ## AUPRO speed: 100 maps of 256x256, ~300 regions, one core
	$(PY) benchmarks/aupro_speed.py

bench-synthesis: install ## Stage-1 synthesis throughput at 256 px
	$(PY) benchmarks/synthesis_speed.py

bench-rehearsal: install ## Paper recipe, one epoch per stage, on generated MVTec/VisA-sized data: time, memory, cache; REHEARSAL_ARGS=...
	$(PY) benchmarks/rehearsal.py $(REHEARSAL_ARGS)

clean: ## Remove run outputs (keeps the virtualenv and the generated data)
	rm -rf outputs multirun .pytest_cache .ruff_cache
