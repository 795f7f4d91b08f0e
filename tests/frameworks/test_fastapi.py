"""FastAPI through ``obskit.fastapi.instrument``: one SERVER span per request (FastAPI's native
telemetry switched off), route templates as labels, W3C context in, errors, streaming, /metrics,
and WebSocket/lifespan passing through.

Requests go through the real application object: ``fastapi.testclient.TestClient`` (which runs on
``httpx2`` and is not traced by obskit's outbound hooks, so the headers a test sends arrive
unchanged), ``httpx.AsyncClient`` over ``httpx.ASGITransport`` (traced: a CLIENT span is the
parent), raw ASGI calls where thousands of requests must stay fast, and a real uvicorn server on
loopback.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi import APIRouter, FastAPI, HTTPException, WebSocket
from fastapi.responses import StreamingResponse
from fastapi.testclient import TestClient
from opentelemetry import baggage, trace
from prometheus_client.openmetrics.parser import text_string_to_metric_families

from obskit import _state
from obskit.fastapi import instrument
from obskit.testing import Capture, capture, get_sample_value, samples
from tests.otlp_receiver import attributes

INTERNAL = 1
SERVER = 2
CLIENT = 3
ERROR = 2
TIMEOUT = 10.0
REMOTE_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
REMOTE_SPAN = "00f067aa0ba902b7"
ITEM = "/items/{item_id}"


class Boom(Exception):
    """The handler's own exception."""


@pytest.fixture(autouse=True)
def _no_ambient_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Neither the machine's OTEL_/OBSKIT_/FASTAPI_ settings nor an HTTP proxy apply here."""
    for name in list(os.environ):
        upper = name.upper()
        if upper.startswith(("OTEL_", "OBSKIT_", "FASTAPI_")) or upper.endswith("_PROXY"):
            monkeypatch.delenv(name)


@pytest.fixture
def cap() -> Iterator[Capture]:
    """obskit configured with an in-memory OTLP sink (a global TracerProvider exists)."""
    with capture(service_name="fastapi-test") as captured:
        yield captured


def build_app() -> FastAPI:
    """The application under test, not instrumented yet.

    ``app.state.raised`` collects the exceptions handlers raise, ``app.state.lifespan`` the
    lifespan events, ``app.state.seen`` what handlers observed from inside.
    """

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.lifespan.append("startup")
        yield
        app.state.lifespan.append("shutdown")

    app = FastAPI(lifespan=lifespan)
    app.state.raised = []
    app.state.lifespan = []
    app.state.seen = []

    @app.get("/items/{item_id}")
    async def item(item_id: int) -> dict[str, int]:
        return {"item_id": item_id}

    @app.get("/context")
    async def context() -> dict[str, Any]:
        return current_context()

    @app.get("/context-sync")
    def context_sync() -> dict[str, Any]:
        return current_context()

    @app.get("/boom")
    async def boom() -> None:
        error = Boom("kaboom")
        app.state.raised.append(error)
        raise error

    @app.get("/missing/{item_id}")
    async def missing(item_id: int) -> None:
        raise HTTPException(status_code=404, detail=f"no item {item_id}")

    @app.get("/slow")
    async def slow() -> dict[str, Any]:
        await asyncio.sleep(0.02)
        labels = {"method": "GET", "route": "/slow"}
        return {"in_flight": get_sample_value("http_requests_in_flight", labels)}

    @app.get("/gate")
    async def gate() -> dict[str, bool]:
        app.state.seen.append("/gate")
        await app.state.gate.wait()
        return {"ok": True}

    @app.get("/stream")
    async def stream() -> StreamingResponse:
        async def chunks() -> AsyncIterator[bytes]:
            for index in range(3):
                await asyncio.sleep(0.05)
                yield f"chunk {index}\n".encode()

        return StreamingResponse(chunks(), media_type="text/plain")

    @app.get("/healthz")
    async def healthz() -> dict[str, bool]:
        return {"ok": True}

    @app.websocket("/ws")
    async def echo(websocket: WebSocket) -> None:
        await websocket.accept()
        text = await websocket.receive_text()
        await websocket.send_text(f"echo: {text}")
        await websocket.close()

    users = APIRouter(prefix="/api/v1")

    @users.get("/users/{user_id}/orders/{order_id}")
    async def order(user_id: int, order_id: str) -> dict[str, Any]:
        return {"user_id": user_id, "order_id": order_id}

    deep = APIRouter(prefix="/deep")

    @deep.get("/things/{thing_id}")
    async def deep_thing(thing_id: int) -> dict[str, int]:
        return {"thing_id": thing_id}

    users.include_router(deep)
    app.include_router(users)
    app.include_router(users, prefix="/tenants/{tenant}")

    sub = FastAPI()

    @sub.get("/things/{id}")
    async def thing(id: int) -> dict[str, int]:
        return {"id": id}

    app.mount("/sub", sub)
    return app


def current_context() -> dict[str, Any]:
    """What a handler sees: the current span's ids and the baggage."""
    span_context = trace.get_current_span().get_span_context()
    return {
        "trace_id": format(span_context.trace_id, "032x"),
        "span_id": format(span_context.span_id, "016x"),
        "baggage": dict(baggage.get_all()),
    }


@pytest.fixture
def app(cap: Capture) -> FastAPI:
    """The application, instrumented."""
    return instrument(build_app())


@pytest.fixture
def client(app: FastAPI) -> Iterator[TestClient]:
    """A TestClient that runs the lifespan and re-raises server exceptions."""
    with TestClient(app, raise_server_exceptions=True) as test_client:
        yield test_client


def servers(cap: Capture) -> list[Any]:
    """The exported SERVER spans."""
    return [span for span in cap.spans() if span.kind == SERVER]


def the_server_span(cap: Capture) -> Any:
    """The one SERVER span exported (fails if there are more)."""
    (span,) = servers(cap)
    return span


def requests_total() -> dict[tuple[str, str, str], float]:
    """``http_requests_total`` by ``(method, route, status)``."""
    return {
        (labels["method"], labels["route"], labels["status"]): value
        for labels, value in samples("http_requests_total")
    }


async def asgi_get(app: Any, path: str) -> int:
    """Send one bare ``GET path`` through the ASGI app; the response status."""
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"testserver")],
        "client": ("127.0.0.1", 50000),
        "server": ("testserver", 80),
    }
    statuses: list[int] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            statuses.append(message["status"])

    await app(scope, receive, send)
    return statuses[0]


@contextmanager
def uvicorn_server(app: Any) -> Iterator[str]:
    """``app`` served by uvicorn on a free loopback port (in a thread); yields its base URL."""
    config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", ws="none")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="uvicorn-test", daemon=True)
    thread.start()
    deadline = time.monotonic() + TIMEOUT
    while not server.started:
        assert thread.is_alive(), "uvicorn stopped before it started"
        assert time.monotonic() < deadline, "uvicorn did not start in time"
        time.sleep(0.01)
    try:
        port = server.servers[0].sockets[0].getsockname()[1]
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(TIMEOUT)
        assert not thread.is_alive(), "uvicorn did not stop in time"


# --- 1-3: one SERVER span ----------------------------------------------------------------------


def test_one_server_span_with_semantic_attributes(cap: Capture, client: TestClient) -> None:
    """A request gives exactly one SERVER span, named by its route, with the HTTP attributes."""
    response = client.get("/items/42", headers={"user-agent": "obskit-test/1.0"})
    assert (200, {"item_id": 42}) == (response.status_code, response.json())
    span = the_server_span(cap)
    expected = {
        "http.request.method": "GET",
        "http.route": ITEM,
        "http.response.status_code": 200,
        "url.path": "/items/42",
        "url.scheme": "http",
        "server.address": "testserver",
        "server.port": 80,
        "client.address": "testclient",
        "user_agent.original": "obskit-test/1.0",
        "network.protocol.version": "1.1",
    }
    actual = attributes(span)
    assert expected == {key: actual.get(key) for key in expected}
    assert [span] == cap.spans()  # no FastAPI SERVER span, no fastapi.* operation spans
    assert ("GET /items/{item_id}", 0, b"") == (span.name, span.status.code, span.parent_span_id)


def test_fastapi_native_telemetry_is_off(cap: Capture, app: FastAPI, client: TestClient) -> None:
    """instrument() turns FastAPI's own spans off: no second SERVER span, no fastapi.* spans."""
    client.get("/items/1")
    client.get("/api/v1/users/7/orders/abc")
    client.get("/sub/things/3")  # a mounted FastAPI sub-application has its own telemetry
    spans = cap.spans()
    assert 3 == len([span for span in spans if span.kind == SERVER])
    assert [] == [span.name for span in spans if span.name.startswith("fastapi")]
    assert [] == [span.name for span in spans if span.kind != SERVER]
    scopes = {
        scope_spans.scope.name
        for request in cap.requests()
        for resource_spans in request.resource_spans
        for scope_spans in resource_spans.scope_spans
    }
    assert {"obskit.http"} == scopes
    assert (False, False) == (app._telemetry["tracing"], app._telemetry["metrics"])


def test_one_server_span_per_request_under_uvicorn(cap: Capture, app: FastAPI) -> None:
    """Under a real uvicorn server, each request gives one SERVER span, child of the CLIENT span."""
    with uvicorn_server(app) as url, httpx.Client(base_url=url, timeout=TIMEOUT) as http:
        for item_id in range(3):
            assert 200 == http.get(f"/items/{item_id}").status_code
    spans = cap.spans()
    server_spans = [span for span in spans if span.kind == SERVER]
    client_spans = {span.span_id: span for span in spans if span.kind == CLIENT}
    assert 3 == len(server_spans)
    assert 3 == len({span.trace_id for span in server_spans})
    assert [] == [span.name for span in spans if span.name.startswith("fastapi")]
    for span in server_spans:
        parent = client_spans[span.parent_span_id]
        assert (parent.trace_id, "GET /items/{item_id}") == (span.trace_id, span.name)
        assert "127.0.0.1" == attributes(span)["server.address"]
    assert ["startup", "shutdown"] == app.state.lifespan
    assert 3.0 == requests_total()[("GET", ITEM, "200")]


def test_without_instrument_fastapi_exports_its_own_server_span(cap: Capture) -> None:
    """Without instrument(), FastAPI's native SERVER and INTERNAL spans go out through obskit."""
    app = build_app()
    with TestClient(app) as client:
        assert 200 == client.get("/items/5").status_code
    by_scope = [
        (scope_spans.scope.name, span)
        for request in cap.requests()
        for resource_spans in request.resource_spans
        for scope_spans in resource_spans.scope_spans
        for span in scope_spans.spans
    ]
    server_spans = [span for scope, span in by_scope if span.kind == SERVER]
    (server,) = server_spans
    assert {"fastapi"} == {scope for scope, _ in by_scope}
    assert ("GET /items/{item_id}", ITEM) == (server.name, attributes(server)["http.route"])
    operations = sorted(
        (span.name, span.kind, span.parent_span_id) for _, span in by_scope if span is not server
    )
    expected = [
        ("fastapi.dependencies", INTERNAL, server.span_id),
        ("fastapi.endpoint", INTERNAL, server.span_id),
        ("fastapi.serialization", INTERNAL, server.span_id),
    ]
    assert expected == operations
    # obskit's OTLP resource is on FastAPI's spans; obskit's RED metrics are not recorded.
    resource = {
        kv.key: kv.value.string_value
        for kv in cap.requests()[0].resource_spans[0].resource.attributes
    }
    assert "fastapi-test" == resource["service.name"]
    assert {} == requests_total()


# --- 4: W3C context in -------------------------------------------------------------------------


def test_traceparent_makes_a_child_of_the_remote_parent(cap: Capture, client: TestClient) -> None:
    """traceparent + tracestate in: the SERVER span continues the remote trace and its state."""
    headers = {
        "traceparent": f"00-{REMOTE_TRACE}-{REMOTE_SPAN}-01",
        "tracestate": "vendor=abc, tenant@sys=x",
    }
    seen = client.get("/context", headers=headers).json()
    span = the_server_span(cap)
    expected = (REMOTE_TRACE, REMOTE_SPAN, "vendor=abc,tenant@sys=x")
    assert expected == (span.trace_id.hex(), span.parent_span_id.hex(), span.trace_state)
    assert (REMOTE_TRACE, span.span_id.hex()) == (seen["trace_id"], seen["span_id"])


@pytest.mark.parametrize(
    ("traceparent", "reason"),
    [
        pytest.param(
            f"00-{REMOTE_TRACE.upper()}-{REMOTE_SPAN}-01", "not_lowercase_hex", id="upper"
        ),
        pytest.param(f"00-{'0' * 32}-{REMOTE_SPAN}-01", "zero_id", id="zero-trace-id"),
        pytest.param(f"ff-{REMOTE_TRACE}-{REMOTE_SPAN}-01", "version", id="version-ff"),
        pytest.param("garbage", "length", id="garbage"),
    ],
)
def test_invalid_traceparent_starts_a_new_trace(
    cap: Capture, client: TestClient, traceparent: str, reason: str
) -> None:
    """An invalid traceparent: a new root trace, a normal response, the header counted."""
    headers = {"traceparent": traceparent, "tracestate": "vendor=abc"}
    response = client.get("/items/1", headers=headers)
    assert 200 == response.status_code
    span = the_server_span(cap)
    assert (b"", "") == (span.parent_span_id, span.trace_state)
    assert REMOTE_TRACE != span.trace_id.hex()
    labels = {"header": "traceparent", "reason": reason}
    assert 1.0 == get_sample_value("obskit_propagation_invalid_total", labels)


def test_invalid_tracestate_keeps_the_remote_parent(cap: Capture, client: TestClient) -> None:
    """A bad tracestate is dropped (and counted) while the valid traceparent is still the parent."""
    headers = {"traceparent": f"00-{REMOTE_TRACE}-{REMOTE_SPAN}-01", "tracestate": "a=1,a=2"}
    assert 200 == client.get("/items/1", headers=headers).status_code
    span = the_server_span(cap)
    assert (REMOTE_TRACE, REMOTE_SPAN, "") == (
        span.trace_id.hex(),
        span.parent_span_id.hex(),
        span.trace_state,
    )
    labels = {"header": "tracestate", "reason": "duplicate_key"}
    assert 1.0 == get_sample_value("obskit_propagation_invalid_total", labels)


def test_baggage_is_visible_in_the_handler(client: TestClient) -> None:
    """The baggage header's entries are in the handler's context (percent-decoded)."""
    headers = {"baggage": "user.id=42, tenant=acme%20corp"}
    seen = client.get("/context", headers=headers).json()
    assert {"user.id": "42", "tenant": "acme corp"} == seen["baggage"]


def test_no_baggage_leaks_into_the_next_request(client: TestClient) -> None:
    """A request without baggage sees none, even right after one that carried some."""
    client.get("/context", headers={"baggage": "user.id=42"})
    assert {} == client.get("/context").json()["baggage"]


# --- 5: errors ---------------------------------------------------------------------------------


def test_handler_exception_marks_the_span_and_reaches_the_caller(
    cap: Capture, app: FastAPI, client: TestClient
) -> None:
    """An unhandled exception: ERROR span with the exception event, status 500, same object."""
    with pytest.raises(Boom) as raised:
        client.get("/boom")
    assert app.state.raised == [raised.value]
    assert app.state.raised[0] is raised.value
    span = the_server_span(cap)
    assert (ERROR, "Boom: kaboom") == (span.status.code, span.status.message)
    (event,) = span.events
    event_attributes = attributes(event)
    assert ("exception", "kaboom") == (event.name, event_attributes["exception.message"])
    # error.type is the exception's fully qualified name, the same as exception.type.
    qualified = f"{Boom.__module__}.{Boom.__qualname__}"
    assert (qualified, qualified) == (
        attributes(span)["error.type"],
        event_attributes["exception.type"],
    )
    assert "kaboom" in event_attributes["exception.stacktrace"]
    assert {("GET", "/boom", "500"): 1.0} == requests_total()


def test_handler_exception_is_a_500_without_raise_server_exceptions(
    cap: Capture, app: FastAPI
) -> None:
    """With the exception left to FastAPI's error handler, the client gets a 500 and one span."""
    with TestClient(app, raise_server_exceptions=False) as client:
        assert 500 == client.get("/boom").status_code
    span = the_server_span(cap)
    qualified = f"{Boom.__module__}.{Boom.__qualname__}"
    assert (ERROR, qualified) == (span.status.code, attributes(span)["error.type"])
    assert {("GET", "/boom", "500"): 1.0} == requests_total()


def test_http_exception_404_is_not_an_error(cap: Capture, client: TestClient) -> None:
    """HTTPException(404) in a matched route: status 404 under the route template, no error."""
    response = client.get("/missing/7")
    assert (404, {"detail": "no item 7"}) == (response.status_code, response.json())
    span = the_server_span(cap)
    expected = ("GET /missing/{item_id}", 0, [], 404)
    actual = (
        span.name,
        span.status.code,
        list(span.events),
        attributes(span)["http.response.status_code"],
    )
    assert expected == actual
    assert "error.type" not in attributes(span)
    assert {("GET", "/missing/{item_id}", "404"): 1.0} == requests_total()


def test_unknown_path_is_unmatched(cap: Capture, client: TestClient) -> None:
    """An unknown path: route label __unmatched__, span named just "GET", no http.route."""
    assert 404 == client.get("/no/such/path/123").status_code
    span = the_server_span(cap)
    assert ("GET", 0) == (span.name, span.status.code)
    assert "http.route" not in attributes(span)
    assert {("GET", "__unmatched__", "404"): 1.0} == requests_total()


def test_non_standard_method_is_other(cap: Capture, client: TestClient) -> None:
    """A method outside RFC 9110 is labelled _OTHER; the original is kept on the span only."""
    assert 405 == client.request("FROB", "/items/1").status_code
    span = the_server_span(cap)
    assert ("HTTP /items/{item_id}", "_OTHER", "FROB") == (
        span.name,
        attributes(span)["http.request.method"],
        attributes(span)["http.request.method_original"],
    )
    assert {("_OTHER", ITEM, "405"): 1.0} == requests_total()


# --- 6: route templates and cardinality --------------------------------------------------------


def test_route_templates_of_routers_and_mounts(cap: Capture, client: TestClient) -> None:
    """APIRouter prefixes (nested, and include prefixes) and mounts give full route templates."""
    paths = {
        "/api/v1/users/918273/orders/ord-918273": "/api/v1/users/{user_id}/orders/{order_id}",
        "/api/v1/deep/things/918273": "/api/v1/deep/things/{thing_id}",
        "/tenants/acme-918273/api/v1/users/918273/orders/x": (
            "/tenants/{tenant}/api/v1/users/{user_id}/orders/{order_id}"
        ),
        "/tenants/acme-918273/api/v1/deep/things/918273": (
            "/tenants/{tenant}/api/v1/deep/things/{thing_id}"
        ),
        "/sub/things/918273": "/sub/things/{id}",
    }
    for path in paths:
        assert 200 == client.get(path).status_code, path
    expected = {("GET", route, "200"): 1.0 for route in paths.values()}
    assert expected == requests_total()
    assert sorted(f"GET {route}" for route in paths.values()) == sorted(
        span.name for span in servers(cap)
    )
    assert sorted(paths) == sorted(attributes(span)["url.path"] for span in servers(cap))


def test_unmatched_path_under_a_mount_keeps_the_mount_template(client: TestClient) -> None:
    """A path under a mount that its sub-application does not know is labelled "/sub/{path}"."""
    assert 404 == client.get("/sub/unknown/918273").status_code
    assert {("GET", "/sub/{path}", "404"): 1.0} == requests_total()


def test_path_parameters_never_appear_in_labels(client: TestClient) -> None:
    """No label value of any http_* series contains a raw path parameter."""
    for path in (
        "/items/918273",
        "/missing/918273",
        "/api/v1/users/918273/orders/918273",
        "/sub/things/918273",
        "/no/such/918273",
    ):
        client.get(path)
    values = [
        value
        for family in _state.registry.collect()
        if family.name.startswith("http_")
        for sample in family.samples
        for value in sample.labels.values()
    ]
    assert values
    assert [] == [value for value in values if "918273" in value]


async def test_ten_thousand_raw_paths_keep_series_bounded(cap: Capture, app: FastAPI) -> None:
    """10,000 distinct raw paths (matched and unknown) give two http_requests_total series."""
    for index in range(5_000):
        assert 200 == await asgi_get(app, f"/items/{index}")
        assert 404 == await asgi_get(app, f"/unknown/{index}/x")
    expected = {("GET", ITEM, "200"): 5_000.0, ("GET", "__unmatched__", "404"): 5_000.0}
    assert expected == requests_total()
    durations = {
        tuple(labels.values()) for labels, _ in samples("http_request_duration_seconds_count")
    }
    assert {("GET", ITEM), ("GET", "__unmatched__")} == durations


# --- 7: streaming and in-flight ----------------------------------------------------------------


def test_streaming_response_is_timed_to_the_last_chunk(cap: Capture, client: TestClient) -> None:
    """A streamed response (3 chunks, 0.05 s apart) is timed to its last chunk: >= 0.15 s."""
    response = client.get("/stream")
    assert "chunk 0\nchunk 1\nchunk 2\n" == response.text
    labels = {"method": "GET", "route": "/stream"}
    assert 1.0 == get_sample_value("http_request_duration_seconds_count", labels)
    assert get_sample_value("http_request_duration_seconds_sum", labels) >= 0.15
    span = the_server_span(cap)
    assert span.end_time_unix_nano - span.start_time_unix_nano >= 150_000_000
    assert 0.0 == get_sample_value("http_requests_in_flight", labels)


def test_in_flight_gauge_counts_the_running_request(client: TestClient) -> None:
    """The in-flight gauge is 1 while the request runs (seen by its handler) and 0 after."""
    assert {"in_flight": 1.0} == client.get("/slow").json()
    labels = {"method": "GET", "route": "/slow"}
    assert 0.0 == get_sample_value("http_requests_in_flight", labels)


async def test_in_flight_gauge_counts_concurrent_requests(app: FastAPI) -> None:
    """Two concurrent requests held in their handler are both in flight, then none is."""
    app.state.gate = asyncio.Event()
    labels = {"method": "GET", "route": "/gate"}
    transport = httpx.ASGITransport(app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
        requests = [asyncio.create_task(http.get("/gate")) for _ in range(2)]
        deadline = time.monotonic() + TIMEOUT
        while len(app.state.seen) < 2:
            assert time.monotonic() < deadline, "the requests did not reach the handler"
            await asyncio.sleep(0.001)
        assert 2.0 == get_sample_value("http_requests_in_flight", labels)
        app.state.gate.set()
        responses = await asyncio.gather(*requests)
    assert [200, 200] == [response.status_code for response in responses]
    assert 0.0 == get_sample_value("http_requests_in_flight", labels)


# --- 8: /metrics and excluded paths ------------------------------------------------------------


def test_metrics_endpoint_serves_prometheus_text(client: TestClient) -> None:
    """/metrics answers the Prometheus text format by default, with the RED series."""
    client.get("/items/1")
    response = client.get("/metrics")
    assert 200 == response.status_code
    assert response.headers["content-type"].startswith("text/plain")
    line = 'http_requests_total{method="GET",route="/items/{item_id}",status="200"} 1.0'
    assert line in response.text.splitlines()
    assert "# {" not in response.text  # exemplars only in OpenMetrics


def test_metrics_endpoint_serves_openmetrics_with_exemplars(
    cap: Capture, client: TestClient
) -> None:
    """Accept: OpenMetrics gives OpenMetrics, whose exemplar trace_id is the exported span's."""
    client.get("/items/1")
    accept = "application/openmetrics-text; version=1.0.0; charset=utf-8"
    response = client.get("/metrics", headers={"accept": accept})
    assert response.headers["content-type"].startswith("application/openmetrics-text")
    exemplars = [
        (sample.labels["route"], sample.exemplar.labels)
        for family in text_string_to_metric_families(response.text)
        if family.name == "http_request_duration_seconds"
        for sample in family.samples
        if sample.exemplar is not None
    ]
    span = the_server_span(cap)
    assert [(ITEM, {"trace_id": span.trace_id.hex()})] == exemplars


def test_metrics_and_health_are_not_counted_or_traced(cap: Capture, client: TestClient) -> None:
    """/metrics and /healthz give no span and no RED series; other requests still do."""
    assert 200 == client.get("/healthz").status_code
    assert 200 == client.get("/metrics").status_code
    assert 200 == client.get("/items/1").status_code
    assert 200 == client.get("/healthz").status_code
    assert {("GET", ITEM, "200"): 1.0} == requests_total()
    assert ["/items/1"] == [attributes(span)["url.path"] for span in cap.spans()]
    routes = {labels["route"] for labels, _ in samples("http_request_duration_seconds_count")}
    assert {ITEM} == routes


# --- 9: WebSocket and lifespan -----------------------------------------------------------------


def test_websocket_and_lifespan_pass_through(cap: Capture, app: FastAPI) -> None:
    """Lifespan handlers run, a WebSocket echoes; neither gives a span or an HTTP metric."""
    with TestClient(app) as client:
        assert ["startup"] == app.state.lifespan
        with client.websocket_connect("/ws") as websocket:
            websocket.send_text("hello")
            assert "echo: hello" == websocket.receive_text()
    assert ["startup", "shutdown"] == app.state.lifespan
    assert [] == cap.spans()
    assert [] == samples("http_requests_total")
    assert [] == [labels for labels, value in samples("http_requests_in_flight") if value]


# --- 10: context -------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/context", "/context-sync"])
def test_handler_runs_in_the_server_span(cap: Capture, client: TestClient, path: str) -> None:
    """Inside an async or a sync (threadpool) handler, the current span is the SERVER span."""
    seen = client.get(path).json()
    span = the_server_span(cap)
    assert (span.trace_id.hex(), span.span_id.hex()) == (seen["trace_id"], seen["span_id"])
    assert not trace.get_current_span().get_span_context().is_valid


async def test_context_does_not_leak_in_process(cap: Capture, app: FastAPI) -> None:
    """With the app in the caller's task (ASGITransport), its span is current only inside it."""
    transport = httpx.ASGITransport(app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
        seen = (await http.get("/context")).json()
        assert not trace.get_current_span().get_span_context().is_valid
    assert not trace.get_current_span().get_span_context().is_valid
    spans = cap.spans()
    (server,) = [span for span in spans if span.kind == SERVER]
    (client_span,) = [span for span in spans if span.kind == CLIENT]
    assert (server.trace_id.hex(), server.span_id.hex()) == (seen["trace_id"], seen["span_id"])
    assert (client_span.trace_id, client_span.span_id) == (server.trace_id, server.parent_span_id)


async def test_context_does_not_leak_after_an_exception(app: FastAPI) -> None:
    """After a request whose handler raised in the caller's task, no span stays current."""
    transport = httpx.ASGITransport(app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
        with pytest.raises(Boom):
            await http.get("/boom")
    assert not trace.get_current_span().get_span_context().is_valid
    assert {} == dict(baggage.get_all())
