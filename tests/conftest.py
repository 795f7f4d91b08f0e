"""Shared fixtures: every test starts from a fresh obskit and fails loud on internal errors."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from obskit import _state, testing


@pytest.fixture(autouse=True)
def _fresh_obskit() -> Iterator[None]:
    """Raise obskit's internal errors during the test; shut obskit down and reset it after."""
    previous = _state.raise_internal_errors
    _state.raise_internal_errors = True
    try:
        yield
    finally:
        try:
            testing.reset()
        finally:
            _state.raise_internal_errors = previous
