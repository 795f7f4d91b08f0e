"""Render obskit's metrics in Prometheus text or OpenMetrics, negotiated from ``Accept``.

One framework-neutral function; every adapter's ``/metrics`` calls it. OpenMetrics is chosen when
the scraper asks for it (Prometheus does when exemplar storage is on) -- exemplars exist only there.
In gunicorn multi-worker mode (``PROMETHEUS_MULTIPROC_DIR``) the samples of every worker are read
from the shared directory, so one scrape counts all workers' requests.
"""

from __future__ import annotations

import os
import re
import socket
import threading
from collections.abc import Callable, Iterable
from typing import Any

from prometheus_client import REGISTRY, CollectorRegistry
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from obskit import _selfmetrics, _state

__all__ = ["MetricsServer", "forget_process", "render", "start_metrics_server"]


class _Union(Collector):
    def __init__(self, registries: Iterable[CollectorRegistry]) -> None:
        self.registries = tuple(registries)

    def collect(self) -> Iterable[Metric]:
        seen: set[str] = set()
        for registry in self.registries:
            for metric in registry.collect():
                if metric.name not in seen:
                    seen.add(metric.name)
                    yield metric


# prometheus_client names a process's live gauge files gauge_livesum_<pid>.db and so on.
_LIVE_FILE = re.compile(r"gauge_live[a-z]*_(\d+)\.db")


def forget_process(pid: int, directory: str | None = None) -> None:
    """Remove the live gauges (``livesum``, ``livemax``...) of a process that has ended from the
    multi-process directory, so they stop counting in ``/metrics``."""
    directory = directory or os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if directory:
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid, directory)  # type: ignore[no-untyped-call]


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: a process of another user has the pid
        return True
    return True


def _forget_ended(directory: str) -> None:
    """Drop the live gauges of workers that ended without gunicorn's ``child_exit`` hook (not
    configured, or a master that does not know the directory the workers were given)."""
    pids = {int(m.group(1)) for m in map(_LIVE_FILE.fullmatch, os.listdir(directory)) if m}
    for pid in pids:
        if pid != os.getpid() and not _running(pid):
            forget_process(pid, directory)


def _collector() -> CollectorRegistry | _Union:
    directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if directory:
        from prometheus_client import multiprocess

        try:
            _forget_ended(directory)
        except OSError as exc:  # the scrape goes on with what the directory holds
            _selfmetrics.internal_error("multiprocess_cleanup", exc)
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, path=directory)  # type: ignore[no-untyped-call]
        return registry
    runtime = _state.runtime
    include_default = runtime is None or runtime.config.include_default_registry
    if include_default:
        return _Union((_state.registry, REGISTRY))
    return _state.registry


_TEXT_RANGES = frozenset(("text/plain", "text/*", "*/*"))


def _ranked(accept: str) -> list[str]:
    """The media ranges of ``accept`` that the client accepts (q > 0), best first.

    RFC 9110 12.5.1: a range's ``q`` ranks it, ``q=0`` refuses it; equal ranks keep the client's
    order. A range whose ``q`` is not a number is dropped, as a client's typo.
    """
    ranked: list[tuple[float, int, str]] = []
    for index, media_range in enumerate(accept.split(",")):
        quality = 1.0
        for parameter in media_range.split(";")[1:]:
            name, _, value = parameter.partition("=")
            if name.strip().lower() == "q":
                try:
                    quality = float(value.strip())
                except ValueError:
                    quality = 0.0
        if 0.0 < quality <= 1.0:
            ranked.append((-quality, index, media_range))
    ranked.sort()
    return [media_range for _, _, media_range in ranked]


def _negotiate(accept: str) -> tuple[Callable[[Collector], bytes], str]:
    # prometheus_client's choose_encoder knows the formats and their versions but takes the
    # first range it recognises, whatever its q; ask it one range at a time, in the client's
    # order of preference.
    for media_range in _ranked(accept):
        media_type = media_range.split(";", 1)[0].strip().lower()
        try:
            encoder, content_type = choose_encoder(media_range)
        except Exception:  # a malformed range (version=abc): a client's problem, skip it
            continue
        if media_type in _TEXT_RANGES or not content_type.startswith("text/plain"):
            return encoder, content_type
        # an OpenMetrics version the library cannot write: the client's next choice
    return choose_encoder("")


def render(accept: str | None) -> tuple[bytes, str]:
    """Return ``(body, content_type)`` for a scrape that sent ``Accept: accept``."""
    encoder, content_type = _negotiate(accept or "")
    return encoder(_collector()), content_type


class MetricsServer:
    """``/metrics`` on its own port, served from a daemon thread (the ``metrics_port`` option)."""

    def __init__(self, port: int, host: str = "0.0.0.0", path: str = "/metrics") -> None:
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        class Handler(BaseHTTPRequestHandler):
            # A scraper that stalls mid-request (killed, half-open) frees its thread after this.
            timeout = 10.0

            def do_GET(self) -> None:
                self._answer(with_body=True)

            def do_HEAD(self) -> None:
                self._answer(with_body=False)

            def _answer(self, *, with_body: bool) -> None:
                if self.path.split("?", 1)[0] != path:
                    self.send_error(404)
                    return
                body, content_type = render(self.headers.get("Accept"))
                self.send_response(200)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if with_body:
                    self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                pass

        open_connections: set[socket.socket] = set()
        lock = threading.Lock()

        class Server(ThreadingHTTPServer):
            daemon_threads = True

            def process_request(self, request: Any, client_address: Any) -> None:
                with lock:
                    open_connections.add(request)
                super().process_request(request, client_address)

            def shutdown_request(self, request: Any) -> None:
                with lock:
                    open_connections.discard(request)
                super().shutdown_request(request)

        self._connections = open_connections
        self._connections_lock = lock
        self._server = Server((host, port), Handler)
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="obskit-metrics", daemon=True
        )
        self._thread.start()

    def close(self) -> None:
        """Stop serving, release the port and end the connections still open (their threads
        end with them)."""
        self._server.shutdown()
        self._server.server_close()
        with self._connections_lock:
            connections = list(self._connections)
        for connection in connections:
            try:
                connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


def start_metrics_server(port: int, path: str = "/metrics") -> MetricsServer | None:
    """Serve metrics on ``port``; None (with one warning) when the port cannot be bound, as
    when several gunicorn workers try -- use the app's path or the master's port then."""
    try:
        return MetricsServer(port, path=path)
    except OSError as exc:
        _selfmetrics.warn_once(
            f"metrics_port:{port}",
            "obskit: cannot serve metrics on port %d (%s); they stay on the app's path",
            port,
            exc,
        )
        return None
