# The two set-up commands of the README: `make run` and `make test`. Each creates .venv and
# installs the project into it when needed.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint format generate clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/flash-payouts demo

# Tests run in parallel workers: most of their time is spent waiting on PostgreSQL, servers
# and subprocesses, so three workers keep two cores busy.
PYTEST_WORKERS ?= 3

test: $(STAMP)
	$(BIN)/python -m pytest -n $(PYTEST_WORKERS) $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

generate: $(STAMP)
	$(BIN)/flash-payouts docs generate

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
