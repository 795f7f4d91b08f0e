# The two commands of the README's quick start, and what CI runs.
#   make demo  -- install obskit in .venv and run the instrumented example service
#   make test  -- install obskit with every extra in .venv, then lint, type-check and test
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: demo test install tools lint typecheck pytest pythons bench clean

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

# Debian's prometheus package: the real Prometheus server and promtool some tests run. Without
# it (not Debian, not root) those tests skip, and fail under CI=true.
tools:
	@command -v prometheus >/dev/null || apt-get install -y -q prometheus >/dev/null 2>&1 \
		|| (apt-get update -q >/dev/null 2>&1 && apt-get install -y -q prometheus >/dev/null 2>&1) \
		|| echo "note: Debian's prometheus package is not installed; its tests will skip"

pytest: install tools
	$(BIN)/pytest

test: lint typecheck pytest

# The test suite on the other Pythons the package declares, each in its own venv (.venv-python3.X),
# where the interpreter is found (on PATH or under pyenv): CI runs 3.11 only, for time.
PYTHONS ?= python3.10 python3.12 python3.13
pythons:
	@for py in $(PYTHONS); do \
		exe=$$(command -v $$py); \
		{ [ -n "$$exe" ] && $$exe -c '' 2>/dev/null; } \
			|| exe=$$(ls $(HOME)/.pyenv/versions/*/bin/$$py 2>/dev/null | tail -1); \
		if [ -z "$$exe" ]; then echo "$$py: not found, skipped"; continue; fi; \
		echo "== $$py ($$exe)"; \
		$(MAKE) --no-print-directory pytest PYTHON=$$exe VENV=.venv-$$py || exit 1; \
	done

# Benchmarks (not part of the tests): the alternative stack and wrk are installed here only.
bench: install
	$(BIN)/python -m pip install -q -r benchmarks/requirements.txt
	command -v wrk >/dev/null || (apt-get install -y wrk || (apt-get update && apt-get install -y wrk))
	$(BIN)/python benchmarks/bench_http.py
	$(BIN)/python benchmarks/bench_load.py
	$(BIN)/python benchmarks/bench_latency.py

clean:
	rm -rf $(VENV) .venv-python3.* .mypy_cache .ruff_cache .pytest_cache obskit-traces.jsonl*
