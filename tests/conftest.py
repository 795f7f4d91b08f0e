"""Shared fixtures: every test starts from a fresh obskit and fails loud on internal errors."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from obskit import _state, testing
from tests.logging_state import preserved_logging


@pytest.fixture(autouse=True)
def _no_ambient_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """The machine's settings do not reach the tests: no OTEL_/OBSKIT_/FASTAPI_ variable, no
    multi-process metrics directory, no HTTP proxy (a test sets what it needs itself)."""
    for name in list(os.environ):
        upper = name.upper()
        if upper.startswith(("OTEL_", "OBSKIT_", "FASTAPI_", "PROMETHEUS_MULTIPROC")) or (
            upper.endswith("_PROXY")
        ):
            monkeypatch.delenv(name)


@pytest.fixture(autouse=True)
def _fresh_obskit() -> Iterator[None]:
    """Raise obskit's internal errors during the test; shut obskit down, reset it and put
    logging back after."""
    previous = _state.raise_internal_errors
    _state.raise_internal_errors = True
    try:
        # Logging as the test found it: setup_logging() changes process-wide loggers, and a
        # level or handler left behind changes what later tests see (it once hid a bug).
        with preserved_logging():
            yield
    finally:
        try:
            testing.reset()
        finally:
            _state.raise_internal_errors = previous
