# Two commands for a fresh machine (see README.md):
#   make demo   set up, write and build the embedded sample, run the benchmark (quick profile), write the tables
#   make test   set up and run the test suite
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
SONGS ?= 240
SEED ?= 0

.PHONY: setup demo test bench

$(BIN)/.installed: requirements.txt requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet -r requirements-dev.txt
	touch $@

setup: $(BIN)/.installed

demo: setup
	$(BIN)/python -m pipelines.make_sample data/raw --songs $(SONGS) --seed $(SEED) --overwrite
	$(BIN)/python -m pipelines.build_nemu data/raw --out data/nemu --seed $(SEED) --image-encoder efficientnet-lite0
	$(BIN)/python -m baselines.run_all --datasets nemu=data/nemu --profile quick --out results

test: setup
	$(BIN)/python -m pytest

bench: setup
	$(BIN)/python -m bench.bench_build
	$(BIN)/python -m bench.bench_run_all
