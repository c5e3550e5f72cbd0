# The commands a user types. Every target installs what it needs first.
#   make example   run a real Parsl workflow on a local dragond and show dragonctl's view
#   make test      every test: C++ unit tests, integration tests, Parsl's own suite
#   make bench     every benchmark side by side (bench/README.md); results in bench/results/<date-time>/
PYTHON ?= python3
PREFIX ?= /usr/local
BAZEL ?= bazel
BIN := build-out/bin
# The client core's Python binding is built for this interpreter (third_party/python_headers.bzl).
export DRAGON_PYTHON := $(shell $(PYTHON) -c 'import sys; print(sys.executable)' 2>/dev/null)
CORE_MODULE = parsl_plugin/dragon_parsl/_core$(shell $(PYTHON) -c 'import sysconfig; print(sysconfig.get_config_var("EXT_SUFFIX"))')

.PHONY: deps build install python example test unit-test integration-test parsl-suite bench bench-deps clean

deps:
	bash deploy/install-deps.sh

build: deps
	$(BAZEL) build //daemon:dragond //agent:dragon-agent //agent:dragon-mpi-rank //agent:dragon-mpi-bind //client:dragonctl
	mkdir -p $(BIN)
	install -m 755 bazel-bin/daemon/dragond bazel-bin/agent/dragon-agent bazel-bin/agent/dragon-mpi-rank bazel-bin/agent/dragon-mpi-bind bazel-bin/client/dragonctl $(BIN)/

python: deps
	$(BAZEL) build //client/python:_core.so
	install -m 644 bazel-bin/client/python/_core.so $(CORE_MODULE)
	$(PYTHON) parsl_plugin/generate_stubs.py
	$(PYTHON) -m pip install -q --no-build-isolation --no-deps -e parsl_plugin

install: build python
	install -m 755 $(BIN)/dragond $(BIN)/dragon-agent $(BIN)/dragon-mpi-rank $(BIN)/dragon-mpi-bind $(BIN)/dragonctl $(PREFIX)/bin/

example: install
	$(PYTHON) examples/workflow.py

unit-test: deps
	$(BAZEL) test //...

integration-test: install
	bash tests/run_integration.sh

parsl-suite: install
	bash tests/run_parsl_suite.sh

test: unit-test integration-test parsl-suite

# Benchmark-only Python packages (matplotlib, numpy, dragonhpc, profilers): kept out of deps so CI stays light.
bench-deps: deps
	$(PYTHON) -m pip install -q -r bench/requirements.txt

# BENCH_ARGS passes options to bench/run.py, e.g. make bench BENCH_ARGS="--quick" (see python bench/run.py --help).
bench: install bench-deps
	$(BAZEL) build //bench/...
	$(PYTHON) bench/run.py $(BENCH_ARGS)

clean:
	rm -rf build-out
	$(BAZEL) clean
