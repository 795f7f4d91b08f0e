"""Metric and label names, from a review of the user-facing metrics API (2026-11-25), each
finding pinned by a test. Every test declares its metrics in a copy of the declaration table.
"""

from __future__ import annotations

from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families as parse_text

import obskit
from obskit import _state
from obskit.metrics.exposition import render
from obskit.testing import get_sample_value


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
    monkeypatch.setattr(_state, "instruments", dict(_state.instruments))


def _family_names() -> list[str]:
    return [family.name for family in parse_text(render(None)[0].decode())]


# A bug this test found, since fixed: obskit/metrics/instruments.py _declare keyed its table on
# the raw name while prometheus_client drops a counter's _total: counter("x_total") then
# counter("x") raised prometheus_client's DuplicateTimeseries instead of returning the counter
def test_a_counter_declared_with_or_without_total_is_one_counter() -> None:
    with_suffix = obskit.counter("names_orders_total", "Orders.", ["tier"])
    without = obskit.counter("names_orders", "Orders.", ["tier"])
    assert with_suffix is without
    with_suffix.labels("gold").inc()
    without.labels("gold").inc(2)
    assert 3.0 == get_sample_value("names_orders_total", {"tier": "gold"})
    assert 1 == _family_names().count("names_orders")


# A bug this test found, since fixed: a user's counter("function_calls_total", ...) with labels of
# its own made every @obskit.red call fail inside obskit (function_calls lost, counted only in
# obskit_internal_errors_total{component="red"}); obskit's names are refused up front now
@pytest.mark.parametrize(
    ("kind", "name", "labels"),
    [
        ("counter", "function_calls_total", ["endpoint"]),
        ("counter", "function_calls", ["function", "module"]),
        ("histogram", "function_duration_seconds", ["function"]),
        ("counter", "http_requests", ["route"]),
        ("gauge", "http_requests_in_flight", []),
        ("gauge", "resource_in_use", ["pool"]),
        ("counter", "resource_errors", ["resource"]),
        ("gauge", "asyncio_event_loop_lag_seconds", []),
        ("gauge", "function_calls", ["function", "module", "result"]),  # another kind
    ],
)
def test_obskits_own_metric_names_cannot_be_declared_otherwise(
    kind: str, name: str, labels: list[str]
) -> None:
    with pytest.raises(ValueError, match="is obskit's own"):
        getattr(obskit, kind)(name, "Mine.", labels)

    @obskit.red
    def work() -> int:
        return 1

    work()
    calls = get_sample_value(
        "function_calls_total", {"function": work.__qualname__, "module": __name__, "result": "ok"}
    )
    assert 1.0 == calls


def test_obskits_own_definition_gives_obskits_instrument() -> None:
    mine = obskit.counter(
        "function_calls", "Calls, as obskit counts them.", ["function", "module", "result"]
    )

    @obskit.red
    def work() -> int:
        return 1

    work()
    labels = {"function": work.__qualname__, "module": __name__, "result": "ok"}
    mine.labels(*labels.values()).inc()
    assert 2.0 == get_sample_value("function_calls_total", labels)


def test_the_obskit_prefix_is_for_self_metrics() -> None:
    for name in ("obskit_orders", "obskit_spans_dropped"):
        with pytest.raises(ValueError, match="obskit_ prefix"):
            obskit.counter(name, "Mine.")


# A bug this test found, since fixed: obskit/metrics/cardinality.py check_label_names accepted a
# label name twice; labels("gold", "eu") and labels("free", "eu") were then written as two
# series of the one label set {tier="eu"}, and Prometheus drops one of them
def test_a_label_name_declared_twice_is_refused() -> None:
    with pytest.raises(ValueError, match="'tier' more than once"):
        obskit.counter("names_dup", "Dup.", ["tier", "region", "tier"])


# A bug this test found, since fixed: labels="method" (a str is a Sequence[str], so a type checker
# takes it) declared the labels m, e, t, h, o, d; labels("GET") then failed at the first use.
@pytest.mark.parametrize("declare", [obskit.counter, obskit.gauge, obskit.histogram])
def test_labels_given_as_one_str_are_refused_at_declaration(declare: Any) -> None:
    """TypeError naming the fix; nothing is declared."""
    with pytest.raises(TypeError, match=r"not the str 'method' .* write \['method'\]"):
        declare("names_str_labels", "By method.", "method")
    assert "names_str_labels" not in _state.instruments
    assert declare("names_str_labels", "By method.", ["method"]).label_names == ("method",)


# A bug this test found, since fixed: obskit/metrics/cardinality.py _normalised lowercased a name
# before comparing it with the deny-list, so camelCase spellings (requestId, traceId, clientIp,
# ipAddress) went through although the docs say "in any spelling"
@pytest.mark.parametrize(
    "label",
    [
        "requestId",
        "RequestID",
        "sessionId",
        "customerId",
        "accountId",
        "orderId",
        "traceId",
        "spanId",
        "correlationId",
        "transactionId",
        "clientIp",
        "ipAddress",
        "IPAddress",
        "remoteAddr",
        "userId",
        "userID",
    ],
)
def test_camel_case_spellings_of_unbounded_labels_are_refused(label: str) -> None:
    with pytest.raises(obskit.CardinalityError, match="unbounded"):
        obskit.counter("names_camel", "Camel.", [label])


@pytest.mark.parametrize("label", ["httpMethod", "statusCode", "paymentMethod", "tier", "HTTPCode"])
def test_camel_case_names_that_are_not_unbounded_are_accepted(label: str) -> None:
    obskit.counter(f"names_ok_{label.lower()}", "Fine.", [label]).labels("x").inc()
