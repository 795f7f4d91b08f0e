"""One application per framework with the same routes, and a client that drives each the same way.

The contract suite (test_contract.py) runs every test against a :class:`Web`: ``get()`` sends one
request through the framework's own test client and reads the whole body, as a real server
would, and the attributes hold what differs between frameworks as data (route templates, the
server and client addresses the test client reports, how a header value reaches the app).

The routes, in every framework (Django's are in tests/frameworks/django_app/urls.py)::

    /items/<int:item_id>        GET POST FOOBAR; JSON: id, trace_id, span_id, in_flight
    /async/items/<int:item_id>  an async view; JSON: id, trace_id, span_id
    /boom                       raises Boom("kaboom")
    /value-error                raises ValueError("kaboom")
    /unavailable                503 without an exception
    /files/<path:rest>          a catch-all route
    /stream                     three chunks, CHUNK_DELAY seconds apart
    /stream/ids                 two chunks, each the trace id current while it was produced
    /healthz, /private          plain text
"""

from __future__ import annotations

import asyncio
import json
import time
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.test import Client, override_settings
from fastapi import FastAPI
from fastapi.responses import PlainTextResponse, StreamingResponse
from fastapi.testclient import TestClient
from flask import Flask, Response, jsonify, stream_with_context
from opentelemetry import trace

from obskit.fastapi import instrument
from obskit.flask import Obskit
from obskit.testing import get_sample_value

CHUNK_DELAY = 0.05

#: Every exception a view raised, in order: the tests check the caller gets the same object.
RAISED: list[BaseException] = []


class Boom(Exception):
    """The exception the failing views raise."""


def fail(error: BaseException) -> Any:
    """Record ``error`` in RAISED and raise it."""
    RAISED.append(error)
    raise error


def current_ids() -> dict[str, str]:
    """The trace and span id current inside a view."""
    span_context = trace.get_current_span().get_span_context()
    return {
        "trace_id": format(span_context.trace_id, "032x"),
        "span_id": format(span_context.span_id, "016x"),
    }


def in_flight(route: str) -> float | None:
    """``http_requests_in_flight`` of ``GET route`` as a view sees it."""
    return get_sample_value("http_requests_in_flight", {"method": "GET", "route": route})


@dataclass(frozen=True)
class Routes:
    """The route templates a framework's adapter reports for the routes above."""

    item: str
    async_item: str
    files: str


@dataclass(frozen=True)
class Reply:
    """A response as the client saw it, body read to the end."""

    status: int
    headers: Mapping[str, str]  # lower-case names
    text: str

    def json(self) -> Any:
        return json.loads(self.text)


class Web(ABC):
    """One framework's instrumented application behind its test client."""

    #: ``flask``, ``django`` or ``fastapi``.
    name: str
    routes: Routes
    #: ``server.address`` and ``client.address`` as the framework's test client makes them.
    server_address: str
    client_address: str

    @staticmethod
    @abstractmethod
    def wire(value: str) -> str | bytes:
        """A header value (text as sent) as the test client must be given it to reach the app."""

    def get(
        self,
        path: str,
        headers: Mapping[str, str] | None = None,
        method: str = "GET",
        propagate: bool = False,
    ) -> Reply:
        """Send one request and read its whole body.

        ``propagate``: an exception the view raises reaches the caller (instead of a 500).
        """
        wired = {name.lower(): self.wire(value) for name, value in (headers or {}).items()}
        return self._send(method, path, wired, propagate)

    @abstractmethod
    def _send(self, method: str, path: str, headers: dict[str, Any], propagate: bool) -> Reply: ...

    @classmethod
    @abstractmethod
    def serving(cls, **options: Any) -> AbstractContextManager[Web]:
        """The application instrumented with these obskit options, for a ``with`` block."""


def _latin1(value: str) -> str:
    """WSGI: the header's UTF-8 bytes decoded as latin-1, as a WSGI server puts them in environ.

    Werkzeug's and Django's test clients pass header text into environ unchanged.
    """
    return value.encode().decode("latin-1")


# -- Flask ---------------------------------------------------------------------------------------


def build_flask_app() -> Flask:
    """The Flask application, without obskit."""
    app = Flask(__name__)
    item_route = FlaskWeb.routes.item

    @app.route(item_route, methods=["GET", "POST", "FOOBAR"])
    def item(item_id: int) -> Any:
        return jsonify(id=item_id, in_flight=in_flight(item_route), **current_ids())

    @app.get(FlaskWeb.routes.async_item)
    async def async_item(item_id: int) -> Any:
        await asyncio.sleep(0)
        return jsonify(id=item_id, **current_ids())

    @app.get("/boom")
    def boom() -> Any:
        return fail(Boom("kaboom"))

    @app.get("/value-error")
    def value_error() -> Any:
        return fail(ValueError("kaboom"))

    @app.get("/unavailable")
    def unavailable() -> Any:
        return "try later", 503

    @app.get(FlaskWeb.routes.files)
    def files(rest: str) -> Any:
        return rest

    @app.get("/stream")
    def stream() -> Response:
        def chunks() -> Iterator[bytes]:
            for index in range(3):
                time.sleep(CHUNK_DELAY)
                yield b"chunk %d\n" % index

        return Response(stream_with_context(chunks()))

    @app.get("/stream/ids")
    def stream_ids() -> Response:
        def chunks() -> Iterator[str]:  # a plain generator: no Flask context of its own
            for _ in range(2):
                yield current_ids()["trace_id"] + "\n"

        return Response(chunks())

    @app.get("/healthz")
    def healthz() -> Any:
        return "ok"

    @app.get("/private")
    def private() -> Any:
        return "private"

    return app


class FlaskWeb(Web):
    """``Obskit(app)`` and Flask's test client."""

    name = "flask"
    routes = Routes("/items/<int:item_id>", "/async/items/<int:item_id>", "/files/<path:rest>")
    server_address = "localhost"
    client_address = "127.0.0.1"
    wire = staticmethod(_latin1)

    def __init__(self, app: Flask) -> None:
        self.app = app
        self.client = app.test_client()

    def _send(self, method: str, path: str, headers: dict[str, Any], propagate: bool) -> Reply:
        self.app.config["PROPAGATE_EXCEPTIONS"] = propagate
        response = self.client.open(path, method=method, headers=headers)
        try:
            text = response.get_data(as_text=True)
        finally:
            response.close()
        received = {name.lower(): value for name, value in response.headers.items()}
        return Reply(response.status_code, received, text)

    @classmethod
    @contextmanager
    def serving(cls, **options: Any) -> Iterator[Web]:
        app = build_flask_app()
        Obskit(app, **options)
        yield cls(app)


# -- Django --------------------------------------------------------------------------------------


class DjangoWeb(Web):
    """tests/frameworks/django_app (settings.OBSKIT) and Django's sync test client."""

    name = "django"
    routes = Routes("/items/<int:item_id>", "/async/items/<int:item_id>", "/files/<path:rest>")
    server_address = "testserver"
    client_address = "127.0.0.1"
    wire = staticmethod(_latin1)

    def __init__(self) -> None:
        # Fresh clients: their handlers build the middleware against this test's obskit.
        self.clients = {flag: Client(raise_request_exception=flag) for flag in (False, True)}

    def _send(self, method: str, path: str, headers: dict[str, Any], propagate: bool) -> Reply:
        response = self.clients[propagate].generic(method, path, headers=headers)
        try:
            body = b"".join(response.streaming_content) if response.streaming else response.content
        finally:
            response.close()
        received = {name.lower(): value for name, value in response.headers.items()}
        return Reply(response.status_code, received, body.decode())

    @classmethod
    @contextmanager
    def serving(cls, **options: Any) -> Iterator[Web]:
        with override_settings(OBSKIT={**settings.OBSKIT, **options}):
            yield cls()


# -- FastAPI -------------------------------------------------------------------------------------


def build_fastapi_app() -> FastAPI:
    """The FastAPI application, without obskit; /items is a sync (threadpool) handler."""
    app = FastAPI()
    item_route = FastAPIWeb.routes.item

    @app.api_route(item_route, methods=["GET", "POST", "FOOBAR"])
    def item(item_id: int) -> dict[str, Any]:
        return {"id": item_id, "in_flight": in_flight(item_route), **current_ids()}

    @app.get(FastAPIWeb.routes.async_item)
    async def async_item(item_id: int) -> dict[str, Any]:
        await asyncio.sleep(0)
        return {"id": item_id, **current_ids()}

    @app.get("/boom")
    async def boom() -> None:
        fail(Boom("kaboom"))

    @app.get("/value-error")
    async def value_error() -> None:
        fail(ValueError("kaboom"))

    @app.get("/unavailable")
    async def unavailable() -> PlainTextResponse:
        return PlainTextResponse("try later", status_code=503)

    @app.get("/files/{rest:path}")  # reported as /files/{rest} (Starlette's path_format)
    async def files(rest: str) -> PlainTextResponse:
        return PlainTextResponse(rest)

    @app.get("/stream")
    async def stream() -> StreamingResponse:
        async def chunks() -> AsyncIterator[bytes]:
            for index in range(3):
                await asyncio.sleep(CHUNK_DELAY)
                yield b"chunk %d\n" % index

        return StreamingResponse(chunks(), media_type="text/plain")

    @app.get("/stream/ids")
    async def stream_ids() -> StreamingResponse:
        async def chunks() -> AsyncIterator[bytes]:
            for _ in range(2):
                await asyncio.sleep(0)
                yield (current_ids()["trace_id"] + "\n").encode()

        return StreamingResponse(chunks(), media_type="text/plain")

    @app.get("/healthz")
    async def healthz() -> PlainTextResponse:
        return PlainTextResponse("ok")

    @app.get("/private")
    async def private() -> PlainTextResponse:
        return PlainTextResponse("private")

    return app


class FastAPIWeb(Web):
    """``obskit.fastapi.instrument(app)`` and FastAPI's TestClient (not traced by obskit)."""

    name = "fastapi"
    routes = Routes("/items/{item_id}", "/async/items/{item_id}", "/files/{rest}")
    server_address = "testserver"
    client_address = "testclient"

    @staticmethod
    def wire(value: str) -> bytes:
        """ASGI: the header's UTF-8 bytes, as a client sends them."""
        return value.encode()

    def __init__(self, clients: dict[bool, TestClient]) -> None:
        self.clients = clients

    def _send(self, method: str, path: str, headers: dict[str, Any], propagate: bool) -> Reply:
        response = self.clients[propagate].request(method, path, headers=headers)
        received = {name.lower(): value for name, value in response.headers.items()}
        return Reply(response.status_code, received, response.text)

    @classmethod
    @contextmanager
    def serving(cls, **options: Any) -> Iterator[Web]:
        app = instrument(build_fastapi_app(), **options)
        clients = {flag: TestClient(app, raise_server_exceptions=flag) for flag in (False, True)}
        with clients[False], clients[True]:
            yield cls(clients)


#: The frameworks by name.
WEBS: dict[str, type[Web]] = {web.name: web for web in (FlaskWeb, DjangoWeb, FastAPIWeb)}
