"""Shared fixtures: every test starts from a fresh obskit and fails loud on internal errors."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from obskit import _state, testing
from tests.logging_state import preserved_logging


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
