"""The Flask adapter through a real Flask app and Flask's test client."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from typing import Any

import pytest
from flask import Flask, Response, jsonify, stream_with_context
from flask.testing import FlaskClient
from opentelemetry import trace

from obskit.flask import Obskit
from obskit.testing import Capture, capture, get_sample_value
from tests.frameworks.helpers import requests_total, series
from tests.otlp_receiver import attributes as attrs

TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
PARENT_ID = "b7ad6b7169203331"
TRACEPARENT = f"00-{TRACE_ID}-{PARENT_ID}-01"
TRACESTATE = "vendor=opaque,other=1"
OPENMETRICS = "application/openmetrics-text; version=1.0.0"
ITEM_ROUTE = "/items/<int:item_id>"
CHUNK_DELAY = 0.05
SERVER = 2  # Span.SpanKind.SPAN_KIND_SERVER
ERROR = 2  # Status.StatusCode.STATUS_CODE_ERROR


def _current_span_id() -> str:
    return format(trace.get_current_span().get_span_context().span_id, "016x")


def build_app() -> Flask:
    """The application under test, without obskit."""
    app = Flask(__name__)

    @app.route(ITEM_ROUTE, methods=["GET", "POST", "FOOBAR"])
    def item(item_id: int) -> Any:
        in_flight = get_sample_value(
            "http_requests_in_flight", {"method": "GET", "route": ITEM_ROUTE}
        )
        return jsonify(id=item_id, span_id=_current_span_id(), in_flight=in_flight)

    @app.get("/boom")
    def boom() -> Any:
        raise ValueError("kaboom")

    @app.get("/unavailable")
    def unavailable() -> Any:
        return "try later", 503

    @app.get("/files/<path:rest>")
    def files(rest: str) -> Any:
        return rest

    @app.get("/stream")
    def stream() -> Response:
        def chunks() -> Iterator[bytes]:
            for index in range(3):
                time.sleep(CHUNK_DELAY)
                yield b"chunk %d\n" % index

        return Response(stream_with_context(chunks()))

    @app.get("/healthz")
    def healthz() -> Any:
        return "ok"

    @app.get("/private")
    def private() -> Any:
        return "private"

    return app


@pytest.fixture
def cap() -> Iterator[Capture]:
    """obskit configured with an in-memory span sink."""
    with capture() as captured:
        yield captured


@pytest.fixture
def app(cap: Capture) -> Flask:
    """The instrumented application (``Obskit(app)``)."""
    app = build_app()
    Obskit(app)
    return app


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    """Flask's test client for the instrumented application."""
    return app.test_client()


def wsgi(value: str) -> str:
    """A header value as a WSGI server puts it in environ: the UTF-8 bytes decoded as latin-1.

    Werkzeug's test client passes header text through unchanged.
    """
    return value.encode().decode("latin-1")


def get(client: FlaskClient, path: str, **kwargs: Any) -> Any:
    """A GET whose body is read, so the request finishes as with a real server."""
    response = client.get(path, **kwargs)
    response.get_data()
    return response


# 1. One SERVER span with the semantic-convention attributes.


def test_one_server_span_named_after_the_route_template(client: FlaskClient, cap: Capture) -> None:
    """A request makes one SERVER span "GET /items/<int:item_id>" with the HTTP attributes."""
    response = get(client, "/items/7", headers={"User-Agent": "tests/1.0"})
    assert 200 == response.status_code
    (span,) = cap.spans()
    assert "GET /items/<int:item_id>" == span.name
    assert SERVER == span.kind
    assert {
        "http.request.method": "GET",
        "http.route": ITEM_ROUTE,
        "http.response.status_code": 200,
        "url.path": "/items/7",
        "url.scheme": "http",
        "server.address": "localhost",
        "client.address": "127.0.0.1",
        "user_agent.original": "tests/1.0",
    }.items() <= attrs(span).items()


# 2. W3C propagation.


def test_valid_traceparent_makes_the_server_span_a_child(client: FlaskClient, cap: Capture) -> None:
    """A valid traceparent+tracestate: same trace, the caller's span as parent, state carried."""
    get(client, "/items/1", headers={"traceparent": TRACEPARENT, "tracestate": TRACESTATE})
    (span,) = cap.spans()
    assert TRACE_ID == span.trace_id.hex()
    assert PARENT_ID == span.parent_span_id.hex()
    assert TRACESTATE == span.trace_state


def test_unsampled_parent_exports_no_span_but_counts_the_request(
    client: FlaskClient, cap: Capture
) -> None:
    """Sampled flag 00 with parent-based sampling: no span exported, RED metrics still counted."""
    response = get(client, "/items/1", headers={"traceparent": f"00-{TRACE_ID}-{PARENT_ID}-00"})
    assert 200 == response.status_code
    assert [] == cap.spans()
    assert 1.0 == requests_total("GET", ITEM_ROUTE, "200")


def test_invalid_traceparent_starts_a_new_trace(
    client: FlaskClient, cap: Capture, invalid_traceparent: tuple[str, str]
) -> None:
    """An invalid traceparent never errors: a new trace starts and the header is counted."""
    value, reason = invalid_traceparent
    response = get(client, "/items/1", headers={"traceparent": wsgi(value)})
    assert 200 == response.status_code
    (span,) = cap.spans()
    assert b"" == span.parent_span_id
    assert TRACE_ID != span.trace_id.hex()
    assert "" == span.trace_state
    labels = {"header": "traceparent", "reason": reason}
    assert 1.0 == get_sample_value("obskit_propagation_invalid_total", labels)


def test_two_traceparent_headers_start_a_new_trace(client: FlaskClient, cap: Capture) -> None:
    """Two traceparent headers (which Werkzeug joins with a comma) are invalid: a new trace."""
    other = f"00-{'1' * 32}-{'2' * 16}-01"
    headers = [("traceparent", TRACEPARENT), ("traceparent", other)]
    response = get(client, "/items/1", headers=headers)
    assert 200 == response.status_code
    (span,) = cap.spans()
    assert b"" == span.parent_span_id
    assert span.trace_id.hex() not in (TRACE_ID, "1" * 32)


def test_invalid_tracestate_is_dropped_but_the_parent_kept(
    client: FlaskClient, cap: Capture, invalid_tracestate: str
) -> None:
    """An invalid or oversized tracestate is dropped; the valid traceparent still parents."""
    headers = {"traceparent": TRACEPARENT, "tracestate": invalid_tracestate}
    response = get(client, "/items/1", headers=headers)
    assert 200 == response.status_code
    (span,) = cap.spans()
    assert TRACE_ID == span.trace_id.hex()
    assert PARENT_ID == span.parent_span_id.hex()
    assert "" == span.trace_state


# 4. Exceptions.


def test_exception_is_recorded_and_answered_500(app: Flask, cap: Capture) -> None:
    """A view exception (app.testing False): 500, span ERROR with one exception event."""
    app.testing = False
    response = get(app.test_client(), "/boom")
    assert 500 == response.status_code
    (span,) = cap.spans()
    assert ERROR == span.status.code
    assert "ValueError" == attrs(span)["error.type"]
    assert 500 == attrs(span)["http.response.status_code"]
    (event,) = span.events
    assert "exception" == event.name
    assert "ValueError" == attrs(event)["exception.type"]
    assert "kaboom" == attrs(event)["exception.message"]
    assert 1.0 == requests_total("GET", "/boom", "500")


def test_propagated_exception_is_the_original_object(app: Flask, cap: Capture) -> None:
    """With PROPAGATE_EXCEPTIONS the very exception raised by the view reaches the caller."""
    error = KeyError("original")

    @app.get("/raise")
    def raise_it() -> Any:
        raise error

    app.config["PROPAGATE_EXCEPTIONS"] = True
    with pytest.raises(KeyError) as raised:
        app.test_client().get("/raise")
    assert error is raised.value
    (span,) = cap.spans()
    assert ERROR == span.status.code
    assert "KeyError" == attrs(span)["error.type"]
    assert ["exception"] == [event.name for event in span.events]
    assert 1.0 == requests_total("GET", "/raise", "500")


# 5. Unmatched paths and 5xx without an exception.


def test_unknown_path_is_unmatched(client: FlaskClient, cap: Capture) -> None:
    """404 for an unknown path: route label __unmatched__, span "GET", no http.route."""
    response = get(client, "/no/such/path")
    assert 404 == response.status_code
    (span,) = cap.spans()
    assert "GET" == span.name
    assert "http.route" not in attrs(span)
    assert 404 == attrs(span)["http.response.status_code"]
    assert 1.0 == requests_total("GET", "__unmatched__", "404")


def test_5xx_response_without_exception_is_an_error(client: FlaskClient, cap: Capture) -> None:
    """A view answering 503 marks the span ERROR with error.type "503"."""
    response = get(client, "/unavailable")
    assert 503 == response.status_code
    (span,) = cap.spans()
    assert ERROR == span.status.code
    assert "503" == attrs(span)["error.type"]
    assert [] == list(span.events)
    assert 1.0 == requests_total("GET", "/unavailable", "503")


# 6. RED metrics.


def test_red_metrics_count_per_method_route_and_status(client: FlaskClient, cap: Capture) -> None:
    """Requests are counted per method/route/status; the histogram count matches."""
    for item_id in range(3):
        get(client, f"/items/{item_id}")
    client.post("/items/9").get_data()
    get(client, "/unavailable")
    assert 3.0 == requests_total("GET", ITEM_ROUTE, "200")
    assert 1.0 == requests_total("POST", ITEM_ROUTE, "200")
    assert 1.0 == requests_total("GET", "/unavailable", "503")
    count = "http_request_duration_seconds_count"
    assert 3.0 == get_sample_value(count, {"method": "GET", "route": ITEM_ROUTE})
    assert 1.0 == get_sample_value(count, {"method": "POST", "route": ITEM_ROUTE})


def test_in_flight_gauge_counts_the_request_while_it_runs(
    client: FlaskClient, cap: Capture
) -> None:
    """http_requests_in_flight is 1 inside the view and back to 0 afterwards."""
    response = get(client, "/items/1")
    assert 1.0 == response.get_json()["in_flight"]
    labels = {"method": "GET", "route": ITEM_ROUTE}
    assert 0.0 == get_sample_value("http_requests_in_flight", labels)


def test_nonstandard_method_is_labelled_other(client: FlaskClient, cap: Capture) -> None:
    """A FOOBAR request is counted as method _OTHER; the span keeps the original method."""
    response = client.open("/items/1", method="FOOBAR")
    response.get_data()
    assert 200 == response.status_code
    assert 1.0 == requests_total("_OTHER", ITEM_ROUTE, "200")
    (span,) = cap.spans()
    assert "HTTP /items/<int:item_id>" == span.name
    assert "_OTHER" == attrs(span)["http.request.method"]
    assert "FOOBAR" == attrs(span)["http.request.method_original"]


def test_raw_paths_do_not_create_series(client: FlaskClient, cap: Capture) -> None:
    """2,000 catch-all paths and 2,000 unknown paths add two series: route templates only."""
    for index in range(2000):
        get(client, f"/files/user-{index}/report.pdf")
        get(client, f"/unknown/{index}")
    body = get(client, "/metrics").get_data(as_text=True)
    assert [
        'http_requests_total{method="GET",route="/files/<path:rest>",status="200"} 2000.0',
        'http_requests_total{method="GET",route="__unmatched__",status="404"} 2000.0',
    ] == sorted(series(body, "http_requests_total"))


# 7. /metrics.


def test_metrics_endpoint_serves_prometheus_text(client: FlaskClient, cap: Capture) -> None:
    """/metrics answers Prometheus text by default, with the counted requests."""
    get(client, "/items/1")
    response = get(client, "/metrics")
    assert 200 == response.status_code
    assert response.content_type.startswith("text/plain; version=0.0.4")
    body = response.get_data(as_text=True)
    line = 'http_requests_total{method="GET",route="/items/<int:item_id>",status="200"} 1.0'
    assert line in body.splitlines()
    assert "# {" not in body


def test_openmetrics_has_an_exemplar_with_the_trace_id(client: FlaskClient, cap: Capture) -> None:
    """OpenMetrics output carries a trace_id exemplar on a duration bucket, of an exported span."""
    get(client, "/items/1")
    response = get(client, "/metrics", headers={"Accept": OPENMETRICS})
    assert response.content_type.startswith("application/openmetrics-text")
    body = response.get_data(as_text=True)
    exemplars = re.findall(
        r'^http_request_duration_seconds_bucket\{[^}]*route="/items/<int:item_id>"[^}]*\} '
        r'\S+ # \{trace_id="([0-9a-f]{32})"\}',
        body,
        re.MULTILINE,
    )
    (span,) = cap.spans()
    assert [span.trace_id.hex()] == exemplars


def test_metrics_and_health_endpoints_are_not_counted(client: FlaskClient, cap: Capture) -> None:
    """/metrics and /healthz get no span and no RED metrics."""
    assert 200 == get(client, "/healthz").status_code
    get(client, "/metrics")
    body = get(client, "/metrics").get_data(as_text=True)
    assert [] == cap.spans()
    assert [] == series(body, "http_requests_total")


def test_custom_excluded_paths(any_config_capture: Capture) -> None:
    """excluded_paths given to Obskit() replaces the default list."""
    app = build_app()
    Obskit(app, excluded_paths=["/private"], bsp_schedule_delay=0.05)
    client = app.test_client()
    get(client, "/private")
    get(client, "/healthz")
    assert ["GET /healthz"] == [span.name for span in any_config_capture.spans()]
    assert requests_total("GET", "/private", "200") is None


# 8. Streaming.


def test_streamed_response_is_timed_to_the_last_chunk(client: FlaskClient, cap: Capture) -> None:
    """A generator response's duration includes every chunk (3 x 0.05 s)."""
    response = client.get("/stream")
    assert b"chunk 0\nchunk 1\nchunk 2\n" == response.get_data()
    labels = {"method": "GET", "route": "/stream"}
    assert 1.0 == get_sample_value("http_request_duration_seconds_count", labels)
    assert 3 * CHUNK_DELAY <= get_sample_value("http_request_duration_seconds_sum", labels)
    (span,) = cap.spans()
    assert 3 * CHUNK_DELAY * 1e9 <= span.end_time_unix_nano - span.start_time_unix_nano


# 9. Installation patterns and options.


def test_init_app_pattern(cap: Capture) -> None:
    """Obskit().init_app(app) instruments the app and registers app.extensions["obskit"]."""
    extension = Obskit()
    app = build_app()
    extension.init_app(app)
    assert extension is app.extensions["obskit"]
    get(app.test_client(), "/items/1")
    assert ["GET /items/<int:item_id>"] == [span.name for span in cap.spans()]


def _resource(cap: Capture) -> dict[str, Any]:
    (request,) = cap.requests()
    return attrs(request.resource_spans[0].resource)


def test_options_from_app_config(any_config_capture: Capture) -> None:
    """app.config["OBSKIT"] options configure obskit: service.name in the exported resource."""
    app = build_app()
    app.config["OBSKIT"] = {"service_name": "flask-from-config", "bsp_schedule_delay": 0.05}
    Obskit(app)
    get(app.test_client(), "/items/1")
    assert "flask-from-config" == _resource(any_config_capture)["service.name"]


def test_keyword_options_override_app_config(any_config_capture: Capture) -> None:
    """Keyword options to Obskit() win over app.config["OBSKIT"]."""
    app = build_app()
    app.config["OBSKIT"] = {"service_name": "from-config", "bsp_schedule_delay": 0.05}
    Obskit(app, service_name="from-keyword")
    get(app.test_client(), "/items/1")
    assert "from-keyword" == _resource(any_config_capture)["service.name"]


# 11. Context inside and after the request.


def test_server_span_is_current_inside_the_view(client: FlaskClient, cap: Capture) -> None:
    """Inside the view the current span is the server span; afterwards the context is restored."""
    response = get(client, "/items/1")
    (span,) = cap.spans()
    assert span.span_id.hex() == response.get_json()["span_id"]
    assert not trace.get_current_span().get_span_context().is_valid


def test_context_is_restored_after_a_stream(client: FlaskClient, cap: Capture) -> None:
    """After a streamed response the next request starts a new trace, not a child."""
    get(client, "/stream")
    assert not trace.get_current_span().get_span_context().is_valid
    get(client, "/items/1")
    stream, item = cap.spans()
    assert b"" == item.parent_span_id
    assert stream.trace_id != item.trace_id
