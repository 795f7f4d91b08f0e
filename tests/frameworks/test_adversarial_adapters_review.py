"""Findings of a read-through review of the adapters (2026-11-25), each pinned by a test.

Requests are in-process: ASGI apps are called with a scope as a server builds it (or through
Starlette's TestClient), WSGI apps through Flask's test client or a PEP 3333 environ. What a
test reads "while" something happens, it reads from inside the app or the server's ``send``:
nothing here depends on timing.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi import APIRouter, FastAPI
from fastapi.testclient import TestClient
from flask import Flask
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.requests import Request as StarletteRequest
from starlette.responses import FileResponse, JSONResponse, PlainTextResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from obskit.asgi import ObskitMiddleware
from obskit.fastapi import instrument
from obskit.flask import Obskit
from obskit.logging import current_request
from obskit.testing import Capture, capture, samples
from obskit.wsgi import ObskitMiddleware as WsgiMiddleware
from tests.otlp_receiver import attributes
from tests.wsgi_environ import environ

SERVER = 2
ERROR = 2


@pytest.fixture
def cap() -> Iterator[Capture]:
    with capture(service_name="adapters-review") as captured:
        yield captured


# --- helpers -----------------------------------------------------------------------------------


def counted() -> dict[tuple[str, str, str], float]:
    return {
        (labels["method"], labels["route"], labels["status"]): value
        for labels, value in samples("http_requests_total")
    }


def in_flight() -> dict[tuple[str, str], float]:
    """The in-flight series that are not zero."""
    return {
        (labels["method"], labels["route"]): value
        for labels, value in samples("http_requests_in_flight")
        if value
    }


def server_spans(cap: Capture) -> list[Any]:
    return [span for span in cap.spans() if span.kind == SERVER]


def http_scope(path: str, root_path: str = "", **extra: Any) -> dict[str, Any]:
    """An HTTP scope as uvicorn builds it (``path`` carries ``root_path``)."""
    scope: dict[str, Any] = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.4"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": root_path,
        "headers": [(b"host", b"testserver")],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8000),
    }
    scope.update(extra)
    return scope


async def call(app: Any, scope: dict[str, Any], seen: list[Any] | None = None) -> list[str]:
    """Call ``app`` as a server does; the types of the messages it sent. Each message's type,
    with whether an obskit request was current as the server got it, goes to ``seen``."""
    types: list[str] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        types.append(message["type"])
        if seen is not None:
            seen.append((message["type"], current_request() is not None))

    await app(scope, receive, send)
    return types


class Boom(Exception):
    """The app's own exception."""


# --- 3: the _RouteScope path (Starlette, FastAPI with a non-FastAPI mount) ---------------------


async def _fails(request: StarletteRequest) -> PlainTextResponse:
    raise Boom("fails")


def _legacy() -> Starlette:
    """A Starlette app (with its own ServerErrorMiddleware), mounted at /legacy."""
    return Starlette(routes=[Route("/fails", _fails)])


def _starlette_app(after: Any) -> Starlette:
    async def item(request: StarletteRequest) -> PlainTextResponse:
        return PlainTextResponse(request.path_params["item_id"])

    async def unavailable(request: StarletteRequest) -> JSONResponse:
        return JSONResponse({"retry": True}, status_code=503, background=BackgroundTask(after))

    return Starlette(
        routes=[
            Route("/items/{item_id}", item),
            Route("/unavailable", unavailable),
            Route("/fails", _fails),
            Mount("/legacy", _legacy()),
        ]
    )


def _fastapi_app_with_static(after: Any, directory: Path) -> FastAPI:
    app = FastAPI()
    router = APIRouter(prefix="/v1")

    @router.get("/items/{item_id}")
    async def item(item_id: int) -> int:
        return item_id

    @router.get("/unavailable")
    async def unavailable() -> JSONResponse:
        return JSONResponse({"retry": True}, status_code=503, background=BackgroundTask(after))

    @router.get("/fails")
    async def fails() -> None:
        raise Boom("fails")

    app.include_router(router, prefix="/tenants/{tenant}")
    # The common StaticFiles mount: a non-FastAPI app, so the scope is watched.
    app.mount("/static", StaticFiles(directory=directory))
    app.mount("/legacy", _legacy())
    return app


@pytest.fixture(params=["starlette", "fastapi+StaticFiles"])
def route_scope_app(
    request: pytest.FixtureRequest, tmp_path: Path
) -> tuple[Any, str, str, list[Any]]:
    """Each kind of app on the _RouteScope path: (app, path prefix of its routes, template
    prefix of its routes, what its 503's background task saw)."""
    seen: list[Any] = []

    def after() -> None:
        seen.append((dict(counted()), dict(in_flight())))

    if request.param == "starlette":
        return instrument(_starlette_app(after)), "", "", seen
    app = instrument(_fastapi_app_with_static(after, tmp_path))
    return app, "/tenants/acme/v1", "/tenants/{tenant}/v1", seen


def _watches_the_scope(app: Any) -> bool:
    level = app.middleware_stack
    assert isinstance(level, ObskitMiddleware)
    return level._fastapi_record is None


# A bug this test found, since fixed: on the _RouteScope path (any Starlette app; a FastAPI app
# with a non-FastAPI mount, StaticFiles) a trailing-slash redirect was counted as __unmatched__,
# not under the route it redirects to as on FastAPI's hook path.
def test_slash_redirect_is_labelled_with_its_target_on_the_scope_path(
    cap: Capture, route_scope_app: tuple[Any, str, str, list[Any]]
) -> None:
    app, path_prefix, prefix, _ = route_scope_app
    with TestClient(app, follow_redirects=False) as client:
        response = client.get(f"{path_prefix}/items/7/")
        assert 307 == response.status_code
        assert 200 == client.get(f"{path_prefix}/items/7").status_code
        assert 404 == client.get(f"{path_prefix}/nowhere/").status_code
        assert _watches_the_scope(app)
    route = f"{prefix}/items/{{item_id}}"
    assert {
        ("GET", route, "307"): 1.0,
        ("GET", route, "200"): 1.0,
        ("GET", "__unmatched__", "404"): 1.0,
    } == counted()
    assert {} == in_flight()
    assert sorted([f"GET {route}", f"GET {route}", "GET"]) == sorted(
        span.name for span in server_spans(cap)
    )


# A bug this test found, since fixed: on the _RouteScope path a 5xx response stayed in flight
# until its background tasks had run (their time in its duration and span): it ended at the
# last byte only where FastAPI's record listed the exceptions answered. (Ending it there must
# keep the exception a 500 answers -- Starlette's ServerErrorMiddleware re-raises it after the
# response, a mounted Starlette app's answers it before FastAPI's record lists it -- on the span.)
def test_5xx_ends_at_its_last_byte_on_the_scope_path(
    cap: Capture, route_scope_app: tuple[Any, str, str, list[Any]]
) -> None:
    app, path_prefix, prefix, seen = route_scope_app
    with TestClient(app, raise_server_exceptions=False) as client:
        assert 503 == client.get(f"{path_prefix}/unavailable").status_code
        assert 500 == client.get(f"{path_prefix}/fails").status_code
        assert 500 == client.get("/legacy/fails").status_code
        assert _watches_the_scope(app)
    route = f"{prefix}/unavailable"
    # What the background task saw: the request counted already, nothing in flight.
    assert [({("GET", route, "503"): 1.0}, {})] == seen
    assert {
        ("GET", route, "503"): 1.0,
        ("GET", f"{prefix}/fails", "500"): 1.0,
        ("GET", "/legacy/fails", "500"): 1.0,
    } == counted()
    assert {} == in_flight()
    boom = f"{Boom.__module__}.{Boom.__qualname__}"
    spans = server_spans(cap)
    assert ["503", boom, boom] == [attributes(span)["error.type"] for span in spans]
    assert [ERROR] * 3 == [span.status.code for span in spans]
    assert [[], ["exception"], ["exception"]] == [[e.name for e in span.events] for span in spans]


# --- 5: uvicorn --root-path ----------------------------------------------------------------------


def _rooted_app() -> FastAPI:
    app = FastAPI()

    @app.get("/healthz")
    async def health() -> str:
        return "ok"

    @app.get("/internal/ping")
    async def ping() -> str:
        return "pong"

    @app.get("/items/{item_id}")
    async def item(item_id: int) -> int:
        return item_id

    return app


# A bug this test found, since fixed: behind `uvicorn --root-path /api` (scope["path"] carries
# the root path) the excluded paths -- the health endpoints -- were traced and counted, as they
# were matched against the path with the root path; /metrics was already matched without it.
def test_excluded_paths_hold_behind_a_root_path() -> None:
    with capture(
        service_name="adapters-review",
        excluded_paths=["/metrics", "/healthz", "/internal/ping"],
    ) as cap:
        app = instrument(_rooted_app())

        async def main() -> None:
            for path in ("/api/healthz", "/api/internal/ping", "/api/items/7"):
                assert "http.response.start" == (await call(app, http_scope(path, "/api")))[0]
            # The root path once more, as a route of the app: not the health endpoint.
            await call(app, http_scope("/api/api/healthz", "/api"))
            # Without a root path, as before.
            await call(app, http_scope("/healthz"))

        asyncio.run(main())
        assert {
            ("GET", "/items/{item_id}", "200"): 1.0,
            ("GET", "__unmatched__", "404"): 1.0,
        } == counted()
        spans = server_spans(cap)
        assert ["GET /items/{item_id}", "GET"] == [span.name for span in spans]
        assert "/api/items/7" == attributes(spans[0])["url.path"]  # url.path: the full path


# --- 9: WSGI paths are UTF-8 ---------------------------------------------------------------------


def _wire(text: str) -> str:
    """``text`` as a PEP 3333 server puts it in the environ: its UTF-8 bytes decoded as latin-1."""
    return text.encode("utf-8").decode("latin-1")


def _wsgi_app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"ok"]


# A bug this test found, since fixed: the WSGI adapter (Flask too) exported PATH_INFO and
# SCRIPT_NAME as PEP 3333 hands them over -- bytes decoded as latin-1 -- so url.path was
# mojibake ('/cafÃ©' for /caf%C3%A9) where Django and the ASGI adapter give '/café'.
def test_wsgi_url_path_is_decoded_as_utf8(cap: Capture) -> None:
    flask_app = Flask("review")
    Obskit(flask_app)

    @flask_app.get("/<word>")
    def word(word: str) -> str:
        return word

    response = flask_app.test_client().get("/caf%C3%A9")
    assert "café" == response.get_data(as_text=True)
    middleware = WsgiMiddleware(_wsgi_app)
    started: list[Any] = []
    for env in (
        environ(_wire("/café"), SCRIPT_NAME=_wire("/münchen")),
        environ("/caf\xe9"),  # not UTF-8 (a latin-1 byte): U+FFFD, as Django decodes it
        environ("/\u20ac"),  # a server that decoded the path itself: kept as it is
        environ("/plain", SCRIPT_NAME="/mount"),
    ):
        middleware(env, lambda *args: started.append(args))
    paths = [attributes(span)["url.path"] for span in server_spans(cap)]
    assert ["/café", "/münchen/café", "/caf\ufffd", "/\u20ac", "/mount/plain"] == paths
    assert ("GET", "/<word>", "200") in counted()


# --- 10: http.response.pathsend, http.response.trailers -------------------------------------------


def _file_app(seen: list[Any]) -> FastAPI:
    app = FastAPI()

    @app.get("/file")
    async def file() -> FileResponse:
        def after() -> None:
            seen.append(("background", dict(counted()), dict(in_flight())))

        return FileResponse(__file__, background=BackgroundTask(after))

    return instrument(app)


# A bug this test found, since fixed: a response ended by `http.response.pathsend` (Starlette's
# FileResponse on Hypercorn or Granian) was not seen as complete: the request stayed in flight
# through its background tasks, was timed to their end, and the pathsend message went to the
# server with the request's context current.
def test_pathsend_is_the_last_byte(cap: Capture) -> None:
    seen: list[Any] = []
    scope = http_scope("/file", extensions={"http.response.pathsend": {}})
    types = asyncio.run(call(_file_app(seen), scope, seen))
    assert ["http.response.start", "http.response.pathsend"] == types
    assert [
        ("http.response.start", True),
        ("http.response.pathsend", False),  # handed over outside the request's context
        ("background", {("GET", "/file", "200"): 1.0}, {}),
    ] == seen
    (span,) = server_spans(cap)
    assert "GET /file" == span.name


# A bug this test found, since fixed: a response that announced trailers ended at its last body
# chunk, before its trailers were sent (counted while still being answered), and its trailers
# went to the server with the request's context current.
def test_trailers_announced_end_the_response(cap: Capture) -> None:
    notes: list[Any] = []

    async def trailers_app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": [], "trailers": True})
        await send({"type": "http.response.body", "body": b"body"})
        notes.append(("between", dict(counted())))
        await send({"type": "http.response.trailers", "headers": [(b"x-t", b"1")]})
        notes.append(("after", dict(counted())))

    seen: list[Any] = []
    asyncio.run(call(ObskitMiddleware(trailers_app), http_scope("/t"), seen))
    assert [
        ("http.response.start", True),
        ("http.response.body", True),
        ("http.response.trailers", False),
    ] == seen
    assert [
        ("between", {}),  # not counted yet: still being answered
        ("after", {("GET", "__unmatched__", "200"): 1.0}),
    ] == notes
    assert 1 == len(server_spans(cap))


# A bug a review found, since fixed: with OpenTelemetry's Django instrumentation (it puts its
# middleware first in MIDDLEWARE) or a contrib WSGI/ASGI middleware outside obskit's, every
# request had two SERVER spans -- siblings when a traceparent came in (obskit/http/_pipeline.py,
# HttpTelemetry.begin extracted the parent from the headers past the open SERVER span). Another
# instrumentation's open SERVER span is now the request's, as FastAPI's own is.
def test_another_instrumentations_server_span_around_the_request_is_the_requests(
    cap: Capture,
) -> None:
    from opentelemetry.trace import SpanKind

    import obskit

    def app(env: dict[str, Any], start_response: Any) -> list[bytes]:
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"ok"]

    wrapped = WsgiMiddleware(app, route_resolver=lambda env: "/items/{id}")
    other = obskit.tracer_provider().get_tracer("opentelemetry.instrumentation.wsgi")
    traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    with other.start_as_current_span("GET /items/{id}", kind=SpanKind.SERVER) as outer:
        body = wrapped(environ("/items/1", HTTP_TRACEPARENT=traceparent), lambda *a: None)
        assert [b"ok"] == list(body)
        assert outer.is_recording()  # obskit did not end it: its owner does
    (span,) = server_spans(cap)
    assert outer.get_span_context().span_id == int.from_bytes(span.span_id, "big")
    assert {("GET", "/items/{id}", "200"): 1.0} == counted()
    # Around an INTERNAL span (the application's own), obskit's SERVER span is made as ever.
    cap.clear()
    with other.start_as_current_span("job"):
        list(wrapped(environ("/items/2"), lambda *a: None))
    assert ["GET /items/{id}"] == [span.name for span in server_spans(cap)]
    assert 2 == len(cap.spans())  # and the job's own


# Bugs a review of the change above found, since fixed: with OTLP metrics on, a failing request
# under an adopted span had its SERVER span rebuilt and exported again by the keep-errors policy
# (same trace and span id: two spans), and an adopted sampled span gave no exemplar
# (obskit/http/_pipeline.py, Request._keep and finish).
def test_an_adopted_span_is_never_exported_twice_and_gives_the_exemplar() -> None:
    from opentelemetry.trace import SpanKind

    import obskit

    def app(env: dict[str, Any], start_response: Any) -> list[bytes]:
        start_response("500 Internal Server Error", [("Content-Type", "text/plain")])
        return [b"no"]

    with capture(
        service_name="adapters-review",
        metrics_exporter="prometheus+otlp",
        metric_export_interval=3600.0,
        otlp_endpoint="http://127.0.0.1:9",  # nothing listens: the exit push fails at once
        otlp_timeout=0.5,
        traces_exporter="otlp",
    ) as cap:
        wrapped = WsgiMiddleware(app, route_resolver=lambda env: "/items/{id}")
        other = obskit.tracer_provider().get_tracer("opentelemetry.instrumentation.wsgi")
        with other.start_as_current_span("GET /items/{id}", kind=SpanKind.SERVER) as outer:
            assert [b"no"] == list(wrapped(environ("/items/1"), lambda *a: None))
        (span,) = server_spans(cap)
        assert outer.get_span_context().span_id == int.from_bytes(span.span_id, "big")
        from obskit.metrics.exposition import render

        text = render("application/openmetrics-text")[0].decode()
    trace_id = format(outer.get_span_context().trace_id, "032x")
    assert f'route="/items/{{id}}"}} 1.0 # {{trace_id="{trace_id}"}}' in text, text[:2000]
