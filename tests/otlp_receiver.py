"""In-test OTLP receivers that speak the real protocols, plus fault servers for export tests.

``OtlpGrpcReceiver`` is a grpcio server implementing the OTLP Trace, Metrics and Logs services;
``OtlpHttpReceiver`` is a stdlib HTTP server accepting ``POST /v1/traces|metrics|logs``
(``application/x-protobuf``, optionally gzip-encoded). Both decode what they receive with
opentelemetry-proto's generated classes -- an independent decoder of obskit's hand-written
encoding -- and keep the accepted requests thread-safely::

    with OtlpHttpReceiver() as rx:
        obskit.configure(otlp_endpoint=rx.endpoint, otlp_protocol=rx.protocol)
        ...
        spans = rx.wait_for_spans(2, timeout=5)

Both can be told to fail the next N export calls (``fail_next``) to exercise retries. Every call,
accepted or not, is recorded in ``attempts`` with its headers (HTTP) or metadata (gRPC).

Fault helpers: :func:`closed_port` (connections are refused), :class:`HangingServer` (accepts
connections, reads what is sent and never answers) and :class:`RawCollector` (decodes each
OTLP/HTTP request and answers the raw bytes a test gives, :func:`http_answer` or worse).
Everything binds to 127.0.0.1 on an ephemeral port, runs on daemon threads and stops within a
couple of seconds.
"""

from __future__ import annotations

import gzip
import selectors
import socket
import struct
import threading
import time
from collections.abc import Callable
from concurrent import futures
from http.server import BaseHTTPRequestHandler
from types import TracebackType
from typing import Any, NamedTuple

import grpc
from google.protobuf.message import DecodeError, Message
from google.rpc import error_details_pb2, status_pb2
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2, logs_service_pb2_grpc
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2, metrics_service_pb2_grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from tests.loopback import LoopbackServer

__all__ = [
    "Attempt",
    "HangingServer",
    "OtlpGrpcReceiver",
    "OtlpHttpReceiver",
    "ReceivedSpan",
    "attributes_dict",
    "closed_port",
    "python_value",
]

LOOPBACK = "127.0.0.1"

# signal -> (request class, response class)
_MESSAGES: dict[str, tuple[type[Message], type[Message]]] = {
    "traces": (
        trace_service_pb2.ExportTraceServiceRequest,
        trace_service_pb2.ExportTraceServiceResponse,
    ),
    "metrics": (
        metrics_service_pb2.ExportMetricsServiceRequest,
        metrics_service_pb2.ExportMetricsServiceResponse,
    ),
    "logs": (
        logs_service_pb2.ExportLogsServiceRequest,
        logs_service_pb2.ExportLogsServiceResponse,
    ),
}


# -- decoding helpers --------------------------------------------------------------------------


def python_value(value: AnyValue) -> Any:
    """An OTLP ``AnyValue`` as the Python value it carries (arrays as lists, kvlists as dicts)."""
    kind = value.WhichOneof("value")
    if kind is None:
        return None
    if kind == "array_value":
        return [python_value(v) for v in value.array_value.values]
    if kind == "kvlist_value":
        return attributes_dict(value.kvlist_value.values)
    return getattr(value, kind)


def attributes_dict(attributes: Any) -> dict[str, Any]:
    """A repeated ``KeyValue`` field as a plain dict."""
    result: dict[str, Any] = {}
    kv: KeyValue
    for kv in attributes:
        result[kv.key] = python_value(kv.value)
    return result


def attributes(message: Any) -> dict[str, Any]:
    """A span's, event's, link's or resource's attributes as a plain dict."""
    return attributes_dict(message.attributes)


class ReceivedSpan(NamedTuple):
    """One span as received: its resource's attributes, its scope's name, the ``Span`` message."""

    resource: dict[str, Any]
    scope: str
    span: Span


class Attempt(NamedTuple):
    """One export call: the signal, the request headers (HTTP) or metadata (gRPC), the answer."""

    signal: str
    headers: dict[str, str]
    status: Any  # HTTP status code (int) or grpc.StatusCode


# -- shared store ------------------------------------------------------------------------------


class _Receiver:
    """Thread-safe storage of decoded requests and the helpers tests read them with."""

    protocol = ""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._requests: dict[str, list[Any]] = {signal: [] for signal in _MESSAGES}
        self._attempts: list[Attempt] = []
        self._failures: list[Any] = []
        self.errors: list[str] = []  # requests that could not be decoded

    # configuration of answers

    def _fail_next(self, times: int, status: Any) -> None:
        with self._cond:
            self._failures.extend([status] * times)

    def _next_failure(self) -> Any:
        with self._cond:
            return self._failures.pop(0) if self._failures else None

    # recording

    def _record(self, attempt: Attempt, message: Any | None) -> None:
        with self._cond:
            self._attempts.append(attempt)
            if message is not None:
                self._requests[attempt.signal].append(message)
            self._cond.notify_all()

    def _error(self, text: str) -> None:
        with self._cond:
            self.errors.append(text)

    # reading

    @property
    def attempts(self) -> list[Attempt]:
        """Every export call received so far, accepted or failed, in arrival order."""
        with self._cond:
            return list(self._attempts)

    def requests(self, signal: str = "traces") -> list[Any]:
        """The decoded export requests of ``signal`` that were accepted (answered with success)."""
        with self._cond:
            return list(self._requests[signal])

    def spans(self) -> list[ReceivedSpan]:
        """Every accepted span, flattened, in arrival order."""
        return [
            ReceivedSpan(attributes_dict(rs.resource.attributes), ss.scope.name, span)
            for request in self.requests("traces")
            for rs in request.resource_spans
            for ss in rs.scope_spans
            for span in ss.spans
        ]

    def span_count(self) -> int:
        """How many spans were accepted so far."""
        with self._cond:
            return sum(
                len(ss.spans)
                for request in self._requests["traces"]
                for rs in request.resource_spans
                for ss in rs.scope_spans
            )

    def wait_for(self, predicate: Callable[[], bool], timeout: float = 5.0) -> bool:
        """Wait until ``predicate()`` (evaluated under the store's lock) holds; False on timeout."""
        with self._cond:
            return self._cond.wait_for(predicate, timeout)

    def wait_for_spans(self, n: int, timeout: float = 5.0) -> list[ReceivedSpan]:
        """Wait until at least ``n`` spans arrived (at most ``timeout`` s); return all spans."""
        self.wait_for(lambda: self.span_count() >= n, timeout)
        return self.spans()

    def clear(self) -> None:
        """Forget everything received."""
        with self._cond:
            for requests in self._requests.values():
                requests.clear()
            self._attempts.clear()
            self.errors.clear()

    # lifecycle

    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> _Receiver:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


# -- gRPC --------------------------------------------------------------------------------------


class _Servicer:
    """The body shared by the three OTLP services: record, then answer or fail."""

    signal = ""

    def __init__(self, receiver: OtlpGrpcReceiver) -> None:
        self._receiver = receiver

    def Export(self, request: Any, context: grpc.ServicerContext) -> Any:
        metadata = {m.key: m.value for m in context.invocation_metadata()}
        failure = self._receiver._next_failure()
        if failure is not None:
            failure, retry_delay = failure if isinstance(failure, tuple) else (failure, None)
            self._receiver._record(Attempt(self.signal, metadata, failure), None)
            if retry_delay is not None:
                context.set_trailing_metadata(
                    [("grpc-status-details-bin", _retry_info(failure, retry_delay))]
                )
            context.set_code(failure)
            context.set_details(f"failing on request ({failure.name})")
        else:
            self._receiver._record(Attempt(self.signal, metadata, grpc.StatusCode.OK), request)
        return _MESSAGES[self.signal][1]()


def _retry_info(code: grpc.StatusCode, delay: float) -> bytes:
    """A ``google.rpc.Status`` whose details hold a ``RetryInfo`` asking for ``delay`` seconds
    (how a collector says a RESOURCE_EXHAUSTED may be retried), serialized."""
    info = error_details_pb2.RetryInfo()
    info.retry_delay.FromNanoseconds(int(delay * 1e9))
    status = status_pb2.Status(code=code.value[0], message="retry later")
    status.details.add().Pack(info)
    return bytes(status.SerializeToString())


class _TraceServicer(_Servicer, trace_service_pb2_grpc.TraceServiceServicer):
    signal = "traces"


class _MetricsServicer(_Servicer, metrics_service_pb2_grpc.MetricsServiceServicer):
    signal = "metrics"


class _LogsServicer(_Servicer, logs_service_pb2_grpc.LogsServiceServicer):
    signal = "logs"


class OtlpGrpcReceiver(_Receiver):
    """An OTLP/gRPC collector on 127.0.0.1:<ephemeral port>: insecure (an ``http://``
    endpoint), or with ``tls=(server key, server certificate, CA)`` (PEM bytes) over TLS
    requiring a client certificate that CA signed (an ``https://`` endpoint)."""

    protocol = "grpc"

    def __init__(self, tls: tuple[bytes, bytes, bytes] | None = None) -> None:
        super().__init__()
        self.port = 0
        self._tls = tls
        self._server: grpc.Server | None = None
        self._executor: futures.ThreadPoolExecutor | None = None

    @property
    def endpoint(self) -> str:
        """The base URL to configure the exporter with."""
        return f"{'http' if self._tls is None else 'https'}://{LOOPBACK}:{self.port}"

    def fail_next(
        self,
        times: int = 1,
        code: grpc.StatusCode = grpc.StatusCode.UNAVAILABLE,
        retry_delay: float | None = None,
    ) -> None:
        """Answer the next ``times`` export calls with ``code`` instead of OK (with a
        ``RetryInfo`` of ``retry_delay`` seconds in the status details, if given)."""
        self._fail_next(times, code if retry_delay is None else (code, retry_delay))

    def start(self) -> None:
        self._executor = futures.ThreadPoolExecutor(
            max_workers=4, thread_name_prefix="otlp-grpc-receiver"
        )
        server = grpc.server(self._executor, options=[("grpc.so_reuseport", 0)])
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(_TraceServicer(self), server)
        metrics_service_pb2_grpc.add_MetricsServiceServicer_to_server(
            _MetricsServicer(self), server
        )
        logs_service_pb2_grpc.add_LogsServiceServicer_to_server(_LogsServicer(self), server)
        if self._tls is None:
            self.port = server.add_insecure_port(f"{LOOPBACK}:0")
        else:
            key, certificate, ca = self._tls
            credentials = grpc.ssl_server_credentials(
                [(key, certificate)], root_certificates=ca, require_client_auth=True
            )
            self.port = server.add_secure_port(f"{LOOPBACK}:0", credentials)
        server.start()
        self._server = server

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop(grace=0.2).wait(2.0)
            self._server = None
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None

    def __enter__(self) -> OtlpGrpcReceiver:
        self.start()
        return self


# -- HTTP/protobuf -----------------------------------------------------------------------------


class _HttpServer(LoopbackServer):
    receiver: OtlpHttpReceiver


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as exporters reuse their connection
    timeout = 10.0  # an idle or stuck client cannot pin a handler thread for long
    server: _HttpServer

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: no access log on stderr."""

    def _answer(self, status: int, body: bytes = b"") -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self) -> None:
        receiver = self.server.receiver
        headers = {k.lower(): v for k, v in self.headers.items()}
        length = self.headers.get("Content-Length")
        if length is None:
            receiver._error("POST without Content-Length")
            self.close_connection = True
            self._answer(411)
            return
        body = self.rfile.read(int(length))
        signal = {"/v1/traces": "traces", "/v1/metrics": "metrics", "/v1/logs": "logs"}.get(
            self.path.split("?", 1)[0]
        )
        if signal is None:
            receiver._record(Attempt(self.path, headers, 404), None)
            self._answer(404)
            return
        failure = receiver._next_failure()
        if failure is not None:
            receiver._record(Attempt(signal, headers, failure), None)
            self._answer(failure)
            return
        request_class, response_class = _MESSAGES[signal]
        try:
            if headers.get("content-encoding", "").lower() == "gzip":
                body = gzip.decompress(body)
            message = request_class.FromString(body)
        except (OSError, EOFError, DecodeError) as exc:
            receiver._error(f"{signal}: undecodable body ({type(exc).__name__}: {exc})")
            receiver._record(Attempt(signal, headers, 400), None)
            self._answer(400)
            return
        receiver._record(Attempt(signal, headers, 200), message)
        self._answer(200, response_class().SerializeToString())


class OtlpHttpReceiver(_Receiver):
    """An OTLP/HTTP (protobuf) collector on 127.0.0.1:<ephemeral port>."""

    protocol = "http/protobuf"

    def __init__(self) -> None:
        super().__init__()
        self.port = 0
        self._server: _HttpServer | None = None

    @property
    def endpoint(self) -> str:
        """The base URL to configure the exporter with (``/v1/<signal>`` is appended)."""
        return f"http://{LOOPBACK}:{self.port}"

    def fail_next(self, times: int = 1, status: int = 503) -> None:
        """Answer the next ``times`` export requests with HTTP ``status`` instead of 200."""
        self._fail_next(times, status)

    def start(self) -> None:
        server = _HttpServer(_Handler)
        server.receiver = self
        self.port = server.port
        self._server = server
        server.start()

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        server.close()  # also wakes handler threads blocked on keep-alive reads

    def __enter__(self) -> OtlpHttpReceiver:
        self.start()
        return self


# -- faults ------------------------------------------------------------------------------------


def closed_port() -> int:
    """A loopback port that was bound and released: connecting to it is refused."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        port: int = sock.getsockname()[1]
    return port


class HangingServer:
    """A loopback TCP server that accepts connections, reads what arrives and never answers.

    Stands for a collector that is up but stuck: HTTP requests get no response, gRPC calls no
    HTTP/2 settings. On exit every connection and the listener are closed.
    """

    def __init__(self) -> None:
        self._listener = socket.create_server((LOOPBACK, 0), backlog=64)
        self._listener.setblocking(False)
        self.port: int = self._listener.getsockname()[1]
        self.connections = 0  # accepted so far
        self.bytes_received = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="hanging-server", daemon=True)

    @property
    def endpoint(self) -> str:
        """The base URL to configure an exporter with."""
        return f"http://{LOOPBACK}:{self.port}"

    def _run(self) -> None:
        selector = selectors.DefaultSelector()
        selector.register(self._listener, selectors.EVENT_READ)
        open_connections: list[socket.socket] = []
        try:
            while not self._stop.is_set():
                for key, _ in selector.select(0.05):
                    sock: socket.socket = key.fileobj  # type: ignore[assignment]
                    if sock is self._listener:
                        try:
                            conn, _ = sock.accept()
                        except OSError:
                            continue
                        conn.setblocking(False)
                        open_connections.append(conn)
                        selector.register(conn, selectors.EVENT_READ)
                        self.connections += 1
                        continue
                    try:
                        data = sock.recv(65536)
                    except BlockingIOError:
                        continue
                    except OSError:
                        data = b""
                    if data:
                        self.bytes_received += len(data)
                    else:  # the client gave up
                        selector.unregister(sock)
                        open_connections.remove(sock)
                        sock.close()
        finally:
            for conn in open_connections:
                conn.close()
            selector.close()
            self._listener.close()

    def __enter__(self) -> HangingServer:
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop.set()
        self._thread.join(2.0)


# -- a collector answering raw bytes -------------------------------------------------------------


def http_answer(
    status: int, headers: dict[str, str] | None = None, body: bytes = b"", reason: str = "X"
) -> bytes:
    """An HTTP/1.1 answer, as raw bytes."""
    lines = [f"HTTP/1.1 {status} {reason}", f"Content-Length: {len(body)}"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


OK_ANSWER = http_answer(200, {"Content-Type": "application/x-protobuf"}, reason="OK")
#: For :class:`RawCollector`: write the start of an answer, then reset the connection.
RESET_ANSWER = b"<reset>"


class RawAttempt(NamedTuple):
    """One request a :class:`RawCollector` read."""

    at: float  # time.monotonic() when the request was read
    path: str
    port: int  # the client's port: one per TCP connection
    names: list[str]  # span names in the request
    pids: list[int]  # process.pid of each ResourceSpans


class _RawHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = 5.0  # a kept-alive connection cannot pin a handler thread for long
    server: _RawServer

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet."""

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        if self.headers.get("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        request = trace_service_pb2.ExportTraceServiceRequest.FromString(body)
        names = [s.name for rs in request.resource_spans for ss in rs.scope_spans for s in ss.spans]
        pids = [
            int(attributes_dict(rs.resource.attributes).get("process.pid", 0))
            for rs in request.resource_spans
        ]
        answer = self.server.collector.record(
            RawAttempt(time.monotonic(), self.path, self.client_address[1], names, pids)
        )
        if answer == RESET_ANSWER:
            self.wfile.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npartial")
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.close_connection = True
            return
        self.wfile.write(answer)
        if not answer.startswith(b"HTTP/1.1"):  # HTTP/1.0, or no answer at all: close
            self.close_connection = True


class _RawServer(LoopbackServer):
    collector: RawCollector


class RawCollector:
    """An OTLP/HTTP collector on loopback that decodes each request (real protobuf) and answers
    request n (0-based) with the raw bytes ``answer(n)``."""

    def __init__(self, answer: Callable[[int], bytes] = lambda n: OK_ANSWER) -> None:
        self.answer = answer
        self._lock = threading.Lock()
        self._attempts: list[RawAttempt] = []
        self._server = _RawServer(_RawHandler)
        self._server.collector = self
        self.endpoint = f"http://{LOOPBACK}:{self._server.port}"

    def record(self, attempt: RawAttempt) -> bytes:
        with self._lock:
            n = len(self._attempts)
            self._attempts.append(attempt)
        return self.answer(n)

    @property
    def attempts(self) -> list[RawAttempt]:
        with self._lock:
            return list(self._attempts)

    def __enter__(self) -> RawCollector:
        self._server.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.close()  # also wakes handler threads blocked on keep-alive reads


def spans_dropped_total() -> float:
    """``obskit_spans_dropped_total`` over every reason, in obskit's current registry."""
    from obskit import _state

    return sum(
        s.value
        for metric in _state.registry.collect()
        if metric.name == "obskit_spans_dropped"
        for s in metric.samples
        if s.name == "obskit_spans_dropped_total"
    )
