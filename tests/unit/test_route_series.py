"""The HTTP pipeline's RED writes (one locked update per request, issue #6's unsampled cost)
count exactly: under concurrent threads, across two applications sharing a route's series, and
when a request moves from one route to another while in flight."""

from __future__ import annotations

import io
import threading
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from obskit.http._pipeline import HttpTelemetry
from obskit.metrics.exposition import render
from obskit.testing import capture
from obskit.wsgi import ObskitMiddleware

ROUTE = {"method": "GET", "route": "__unmatched__"}


def _app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"ok"]


def _call(app: Any, path: str = "/items/7") -> None:
    environ = {
        "REQUEST_METHOD": "GET",
        "PATH_INFO": path,
        "SERVER_NAME": "127.0.0.1",
        "SERVER_PORT": "8000",
        "wsgi.url_scheme": "http",
        "wsgi.input": io.BytesIO(),
    }
    b"".join(app(environ, lambda *a: None))


def _samples() -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    body, _ = render(None)
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(body.decode())
        for s in family.samples
    }


def _value(samples: dict[Any, float], name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted({**ROUTE, **labels}.items())))]


def test_concurrent_requests_are_all_counted() -> None:
    with capture(sampler="always_off"):
        app = ObskitMiddleware(_app)
        threads = [
            threading.Thread(target=lambda: [_call(app) for _ in range(400)]) for _ in range(6)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        samples = _samples()
        assert app.telemetry.series("GET", "__unmatched__")._cells is not None  # merged writes
    assert 2400 == _value(samples, "http_requests_total", status="200")
    assert 2400 == _value(samples, "http_request_duration_seconds_count")
    assert 2400 == _value(samples, "http_request_duration_seconds_bucket", le="+Inf")
    assert 0 < _value(samples, "http_request_duration_seconds_sum") < 2400
    assert 0 == _value(samples, "http_requests_in_flight")


def test_two_applications_share_a_routes_series() -> None:
    with capture(sampler="always_off"):
        first, second = ObskitMiddleware(_app), ObskitMiddleware(_app)
        for _ in range(3):
            _call(first)
            _call(second)
        samples = _samples()
        ours = [app.telemetry.series("GET", "__unmatched__") for app in (first, second)]
    assert ours[0]._cells is not None
    assert ours[0]._cells is ours[1]._cells
    assert 6 == _value(samples, "http_requests_total", status="200")
    assert 6 == _value(samples, "http_request_duration_seconds_count")
    assert 0 == _value(samples, "http_requests_in_flight")


def test_a_request_that_changes_route_leaves_nothing_in_flight() -> None:
    with capture(sampler="always_off"):
        telemetry = HttpTelemetry()
        request = telemetry.start("GET", "/a", lambda name: None)
        assert request is not None
        request.set_route("/a")
        request.set_route("/b")  # e.g. a mount, then the route inside it
        during = _samples()
        request.finish(200)
        after = _samples()
    flight = "http_requests_in_flight"
    assert 0 == _value(during, flight, route="/a")
    assert 1 == _value(during, flight, route="/b")
    assert 0 == _value(after, flight, route="/a")
    assert 0 == _value(after, flight, route="/b")
    assert 1 == _value(after, "http_requests_total", route="/b", status="200")
    assert (
        "http_requests_total",
        (("method", "GET"), ("route", "/a"), ("status", "200")),
    ) not in after
