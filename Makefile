# Lepton — every target sets itself up: a fresh clone needs only python3 (3.11+) and pip.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
PYTEST := $(BIN)/python -m pytest -p no:cacheprovider
# Every installed package, transitive ones included, is pinned in $(LOCK): a fresh clone installs
# the same set on any later day. `make lock` refreshes it on purpose (after editing pyproject.toml).
LOCK   := requirements.lock
MODELS_LOCK := requirements-models.lock
PIP_VERSION := 26.3
UV_VERSION  := 0.13.8
LOCK_EXTRAS := --extra test --extra bench --extra corpus

.PHONY: install lock test test-all demo bench bench-latency bench-nodecount bench-fusion fuzz clean system-deps

$(STAMP): pyproject.toml $(LOCK) $(MODELS_LOCK)
	rm -rf $(VENV)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q pip==$(PIP_VERSION)
	$(BIN)/pip install -q -r $(LOCK)
	$(BIN)/pip install -q --no-deps --no-build-isolation -e .
	$(BIN)/pip check
	$(BIN)/pip install -q --no-deps --require-hashes -r $(MODELS_LOCK)
	touch $(STAMP)

install: $(STAMP)

## lock: re-resolve pyproject.toml's dependencies (all extras) into requirements.lock with uv
lock:
	$(PYTHON) -m venv build/lock-venv
	build/lock-venv/bin/pip install -q uv==$(UV_VERSION)
	build/lock-venv/bin/uv pip compile pyproject.toml $(LOCK_EXTRAS) --universal --python-version 3.11 \
		--no-header --output-file $(LOCK)
	@echo "lock: wrote $(LOCK); review the diff, then 'make install'"

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

## bench-latency: batch-1 latency of the bench models: onnxruntime vs TVM default vs Lepton (writes bench/results/)
bench-latency: $(STAMP)
	$(BIN)/python -m bench.latency

## bench-nodecount: nodes after Lepton's x86 pipeline vs onnxruntime's extended optimizations and onnxsim (writes bench/results/)
bench-nodecount: $(STAMP)
	$(BIN)/python -m bench.nodecount

## bench-fusion: batch-1 latency, Lepton vs onnxruntime, on transformer and BatchNorm-CNN exports; each item of
## WITHOUT (PASS[,PASS], space-separated) adds a Lepton build without those passes (writes bench/results/)
WITHOUT ?=
bench-fusion: $(STAMP)
	$(BIN)/python -m bench.fusion $(foreach w,$(WITHOUT),--without $(w))

## fuzz: differential fuzzing for MINUTES (default 10): random models through the x86 pipeline vs onnxruntime;
## failing models, minimized, go to fuzz-failures/<id>/ with a one-line reproduction (FUZZFLAGS: see tests/fuzz.py --help)
MINUTES ?= 10
fuzz: $(STAMP)
	$(BIN)/python tests/fuzz.py --minutes $(MINUTES) $(FUZZFLAGS)

clean:
	rm -rf $(VENV) build .pytest_cache .hypothesis

## system-deps: Debian packages for the ARM cross linker and OpenCL checks (PoCL); tests skip without them
system-deps:
	@if command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -q gcc-aarch64-linux-gnu pocl-opencl-icd ocl-icd-libopencl1 >/dev/null \
		|| (apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q gcc-aarch64-linux-gnu pocl-opencl-icd ocl-icd-libopencl1 >/dev/null) \
		|| echo "system-deps: apt-get failed; ARM .so linking and PoCL checks will be skipped"; \
	else echo "system-deps: needs root and apt-get; ARM .so linking and PoCL checks will be skipped"; fi
