# The two commands of the README's quick start, and what CI runs.
#   make demo  -- install obskit in .venv and run the instrumented example service
#   make test  -- install obskit with every extra in .venv, then lint, type-check and test
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: demo test install lint typecheck pytest clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

install: $(BIN)/python
	$(BIN)/python -m pip install -q -e '.[dev]'

demo: install
	$(BIN)/python examples/demo.py

lint: install
	$(BIN)/ruff format --check obskit tests benchmarks examples
	$(BIN)/ruff check obskit tests benchmarks examples

typecheck: install
	$(BIN)/mypy

pytest: install
	$(BIN)/pytest

test: lint typecheck pytest

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache obskit-traces.jsonl*
