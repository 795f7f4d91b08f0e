"""Metrics exposition: content negotiation and gunicorn-style multi-process aggregation."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from prometheus_client import Counter

import obskit
from obskit import _state
from obskit.metrics.exposition import render


def test_text_format_by_default_and_openmetrics_when_asked() -> None:
    """Prometheus text unless the scraper accepts OpenMetrics, which ends with # EOF."""
    obskit.configure(traces_exporter="none")
    Counter("demo_events", "Events.", registry=_state.registry).inc()
    body, content_type = render(None)
    assert content_type.startswith("text/plain; version=0.0.4")
    assert b"demo_events_total 1.0" in body
    body, content_type = render("application/openmetrics-text; version=1.0.0,text/plain;q=0.5")
    assert content_type.startswith("application/openmetrics-text")
    assert body.endswith(b"# EOF\n")


@pytest.mark.parametrize(
    ("accept", "expected"),
    [
        # Prometheus 2.x with exemplar storage on
        (
            "application/openmetrics-text;version=1.0.0;q=0.5,"
            "application/openmetrics-text;version=0.0.1;q=0.4,text/plain;version=0.0.4;q=0.3,"
            "*/*;q=0.2",
            "application/openmetrics-text",
        ),
        # Prometheus 2.x default: text ranked first
        (
            "text/plain;version=0.0.4;q=1,application/openmetrics-text;version=1.0.0;q=0.2",
            "text/plain",
        ),
        ("application/openmetrics-text;q=0,text/plain;version=0.0.4", "text/plain"),
        # an OpenMetrics version the library cannot write: the client's next choice
        ("application/openmetrics-text;version=0.0.1,text/plain;q=0.5", "text/plain"),
        # equal ranks keep the client's order
        ("text/plain;q=0.5,application/openmetrics-text;version=1.0.0;q=0.5", "text/plain"),
        ("application/openmetrics-text;version=1.0.0;q=0.5,text/plain;q=0.5", "application/open"),
        ("application/openmetrics-text;version=1.0.0;q=x,text/plain;q=0.1", "text/plain"),
        ("application/json", "text/plain"),
        ("", "text/plain"),
    ],
)
def test_accept_ranges_are_taken_in_the_clients_order_of_preference(
    accept: str, expected: str
) -> None:
    """RFC 9110 12.5.1: q ranks the ranges, q=0 refuses one; the text format is the fallback."""
    obskit.configure(traces_exporter="none")
    assert render(accept)[1].startswith(expected)


def test_default_registry_can_be_left_out() -> None:
    """include_default_registry=False exposes only obskit's registry."""
    obskit.configure(traces_exporter="none", include_default_registry=False)
    body, _ = render(None)
    assert b"python_info" not in body
    obskit.configure(traces_exporter="none", include_default_registry=True)
    body, _ = render(None)
    assert b"python_info" in body


_WORKER = """
import sys, obskit
from prometheus_client import Counter
from obskit import _state
obskit.configure(traces_exporter="none", multiproc_dir=sys.argv[1])
c = Counter("worker_requests", "Requests.", ["route"], registry=_state.registry)
for _ in range(int(sys.argv[2])):
    c.labels("/items/{id}").inc()
"""


def test_multiprocess_mode_sums_every_worker(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With PROMETHEUS_MULTIPROC_DIR, one scrape reports the sum over all worker processes."""
    directory = tmp_path / "prom"
    for count in ("3", "4"):
        subprocess.run([sys.executable, "-c", _WORKER, str(directory), count], check=True)
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(directory))
    body, _ = render(None)
    assert b'worker_requests_total{route="/items/{id}"} 7.0' in body


def test_metrics_on_a_separate_port() -> None:
    """metrics_port serves /metrics on its own port; the app's path is left to the app."""
    import socket
    import urllib.request

    from obskit.wsgi import ObskitMiddleware

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    obskit.configure(traces_exporter="none", metrics_port=port)

    def app(environ: dict[str, object], start_response: object) -> list[bytes]:
        start_response("200 OK", [])  # type: ignore[operator]
        return [b"the app's own /metrics"]

    wrapped = ObskitMiddleware(app)
    body = b"".join(wrapped({"REQUEST_METHOD": "GET", "PATH_INFO": "/metrics"}, lambda *a: None))
    assert b"the app's own /metrics" == body
    list(wrapped({"REQUEST_METHOD": "GET", "PATH_INFO": "/x"}, lambda *a: None))
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    assert 'http_requests_total{method="GET",route="__unmatched__",status="200"} 1.0' in text


def test_a_busy_metrics_port_is_taken_over_once_free() -> None:
    """A port another process holds (the old worker on a gunicorn reload) is tried again until
    it is free, then served; shutdown() stops the trying and closes what it started."""
    import socket
    import time
    import urllib.error
    import urllib.request

    from obskit.metrics import exposition

    def answer(port: int) -> int | None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as resp:
                return int(resp.status)
        except (OSError, urllib.error.URLError):
            return None

    blocker = socket.socket()
    blocker.bind(("127.0.0.1", 0))
    blocker.listen()
    port = blocker.getsockname()[1]
    try:
        obskit.configure(traces_exporter="none", metrics_port=port)
        assert _state.runtime is not None
        assert _state.runtime.metrics_server is None  # the app's path serves meanwhile
        retry = _state.runtime.metrics_retry
        assert isinstance(retry, exposition.MetricsPortRetry)
    finally:
        blocker.close()
    deadline = time.monotonic() + 4 * exposition.BIND_RETRY_INTERVAL + 5
    while answer(port) != 200 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert 200 == answer(port)
    assert retry.server is not None
    obskit.shutdown()
    assert retry.server is None
    assert answer(port) is None


def test_a_process_serving_the_metrics_port_warns_once_when_it_forks(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Without a multi-process directory, a forked child's metrics are not on the parent's port
    (gunicorn --preload): the parent warns once at a fork; a closed server does not."""
    import logging
    import os
    import socket

    def fork_and_reap() -> None:
        pid = os.fork()
        if pid == 0:
            os._exit(0)
        os.waitpid(pid, 0)

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    _state.warned.discard("metrics_port_fork")
    obskit.configure(traces_exporter="none")  # no port: nothing to say at a fork
    with caplog.at_level(logging.WARNING, logger="obskit"):
        fork_and_reap()
    assert not [r for r in caplog.records if "has forked a child" in r.getMessage()]
    obskit.configure(traces_exporter="none", metrics_port=port)
    with caplog.at_level(logging.WARNING, logger="obskit"):
        fork_and_reap()
        fork_and_reap()
    assert 1 == len([r for r in caplog.records if "has forked a child" in r.getMessage()])


# A gap a review found, since fixed: an application's own metric in the default registry named
# like one of obskit's (prometheus-fastapi-instrumentator's http_request_duration_seconds, a
# hand-rolled http_requests_total) was left out of /metrics without a count or a word
# (obskit/metrics/exposition.py, _Union).
def test_a_default_registry_family_named_like_obskits_is_counted_and_warned(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from prometheus_client import REGISTRY

    from obskit.testing import get_sample_value

    obskit.configure(service_name="shadow", traces_exporter="none")
    theirs = Counter("http_requests", "The app's own.", ["endpoint", "code"], registry=REGISTRY)
    try:
        theirs.labels("/a", "200").inc()
        from obskit.http._pipeline import HttpTelemetry

        request = HttpTelemetry().start("GET", "/a", lambda name: None, route="/a")
        assert request is not None
        request.finish(200)
        with caplog.at_level("WARNING", logger="obskit"):
            first, _ = render(None)
            render(None)
        text = first.decode()
        assert 'http_requests_total{method="GET",route="/a",status="200"} 1.0' in text
        assert 'endpoint="/a"' not in text  # left out: one family per name
        warned = [r.getMessage() for r in caplog.records if "http_requests" in r.getMessage()]
        assert 1 == len(warned), warned
        assert 2.0 == get_sample_value("obskit_metrics_shadowed_total", {"metric": "http_requests"})
    finally:
        REGISTRY.unregister(theirs)


def test_a_default_registry_gauge_named_like_an_obskit_counters_samples_is_left_out() -> None:
    """A review's finding, since fixed: a gauge named ``http_requests_total`` is a family of
    another name than obskit's counter ``http_requests``, and both were served -- a second
    HELP and TYPE for one name, which promtool and the OpenMetrics parser refuse."""
    from prometheus_client import REGISTRY, Gauge
    from prometheus_client.openmetrics.parser import text_string_to_metric_families

    from obskit.http._pipeline import HttpTelemetry
    from obskit.testing import get_sample_value

    obskit.configure(service_name="shadow", traces_exporter="none")
    theirs = Gauge("http_requests_total", "The app's own.", registry=REGISTRY)
    try:
        theirs.set(3)
        request = HttpTelemetry().start("GET", "/a", lambda name: None, route="/a")
        assert request is not None
        request.finish(200)
        body, _ = render("application/openmetrics-text")
        text = body.decode()
        assert 1 == text.count("# TYPE http_requests ")
        assert "# TYPE http_requests_total" not in text
        list(text_string_to_metric_families(text))  # parses: one family per name
        assert 1.0 == get_sample_value(
            "obskit_metrics_shadowed_total", {"metric": "http_requests_total"}
        )
    finally:
        REGISTRY.unregister(theirs)
