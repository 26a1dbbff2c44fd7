# Quickstart: `make train` (install + Skip-Sideways on moving_shapes), `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
WORKDIR ?= /tmp/sideways_quickstart

.PHONY: train test test-jax lint format install install-test clean

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

# The same engine on Keras' JAX backend, in its own process (KERAS_BACKEND is per process):
# the backend-neutral test files, TensorFlow-only tests deselected (marker tf_only).
JAX_TESTS := tests/test_properties.py tests/test_engine.py tests/test_modes.py \
	tests/test_topology.py tests/test_cut.py tests/test_keras_jax.py

test: lint
	$(BIN)/pytest -n 2 --durations=15 tests
	KERAS_BACKEND=jax $(BIN)/pytest -n 2 --durations=5 -m "not tf_only and not tpu" $(JAX_TESTS)

test-jax: install-test
	KERAS_BACKEND=jax $(BIN)/pytest -n 2 --durations=5 -m "not tf_only and not tpu" $(JAX_TESTS)

format: install-test
	$(BIN)/ruff check --fix sideways_tf tests benchmarks
	$(BIN)/ruff format sideways_tf tests benchmarks

clean:
	rm -rf $(VENV) build *.egg-info
