"""What only the FastAPI adapter does, through ``obskit.fastapi.instrument``: FastAPI's native
telemetry switched off, uvicorn, routers and mounts, HTTPException, baggage, concurrent requests,
context in the caller's task, and WebSocket/lifespan passing through.

The contract every adapter keeps (spans, propagation, RED metrics, /metrics, streaming,
context) is in test_contract.py, run for FastAPI too; its app is contract_apps.build_fastapi_app.

Requests go through the real application object: ``fastapi.testclient.TestClient`` (which runs on
``httpx2`` and is not traced by obskit's outbound hooks, so the headers a test sends arrive
unchanged), ``httpx.AsyncClient`` over ``httpx.ASGITransport`` (traced: a CLIENT span is the
parent), and a real uvicorn server on loopback.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi import APIRouter, FastAPI, HTTPException, WebSocket
from fastapi.testclient import TestClient
from opentelemetry import baggage, trace

from obskit import _state
from obskit.fastapi import instrument
from obskit.testing import Capture, capture, get_sample_value, samples
from tests.frameworks.helpers import needs_fastapi_telemetry
from tests.otlp_receiver import attributes

INTERNAL = 1
SERVER = 2
CLIENT = 3
ERROR = 2
TIMEOUT = 10.0
ITEM = "/items/{item_id}"


class Boom(Exception):
    """The handler's own exception."""


@pytest.fixture
def cap() -> Iterator[Capture]:
    """obskit configured with an in-memory OTLP sink (a global TracerProvider exists)."""
    with capture(service_name="fastapi-test") as captured:
        yield captured


def build_app() -> FastAPI:
    """The application under test, not instrumented yet.

    ``app.state.lifespan`` collects the lifespan events, ``app.state.seen`` what handlers
    observed from inside.
    """

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.lifespan.append("startup")
        yield
        app.state.lifespan.append("shutdown")

    app = FastAPI(lifespan=lifespan)
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
        raise Boom("kaboom")

    @app.get("/missing/{item_id}")
    async def missing(item_id: int) -> None:
        raise HTTPException(status_code=404, detail=f"no item {item_id}")

    @app.get("/gate")
    async def gate() -> dict[str, bool]:
        app.state.seen.append("/gate")
        await app.state.gate.wait()
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


# --- FastAPI's own telemetry and uvicorn -------------------------------------------------------


@needs_fastapi_telemetry
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


@needs_fastapi_telemetry
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


# --- baggage -----------------------------------------------------------------------------------


def test_baggage_is_visible_in_the_handler(client: TestClient) -> None:
    """The baggage header's entries are in the handler's context (percent-decoded)."""
    headers = {"baggage": "user.id=42, tenant=acme%20corp"}
    seen = client.get("/context", headers=headers).json()
    assert {"user.id": "42", "tenant": "acme corp"} == seen["baggage"]


def test_no_baggage_leaks_into_the_next_request(client: TestClient) -> None:
    """A request without baggage sees none, even right after one that carried some."""
    client.get("/context", headers={"baggage": "user.id=42"})
    assert {} == client.get("/context").json()["baggage"]


# --- HTTPException -----------------------------------------------------------------------------


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


# --- routers, mounts and cardinality -----------------------------------------------------------


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


# --- concurrent requests in flight -------------------------------------------------------------


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


# --- WebSocket and lifespan --------------------------------------------------------------------


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


# --- context in the caller's task --------------------------------------------------------------


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
