# windfarm-etl: `make test` is all a newcomer needs.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
PYTEST_ARGS ?=

.PHONY: install test lint run bench seed clean

install: $(STAMP)

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11) and "Python 3.11 or newer is needed (set PYTHON=...)")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $@

test: install
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: install
	$(BIN)/ruff check .

seed: install
	$(BIN)/python -m api.seed_source

clean:
	rm -rf $(VENV) .pytest_cache *.egg-info

run: install
	$(BIN)/python -m windfarm.devrun

# DAYS=365 for a year; WORKERS=1,2,4 measures each count.
bench: install
	$(BIN)/python -m bench.run --days $${DAYS:-10} --workers $${WORKERS:-2}
