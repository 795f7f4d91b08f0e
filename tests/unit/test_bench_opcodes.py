"""``benchmarks/bench_opcodes.py`` counts the opcodes a request runs, and finds obskit's among them.

The benchmark notes read obskit's cost per function off this count, so it must see every frame
of the request thread (obskit's included) and name obskit's functions by module: a bare app has
none, and in an instrumented one they make up what the app runs on top of the bare one.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_opcodes.py"


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_opcodes", SCRIPT)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_obskit_functions_are_what_an_instrumented_request_adds(bench: ModuleType) -> None:
    bare = bench.count("fastapi", "bare", 20)
    instrumented = bench.count("fastapi", "obskit_nolog_1pct", 20)

    assert {} == bare["obskit"]
    assert bare["total"] > 1000  # FastAPI's own routing, validation and response
    own = instrumented["obskit"]
    # One pass through the middleware and one request end per request.
    assert own["asgi.py:__call__"] > 50
    assert own["http/_pipeline.py:finish"] > 50
    added = instrumented["total"] - bare["total"]
    assert abs(added - sum(own.values())) < 0.2 * added


def test_traces_off_variant_starts_no_span_and_keeps_the_pipeline(bench: ModuleType) -> None:
    # obskit_nolog_notrace is issue #6's second baseline: every request's part without tracing.
    unsampled = bench.count("fastapi", "obskit_nolog_1pct", 20)["obskit"]
    traces_off = bench.count("fastapi", "obskit_nolog_notrace", 20)["obskit"]

    assert unsampled["tracing/server_span.py:start_server_span"] > 10
    assert "tracing/server_span.py:start_server_span" not in traces_off
    assert traces_off["http/_pipeline.py:record"] > 10  # RED metrics are still recorded
    assert traces_off["asgi.py:__call__"] > 50


def test_shares_reads_issue_6_over_bare_and_over_traces_off(bench: ModuleType) -> None:
    totals = {"bare": 1000.0, "obskit_nolog_1pct": 1500.0, "obskit_nolog": 3000.0}
    shares = bench.bench_load.issue6_shares  # bench_latency prints it for server CPU too
    assert shares(totals) == "over bare 500 / 2,000 = 25%"
    totals["obskit_nolog_notrace"] = 1400.0
    assert shares(totals) == (
        "over bare 500 / 2,000 = 25%; tracing's own (over traces off) 100 / 1,600 = 6%"
    )
    assert shares({"bare": 1.0, "obskit_nolog": 2.0}) is None
