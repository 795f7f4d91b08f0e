"""What only the Django middleware does: async views through AsyncClient, Django's own ASGI
handler, settings.OBSKIT on the async path.

The contract every adapter keeps (spans, propagation, RED metrics, /metrics, streaming,
context) is in test_contract.py, run for Django too through the sync test client and the test
project (tests/frameworks/django_app).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import django
import pytest
from django.conf import settings
from django.core.handlers.asgi import ASGIHandler
from django.test import AsyncClient, override_settings
from opentelemetry import trace

from obskit.testing import Capture, capture, get_sample_value
from tests.frameworks.contract_apps import CHUNK_DELAY, Boom
from tests.frameworks.helpers import requests_total
from tests.otlp_receiver import attributes as attrs

TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
PARENT_ID = "b7ad6b7169203331"
TRACEPARENT = f"00-{TRACE_ID}-{PARENT_ID}-01"
ASYNC_ITEM_ROUTE = "/async/items/<int:item_id>"
BOOM_TYPE = f"{Boom.__module__}.{Boom.__qualname__}"
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
def async_client(cap: Capture) -> AsyncClient:
    """A fresh async test client (ASGI request path, async middleware chain)."""
    return AsyncClient(raise_request_exception=False)


# Async streaming.


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


# Async views.


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
    assert BOOM_TYPE == attrs(span)["error.type"]
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


def _scope(path: str) -> dict[str, Any]:
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"example.test")],
        "client": ("10.1.2.3", 40000),
        "server": ("example.test", 8000),
    }


async def _served_until_the_client_leaves(path: str, leave_after: float) -> list[dict[str, Any]]:
    """Django's ASGIHandler serving ``path`` to a client that disconnects after
    ``leave_after`` seconds: Django then cancels the view (or the stream)."""
    sent: list[dict[str, Any]] = []
    first = True

    async def receive() -> dict[str, Any]:
        nonlocal first
        if first:
            first = False
            return {"type": "http.request", "body": b"", "more_body": False}
        await asyncio.sleep(leave_after)
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await asyncio.wait_for(ASGIHandler()(_scope(path), receive, send), 10)
    return sent


# A bug this test found, since fixed (a review of 2026-11-25): Django's ASGI handler cancels the
# view when the client disconnects, and the middleware took the CancelledError for a failure --
# a 500 in the RED metrics and an ERROR span for a request nobody was answered (before a slow
# view answered), an ERROR span for a stream the client left (obskit/django/middleware.py,
# obskit/http/_pipeline.py finishing_chunks_async). The client going away is not a failure:
# no answer is recorded as 499 (nginx's "client closed request"), a stream with what it sent.
@pytest.mark.skipif(
    django.VERSION < (5, 0), reason="Django's ASGI handler listens for a disconnect from 5.0"
)
async def test_a_client_that_leaves_is_no_failure(cap: Capture) -> None:
    sent = await _served_until_the_client_leaves("/async/slow", 0.05)
    assert [] == [m for m in sent if m["type"] == "http.response.start"]
    sent = await _served_until_the_client_leaves("/async/stream", CHUNK_DELAY * 1.5)
    assert 200 == sent[0]["status"]
    spans = {span.name: span for span in cap.spans()}
    assert {"GET /async/slow", "GET /async/stream"} == set(spans)
    assert [0, 0] == [span.status.code for span in spans.values()]
    assert 499 == attrs(spans["GET /async/slow"])["http.response.status_code"]
    assert (1.0, 1.0, None) == (
        requests_total("GET", "/async/slow", "499"),
        requests_total("GET", "/async/stream", "200"),
        requests_total("GET", "/async/slow", "500"),
    )
    assert 0.0 == get_sample_value(
        "http_requests_in_flight", {"method": "GET", "route": "/async/slow"}
    )


def test_runserver_lines_carry_no_socket(cap: Capture) -> None:
    """Django's development server (``manage.py runserver``) passes its socket as the
    ``request`` extra of each ``django.server`` line: its repr (file descriptors, addresses)
    is not written into the JSON line."""
    import io

    from django.core.servers.basehttp import WSGIRequestHandler, WSGIServer
    from django.core.wsgi import get_wsgi_application

    from obskit.logging import setup_logging
    from tests.logging_state import preserved_logging
    from tests.loopback import get_from

    with preserved_logging():
        app = get_wsgi_application()  # django.setup() again: Django's LOGGING applied
        buffer = io.StringIO()
        setup_logging(stream=buffer)
        server = WSGIServer(("127.0.0.1", 0), WSGIRequestHandler)
        server.set_app(app)
        assert 404 == get_from(server, "/missing-page")
        written = [json.loads(line) for line in buffer.getvalue().splitlines()]
    (line,) = [line for line in written if line["logger"] == "django.server"]
    assert "request" not in line
    assert '"GET /missing-page HTTP/1.1" 404' in line["message"]
