"""Outbound HTTP: ``requests`` and ``httpx`` calls get a CLIENT span and inject ``traceparent``;
the trace context follows asyncio tasks and obskit's thread helpers, not a plain thread pool.

Every call goes to a tiny ``http.server`` on loopback that records the headers it received.
"""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import requests
from opentelemetry import trace
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

import obskit
from obskit import _state
from obskit.testing import Capture, capture
from tests.loopback import QuietHandler, serving
from tests.otlp_receiver import attributes

CLIENT = Span.SpanKind.SPAN_KIND_CLIENT
ERROR = Status.STATUS_CODE_ERROR
TIMEOUT = 5.0


@dataclass
class Seen:
    """One request as the server received it."""

    path: str
    headers: dict[str, str]


@dataclass
class Server:
    """The loopback server: its port and what it received."""

    port: int
    seen: list[Seen] = field(default_factory=list)

    def url(self, path: str = "/x") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def traceparent(self) -> tuple[str, str, str]:
        """``(trace id, parent id, sampled)`` of the one request's ``traceparent``."""
        (request,) = self.seen
        return parse_traceparent(request.headers["traceparent"])


def parse_traceparent(value: str) -> tuple[str, str, str]:
    """``(trace id, parent id, "sampled" or "unsampled")`` of a version-00 ``traceparent``."""
    version, trace_id, parent_id, flags = value.split("-")
    assert ("00", 2) == (version, len(flags))
    # Only bit 0 (sampled) is asserted: OpenTelemetry may also set the level-2 "random" bit.
    return trace_id, parent_id, "sampled" if int(flags, 16) & 1 else "unsampled"


@pytest.fixture
def server() -> Iterator[Server]:
    """An HTTP server on loopback: ``/status/<code>`` answers ``code``, anything else 200."""
    state = Server(port=0)

    class Handler(QuietHandler):
        def do_GET(self) -> None:
            state.seen.append(Seen(self.path, {k.lower(): v for k, v in self.headers.items()}))
            code = int(self.path.rsplit("/", 1)[1]) if self.path.startswith("/status/") else 200
            body = b"ok"
            self.send_response(code)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    with serving(Handler) as state.port:
        yield state


@pytest.fixture(params=["lean span", "sdk tracer"])
def cap(request: pytest.FixtureRequest) -> Iterator[Capture]:
    """obskit configured with an in-memory span sink. CLIENT spans are lean spans on obskit's own
    pipeline, or the SDK tracer's with ``keep_whole_trace``: every test runs with both."""
    sdk = request.param == "sdk tracer"
    with capture(service_name="outbound-test", keep_whole_trace=sdk) as captured:
        assert _state.runtime is not None
        assert sdk != _state.runtime.lean_spans
        yield captured


def closed_port() -> int:
    """A loopback port nobody listens on: connecting is refused."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _requests_get(url: str) -> int:
    return requests.get(url, timeout=TIMEOUT).status_code


def _requests_session(url: str) -> int:
    with requests.Session() as session:
        return session.get(url, timeout=TIMEOUT).status_code


def _httpx_get(url: str) -> int:
    return httpx.get(url, timeout=TIMEOUT).status_code


def _httpx_client(url: str) -> int:
    with httpx.Client(timeout=TIMEOUT) as client:
        return client.get(url).status_code


async def _httpx_async(url: str) -> int:
    async with httpx.AsyncClient(timeout=TIMEOUT) as client:
        response = await client.get(url)
        return response.status_code


def _httpx_async_client(url: str) -> int:
    # asyncio.run's main task starts from a copy of the current context (the parent span).
    return asyncio.run(_httpx_async(url))


CLIENTS: dict[str, Callable[[str], int]] = {
    "requests.get": _requests_get,
    "requests.Session": _requests_session,
    "httpx.get": _httpx_get,
    "httpx.Client": _httpx_client,
    "httpx.AsyncClient": _httpx_async_client,
}


@pytest.fixture(params=list(CLIENTS))
def fetch(request: pytest.FixtureRequest) -> Callable[[str], int]:
    """GET a URL with one of the instrumented clients; returns the status code."""
    return CLIENTS[request.param]


def tracer() -> trace.Tracer:
    return obskit.tracer_provider().get_tracer("test")


def client_span(cap: Capture) -> Any:
    """The one CLIENT span captured."""
    spans = [span for span in cap.spans() if CLIENT == span.kind]
    assert 1 == len(spans), spans
    return spans[0]


def ids(span_context: trace.SpanContext) -> tuple[bytes, bytes]:
    """``(trace_id, span_id)`` of a live span, as the proto encodes them."""
    return span_context.trace_id.to_bytes(16, "big"), span_context.span_id.to_bytes(8, "big")


def test_client_span_is_child_of_current_span(
    cap: Capture, server: Server, fetch: Callable[[str], int]
) -> None:
    """One CLIENT span, child of the current span, with the HTTP client attributes."""
    with tracer().start_as_current_span("parent") as parent:
        assert 200 == fetch(server.url("/x?q=1"))
    trace_id, parent_id = ids(parent.get_span_context())
    span = client_span(cap)
    assert (trace_id, parent_id) == (span.trace_id, span.parent_span_id)
    assert "GET" == span.name
    assert {
        "http.request.method": "GET",
        "url.full": server.url("/x?q=1"),
        "server.address": "127.0.0.1",
        "server.port": server.port,
        "http.response.status_code": 200,
    } == attributes(span)
    assert Status.STATUS_CODE_UNSET == span.status.code


def test_traceparent_names_the_client_span(
    cap: Capture, server: Server, fetch: Callable[[str], int]
) -> None:
    """The server receives a traceparent whose parent id is the CLIENT span's id."""
    with tracer().start_as_current_span("parent"):
        fetch(server.url())
    span = client_span(cap)
    assert (span.trace_id.hex(), span.span_id.hex(), "sampled") == server.traceparent()


def test_credentials_are_not_recorded(
    cap: Capture, server: Server, fetch: Callable[[str], int]
) -> None:
    """``url.full`` of ``http://user:pass@host:port/x`` carries neither user nor password:
    they are written ``REDACTED:REDACTED@``, as the HTTP semantic conventions say."""
    with tracer().start_as_current_span("parent"):
        fetch(f"http://user:s3cret@127.0.0.1:{server.port}/x")
    recorded = attributes(client_span(cap))
    assert server.url("/x").replace("//", "//REDACTED:REDACTED@", 1) == recorded["url.full"]
    assert [] == [v for v in recorded.values() if "user" in str(v) or "s3cret" in str(v)]


def test_server_error_marks_span_as_error(
    cap: Capture, server: Server, fetch: Callable[[str], int]
) -> None:
    """A 500 answer makes the CLIENT span ERROR with ``error.type`` "500"."""
    with tracer().start_as_current_span("parent"):
        assert 500 == fetch(server.url("/status/500"))
    span = client_span(cap)
    recorded = attributes(span)
    assert (500, "500") == (recorded["http.response.status_code"], recorded["error.type"])
    assert ERROR == span.status.code


@pytest.fixture
def transport_errors(monkeypatch: pytest.MonkeyPatch) -> list[BaseException]:
    """Every exception the clients' transports raise, recorded where it is raised."""
    raised: list[BaseException] = []

    def recording(original: Callable[..., Any]) -> Callable[..., Any]:
        def send(*args: Any, **kwargs: Any) -> Any:
            try:
                return original(*args, **kwargs)
            except BaseException as exc:
                raised.append(exc)
                raise

        return send

    def recording_async(original: Callable[..., Any]) -> Callable[..., Any]:
        async def send(*args: Any, **kwargs: Any) -> Any:
            try:
                return await original(*args, **kwargs)
            except BaseException as exc:
                raised.append(exc)
                raise

        return send

    for cls, name in (
        (requests.adapters.HTTPAdapter, "send"),
        (httpx.HTTPTransport, "handle_request"),
    ):
        monkeypatch.setattr(cls, name, recording(getattr(cls, name)))
    original = httpx.AsyncHTTPTransport.handle_async_request
    monkeypatch.setattr(httpx.AsyncHTTPTransport, "handle_async_request", recording_async(original))
    return raised


def test_connection_refused_reaches_caller_unchanged(
    cap: Capture, fetch: Callable[[str], int], transport_errors: list[BaseException]
) -> None:
    """The client's own exception object reaches the caller; the span records it as an error."""
    refused = (requests.ConnectionError, httpx.ConnectError)
    with tracer().start_as_current_span("parent"), pytest.raises(refused) as caught:
        fetch(f"http://127.0.0.1:{closed_port()}/x")
    assert [caught.value] == transport_errors[-1:]  # the very object the transport raised
    assert caught.value is transport_errors[-1]
    span = client_span(cap)
    assert ERROR == span.status.code
    cls = type(caught.value)
    assert f"{cls.__module__}.{cls.__qualname__}" == attributes(span)["error.type"]
    (event,) = [event for event in span.events if "exception" == event.name]
    cls = type(caught.value)
    assert f"{cls.__module__}.{cls.__qualname__}" == attributes(event)["exception.type"]


def test_ipv6_literal_keeps_its_brackets(cap: Capture, fetch: Callable[[str], int]) -> None:
    """``url.full`` of an IPv6 literal is a valid URL (``[::1]``); ``server.address`` is bare."""
    port = closed_port()
    with pytest.raises((requests.ConnectionError, httpx.ConnectError)):
        fetch(f"http://[::1]:{port}/x")  # refused, or unreachable without IPv6: either way
    recorded = attributes(client_span(cap))
    assert (f"http://[::1]:{port}/x", "::1") == (recorded["url.full"], recorded["server.address"])


@pytest.mark.parametrize("state", ["never configured", "shut down", "traces off"])
def test_not_tracing_leaves_request_untouched(server: Server, tmp_path: Path, state: str) -> None:
    """Without a running span pipeline no header is added and the caller's own is kept."""
    if "shut down" == state:
        obskit.configure(service_name="s", traces_file=str(tmp_path / "t.jsonl"))
        obskit.shutdown()
    elif "traces off" == state:
        obskit.configure(service_name="s", traces_exporter="none")
    own = f"00-{'ab' * 16}-{'cd' * 8}-01"
    requests.get(server.url(), timeout=TIMEOUT)
    requests.get(server.url(), headers={"traceparent": own}, timeout=TIMEOUT)
    httpx.get(server.url(), timeout=TIMEOUT)
    httpx.get(server.url(), headers={"traceparent": own}, timeout=TIMEOUT)
    assert [None, own, None, own] == [seen.headers.get("traceparent") for seen in server.seen]


def test_without_current_span_a_new_trace_starts(
    cap: Capture, server: Server, fetch: Callable[[str], int]
) -> None:
    """With no span current, the CLIENT span is a root and the server gets its new trace id."""
    assert not trace.get_current_span().get_span_context().is_valid
    fetch(server.url())
    span = client_span(cap)
    assert (b"", 16) == (span.parent_span_id, len(span.trace_id))
    assert (span.trace_id.hex(), span.span_id.hex(), "sampled") == server.traceparent()


def test_inject_writes_traceparent(cap: Capture) -> None:
    """``obskit.inject({})`` writes the current span's traceparent."""
    headers: dict[str, str] = {}
    with tracer().start_as_current_span("parent") as parent:
        obskit.inject(headers)
    trace_id, span_id = ids(parent.get_span_context())
    assert (trace_id.hex(), span_id.hex(), "sampled") == parse_traceparent(headers["traceparent"])


def assert_child_of(parent: trace.Span, cap: Capture) -> None:
    trace_id, parent_id = ids(parent.get_span_context())
    span = client_span(cap)
    assert (trace_id, parent_id) == (span.trace_id, span.parent_span_id)


async def test_context_survives_asyncio_task(cap: Capture, server: Server) -> None:
    """An ``asyncio.create_task`` started inside a span makes its calls in the span's trace."""
    with tracer().start_as_current_span("parent") as parent:
        task = asyncio.create_task(_httpx_async(server.url()))
    assert 200 == await asyncio.wait_for(task, TIMEOUT)  # awaited after the span was left
    assert_child_of(parent, cap)


async def test_context_survives_run_in_executor(cap: Capture, server: Server) -> None:
    """``obskit.run_in_executor`` runs the function in the caller's trace."""
    with tracer().start_as_current_span("parent") as parent:
        status = await obskit.run_in_executor(None, _requests_get, server.url())
    assert 200 == status
    assert_child_of(parent, cap)


def test_context_survives_context_executor(cap: Capture, server: Server) -> None:
    """``obskit.ContextExecutor.submit`` runs the function in the submitter's trace."""
    with (
        obskit.ContextExecutor(max_workers=1) as pool,
        tracer().start_as_current_span("parent") as parent,
    ):
        assert 200 == pool.submit(_requests_get, server.url()).result(TIMEOUT)
    assert_child_of(parent, cap)


def test_context_survives_wrap_in_plain_thread(cap: Capture, server: Server) -> None:
    """``obskit.wrap`` binds a function to the current trace for a plain ``threading.Thread``."""
    statuses: list[int] = []

    def work() -> None:
        statuses.append(_requests_get(server.url()))

    with tracer().start_as_current_span("parent") as parent:
        worker = threading.Thread(target=obskit.wrap(work))
    worker.start()  # even started after the span was left
    worker.join(TIMEOUT)
    assert [200] == statuses
    assert_child_of(parent, cap)


def test_plain_thread_pool_loses_context(cap: Capture, server: Server) -> None:
    """A plain ``ThreadPoolExecutor`` does not carry the context: the call starts a new trace.

    Its worker threads run with their own empty context, which is why ``ContextExecutor``,
    ``run_in_executor`` and ``wrap`` exist.
    """
    with (
        ThreadPoolExecutor(max_workers=1) as pool,
        tracer().start_as_current_span("parent") as parent,
    ):
        assert 200 == pool.submit(_requests_get, server.url()).result(TIMEOUT)
    trace_id, _ = ids(parent.get_span_context())
    span = client_span(cap)
    assert b"" == span.parent_span_id
    assert trace_id != span.trace_id


async def test_plain_run_in_executor_loses_context(cap: Capture, server: Server) -> None:
    """``loop.run_in_executor`` (unlike ``obskit.run_in_executor``) starts a new trace."""
    loop = asyncio.get_running_loop()
    with tracer().start_as_current_span("parent") as parent:
        assert 200 == await loop.run_in_executor(None, _requests_get, server.url())
    trace_id, _ = ids(parent.get_span_context())
    span = client_span(cap)
    assert (b"", True) == (span.parent_span_id, trace_id != span.trace_id)


def test_traces_off_forwards_the_incoming_trace_context_unchanged() -> None:
    """With traces off, a request's incoming traceparent reaches downstream calls unchanged."""
    from obskit.wsgi import ObskitMiddleware

    incoming = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    seen: dict[str, str] = {}

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        obskit.inject(seen)
        start_response("200 OK", [])
        return [b""]

    obskit.configure(traces_exporter="none")
    wrapped = ObskitMiddleware(app)
    environ = {"REQUEST_METHOD": "GET", "PATH_INFO": "/", "HTTP_TRACEPARENT": incoming}
    list(wrapped(environ, lambda *args: None))
    assert incoming == seen["traceparent"]


@pytest.mark.parametrize("library", ["requests", "httpx"])
def test_client_spans_name_the_methods_of_http_known_methods(server: Server, library: str) -> None:
    """``http_known_methods`` (``OTEL_INSTRUMENTATION_HTTP_KNOWN_METHODS``) decides what CLIENT
    spans name too, as the HTTP semantic conventions say of every HTTP span: a method it lists
    is named, any other is ``_OTHER`` with ``http.request.method_original``."""
    send = requests.request if library == "requests" else httpx.request
    with capture(service_name="outbound-test", http_known_methods="GET,PROPFIND") as cap:
        with tracer().start_as_current_span("parent"):
            for method in ("PROPFIND", "PUT", "GET"):
                send(method, server.url(), timeout=TIMEOUT)
        assert True is obskit.force_flush(5.0)
        spans = [span for span in cap.spans() if CLIENT == span.kind]
    assert [
        ("PROPFIND", "PROPFIND", None),
        ("HTTP", "_OTHER", "PUT"),
        ("GET", "GET", None),
    ] == [
        (
            span.name,
            attributes(span)["http.request.method"],
            attributes(span).get("http.request.method_original"),
        )
        for span in spans
    ]
