"""Adversarial review of outbound propagation and CLIENT spans (``obskit/tracing/outbound.py``).

Real HTTP servers on loopback (TCP on 127.0.0.1 and ::1, and a unix socket), the real
``requests`` and ``httpx`` clients, mounted adapters and transports. Where a test says the user's
request is unchanged it runs the same call first with obskit not configured (the hooks then pass
it through untouched) and compares. ``xfail(strict=True)`` marks a bug left open: its reason
names what is wrong; every other test pins behaviour that holds.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import socket
import socketserver
import tempfile
import threading
import time
import urllib.parse
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Any

import httpx
import pytest
import requests
import wrapt
from opentelemetry import baggage, propagate, trace
from opentelemetry import context as otel_context
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status
from opentelemetry.trace import NonRecordingSpan, SpanContext, SpanKind, TraceFlags
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

import obskit
from obskit import _state, testing
from obskit.testing import Capture, capture, get_sample_value
from tests.child_process import run_python
from tests.loopback import LoopbackServer, QuietHandler, free_port
from tests.otlp_receiver import attributes


# What opentelemetry.instrumentation.utils (the contrib instrumentations' package, not a
# dependency of obskit) does with the API's two suppression keys.
@contextlib.contextmanager
def _suppressed(key: str) -> Iterator[None]:
    token = otel_context.attach(otel_context.set_value(key, True))
    try:
        yield
    finally:
        otel_context.detach(token)


def suppress_instrumentation() -> contextlib.AbstractContextManager[None]:
    return _suppressed(otel_context._SUPPRESS_INSTRUMENTATION_KEY)


def suppress_http_instrumentation() -> contextlib.AbstractContextManager[None]:
    return _suppressed(otel_context._SUPPRESS_HTTP_INSTRUMENTATION_KEY)


def is_http_instrumentation_enabled() -> bool:
    return not otel_context.get_value(otel_context._SUPPRESS_HTTP_INSTRUMENTATION_KEY)


CLIENT = Span.SpanKind.SPAN_KIND_CLIENT
ERROR = Status.STATUS_CODE_ERROR
TIMEOUT = 5.0
BIG = bytes(range(256)) * 256  # 64 KiB, every byte value
T = "4bf92f3577b34da6a3ce929d0e0e4736"
P = "00f067aa0ba902b7"


@pytest.fixture(autouse=True)
def _no_context_left_behind() -> Iterator[None]:
    """Every test starts and must end with no span current (nothing left attached)."""
    assert not trace.get_current_span().get_span_context().is_valid
    yield
    assert not trace.get_current_span().get_span_context().is_valid


# -- loopback servers that record what they received ------------------------------------------


@dataclass
class Seen:
    """One request as a server received it."""

    method: str
    path: str
    body: bytes
    traceparent: list[str]
    tracestate: list[str]
    baggage: list[str]
    other: dict[str, str]  # every other header, lower-case names


TRACE_HEADERS = ("traceparent", "tracestate", "baggage")


def _make_handler(state: Server) -> type[BaseHTTPRequestHandler]:
    class Handler(QuietHandler):
        protocol_version = "HTTP/1.1"

        def _record(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            state.seen.append(
                Seen(
                    self.command,
                    self.path,
                    body,
                    self.headers.get_all("traceparent") or [],
                    self.headers.get_all("tracestate") or [],
                    self.headers.get_all("baggage") or [],
                    {
                        k.lower(): v
                        for k, v in self.headers.items()
                        if k.lower() not in TRACE_HEADERS
                    },
                )
            )

        def _answer(self, code: int, body: bytes = b"", **headers: str) -> None:
            self.send_response(code)
            for name, value in headers.items():
                self.send_header(name.replace("_", "-"), value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:
            self._record()
            path, _, query = self.path.partition("?")
            parts = path.split("/")
            if path.startswith("/status/"):
                self._answer(int(parts[2]), b"status")
            elif path.startswith("/hop/"):  # /hop/<code>?to=<absolute url>
                target = urllib.parse.parse_qs(query)["to"][0]
                self._answer(int(parts[2]), Location=target)
            elif path == "/loop":
                self._answer(302, Location="/loop")
            elif path.startswith("/flaky/"):  # 503 twice per key, then 200
                with state.lock:
                    state.counts[parts[2]] = state.counts.get(parts[2], 0) + 1
                    count = state.counts[parts[2]]
                self._answer(503 if count <= 2 else 200, b"flaky")
            elif path == "/cut":  # promises 100 bytes, sends 7, hangs up
                self.send_response(200)
                self.send_header("Content-Length", "100")
                self.end_headers()
                self.wfile.write(b"partial")
                self.wfile.flush()
                self.close_connection = True
                with contextlib.suppress(OSError):
                    self.connection.shutdown(socket.SHUT_RDWR)
            elif path == "/slow":
                time.sleep(1.0)
                self._answer(200, b"slow")
            elif path == "/big":
                self._answer(200, BIG, Content_Type="application/octet-stream")
            else:
                self._answer(200, b"ok", X_Answer="kept")

        do_POST = do_GET
        do_PURGE = do_GET

    return Handler


@dataclass
class Server:
    """A loopback server: its base URL and what it received."""

    base: str = ""
    seen: list[Seen] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def url(self, path: str = "/x") -> str:
        return self.base + path


@contextlib.contextmanager
def _serve(httpd_class: type[LoopbackServer], host: str) -> Iterator[Server]:
    state = Server()
    httpd = httpd_class(_make_handler(state))
    httpd.start()
    state.base = f"http://{host}:{httpd.port}"
    try:
        yield state
    finally:
        httpd.close()


class WideLoopbackServer(LoopbackServer):
    """A listen backlog for the concurrent tests: past the default 5 the kernel drops SYNs and
    clients retry a second later."""

    request_queue_size = 64


class V6LoopbackServer(WideLoopbackServer):
    """The same server on ::1."""

    address_family = socket.AF_INET6

    def server_bind(self) -> None:
        self.server_address = ("::1", 0)
        super().server_bind()


@pytest.fixture
def server() -> Iterator[Server]:
    with _serve(WideLoopbackServer, "127.0.0.1") as state:
        yield state


@pytest.fixture
def other() -> Iterator[Server]:
    """A second server on another loopback port: the target of cross-port redirects."""
    with _serve(WideLoopbackServer, "127.0.0.1") as state:
        yield state


# -- obskit, lean spans or the SDK tracer ------------------------------------------------------


@pytest.fixture(params=["lean", "sdk"])
def mode(request: pytest.FixtureRequest) -> str:
    """CLIENT spans as lean spans on obskit's pipeline, or the SDK tracer's
    (``keep_whole_trace``): the tests that take it run with both."""
    return str(request.param)


def traced(mode: str, **options: Any) -> contextlib.AbstractContextManager[Capture]:
    options.setdefault("service_name", "adversarial-outbound")
    return capture(keep_whole_trace=mode == "sdk", **options)


def tracer() -> trace.Tracer:
    return obskit.tracer_provider().get_tracer("adversarial-outbound")


def client_spans(cap: Capture) -> list[Any]:
    return [span for span in cap.spans() if CLIENT == span.kind]


def parse(traceparent: str) -> tuple[str, str, int]:
    """``(trace id, parent id, flags)`` of a version-00 ``traceparent``."""
    version, trace_id, parent_id, flags = traceparent.split("-")
    assert ("00", 32, 16, 2) == (version, len(trace_id), len(parent_id), len(flags))
    return trace_id, parent_id, int(flags, 16)


def hex_ids(span: trace.Span) -> tuple[str, str]:
    context = span.get_span_context()
    return format(context.trace_id, "032x"), format(context.span_id, "016x")


def internal_errors(component: str) -> float:
    return get_sample_value("obskit_internal_errors_total", {"component": component}) or 0.0


# -- the clients, each giving back what the caller sees -----------------------------------------


def _summary(response: Any) -> tuple[Any, ...]:
    """What the caller sees of a response: status, body, the redirect history, the final URL,
    and the headers the server set (Date aside)."""
    headers = {k.lower(): v for k, v in response.headers.items() if k.lower() != "date"}
    history = [r.status_code for r in response.history]
    return response.status_code, response.content, history, str(response.url), headers


def req_call(method: str, url: str, **kwargs: Any) -> tuple[Any, ...]:
    with requests.Session() as session:
        return _summary(session.request(method, url, timeout=TIMEOUT, **kwargs))


def httpx_call(method: str, url: str, **kwargs: Any) -> tuple[Any, ...]:
    with httpx.Client(timeout=TIMEOUT, follow_redirects=True) as client:
        return _summary(client.request(method, url, **kwargs))


def httpx_async_call(method: str, url: str, **kwargs: Any) -> tuple[Any, ...]:
    async def run() -> tuple[Any, ...]:
        async with httpx.AsyncClient(timeout=TIMEOUT, follow_redirects=True) as client:
            return _summary(await client.request(method, url, **kwargs))

    return asyncio.run(run())  # the main task starts from a copy of the current context


CALLS: dict[str, Callable[..., tuple[Any, ...]]] = {
    "requests": req_call,
    "httpx": httpx_call,
    "httpx-async": httpx_async_call,
}


@pytest.fixture(params=list(CALLS))
def call(request: pytest.FixtureRequest) -> Callable[..., tuple[Any, ...]]:
    return CALLS[request.param]


def outcome(fn: Callable[[], Any]) -> tuple[Any, ...]:
    """``("ok", result)`` or ``("raised", type, message)``: what the caller gets."""
    try:
        return ("ok", fn())
    except Exception as exc:
        return ("raised", type(exc), str(exc))


def untraced(seen: list[Seen]) -> list[tuple[Any, ...]]:
    """What the server received, the trace headers aside."""
    return [(s.method, s.path, s.body, s.other) for s in seen]


# == redirects, retries, bodies ================================================================


def content_or_data(call: Callable[..., Any]) -> dict[str, Any]:
    return {"data": b"payload"} if call is req_call else {"content": b"payload"}


@pytest.mark.parametrize("code", [301, 302, 303, 307, 308])
def test_a_followed_redirect_to_another_port_is_one_client_span_with_the_final_status(
    server: Server, other: Server, call: Callable[..., tuple[Any, ...]], mode: str, code: int
) -> None:
    """POST through a 30x to another loopback port: the caller gets what it gets without obskit
    (method rewriting, body re-sent or not, history); every hop carries exactly one traceparent of
    the caller's trace naming the one CLIENT span, which ends once with the final status and the
    URL the caller asked for; the caller's span is current again."""
    target = urllib.parse.quote(other.url("/x"), safe="")
    url = server.url(f"/hop/{code}?to={target}")
    baseline = outcome(lambda: call("POST", url, **content_or_data(call)))
    expected_seen = untraced(server.seen + other.seen)
    server.seen.clear()
    other.seen.clear()
    with traced(mode) as cap, tracer().start_as_current_span("parent") as parent:
        got = outcome(lambda: call("POST", url, **content_or_data(call)))
        assert parent is trace.get_current_span()
        spans = client_spans(cap)
    assert baseline == got
    assert expected_seen == untraced(server.seen + other.seen)
    (span,) = spans
    trace_id, _ = hex_ids(parent)
    hops = server.seen + other.seen
    assert 2 == len(hops)
    assert [[(trace_id, span.span_id.hex(), 1)]] * 2 == [
        [(t, p, f & 1) for t, p, f in map(parse, hop.traceparent)] for hop in hops
    ]
    recorded = attributes(span)
    assert (200, url) == (recorded["http.response.status_code"], recorded["url.full"])
    assert Status.STATUS_CODE_UNSET == span.status.code


def _req_loop(url: str) -> None:
    with requests.Session() as session:
        session.max_redirects = 3
        session.get(url, timeout=TIMEOUT)


def _httpx_loop(url: str) -> None:
    with httpx.Client(timeout=TIMEOUT, follow_redirects=True, max_redirects=3) as client:
        client.get(url)


def _httpx_async_loop(url: str) -> None:
    async def run() -> None:
        async with httpx.AsyncClient(
            timeout=TIMEOUT, follow_redirects=True, max_redirects=3
        ) as client:
            await client.get(url)

    asyncio.run(run())


@pytest.mark.parametrize(
    ("loop", "expected"),
    [
        (_req_loop, requests.TooManyRedirects),
        (_httpx_loop, httpx.TooManyRedirects),
        (_httpx_async_loop, httpx.TooManyRedirects),
    ],
    ids=["requests", "httpx", "httpx-async"],
)
def test_a_redirect_loop_hitting_the_limit_raises_the_clients_error_and_ends_the_span_once(
    server: Server, mode: str, loop: Callable[[str], None], expected: type[BaseException]
) -> None:
    baseline = outcome(lambda: loop(server.url("/loop")))
    hops = len(server.seen)
    server.seen.clear()
    with traced(mode) as cap, tracer().start_as_current_span("parent") as parent:
        with pytest.raises(expected) as caught:
            loop(server.url("/loop"))
        assert parent is trace.get_current_span()
        spans = client_spans(cap)
    assert baseline == ("raised", type(caught.value), str(caught.value))
    assert 4 == hops == len(server.seen)  # the first request and 3 redirects
    (span,) = spans
    assert [[span.span_id.hex()]] * 4 == [[parse(v)[1] for v in s.traceparent] for s in server.seen]
    assert ERROR == span.status.code
    cls = type(caught.value)
    assert f"{cls.__module__}.{cls.__qualname__}" == attributes(span)["error.type"]


def test_urllib3_retries_are_one_client_span_with_the_final_answer(
    server: Server, mode: str
) -> None:
    """Retries below ``Session.send`` (a urllib3 ``Retry`` on the adapter): every attempt carries
    the same traceparent, naming the one CLIENT span, which records the final 200."""
    adapter = HTTPAdapter(max_retries=Retry(total=3, status_forcelist=[503], backoff_factor=0))
    with (
        traced(mode) as cap,
        tracer().start_as_current_span("parent"),
        requests.Session() as session,
    ):
        session.mount("http://", adapter)
        response = session.get(server.url(f"/flaky/{uuid.uuid4().hex}"), timeout=TIMEOUT)
        spans = client_spans(cap)
    assert (200, b"flaky") == (response.status_code, response.content)
    (span,) = spans
    assert [[span.span_id.hex()]] * 3 == [[parse(v)[1] for v in s.traceparent] for s in server.seen]
    assert 200 == attributes(span)["http.response.status_code"]


def test_httpx_transport_retries_on_a_refused_connection_raise_the_clients_error(
    mode: str,
) -> None:
    url = f"http://127.0.0.1:{free_port()}/x"

    def send() -> None:
        with httpx.Client(transport=httpx.HTTPTransport(retries=1), timeout=TIMEOUT) as client:
            client.get(url)

    baseline = outcome(send)
    with traced(mode) as cap, tracer().start_as_current_span("parent") as parent:
        with pytest.raises(httpx.ConnectError) as caught:
            send()
        assert parent is trace.get_current_span()
        (span,) = client_spans(cap)
    assert baseline == ("raised", httpx.ConnectError, str(caught.value))
    assert ("httpx.ConnectError", ERROR) == (attributes(span)["error.type"], span.status.code)


def test_a_body_cut_mid_way_reaches_the_caller_as_without_obskit(
    server: Server, call: Callable[..., tuple[Any, ...]], mode: str
) -> None:
    """The server promises 100 bytes and hangs up after 7: the caller gets the client's own
    error, as without obskit; the CLIENT span is ERROR with that error's type."""
    baseline = outcome(lambda: call("GET", server.url("/cut")))
    with traced(mode) as cap, tracer().start_as_current_span("parent") as parent:
        got = outcome(lambda: call("GET", server.url("/cut")))
        assert parent is trace.get_current_span()
        (span,) = client_spans(cap)
    assert "raised" == baseline[0]
    assert baseline == got
    cls = got[1]
    assert f"{cls.__module__}.{cls.__qualname__}" == attributes(span)["error.type"]
    assert ERROR == span.status.code


def test_streamed_bodies_read_partly_closed_early_or_never_closed(
    server: Server, mode: str
) -> None:
    """``stream=True`` / ``client.stream`` / ``send(stream=True)``: the bytes the caller reads
    are the server's; each call is one ended CLIENT span with status 200 whatever the caller
    does with the body; no context is left behind, and the next call gets its own span."""
    url = server.url("/big")
    kept: list[Any] = []
    with traced(mode) as cap, tracer().start_as_current_span("parent") as parent:
        with requests.Session() as session:
            partly = session.get(url, stream=True, timeout=TIMEOUT)
            assert BIG[:1000] == next(partly.iter_content(1000))
            partly.close()
            for _ in range(3):  # never read, never closed (until the test cleans up)
                kept.append(session.get(url, stream=True, timeout=TIMEOUT))
            assert parent is trace.get_current_span()
        with httpx.Client(timeout=TIMEOUT) as client:
            with client.stream("GET", url) as response:
                assert BIG.startswith(next(response.iter_bytes()))
            kept.append(client.send(client.build_request("GET", url), stream=True))
            assert parent is trace.get_current_span()

            async def run() -> None:
                async with httpx.AsyncClient(timeout=TIMEOUT) as aclient:
                    async with aclient.stream("GET", url) as aresponse:
                        async for chunk in aresponse.aiter_bytes():
                            assert BIG.startswith(chunk)
                            break
                    assert parent is trace.get_current_span()

            asyncio.run(run())
            assert parent is trace.get_current_span()
            assert BIG == client.get(url).content
            spans = client_spans(cap)
            for response in kept:
                response.close()
    assert 8 == len(spans) == len({span.span_id for span in spans})
    assert [200] * 8 == [attributes(span)["http.response.status_code"] for span in spans]
    _, parent_id = hex_ids(parent)
    assert {parent_id} == {span.parent_span_id.hex() for span in spans}


async def test_a_cancelled_or_timed_out_async_request_ends_its_span_and_restores_context(
    server: Server, mode: str
) -> None:
    with traced(mode) as cap:
        async with httpx.AsyncClient(timeout=TIMEOUT) as client:
            with tracer().start_as_current_span("parent") as parent:
                task = asyncio.ensure_future(client.get(server.url("/slow")))
                deadline = time.monotonic() + TIMEOUT
                while not server.seen and time.monotonic() < deadline:
                    await asyncio.sleep(0.01)  # until the request is on the wire
                task.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await task
                assert parent is trace.get_current_span()
                with pytest.raises(asyncio.TimeoutError):
                    await asyncio.wait_for(client.get(server.url("/slow")), 0.2)
                assert parent is trace.get_current_span()
                assert 200 == (await client.get(server.url("/x"))).status_code
        spans = client_spans(cap)
    assert 3 == len(spans)
    cancelled = [
        s for s in spans if "asyncio.exceptions.CancelledError" == attributes(s).get("error.type")
    ]
    assert 2 == len(cancelled)
    assert all(ERROR == s.status.code for s in cancelled)


# == hooks, transports, adapters ===============================================================


class Failure(Exception):
    pass


def _req_response_hook(url: str, error: BaseException) -> None:
    def hook(response: Any, **kwargs: Any) -> None:
        response.close()  # requests would leave it (and its socket) open
        raise error

    requests.get(url, hooks={"response": [hook]}, timeout=TIMEOUT)


def _httpx_request_hook(url: str, error: BaseException) -> None:
    def hook(request: Any) -> None:
        assert request.headers["traceparent"]  # the hook runs after the injection
        raise error

    with httpx.Client(timeout=TIMEOUT, event_hooks={"request": [hook]}) as client:
        client.get(url)


def _httpx_response_hook(url: str, error: BaseException) -> None:
    def hook(response: Any) -> None:
        raise error

    with httpx.Client(timeout=TIMEOUT, event_hooks={"response": [hook]}) as client:
        client.get(url)


def _httpx_async_hook(url: str, error: BaseException) -> None:
    async def hook(response: Any) -> None:
        raise error

    async def run() -> None:
        async with httpx.AsyncClient(timeout=TIMEOUT, event_hooks={"response": [hook]}) as client:
            await client.get(url)

    asyncio.run(run())


@pytest.mark.parametrize(
    "send",
    [_req_response_hook, _httpx_request_hook, _httpx_response_hook, _httpx_async_hook],
    ids=["requests-response", "httpx-request", "httpx-response", "httpx-async-response"],
)
def test_a_raising_hook_reaches_the_caller_as_the_very_same_object(
    server: Server, mode: str, send: Callable[[str, BaseException], None]
) -> None:
    error = Failure("the application's hook failed")
    with traced(mode) as cap, tracer().start_as_current_span("parent") as parent:
        with pytest.raises(Failure) as caught:
            send(server.url(), error)
        assert parent is trace.get_current_span()
        (span,) = client_spans(cap)
    assert caught.value is error
    assert ERROR == span.status.code
    assert f"{__name__}.Failure" == attributes(span)["error.type"]


class Abort(BaseException):
    """Not an Exception: what a KeyboardInterrupt or a gevent Timeout looks like."""


class AbortingAdapter(HTTPAdapter):
    def __init__(self, error: BaseException) -> None:
        super().__init__()
        self.error = error

    def send(self, request: Any, *args: Any, **kwargs: Any) -> Any:
        raise self.error


def test_a_base_exception_from_a_mounted_adapter_or_transport_passes_through(
    mode: str,
) -> None:
    error = Abort()

    def handler(request: httpx.Request) -> httpx.Response:
        raise error

    with traced(mode) as cap, tracer().start_as_current_span("parent") as parent:
        with requests.Session() as session:
            session.mount("http://", AbortingAdapter(error))
            with pytest.raises(Abort) as first:
                session.get("http://service.internal/x")
        with (
            httpx.Client(transport=httpx.MockTransport(handler)) as client,
            pytest.raises(Abort) as second,
        ):
            client.get("http://service.internal/x")
        assert parent is trace.get_current_span()
        spans = client_spans(cap)
    assert error is first.value is second.value
    assert [(ERROR, f"{__name__}.Abort")] * 2 == [
        (s.status.code, attributes(s)["error.type"]) for s in spans
    ]


class RecordingAdapter(HTTPAdapter):
    """A mounted adapter that answers 200 itself and keeps each request it was given."""

    def __init__(self, status: Any = 200) -> None:
        super().__init__()
        self.status = status
        self.requests: list[requests.PreparedRequest] = []
        self.http_instrumentation: list[bool] = []

    def send(self, request: Any, *args: Any, **kwargs: Any) -> requests.Response:
        self.requests.append(request)
        self.http_instrumentation.append(is_http_instrumentation_enabled())
        response = requests.Response()
        response.status_code = self.status
        response.request = request
        response.url = request.url
        response._content = b"mounted"
        return response


URL = "http://user:s3cr%40t@b\u00fccher.example:8443/p\u00e4th/x?q=\u00e4#fragment"
SENT = "http://user:s3cr%40t@xn--bcher-kva.example:8443/p%C3%A4th/x?q=%C3%A4"
RECORDED = "http://REDACTED:REDACTED@xn--bcher-kva.example:8443/p%C3%A4th/x?q=%C3%A4#fragment"


def test_a_mounted_adapter_gets_the_trace_headers_and_nothing_secret_is_recorded(
    mode: str,
) -> None:
    """An IDNA host, credentials, a query and a fragment, to a custom adapter: the adapter sees
    the request the client built (Authorization from the credentials kept) plus a traceparent
    naming the CLIENT span; ``url.full`` is the URL, its credentials written ``REDACTED`` and
    its fragment kept (HTTP semantic conventions)."""
    adapter = RecordingAdapter()
    with traced(mode) as cap, tracer().start_as_current_span("parent"):
        with requests.Session() as session:
            session.mount("http://", adapter)
            response = session.get(URL)
        (span,) = client_spans(cap)
    (sent,) = adapter.requests
    assert (200, b"mounted") == (response.status_code, response.content)
    assert sent.url.startswith(SENT)
    assert "Basic dXNlcjpzM2NyQHQ=" == sent.headers["Authorization"]  # user:s3cr@t
    assert span.span_id.hex() == parse(sent.headers["traceparent"])[1]
    recorded = attributes(span)
    assert (RECORDED, "xn--bcher-kva.example", 8443) == (
        recorded["url.full"],
        recorded["server.address"],
        recorded["server.port"],
    )
    assert not [v for v in recorded.values() if "s3cr" in str(v)]


@pytest.mark.parametrize("asynchronous", [False, True], ids=["sync", "async"])
def test_an_httpx_mock_transport_gets_the_trace_headers_and_nothing_secret_is_recorded(
    mode: str, asynchronous: bool
) -> None:
    received: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        received.append(request)
        return httpx.Response(201, content=b"mocked", headers={"X-Mock": "1"})

    async def run() -> httpx.Response:
        async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
            return await client.get(URL)

    with traced(mode) as cap, tracer().start_as_current_span("parent"):
        if asynchronous:
            response = asyncio.run(run())
        else:
            with httpx.Client(transport=httpx.MockTransport(handler)) as client:
                response = client.get(URL)
        (span,) = client_spans(cap)
    assert (201, b"mocked", "1") == (
        response.status_code,
        response.content,
        response.headers["x-mock"],
    )
    (request,) = received
    assert span.span_id.hex() == parse(request.headers["traceparent"])[1]
    assert 1 == len(request.headers.get_list("traceparent"))
    recorded = attributes(span)
    assert (RECORDED, 201) == (recorded["url.full"], recorded["http.response.status_code"])
    assert not [v for v in recorded.values() if "s3cr" in str(v)]


def test_a_server_on_the_ipv6_loopback(mode: str) -> None:
    with (
        _serve(V6LoopbackServer, "[::1]") as v6,
        traced(mode) as cap,
        tracer().start_as_current_span("parent"),
    ):
        assert 200 == requests.get(v6.url("/x?a=1"), timeout=TIMEOUT).status_code
        assert 200 == httpx.get(v6.url("/x?a=1"), timeout=TIMEOUT).status_code
        spans = client_spans(cap)
    port = int(v6.base.rsplit(":", 1)[1])
    assert [span.span_id.hex() for span in spans] == [parse(s.traceparent[0])[1] for s in v6.seen]
    for span in spans:
        recorded = attributes(span)
        assert (f"http://[::1]:{port}/x?a=1", "::1", port, 200) == (
            recorded["url.full"],
            recorded["server.address"],
            recorded["server.port"],
            recorded["http.response.status_code"],
        )


class _UnixHTTPServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True


def test_httpx_over_a_unix_socket(mode: str) -> None:
    state = Server()
    directory = tempfile.mkdtemp(prefix="obx", dir="/tmp")  # short: sun_path is 108 bytes
    path = os.path.join(directory, "s")
    httpd = _UnixHTTPServer(path, _make_handler(state))
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()

    async def run() -> int:
        transport = httpx.AsyncHTTPTransport(uds=path)
        async with httpx.AsyncClient(transport=transport, timeout=TIMEOUT) as client:
            return (await client.get("http://localhost/x")).status_code

    try:
        with traced(mode) as cap, tracer().start_as_current_span("parent"):
            transport = httpx.HTTPTransport(uds=path)
            with httpx.Client(transport=transport, timeout=TIMEOUT) as client:
                assert 200 == client.get("http://localhost/x").status_code
            assert 200 == asyncio.run(run())
            spans = client_spans(cap)
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(TIMEOUT)
        shutil.rmtree(directory, ignore_errors=True)
    assert [s.span_id.hex() for s in spans] == [parse(s.traceparent[0])[1] for s in state.seen]
    assert [("http://localhost/x", "localhost", 200)] * 2 == [
        (a["url.full"], a["server.address"], a["http.response.status_code"])
        for a in map(attributes, spans)
    ]


def test_client_level_trace_headers_are_replaced_per_request_and_the_client_left_alone(
    server: Server, mode: str
) -> None:
    """A ``requests.Session`` and an ``httpx.Client`` with their own ``TraceParent`` (and a
    ``BAGGAGE`` the context has nothing to replace): each request goes out with exactly one
    traceparent, obskit's, and the caller's baggage; the client's own headers are unchanged."""
    own = {"TraceParent": f"00-{T}-{P}-01", "BAGGAGE": "tenant=acme", "X-Own": "1"}
    with traced(mode) as cap, tracer().start_as_current_span("parent"):
        with requests.Session() as session:
            session.headers.update(own)
            session.get(server.url(), timeout=TIMEOUT)
            session_headers = dict(session.headers)
        with httpx.Client(headers=own, timeout=TIMEOUT) as client:
            client.get(server.url(), headers=[("traceparent", f"00-{T}-{P}-00")])
            client_headers = dict(client.headers)
        spans = client_spans(cap)
    assert own.items() <= session_headers.items()
    assert "traceparent" not in {k.lower() for k in session_headers if k != "TraceParent"}
    assert {k.lower(): v for k, v in own.items()}.items() <= client_headers.items()
    assert [s.span_id.hex() for s in spans] == [
        parse(value)[1] for seen in server.seen for value in seen.traceparent
    ]
    assert [(["tenant=acme"], "1")] * 2 == [(s.baggage, s.other["x-own"]) for s in server.seen]


def test_a_prepared_request_sent_twice_gets_two_spans_and_two_traceparents(
    server: Server, mode: str
) -> None:
    with traced(mode) as cap, tracer().start_as_current_span("parent"):
        with requests.Session() as session:
            prepared = session.prepare_request(requests.Request("GET", server.url()))
            session.send(prepared, timeout=TIMEOUT)
            session.send(prepared, timeout=TIMEOUT)
        with httpx.Client(timeout=TIMEOUT) as client:
            built = client.build_request("GET", server.url())
            client.send(built)
            client.send(built)
        spans = client_spans(cap)
    assert 4 == len({span.span_id for span in spans})
    assert [s.span_id.hex() for s in spans] == [parse(s.traceparent[0])[1] for s in server.seen]
    assert [1] * 4 == [len(s.traceparent) for s in server.seen]


def test_invalid_urls_fail_as_without_obskit(mode: str) -> None:
    """Odd or invalid URLs: the caller gets exactly the error (or answer) it gets without
    obskit, and obskit counts no failure of its own (tests raise them)."""
    urls = [
        "http://",
        "http://[::1/x",
        "http://[v1.fe]/x",
        "ftp://127.0.0.1/x",
        "unknown-scheme://host/x",
        "http://127.0.0.1:80:80/x",
        "http://\u2100.example/x",
    ]

    def run_all() -> list[tuple[Any, ...]]:
        results = []
        for url in urls:
            results.append(outcome(lambda u=url: requests.get(u, timeout=0.5).status_code))
            results.append(outcome(lambda u=url: httpx.get(u, timeout=0.5).status_code))
        return results

    baseline = run_all()
    with traced(mode), tracer().start_as_current_span("parent") as parent:
        got = run_all()
        assert parent is trace.get_current_span()
    assert baseline == got
    assert all("raised" == result[0] for result in got)


# == sampling, traces off, context carriers ====================================================


def _hook_recording(url: str, recording: list[bool]) -> None:
    def hook(request: Any) -> None:
        recording.append(trace.get_current_span().is_recording())

    with httpx.Client(timeout=TIMEOUT, event_hooks={"request": [hook]}) as client:
        client.get(url)


@pytest.mark.parametrize("sampled", [True, False], ids=["sampled", "unsampled"])
def test_the_downstream_flags_follow_the_decision_and_an_unsampled_call_is_not_exported(
    server: Server, mode: str, sampled: bool
) -> None:
    """Under a remote parent, sampled or not: the traceparent keeps the trace id, names a new
    span and carries the parent's sampled flag. Unsampled, the CLIENT span is not exported, and
    it is not even recorded with lean spans (with ``keep_whole_trace`` it is recorded but not
    sampled, as docs/sampling.md says)."""
    flags = TraceFlags(TraceFlags.SAMPLED if sampled else TraceFlags.DEFAULT)
    remote = SpanContext(int(T, 16), int(P, 16), is_remote=True, trace_flags=flags)
    recording: list[bool] = []
    with traced(mode) as cap:
        token = otel_context.attach(trace.set_span_in_context(NonRecordingSpan(remote)))
        try:
            requests.get(server.url(), timeout=TIMEOUT)
            _hook_recording(server.url(), recording)
        finally:
            otel_context.detach(token)
        spans = client_spans(cap)
    sent = [parse(value) for s in server.seen for value in s.traceparent]
    assert 2 == len(sent)
    for trace_id, parent_id, got_flags in sent:
        assert (T, True, int(sampled)) == (trace_id, parent_id != P, got_flags & 1)
    assert (2 if sampled else 0) == len(spans)
    assert [sampled or mode == "sdk"] == recording


def test_a_new_trace_the_sampler_drops_sends_an_unsampled_traceparent(
    server: Server, mode: str
) -> None:
    recording: list[bool] = []
    with traced(mode, sampler="traceidratio", sampler_arg=0.0) as cap:
        _hook_recording(server.url(), recording)
        spans = client_spans(cap)
    (seen,) = server.seen
    (value,) = seen.traceparent
    assert 0 == parse(value)[2] & 1
    assert [] == spans
    assert [mode == "sdk"] == recording


def test_traces_off_forwards_the_incoming_context_unchanged_on_every_hop(
    server: Server, other: Server
) -> None:
    """``traces_exporter="none"``: inside a request that came with traceparent, tracestate and
    baggage, every outbound request -- each redirect hop, each client -- forwards them as they
    came, and no traceparent is invented for a call made outside any request."""
    from obskit.wsgi import ObskitMiddleware

    incoming = f"00-{T}-{P}-01"
    state = "rojo=00f067aa0ba902b7,congo=t61rcWkgMzE"
    target = urllib.parse.quote(other.url("/x"), safe="")
    hop = server.url(f"/hop/307?to={target}")

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        requests.get(hop, timeout=TIMEOUT)
        httpx.get(hop, timeout=TIMEOUT, follow_redirects=True)
        httpx_async_call("GET", hop)
        start_response("200 OK", [])
        return [b""]

    obskit.configure(service_name="off", traces_exporter="none")
    environ = {
        "REQUEST_METHOD": "GET",
        "PATH_INFO": "/",
        "wsgi.url_scheme": "http",
        "HTTP_TRACEPARENT": incoming,
        "HTTP_TRACESTATE": state,
        "HTTP_BAGGAGE": "tenant=acme",
    }
    list(ObskitMiddleware(app)(environ, lambda *args: None))
    requests.get(server.url("/outside"), timeout=TIMEOUT)
    hops = server.seen[:-1] + other.seen
    assert 6 == len(hops)
    assert [([incoming], [state], ["tenant=acme"])] * 6 == [
        (s.traceparent, s.tracestate, s.baggage) for s in hops
    ]
    assert ("/outside", [], []) == (
        server.seen[-1].path,
        server.seen[-1].traceparent,
        server.seen[-1].tracestate,
    )


# A bug a review found, since fixed (2026-11-25): under OTEL_SDK_DISABLED=true configure()
# returned before it hooked requests and httpx, so a service forwarded no traceparent at all and
# the trace broke there, where docs/tracing.md "Traces off" says it forwards the incoming one.
# In a child process: the hooks, once installed by any earlier test, stay for the process.
@pytest.mark.parametrize("off", ["traces_exporter='none'", "disabled=True"])
def test_traces_off_forwards_the_incoming_context_in_a_fresh_process(
    off: str, server: Server
) -> None:
    script = f"""
import httpx, requests, obskit
from obskit.wsgi import ObskitMiddleware
obskit.configure(service_name="off", {off})
def app(environ, start_response):
    requests.get({server.url("/requests")!r}, timeout=10)
    httpx.get({server.url("/httpx")!r}, timeout=10)
    start_response("200 OK", [])
    return [b""]
environ = {{"REQUEST_METHOD": "GET", "PATH_INFO": "/", "wsgi.url_scheme": "http",
           "HTTP_TRACEPARENT": "00-{T}-{P}-01", "HTTP_TRACESTATE": "congo=t61rcWkgMzE"}}
list(ObskitMiddleware(app)(environ, lambda *args: None))
"""
    run_python(script)
    assert [
        ("/requests", [f"00-{T}-{P}-01"], ["congo=t61rcWkgMzE"]),
        ("/httpx", [f"00-{T}-{P}-01"], ["congo=t61rcWkgMzE"]),
    ] == [(s.path, s.traceparent, s.tracestate) for s in server.seen]


def test_traced_calls_from_concurrent_threads_and_asyncio_tasks_keep_their_own_trace(
    server: Server, mode: str
) -> None:
    """8 threads sharing one ``requests.Session`` and 16 tasks sharing one ``AsyncClient``,
    each call under its own span (and one plain thread with no context at all): every request
    the server got names the CLIENT span of its own caller's trace."""
    parents: dict[str, tuple[str, str]] = {}
    lock = threading.Lock()
    barrier = threading.Barrier(8)

    def in_thread(i: int, session: requests.Session) -> None:
        barrier.wait(TIMEOUT)
        with tracer().start_as_current_span(f"thread-{i}") as span:
            with lock:
                parents[f"/t{i}"] = hex_ids(span)
            session.get(server.url(f"/t{i}"), timeout=TIMEOUT)
        assert not trace.get_current_span().get_span_context().is_valid

    async def in_task(i: int, client: httpx.AsyncClient) -> None:
        with tracer().start_as_current_span(f"task-{i}") as span:
            parents[f"/a{i}"] = hex_ids(span)
            await asyncio.sleep(0)
            await client.get(server.url(f"/a{i}"))
            assert span is trace.get_current_span()

    async def tasks() -> None:
        async with httpx.AsyncClient(timeout=TIMEOUT) as client:
            await asyncio.gather(*(in_task(i, client) for i in range(16)))

    with traced(mode) as cap:
        with requests.Session() as session:
            threads = [threading.Thread(target=in_thread, args=(i, session)) for i in range(8)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(TIMEOUT)
        asyncio.run(tasks())
        bare = threading.Thread(target=lambda: requests.get(server.url("/bare"), timeout=TIMEOUT))
        bare.start()
        bare.join(TIMEOUT)
        spans = {span.span_id.hex(): span for span in client_spans(cap)}
    assert 25 == len(server.seen) == len(spans)
    for seen in server.seen:
        (value,) = seen.traceparent
        trace_id, parent_id, _ = parse(value)
        span = spans[parent_id]
        assert trace_id == span.trace_id.hex()
        if seen.path == "/bare":
            assert b"" == span.parent_span_id  # a root: a new trace
            assert trace_id not in {t for t, _ in parents.values()}
        else:
            assert parents[seen.path] == (trace_id, span.parent_span_id.hex())


async def test_context_executor_map_and_obskit_run_in_executor_keep_the_callers_trace(
    server: Server, mode: str
) -> None:
    with traced(mode) as cap:
        with tracer().start_as_current_span("parent") as parent:
            with obskit.ContextExecutor(max_workers=4) as pool:
                urls = [server.url(f"/m{i}") for i in range(6)]
                codes = list(pool.map(lambda u: requests.get(u, timeout=TIMEOUT).status_code, urls))
            codes.append(
                await obskit.run_in_executor(
                    None, lambda: httpx.get(server.url("/r"), timeout=TIMEOUT).status_code
                )
            )
        spans = client_spans(cap)
    assert [200] * 7 == codes
    trace_id, parent_id = hex_ids(parent)
    assert 7 == len(spans)
    assert {(trace_id, parent_id)} == {(s.trace_id.hex(), s.parent_span_id.hex()) for s in spans}


# == baggage ===================================================================================

_MEMBER = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+=[\x21\x23-\x2b\x2d-\x3a\x3c-\x5b\x5d-\x7e]*")


def test_hostile_baggage_and_too_many_members_go_out_as_one_well_formed_header(
    server: Server, mode: str
) -> None:
    """Values with CR LF, commas, semicolons, quotes and non-ASCII text, keys that are not tokens
    (one with CR LF), 205 members: every request still goes out (no header injection, no
    error) with exactly one baggage header, well-formed, each value decoding to what was set,
    cut to 180 members by whole entries from the left; what was left out is counted."""
    ctx = otel_context.get_current()
    hostile = {
        "crlf": "a\r\nX-Injected: 1",
        "punct": 'a b,c;d="e"\\',
        "text": "\u2603\u00e9\U0001f600",
        "bad key": "v",
        "k\r\nX-Evil": "v",
    }
    for key, value in hostile.items():
        ctx = baggage.set_baggage(key, value, ctx)
    for i in range(200):
        ctx = baggage.set_baggage(f"m{i}", str(i), ctx)
    with traced(mode):
        token = otel_context.attach(ctx)
        try:
            statuses = [CALLS[name]("GET", server.url())[0] for name in CALLS]
        finally:
            otel_context.detach(token)
    assert [200] * 3 == statuses
    for seen in server.seen:
        assert "x-injected" not in seen.other
        assert "x-evil" not in seen.other
        (header,) = seen.baggage
        members = header.split(",")
        assert len(header.encode()) <= 8192
        assert [] == [m for m in members if not _MEMBER.fullmatch(m)]
        decoded = dict(m.split("=", 1) for m in members)
        # whole entries from the left, up to 180 members: the 3 valid hostile ones, m0..m176
        assert ["crlf", "punct", "text"] + [f"m{i}" for i in range(177)] == list(decoded)
        for key in ("crlf", "punct", "text"):
            assert hostile[key] == urllib.parse.unquote(decoded[key])
    labels = {"header": "baggage"}
    counted = [
        get_sample_value("obskit_propagation_invalid_total", {**labels, "reason": reason})
        for reason in ("member", "members")
    ]
    assert [6.0, 3.0] == counted  # two bad keys and one cut, per request


# == several instrumentations ==================================================================


def test_suppress_instrumentation_leaves_the_request_untouched(server: Server, mode: str) -> None:
    """OpenTelemetry's ``suppress_instrumentation()`` (what exporters and SDK internals use):
    no CLIENT span and no header."""
    with traced(mode) as cap, tracer().start_as_current_span("parent"):
        with suppress_instrumentation():
            requests.get(server.url(), timeout=TIMEOUT)
            httpx.get(server.url(), timeout=TIMEOUT)
        spans = client_spans(cap)
    assert [] == spans
    assert [[], []] == [s.traceparent for s in server.seen]


def test_repeated_configure_and_reset_keep_a_single_wrapper_layer(server: Server) -> None:
    for _ in range(3):
        with capture(service_name="cycle"):
            pass
        testing.reset()
    for cls in (requests.Session, httpx.Client, httpx.AsyncClient):
        method = cls.__dict__["send"]
        assert isinstance(method, wrapt.FunctionWrapper)
        assert not isinstance(method.__wrapped__, wrapt.ObjectProxy)
    with capture(service_name="cycle") as cap, tracer().start_as_current_span("parent"):
        requests.get(server.url(), timeout=TIMEOUT)
        httpx.get(server.url(), timeout=TIMEOUT)
        assert 2 == len(client_spans(cap))
    assert [1, 1] == [len(s.traceparent) for s in server.seen]


class RaisingPropagator:
    """A vendor propagator (``OTEL_PROPAGATORS=<vendor>``) whose inject fails."""

    fields = frozenset({"x-vendor"})

    def inject(self, carrier: Any, context: Any = None, setter: Any = None) -> None:
        raise RuntimeError("vendor propagator failed")

    def extract(self, carrier: Any, context: Any = None, getter: Any = None) -> Any:
        return context


def test_a_failing_propagator_is_counted_warned_once_and_the_requests_still_go_out(
    server: Server, mode: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """All three clients, the async one included: each answer reaches the caller, the
    caller's span is current again, obskit counts each failure and warns once."""
    monkeypatch.setattr(_state, "raise_internal_errors", False)  # as in production
    original = propagate.get_global_textmap()
    with traced(mode), tracer().start_as_current_span("parent") as parent:
        propagate.set_global_textmap(RaisingPropagator())  # type: ignore[arg-type]
        try:
            with caplog.at_level("WARNING", logger="obskit"):
                statuses = [CALLS[name]("GET", server.url())[0] for name in CALLS]
        finally:
            propagate.set_global_textmap(original)
        assert parent is trace.get_current_span()
    assert [200] * 3 == statuses
    assert 3.0 == internal_errors("outbound_start")
    warnings = [r for r in caplog.records if "outbound_start" in r.getMessage()]
    assert 1 == len(warnings)


def _contrib_style(send: Callable[[str, dict[str, str]], Any], url: str) -> None:
    """What OpenTelemetry's contrib ``requests``/``httpx`` instrumentation does around the send
    it wraps: its own CLIENT span, its traceparent, then the send under
    ``suppress_http_instrumentation()`` so no other HTTP instrumentation traces it again."""
    with tracer().start_as_current_span("GET", kind=SpanKind.CLIENT):
        headers: dict[str, str] = {}
        propagate.inject(headers)
        with suppress_http_instrumentation():
            send(url, headers)


SENDERS: dict[str, Callable[[str, dict[str, str]], Any]] = {
    "requests": lambda url, headers: requests.get(url, headers=headers, timeout=TIMEOUT),
    "httpx": lambda url, headers: httpx.get(url, headers=headers, timeout=TIMEOUT),
}


# A bug this test found, since fixed: outbound._start honours only _SUPPRESS_INSTRUMENTATION_KEY,
# not the suppress_http_instrumentation key OpenTelemetry's contrib HTTP instrumentations set around
# a send they already traced: a second CLIENT span, and the outer one's traceparent overwritten
@pytest.mark.parametrize("sender", list(SENDERS))
def test_a_send_another_instrumentation_already_traces_gets_no_second_client_span(
    server: Server, mode: str, sender: str
) -> None:
    with traced(mode) as cap, tracer().start_as_current_span("parent"):
        _contrib_style(SENDERS[sender], server.url())
        spans = client_spans(cap)
    (outer,) = spans  # the contrib instrumentation's span only
    (seen,) = server.seen
    assert [outer.span_id.hex()] == [parse(value)[1] for value in seen.traceparent]


# A bug this test found, since fixed: outbound._sync_send/_async_send call the client's send without
# suppress_http_instrumentation(), so OpenTelemetry's contrib instrumentations below it (urllib3
# under requests; httpx's, which wraps the transport's handle_request) add a duplicate CLIENT span
def test_the_transport_below_a_traced_send_runs_with_http_instrumentation_suppressed(
    mode: str,
) -> None:
    adapter = RecordingAdapter()
    beneath: list[bool] = []

    def handler(request: httpx.Request) -> httpx.Response:
        beneath.append(is_http_instrumentation_enabled())
        return httpx.Response(200)

    with traced(mode) as cap, tracer().start_as_current_span("parent"):
        with requests.Session() as session:
            session.mount("http://", adapter)
            session.get("http://service.internal/x")
        with httpx.Client(transport=httpx.MockTransport(handler)) as client:
            client.get("http://service.internal/x")
        assert 2 == len(client_spans(cap))
    assert [False, False] == adapter.http_instrumentation + beneath


# == bugs ======================================================================================


# A bug this test found, since fixed: outbound._full_url records the query string verbatim:
# presigned-URL signatures (AWSAccessKeyId, Signature, sig, X-Goog-Signature) end up in exported
# url.full; semconv says to redact their values as REDACTED
@pytest.mark.parametrize("key", ["AWSAccessKeyId", "Signature", "sig", "X-Goog-Signature"])
def test_signed_url_query_values_are_redacted_in_url_full(
    server: Server, mode: str, key: str
) -> None:
    secret = "Zm9vYmFyc2VjcmV0"
    query = f"/x?a=1&{key}={secret}&Expires=9"
    with traced(mode) as cap, tracer().start_as_current_span("parent"):
        requests.get(server.url(query), timeout=TIMEOUT)
        (span,) = client_spans(cap)
    assert query == server.seen[0].path  # the request itself is unchanged
    assert server.url(f"/x?a=1&{key}=REDACTED&Expires=9") == attributes(span)["url.full"]


# A bug this test found, since fixed: outbound._start records http.request.method _OTHER for an
# unknown method without http.request.method_original (the SERVER span sets it; semconv says SHOULD)
def test_an_unknown_method_keeps_its_original_name(server: Server, mode: str) -> None:
    with traced(mode) as cap, tracer().start_as_current_span("parent"):
        requests.request("PURGE", server.url(), timeout=TIMEOUT)
        httpx.request("PURGE", server.url(), timeout=TIMEOUT)
        spans = client_spans(cap)
    assert ["PURGE", "PURGE"] == [s.method for s in server.seen]
    assert [("HTTP", "_OTHER", "PURGE")] * 2 == [
        (
            s.name,
            attributes(s)["http.request.method"],
            attributes(s).get("http.request.method_original"),
        )
        for s in spans
    ]


# A bug this test found, since fixed: outbound._inject replaces the caller's traceparent but
# propagate.inject writes no tracestate for an empty trace state, so the caller's tracestate of
# another trace goes out paired with obskit's traceparent
@pytest.mark.parametrize("sender", list(SENDERS))
def test_a_callers_tracestate_does_not_ride_on_obskits_traceparent(
    server: Server, mode: str, sender: str
) -> None:
    theirs = {"TraceParent": f"00-{T}-{P}-01", "TraceState": "vendor=of-their-trace"}
    with traced(mode), tracer().start_as_current_span("parent") as parent:
        SENDERS[sender](server.url(), theirs)
    (seen,) = server.seen
    (value,) = seen.traceparent
    assert hex_ids(parent)[0] == parse(value)[0]  # obskit's trace replaced theirs...
    assert [] == seen.tracestate  # ...so their trace's state must not go with it


# A bug this test found, since fixed: outbound._safe_end converts int(status) before _end's
# try/finally: a response whose status_code is not a number leaves the CLIENT span open and its
# context attached in the caller's code (later calls: no span, stale parent)
def test_a_non_numeric_status_code_leaves_no_client_span_current(
    server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_state, "raise_internal_errors", False)
    adapter = RecordingAdapter(status="200 OK")  # a test double, a hand-made Response
    with capture(service_name="odd") as cap, tracer().start_as_current_span("parent") as parent:
        with requests.Session() as session:
            session.mount("odd://", adapter)
            response = session.get("odd://service/x")
            current = trace.get_current_span()
            requests.get(server.url(), timeout=TIMEOUT)  # a call of its own, with a span
        spans = client_spans(cap)
    assert "200 OK" == response.status_code  # what the caller got is unchanged
    assert parent is current
    assert 2 == len(spans)  # both calls' spans ended and exported


# A bug this test found, since fixed: outbound._start reads urllib.parse's SplitResult.port, which
# raises for a port over 65535 that httpx accepts: the request goes out with no traceparent and no
# span, and an obskit internal error is counted and warned about
def test_a_port_httpx_accepts_but_urllib_parse_rejects_still_gets_a_span(
    mode: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_state, "raise_internal_errors", False)  # as in production
    received: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        received.append(request)
        return httpx.Response(200)

    with traced(mode) as cap, tracer().start_as_current_span("parent"):
        with httpx.Client(transport=httpx.MockTransport(handler)) as client:
            assert 200 == client.get("http://service.internal:99999/x").status_code
        spans = client_spans(cap)
    assert 0.0 == internal_errors("outbound_start")
    (span,) = spans
    (request,) = received
    assert span.span_id.hex() == parse(request.headers["traceparent"])[1]


class RendezvousAdapter(HTTPAdapter):
    """Two sends meet here before either reads its headers: what a slow connect does."""

    def __init__(self) -> None:
        super().__init__()
        self.barrier = threading.Barrier(2)
        self.lock = threading.Lock()
        self.sent: list[tuple[str, str]] = []  # (traceparent's parent id, current span id)

    def send(self, request: Any, *args: Any, **kwargs: Any) -> requests.Response:
        self.barrier.wait(TIMEOUT)
        with self.lock:
            self.sent.append((parse(request.headers["traceparent"])[1], _current_span_id()))
        response = requests.Response()
        response.status_code = 200
        response.request = request
        response._content = b""
        return response


def _current_span_id() -> str:
    return format(trace.get_current_span().get_span_context().span_id, "016x")


def _shared_by_two_threads() -> list[tuple[str, str]]:
    adapter = RendezvousAdapter()
    with requests.Session() as session:
        session.mount("http://", adapter)
        shared = session.prepare_request(requests.Request("GET", "http://svc.internal/"))

        def send() -> None:
            with tracer().start_as_current_span("caller"):
                session.send(shared)

        threads = [threading.Thread(target=send) for _ in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(TIMEOUT)
    return adapter.sent


def _shared_by_two_tasks() -> list[tuple[str, str]]:
    sent: list[tuple[str, str]] = []

    async def run() -> None:
        # Both sends are in flight before either is written (asyncio.Barrier is 3.11+).
        both, arrived = asyncio.Event(), []

        async def handler(request: httpx.Request) -> httpx.Response:
            arrived.append(request)
            if len(arrived) == 2:
                both.set()
            await both.wait()
            sent.append((parse(request.headers["traceparent"])[1], _current_span_id()))
            return httpx.Response(200)

        async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
            shared = client.build_request("GET", "http://svc.internal/")

            async def one() -> None:
                with tracer().start_as_current_span("caller"):
                    await client.send(shared)

            await asyncio.gather(one(), one())

    asyncio.run(run())
    return sent


# A bug this test found, since fixed: outbound._inject writes into the caller's request object in
# place: one PreparedRequest/httpx.Request sent from two threads or tasks at once goes out with the
# other call's traceparent (traces cross-linked), and a later re-send the hooks leave alone carries
# a stale one
@pytest.mark.parametrize(
    "send", [_shared_by_two_threads, _shared_by_two_tasks], ids=["requests", "httpx-async"]
)
def test_one_request_object_sent_concurrently_carries_each_calls_own_traceparent(
    mode: str, send: Callable[[], list[tuple[str, str]]]
) -> None:
    """Each send, as its transport gets it: the traceparent's parent id must be the CLIENT span
    current in that send."""
    with traced(mode) as cap:
        sent = send()
        assert 2 == len(client_spans(cap))
    assert 2 == len({current for _, current in sent})
    assert [current for _, current in sent] == [parent_id for parent_id, _ in sent]


# A bug this test found, since fixed: outbound._inject writes into the caller's request object in
# place: one PreparedRequest/httpx.Request sent from two threads or tasks at once goes out with the
# other call's traceparent (traces cross-linked), and a later re-send the hooks leave alone carries
# a stale one
def test_a_request_object_re_sent_untraced_carries_no_stale_traceparent(
    server: Server, mode: str
) -> None:
    with traced(mode) as cap, requests.Session() as session:
        prepared = session.prepare_request(requests.Request("GET", server.url()))
        with tracer().start_as_current_span("caller"):
            session.send(prepared, timeout=TIMEOUT)
        with suppress_instrumentation():  # the hooks leave this send alone
            session.send(prepared, timeout=TIMEOUT)
        assert 1 == len(client_spans(cap))
    assert [1, 0] == [len(s.traceparent) for s in server.seen]


class Unprintable(Exception):
    def __str__(self) -> str:
        raise RuntimeError("no text for this one")


# A bug the "sdk" case found, since fixed: outbound._end -- the SDK span's record_exception calls
# str(exc), which raises, and span.end() was skipped: the CLIENT span was never exported.
@pytest.mark.parametrize("which", ["lean", "sdk"])
def test_an_exception_that_cannot_be_printed_still_ends_the_client_span(
    monkeypatch: pytest.MonkeyPatch, which: str
) -> None:
    if which == "sdk":  # as in production: obskit's failure counted, not raised
        monkeypatch.setattr(_state, "raise_internal_errors", False)
    error = Unprintable()
    with traced(which) as cap, tracer().start_as_current_span("parent") as parent:
        with requests.Session() as session:
            session.mount("http://", AbortingAdapter(error))
            with pytest.raises(Unprintable) as caught:
                session.get("http://service.internal/x")
        assert parent is trace.get_current_span()
        spans = client_spans(cap)
    assert caught.value is error
    assert [(ERROR, f"{__name__}.Unprintable")] == [
        (s.status.code, attributes(s)["error.type"]) for s in spans
    ]


# A bug this test found, since fixed: outbound._sync_send starts a span and injects into anything
# with method/url/headers: Session.send(Request) (unprepared, which requests refuses) mutates the
# caller's Request.headers and exports an ERROR CLIENT span for a request never sent
def test_sending_an_unprepared_request_is_refused_as_without_obskit(
    server: Server, mode: str
) -> None:
    def send() -> requests.Request:
        unprepared = requests.Request("GET", server.url(), headers={"X-Own": "1"})
        with requests.Session() as session, pytest.raises(ValueError, match="PreparedRequests"):
            session.send(unprepared)  # type: ignore[arg-type]
        return unprepared

    assert {"X-Own": "1"} == send().headers
    with traced(mode) as cap, tracer().start_as_current_span("parent"):
        unprepared = send()
        spans = client_spans(cap)
    assert [] == server.seen
    assert {"X-Own": "1"} == unprepared.headers
    assert [] == spans
