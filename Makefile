# One command checks everything a reviewer would: `make lint` and `make test`.
# The virtualenv is made on first use, so a fresh clone needs only Python 3.11+,
# Go (for the local control plane), git, gpg and ssh-keygen.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(CURDIR)/$(VENV)/bin
export PATH := $(BIN):$(PATH)
PYTEST_ARGS ?=

.PHONY: help install lint test test-unit test-integration cluster-build cluster-up cluster-down cluster-status demo clean

help:
	@echo "make demo           the operator deploying a signed app into a local control plane, step by step"
	@echo "make test           unit, integration and e2e tests against a real local control plane"
	@echo "make lint           ruff, ruff format, mypy --strict, import contracts"
	@echo "make cluster-up     start the local control plane (prints the KUBECONFIG export)"
	@echo "make cluster-down   stop it and remove its state"

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

install: $(VENV)/.installed

lint: install
	ruff check .
	ruff format --check .
	mypy
	lint-imports
	hadolint Dockerfile
	$(BIN)/python hack/gen-reference --check

test: install cluster-build
	pytest $(PYTEST_ARGS) tests/unit tests/integration tests/security tests/e2e tests/faults

test-unit: install
	pytest $(PYTEST_ARGS) tests/unit

test-integration: install cluster-build
	pytest $(PYTEST_ARGS) tests/integration

cluster-build:
	hack/cluster build

cluster-up:
	hack/cluster up

cluster-down:
	hack/cluster down

cluster-status:
	hack/cluster status

demo: install cluster-build
	$(BIN)/python hack/demo

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
