"""Render obskit's metrics in Prometheus text or OpenMetrics, negotiated from ``Accept``.

One framework-neutral function; every adapter's ``/metrics`` calls it. OpenMetrics is chosen when
the scraper asks for it (Prometheus does when exemplar storage is on) -- exemplars exist only there.
In gunicorn multi-worker mode (``PROMETHEUS_MULTIPROC_DIR``) the samples of every worker are read
from the shared directory, so one scrape counts all workers' requests.
"""

from __future__ import annotations

import errno
import os
import re
import socket
import stat
import sys
import threading
import weakref
from collections.abc import Callable, Iterable
from typing import Any

from prometheus_client import REGISTRY, CollectorRegistry, Gauge
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from obskit import _selfmetrics, _state
from obskit.metrics.cardinality import republish_after_fork
from obskit.metrics.runtime import forget_closed_loops
from obskit.metrics.use import close_gone

__all__ = [
    "MetricsPortRetry",
    "MetricsServer",
    "forget_process",
    "render",
    "start_metrics_server",
]


class _Union(Collector):
    """The families of several registries, obskit's first. Two of one name cannot both be
    served (Prometheus refuses an exposition with a name twice): the first is, and the other --
    an application's own ``http_requests_total`` in prometheus_client's default registry, or
    prometheus-fastapi-instrumentator's -- is left out, counted in
    ``obskit_metrics_shadowed_total{metric}`` and warned about once."""

    def __init__(self, registries: Iterable[CollectorRegistry]) -> None:
        self.registries = tuple(registries)

    def collect(self) -> Iterable[Metric]:
        seen: set[str] = set()
        for registry in self.registries:
            for metric in registry.collect():
                names = _exposed(metric)
                if seen.isdisjoint(names):
                    seen |= names
                    yield metric
                else:
                    _shadowed(metric.name)


#: The names a family of each type writes besides its samples' (its HELP and TYPE lines').
_SUFFIXES = {
    "counter": ("_total", "_created"),
    "histogram": ("", "_bucket", "_count", "_sum", "_created"),
    "gaugehistogram": ("", "_bucket", "_gcount", "_gsum"),
    "summary": ("", "_count", "_sum", "_created"),
    "info": ("_info",),
}


def _exposed(metric: Metric) -> set[str]:
    """Every name ``metric`` puts in an exposition: a gauge ``http_requests_total`` clashes with
    the counter ``http_requests`` as surely as a second counter of that name does."""
    name = metric.name
    names = {name + suffix for suffix in _SUFFIXES.get(metric.type, ("",))}
    names.update(sample.name for sample in metric.samples)
    return names


def _shadowed(name: str) -> None:
    try:
        _selfmetrics.current().metrics_shadowed.labels(name).inc()
    except Exception:  # its child's file, in a multi-process directory removed: still warned
        pass
    _selfmetrics.warn_once(
        f"shadowed:{name}",
        "obskit: two metrics are named %s, obskit's and one in prometheus_client's default "
        "registry (the application's own, or another exporter's): /metrics serves obskit's and "
        "leaves the other out; rename one, or set include_default_registry=False",
        name,
    )


# prometheus_client names a process's live gauge files gauge_livesum_<pid>.db and so on.
_LIVE_FILE = re.compile(r"gauge_live[a-z]*_(\d+)\.db")

#: Every live gauge mode: each one prometheus_client knows (as its mark_process_dead takes
#: them), and those of 0.26 should a version not say.
_LIVE_MODES = tuple(
    sorted(
        {mode for mode in getattr(Gauge, "_MULTIPROC_MODES", ()) if mode.startswith("live")}
        | {"livemin", "livemax", "livesum", "liveall", "livemostrecent"}
    )
)


def forget_process(pid: int, directory: str | None = None) -> None:
    """Remove the live gauges (``livesum``, ``livemax``, ``livemostrecent``... every ``live*``
    mode) of a process that has ended from the multi-process directory, so they stop counting
    in ``/metrics``.

    As prometheus_client's ``mark_process_dead``, file by file: a file another scrape (a second
    Prometheus replica) removed first is not an error."""
    directory = directory or os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if not directory:
        return
    for mode in _LIVE_MODES:
        try:
            os.remove(os.path.join(directory, f"gauge_{mode}_{pid}.db"))
        except FileNotFoundError:
            pass


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (OverflowError, ValueError):  # no process can have that pid (a stray file name)
        return False
    except OSError:  # EPERM: a process of another user has the pid
        return True
    return True


def _forget_ended(directory: str, names: Iterable[str]) -> None:
    """Drop the live gauges of workers that ended without gunicorn's ``child_exit`` hook (not
    configured, or a master that does not know the directory the workers were given), given
    the directory's file ``names``."""
    pids = {int(m.group(1)) for m in map(_LIVE_FILE.fullmatch, names) if m}
    for pid in pids:
        if pid != os.getpid() and not _running(pid):
            forget_process(pid, directory)


class _MultiProcess(Collector):
    """prometheus_client's multi-process merge over the directory's regular ``*.db`` files.

    Its own collector raises on the first file it cannot read -- a zero-length or truncated one
    (a worker killed while creating it), a corrupt one, a directory named like one -- and then
    every scrape of every worker fails. Here the files are merged at once as usual and, only if
    that fails, one by one: what cannot be read is left out and counted
    (``obskit_internal_errors_total{component="multiprocess_read"}``). The live gauges of
    workers that ended go first (:func:`_forget_ended`), from the same listing.
    """

    def __init__(self, directory: str) -> None:
        self.directory = directory

    def collect(self) -> Iterable[Metric]:
        from prometheus_client.multiprocess import MultiProcessCollector

        merge = MultiProcessCollector.merge
        try:
            names = os.listdir(self.directory)
        except OSError as exc:  # removed, or unreadable: nothing to merge (counted)
            _selfmetrics.internal_error("multiprocess_read", exc)
            return []
        try:
            _forget_ended(self.directory, names)
        except OSError as exc:  # the scrape goes on with what the directory holds
            _selfmetrics.internal_error("multiprocess_cleanup", exc)
        files = []
        for name in names:
            path = os.path.join(self.directory, name)
            # A forgotten worker's file is gone by now: lstat fails, it is left out.
            if name.endswith(".db") and _regular(path):
                files.append(path)
        try:
            return merge(files, accumulate=True)  # type: ignore[no-any-return,no-untyped-call]
        except Exception:
            readable = []
            for path in files:
                try:
                    merge([path], accumulate=True)  # type: ignore[no-untyped-call]
                    readable.append(path)
                except FileNotFoundError:
                    continue  # removed since the listing (an ended worker's live gauge): no error
                except Exception as exc:
                    if not _being_made(path):
                        _selfmetrics.internal_error("multiprocess_read", exc)
            return merge(readable, accumulate=True)  # type: ignore[no-any-return,no-untyped-call]


_OWNER = re.compile(r"_(\d+)\.db$")


def _being_made(path: str) -> bool:
    """Whether ``path`` is an empty file of a running process: prometheus_client creates a
    value file empty and sizes it a moment later, and a scrape in between (a worker starting,
    after a HUP) is not an error to count and warn about. An empty file whose process is gone
    (killed while making it) is."""
    found = _OWNER.search(path)
    try:
        return found is not None and os.path.getsize(path) == 0 and _running(int(found.group(1)))
    except OSError:
        return False


def _regular(path: str) -> bool:
    try:
        return stat.S_ISREG(os.lstat(path).st_mode)
    except OSError:
        return False


def _collector() -> Collector:
    directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if directory:
        return _MultiProcess(directory)
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
        media_type, _, parameters = media_range.partition(";")
        media_type = media_type.strip().lower()  # case-insensitive (RFC 9110 8.3.1)
        try:
            encoder, content_type = choose_encoder(f"{media_type};{parameters}")
        except Exception:  # a malformed range (version=abc): a client's problem, skip it
            continue
        if content_type.startswith("text/plain"):
            if media_type in _TEXT_RANGES:
                return encoder, content_type
            continue  # an OpenMetrics version the library cannot write: the next choice
        version = content_type.split("version=", 1)[1].split(";", 1)[0].strip()
        if version in _OPENMETRICS_VERSIONS:  # not one it echoes without writing it (9.9.9)
            return encoder, content_type
    return choose_encoder("")


#: The OpenMetrics versions prometheus_client writes.
_OPENMETRICS_VERSIONS = frozenset({"1.0.0", "2.0.0"})


def before_collection() -> None:
    """Bring obskit's registry up to date before it is read, by a scrape or an OTLP push."""
    close_gone()  # resources freed since the last collection: their series go first
    forget_closed_loops()  # and loops closed under their lag monitor
    republish_after_fork()  # a forked worker's guard gauges, which restart from nothing


def render(accept: str | None) -> tuple[bytes, str]:
    """Return ``(body, content_type)`` for a scrape that sent ``Accept: accept``.

    One metric family that cannot be written (a collector of the app's that raises, a help text
    or a label with a lone surrogate) does not take the others down: the exposition is then
    written family by family, without the ones that fail (counted as
    ``obskit_internal_errors_total{component="metrics_render"}``)."""
    encoder, content_type = _negotiate(accept or "")
    before_collection()
    collector = _collector()
    try:
        return encoder(collector), content_type
    except Exception as exc:
        _selfmetrics.internal_error("metrics_render", exc)
    families: list[Metric] = []
    for part in _parts(collector):
        try:
            collected = list(part.collect())
        except Exception as exc:
            _selfmetrics.internal_error("metrics_render", exc)
            continue
        for family in collected:
            try:
                encoder(_Families([family]))
                families.append(family)
            except Exception as exc:
                _selfmetrics.internal_error("metrics_render", exc)
    return encoder(_Families(families)), content_type


class _Families(Collector):
    def __init__(self, families: list[Metric]) -> None:
        self.families = families

    def collect(self) -> Iterable[Metric]:
        return self.families


def _parts(collector: Any) -> list[Any]:
    """The collectors ``collector`` gathers, each to be collected on its own."""
    if isinstance(collector, _Union):
        return [part for registry in collector.registries for part in _parts(registry)]
    if isinstance(collector, CollectorRegistry):
        # prometheus_client keeps its collectors there (no public accessor); a registry laid
        # out otherwise is collected whole.
        registered = getattr(collector, "_collector_to_names", None)
        if isinstance(registered, dict):
            return list(registered)
    return [collector]


#: Connections the metrics port serves at once; past it new ones are closed at once. A scraper
#: needs one; a flood of idle connections must not take the app's threads and descriptors.
MAX_CONNECTIONS = 32


#: How often the metrics server's thread checks whether it is to stop, in seconds.
_POLL_INTERVAL = 0.05

#: What ``accept()`` fails with when the process (or the system) is out of descriptors or memory.
#: The connection stays queued, so the listening socket reads as ready again at once: the server
#: pauses before the next try -- _ACCEPT_PAUSE_FIRST seconds, doubled after each failure up to
#: _ACCEPT_PAUSE_MAX -- as asyncio's accept loop does, instead of failing in a tight loop.
_STARVED = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
_ACCEPT_PAUSE_FIRST = 0.05
_ACCEPT_PAUSE_MAX = 1.0


class MetricsServer:
    """``/metrics`` on its own port, served from a daemon thread (the ``metrics_port`` option).

    The process that made it serves it. A child forked from that process (a gunicorn worker
    under ``--preload``) inherits no serving thread: its copy of the socket is closed at the
    fork, so that the port is free once the parent lets it go, and its :meth:`close` has nothing
    to wait for.
    """

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
                try:
                    body, content_type = render(self.headers.get("Accept"))
                except Exception as exc:  # the scraper gets an answer, obskit counts it
                    _selfmetrics.internal_error("metrics_server", exc)
                    self.send_error(500)
                    return
                self.send_response(200)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if with_body:
                    self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                pass

        open_connections: dict[socket.socket, None] = {}  # oldest first
        lock = threading.Lock()
        # Set by close(): ends a pause after a failed accept at once (see get_request).
        stopping = threading.Event()

        class Server(ThreadingHTTPServer):
            daemon_threads = True
            #: The pause after the next accept that fails for want of descriptors or memory.
            accept_pause = _ACCEPT_PAUSE_FIRST

            def get_request(self) -> tuple[Any, Any]:
                try:
                    accepted = super().get_request()
                except OSError as exc:
                    if exc.errno in _STARVED:
                        self._starved(exc)
                    raise  # socketserver drops it; the connection waits in the queue
                self.accept_pause = _ACCEPT_PAUSE_FIRST
                return accepted

            def _starved(self, exc: OSError) -> None:
                # Without this pause the thread retried accept() as fast as it could: 50,000
                # times a second, most of a core in an idle worker, for as long as the app
                # held every descriptor.
                try:
                    _selfmetrics.current().internal_errors.labels("metrics_server").inc()
                except Exception:  # its child's file cannot be made now, in a multi-process dir
                    pass
                _selfmetrics.warn_once(
                    "metrics_port_accept",
                    "obskit: the metrics port cannot accept a connection (%s): the process is "
                    "out of file descriptors or memory; scrapes wait in the queue while obskit "
                    "retries every %g s at most, counted in "
                    'obskit_internal_errors_total{component="metrics_server"}',
                    exc.strerror or exc,
                    _ACCEPT_PAUSE_MAX,
                )
                stopping.wait(self.accept_pause)
                self.accept_pause = min(self.accept_pause * 2, _ACCEPT_PAUSE_MAX)

            def process_request(self, request: Any, client_address: Any) -> None:
                with lock:
                    oldest = None
                    if len(open_connections) >= MAX_CONNECTIONS:
                        oldest = next(iter(open_connections))
                        del open_connections[oldest]
                    open_connections[request] = None
                if oldest is not None:
                    # Each connection holds a thread and a descriptor, the app's: past the bound
                    # the longest-open one (a stalled client's, most likely) is ended so that a
                    # new scrape still gets through.
                    _selfmetrics.warn_once(
                        "metrics_port_full",
                        "obskit: the metrics port has %d connections open; closing the oldest",
                        MAX_CONNECTIONS,
                    )
                    try:
                        oldest.shutdown(socket.SHUT_RDWR)
                    except OSError:
                        pass
                super().process_request(request, client_address)

            def handle_error(self, request: Any, client_address: Any) -> None:
                # socketserver prints a traceback on the app's stderr; a scraper that hangs up
                # mid-answer is no error of anyone's, anything else is obskit's (counted).
                error = sys.exc_info()[1]
                if error is not None and not isinstance(error, (ConnectionError, TimeoutError)):
                    _selfmetrics.internal_error("metrics_server", error)

            def shutdown_request(self, request: Any) -> None:
                with lock:
                    open_connections.pop(request, None)
                super().shutdown_request(request)

        self._connections = open_connections
        self._connections_lock = lock
        self._stopping = stopping
        self._server = Server((host, port), Handler)
        self.port = int(self._server.server_address[1])
        self._pid = os.getpid()
        self.closed = False
        # close() waits for serve_forever's next poll: at the default 0.5 s, obskit.shutdown()
        # and every reconfiguration overran their timeout by that much.
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": _POLL_INTERVAL},
            name="obskit-metrics",
            daemon=True,
        )
        self._thread.start()
        _servers.add(self)

    def close(self) -> None:
        """Stop serving, release the port and end the connections still open (their threads
        end with them)."""
        if self._pid != os.getpid():
            return  # inherited: closed at the fork (_inherited); the parent serves and closes
        if self.closed:
            return
        self.closed = True
        self._stopping.set()
        self._server.shutdown()
        self._server.server_close()
        with self._connections_lock:
            connections = list(self._connections)
        for connection in connections:
            try:
                connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def _inherited(self) -> None:
        """In a forked child: close this process's copies of the parent's sockets. Only close():
        shutdown() would end the parent's listening socket and connections too."""
        for sock in (self._server.socket, *list(self._connections)):
            try:
                sock.close()
            except OSError:
                pass


#: Seconds between two attempts to bind a metrics port that another process holds.
BIND_RETRY_INTERVAL = 2.0


class MetricsPortRetry:
    """Binds the metrics port once it is free, from a daemon thread trying every
    :data:`BIND_RETRY_INTERVAL` seconds: on a gunicorn reload the new workers start while the
    old one still serves the port, and one of them must take it over when it exits. The server
    it starts is :attr:`server`; :meth:`close` stops trying, and closes that server."""

    def __init__(self, port: int, path: str = "/metrics") -> None:
        self.port = port
        self.path = path
        self.server: MetricsServer | None = None
        self._closed = False
        self._lock = threading.Lock()
        self._wake = threading.Event()
        _retries.add(self)
        self._start()

    def _start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="obskit-metrics-port", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        wake = self._wake
        while not wake.wait(BIND_RETRY_INTERVAL):
            try:
                server = MetricsServer(self.port, path=self.path)
            except OSError:
                continue
            with self._lock:
                if not self._closed:
                    self.server = server
                    return
            server.close()  # closed meanwhile
            return

    def close(self) -> None:
        """Stop trying; close the server if one was started."""
        with self._lock:
            self._closed = True
            server, self.server = self.server, None
        self._wake.set()
        if server is not None:
            server.close()
        # A bind in progress ends within moments, and closes what it bound (_run): the port is
        # free when close() returns.
        if self._thread is not threading.current_thread():
            self._thread.join(timeout=1.0)

    def _after_fork(self) -> None:
        # The trying thread is the parent's; a child that still has no port tries on its own.
        self._lock = threading.Lock()
        self._wake = threading.Event()
        if not self._closed and self.server is None:
            self._start()


#: Servers and retries of this process, for the fork hooks below (one hook for all of them: a
#: hook per object could never be unregistered).
_servers: weakref.WeakSet[MetricsServer] = weakref.WeakSet()
_retries: weakref.WeakSet[MetricsPortRetry] = weakref.WeakSet()


def _after_fork_in_parent() -> None:
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        return  # the port answers for every process of the directory, children included
    pid = os.getpid()
    if any(server._pid == pid and not server.closed for server in list(_servers)):
        _selfmetrics.warn_once(
            "metrics_port_fork",
            "obskit: this process serves the metrics port and has forked a child whose metrics "
            "that port will not show; if the children serve requests (gunicorn --preload), set "
            "the multiproc_dir option so that the port answers for all of them",
        )


def _after_fork_in_child() -> None:
    pid = os.getpid()
    for server in list(_servers):
        if server._pid != pid:
            server._inherited()
    for retry in list(_retries):
        retry._after_fork()


os.register_at_fork(after_in_parent=_after_fork_in_parent, after_in_child=_after_fork_in_child)


def start_metrics_server(
    port: int, path: str = "/metrics"
) -> MetricsServer | MetricsPortRetry | None:
    """Serve metrics on ``port``. When another process holds it (another gunicorn worker, the
    old worker on a reload), a :class:`MetricsPortRetry` that takes it over once it is free;
    None when it cannot be bound at all. Either is warned about once; metrics stay on the app's
    path meanwhile."""
    try:
        return MetricsServer(port, path=path)
    except OSError as exc:
        busy = exc.errno == errno.EADDRINUSE
        _selfmetrics.warn_once(
            f"metrics_port:{port}",
            "obskit: cannot serve metrics on port %d (%s); they stay on the app's path%s%s",
            port,
            exc,
            f" and obskit tries the port again every {BIND_RETRY_INTERVAL:g} s" if busy else "",
            # Another worker of the same server, most likely: its answers hold its own counts.
            "; if another worker of this server holds it, set the multiproc_dir option so that "
            "the port answers for every worker"
            if busy and not os.environ.get("PROMETHEUS_MULTIPROC_DIR")
            else "",
        )
        return MetricsPortRetry(port, path) if busy else None
