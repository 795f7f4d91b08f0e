"""Small readers of the metrics the framework adapter tests share."""

from __future__ import annotations

import importlib.util

import pytest

from obskit.testing import get_sample_value, samples


def requests_total(method: str, route: str, status: str) -> float | None:
    """The ``http_requests_total`` sample for these labels."""
    labels = {"method": method, "route": route, "status": status}
    return get_sample_value("http_requests_total", labels)


def series(body: str, name: str) -> list[str]:
    """The sample lines of ``name`` in a /metrics body."""
    return [line for line in body.splitlines() if line.startswith(name + "{")]


def all_requests_total() -> dict[tuple[str, str, str], float]:
    """Every ``http_requests_total`` series, by ``(method, route, status)``."""
    return {
        (labels["method"], labels["route"], labels["status"]): value
        for labels, value in samples("http_requests_total")
    }


def _has_fastapi_telemetry() -> bool:
    try:
        return importlib.util.find_spec("fastapi.telemetry") is not None
    except ImportError:  # no FastAPI at all
        return False


#: Tests of how obskit cooperates with FastAPI's own telemetry (FastAPI 0.165+): skipped on an
#: older FastAPI the ``fastapi`` extra admits, which has none to cooperate with.
needs_fastapi_telemetry = pytest.mark.skipif(
    not _has_fastapi_telemetry(), reason="this FastAPI has no fastapi.telemetry (0.165+)"
)
