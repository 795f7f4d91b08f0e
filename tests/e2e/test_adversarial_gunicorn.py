"""Adversarial review of obskit under gunicorn's pre-fork model, with real gunicorn processes.

Small Flask and Django apps (written to a temporary directory, instrumented the documented way:
``Obskit(app)``, ``obskit.django.ObskitMiddleware`` first in ``MIDDLEWARE``, options from the
environment) run under gunicorn with sync and gthread workers, two or three of them, with and
without ``--preload``, recycled by ``--max-requests``, reloaded by SIGHUP, one killed with SIGKILL,
one killed by ``--timeout``, all stopped with SIGTERM. Spans go over OTLP/HTTP to the in-test
receiver (real protobuf, :mod:`tests.otlp_receiver`) with a batch delay far longer than a test,
so only the flush at a worker's exit can send them; metrics go to a multi-process directory and
are scraped over HTTP. A request that must stay in flight waits in its view for a file the test
creates (``/hold/<name>``), so no step depends on timing.

The promise checked: instrumentation never breaks the host app, and a pre-fork server's
telemetry is complete and correct -- each request's SERVER span exactly once with its own ids,
from the worker that served it; ``/metrics`` summed exactly over live, recycled and dead workers,
a dead worker's in-flight requests gone from it; access lines with the exported span's ids; no
traceback; the master's memory, descriptors and the multi-process directory bounded over
recycles.

A test marked ``xfail(strict=True)`` pins a bug still open; its reason says what is wrong.
"""

from __future__ import annotations

import collections
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import pytest
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as openmetrics_families,
)
from prometheus_client.parser import text_string_to_metric_families

from tests.child_process import ROOT, child_env
from tests.loopback import free_port, http_get
from tests.otlp_receiver import OtlpHttpReceiver, ReceivedSpan, attributes_dict

pytestmark = pytest.mark.e2e

READY_TIMEOUT = 30.0
REQUEST_TIMEOUT = 15.0
STOP_TIMEOUT = 15.0
#: Longest wait for a process event (a worker replaced, a marker file, spans arriving).
EVENT_TIMEOUT = 15.0
#: A batch delay no test reaches (ms): only the flush at a worker's exit exports spans.
NEVER_MS = "600000"
SERVER_KIND = 2
ERROR_CODE = 2
ITEM_ROUTE = "/items/<int:item_id>"
HOLD_ROUTE = "/hold/<name>"
OPENMETRICS = "application/openmetrics-text; version=1.0.0"


# -- the apps ----------------------------------------------------------------------------------

COMMON = '''
"""What the test apps share: the item answer and a request held in flight until released."""
import logging
import os
import time

log = logging.getLogger("gu_app")


def item(item_id):
    log.info("served item %s", item_id)
    return {"id": item_id, "pid": os.getpid()}


def hold(name):
    """Stay in flight until the test creates <GU_HOLD_DIR>/<name> (20 s at most); the file
    <name>.<pid>.held says the request is in the view."""
    directory = os.environ["GU_HOLD_DIR"]
    with open(os.path.join(directory, f"{name}.{os.getpid()}.held"), "w"):
        pass
    release = os.path.join(directory, name)
    deadline = time.monotonic() + 20.0
    while not os.path.exists(release) and time.monotonic() < deadline:
        time.sleep(0.02)
    return {"pid": os.getpid(), "released": os.path.exists(release)}


def probe():
    """This worker's pid and its span export thread (the one obskit's runtime uses)."""
    from obskit import _state

    processor = _state.runtime.processor
    if processor is None:  # traces off
        return {"pid": os.getpid(), "alive": None, "tid": None}
    thread = processor._thread
    return {"pid": os.getpid(), "alive": thread.is_alive(), "tid": thread.native_id}
'''

FLASK_APP = '''
"""Flask, instrumented as docs/logging.md shows (options from the environment)."""
import os

from flask import Flask

import gu_common
from obskit.flask import Obskit

app = Flask(__name__)
Obskit(app)

if os.environ.get("GU_WARMUP_SPAN"):
    # A span of the master's (under --preload), still queued when gunicorn forks the workers.
    from opentelemetry import trace

    with trace.get_tracer("gu-warmup").start_as_current_span("warmup-at-import"):
        pass


@app.get("/items/<int:item_id>")
def item(item_id):
    return gu_common.item(item_id)


@app.get("/hold/<name>")
def hold(name):
    return gu_common.hold(name)


@app.get("/probe")
def probe():
    return gu_common.probe()
'''

DJANGO_APP = '''
"""Django, with obskit's middleware first and obskit.django.urls included."""
from django.conf import settings

settings.configure(
    DEBUG=False,
    SECRET_KEY="adversarial-gunicorn",
    ALLOWED_HOSTS=["127.0.0.1"],
    ROOT_URLCONF="gu_django",
    MIDDLEWARE=["obskit.django.ObskitMiddleware"],
)

import django  # noqa: E402

django.setup()

from django.core.wsgi import get_wsgi_application  # noqa: E402
from django.http import JsonResponse  # noqa: E402
from django.urls import include, path  # noqa: E402

import gu_common  # noqa: E402


def item(request, item_id):
    return JsonResponse(gu_common.item(item_id))


def hold(request, name):
    return JsonResponse(gu_common.hold(name))


urlpatterns = [
    path("", include("obskit.django.urls")),
    path("items/<int:item_id>", item),
    path("hold/<name>", hold),
]
application = get_wsgi_application()
'''

#: gunicorn.conf.py as docs/configuration.md shows it.
CHILD_EXIT_CONF = "from obskit.gunicorn import child_exit  # noqa: F401\n"


# -- prerequisites -----------------------------------------------------------------------------


def require(what: str, present: bool, hint: str) -> None:
    """Fail under CI=true, skip elsewhere, when ``what`` is missing (the dev extra installs it)."""
    if present:
        return
    message = f"{what} is not installed ({hint})"
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


def gunicorn_settings() -> set[str]:
    try:
        import gunicorn.config
    except ImportError:
        require("gunicorn", False, "pip install -e '.[dev]'")
        raise  # not reached
    return {setting.name for setting in gunicorn.config.KNOWN_SETTINGS}


# -- servers -----------------------------------------------------------------------------------


@dataclass
class Sent:
    """One request the test sent: its path, trace context and what came back."""

    path: str
    trace_id: str
    parent_id: str
    status: int
    pid: int | None


@dataclass
class Server:
    """One gunicorn master (its own session) and the directory it works in."""

    name: str
    process: subprocess.Popen[bytes]
    port: int
    site: Path
    log: Path
    multiproc: Path | None
    metrics_port: int | None = None
    sent: list[Sent] = field(default_factory=list)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def output(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except OSError:
            return "(no output)"

    def tail(self) -> str:
        return f"--- {self.name} ---\n{self.output()[-4000:]}"

    def get(self, path: str, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
        status, _, body = http_get(self.base + path, headers, REQUEST_TIMEOUT)
        return status, body

    def workers(self) -> set[int]:
        """The master's live children (gunicorn's workers)."""
        try:
            children = psutil.Process(self.process.pid).children()
        except psutil.NoSuchProcess:
            return set()
        running = set()
        for child in children:
            try:
                if child.status() != psutil.STATUS_ZOMBIE:
                    running.add(child.pid)
            except psutil.NoSuchProcess:  # ended and reaped meanwhile
                pass
        return running

    def traced(self, path: str) -> Sent:
        trace_id, parent_id = secrets.token_hex(16), secrets.token_hex(8)
        status, body = self.get(path, {"traceparent": f"00-{trace_id}-{parent_id}-01"})
        pid = json.loads(body).get("pid") if status == 200 else None
        sent = Sent(path, trace_id, parent_id, status, pid)
        self.sent.append(sent)
        return sent

    def send_items(self, first: int, count: int, clients: int = 4) -> list[Sent]:
        """``count`` traced ``/items/<n>`` requests (n unique), ``clients`` at a time."""
        with ThreadPoolExecutor(max_workers=clients) as pool:
            done = list(pool.map(lambda n: self.traced(f"/items/{n}"), range(first, first + count)))
        assert [200] * count == [s.status for s in done], self.tail()
        return done

    def scrape(self, accept: str | None = None) -> str:
        url = (
            f"http://127.0.0.1:{self.metrics_port}/metrics"
            if self.metrics_port is not None
            else f"{self.base}/metrics"
        )
        status, _, body = http_get(url, {"Accept": accept} if accept else None, 10.0)
        assert 200 == status, body[:500]
        return body.decode()

    def settled(self, items: int) -> str:
        """A scrape once it counts ``items`` item requests (5 s at most, then the last one): a
        sync worker counts a request when it closes the response, just after the client read
        it, so the scrape that follows at once may come first."""
        deadline = time.monotonic() + 5.0
        text = self.scrape()
        while requests_total(text) != items and time.monotonic() < deadline:
            time.sleep(0.05)
            text = self.scrape()
        return text

    def json_lines(self) -> list[dict[str, Any]]:
        lines = []
        for line in self.output().splitlines():
            if line.startswith("{"):
                try:
                    lines.append(json.loads(line))
                except ValueError:
                    pass
        return lines

    def held(self, name: str) -> int:
        """Wait until the request ``/hold/<name>`` is in its view; the pid serving it."""
        deadline = time.monotonic() + EVENT_TIMEOUT
        while time.monotonic() < deadline:
            found = list(self.site.glob(f"hold/{name}.*.held"))
            if found:
                return int(found[0].name.split(".")[1])
            self.check_alive()
            time.sleep(0.02)
        pytest.fail(f"/hold/{name} never reached its view:\n{self.tail()}")

    def release(self, name: str) -> None:
        (self.site / "hold" / name).touch()

    def check_alive(self) -> None:
        if self.process.poll() is not None:
            pytest.fail(f"{self.name} exited early:\n{self.tail()}")


def wait_until(check: Callable[[], bool], what: Callable[[], str], timeout: float) -> None:
    """Poll ``check`` (connection errors count as "not yet") until it holds, or fail."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except OSError:
            pass
        time.sleep(0.05)
    pytest.fail(f"not within {timeout}s: {what()}")


def poll(check: Callable[[], bool], timeout: float) -> bool:
    """Whether ``check`` comes to hold within ``timeout`` seconds (no failure)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if check():
                return True
        except OSError:
            pass
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)


def stop(server: Server) -> None:
    """SIGTERM (graceful), then SIGKILL to the whole session after STOP_TIMEOUT seconds."""
    process = server.process
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=STOP_TIMEOUT)
            return
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(process.pid, signal.SIGKILL)  # the workers too (start_new_session)
    except ProcessLookupError:
        pass
    process.wait(timeout=5)


def write_site(site: Path) -> None:
    site.mkdir(parents=True, exist_ok=True)
    (site / "hold").mkdir(exist_ok=True)
    (site / "gu_common.py").write_text(textwrap.dedent(COMMON))
    (site / "gu_flask.py").write_text(textwrap.dedent(FLASK_APP))
    (site / "gu_django.py").write_text(textwrap.dedent(DJANGO_APP))
    (site / "gu_conf.py").write_text(CHILD_EXIT_CONF)


@contextmanager
def gunicorn(
    site: Path,
    name: str,
    app: str,
    *args: str,
    child_exit: bool = True,
    multiproc: bool = True,
    metrics_port: bool = False,
    **env: str,
) -> Iterator[Server]:
    """Run gunicorn on ``app`` with ``args``; always stopped (SIGTERM, then SIGKILL)."""
    known = gunicorn_settings()
    write_site(site)
    for _ in range(3):
        server = _start_gunicorn(
            site, name, app, args, known, child_exit, multiproc, metrics_port, env
        )

        def ready(server: Server = server) -> bool:
            # Any answer on the app's port: a worker has loaded the app. (/metrics is excluded
            # from the RED metrics; with a metrics port the app answers it 404.)
            if "Connection in use" in server.output():
                raise _PortTaken  # another process took the free port first: try another
            server.check_alive()
            return server.get("/metrics")[0] < 500

        try:
            wait_until(ready, server.tail, READY_TIMEOUT)
        except _PortTaken:
            stop(server)
            continue
        break
    else:
        pytest.fail(f"{name}: three free ports taken before gunicorn bound them")
    try:
        yield server
    finally:
        stop(server)


class _PortTaken(Exception):
    """The port a test picked was bound by another process before gunicorn bound it (another
    test run on the same host picks from the same ephemeral range)."""


def _start_gunicorn(
    site: Path,
    name: str,
    app: str,
    args: tuple[str, ...],
    known: set[str],
    child_exit: bool,
    multiproc: bool,
    metrics_port: bool,
    env: dict[str, str],
) -> Server:
    port = free_port()
    directory = site / f"{name}-prometheus" if multiproc else None
    if directory is not None:
        shutil.rmtree(directory, ignore_errors=True)
        directory.mkdir()
    argv = [sys.executable, "-m", "gunicorn", "-b", f"127.0.0.1:{port}"]
    argv += ["--graceful-timeout", "10", *args]
    if child_exit:
        argv += ["-c", str(site / "gu_conf.py")]
    if "control_socket_disable" in known:
        argv.append("--no-control-socket")  # gunicorn 24+: one shared socket path by default
    argv.append(app)
    extra = {
        "PYTHONPATH": os.pathsep.join([str(ROOT), str(site)]),
        "PYTHONUNBUFFERED": "1",
        "OTEL_SERVICE_NAME": name,
        "GU_HOLD_DIR": str(site / "hold"),
        **env,
    }
    if directory is not None:
        extra["PROMETHEUS_MULTIPROC_DIR"] = str(directory)
    scrape_port = free_port() if metrics_port else None
    if scrape_port is not None:
        extra["OBSKIT_METRICS_PORT"] = str(scrape_port)
    log = site / f"{name}.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            argv,
            cwd=site,
            env=child_env(**extra),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return Server(name, process, port, site, log, directory, scrape_port)


# -- reading telemetry -------------------------------------------------------------------------


Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def samples(text: str) -> Samples:
    """Every sample of a text exposition (prometheus_client's parser), by name and labels."""
    found: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return found


def value(found: Samples, name: str, **labels: str) -> float | None:
    return found.get((name, frozenset(labels.items())))


def requests_total(text: str, route: str = ITEM_ROUTE, status: str = "200") -> float | None:
    return value(samples(text), "http_requests_total", method="GET", route=route, status=status)


def in_flight(text: str, route: str) -> float:
    """``http_requests_in_flight`` of ``route`` (absent counts as 0)."""
    return value(samples(text), "http_requests_in_flight", method="GET", route=route) or 0.0


def server_spans(spans: list[ReceivedSpan]) -> list[ReceivedSpan]:
    return [s for s in spans if s.span.kind == SERVER_KIND]


def span_attributes(received: ReceivedSpan) -> dict[str, Any]:
    return attributes_dict(received.span.attributes)


def wait_for_traces(rx: OtlpHttpReceiver, trace_ids: set[str]) -> list[ReceivedSpan]:
    """Every span received once the SERVER spans of ``trace_ids`` are all in (bounded)."""
    rx.wait_for(
        lambda: trace_ids <= {s.span.trace_id.hex() for s in server_spans(rx.spans())},
        EVENT_TIMEOUT,
    )
    time.sleep(0.2)  # a duplicate would come with or right after the last batch
    return rx.spans()


def tracebacks(output: str) -> list[str]:
    """Lines that show a Python traceback or an exception ignored at exit."""
    markers = ("Traceback (most recent call last)", "Exception ignored", "Exception in thread")
    return [line[:300] for line in output.splitlines() if any(m in line for m in markers)]


def db_files(directory: Path) -> dict[int, list[str]]:
    """The multi-process directory's ``*.db`` files by the pid in their name."""
    by_pid: dict[int, list[str]] = collections.defaultdict(list)
    for path in directory.glob("*.db"):
        pid = path.stem.rpartition("_")[2]
        if pid.isdigit():  # not a file of one process's (an archive of ended ones, say)
            by_pid[int(pid)].append(path.name)
    return by_pid


def dead_files(directory: Path) -> int:
    """How many ``*.db`` files belong to processes that no longer run."""
    return sum(
        len(names) for pid, names in db_files(directory).items() if not psutil.pid_exists(pid)
    )


def dead_kinds(directory: Path) -> dict[str, set[int]]:
    """The kinds (``counter``, ``gauge_livesum``...) of the files of processes no longer
    running, each with those processes."""
    kinds: dict[str, set[int]] = collections.defaultdict(set)
    for pid, names in db_files(directory).items():
        if not psutil.pid_exists(pid):
            for name in names:
                kinds[name.rpartition("_")[0]].add(pid)
    return kinds


def wait_replaced(server: Server, old: set[int], count: int) -> set[int]:
    """Wait until ``count`` workers run and none of ``old`` is among them; the new ones."""
    wait_until(
        lambda: len(server.workers()) == count and not server.workers() & old,
        lambda: f"workers {server.workers()} still include {old}\n{server.tail()}",
        EVENT_TIMEOUT,
    )
    return server.workers()


# -- scenario 1: Flask, sync, three workers, --preload, --max-requests, SIGHUP -----------------


@dataclass
class Preloaded:
    """What the preloaded Flask service did and sent."""

    server: Server
    spans: list[ReceivedSpan]
    metrics: list[Any]  # decoded ExportMetricsServiceRequest messages
    logs: list[Any]  # decoded ExportLogsServiceRequest messages
    text: str  # /metrics, classic text, after all requests
    openmetrics: str  # /metrics, OpenMetrics
    scrapes: list[float | None]  # http_requests_total of items in consecutive scrapes
    probes: list[dict[str, Any]]  # /probe answers, with "in_worker" (the thread runs there)
    master: list[tuple[int, int, int]]  # (rss, fds, threads) of the master after each phase
    dead: list[int]  # files of ended processes in the directory after each phase
    dead_kinds: dict[str, set[int]]  # their kinds (counter, gauge_max...) -> pids, at the end
    items: int  # /items requests sent


PRELOAD_ITEMS = 48  # per phase


@pytest.fixture(scope="module")
def preloaded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Preloaded]:
    site = tmp_path_factory.mktemp("gu-preload")
    with OtlpHttpReceiver() as rx:
        with gunicorn(
            site,
            "gu-preload",
            "gu_flask:app",
            "-w", "3", "-k", "sync", "--preload", "--max-requests", "3",
            "--logger-class", "obskit.gunicorn.Logger", "--access-logfile", "-",
            OTEL_EXPORTER_OTLP_ENDPOINT=rx.endpoint,
            OTEL_BSP_SCHEDULE_DELAY=NEVER_MS,
            OTEL_METRICS_EXPORTER="prometheus+otlp",
            OTEL_METRIC_EXPORT_INTERVAL="500",
            OTEL_LOGS_EXPORTER="otlp",
            OTEL_BLRP_SCHEDULE_DELAY="200",
            OBSKIT_LOGGING="true",
            GU_WARMUP_SPAN="1",
        ) as server:  # fmt: skip
            assert server.multiproc is not None
            master = psutil.Process(server.process.pid)
            resources: list[tuple[int, int, int]] = []
            dead: list[int] = []

            def measure() -> None:
                wait_until(lambda: 3 == len(server.workers()), server.tail, EVENT_TIMEOUT)
                time.sleep(0.3)  # the master has reaped and spawned what it will
                resources.append((master.memory_info().rss, master.num_fds(), master.num_threads()))
                assert server.multiproc is not None
                dead.append(dead_files(server.multiproc))

            server.send_items(0, PRELOAD_ITEMS)
            measure()  # also: the three workers run
            before = server.workers()
            server.process.send_signal(signal.SIGHUP)  # new workers forked from the master again
            wait_replaced(server, before, 3)
            probes = []
            for _ in range(6):
                status, body = server.get("/probe")
                assert 200 == status, body
                answer = json.loads(body)
                try:
                    threads = {t.id for t in psutil.Process(answer["pid"]).threads()}
                    answer["in_worker"] = answer["tid"] in threads
                except psutil.NoSuchProcess:  # recycled meanwhile (--max-requests 3)
                    answer["in_worker"] = None
                probes.append(answer)
            server.send_items(PRELOAD_ITEMS, PRELOAD_ITEMS)
            measure()
            text = server.settled(2 * PRELOAD_ITEMS)
            scrapes = [requests_total(server.scrape()) for _ in range(4)]
            openmetrics = server.scrape(OPENMETRICS)
            kinds = dead_kinds(server.multiproc)
        # Stopped: every worker and the master flushed at exit.
        expected = {s.trace_id for s in server.sent}
        wait_for_traces(rx, expected)
        rx.wait_for(lambda: "warmup-at-import" in {s.span.name for s in rx.spans()}, 5.0)
        yield Preloaded(
            server,
            rx.spans(),
            rx.requests("metrics"),
            rx.requests("logs"),
            text,
            openmetrics,
            scrapes,
            probes,
            resources,
            dead,
            kinds,
            2 * PRELOAD_ITEMS,
        )


def test_preload_every_request_has_one_server_span_from_its_worker(preloaded: Preloaded) -> None:
    """Recycled every three requests, reloaded once, stopped with SIGTERM: each request's SERVER
    span arrives exactly once (the flush at each worker's exit), continues the incoming
    traceparent, and names in ``process.pid`` the worker that answered, not the master."""
    server = preloaded.server
    spans = server_spans(preloaded.spans)
    by_trace = collections.defaultdict(list)
    for received in spans:
        by_trace[received.span.trace_id.hex()].append(received)
    items = [s for s in server.sent if s.path.startswith("/items/")]
    assert preloaded.items == len(items)
    assert {s.trace_id: 1 for s in items} == {s.trace_id: len(by_trace[s.trace_id]) for s in items}
    for sent in items:
        (received,) = by_trace[sent.trace_id]
        assert sent.parent_id == received.span.parent_span_id.hex()
        assert f"GET {ITEM_ROUTE}" == received.span.name
        assert sent.path == span_attributes(received)["url.path"]
        assert sent.pid == received.resource["process.pid"]
    assert server.process.pid not in {s.pid for s in items}
    assert len({s.pid for s in items}) > 6, "--max-requests 3 recycled no worker"


def test_preload_span_ids_are_unique_across_workers(preloaded: Preloaded) -> None:
    """Workers forked from one master draw their own ids: no span id (nor new trace id) twice."""
    ids = [s.span.span_id.hex() for s in preloaded.spans]
    assert [] == [i for i, n in collections.Counter(ids).items() if n > 1]
    assert len(ids) >= preloaded.items


def test_preload_span_queued_in_the_master_is_exported_once_by_the_master(
    preloaded: Preloaded,
) -> None:
    """A span the app ended at import, still queued when the master forked its workers (twice:
    at start and at SIGHUP): exported once, by the master at its exit, under the master's pid."""
    warmups = [s for s in preloaded.spans if s.span.name == "warmup-at-import"]
    assert [preloaded.server.process.pid] == [s.resource["process.pid"] for s in warmups]


def test_preload_each_worker_runs_its_own_export_thread(preloaded: Preloaded) -> None:
    """After the fork (and the fork after SIGHUP), each worker's span pipeline has a live export
    thread of its own: its thread id is among the worker process's threads."""
    checked = [p for p in preloaded.probes if p["in_worker"] is not None]
    assert len(checked) >= 2, preloaded.probes
    assert all(p["alive"] and p["in_worker"] for p in checked), preloaded.probes


def test_preload_metrics_are_exact_across_recycled_workers(preloaded: Preloaded) -> None:
    """``http_requests_total`` and the duration histogram's count, summed over live workers and
    the dozens of recycled ones, equal the requests sent, in every scrape; nothing in flight."""
    sent = float(preloaded.items)
    assert [sent] * 4 == preloaded.scrapes
    found = samples(preloaded.text)
    labels = {"method": "GET", "route": ITEM_ROUTE}
    assert sent == value(found, "http_request_duration_seconds_count", **labels)
    assert sent == value(found, "http_request_duration_seconds_bucket", le="+Inf", **labels)
    assert 0.0 == in_flight(preloaded.text, ITEM_ROUTE)


def test_preload_exposition_parses_as_text_openmetrics_and_for_promtool(
    preloaded: Preloaded,
) -> None:
    """The multi-process exposition parses with prometheus_client's text and OpenMetrics parsers
    (the same totals) and ``promtool check metrics`` finds nothing."""
    families = {f.name: f for f in openmetrics_families(preloaded.openmetrics)}
    (total,) = [
        s.value
        for s in families["http_requests"].samples
        if s.name == "http_requests_total" and s.labels.get("route") == ITEM_ROUTE
    ]
    assert float(preloaded.items) == total
    require("promtool", shutil.which("promtool") is not None, "apt-get install prometheus")
    checked = subprocess.run(
        ["promtool", "check", "metrics"],
        input=preloaded.text.encode(),
        capture_output=True,
        timeout=30,
        check=False,
    )
    assert (0, b"", b"") == (checked.returncode, checked.stdout, checked.stderr)


def test_preload_access_lines_carry_the_exported_spans_ids(preloaded: Preloaded) -> None:
    """``--logger-class obskit.gunicorn.Logger``: each request's access line, once, as JSON,
    with the trace id and span id of the SERVER span the collector received."""
    exported = {s.span.trace_id.hex(): s.span.span_id.hex() for s in server_spans(preloaded.spans)}
    access = collections.defaultdict(list)
    for line in preloaded.server.json_lines():
        if line.get("logger") == "gunicorn.access":
            access[line.get("url.path")].append(line)
    items = [s for s in preloaded.server.sent if s.path.startswith("/items/")]
    expected = {s.path: [(s.trace_id, exported.get(s.trace_id))] for s in items}
    actual = {
        s.path: [(line.get("trace_id"), line.get("span_id")) for line in access[s.path]]
        for s in items
    }
    assert expected == actual


def test_preload_no_traceback_anywhere(preloaded: Preloaded) -> None:
    """Recycling, reloading and stopping print no traceback (master and workers)."""
    assert [] == tracebacks(preloaded.server.output())


def test_preload_master_memory_and_descriptors_stay_bounded(preloaded: Preloaded) -> None:
    """The master forks a worker about every third request: between the first phase and the
    second (dozens more forks) its descriptors and threads do not grow, nor its memory by more
    than 8 MiB."""
    (rss1, fds1, threads1), (rss2, fds2, threads2) = preloaded.master
    assert fds2 <= fds1 + 2, preloaded.master  # a worker being replaced holds a temp file
    assert threads1 == threads2
    assert rss2 - rss1 < 8 * 1024 * 1024


# Documented (docs/configuration.md, multi-process mode): a dead worker's counter, histogram
# and max-gauge files stay (prometheus_client's rule: their counts are part of every total), so
# the directory grows by about three files per recycled worker; its live gauges (in-flight
# requests) are what child_exit and the scrape remove.
def test_preload_ended_workers_leave_only_their_totals(preloaded: Preloaded) -> None:
    """Of the recycled workers, only the files that hold totals stay: live gauges are left by
    at most the worker that the last scrape itself recycled (a scrape is a request here, and
    it cleaned up before that worker ended)."""
    first, second = preloaded.dead
    assert 0 < first <= second, preloaded.dead
    kinds = preloaded.dead_kinds
    live = {pid for kind, pids in kinds.items() if kind.startswith("gauge_live") for pid in pids}
    assert len(live) <= 1, kinds
    totals = {"counter", "histogram", "gauge_max", "gauge_min", "gauge_all"}
    assert {kind for kind in kinds if not kind.startswith("gauge_live")} <= totals, kinds
    assert len(kinds["counter"]) > 1, kinds


def pids_of(requests: list[Any], kind: str, wanted: Callable[[Any], bool]) -> set[int]:
    """The ``process.pid`` of the resources of OTLP ``kind`` requests with a wanted item."""
    pids = set()
    for request in requests:
        resources = request.resource_metrics if kind == "metrics" else request.resource_logs
        for resource in resources:
            scopes = resource.scope_metrics if kind == "metrics" else resource.scope_logs
            items = [
                item
                for scope in scopes
                for item in (scope.metrics if kind == "metrics" else scope.log_records)
            ]
            if any(wanted(item) for item in items):
                pids.add(attributes_dict(resource.resource.attributes)["process.pid"])
    return pids


def served_by(preloaded: Preloaded) -> set[int]:
    """The workers that answered a request of the test (an item or a probe)."""
    items = {s.pid for s in preloaded.server.sent if s.pid is not None}
    return items | {p["pid"] for p in preloaded.probes}


# A bug this test found, since fixed: obskit._otlp_signals.build_metrics builds the OTLP metrics
# resource in the --preload master: every worker pushes http.server.request.duration under the
# master's process.pid
def test_preload_otlp_metrics_name_the_worker_that_recorded_them(preloaded: Preloaded) -> None:
    """Each worker's OTLP metrics push names that worker in ``process.pid``."""
    pids = pids_of(
        preloaded.metrics, "metrics", lambda metric: metric.name == "http.server.request.duration"
    )
    assert pids, "no OTLP push carried the request duration"
    assert pids <= served_by(preloaded), (pids, preloaded.server.process.pid)


# A bug this test found, since fixed: obskit._otlp_signals.build_logs builds the OTLP logs resource
# in the --preload master: every worker's log records go out under the master's process.pid
def test_preload_otlp_logs_name_the_worker_that_wrote_them(preloaded: Preloaded) -> None:
    """The app's log records exported over OTLP name the worker that wrote them."""
    pids = pids_of(
        preloaded.logs, "logs", lambda record: "served item" in str(record.body.string_value)
    )
    assert pids, "no OTLP log push carried the app's records"
    assert pids <= served_by(preloaded), (pids, preloaded.server.process.pid)


# -- scenario 2: Django, gthread, two workers, --max-requests, SIGHUP, SIGTERM mid-request -----


@dataclass
class Django:
    server: Server
    spans: list[ReceivedSpan]
    text: str  # /metrics after both phases
    held: Sent  # the request in flight at SIGTERM
    generations: list[set[int]]  # workers before and after SIGHUP


DJANGO_ITEMS = 30  # per phase


@pytest.fixture(scope="module")
def django_gthread(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Django]:
    site = tmp_path_factory.mktemp("gu-django")
    with OtlpHttpReceiver() as rx:
        with gunicorn(
            site,
            "gu-django",
            "gu_django:application",
            "-w", "2", "-k", "gthread", "--threads", "4", "--max-requests", "10",
            "--logger-class", "obskit.gunicorn.Logger", "--access-logfile", "-",
            OTEL_EXPORTER_OTLP_ENDPOINT=rx.endpoint,
            OTEL_BSP_SCHEDULE_DELAY=NEVER_MS,
            OBSKIT_LOGGING="true",
        ) as server:  # fmt: skip
            server.send_items(0, DJANGO_ITEMS, clients=6)
            wait_until(lambda: 2 == len(server.workers()), server.tail, EVENT_TIMEOUT)
            before = server.workers()
            server.process.send_signal(signal.SIGHUP)  # no --preload: new workers import anew
            after = wait_replaced(server, before, 2)
            server.send_items(DJANGO_ITEMS, DJANGO_ITEMS, clients=6)
            text = server.settled(2 * DJANGO_ITEMS)
            # A request in flight when SIGTERM comes: gthread finishes it, then the worker exits.
            result: list[Sent] = []
            client = threading.Thread(target=lambda: result.append(server.traced("/hold/term")))
            client.start()
            server.held("term")
            server.process.send_signal(signal.SIGTERM)
            time.sleep(0.3)
            server.release("term")
            client.join(REQUEST_TIMEOUT + 5)
            server.process.wait(STOP_TIMEOUT)
        assert 1 == len(result), server.tail()
        spans = wait_for_traces(rx, {s.trace_id for s in server.sent})
        yield Django(server, spans, text, result[0], [before, after])


def test_django_every_request_has_one_server_span_across_reload_and_recycling(
    django_gthread: Django,
) -> None:
    """gthread workers recycled every ten requests and replaced by SIGHUP: each request's SERVER
    span exactly once, with its route and its worker's pid."""
    by_trace = collections.Counter(
        s.span.trace_id.hex() for s in server_spans(django_gthread.spans)
    )
    sent = django_gthread.server.sent
    assert 2 * DJANGO_ITEMS + 1 == len(sent)
    assert {s.trace_id: 1 for s in sent} == {s.trace_id: by_trace[s.trace_id] for s in sent}
    pids = {
        s.span.trace_id.hex(): s.resource["process.pid"] for s in server_spans(django_gthread.spans)
    }
    assert {s.trace_id: s.pid for s in sent} == {s.trace_id: pids[s.trace_id] for s in sent}


def test_django_request_in_flight_at_sigterm_is_answered_and_exported(
    django_gthread: Django,
) -> None:
    """A request in its view when the master gets SIGTERM is answered, and its span is sent by
    the flush at the worker's exit."""
    held = django_gthread.held
    assert 200 == held.status
    (span,) = [
        s for s in server_spans(django_gthread.spans) if s.span.trace_id.hex() == held.trace_id
    ]
    assert f"GET {HOLD_ROUTE}" == span.span.name
    assert 200 == span_attributes(span)["http.response.status_code"]


def test_django_metrics_count_both_generations_of_workers(django_gthread: Django) -> None:
    """After SIGHUP replaced every worker (and --max-requests several more), ``/metrics``
    counts the requests of the old and the new workers: exactly those sent."""
    old, new = django_gthread.generations
    assert not old & new
    assert float(2 * DJANGO_ITEMS) == requests_total(django_gthread.text)
    assert 0.0 == in_flight(django_gthread.text, ITEM_ROUTE)


def test_django_access_lines_carry_the_exported_spans_ids(django_gthread: Django) -> None:
    """Django under gthread: each access line once, with the exported SERVER span's ids."""
    exported = {
        s.span.trace_id.hex(): s.span.span_id.hex() for s in server_spans(django_gthread.spans)
    }
    access = collections.defaultdict(list)
    for line in django_gthread.server.json_lines():
        if line.get("logger") == "gunicorn.access":
            access[line.get("url.path")].append((line.get("trace_id"), line.get("span_id")))
    sent = django_gthread.server.sent
    assert {s.path: [(s.trace_id, exported.get(s.trace_id))] for s in sent} == {
        s.path: access[s.path] for s in sent
    }


def test_django_no_traceback_anywhere(django_gthread: Django) -> None:
    assert [] == tracebacks(django_gthread.server.output())


# -- scenario 3: a gthread worker killed with SIGKILL mid-request ------------------------------


@dataclass
class Killed:
    server: Server
    before: str  # /metrics with the held request in flight
    after: str  # /metrics once the killed worker was replaced
    answered: int  # the status of a request sent after the kill
    victim: int


@pytest.fixture(scope="module")
def killed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Killed]:
    site = tmp_path_factory.mktemp("gu-kill")
    # No child_exit hook: docs/configuration.md says a scrape drops a dead worker's live
    # gauges without it.
    with gunicorn(
        site,
        "gu-kill",
        "gu_flask:app",
        "-w", "2", "-k", "gthread", "--threads", "2",
        child_exit=False,
        OTEL_TRACES_EXPORTER="none",
    ) as server:  # fmt: skip
        for n in range(10):
            assert 200 == server.get(f"/items/{n}")[0]
        errors: list[BaseException] = []

        def held_request() -> None:
            try:
                server.get("/hold/forever")
            except OSError as exc:  # the worker dies under it
                errors.append(exc)

        client = threading.Thread(target=held_request)
        client.start()
        victim = server.held("forever")
        wait_until(lambda: in_flight(server.scrape(), HOLD_ROUTE) == 1.0, server.tail, 5.0)
        before = server.scrape()
        workers = server.workers()
        os.kill(victim, signal.SIGKILL)
        client.join(REQUEST_TIMEOUT + 5)
        wait_replaced(server, {victim}, 2)
        assert workers - {victim} <= server.workers()
        # Give the scrape-time clean-up its chance (bounded); the test reads the last scrape.
        poll(lambda: in_flight(server.scrape(), HOLD_ROUTE) == 0.0, 5.0)
        after = server.scrape()
        answered = server.get("/items/99")[0]
        yield Killed(server, before, after, answered, victim)


def test_killed_worker_in_flight_request_leaves_metrics(killed: Killed) -> None:
    """The request the SIGKILLed worker held stops counting in ``http_requests_in_flight``."""
    assert 1.0 == in_flight(killed.before, HOLD_ROUTE)
    assert 0.0 == in_flight(killed.after, HOLD_ROUTE)


def test_killed_worker_counters_survive(killed: Killed) -> None:
    """The requests the killed worker had answered still count, summed with the other's."""
    assert 10.0 == requests_total(killed.before)
    assert 10.0 == requests_total(killed.after)
    assert f"gauge_livesum_{killed.victim}.db" not in os.listdir(str(killed.server.multiproc))


def test_killed_worker_the_app_keeps_serving_without_traceback(killed: Killed) -> None:
    assert 200 == killed.answered
    assert [] == tracebacks(killed.server.output())


# -- scenario 4: a sync worker killed by --timeout (--preload) ---------------------------------


@dataclass
class TimedOut:
    server: Server
    spans: list[ReceivedSpan]
    stuck: Sent
    text: str
    answered: list[int]


@pytest.fixture(scope="module")
def timed_out(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TimedOut]:
    site = tmp_path_factory.mktemp("gu-timeout")
    with OtlpHttpReceiver() as rx:
        with gunicorn(
            site,
            "gu-timeout",
            "gu_flask:app",
            "-w", "2", "-k", "sync", "--preload", "--timeout", "3",
            OTEL_EXPORTER_OTLP_ENDPOINT=rx.endpoint,
            OTEL_BSP_SCHEDULE_DELAY=NEVER_MS,
            OBSKIT_LOGGING="true",
        ) as server:  # fmt: skip
            server.send_items(0, 6, clients=2)
            result: list[Sent] = []
            client = threading.Thread(target=lambda: result.append(server.traced("/hold/stuck")))
            client.start()
            victim = server.held("stuck")  # never released: gunicorn aborts the worker
            client.join(REQUEST_TIMEOUT + 5)
            assert 1 == len(result), server.tail()
            wait_until(lambda: victim not in server.workers(), server.tail, EVENT_TIMEOUT)
            wait_until(lambda: 2 == len(server.workers()), server.tail, EVENT_TIMEOUT)
            answered = [server.traced(f"/items/{n}").status for n in range(6, 9)]
            text = server.settled(9)
        spans = wait_for_traces(rx, {s.trace_id for s in server.sent})
        yield TimedOut(server, spans, result[0], text, answered)


def test_timeout_killed_request_is_exported_as_an_error(timed_out: TimedOut) -> None:
    """The request the worker was stuck in when gunicorn aborted it (SIGABRT, SystemExit):
    answered 500 by gunicorn, its SERVER span exported at the worker's exit as an error."""
    assert 500 == timed_out.stuck.status
    (span,) = [
        s
        for s in server_spans(timed_out.spans)
        if s.span.trace_id.hex() == timed_out.stuck.trace_id
    ]
    assert ERROR_CODE == span.span.status.code
    assert 500 == span_attributes(span)["http.response.status_code"]


def test_timeout_every_other_span_is_flushed_once(timed_out: TimedOut) -> None:
    """The spans the aborted worker had queued are flushed at its exit, each once."""
    by_trace = collections.Counter(s.span.trace_id.hex() for s in server_spans(timed_out.spans))
    sent = timed_out.server.sent
    assert {s.trace_id: 1 for s in sent} == {s.trace_id: by_trace[s.trace_id] for s in sent}


def test_timeout_metrics_count_it_once_and_nothing_stays_in_flight(timed_out: TimedOut) -> None:
    assert [200, 200, 200] == timed_out.answered
    assert 9.0 == requests_total(timed_out.text)
    assert 1.0 == requests_total(timed_out.text, HOLD_ROUTE, "500")
    assert 0.0 == in_flight(timed_out.text, HOLD_ROUTE)


def test_timeout_only_gunicorn_reports_the_aborted_request(timed_out: TimedOut) -> None:
    """The one traceback is gunicorn's own "Error handling request" (a JSON line): obskit adds
    none, at the abort or at the exit flush."""
    output = timed_out.server.output()
    lines = [line for line in output.splitlines() if tracebacks(line)]
    assert 1 == len(lines), tracebacks(output)
    (line,) = lines
    record = json.loads(line)
    assert ("gunicorn.error", "SystemExit") == (record["logger"], record["exception.type"])
    assert record["message"].startswith("Error handling request GET /hold/stuck")


# -- scenario 5: the separate metrics port (OBSKIT_METRICS_PORT) -------------------------------


@dataclass
class Reloaded:
    server: Server
    before: int | str  # the metrics port's answer before SIGHUP
    after: int | str  # ... once the old worker is gone and the new one serves


def port_answer(server: Server) -> int | str:
    try:
        return http_get(f"http://127.0.0.1:{server.metrics_port}/metrics", None, 3.0)[0]
    except OSError as exc:
        return type(exc).__name__


@pytest.fixture(scope="module")
def reloaded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Reloaded]:
    site = tmp_path_factory.mktemp("gu-port-hup")
    with gunicorn(
        site,
        "gu-port-hup",
        "gu_flask:app",
        "-w", "1", "-k", "sync",
        metrics_port=True,
        OTEL_TRACES_EXPORTER="none",
    ) as server:  # fmt: skip
        before = port_answer(server)
        (old,) = server.workers()
        client = threading.Thread(target=lambda: server.get("/hold/reload"))
        client.start()
        server.held("reload")
        server.process.send_signal(signal.SIGHUP)
        # The new worker is up (it answers) while the old one still finishes its request.
        wait_until(
            lambda: json.loads(server.get("/probe")[1])["pid"] != old,
            server.tail,
            EVENT_TIMEOUT,
        )
        server.release("reload")
        client.join(REQUEST_TIMEOUT + 5)
        wait_until(lambda: old not in server.workers(), server.tail, EVENT_TIMEOUT)
        poll(lambda: port_answer(server) == 200, 6.0)  # room for a retry every few seconds
        yield Reloaded(server, before, port_answer(server))


# A bug this test found, since fixed: obskit/metrics/exposition.py start_metrics_server gave up
# for good when the port was taken. On SIGHUP gunicorn starts the new workers before the old ones
# have finished: each new worker found the port still held, warned, and never tried again; once
# the old worker exited no process served the metrics port any more (MetricsPortRetry now).
def test_metrics_port_is_served_again_after_a_reload(reloaded: Reloaded) -> None:
    assert (200, 200) == (reloaded.before, reloaded.after)


@dataclass
class PreloadedPort:
    server: Server
    counted: float | None  # http_requests_total of items on the metrics port after 2 requests
    exited: bool  # the worker recycled by --max-requests exited within the bound
    output: str


@pytest.fixture(scope="module")
def preloaded_port(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PreloadedPort]:
    site = tmp_path_factory.mktemp("gu-port-preload")
    # One worker, so no multi-process directory (docs/configuration.md asks for one with
    # several workers). The readiness probe is the first of the four --max-requests.
    with gunicorn(
        site,
        "gu-port-preload",
        "gu_flask:app",
        "-w", "1", "-k", "sync", "--preload", "--max-requests", "4",
        "--timeout", "60", "--graceful-timeout", "1",
        multiproc=False,
        metrics_port=True,
        OTEL_TRACES_EXPORTER="none",
        OBSKIT_SHUTDOWN_TIMEOUT="0.5",
    ) as server:  # fmt: skip
        for n in range(2):
            assert 200 == server.get(f"/items/{n}")[0]
        counted = requests_total(server.scrape())
        (worker,) = server.workers()
        assert 200 == server.get("/items/2")[0]  # the fourth request: the worker recycles
        # obskit's own bound on exit is shutdown_timeout (0.5 s); the 5 s are for a slow host.
        exited = poll(lambda: not psutil.pid_exists(worker) or worker not in server.workers(), 5.0)
        yield PreloadedPort(server, counted, exited, server.output())


# A bug this test found, since fixed: obskit/metrics/exposition.py MetricsServer.close (from
# Runtime.shutdown at exit) called socketserver's shutdown(), which waits for serve_forever to
# stop -- but under --preload the server thread runs in the master only; a worker's copy never
# stopped, so every worker's exit (--max-requests, SIGHUP, SIGTERM) hung until gunicorn's
# --timeout aborted it (a traceback) or the graceful timeout SIGKILLed it.
def test_metrics_port_preload_worker_exits_promptly(preloaded_port: PreloadedPort) -> None:
    assert preloaded_port.exited, preloaded_port.output[-3000:]


# Documented (docs/configuration.md, metrics_port): obskit/_runtime.py _build binds the port in
# the process that configures obskit -- under --preload the master, which serves no request.
# Without a multi-process directory the port shows the master's own registry; the master says so
# once, when it forks its first worker.
def test_metrics_port_preload_without_multiprocess_dir_warns(preloaded_port: PreloadedPort) -> None:
    assert preloaded_port.counted is None, "the master's registry counted a worker's request?"
    assert "metrics port and has forked a child" in preloaded_port.output
