"""OTLP span sinks: HTTP/protobuf (stdlib ``http.client``) and gRPC (raw bytes over grpcio).

Both send the ``ExportTraceServiceRequest`` bytes the pipeline already built, so exporting costs no
re-encoding. The HTTP sink uses ``http.client`` rather than ``requests`` so the export itself is
never seen by obskit's outbound instrumentation. Retries follow the OTLP spec's retryable statuses
(429, 502, 503, 504; gRPC UNAVAILABLE and friends, RESOURCE_EXHAUSTED only with a RetryInfo) with
an exponential backoff with jitter (exporter.md "Retry"), within the export timeout; the backoff
and a collector's ``Retry-After``/``RetryInfo`` outlive the batch that met them (see
:class:`_Retry`). A ``partial_success`` answer's refused spans are reported to the pipeline
(``rejected``), which counts them as dropped.
"""

from __future__ import annotations

import email.utils
import gzip
import http.client
import random
import socket
import ssl
import threading
import time
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from obskit._version import __version__

__all__ = ["GrpcSpanSink", "HttpSpanSink", "Tls", "deadline_session"]

_RETRYABLE_HTTP = frozenset({429, 502, 503, 504})
#: What the OTLP specification asks an exporter to send: the exporter, its language and its
#: version (the SDK's is ``OTel-OTLP-Exporter-Python/1.45.1``).
_USER_AGENT = f"obskit-OTLP-Exporter-Python/{__version__}"


def _interrupt(conn: http.client.HTTPConnection) -> None:
    sock = conn.sock
    if sock is not None:
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


class _Deadline:
    """Shuts a connection's socket down when its exchange runs past a deadline.

    The socket timeout bounds each read, not the whole exchange: a collector (or a proxy)
    answering a byte at a time would hold the export thread past its timeout. One daemon thread
    per sink, started at the first export, watches the exchange under way -- rather than a
    ``threading.Timer``, a new thread, for every batch.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._armed: tuple[http.client.HTTPConnection, float] | None = None
        self._thread: threading.Thread | None = None
        self._stopped = False
        self._fired = False

    def start(self) -> None:
        """Start the watcher now, if it is not running: Python 3.12 starts no thread at
        interpreter shutdown, where the exit flush may be a sink's first export."""
        with self._cond:
            self._started()

    def _started(self) -> bool:
        # Called with the condition held; whether the watcher runs.
        thread = self._thread
        if thread is not None and thread.is_alive():
            return True
        thread = threading.Thread(target=self._run, name="obskit-otlp-deadline", daemon=True)
        try:
            thread.start()
        except RuntimeError:  # Python 3.12, at interpreter shutdown
            return False
        self._thread = thread
        return True

    def arm(self, conn: http.client.HTTPConnection, deadline: float) -> None:
        with self._cond:
            # First use, or a forked child: the watcher starts now. When it cannot (see start),
            # the socket timeout still bounds each read.
            self._armed = (conn, deadline) if self._started() else None
            self._fired = False
            self._cond.notify()

    def disarm(self) -> bool:
        """Whether the deadline was reached (and the socket shut down) since :meth:`arm`."""
        with self._cond:
            self._armed = None
            return self._fired

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._armed = None
            self._cond.notify()

    def after_fork(self) -> None:
        # The child has no watcher thread, and the lock may have been held at the fork; its own
        # starts now, not at the child's first export (which may be its exit flush: start()).
        self._cond = threading.Condition()
        self._armed = None
        self._thread = None
        if not self._stopped:
            self.start()

    def _run(self) -> None:
        cond = self._cond
        with cond:
            while not self._stopped:
                armed = self._armed
                if armed is None:
                    cond.wait()
                    continue
                left = armed[1] - time.monotonic()
                if left > 0:
                    cond.wait(left)
                    continue
                self._fired = True
                if armed[0].sock is None:
                    # Still connecting (a slow name lookup, which no timeout bounds): shut the
                    # socket down as soon as there is one.
                    cond.wait(0.05)
                    continue
                self._armed = None
                _interrupt(armed[0])


def deadline_session() -> Any:
    """A ``requests`` Session for the SDK's OTLP/HTTP metric and log exporters whose every
    exchange ends at its timeout, as obskit's own span sink's does (see :class:`_Deadline`):
    ``requests`` bounds each socket read, so a collector trickling its answer would hold the
    SDK's export thread for ever. The watcher arms when urllib3 writes a request and disarms
    when the whole answer has been read (``Session.send`` reads the body)."""
    import requests
    from requests.adapters import HTTPAdapter
    from urllib3.connection import HTTPConnection, HTTPSConnection
    from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

    deadline = _Deadline()
    until = threading.local()

    def arming(base: Any) -> Any:
        class _Connection(base):  # type: ignore[misc]
            def request(self, *args: Any, **kwargs: Any) -> Any:
                at = getattr(until, "at", None)
                if at is not None:
                    deadline.arm(self, at)
                return super().request(*args, **kwargs)

        return _Connection

    class _Pool(HTTPConnectionPool):
        ConnectionCls = arming(HTTPConnection)

    class _HttpsPool(HTTPSConnectionPool):
        ConnectionCls = arming(HTTPSConnection)

    class _Adapter(HTTPAdapter):
        def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
            super().init_poolmanager(*args, **kwargs)
            self.poolmanager.pool_classes_by_scheme = {"http": _Pool, "https": _HttpsPool}

        def proxy_manager_for(self, proxy: str, **kwargs: Any) -> Any:
            # Through HTTP(S)_PROXY the exchange goes through a proxy manager's own pools.
            manager = super().proxy_manager_for(proxy, **kwargs)
            if not proxy.lower().startswith("socks"):  # SOCKS pools have their own connections
                manager.pool_classes_by_scheme = {"http": _Pool, "https": _HttpsPool}
            return manager

    class _Session(requests.Session):
        _obskit_deadline = deadline

        def __init__(self) -> None:
            super().__init__()
            self.mount("http://", _Adapter())
            self.mount("https://", _Adapter())

        def send(self, request: Any, **kwargs: Any) -> Any:
            timeout = kwargs.get("timeout")
            if isinstance(timeout, tuple):  # (connect, read): the connect phase is bounded alone
                timeout = timeout[1]
            if not isinstance(timeout, (int, float)) or timeout <= 0:
                return super().send(request, **kwargs)
            until.at = time.monotonic() + timeout
            try:
                response = super().send(request, **kwargs)
            finally:
                until.at = None
                fired = deadline.disarm()
            if fired:  # a shut-down socket can read as an answer cut short, not as an error
                response.close()
                raise requests.exceptions.ReadTimeout(f"no whole answer within {timeout} s")
            return response

        def merge_environment_settings(self, *args: Any, **kwargs: Any) -> Any:
            settings = super().merge_environment_settings(*args, **kwargs)
            # requests lets REQUESTS_CA_BUNDLE (set in many container images) take the place
            # of the session's own CA file: the exporter's OTLP certificate must win.
            if isinstance(self.verify, str):
                settings["verify"] = self.verify
            return settings

        def close(self) -> None:
            super().close()
            deadline.stop()

        def obskit_after_fork(self) -> None:
            """In a forked child: the watcher runs again and the parent's kept-alive
            connections are let go (this process's copies of their sockets closed)."""
            deadline.after_fork()
            super().close()

    return _Session()


def _retry_after(value: str | None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delay-seconds or an HTTP date)."""
    if not value:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():  # str.isdigit() also takes '\xb2' and other digits
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - time.time())


#: How much of a collector's answer is read: an ``ExportTraceServiceResponse`` is a few bytes
#: (a partial-success message at most), and a proxy's error page is not worth more.
_MAX_ANSWER = 64 * 1024


def _varint(data: bytes, i: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if i >= len(data) or shift > 63:
            raise ValueError("truncated varint")
        byte = data[i]
        i += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, i
        shift += 7


def _fields(data: bytes) -> dict[int, list[Any]]:
    """The fields of one protobuf message (varint and length-delimited values; fixed-width
    ones skipped), by number. Raises ValueError on malformed input."""
    fields: dict[int, list[Any]] = {}
    i = 0
    while i < len(data):
        key, i = _varint(data, i)
        number, wire = key >> 3, key & 7
        value: Any
        if wire == 0:
            value, i = _varint(data, i)
        elif wire == 2:
            length, i = _varint(data, i)
            if i + length > len(data):
                raise ValueError("truncated field")
            value, i = data[i : i + length], i + length
        elif wire in (1, 5):
            i += 8 if wire == 1 else 4
            continue
        else:
            raise ValueError(f"wire type {wire}")
        fields.setdefault(number, []).append(value)
    return fields


def rejected_spans(answer: bytes, count: int) -> tuple[int, str]:
    """``(rejected spans, error message)`` of an ``ExportTraceServiceResponse`` whose
    ``partial_success`` says the collector refused part of a request of ``count`` spans;
    ``(0, "")`` for a full success or an answer that is not such a message."""
    if not answer:
        return 0, ""
    try:
        partial = _fields(answer).get(1)
        if not partial or not isinstance(partial[-1], bytes):
            return 0, ""
        fields = _fields(partial[-1])
        rejected = fields.get(1, [0])[-1]
        message = fields.get(2, [b""])[-1]
        if not isinstance(rejected, int) or not isinstance(message, bytes):
            return 0, ""
        if rejected >= 1 << 63:  # int64 on the wire: a negative count is no count
            rejected = 0
        return min(rejected, count), message[:256].decode("utf-8", "replace")
    except ValueError:
        return 0, ""


def _grpc_retry_delay(error: Any) -> float | None:
    """The delay a gRPC error's ``google.rpc.RetryInfo`` asks for (in the
    ``grpc-status-details-bin`` trailer), or None when it carries none: the OTLP spec retries
    RESOURCE_EXHAUSTED only when the server says recovery is possible that way."""
    try:
        trailers = error.trailing_metadata() or ()
        for key, value in trailers:
            if key != "grpc-status-details-bin" or not isinstance(value, bytes):
                continue
            for detail in _fields(value).get(3, []):  # google.rpc.Status.details: Any
                if not isinstance(detail, bytes):
                    continue
                any_fields = _fields(detail)
                type_url = any_fields.get(1, [b""])[-1]
                if not (isinstance(type_url, bytes) and type_url.endswith(b"google.rpc.RetryInfo")):
                    continue
                info = any_fields.get(2, [b""])[-1]
                duration = _fields(info).get(1, [b""])[-1] if isinstance(info, bytes) else b""
                parts = _fields(duration) if isinstance(duration, bytes) else {}
                seconds = parts.get(1, [0])[-1]
                nanos = parts.get(2, [0])[-1]
                if isinstance(seconds, int) and isinstance(nanos, int) and seconds < 1 << 63:
                    return seconds + min(nanos, 999_999_999) / 1e9
                return 0.0
    except Exception:
        return None
    return None


#: The backoff between retries: 0.1 s, doubled after each retryable failure up to 2 s, each wait
#: spread by +-20 % so that the services of a fleet that lost their collector together do not
#: come back in lockstep (exporter.md "Retry": "exponential back-off with jitter").
_BACKOFF_FIRST = 0.1
_BACKOFF_MAX = 2.0
_JITTER = 0.2
#: The longest quiet a collector's ``Retry-After`` (or gRPC ``RetryInfo``) is granted: a bad
#: header (a day, forty nines, a date years ahead) must not stop export for good.
MAX_RETRY_AFTER = 300.0


class _Retry:
    """The retry state of one sink, kept across its exports (all on the export thread).

    After a retryable failure the next request is not sent before ``not_before``: the jittered
    backoff, or the collector's ``Retry-After``/``RetryInfo`` when it asked for longer (at most
    :data:`MAX_RETRY_AFTER`). That holds for the next *batch* too: an export that would have to
    wait past its own timeout fails at once without a request (the pipeline counts the batch as a
    failed export, as it counts any other); one that can wait, waits. Any answer that is not a
    retryable failure (a success, or a refusal: the collector is up) resets the backoff.
    """

    def __init__(self) -> None:
        self.delay = _BACKOFF_FIRST
        self.not_before = 0.0  # time.monotonic()
        self._closed = threading.Event()

    def close(self) -> None:
        """Ends a wait under way and every later export (the sink is shut down)."""
        self._closed.set()

    def after_fork(self) -> None:
        # The event's lock may have been held at the fork (by a thread that no longer exists).
        closed = self._closed.is_set()
        self._closed = threading.Event()
        if closed:
            self._closed.set()

    def run(
        self, timeout: float, attempt: Callable[[float], tuple[bool | None, float | None]]
    ) -> bool:
        """Call ``attempt(seconds left)`` until it answers True (delivered) or False (not to be
        retried), the sink is closed, or ``timeout`` runs out. ``(None, wait)`` asks for a retry:
        after the collector's own ``wait`` (Retry-After, RetryInfo) when it gave one, never less
        than the backoff -- a Retry-After of 0 must not make a tight loop of requests at a
        collector shedding load -- and never past the deadline."""
        deadline = time.monotonic() + timeout
        closed = self._closed
        while True:
            if closed.is_set():
                return False
            now = time.monotonic()
            wait = self.not_before - now
            if wait > 0:
                if now + wait >= deadline:
                    return False  # the collector's quiet (or the backoff) outlasts this export
                if closed.wait(wait):
                    return False
                continue
            left = deadline - now
            if left <= 0:
                return False
            outcome, asked = attempt(left)
            if outcome is not None:
                self.delay = _BACKOFF_FIRST
                self.not_before = 0.0
                return outcome
            step = self.delay * random.uniform(1.0 - _JITTER, 1.0 + _JITTER)
            self.delay = min(self.delay * 2, _BACKOFF_MAX)
            if asked is not None:
                step = max(min(asked, MAX_RETRY_AFTER), step)
            self.not_before = time.monotonic() + step


@dataclass(frozen=True)
class Tls:
    """PEM files for TLS to the collector (``OTEL_EXPORTER_OTLP_CERTIFICATE``,
    ``..._CLIENT_KEY``, ``..._CLIENT_CERTIFICATE``): the CA that signs its certificate (None:
    the system's), and this client's certificate chain and key for mutual TLS."""

    certificate: str | None = None
    client_key: str | None = None
    client_certificate: str | None = None

    def ssl_context(self) -> ssl.SSLContext:
        from obskit.config import tls_context

        context: ssl.SSLContext = tls_context(
            self.certificate, self.client_key, self.client_certificate
        )
        return context

    def grpc_credentials(self) -> Any:
        import grpc

        def read(path: str | None) -> bytes | None:
            if not path:
                return None
            with open(path, "rb") as file:
                return file.read()

        chain = read(self.client_certificate)
        key = read(self.client_key) if chain else None
        if chain and not key:
            # One file with the certificate and its key, as requests and the ssl module take
            # it: gRPC wants them apart, and aborts the whole process (not an exception) on a
            # certificate without its key.
            from obskit.config import PEM_KEY, key_missing

            found = PEM_KEY.search(chain)
            if found is None:
                raise key_missing(str(self.client_certificate))
            key = found.group(0)
        return grpc.ssl_channel_credentials(
            root_certificates=read(self.certificate),
            private_key=key,
            certificate_chain=chain,
        )


class HttpSpanSink:
    """POST ``application/x-protobuf`` to an OTLP/HTTP endpoint (``.../v1/traces``)."""

    name = "otlp_http"

    def __init__(
        self,
        url: str,
        *,
        headers: Mapping[str, str] | None = None,
        compression: str = "none",
        tls: Tls | None = None,
    ) -> None:
        parts = urllib.parse.urlsplit(url)
        self.url = url
        self._https = parts.scheme == "https"
        # Made once (its files read now): a file that cannot be read fails configure(), not
        # every export.
        self._ssl = (tls or Tls()).ssl_context() if self._https else None
        self._host = parts.hostname or "localhost"
        self._port = parts.port or (443 if self._https else 80)
        self._path = parts.path or "/"  # a URL with no path: the root (the OTLP spec's rule)
        if parts.query:
            self._path += "?" + parts.query
        self._headers = {
            "Content-Type": "application/x-protobuf",
            "User-Agent": _USER_AGENT,
            **(headers or {}),
        }
        self._gzip = compression == "gzip"
        if self._gzip:
            self._headers["Content-Encoding"] = "gzip"
        self._conn: http.client.HTTPConnection | None = None
        self._retry = _Retry()
        self._deadline = _Deadline()
        self._deadline.start()
        #: Spans the collector refused in the last successful export's ``partial_success``,
        #: with its message (read by the span pipeline, which counts them as dropped).
        self.rejected: tuple[int, str] = (0, "")
        #: Why the latest attempt failed (None after a success), for the pipeline's warning.
        self.failure: str | None = None

    def after_fork(self) -> None:
        """In a forked child: forget the parent's connection. Its socket is shared with the
        parent (responses could be read by the wrong process), so it is neither used nor shut
        down here -- only dropped; the child opens its own."""
        self._conn = None
        self._retry.after_fork()
        self._deadline.after_fork()

    def _connection(self, timeout: float) -> http.client.HTTPConnection:
        conn = self._conn
        if conn is None:
            if self._https:
                conn = http.client.HTTPSConnection(
                    self._host, self._port, timeout=timeout, context=self._ssl
                )
            else:
                conn = http.client.HTTPConnection(self._host, self._port, timeout=timeout)
            self._conn = conn
        conn.timeout = timeout
        if conn.sock is not None:
            conn.sock.settimeout(timeout)
        return conn

    def _close(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            finally:
                self._conn = None

    def export(self, request: bytes, count: int, timeout: float) -> bool:
        """Send one request, retrying retryable failures until ``timeout`` runs out."""
        body = gzip.compress(request, compresslevel=5) if self._gzip else request

        def attempt(left: float) -> tuple[bool | None, float | None]:
            retry_after = None
            answer = b""
            conn = self._connection(left)
            # At the deadline the socket is shut down, which ends a blocked read.
            self._deadline.arm(conn, time.monotonic() + left)
            try:
                conn.request("POST", self._path, body=body, headers=self._headers)
                response = conn.getresponse()
                answer = response.read(_MAX_ANSWER)
                left_over = response.length  # of a Content-Length body (None when chunked)
                if left_over and len(answer) < _MAX_ANSWER:  # cut short: read() does not say
                    raise http.client.IncompleteRead(answer, left_over)
                if not response.isclosed():
                    # More than an OTLP answer (a proxy's page, an endless stream): not read,
                    # and the connection, in the middle of it, is not reused.
                    self._close()
                status = response.status
                retry_after = _retry_after(response.getheader("Retry-After"))
            except (OSError, http.client.HTTPException) as exc:
                self._close()
                # A socket shut down at the deadline (see _Deadline) fails as a reset would.
                late = self._deadline.disarm()
                why = "no whole answer within the export timeout" if late else _reason(exc)
                self.failure = f"{self._host}:{self._port}: {why}"
                return None, None
            finally:
                self._deadline.disarm()
            if 200 <= status < 300:
                self.rejected = rejected_spans(answer, count)
                self.failure = None
                return True, None
            self.failure = f"HTTP {status} {response.reason}".rstrip()
            if status not in _RETRYABLE_HTTP:
                return False, None
            return None, retry_after  # OTLP/HTTP: the client SHOULD honour Retry-After

        return self._retry.run(timeout, attempt)

    def shutdown(self) -> None:
        """Close the connection, interrupting an export blocked on a hanging collector."""
        self._retry.close()
        self._deadline.stop()
        conn = self._conn
        if conn is not None:
            _interrupt(conn)
        self._close()


def _reason(exc: BaseException) -> str:
    """What went wrong, for a warning: an OSError's text without its errno, else the
    exception's text, or its class when it has none (``RemoteDisconnected``...)."""
    text = getattr(exc, "strerror", None) or str(exc)
    return text if text else type(exc).__name__


def grpc_target(parts: urllib.parse.SplitResult) -> str:
    """The gRPC target (``host:port``) of an OTLP/gRPC endpoint URL; an IPv6 literal keeps its
    brackets, the port defaults to 4317."""
    host = parts.hostname or "localhost"
    if ":" in host:
        host = f"[{host}]"
    return f"{host}:{parts.port or 4317}"


#: How much of a gRPC error's details a warning quotes.
_MAX_DETAILS = 300


def _grpc_reason(target: str, code: Any, error: Any) -> str:
    """``target: CODE (details)`` of a failed RPC, for a warning: the status code says what
    kind of failure, grpc's details which (``failed to connect to all addresses; ...
    Connection refused``)."""
    name = getattr(code, "name", None) or "UNKNOWN"
    try:
        details = error.details() if hasattr(error, "details") else None
    except Exception:
        details = None
    if details:
        return f"{target}: {name} ({str(details)[:_MAX_DETAILS]})"
    return f"{target}: {name}"


class GrpcSpanSink:
    """Call ``TraceService/Export`` on an OTLP/gRPC endpoint with the pre-encoded request."""

    name = "otlp_grpc"
    _METHOD = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"

    def __init__(
        self,
        url: str,
        *,
        headers: Mapping[str, str] | None = None,
        compression: str = "none",
        insecure: bool | None = None,
        tls: Tls | None = None,
    ) -> None:
        import grpc

        parts = urllib.parse.urlsplit(url)
        self._target = grpc_target(parts)
        self._secure = parts.scheme == "https" if insecure is None else not insecure
        self._credentials = (tls or Tls()).grpc_credentials() if self._secure else None
        self._options: list[tuple[str, Any]] = [
            ("grpc.primary_user_agent", _USER_AGENT),
            # grpc's own reconnection backoff grows to 120 s, and while a channel waits it out
            # every RPC fails at once with UNAVAILABLE (wait_for_ready is off): kept short, and
            # the channel is replaced after an UNAVAILABLE anyway (see export).
            ("grpc.initial_reconnect_backoff_ms", 1000),
            ("grpc.max_reconnect_backoff_ms", 5000),
            # Not shared with other channels to the same target: a replaced channel's
            # subchannel, still backing off, is not handed to the new one.
            ("grpc.use_local_subchannel_pool", 1),
        ]
        self._compression = (
            grpc.Compression.Gzip if compression == "gzip" else grpc.Compression.NoCompression
        )
        # Guards the channel: replaced on the export thread (see _reopen), closed by shutdown.
        self._lock = threading.Lock()
        self._channel, self._call = self._open()
        self._metadata = tuple((k.lower(), v) for k, v in (headers or {}).items())
        # OTLP's retryable codes; RESOURCE_EXHAUSTED only with a RetryInfo (see export).
        self._retryable = {
            grpc.StatusCode.UNAVAILABLE,
            grpc.StatusCode.ABORTED,
            grpc.StatusCode.DEADLINE_EXCEEDED,
            grpc.StatusCode.OUT_OF_RANGE,
            grpc.StatusCode.DATA_LOSS,
            grpc.StatusCode.CANCELLED,
        }
        self._unavailable = grpc.StatusCode.UNAVAILABLE
        self._exhausted = grpc.StatusCode.RESOURCE_EXHAUSTED
        self.url = url
        self._closed = False
        self._retry = _Retry()
        self.rejected: tuple[int, str] = (0, "")
        #: Why the latest attempt failed (None after a success), for the pipeline's warning.
        self.failure: str | None = None

    def _open(self) -> tuple[Any, Any]:
        """A new channel and its Export method."""
        import grpc

        if self._secure:
            channel = grpc.secure_channel(
                self._target,
                self._credentials,
                options=self._options,
                compression=self._compression,
            )
        else:
            channel = grpc.insecure_channel(
                self._target, options=self._options, compression=self._compression
            )
        # No (de)serializers: grpcio passes bytes through as they are.
        return channel, channel.unary_unary(self._METHOD)

    def _reopen(self) -> None:
        """A new channel in place of one that answered UNAVAILABLE: a channel that failed to
        connect waits out grpc's reconnection backoff, failing every RPC meanwhile, while a
        new one connects at its first RPC -- so a collector that is back is reached at the next
        retry (as the SDK's exporter does)."""
        with self._lock:
            if self._closed:
                return
            try:
                channel, call = self._open()
            except Exception:
                return  # the old one, then
            old, self._channel, self._call = self._channel, channel, call
            try:
                old.close()
            except Exception:
                pass

    def export(self, request: bytes, count: int, timeout: float) -> bool:
        """Send one request, retrying retryable status codes until ``timeout`` runs out."""
        import grpc

        def attempt(left: float) -> tuple[bool | None, float | None]:
            try:
                answer = self._call(request, timeout=left, metadata=self._metadata)
            except grpc.RpcError as exc:
                code = exc.code() if hasattr(exc, "code") else None
                self.failure = _grpc_reason(self._target, code, exc)
                asked = _grpc_retry_delay(exc)  # the spec: SHOULD honour a RetryInfo
                if code is self._unavailable:
                    self._reopen()
                if code in self._retryable or (code is self._exhausted and asked is not None):
                    return None, asked
                return False, None
            except ValueError:  # the channel was closed under it: shut down
                self.failure = f"{self._target}: the exporter was shut down"
                return False, None
            self.rejected = rejected_spans(answer if isinstance(answer, bytes) else b"", count)
            self.failure = None
            return True, None

        return self._retry.run(timeout, attempt)

    def shutdown(self) -> None:
        """Close the channel; an RPC under way is cancelled."""
        self._retry.close()
        with self._lock:
            self._closed = True
            self._channel.close()
