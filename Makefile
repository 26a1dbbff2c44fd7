# Quickstart: `make train` (install + Skip-Sideways on moving_shapes), `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
WORKDIR ?= /tmp/sideways_quickstart

.PHONY: train test lint format install install-test clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip

install: $(BIN)/python
	$(BIN)/pip install -e .

install-test: $(BIN)/python
	$(BIN)/pip install -e ".[test]"

train: install
	$(BIN)/sideways-train --workdir=$(WORKDIR)

lint: install-test
	$(BIN)/ruff check sideways_tf tests benchmarks
	$(BIN)/ruff format --check sideways_tf tests benchmarks

test: lint
	$(BIN)/pytest -n 2 --durations=15 tests

format: install-test
	$(BIN)/ruff check --fix sideways_tf tests benchmarks
	$(BIN)/ruff format sideways_tf tests benchmarks

clean:
	rm -rf $(VENV) build *.egg-info
