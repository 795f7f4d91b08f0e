"""Adversarial review of the WSGI path, the Flask extension and the Django middleware.

Each test drives a real app (Flask, Django's WSGI handler and its sync and async test clients,
or a real gunicorn on loopback) the way a server or another middleware might, and checks what
the ground rule promises: the response the bare app gives, one ``http_requests_total``
increment with the right status and route template, ``http_requests_in_flight`` back to 0, no
span left current, nothing left for the garbage collector. A comment above a test names the
obskit bug it found (each since fixed).
"""

from __future__ import annotations

import gc
import http.client
import io
import logging
import os
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest
from django.conf import settings
from django.core.exceptions import PermissionDenied
from django.core.handlers.wsgi import WSGIHandler
from django.http import (
    FileResponse,
    Http404,
    HttpRequest,
    HttpResponse,
    StreamingHttpResponse,
)
from django.test import AsyncClient, Client, override_settings
from django.urls import path
from flask import Blueprint, Flask, Response, send_file
from opentelemetry import trace
from prometheus_client.parser import text_string_to_metric_families
from werkzeug.middleware.dispatcher import DispatcherMiddleware
from werkzeug.middleware.proxy_fix import ProxyFix

from obskit import _state
from obskit.flask import Obskit
from obskit.testing import Capture, capture, get_sample_value
from tests.loopback import free_port
from tests.otlp_receiver import attributes as attrs
from tests.wsgi_environ import environ

TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
PARENT_ID = "b7ad6b7169203331"
UNSAMPLED_TRACEPARENT = f"00-{TRACE_ID}-{PARENT_ID}-00"
ITEM_ROUTE = "/items/<int:item_id>"
ERROR = 2  # Status.StatusCode.STATUS_CODE_ERROR
UNSET = 0  # Status.StatusCode.STATUS_CODE_UNSET
OBSKIT_FIRST = ["obskit.django.ObskitMiddleware"]


class HookError(Exception):
    """What the failing hooks and views of these tests raise."""


# -- helpers ------------------------------------------------------------------------------------


class Started:
    """A server's ``start_response``: remembers the status and headers."""

    def __init__(self) -> None:
        self.status = ""
        self.headers: list[tuple[str, str]] = []

    def __call__(self, status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
        self.status, self.headers = status, list(headers)
        return lambda data: None


def serve(app: Callable[..., Any], env: dict[str, Any]) -> tuple[str, list[tuple[str, str]], bytes]:
    """What a PEP 3333 server does with one request: call, iterate to the end, close."""
    started = Started()
    result = app(env, started)
    try:
        body = b"".join(result)
    finally:
        close = getattr(result, "close", None)
        if close is not None:
            close()
    return started.status, started.headers, body


class FileWrapper:
    """A server's ``wsgi.file_wrapper``: gunicorn serves an instance of its own by sendfile."""

    def __init__(self, filelike: Any, block_size: int = 8192) -> None:
        self.filelike = filelike
        self.block_size = block_size

    def __iter__(self) -> Iterator[bytes]:
        return iter(lambda: self.filelike.read(self.block_size), b"")

    def close(self) -> None:
        self.filelike.close()


def counted(route: str) -> dict[tuple[str, str], float]:
    """Every non-zero ``http_requests_total`` sample of ``route``: {(method, status): value}."""
    found: dict[tuple[str, str], float] = {}
    for family in _state.registry.collect():
        for sample in family.samples:
            labels = sample.labels
            if (
                sample.name == "http_requests_total"
                and labels.get("route") == route
                and sample.value
            ):
                found[(labels["method"], labels["status"])] = sample.value
    return found


def in_flight(method: str, route: str) -> float | None:
    """The ``http_requests_in_flight`` sample of (method, route)."""
    return get_sample_value("http_requests_in_flight", {"method": method, "route": route})


def no_span_current() -> bool:
    """Whether the current context holds no valid span."""
    return not trace.get_current_span().get_span_context().is_valid


def qualified(cls: type) -> str:
    """``error.type`` of an exception class defined here."""
    return f"{cls.__module__}.{cls.__qualname__}"


@pytest.fixture
def cap() -> Iterator[Capture]:
    """obskit configured like ``settings.OBSKIT`` (which Django's middleware re-applies), with an
    in-memory span sink."""
    with capture(**settings.OBSKIT) as captured:
        yield captured


# -- the Django project of these tests: views and URLconf (ROOT_URLCONF=__name__) ---------------


def dj_not_found(request: HttpRequest) -> HttpResponse:
    raise Http404("no such item")


def dj_forbidden(request: HttpRequest) -> HttpResponse:
    raise PermissionDenied("not yours")


def dj_boom(request: HttpRequest) -> HttpResponse:
    raise HookError("view failed")


def dj_stream_etag(request: HttpRequest) -> StreamingHttpResponse:
    response = StreamingHttpResponse(iter([b"a", b"b"]))
    response["ETag"] = '"v1"'
    return response


def _fails_after_one_chunk() -> Iterator[bytes]:
    yield b"first"
    raise HookError("stream failed")


def dj_stream_fails(request: HttpRequest) -> StreamingHttpResponse:
    return StreamingHttpResponse(_fails_after_one_chunk())


async def _async_chunks(fail: bool) -> AsyncIterator[bytes]:
    yield b"first"
    if fail:
        raise HookError("async stream failed")
    yield b"second"


async def dj_async_stream(request: HttpRequest) -> StreamingHttpResponse:
    return StreamingHttpResponse(_async_chunks(fail=False))


async def dj_async_stream_fails(request: HttpRequest) -> StreamingHttpResponse:
    return StreamingHttpResponse(_async_chunks(fail=True))


def dj_file(request: HttpRequest) -> FileResponse:
    return FileResponse(io.BytesIO(b"file body"), content_type="text/plain")


urlpatterns = [
    path("dj/not-found", dj_not_found),
    path("dj/forbidden", dj_forbidden),
    path("dj/boom", dj_boom),
    path("dj/stream-etag", dj_stream_etag),
    path("dj/stream-fails", dj_stream_fails),
    path("dj/async-stream", dj_async_stream),
    path("dj/async-stream-fails", dj_async_stream_fails),
    path("dj/file", dj_file),
]


class Rescue:
    """A middleware whose ``process_exception`` answers every view exception itself."""

    status = 200

    def __init__(self, get_response: Callable[[HttpRequest], Any]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> Any:
        return self.get_response(request)

    def process_exception(self, request: HttpRequest, exception: Exception) -> HttpResponse:
        return HttpResponse("rescued", status=self.status)


class RescueWith503(Rescue):
    status = 503


def django_settings(middleware: list[str] | None = None) -> Any:
    """``override_settings`` with this module's URLconf and ``middleware`` (obskit alone by
    default; ``[]`` for the bare app)."""
    return override_settings(
        ROOT_URLCONF=__name__, MIDDLEWARE=OBSKIT_FIRST if middleware is None else middleware
    )


def warm_connection_handlers() -> None:
    """Create this thread's database and cache connection objects (no connection is opened).

    Until then every request's ``request_started``/``request_finished`` receivers ask Django's
    ``connections``/``caches`` ``all(initialized_only=True)``, whose ``hasattr`` on an asgiref
    ``Local`` raises AttributeError inside a ``@contextmanager``; on Python 3.10 contextlib's
    ``__exit__`` leaves that exception's traceback holding its own frame (fixed in 3.11), a
    cycle per request whose frames reach the WSGIRequest, the response and the environ -- and
    so any obskit request they hold, though it is on no cycle of its own.
    """
    from django.core.cache import caches
    from django.db import connections

    connections.all()
    caches.all()


def garbage_after(run: Callable[[], object], times: int = 20) -> int:
    """Objects the cycle collector finds after ``times`` runs (gc off, caches warmed first)."""
    warm_connection_handlers()
    for _ in range(3):
        run()
    gc.collect()
    gc.disable()
    try:
        for _ in range(times):
            run()
        return gc.collect()
    finally:
        gc.enable()


def obskit_requests_in_garbage(run: Callable[[], object], times: int = 20) -> int:
    """obskit requests among what the cycle collector finds after ``times`` runs."""
    from obskit.http._pipeline import Request

    warm_connection_handlers()
    for _ in range(3):
        run()
    gc.collect()
    gc.disable()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        for _ in range(times):
            run()
        gc.collect()
        return sum(isinstance(thing, Request) for thing in gc.garbage)
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()


# == Bugs ======================================================================================


# -- 1. A WSGI app that raises after start_response: counted with the status it never sent.

GUNICORN_APP = r"""
import os, signal, sys, threading, time
import flask
from gunicorn.app.base import BaseApplication
from gunicorn.config import KNOWN_SETTINGS
from obskit.flask import Obskit

app = flask.Flask("adversarial")

@app.get("/items/<int:item_id>")
def item(item_id):
    return {"id": item_id}

@app.get("/teardown-fails")
def teardown_fails():
    flask.g.fail_teardown = True
    return "ok"

@app.teardown_request
def teardown(exc):
    if flask.g.get("fail_teardown"):
        raise RuntimeError("teardown failed")

@app.get("/stream-fails-early")
def stream_fails_early():
    def chunks():
        raise RuntimeError("failed before the first chunk")
        yield b""
    return flask.Response(chunks())

@app.get("/slow-stream")
def slow_stream():
    def chunks():
        for _ in range(300):
            yield b"x" * 65536
            time.sleep(0.01)
    return flask.Response(chunks())

Obskit(app, service_name="adversarial", traces_exporter="none")

def stop_later(server):
    # Stops by itself even if the test process dies without stopping it.
    timer = threading.Timer(60, os.kill, (os.getpid(), signal.SIGTERM))
    timer.daemon = True
    timer.start()

class Server(BaseApplication):
    def load_config(self):
        self.cfg.set("bind", sys.argv[1])
        self.cfg.set("workers", 1)
        self.cfg.set("loglevel", "critical")
        self.cfg.set("when_ready", stop_later)
        if any(s.name == "control_socket_disable" for s in KNOWN_SETTINGS):
            self.cfg.set("control_socket_disable", True)

    def load(self):
        return app

Server().run()
"""


def _get(port: int, target: str) -> tuple[int, bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request("GET", target)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def _scrape(port: int) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    status, body = _get(port, "/metrics")
    assert 200 == status
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(body.decode())
        for sample in family.samples
    }


@pytest.fixture(scope="module")
def gunicorn_port() -> Iterator[int]:
    """A gunicorn sync worker on loopback serving an instrumented Flask app; stopped after."""
    pytest.importorskip("gunicorn")
    port = free_port()
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.upper().startswith(("OTEL_", "OBSKIT_")) and name != "PROMETHEUS_MULTIPROC_DIR"
    }
    process = subprocess.Popen(
        [sys.executable, "-c", GUNICORN_APP, f"127.0.0.1:{port}"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 15
        while True:
            assert process.poll() is None, "gunicorn exited"
            try:
                if 200 == _get(port, "/items/1")[0]:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, "gunicorn did not start"
            time.sleep(0.1)
        yield port
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(5)


@pytest.mark.e2e
# A bug this test found, since fixed: wsgi.py ObskitMiddleware.__call__ (except path) and
# _Finishing.__iter__ finish with the status given to start_response although no byte of that
# response was sent; the server answers 500 and obskit counts 200
def test_gunicorn_counts_the_500_it_sends_when_the_app_fails_before_the_body(
    gunicorn_port: int,
) -> None:
    """A Flask teardown hook that raises (after Werkzeug called start_response("200 OK")) and a
    streamed body that fails before its first chunk: gunicorn answers 500 to both, so the
    requests must be counted as 500, not as the 200 that was never sent."""
    got = {
        target: _get(gunicorn_port, target)[0]
        for target in ("/teardown-fails", "/stream-fails-early")
    }
    assert {"/teardown-fails": 500, "/stream-fails-early": 500} == got
    metrics = _scrape(gunicorn_port)
    statuses = {
        route: sorted(
            dict(labels)["status"]
            for (name, labels), value in metrics.items()
            if name == "http_requests_total" and dict(labels).get("route") == route and value
        )
        for route in ("/teardown-fails", "/stream-fails-early")
    }
    assert {"/teardown-fails": ["500"], "/stream-fails-early": ["500"]} == statuses


@pytest.mark.e2e
def test_gunicorn_client_gone_mid_stream_ends_the_request(gunicorn_port: int) -> None:
    """A client that resets the connection mid-stream: gunicorn's write fails and it calls
    close(); the request is counted once, with the 200 it had started, and leaves the in-flight
    gauge at 0."""
    with socket.create_connection(("127.0.0.1", gunicorn_port), timeout=10) as sock:
        sock.sendall(b"GET /slow-stream HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        assert sock.recv(65536).startswith(b"HTTP/1.1 200")
        # Close with a reset, so the server's next write fails at once.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    # One sync worker: the scrape is served once the stream's request has ended.
    metrics = _scrape(gunicorn_port)
    route = {("method", "GET"), ("route", "/slow-stream")}
    assert 1.0 == metrics[("http_requests_total", frozenset({*route, ("status", "200")}))]
    assert 0.0 == metrics[("http_requests_in_flight", frozenset(route))]


# -- 2. Django: an exception a view raises ties the request into a reference cycle.


# A bug this test found, since fixed: django/middleware.py process_exception stores the exception
# in Request.handled, never cleared (http/_pipeline.py Request.detach releases the header getter
# and _unsampled only): exception -> traceback -> frames -> HttpRequest -> _obskit_request ->
# handled -> exception is a cycle per request (every get_object_or_404)
@pytest.mark.parametrize("target", ["/dj/not-found", "/dj/forbidden", "/dj/boom"])
def test_django_view_exceptions_leave_no_cyclic_garbage(
    cap: Capture, target: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Http404, PermissionDenied and a failing view are freed by reference counting alone, as
    they are without obskit: no obskit request among the cycle collector's finds, and no more
    garbage than the same loop with MIDDLEWARE=[] leaves (none in a fresh process; what earlier
    tests left configured in Django's logging can make the bare loop's figure above 0)."""
    caplog.set_level(logging.CRITICAL, logger="django")
    with django_settings([]):
        handler = WSGIHandler()
        bare = garbage_after(lambda: serve(handler, environ(target)))
    with django_settings(OBSKIT_FIRST):
        handler = WSGIHandler()
        with_obskit = garbage_after(lambda: serve(handler, environ(target)))
        left = obskit_requests_in_garbage(lambda: serve(handler, environ(target)))
    assert 0 == left
    assert with_obskit <= bare


# -- 3. Django: a streaming response nobody iterates never ends its request.


# A bug this test found, since fixed: django/middleware.py _done ends a streaming request only
# from inside the _finish generator; a response whose streaming_content is never iterated
# (replaced by an outer middleware's 304, emptied for HEAD) is never counted, its span never ends
# and http_requests_in_flight stays at 1 forever
@pytest.mark.parametrize("case", ["conditional_get_304_outside_obskit", "head"])
def test_django_stream_that_is_never_iterated_still_ends(cap: Capture, case: str) -> None:
    """ConditionalGetMiddleware placed before obskit answers 304 in place of the streaming
    response; the test client empties a HEAD response's stream (as servers skip a HEAD body). Either
    way the request is over: counted once, in-flight back to 0, its span exported."""
    if case == "head":
        middleware, method, headers = OBSKIT_FIRST, "HEAD", {}
    else:
        middleware = ["django.middleware.http.ConditionalGetMiddleware", *OBSKIT_FIRST]
        method, headers = "GET", {"HTTP_IF_NONE_MATCH": '"v1"'}
    with django_settings(middleware):
        response = Client().generic(method, "/dj/stream-etag", **headers)
        response.close()
    # The streaming response the 304 replaced is dropped unsent and never closed; Django's
    # StreamingHttpResponse is a reference cycle of its own (its iterator maps its bound
    # make_bytes), so it is freed -- and the request ended -- by the cycle collector.
    gc.collect()
    assert 1 == len(counted("/dj/stream-etag"))
    assert 0.0 == in_flight(method, "/dj/stream-etag")
    assert 1 == len(cap.spans())


# A bug this test found, since fixed: django/middleware.py _afinish, like _finish, only ends the
# request when the async stream is iterated; an emptied HEAD stream leaves it in flight forever
async def test_django_async_stream_that_is_never_iterated_still_ends(cap: Capture) -> None:
    """HEAD on an async streaming view through the async test client: the request still ends
    when the response is closed (Django's AsyncClient empties a HEAD stream and so skips the
    close a server makes; it is made here, as the sync test does)."""
    with django_settings():
        response = await AsyncClient().head("/dj/async-stream")
        response.close()
    assert 200 == response.status_code
    assert {("HEAD", "200"): 1.0} == counted("/dj/async-stream")
    assert 0.0 == in_flight("HEAD", "/dj/async-stream")


# -- 4. Django: an unsampled (keepable) streaming request leaves a reference cycle.


# A bug this test found, since fixed: django/middleware.py _done detaches before the stream
# (request not yet finished, so Request.detach releases nothing) and _finish/_afinish finish with
# detach=False, so Request._unsampled (which holds the HttpRequest) is never released: HttpRequest
# -> _obskit_request -> _unsampled -> HttpRequest is a cycle per request
def test_django_unsampled_stream_leaves_no_cyclic_garbage(cap: Capture) -> None:
    """A streamed response to a caller whose trace is not sampled (keep_errors on, the default)
    is freed by reference counting alone, as a sampled one is."""
    env = {"HTTP_TRACEPARENT": UNSAMPLED_TRACEPARENT}
    # Django's StreamingHttpResponse is a cycle of its own (its iterator maps its bound
    # make_bytes), so the collector finds the bare app's responses too, more or fewer with what
    # earlier tests left: what must not be among them is an obskit request.
    with django_settings(OBSKIT_FIRST):
        handler = WSGIHandler()
        left = obskit_requests_in_garbage(lambda: serve(handler, environ("/dj/stream-etag", **env)))
    assert 0 == left


# -- 5. The server's wsgi.file_wrapper (sendfile) never reaches the server.


# A bug this test found, since fixed: wsgi.py wraps every iterable in _Finishing and
# django/middleware.py _done replaces FileResponse.streaming_content (which sets
# file_to_stream=None): the server no longer gets its wsgi.file_wrapper, so gunicorn's sendfile
# path is lost for send_file and FileResponse
@pytest.mark.parametrize("framework", ["flask", "django"])
def test_file_responses_keep_the_servers_file_wrapper(cap: Capture, framework: str) -> None:
    """Without obskit, Flask's send_file and Django's FileResponse hand the server an instance of
    its wsgi.file_wrapper; with obskit too, and the request still ends when the server closes it."""
    route = "/dj/file" if framework == "django" else "/file"

    def handed_over(instrumented: bool) -> tuple[type, bytes]:
        """What the server gets for GET ``route`` with its file wrapper, and the body."""
        if framework == "django":
            app: Any = WSGIHandler()
        else:
            app = Flask(__name__)
            app.add_url_rule(
                route, "file", lambda: send_file(io.BytesIO(b"file body"), "text/plain")
            )
            if instrumented:
                Obskit(app)
        result = app(environ(route, **{"wsgi.file_wrapper": FileWrapper}), Started())
        try:
            return type(result), b"".join(result)
        finally:
            result.close()

    with django_settings([]):
        assert (FileWrapper, b"file body") == handed_over(instrumented=False)
    with django_settings():
        assert (FileWrapper, b"file body") == handed_over(instrumented=True)
    assert {("GET", "200"): 1.0} == counted(route)


# -- 6. url.path leaves out the application's mount point (SCRIPT_NAME).


# A bug this test found, since fixed: wsgi.py ObskitMiddleware.__call__ takes url.path from
# PATH_INFO alone; under a mount point (DispatcherMiddleware, gunicorn SCRIPT_NAME) the path the
# client asked for is SCRIPT_NAME + PATH_INFO (Django's request.path, which obskit uses there,
# includes it)
def test_url_path_includes_the_mount_point(cap: Capture) -> None:
    """A Flask app mounted at /api under DispatcherMiddleware: GET /api/items/3 has url.path
    /api/items/3."""
    api = Flask(__name__)
    api.add_url_rule(ITEM_ROUTE, "item", lambda item_id: str(item_id))
    Obskit(api)
    site = DispatcherMiddleware(Flask("site"), {"/api": api})
    assert "200 OK" == serve(site, environ("/api/items/3"))[0]
    (span,) = cap.spans()
    assert "/api/items/3" == attrs(span)["url.path"]


# -- 7. Flask: a url_value_preprocessor that fails hides the matched route.


# A bug this test found, since fixed: flask.py sets the route from a before_request hook, but
# Flask runs the url_value_preprocessors first; one that aborts or raises (a tenant or language
# looked up from the URL) leaves a matched request counted as __unmatched__, its 5xx out of the
# route's error rate
def test_flask_failing_url_value_preprocessor_keeps_the_route(
    cap: Capture, caplog: pytest.LogCaptureFixture
) -> None:
    """GET /xx/items/1 matches /<lang>/items/<int:item_id>; the app's url_value_preprocessor
    fails for an unknown language: the 500 is counted under the route template."""
    caplog.set_level(logging.CRITICAL)
    app = Flask(__name__)

    @app.url_value_preprocessor
    def language(endpoint: str | None, values: dict[str, Any] | None) -> None:
        if values is not None and values.get("lang") not in ("en", "fr"):
            raise HookError("unknown language")

    app.add_url_rule("/<lang>/items/<int:item_id>", "item", lambda lang, item_id: lang)
    Obskit(app)
    assert "500 INTERNAL SERVER ERROR" == serve(app, environ("/xx/items/1"))[0]
    assert {("GET", "500"): 1.0} == counted("/<lang>/items/<int:item_id>")


# == Behaviours no other test covers ============================================================


# -- Flask: hooks and error handlers that fail.


def _hook_app(hook: str) -> Flask:
    """An app whose ``hook`` raises HookError on GET /items/1 (not instrumented)."""
    app = Flask(__name__)

    @app.get(ITEM_ROUTE)
    def item(item_id: int) -> Any:
        if hook == "error_handler":
            raise KeyError("the view fails, then its error handler")
        return {"id": item_id}

    if hook == "before_request":

        @app.before_request
        def before() -> None:
            raise HookError("before_request failed")

    elif hook == "after_request":

        @app.after_request
        def after(response: Response) -> Response:
            raise HookError("after_request failed")

    else:

        @app.errorhandler(KeyError)
        def handler(error: KeyError) -> Any:
            raise HookError("the error handler failed")

    return app


@pytest.mark.parametrize("hook", ["before_request", "after_request", "error_handler"])
def test_flask_failing_hook_is_answered_as_by_the_bare_app(
    cap: Capture, hook: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A before_request hook, an after_request hook or an error handler that raises: the 500
    response is the bare app's, byte for byte; one request counted under the route template, the
    in-flight gauge back to 0, one ERROR span recording the hook's exception once."""
    caplog.set_level(logging.CRITICAL)
    bare = serve(_hook_app(hook), environ("/items/1"))
    app = _hook_app(hook)
    Obskit(app)
    assert bare == serve(app, environ("/items/1"))
    assert "500 INTERNAL SERVER ERROR" == bare[0]
    assert {("GET", "500"): 1.0} == counted(ITEM_ROUTE)
    assert 0.0 == in_flight("GET", ITEM_ROUTE)
    (span,) = cap.spans()
    assert ERROR == span.status.code
    assert qualified(HookError) == attrs(span)["error.type"]
    assert [qualified(HookError)] == [attrs(e)["exception.type"] for e in span.events]
    assert no_span_current()


# -- Flask: what servers do with a streamed body.


def _stream_app(*, fail: bool = False, close_fails: bool = False) -> Flask:
    app = Flask(__name__)

    @app.get("/stream/<int:n>")
    def stream(n: int) -> Response:
        def chunks() -> Iterator[bytes]:
            yield b"one"
            if fail:
                raise HookError("the stream failed midway")
            yield b"two"

        response = Response(chunks())
        if close_fails:

            def fail_on_close() -> None:
                raise HookError("close() failed")

            response.call_on_close(fail_on_close)
        return response

    Obskit(app)
    return app


def _iterate_no_close(result: Any) -> None:
    assert b"onetwo" == b"".join(result)


def _first_chunk_then_close(result: Any) -> None:
    chunks = iter(result)
    assert b"one" == next(chunks)
    result.close()  # the client went away


def _close_without_iterating(result: Any) -> None:
    result.close()


def _close_fails(result: Any) -> None:
    assert b"onetwo" == b"".join(result)
    with pytest.raises(HookError, match="close"):
        result.close()


def _fails_midway(result: Any) -> None:
    with pytest.raises(HookError, match="midway"):
        b"".join(result)
    result.close()


SERVER_BEHAVIOURS: dict[str, tuple[Callable[[Any], None], dict[str, bool], int]] = {
    # name: (what the server does, the app's options, the span's status code)
    "exhausts_never_closes": (_iterate_no_close, {}, UNSET),
    "first_chunk_then_close": (_first_chunk_then_close, {}, UNSET),
    "close_without_iterating": (_close_without_iterating, {}, UNSET),
    "close_raises": (_close_fails, {"close_fails": True}, UNSET),
    "stream_raises_midway": (_fails_midway, {"fail": True}, ERROR),
}


@pytest.mark.parametrize("behaviour", sorted(SERVER_BEHAVIOURS))
def test_flask_stream_ends_once_whatever_the_server_does(cap: Capture, behaviour: str) -> None:
    """A server that never calls close(), stops after one chunk, closes without iterating, gets an
    exception from close(), or from the body midway: the request ends exactly once, as the 200
    the server had started; in-flight back to 0; no span left current."""
    server, options, span_status = SERVER_BEHAVIOURS[behaviour]
    started = Started()
    result = _stream_app(**options)(environ("/stream/1"), started)
    assert "200 OK" == started.status
    server(result)
    assert no_span_current()
    assert {("GET", "200"): 1.0} == counted("/stream/<int:n>")
    assert 0.0 == in_flight("GET", "/stream/<int:n>")
    (span,) = cap.spans()
    assert span_status == span.status.code


# -- Flask: blueprints, the init_app factory, two apps in one process, ProxyFix.


def test_flask_factory_apps_with_nested_blueprints(cap: Capture) -> None:
    """One extension, init_app on two factory-made apps with nested url-prefixed blueprints:
    routes are the full templates, each app's exception lands on its own request only."""
    extension = Obskit()

    def create_app(name: str) -> Flask:
        app = Flask(name)
        api = Blueprint("api", name, url_prefix="/api")
        v1 = Blueprint("v1", name, url_prefix="/v1")

        @v1.get(ITEM_ROUTE)
        def item(item_id: int) -> Any:
            return {"id": item_id}

        @v1.get("/boom")
        def boom() -> Any:
            raise HookError("boom")

        api.register_blueprint(v1)
        app.register_blueprint(api)
        extension.init_app(app)
        return app

    first, second = create_app("first"), create_app("second")
    assert first.extensions["obskit"] is extension is second.extensions["obskit"]
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(logging.getLogger("first"), "disabled", True)
        patch.setattr(logging.getLogger("second"), "disabled", True)
        assert "200 OK" == serve(first, environ("/api/v1/items/1"))[0]
        assert "500 INTERNAL SERVER ERROR" == serve(second, environ("/api/v1/boom"))[0]
        assert "200 OK" == serve(second, environ("/api/v1/items/2"))[0]
    assert {("GET", "200"): 2.0} == counted("/api/v1/items/<int:item_id>")
    assert {("GET", "500"): 1.0} == counted("/api/v1/boom")
    spans = {span.name: span for span in cap.spans()}
    assert ["GET /api/v1/boom", "GET /api/v1/items/<int:item_id>"] == sorted(spans)
    assert 3 == len(cap.spans())
    assert [qualified(HookError)] == [
        attrs(e)["exception.type"] for e in spans["GET /api/v1/boom"].events
    ]
    assert [] == list(spans["GET /api/v1/items/<int:item_id>"].events)


def test_flask_proxyfix_applied_after_obskit_is_seen_by_the_span(cap: Capture) -> None:
    """``app.wsgi_app = ProxyFix(app.wsgi_app)`` after Obskit(app): the span has the client and
    scheme from X-Forwarded-For/-Proto, and the route template."""
    app = Flask(__name__)
    app.add_url_rule(ITEM_ROUTE, "item", lambda item_id: str(item_id))
    Obskit(app)
    app.wsgi_app = ProxyFix(app.wsgi_app, x_for=1, x_proto=1)  # type: ignore[method-assign]
    env = environ("/items/1", HTTP_X_FORWARDED_FOR="203.0.113.9", HTTP_X_FORWARDED_PROTO="https")
    assert "200 OK" == serve(app, env)[0]
    (span,) = cap.spans()
    assert {
        "client.address": "203.0.113.9",
        "url.scheme": "https",
        "http.route": ITEM_ROUTE,
    }.items() <= attrs(span).items()


# -- Flask: garbage in the request.

#: environ entries a client (through a PEP 3333 server: latin-1 text) can send.
GARBAGE = {
    "x_request_id_1mb": {"HTTP_X_REQUEST_ID": "r" * 2**20},
    "traceparent_nul_bytes": {"HTTP_TRACEPARENT": f"00-{chr(0) * 32}-{PARENT_ID}-01"},
    "traceparent_utf8_as_latin1": {
        "HTTP_TRACEPARENT": f"00-{TRACE_ID[:30]}\u00e9-{PARENT_ID}-01".encode().decode("latin-1")
    },
    "tracestate_1mb": {
        "HTTP_TRACEPARENT": f"00-{TRACE_ID}-{PARENT_ID}-01",
        "HTTP_TRACESTATE": "k=" + "v" * 2**20,
    },
    "user_agent_64kb": {"HTTP_USER_AGENT": "\xff" * 2**16},
    "method_lowercase": {"REQUEST_METHOD": "get"},
    "method_10kb": {"REQUEST_METHOD": "G\xe9T" * 3500},
    "server_port_garbage": {"SERVER_PORT": "80x"},
    "path_latin1": {"PATH_INFO": "/items/\xc3\xa9"},
}


@pytest.mark.parametrize("case", sorted(GARBAGE))
def test_flask_garbage_request_is_answered_as_by_the_bare_app(cap: Capture, case: str) -> None:
    """Oversized and malformed headers, odd methods, a non-ASCII path: the response is the bare
    app's; one request counted; one span whose client-controlled attributes stay bounded."""

    def build() -> Flask:
        app = Flask(__name__)
        app.add_url_rule(ITEM_ROUTE, "item", lambda item_id: str(item_id))
        return app

    bare = serve(build(), environ("/items/1", **GARBAGE[case]))
    app = build()
    Obskit(app)
    env = environ("/items/1", **GARBAGE[case])
    assert bare == serve(app, env)
    totals = [
        sample.value
        for family in _state.registry.collect()
        for sample in family.samples
        if sample.name == "http_requests_total"
    ]
    assert [1.0] == totals
    (span,) = cap.spans()
    attributes = attrs(span)
    assert len(attributes.get("user_agent.original", "")) <= 512
    assert len(attributes.get("http.request.method_original", "")) <= 64
    assert len(env["obskit.request"].request_id) <= 128


# -- Django: exceptions that become 4xx, and middleware that answers for the view.


@pytest.mark.parametrize(("target", "status"), [("/dj/not-found", 404), ("/dj/forbidden", 403)])
def test_django_http404_and_permission_denied_are_not_errors(
    cap: Capture, target: str, status: int, caplog: pytest.LogCaptureFixture
) -> None:
    """Http404 or PermissionDenied raised by a view: counted with the 4xx and the route template;
    the span is not an error and records no exception."""
    caplog.set_level(logging.CRITICAL, logger="django")
    with django_settings():
        response = Client().get(target)
    assert status == response.status_code
    assert {("GET", str(status)): 1.0} == counted(target)
    assert 0.0 == in_flight("GET", target)
    (span,) = cap.spans()
    assert (f"GET {target}", UNSET, []) == (span.name, span.status.code, list(span.events))


@pytest.mark.parametrize(("rescue", "status"), [("Rescue", 200), ("RescueWith503", 503)])
def test_django_outer_process_exception_answers_for_the_view(
    cap: Capture, rescue: str, status: int
) -> None:
    """obskit not first: an outer middleware's process_exception answers a failing view. Counted
    with the status it answered; the view's exception is on the span only if that is a 5xx."""
    with django_settings([f"{__name__}.{rescue}", *OBSKIT_FIRST]):
        response = Client().get("/dj/boom")
    assert (status, b"rescued") == (response.status_code, response.content)
    assert {("GET", str(status)): 1.0} == counted("/dj/boom")
    (span,) = cap.spans()
    events = [attrs(e)["exception.type"] for e in span.events]
    if status >= 500:
        assert (ERROR, [qualified(HookError)]) == (span.status.code, events)
    else:
        assert (UNSET, []) == (span.status.code, events)


# -- Django: streams that fail midway, sync under the WSGI handler and async.


def _expect_stream_failure(cap: Capture, route: str) -> None:
    assert {("GET", "200"): 1.0} == counted(route)
    assert 0.0 == in_flight("GET", route)
    (span,) = cap.spans()
    assert ERROR == span.status.code
    assert qualified(HookError) == attrs(span)["error.type"]
    assert no_span_current()


def test_django_sync_stream_failing_midway_under_wsgi(cap: Capture) -> None:
    """A StreamingHttpResponse that raises after its first chunk, served by Django's WSGIHandler:
    the exception reaches the server; the request ends once, as the 200 already sent, ERROR."""
    with django_settings():
        handler = WSGIHandler()
        with pytest.raises(HookError, match="stream failed"):
            serve(handler, environ("/dj/stream-fails"))
    _expect_stream_failure(cap, "/dj/stream-fails")


async def test_django_async_stream_failing_midway(cap: Capture) -> None:
    """An async stream that raises after its first chunk, through the async test client (Django's
    ASGI request path): the first chunk is out, the exception reaches the reader, the request ends
    once, as the 200 already sent, ERROR."""
    with django_settings():
        response = await AsyncClient().get("/dj/async-stream-fails")
    chunks: list[bytes] = []

    async def read() -> None:
        async for chunk in response.streaming_content:
            chunks.append(chunk)

    with pytest.raises(HookError, match="async stream failed"):
        await read()
    assert [b"first"] == chunks
    _expect_stream_failure(cap, "/dj/async-stream-fails")


def test_a_status_that_is_not_text_is_left_to_the_server(cap: Capture) -> None:
    """PEP 3333 wants ``"200 OK"``; an app that passes something else gets the server's answer
    (here the server's start_response raising its own error), never a TypeError of obskit's."""
    from obskit.wsgi import ObskitMiddleware

    class Refused(Exception):
        pass

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        start_response(200, [])
        return [b"ok"]

    def server_start_response(status: Any, headers: Any, exc_info: Any = None) -> Any:
        raise Refused(f"status must be a str, got {status!r}")

    environ_ = {"REQUEST_METHOD": "GET", "PATH_INFO": "/odd", "wsgi.url_scheme": "http"}
    with pytest.raises(Refused):
        ObskitMiddleware(app)(environ_, server_start_response)
