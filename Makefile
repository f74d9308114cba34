# calsync developer entry points. `make run` and `make test` work from a clean clone.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
CALSYNC := $(BIN)/calsync
CLUSTER ?= calsync
export PATH := $(CURDIR)/$(BIN):$(PATH)

.PHONY: help venv controlplane helm cluster cluster-down crds crds-check lint test test-unit test-e2e run bench soak clean

help:
	@echo "make run        local control plane + CRDs + demo connection + operator (Ctrl-C stops)"
	@echo "make test       every test (unit, integration, e2e against a real API server)"
	@echo "make lint       ruff, mypy --strict, import contracts, CRD drift"
	@echo "make crds       regenerate crds/*.yaml from calsync/api"
	@echo "make cluster    start the local control plane (CLUSTER=$(CLUSTER)) and print its kubeconfig"
	@echo "make bench      benchmarks (not part of make test): one table at the end, also written"
	@echo "                as JSON to BENCH_JSON=$(BENCH_JSON); BENCH=\"name ...\" runs only those"
	@echo "make soak       soak test (not part of make test): 1,000 connections for 10 minutes (SOAK_*)"

$(VENV)/.installed: pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev]'
	touch $@

venv: $(VENV)/.installed

# etcd, kube-apiserver and kube-controller-manager: what a cluster needs (`make run`). The chart
# tests also need helm, built the same way and cached beside them.
controlplane: venv
	@$(CALSYNC) devcluster build > /dev/null

helm: venv
	@$(CALSYNC) devcluster build --with-helm > /dev/null

cluster: controlplane
	@$(CALSYNC) devcluster up --name $(CLUSTER)

cluster-down: venv
	$(CALSYNC) devcluster down --name $(CLUSTER)

crds: venv
	$(BIN)/python -m calsync.api.crdgen --out crds

crds-check: venv
	$(BIN)/python -m calsync.api.crdgen --out crds --check

lint: venv crds-check
	$(BIN)/ruff check calsync tests bench
	$(BIN)/ruff format --check calsync tests bench
	$(BIN)/mypy calsync
	$(BIN)/lint-imports

# Tests run in TEST_WORKERS processes (pytest-xdist), each with its own control planes and
# servers; TEST_WORKERS=0 runs them in this one.
TEST_WORKERS ?= 2

test: venv controlplane helm crds-check
	$(BIN)/pytest -m "unit or integration or e2e" -n $(TEST_WORKERS) --dist worksteal $(PYTEST_ARGS)

test-unit: venv
	$(BIN)/pytest -m unit $(PYTEST_ARGS)

test-e2e: venv controlplane helm
	$(BIN)/pytest -m e2e -n $(TEST_WORKERS) --dist worksteal $(PYTEST_ARGS)

run: controlplane
	$(BIN)/python hack/run.py --cluster $(CLUSTER)

$(VENV)/.bench-installed: $(VENV)/.installed
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev,bench]'
	touch $@

BENCH_JSON ?= bench-results.json
bench: venv controlplane $(VENV)/.bench-installed
	$(BIN)/python -m bench --json $(BENCH_JSON) $(BENCH)

# 1,000 connections of all three providers for 10 minutes (sizes: SOAK_* in tests/soak/test_soak.py).
soak: venv controlplane
	$(BIN)/pytest -m soak tests/soak -s $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
