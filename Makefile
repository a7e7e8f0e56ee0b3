# Lepton — every target sets itself up: a fresh clone needs only python3 (3.11+) and pip.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
PYTEST := $(BIN)/python -m pytest -p no:cacheprovider

.PHONY: install test test-all demo bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test,bench]'
	touch $(STAMP)

install: $(STAMP)

## test: the suite CI runs (slow checks excluded), on all cores
test: $(STAMP)
	$(PYTEST) -n auto

## test-all: everything, slow checks included
test-all: $(STAMP)
	$(PYTEST) -n auto -m "slow or not slow"

## demo: optimize the shipped digits CNN and check it against onnxruntime
demo: $(STAMP)
	$(BIN)/python -m bench.demo

## bench: cleanup-pipeline benchmark against onnxoptimizer and onnxsim (writes bench/results/)
bench: $(STAMP)
	$(BIN)/python -m bench.cleanup

clean:
	rm -rf $(VENV) build .pytest_cache .hypothesis
