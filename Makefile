# The two commands of the README: `make run` and `make test`. Each makes its own virtual environment.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
ROWS ?= 20000
export TF_CPP_MIN_LOG_LEVEL ?= 2
export PREFECT_SERVER_ANALYTICS_ENABLED ?= false
export PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW ?= ignore
# A throwaway Prefect server can take over 30 s to start on a busy 2-core machine.
export PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS ?= 120

.PHONY: setup run test lint typecheck data serve-status serve-stop bench bench-quality clean image

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -qq --upgrade pip
	$(PY) -m pip install -qq -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP)

data/circle.csv: data/generate.py | $(STAMP)
	$(PY) -m aviary.data.generate --rows $(ROWS) --seed 0 --out $@

data: data/circle.csv

run: setup data
	$(PY) -m aviary.flows.retrain $(ARGS)

lint: setup
	$(VENV)/bin/ruff check .

typecheck: setup
	$(VENV)/bin/mypy

test: lint typecheck
	$(PY) -m pytest $(PYTEST_ARGS)

serve-status: setup
	$(PY) -m aviary.targets.local status

serve-stop: setup
	$(PY) -m aviary.targets.local stop

bench: setup
	$(PY) benchmarks/bench_ingest.py
	$(PY) benchmarks/bench_train.py

bench-quality: setup
	$(PY) benchmarks/bench_quality.py

clean:
	-$(PY) -m aviary.targets.local stop
	rm -rf models runs .aviary data/circle.csv

# -- Prefect operations (ops/): the local stack, see docs/operations.md --------------------------
STACK_ARGS ?=
POOL ?= process
.PHONY: stack-up stack-down stack-status stack-deploy bench-prefect

stack-up: setup data
	$(PY) -m aviary.ops.stack up $(STACK_ARGS)

stack-down: setup
	$(PY) -m aviary.ops.stack down $(STACK_ARGS)

stack-status: setup
	$(PY) -m aviary.ops.stack status $(STACK_ARGS)

stack-deploy: setup
	$(PY) -m aviary.ops.stack deploy --pool $(POOL) $(STACK_ARGS)

bench-prefect: setup
	$(PY) benchmarks/bench_prefect.py

# -- The flow image for the Kubernetes work pool (Dockerfile), with docker or podman ----------------
VERSION := $(shell sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)
IMAGE ?= aviary:$(VERSION)
ENGINE ?= $(shell command -v docker 2>/dev/null || command -v podman 2>/dev/null)

image:
	@test -n "$(ENGINE)" || { echo "make image: neither docker nor podman is on PATH (or set ENGINE=...)" >&2; exit 1; }
	$(ENGINE) build -t $(IMAGE) .
