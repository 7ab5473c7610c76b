# windfarm-etl: `make test` is all a newcomer needs; `make help` lists the rest.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# What is installed, from the lock files (pip-compile, with hashes): runtime
# only for `make run`, everything for the tests and tools.
RUN_STAMP := $(VENV)/.run-installed
DEV_STAMP := $(VENV)/.dev-installed
PYTEST_ARGS ?=

.PHONY: help install test test-fast lint format lock run bench seed reset clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

$(BIN)/python:
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11) and "Python 3.11 or newer is needed (set PYTHON=...)")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(RUN_STAMP): requirements.lock pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet --require-hashes -r requirements.lock
	$(BIN)/python -m pip install --quiet --no-deps -e .
	@touch $@

$(DEV_STAMP): requirements-dev.lock pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet --require-hashes -r requirements-dev.lock
	$(BIN)/python -m pip install --quiet --no-deps -e .
	@touch $@ $(RUN_STAMP)

install: $(DEV_STAMP)  ## the virtualenv with the runtime, test and lint tools (.venv)

test: $(DEV_STAMP)  ## the whole suite against real PostgreSQL, Redis and RabbitMQ
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test-fast: $(DEV_STAMP)  ## the suite without the slow tests (real processes for minutes)
	$(BIN)/python -m pytest -m "not slow" $(PYTEST_ARGS)

lint: $(DEV_STAMP)  ## ruff (rules and format) and mypy
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python -m mypy

format: $(DEV_STAMP)  ## format the code with ruff
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

# Upgrades are deliberate: they happen here, and the tests then say whether
# the new versions hold (a kombu release once broke the Redis recovery).
lock: $(DEV_STAMP)  ## re-resolve requirements*.lock from pyproject.toml (newest versions allowed)
	$(BIN)/pip-compile --quiet --upgrade --generate-hashes --strip-extras --allow-unsafe \
		--no-emit-index-url --no-emit-find-links --output-file requirements.lock pyproject.toml
	$(BIN)/pip-compile --quiet --upgrade --generate-hashes --strip-extras --allow-unsafe \
		--no-emit-index-url --no-emit-find-links --extra dev \
		--output-file requirements-dev.lock pyproject.toml

run: $(RUN_STAMP)  ## seed the databases, run api, workers, beat and Flower (127.0.0.1)
	exec $(BIN)/python scripts/devrun.py

seed: $(RUN_STAMP)  ## create and fill the source database (SOURCE_DATABASE_URL)
	$(BIN)/python -m api.seed_source

reset: $(RUN_STAMP)  ## drop the local source and target databases and .run/ (asks first)
	$(BIN)/python scripts/reset.py

# DAYS=365 for a year; WORKERS=1,2,4 measures each count of pool processes, NODES=1,2
# each count of worker nodes, BROKER=redis,amqp each broker.
bench: $(DEV_STAMP)  ## the performance benchmark (DAYS, WORKERS, NODES, BROKER)
	$(BIN)/python -m bench.run --days $${DAYS:-10} --workers $${WORKERS:-2} \
		--nodes $${NODES:-1} --broker $${BROKER:-redis}

clean:  ## remove the virtualenv and caches
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache *.egg-info
