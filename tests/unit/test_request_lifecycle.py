"""What a finished request leaves behind: nothing for the garbage collector, nothing in a context
the server captures after the last byte (issue #11: no long-lived or cyclic objects per request)."""

from __future__ import annotations

import asyncio
import contextvars
import gc
import io
from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry import trace

import obskit
from obskit.asgi import ObskitMiddleware as AsgiMiddleware
from obskit.logging import current_request
from obskit.testing import capture
from obskit.wsgi import ObskitMiddleware as WsgiMiddleware


@pytest.fixture
def gc_off() -> Iterator[None]:
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def _wsgi_app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"ok"]


def _environ(path: str = "/items/7") -> dict[str, Any]:
    return {
        "REQUEST_METHOD": "GET",
        "PATH_INFO": path,
        "SERVER_NAME": "127.0.0.1",
        "SERVER_PORT": "8000",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "HTTP_X_REQUEST_ID": "req-1",
        "wsgi.url_scheme": "http",
        "wsgi.input": io.BytesIO(),
    }


def _no_cyclic_garbage_from_wsgi_requests() -> None:
    app = WsgiMiddleware(_wsgi_app)
    for _ in range(3):  # warm caches (route series, encoders)
        b"".join(app(_environ(), lambda *a: None))
    gc.collect()
    for _ in range(50):
        b"".join(app(_environ(), lambda *a: None))
    assert gc.collect() == 0


@pytest.mark.parametrize("sampler", ["always_on", "always_off"])
def test_wsgi_requests_leave_no_cyclic_garbage(gc_off: None, sampler: str) -> None:
    """The request, its span and the server's environ are freed by reference counting alone."""
    obskit.configure(service_name="svc", sampler=sampler, traces_exporter="none")
    _no_cyclic_garbage_from_wsgi_requests()


def test_unsampled_keepable_wsgi_requests_leave_no_cyclic_garbage(gc_off: None) -> None:
    """Head-dropped requests that keep-errors may still export hold what their span would be
    rebuilt from (the environ among it) until they end: that is released too."""
    with capture(service_name="svc", sampler="always_off", keep_errors=True):
        _no_cyclic_garbage_from_wsgi_requests()


def test_request_id_survives_the_release_of_headers() -> None:
    obskit.configure(service_name="svc", traces_exporter="none")
    app = WsgiMiddleware(_wsgi_app)
    environ = _environ()
    b"".join(app(environ, lambda *a: None))
    assert environ["obskit.request"].request_id == "req-1"


def test_asgi_last_chunk_is_sent_outside_the_request_context() -> None:
    """uvicorn schedules its keep-alive timer while sending the last chunk; the context that
    timer copies must not hold the request or its span."""

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"a", "more_body": True})
        await send({"type": "http.response.body", "body": b"b"})

    seen: list[tuple[Any, Any]] = []

    async def send(message: Any) -> None:
        captured = contextvars.copy_context()
        seen.append(captured.run(lambda: (current_request(), trace.get_current_span())))

    async def receive() -> Any:
        return {"type": "http.request", "body": b"", "more_body": False}

    with capture(service_name="svc") as captured:
        middleware = AsgiMiddleware(app)
        scope = {"type": "http", "method": "GET", "path": "/x", "headers": []}
        asyncio.run(middleware(scope, receive, send))
        (span,) = captured.spans()
    # The first two sends run inside the request; the last one outside it.
    assert seen[0][0] is not None
    assert seen[0][1].get_span_context().span_id == int.from_bytes(span.span_id, "big")
    assert seen[2][0] is None
    assert not seen[2][1].get_span_context().is_valid
    # The request was finished after the last chunk, with its outcome.
    attributes = {kv.key: kv.value for kv in span.attributes}
    assert attributes["http.response.status_code"].int_value == 200


def test_uvicorn_keep_alive_does_not_hold_finished_requests() -> None:
    """A real uvicorn on loopback, one keep-alive connection: after the responses, no request
    object stays reachable (before the fix the keep-alive timers held each one for 30 s)."""
    import http.client
    import socket
    import threading
    import time

    import uvicorn

    from obskit.http._pipeline import Request

    obskit.configure(service_name="svc", traces_exporter="none")

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    middleware = AsgiMiddleware(app)
    server = uvicorn.Server(
        uvicorn.Config(
            middleware,
            host="127.0.0.1",
            port=port,
            lifespan="off",
            log_level="warning",
            timeout_keep_alive=30,
        )
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    closing: list[http.client.HTTPConnection] = []
    try:
        deadline = time.monotonic() + 10
        while not server.started:
            assert time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.02)
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        closing.append(connection)
        for _ in range(20):
            connection.request("GET", "/items/7")
            response = connection.getresponse()
            assert response.read() == b"ok"
        # The server thread may still be finishing the last request.
        deadline = time.monotonic() + 3
        while True:
            # Collected garbage aside, what the server still holds of this app's requests.
            gc.collect()
            alive = [
                o
                for o in gc.get_objects()
                if type(o) is Request and o.telemetry is middleware.telemetry
            ]
            if not alive or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert alive == []
    finally:
        for connection in closing:
            connection.close()
        server.should_exit = True
        thread.join(10)
