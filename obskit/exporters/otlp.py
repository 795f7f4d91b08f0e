"""OTLP span sinks: HTTP/protobuf (stdlib ``http.client``) and gRPC (raw bytes over grpcio).

Both send the ``ExportTraceServiceRequest`` bytes the pipeline already built, so exporting costs no
re-encoding. The HTTP sink uses ``http.client`` rather than ``requests`` so the export itself is
never seen by obskit's outbound instrumentation. Retries follow the OTLP spec's retryable statuses
(429, 502, 503, 504; gRPC UNAVAILABLE and friends) with backoff, within the export timeout.
"""

from __future__ import annotations

import email.utils
import gzip
import http.client
import socket
import ssl
import threading
import time
import urllib.parse
from collections.abc import Mapping
from typing import Any

from obskit._version import __version__

__all__ = ["GrpcSpanSink", "HttpSpanSink"]

_RETRYABLE_HTTP = frozenset({429, 502, 503, 504})
_USER_AGENT = f"obskit/{__version__}"


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

    def arm(self, conn: http.client.HTTPConnection, deadline: float) -> None:
        with self._cond:
            self._armed = (conn, deadline)
            thread = self._thread
            if thread is None or not thread.is_alive():  # first use, or a forked child
                thread = self._thread = threading.Thread(
                    target=self._run, name="obskit-otlp-deadline", daemon=True
                )
                thread.start()
            self._cond.notify()

    def disarm(self) -> None:
        with self._cond:
            self._armed = None

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._armed = None
            self._cond.notify()

    def after_fork(self) -> None:
        # The child has no watcher thread, and the lock may have been held at the fork.
        self._cond = threading.Condition()
        self._armed = None
        self._thread = None

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
                self._armed = None
                _interrupt(armed[0])


def _retry_after(value: str | None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delay-seconds or an HTTP date)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - time.time())


class HttpSpanSink:
    """POST ``application/x-protobuf`` to an OTLP/HTTP endpoint (``.../v1/traces``)."""

    name = "otlp_http"

    def __init__(
        self,
        url: str,
        *,
        headers: Mapping[str, str] | None = None,
        compression: str = "none",
    ) -> None:
        parts = urllib.parse.urlsplit(url)
        self.url = url
        self._https = parts.scheme == "https"
        self._host = parts.hostname or "localhost"
        self._port = parts.port or (443 if self._https else 80)
        self._path = parts.path or "/v1/traces"
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
        self._closed = False
        self._deadline = _Deadline()

    def after_fork(self) -> None:
        """In a forked child: forget the parent's connection. Its socket is shared with the
        parent (responses could be read by the wrong process), so it is neither used nor shut
        down here -- only dropped; the child opens its own."""
        self._conn = None
        self._deadline.after_fork()

    def _connection(self, timeout: float) -> http.client.HTTPConnection:
        conn = self._conn
        if conn is None:
            if self._https:
                conn = http.client.HTTPSConnection(
                    self._host, self._port, timeout=timeout, context=ssl.create_default_context()
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
        deadline = time.monotonic() + timeout
        delay = 0.1
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or self._closed:
                return False
            retry_after = None
            conn = self._connection(left)
            # At the deadline the socket is shut down, which ends a blocked read.
            self._deadline.arm(conn, deadline)
            try:
                conn.request("POST", self._path, body=body, headers=self._headers)
                response = conn.getresponse()
                response.read()
                status = response.status
                retry_after = _retry_after(response.getheader("Retry-After"))
            except (OSError, http.client.HTTPException):
                self._close()
                status = None
            finally:
                self._deadline.disarm()
            if status is not None and 200 <= status < 300:
                return True
            if status is not None and status not in _RETRYABLE_HTTP:
                return False
            # The collector's own Retry-After, when it gave one (OTLP/HTTP: the client SHOULD
            # honour it), else exponential backoff; never past the deadline.
            wait = delay if retry_after is None else retry_after
            if deadline - time.monotonic() <= wait:
                return False
            time.sleep(wait)
            delay = min(delay * 2, 2.0)

    def shutdown(self) -> None:
        """Close the connection, interrupting an export blocked on a hanging collector."""
        self._closed = True
        self._deadline.stop()
        conn = self._conn
        if conn is not None:
            _interrupt(conn)
        self._close()


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
    ) -> None:
        import grpc

        parts = urllib.parse.urlsplit(url)
        target = f"{parts.hostname}:{parts.port or 4317}"
        secure = parts.scheme == "https" if insecure is None else not insecure
        options: list[tuple[str, Any]] = [("grpc.primary_user_agent", _USER_AGENT)]
        comp = grpc.Compression.Gzip if compression == "gzip" else grpc.Compression.NoCompression
        if secure:
            self._channel = grpc.secure_channel(
                target, grpc.ssl_channel_credentials(), options=options, compression=comp
            )
        else:
            self._channel = grpc.insecure_channel(target, options=options, compression=comp)
        # No (de)serializers: grpcio passes bytes through as they are.
        self._call = self._channel.unary_unary(self._METHOD)
        self._metadata = tuple((k.lower(), v) for k, v in (headers or {}).items())
        self._retryable = {
            grpc.StatusCode.UNAVAILABLE,
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            grpc.StatusCode.ABORTED,
            grpc.StatusCode.DEADLINE_EXCEEDED,
        }
        self.url = url
        self._closed = False

    def export(self, request: bytes, count: int, timeout: float) -> bool:
        """Send one request, retrying retryable status codes until ``timeout`` runs out."""
        import grpc

        deadline = time.monotonic() + timeout
        delay = 0.1
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or self._closed:
                return False
            try:
                self._call(request, timeout=left, metadata=self._metadata)
                return True
            except grpc.RpcError as exc:
                code = exc.code() if hasattr(exc, "code") else None
                if code not in self._retryable or deadline - time.monotonic() <= delay:
                    return False
            time.sleep(delay)
            delay = min(delay * 2, 2.0)

    def shutdown(self) -> None:
        """Close the channel; an RPC under way is cancelled."""
        self._closed = True
        self._channel.close()
