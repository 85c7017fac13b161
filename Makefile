# agg_pipeline: two commands on a fresh machine with Python 3.11+, pip and make.
#   make dev    local PostgreSQL + schema + demo data + Dagster UI at http://127.0.0.1:3000
#   make test   the whole test suite
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin

.PHONY: dev test lint bench db-stop clean

$(BIN)/python:
	$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python 3.11+ required")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed: $(BIN)/python pyproject.toml
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@

dev: $(VENV)/.installed
	$(BIN)/agg-pipeline dev

test: $(VENV)/.installed
	$(BIN)/python -m pytest

lint: $(VENV)/.installed
	$(BIN)/ruff check agg_pipeline agg_pipeline_tests
	$(BIN)/ruff format --check agg_pipeline agg_pipeline_tests

db-stop: $(VENV)/.installed
	$(BIN)/agg-pipeline db stop

clean:
	-$(BIN)/agg-pipeline db stop
	rm -rf $(VENV) .local

bench: $(VENV)/.installed
	$(BIN)/python -m agg_pipeline.bench --json bench-results.json
