"""The Django middleware through the test project, Django's test clients and its ASGI handler."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator
from typing import Any

import pytest
from django.conf import settings
from django.core.handlers.asgi import ASGIHandler
from django.test import AsyncClient, Client, override_settings
from opentelemetry import trace

from obskit.testing import Capture, capture, get_sample_value
from tests.frameworks.django_app.views import CHUNK_DELAY
from tests.frameworks.helpers import requests_total, series
from tests.otlp_receiver import attributes as attrs

TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
PARENT_ID = "b7ad6b7169203331"
TRACEPARENT = f"00-{TRACE_ID}-{PARENT_ID}-01"
TRACESTATE = "vendor=opaque,other=1"
OPENMETRICS = "application/openmetrics-text; version=1.0.0"
ITEM_ROUTE = "/items/<int:item_id>"
ASYNC_ITEM_ROUTE = "/async/items/<int:item_id>"
BOOM_TYPE = "tests.frameworks.django_app.views.Boom"
SERVER = 2  # Span.SpanKind.SPAN_KIND_SERVER
ERROR = 2  # Status.StatusCode.STATUS_CODE_ERROR


@pytest.fixture
def cap() -> Iterator[Capture]:
    """obskit configured like settings.OBSKIT, with an in-memory span sink.

    The middleware configures obskit from settings.OBSKIT when it is built; equal options leave
    this configuration (and its sink) in place.
    """
    with capture(**settings.OBSKIT) as captured:
        yield captured


@pytest.fixture
def client(cap: Capture) -> Client:
    """A fresh sync test client: its handler builds the middleware against this test's obskit."""
    return Client(raise_request_exception=False)


@pytest.fixture
def async_client(cap: Capture) -> AsyncClient:
    """A fresh async test client (ASGI request path, async middleware chain)."""
    return AsyncClient(raise_request_exception=False)


def wsgi(value: str) -> str:
    """A header value as a WSGI server puts it in META: the UTF-8 bytes decoded as latin-1."""
    return value.encode().decode("latin-1")


# 1. One SERVER span with the semantic-convention attributes.


def test_one_server_span_named_after_the_route_template(client: Client, cap: Capture) -> None:
    """A request makes one SERVER span "GET /items/<int:item_id>" with the HTTP attributes."""
    response = client.get("/items/7", HTTP_USER_AGENT="tests/1.0")
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
        "server.address": "testserver",
        "client.address": "127.0.0.1",
        "user_agent.original": "tests/1.0",
    }.items() <= attrs(span).items()


# 2. W3C propagation.


def test_valid_traceparent_makes_the_server_span_a_child(client: Client, cap: Capture) -> None:
    """A valid traceparent+tracestate: same trace, the caller's span as parent, state carried."""
    client.get("/items/1", HTTP_TRACEPARENT=TRACEPARENT, HTTP_TRACESTATE=TRACESTATE)
    (span,) = cap.spans()
    assert TRACE_ID == span.trace_id.hex()
    assert PARENT_ID == span.parent_span_id.hex()
    assert TRACESTATE == span.trace_state


def test_unsampled_parent_exports_no_span_but_counts_the_request(
    client: Client, cap: Capture
) -> None:
    """Sampled flag 00 with parent-based sampling: no span exported, RED metrics still counted."""
    response = client.get("/items/1", HTTP_TRACEPARENT=f"00-{TRACE_ID}-{PARENT_ID}-00")
    assert 200 == response.status_code
    assert [] == cap.spans()
    assert 1.0 == requests_total("GET", ITEM_ROUTE, "200")


def test_invalid_traceparent_starts_a_new_trace(
    client: Client, cap: Capture, invalid_traceparent: tuple[str, str]
) -> None:
    """An invalid traceparent never errors: a new trace starts and the header is counted.

    META cannot hold a header twice; two traceparent headers arrive comma-joined ("two_headers").
    """
    value, reason = invalid_traceparent
    response = client.get("/items/1", HTTP_TRACEPARENT=wsgi(value))
    assert 200 == response.status_code
    (span,) = cap.spans()
    assert b"" == span.parent_span_id
    assert TRACE_ID != span.trace_id.hex()
    assert "" == span.trace_state
    labels = {"header": "traceparent", "reason": reason}
    assert 1.0 == get_sample_value("obskit_propagation_invalid_total", labels)


def test_invalid_tracestate_is_dropped_but_the_parent_kept(
    client: Client, cap: Capture, invalid_tracestate: str
) -> None:
    """An invalid or oversized tracestate is dropped; the valid traceparent still parents."""
    response = client.get(
        "/items/1", HTTP_TRACEPARENT=TRACEPARENT, HTTP_TRACESTATE=invalid_tracestate
    )
    assert 200 == response.status_code
    (span,) = cap.spans()
    assert TRACE_ID == span.trace_id.hex()
    assert PARENT_ID == span.parent_span_id.hex()
    assert "" == span.trace_state


# 4. Exceptions.


def test_exception_is_recorded_and_answered_500(client: Client, cap: Capture) -> None:
    """A view exception: Django answers 500; span ERROR with the exception and its type."""
    response = client.get("/boom")
    assert 500 == response.status_code
    (span,) = cap.spans()
    assert ERROR == span.status.code
    assert "tests.frameworks.django_app.views.Boom" == attrs(span)["error.type"]
    assert 500 == attrs(span)["http.response.status_code"]
    (event,) = span.events
    assert "exception" == event.name
    assert BOOM_TYPE == attrs(event)["exception.type"]
    assert "kaboom" == attrs(event)["exception.message"]
    assert 1.0 == requests_total("GET", "/boom", "500")


# 5. Unmatched paths and 5xx without an exception.


def test_unknown_path_is_unmatched(client: Client, cap: Capture) -> None:
    """404 for an unknown path: route label __unmatched__, span "GET", no http.route."""
    response = client.get("/no/such/path")
    assert 404 == response.status_code
    (span,) = cap.spans()
    assert "GET" == span.name
    assert "http.route" not in attrs(span)
    assert 404 == attrs(span)["http.response.status_code"]
    assert 0 == span.status.code
    assert 1.0 == requests_total("GET", "__unmatched__", "404")


def test_5xx_response_without_exception_is_an_error(client: Client, cap: Capture) -> None:
    """A view answering 503 marks the span ERROR with error.type "503"."""
    response = client.get("/unavailable")
    assert 503 == response.status_code
    (span,) = cap.spans()
    assert ERROR == span.status.code
    assert "503" == attrs(span)["error.type"]
    assert [] == list(span.events)
    assert 1.0 == requests_total("GET", "/unavailable", "503")


# 6. RED metrics.


def test_red_metrics_count_per_method_route_and_status(client: Client, cap: Capture) -> None:
    """Requests are counted per method/route/status; the histogram count matches."""
    for item_id in range(3):
        client.get(f"/items/{item_id}")
    client.post("/items/9")
    client.get("/unavailable")
    assert 3.0 == requests_total("GET", ITEM_ROUTE, "200")
    assert 1.0 == requests_total("POST", ITEM_ROUTE, "200")
    assert 1.0 == requests_total("GET", "/unavailable", "503")
    count = "http_request_duration_seconds_count"
    assert 3.0 == get_sample_value(count, {"method": "GET", "route": ITEM_ROUTE})
    assert 1.0 == get_sample_value(count, {"method": "POST", "route": ITEM_ROUTE})


def test_in_flight_gauge_counts_the_request_while_it_runs(client: Client, cap: Capture) -> None:
    """http_requests_in_flight is 1 inside the view and back to 0 afterwards."""
    response = client.get("/items/1")
    assert 1.0 == response.json()["in_flight"]
    labels = {"method": "GET", "route": ITEM_ROUTE}
    assert 0.0 == get_sample_value("http_requests_in_flight", labels)


def test_nonstandard_method_is_labelled_other(client: Client, cap: Capture) -> None:
    """A FOOBAR request is counted as method _OTHER; the span keeps the original method."""
    response = client.generic("FOOBAR", "/items/1")
    assert 200 == response.status_code
    assert 1.0 == requests_total("_OTHER", ITEM_ROUTE, "200")
    (span,) = cap.spans()
    assert "HTTP /items/<int:item_id>" == span.name
    assert "_OTHER" == attrs(span)["http.request.method"]
    assert "FOOBAR" == attrs(span)["http.request.method_original"]


def test_raw_paths_do_not_create_series(client: Client, cap: Capture) -> None:
    """2,000 catch-all paths and 2,000 unknown paths add two series: route templates only."""
    for index in range(2000):
        client.get(f"/files/user-{index}/report.pdf")
        client.get(f"/unknown/{index}")
    body = client.get("/metrics").content.decode()
    assert [
        'http_requests_total{method="GET",route="/files/<path:rest>",status="200"} 2000.0',
        'http_requests_total{method="GET",route="__unmatched__",status="404"} 2000.0',
    ] == sorted(series(body, "http_requests_total"))


# 7. /metrics through include("obskit.django.urls").


def test_metrics_endpoint_serves_prometheus_text(client: Client, cap: Capture) -> None:
    """/metrics answers Prometheus text by default, with the counted requests."""
    client.get("/items/1")
    response = client.get("/metrics")
    assert 200 == response.status_code
    assert response["Content-Type"].startswith("text/plain; version=0.0.4")
    body = response.content.decode()
    line = 'http_requests_total{method="GET",route="/items/<int:item_id>",status="200"} 1.0'
    assert line in body.splitlines()
    assert "# {" not in body


def test_openmetrics_has_an_exemplar_with_the_trace_id(client: Client, cap: Capture) -> None:
    """OpenMetrics output carries a trace_id exemplar on a duration bucket, of an exported span."""
    client.get("/items/1")
    response = client.get("/metrics", HTTP_ACCEPT=OPENMETRICS)
    assert response["Content-Type"].startswith("application/openmetrics-text")
    exemplars = re.findall(
        r'^http_request_duration_seconds_bucket\{[^}]*route="/items/<int:item_id>"[^}]*\} '
        r'\S+ # \{trace_id="([0-9a-f]{32})"\}',
        response.content.decode(),
        re.MULTILINE,
    )
    (span,) = cap.spans()
    assert [span.trace_id.hex()] == exemplars


def test_metrics_and_health_endpoints_are_not_counted(client: Client, cap: Capture) -> None:
    """/metrics and /healthz get no span and no RED metrics."""
    assert 200 == client.get("/healthz").status_code
    client.get("/metrics")
    body = client.get("/metrics").content.decode()
    assert [] == cap.spans()
    assert [] == series(body, "http_requests_total")


def test_custom_excluded_paths(any_config_capture: Capture) -> None:
    """excluded_paths in settings.OBSKIT replaces the default list."""
    options = {**settings.OBSKIT, "excluded_paths": ["/private"]}
    with override_settings(OBSKIT=options):
        client = Client()
        client.get("/private")
        client.get("/healthz")
    assert ["GET /healthz"] == [span.name for span in any_config_capture.spans()]
    assert requests_total("GET", "/private", "200") is None


# 8. Streaming.


def test_streamed_response_is_timed_to_the_last_chunk(client: Client, cap: Capture) -> None:
    """A StreamingHttpResponse's duration includes every chunk (3 x 0.05 s)."""
    response = client.get("/stream")
    assert b"chunk 0\nchunk 1\nchunk 2\n" == b"".join(response.streaming_content)
    response.close()
    labels = {"method": "GET", "route": "/stream"}
    assert 1.0 == get_sample_value("http_request_duration_seconds_count", labels)
    assert 3 * CHUNK_DELAY <= get_sample_value("http_request_duration_seconds_sum", labels)
    (span,) = cap.spans()
    assert 3 * CHUNK_DELAY * 1e9 <= span.end_time_unix_nano - span.start_time_unix_nano


async def test_async_stream_is_timed_to_the_last_chunk(
    async_client: AsyncClient, cap: Capture
) -> None:
    """An async StreamingHttpResponse's duration includes every chunk (3 x 0.05 s)."""
    response = await async_client.get("/async/stream")
    chunks = [chunk async for chunk in response.streaming_content]
    assert [b"chunk 0\n", b"chunk 1\n", b"chunk 2\n"] == chunks
    labels = {"method": "GET", "route": "/async/stream"}
    assert 1.0 == get_sample_value("http_request_duration_seconds_count", labels)
    assert 3 * CHUNK_DELAY <= get_sample_value("http_request_duration_seconds_sum", labels)


# 10. Async views.


async def test_async_view_gets_the_same_span_and_metrics(
    async_client: AsyncClient, cap: Capture
) -> None:
    """An async view through AsyncClient: a child SERVER span, current in the view, and metrics."""
    response = await async_client.get(
        "/async/items/5", headers={"traceparent": TRACEPARENT, "user-agent": "tests/1.0"}
    )
    assert 200 == response.status_code
    (span,) = cap.spans()
    assert "GET /async/items/<int:item_id>" == span.name
    assert SERVER == span.kind
    assert TRACE_ID == span.trace_id.hex()
    assert PARENT_ID == span.parent_span_id.hex()
    assert span.span_id.hex() == response.json()["span_id"]
    assert {
        "http.request.method": "GET",
        "http.route": ASYNC_ITEM_ROUTE,
        "http.response.status_code": 200,
        "url.path": "/async/items/5",
        "url.scheme": "http",
        "user_agent.original": "tests/1.0",
    }.items() <= attrs(span).items()
    assert 1.0 == requests_total("GET", ASYNC_ITEM_ROUTE, "200")
    labels = {"method": "GET", "route": ASYNC_ITEM_ROUTE}
    assert 0.0 == get_sample_value("http_requests_in_flight", labels)
    assert not trace.get_current_span().get_span_context().is_valid


async def test_async_view_exception_is_recorded(async_client: AsyncClient, cap: Capture) -> None:
    """An async view exception: 500, span ERROR with the exception and its type."""
    response = await async_client.get("/async/boom")
    assert 500 == response.status_code
    (span,) = cap.spans()
    assert ERROR == span.status.code
    assert "tests.frameworks.django_app.views.Boom" == attrs(span)["error.type"]
    assert [BOOM_TYPE] == [attrs(event)["exception.type"] for event in span.events]
    assert 1.0 == requests_total("GET", "/async/boom", "500")


async def test_async_settings_options_apply(any_config_capture: Capture) -> None:
    """settings.OBSKIT configures obskit on the async path: service.name in the resource."""
    options = {**settings.OBSKIT, "service_name": "django-async-settings"}
    with override_settings(OBSKIT=options):
        response = await AsyncClient().get("/async/items/1")
    assert 200 == response.status_code
    (request,) = any_config_capture.requests()
    resource = attrs(request.resource_spans[0].resource)
    assert "django-async-settings" == resource["service.name"]
    spans = [span.name for span in any_config_capture.spans()]
    assert ["GET /async/items/<int:item_id>"] == spans


async def test_asgi_handler_serves_an_async_view(cap: Capture) -> None:
    """Django's own ASGIHandler: span parented by traceparent, client address from the scope."""
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": "/async/items/3",
        "raw_path": b"/async/items/3",
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"example.test"), (b"traceparent", TRACEPARENT.encode())],
        "client": ("10.1.2.3", 40000),
        "server": ("example.test", 8000),
    }
    messages = [{"type": "http.request", "body": b"", "more_body": False}]
    sent: list[dict[str, Any]] = []
    disconnect = asyncio.Event()

    async def receive() -> dict[str, Any]:
        if messages:
            return messages.pop(0)
        await disconnect.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await ASGIHandler()(scope, receive, send)
    disconnect.set()
    assert 200 == sent[0]["status"]
    (span,) = cap.spans()
    assert "GET /async/items/<int:item_id>" == span.name
    assert PARENT_ID == span.parent_span_id.hex()
    assert "10.1.2.3" == attrs(span)["client.address"]
    assert span.span_id.hex() in b"".join(m.get("body", b"") for m in sent[1:]).decode()


# 11. Context inside and after the request.


def test_server_span_is_current_inside_the_view(client: Client, cap: Capture) -> None:
    """Inside the view the current span is the server span; afterwards the context is restored."""
    response = client.get("/items/1")
    (span,) = cap.spans()
    assert span.span_id.hex() == response.json()["span_id"]
    assert not trace.get_current_span().get_span_context().is_valid


def test_context_is_restored_after_a_stream(client: Client, cap: Capture) -> None:
    """After a sync StreamingHttpResponse the next request starts a new trace, not a child."""
    response = client.get("/stream")
    b"".join(response.streaming_content)
    response.close()
    assert not trace.get_current_span().get_span_context().is_valid
    client.get("/items/1")
    stream, item = cap.spans()
    assert b"" == item.parent_span_id
    assert stream.trace_id != item.trace_id
