"""A small HTTP server on a free loopback port, for tests that need a real peer."""

from __future__ import annotations

import contextlib
import http.client
import socket
import threading
import urllib.parse
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class QuietHandler(BaseHTTPRequestHandler):
    """A request handler that writes no access log on stderr."""

    def log_message(self, format: str, *args: Any) -> None:
        pass


class LoopbackServer(ThreadingHTTPServer):
    """A threading HTTP server on 127.0.0.1 (port 0: a free one) that knows its open
    connections, so that :meth:`close` also ends handler threads waiting on a kept-alive one."""

    daemon_threads = True

    def __init__(self, handler: type[BaseHTTPRequestHandler], port: int = 0) -> None:
        self._open: set[Any] = set()
        self._open_lock = threading.Lock()
        super().__init__(("127.0.0.1", port), handler)
        self.port: int = self.server_address[1]
        self._thread = threading.Thread(
            target=self.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Quiet: a client that gave up mid-answer (what several tests do on purpose) is no
        test failure, and a handler's own error shows in the test as a missing answer."""

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._open_lock:
            self._open.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._open_lock:
            self._open.discard(request)
        super().shutdown_request(request)

    def start(self) -> None:
        """Serve from a daemon thread."""
        self._thread.start()

    def close(self) -> None:
        """Stop serving, end the open connections and release the port."""
        if self._thread.is_alive():
            self.shutdown()
        with self._open_lock:
            connections = list(self._open)
        for connection in connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)
        self.server_close()
        self._thread.join(2.0)


@contextlib.contextmanager
def serving(handler: type[BaseHTTPRequestHandler]) -> Iterator[int]:
    """Serve ``handler`` on 127.0.0.1 until the block ends; yields the port."""
    httpd = LoopbackServer(handler)
    httpd.start()
    try:
        yield httpd.port
    finally:
        httpd.close()


def free_port() -> int:
    """A loopback port nothing listens on (bound, then closed)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def http_get(
    url: str, headers: dict[str, str] | None = None, timeout: float = 5.0
) -> tuple[int, dict[str, str], bytes]:
    """GET ``url`` over a new connection with ``http.client`` -- no proxy from the environment,
    and no client library obskit instruments: status, headers (lower-case names), body."""
    parts = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(parts.netloc, timeout=timeout)
    try:
        target = parts.path + (f"?{parts.query}" if parts.query else "")
        conn.request("GET", target, headers=headers or {})
        response = conn.getresponse()
        answer = {name.lower(): value for name, value in response.getheaders()}
        return response.status, answer, response.read()
    finally:
        conn.close()


def get_from(server: Any, path: str) -> int:
    """Serve one ``GET path`` with ``server`` (a stdlib ``socketserver`` server already bound on
    loopback: werkzeug's, Django's ``runserver``), then shut it down; the answer's status."""
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        return http_get(f"http://127.0.0.1:{server.server_port}{path}")[0]
    finally:
        server.shutdown()
        server.server_close()
