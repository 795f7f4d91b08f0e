"""A real Prometheus server scrapes real obskit services; the PromQL our users copy from the
articles they follow is evaluated by Prometheus' HTTP API and checked against the traffic sent.

What runs, all on loopback, once for the module:

- ``fastapi``: a FastAPI app of this file under uvicorn (one process);
- ``flask``: a Flask app of this file under gunicorn with two sync workers and
  ``PROMETHEUS_MULTIPROC_DIR`` (every scrape sums both workers);
- ``fastapi-text`` / ``flask-text``: the same two services scraped again through a relay that
  asks them for the classic text format. Prometheus 2.x always asks for OpenMetrics first (its
  ``scrape_protocols`` option only came in 2.49), so this is how its classic text parser gets to
  read obskit's output;
- ``recycled``: the Flask app under gunicorn with one worker and ``--max-requests 4``, its
  metrics served on obskit's separate ``metrics_port``;
- Prometheus (``scrape_interval`` and ``evaluation_interval`` 1 s, exemplar storage on).

The apps serve ``/items/{id}`` (200), ``/boom`` (raises: 500), ``/checkout/{outcome}`` (a
business counter and an ``@obskit.red`` function; 402 when declined) and ``/hit/{page}`` (a
counter with a cardinality limit of 3); unknown paths answer 404.

Exact answers from ``rate()``: Prometheus extrapolates a rate from the first and last samples of
each series, by a factor that depends on the sample times and, for a counter, on how its first
sample compares with its increase. So the traffic comes in two phases: a warm-up sent before
Prometheus starts (its first scrape sees all of it) and a main phase three times as large, of
every kind of request. Then every series of a job has the same sample times and the same
first-sample-to-increase ratio (1:3), hence the same factor, and ratios of rates -- the error
ratio of the articles -- are exactly the ratios of the requests sent. Absolute counts are read
from the counters themselves, not from ``increase()``, whose extrapolation makes them inexact.

Checked: ``up`` and the targets API, OpenMetrics negotiation and the text format, every sample
ingested, exact per-route counts (two gunicorn workers summed), route templates and
``__unmatched__``, the articles' rate, error-ratio and p95 queries, the histogram's counts, the
business counter and ``@obskit.red`` metrics with docs/metrics.md's queries, the cardinality
overflow (in one process, and across recycled gunicorn workers), exemplars that point at
exported traces, and ``promtool check metrics``.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

import pytest
from prometheus_client import Counter
from prometheus_client.parser import text_string_to_metric_families

import obskit
from obskit.metrics.instruments import Instrument
from tests.child_process import ROOT, child_env
from tests.loopback import QuietHandler, free_port, serving
from tests.loopback import http_get as loopback_get

pytestmark = pytest.mark.e2e

#: How the servers import the apps below (the module, by its name from the repository root).
APP_MODULE = "tests.e2e.test_prometheus_server"
READY_TIMEOUT = 20.0
#: Prometheus' discovery and scrape managers each apply new targets on a 5 s tick.
FIRST_SCRAPE_TIMEOUT = 30.0
SCRAPED_TIMEOUT = 15.0
REQUEST_TIMEOUT = 10.0
STOP_TIMEOUT = 10.0
CLIENTS = 8
#: What the item views sleep: every item request lasts at least this long.
ITEM_SECONDS = 0.01
#: The cardinality limit of ``page_hits``.
PAGE_LIMIT = 3
#: ``--max-requests`` of the recycled gunicorn worker.
RECYCLE_AFTER = 4

#: The Accept header that asks for the classic text format only.
TEXT_ACCEPT = "text/plain;version=0.0.4"

#: Requests of each kind in the main phase; the warm-up sends a third of each.
MAIN = {"items": 150, "unknown": 15, "boom": 15, "paid": 9, "declined": 3}
WARMUP_DIVISOR = 3
PATHS: dict[str, Callable[[int], str]] = {
    "items": lambda n: f"/items/{n}",
    "unknown": lambda n: f"/no/such/page/{n}",
    "boom": lambda n: "/boom",
    "paid": lambda n: "/checkout/paid",
    "declined": lambda n: "/checkout/declined",
}
STATUS = {"items": 200, "unknown": 404, "boom": 500, "paid": 200, "declined": 402}
TOTAL = {kind: count + count // WARMUP_DIVISOR for kind, count in MAIN.items()}
#: Pages hit on the FastAPI service (limit 3: a, b, c admitted; the rest folded).
PAGES = ["a", "b", "c", "d", "e", "f", "g", "h", "a", "d"]
#: Pages hit on the recycled service, RECYCLE_AFTER per worker.
RECYCLED_PAGES = ["a", "b", "c", "d", "e", "f", "g", "h"]

#: Route templates per framework.
ROUTES = {
    "fastapi": {
        "items": "/items/{item_id}",
        "checkout": "/checkout/{outcome}",
        "hit": "/hit/{page}",
    },
    "flask": {
        "items": "/items/<int:item_id>",
        "checkout": "/checkout/<outcome>",
        "hit": "/hit/<page>",
    },
}
UNMATCHED = "__unmatched__"
OVERFLOW = "__overflow__"
#: The Prometheus jobs that scrape the two main services, and which framework each one sees.
JOBS = {"fastapi": "fastapi", "fastapi-text": "fastapi", "flask": "flask", "flask-text": "flask"}


# --- The apps the servers run (built only when a server asks for them) ----------------------


class PaymentDeclined(Exception):
    """A card refusal."""


@obskit.red
def charge(outcome: str) -> str:
    """A payment call, as an app decorates one: ``declined`` raises."""
    if outcome == "declined":
        raise PaymentDeclined(outcome)
    return "ch_1"


def _business_metrics() -> tuple[Instrument[Counter], Instrument[Counter]]:
    # Declared inside the factories: a declaration at import would also run in the test process.
    orders = obskit.counter("orders_completed", "Orders completed.", ["payment_method", "status"])
    hits = obskit.counter("page_hits", "Page hits.", ["page"], limit=PAGE_LIMIT)
    return orders, hits


def _checkout(orders: Instrument[Counter], outcome: str) -> int:
    try:
        charge(outcome)
    except PaymentDeclined:
        orders.labels("card", "declined").inc()
        return 402
    orders.labels("card", "success").inc()
    return 200


def create_fastapi_app() -> Any:
    """The FastAPI service (``uvicorn --factory``)."""
    from fastapi import FastAPI
    from fastapi.responses import JSONResponse

    from obskit.fastapi import instrument

    app = FastAPI()
    instrument(app)
    orders, hits = _business_metrics()

    @app.get("/items/{item_id}")
    async def item(item_id: int) -> dict[str, int]:
        await asyncio.sleep(ITEM_SECONDS)
        return {"id": item_id, "pid": os.getpid()}

    @app.get("/boom")
    async def boom() -> None:  # FastAPI makes a response model of the annotation
        raise RuntimeError("boom")

    @app.get("/checkout/{outcome}")
    async def checkout(outcome: str) -> JSONResponse:
        return JSONResponse({"outcome": outcome}, status_code=_checkout(orders, outcome))

    @app.get("/hit/{page}")
    async def hit(page: str) -> dict[str, Any]:
        hits.labels(page).inc()
        return {"page": page, "pid": os.getpid()}

    return app


def create_flask_app() -> Any:
    """The Flask service (gunicorn ``module:create_flask_app()``)."""
    from flask import Flask

    from obskit.flask import Obskit

    app = Flask("prometheus_e2e")
    Obskit(app)
    orders, hits = _business_metrics()

    @app.get("/items/<int:item_id>")
    def item(item_id: int) -> dict[str, int]:
        time.sleep(ITEM_SECONDS)
        return {"id": item_id, "pid": os.getpid()}

    @app.get("/boom")
    def boom() -> NoReturn:
        raise RuntimeError("boom")

    @app.get("/checkout/<outcome>")
    def checkout(outcome: str) -> tuple[dict[str, str], int]:
        return {"outcome": outcome}, _checkout(orders, outcome)

    @app.get("/hit/<page>")
    def hit(page: str) -> dict[str, Any]:
        hits.labels(page).inc()
        return {"page": page, "pid": os.getpid()}

    return app


# --- Processes -------------------------------------------------------------------------------


def require_prometheus() -> None:
    """Fail under CI=true, skip elsewhere, when ``prometheus`` or ``promtool`` is not installed
    (the pattern of ``tests.services.require_postgres``)."""
    missing = [name for name in ("prometheus", "promtool") if shutil.which(name) is None]
    if missing:
        message = f"not on PATH: {', '.join(missing)} (Debian: apt-get install prometheus)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)


def http_get(url: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    """GET over a new connection (:func:`tests.loopback.http_get`)."""
    return loopback_get(url, headers, REQUEST_TIMEOUT)


def wait_until(check: Callable[[], bool], timeout: float, what: Callable[[], str]) -> None:
    """Poll ``check`` (connection errors count as "not yet") until it holds or ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except OSError:
            pass
        time.sleep(0.1)
    pytest.fail(f"not within {timeout}s: {what()}")


@dataclass
class Process:
    """A server process, run in its own session, its output in ``log``."""

    name: str
    process: subprocess.Popen[bytes]
    log: Path

    def log_tail(self) -> str:
        try:
            return f"--- {self.name} ---\n" + self.log.read_text(errors="replace")[-3000:]
        except OSError:
            return f"--- {self.name}: no log ---"

    def check_alive(self) -> None:
        if self.process.poll() is not None:
            pytest.fail(f"{self.name} exited early:\n{self.log_tail()}")

    def stop(self) -> None:
        """SIGTERM (a graceful stop), then SIGKILL to the whole group if needed."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=STOP_TIMEOUT)
                return
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(self.process.pid, signal.SIGKILL)  # gunicorn's workers too
        except ProcessLookupError:
            pass
        self.process.wait(timeout=5)


@contextmanager
def started(name: str, argv: list[str], env: dict[str, str], tmp: Path) -> Iterator[Process]:
    """Run ``argv`` until the block ends; always stopped."""
    log = tmp / f"{name}.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            argv,
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    handle = Process(name, process, log)
    try:
        yield handle
    finally:
        handle.stop()


def gunicorn_argv(port: int, workers: int, *extra: str) -> list[str]:
    import gunicorn.config

    argv = [sys.executable, "-m", "gunicorn", f"{APP_MODULE}:create_flask_app()"]
    argv += ["-b", f"127.0.0.1:{port}", "-w", str(workers), "-k", "sync"]
    argv += ["--graceful-timeout", "3", "--timeout", "30", *extra]
    if any(s.name == "control_socket_disable" for s in gunicorn.config.KNOWN_SETTINGS):
        argv.append("--no-control-socket")  # gunicorn 24+: one shared socket path by default
    return argv


def uvicorn_argv(port: int) -> list[str]:
    return [
        sys.executable, "-m", "uvicorn", "--factory", f"{APP_MODULE}:create_fastapi_app",
        "--host", "127.0.0.1", "--port", str(port), "--timeout-graceful-shutdown", "3",
        "--no-access-log",
    ]  # fmt: skip


def worker_pids(multiproc: Path) -> set[str]:
    """The processes that wrote counters to the multi-process directory (``counter_<pid>.db``,
    made when obskit is configured at import). Counter files outlive their process."""
    return {path.stem.rpartition("_")[2] for path in multiproc.glob("counter_*.db")}


def send(base: str, requests: list[tuple[str, int]]) -> set[int]:
    """Send ``(path, expected status)`` requests from CLIENTS threads, a connection each, and
    check every status; the pids the item and hit views answered with."""

    def one(request: tuple[str, int]) -> tuple[int, bytes]:
        status, _, body = http_get(base + request[0])
        return status, body

    with ThreadPoolExecutor(max_workers=CLIENTS) as pool:
        answers = list(pool.map(one, requests))
    assert [status for _, status in requests] == [status for status, _ in answers]
    pids = set()
    for (path, _), (_, body) in zip(requests, answers, strict=True):
        if path.startswith(("/items/", "/hit/")):
            pids.add(int(json.loads(body)["pid"]))
    return pids


def phase(name: str) -> list[tuple[str, int]]:
    """The requests of the ``warmup`` or ``main`` phase; ids and unknown paths never repeat."""
    requests = []
    for kind, main in MAIN.items():
        warmup = main // WARMUP_DIVISOR
        first, count = (0, warmup) if name == "warmup" else (warmup, main)
        requests += [(PATHS[kind](n), STATUS[kind]) for n in range(first, first + count)]
    return requests


def text_relay(seen: list[tuple[str, str]]) -> type[QuietHandler]:
    """A handler that fetches ``/metrics`` of ``?target=127.0.0.1:PORT`` asking for the classic
    text format, and records (the scraper's Accept, the content type obskit answered)."""

    class Relay(QuietHandler):
        def do_GET(self) -> None:
            query = urllib.parse.parse_qs(urllib.parse.urlsplit(self.path).query)
            target = query.get("target", [""])[0]
            host, _, port = target.partition(":")
            if host != "127.0.0.1" or not port.isdigit():
                self.send_error(400)
                return
            status, headers, body = http_get(f"http://{target}/metrics", {"Accept": TEXT_ACCEPT})
            content_type = headers.get("content-type", "")
            seen.append((self.headers.get("Accept", ""), content_type))
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    return Relay


# --- Prometheus ------------------------------------------------------------------------------


@dataclass
class Prometheus:
    """A running Prometheus and its HTTP API."""

    port: int
    server: Process
    logs: Callable[[], str]

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def api(self, endpoint: str, **params: str) -> Any:
        url = f"{self.base}/api/v1/{endpoint}?{urllib.parse.urlencode(params)}"
        status, _, body = http_get(url)
        answer = json.loads(body)
        assert (200, "success") == (status, answer.get("status")), (endpoint, params, answer)
        return answer["data"]

    def query(self, expr: str) -> list[tuple[dict[str, str], float]]:
        """An instant vector query at the server's now: (labels, value) per series."""
        data = self.api("query", query=expr)
        assert "vector" == data["resultType"], (expr, data)
        return [(r["metric"], float(r["value"][1])) for r in data["result"]]

    def by(self, expr: str, *labels: str) -> dict[tuple[str, ...], float]:
        """The series of ``expr`` keyed by the values of ``labels``."""
        result = {}
        for metric, value in self.query(expr):
            key = tuple(metric.get(label, "") for label in labels)
            assert key not in result, f"{expr}: two series for {key}"
            result[key] = value
        return result

    def value(self, expr: str) -> float:
        """The value of a query that gives exactly one series."""
        result = self.query(expr)
        assert 1 == len(result), f"{expr}: {result}\n{self.logs()}"
        return result[0][1]


def prometheus_config(targets: dict[str, str], relay: int) -> dict[str, Any]:
    """One job per service; the ``-text`` jobs reach their service through the text relay."""
    jobs: list[dict[str, Any]] = []
    for job, target in targets.items():
        if job.endswith("-text"):
            jobs.append(
                {
                    "job_name": job,
                    "params": {"target": [target]},
                    "static_configs": [{"targets": [f"127.0.0.1:{relay}"]}],
                }
            )
        else:
            jobs.append({"job_name": job, "static_configs": [{"targets": [target]}]})
    return {
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        "scrape_configs": jobs,
    }


# --- The whole stack, traffic sent ----------------------------------------------------------


@dataclass
class Stack:
    """Prometheus after all the traffic, and what the tests compare its answers with."""

    prometheus: Prometheus
    metrics_urls: dict[str, str]  # service -> its own /metrics URL (not the relay's)
    traces: Path  # the FastAPI service's spans
    relayed: list[tuple[str, str]]  # (Prometheus' Accept, obskit's content type) per relay hit
    flask_pids: set[int] = field(default_factory=set)


def expected_counts(framework: str) -> dict[tuple[str, str], float]:
    """``http_requests_total`` by (route, status) after both phases."""
    routes = ROUTES[framework]
    counts = {
        (routes["items"], "200"): TOTAL["items"],
        (UNMATCHED, "404"): TOTAL["unknown"],
        ("/boom", "500"): TOTAL["boom"],
        (routes["checkout"], "200"): TOTAL["paid"],
        (routes["checkout"], "402"): TOTAL["declined"],
    }
    if framework == "fastapi":
        counts[(routes["hit"], "200")] = len(PAGES)
    return {key: float(value) for key, value in counts.items()}


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    require_prometheus()
    tmp = tmp_path_factory.mktemp("prometheus_e2e")
    fastapi_port, flask_port, recycled_port, recycled_metrics, prom_port = (
        free_port() for _ in range(5)
    )
    multiproc, recycled_multiproc = tmp / "multiproc", tmp / "recycled_multiproc"
    multiproc.mkdir()
    recycled_multiproc.mkdir()
    traces = tmp / "fastapi-traces.jsonl"
    relayed: list[tuple[str, str]] = []

    def env(name: str, **extra: str) -> dict[str, str]:
        return child_env(
            OTEL_SERVICE_NAME=name,
            OBSKIT_TRACES_FILE=str(tmp / f"{name}-traces.jsonl"),
            OTEL_BSP_SCHEDULE_DELAY="100",
            **extra,
        )

    with ExitStack() as stack:
        relay = stack.enter_context(serving(text_relay(relayed)))
        fastapi = stack.enter_context(
            started("fastapi", uvicorn_argv(fastapi_port), env("fastapi"), tmp)
        )
        flask = stack.enter_context(
            started(
                "flask",
                gunicorn_argv(flask_port, 2),
                env("flask", PROMETHEUS_MULTIPROC_DIR=str(multiproc)),
                tmp,
            )
        )
        recycled = stack.enter_context(
            started(
                "recycled",
                gunicorn_argv(recycled_port, 1, "--max-requests", str(RECYCLE_AFTER)),
                env(
                    "recycled",
                    PROMETHEUS_MULTIPROC_DIR=str(recycled_multiproc),
                    OBSKIT_METRICS_PORT=str(recycled_metrics),
                ),
                tmp,
            )
        )
        servers = [fastapi, flask, recycled]

        def logs() -> str:
            return "\n".join(server.log_tail() for server in servers)

        def serves(url: str) -> Callable[[], bool]:
            def check() -> bool:
                for server in servers:
                    server.check_alive()
                return 200 == http_get(url)[0]

            return check

        fastapi_url = f"http://127.0.0.1:{fastapi_port}"
        flask_url = f"http://127.0.0.1:{flask_port}"
        recycled_url = f"http://127.0.0.1:{recycled_port}"
        recycled_metrics_url = f"http://127.0.0.1:{recycled_metrics}/metrics"
        # /metrics is excluded from the RED metrics; the recycled service is probed on its
        # metrics port, which is not gunicorn's: a probe must not count towards --max-requests.
        wait_until(serves(f"{fastapi_url}/metrics"), READY_TIMEOUT, logs)
        wait_until(serves(f"{flask_url}/metrics"), READY_TIMEOUT, logs)
        wait_until(lambda: 2 == len(worker_pids(multiproc)), READY_TIMEOUT, logs)
        wait_until(serves(recycled_metrics_url), READY_TIMEOUT, logs)

        # One page at a time: each worker serves RECYCLE_AFTER of them, then gunicorn replaces it.
        pids = [send(recycled_url, [(f"/hit/{page}", 200)]).pop() for page in RECYCLED_PAGES]
        first, second = pids[0], pids[-1]
        assert first != second, "--max-requests did not replace the worker"
        assert [first] * RECYCLE_AFTER + [second] * RECYCLE_AFTER == pids
        # The third worker serves the metrics port from now on (no gunicorn request reaches it).
        wait_until(lambda: 3 == len(worker_pids(recycled_multiproc)), READY_TIMEOUT, logs)
        wait_until(serves(recycled_metrics_url), READY_TIMEOUT, logs)

        # Warm-up, before Prometheus exists: its first scrape of every job sees all of it.
        flask_pids = send(flask_url, phase("warmup"))
        send(fastapi_url, phase("warmup"))
        for page in PAGES:  # one at a time: the first PAGE_LIMIT pages are the ones admitted
            send(fastapi_url, [(f"/hit/{page}", 200)])

        targets = {
            "fastapi": f"127.0.0.1:{fastapi_port}",
            "flask": f"127.0.0.1:{flask_port}",
            "fastapi-text": f"127.0.0.1:{fastapi_port}",
            "flask-text": f"127.0.0.1:{flask_port}",
            "recycled": f"127.0.0.1:{recycled_metrics}",
        }
        config = tmp / "prometheus.yml"  # YAML is a superset of JSON
        config.write_text(json.dumps(prometheus_config(targets, relay)))
        server = stack.enter_context(
            started(
                "prometheus",
                [
                    "prometheus",
                    f"--config.file={config}",
                    f"--storage.tsdb.path={tmp / 'tsdb'}",
                    f"--web.listen-address=127.0.0.1:{prom_port}",
                    "--enable-feature=exemplar-storage",
                ],
                child_env(),
                tmp,
            )
        )
        servers.append(server)
        prometheus = Prometheus(prom_port, server, logs)
        wait_until(serves(f"{prometheus.base}/-/ready"), READY_TIMEOUT, logs)

        def all_up() -> bool:
            return set(targets) == {m["job"] for m, v in prometheus.query("up") if v == 1.0}

        wait_until(all_up, FIRST_SCRAPE_TIMEOUT, lambda: f"{prometheus.query('up')}\n{logs()}")

        # The main phase, then until Prometheus has scraped its end in every job.
        flask_pids |= send(flask_url, phase("main"))
        send(fastapi_url, phase("main"))
        totals = {job: sum(expected_counts(JOBS[job]).values()) for job in JOBS}

        def scraped() -> bool:
            seen = prometheus.by("sum by (job) (http_requests_total)", "job")
            return all(seen.get((job,)) == total for job, total in totals.items())

        wait_until(
            scraped,
            SCRAPED_TIMEOUT,
            lambda: f"{prometheus.query('sum by (job) (http_requests_total)')} != {totals}",
        )
        yield Stack(
            prometheus=prometheus,
            metrics_urls={
                "fastapi": f"{fastapi_url}/metrics",
                "flask": f"{flask_url}/metrics",
                "recycled": recycled_metrics_url,
            },
            traces=traces,
            relayed=relayed,
            flask_pids=flask_pids,
        )


# --- The tests -------------------------------------------------------------------------------


def test_every_job_is_up_and_scraped_without_error(stack: Stack) -> None:
    """``up == 1`` for every job, and Prometheus' targets API reports no scrape error."""
    prom = stack.prometheus
    assert {(job,): 1.0 for job in [*JOBS, "recycled"]} == prom.by("up == 1", "job")
    targets = prom.api("targets", state="active")["activeTargets"]
    assert {(t["labels"]["job"], t["health"], t["lastError"]) for t in targets} == {
        (job, "up", "") for job in [*JOBS, "recycled"]
    }


def test_prometheus_negotiates_openmetrics_and_the_relay_gets_text(stack: Stack) -> None:
    """Prometheus asks for OpenMetrics first and obskit answers it; the ``-text`` jobs were
    answered in the classic text format."""
    accepts = {accept for accept, _ in stack.relayed}
    assert 1 == len(accepts), accepts
    (accept,) = accepts
    assert accept.startswith("application/openmetrics-text;version=1.0.0"), accept
    assert {TEXT_ACCEPT.replace(";", "; ")} == {ct.split("; charset")[0] for _, ct in stack.relayed}
    for url in stack.metrics_urls.values():
        _, headers, body = http_get(url, {"Accept": accept})
        assert headers["content-type"].startswith("application/openmetrics-text; version=1.0.0")
        assert body.endswith(b"# EOF\n")


@pytest.mark.parametrize("job", [*JOBS, "recycled"])
def test_prometheus_ingests_every_sample_obskit_writes(stack: Stack, job: str) -> None:
    """``scrape_samples_scraped`` is the number of samples in the service's own answer to the
    same Accept header, and Prometheus dropped no sample (duplicate, out of order or bounds)."""
    prom = stack.prometheus
    accept = TEXT_ACCEPT if job.endswith("-text") else stack.relayed[0][0]
    url = stack.metrics_urls[JOBS.get(job, job)]

    def samples_in_answer() -> int:
        body = http_get(url, {"Accept": accept})[2].decode()
        return sum(1 for line in body.splitlines() if line and not line.startswith("#"))

    def agree() -> bool:
        scraped = prom.value(f'scrape_samples_scraped{{job="{job}"}}')
        return scraped > 0 and scraped == samples_in_answer()

    # The runtime metrics can gain a series between two scrapes: wait for a quiet pair.
    wait_until(agree, 5.0, lambda: f"{prom.query('scrape_samples_scraped')}")
    drops = {
        "prometheus_target_scrapes_sample_duplicate_timestamp",
        "prometheus_target_scrapes_sample_out_of_order",
        "prometheus_target_scrapes_sample_out_of_bounds",
        "prometheus_target_scrapes_exemplar_out_of_order",
        "prometheus_target_scrapes_exceeded_sample_limit",
    }
    own = http_get(f"{prom.base}/metrics")[2].decode()
    counted = {
        family.name: sum(sample.value for sample in family.samples)
        for family in text_string_to_metric_families(own)
        if family.name in drops
    }
    assert dict.fromkeys(drops, 0.0) == counted


@pytest.mark.parametrize("job", list(JOBS))
def test_request_counts_per_route_are_exact(stack: Stack, job: str) -> None:
    """The counter of every (route, status) is what was sent -- the FastAPI process's, and the
    sum of the two gunicorn workers' -- read through OpenMetrics and through the text format."""
    found = stack.prometheus.by(
        f'sum by (route, status) (http_requests_total{{job="{job}"}})', "route", "status"
    )
    assert expected_counts(JOBS[job]) == found
    if JOBS[job] == "flask":
        # Both workers served items: the sums above add up counters of two processes.
        assert 2 == len(stack.flask_pids), stack.flask_pids


@pytest.mark.parametrize("job", list(JOBS))
def test_routes_are_templates_and_unknown_paths_are_bounded(stack: Stack, job: str) -> None:
    """200 item ids and 20 unknown paths: one series each, under the template and under
    ``__unmatched__``, for the counter, the histogram and the in-flight gauge."""
    prom = stack.prometheus
    routes = ROUTES[JOBS[job]]
    expected = {(routes["items"],), (UNMATCHED,), ("/boom",), (routes["checkout"],)}
    if JOBS[job] == "fastapi":
        expected.add((routes["hit"],))
    for metric in ("http_requests_total", "http_request_duration_seconds_count"):
        assert expected == set(prom.by(f'count by (route) ({metric}{{job="{job}"}})', "route"))
    # Every request has ended: the in-flight gauges, one per (method, route), are all 0.
    in_flight = prom.by(f'http_requests_in_flight{{job="{job}"}}', "method", "route")
    assert {("GET", route): 0.0 for (route,) in expected} == in_flight
    raw = prom.query(f'http_requests_total{{job="{job}", route=~".*/[0-9]+|/no/such/.*"}}')
    assert [] == raw


@pytest.mark.parametrize(
    "query",
    [
        'sum(rate(http_requests_total{status=~"5.."}[5m])) / sum(rate(http_requests_total[5m]))',
        'sum(rate(http_requests_total{status=~"5.."}[5m])) by (job)'
        " / sum(rate(http_requests_total[5m])) by (job)",
    ],
    ids=["overall", "by_job"],
)
def test_error_ratio_query_from_the_articles(stack: Stack, query: str) -> None:
    """The 5xx ratio is exactly the share of 500s in the traffic, overall and per job."""
    ratio = MAIN["boom"] / sum(MAIN.values())
    result = stack.prometheus.query(query)
    jobs = {metric.get("job") for metric, _ in result}
    assert ({None} if "by (job)" not in query else set(JOBS)) == jobs
    for _, value in result:
        assert ratio == pytest.approx(value, rel=1e-9)


@pytest.mark.parametrize("job", list(JOBS))
def test_request_rate_query_from_the_articles(stack: Stack, job: str) -> None:
    """``rate(http_requests_total{job=...}[5m])``, in one evaluation: each series' share of the
    job's rate is exactly its share of the main phase's requests (the hits, all sent in the
    warm-up, have a rate of 0)."""
    rates = stack.prometheus.by(f'rate(http_requests_total{{job="{job}"}}[5m])', "route", "status")
    routes = ROUTES[JOBS[job]]
    main = {
        (routes["items"], "200"): MAIN["items"],
        (UNMATCHED, "404"): MAIN["unknown"],
        ("/boom", "500"): MAIN["boom"],
        (routes["checkout"], "200"): MAIN["paid"],
        (routes["checkout"], "402"): MAIN["declined"],
    }
    if JOBS[job] == "fastapi":
        main[(routes["hit"], "200")] = 0
    assert set(main) == set(rates)
    total = sum(rates.values())
    assert total > 0
    shares = {key: rate / total for key, rate in rates.items()}
    sent = sum(main.values())
    assert {key: pytest.approx(count / sent, rel=1e-9) for key, count in main.items()} == shares


@pytest.mark.parametrize(
    ("query", "by_job"),
    [
        (
            "histogram_quantile(0.95, sum(rate(http_request_duration_seconds_bucket[5m])) by (le))",
            False,
        ),
        (
            "histogram_quantile(0.95, sum(rate(http_request_duration_seconds_bucket[5m]))"
            " by (le, job))",
            True,
        ),
    ],
    ids=["overall", "by_job"],
)
def test_p95_latency_query_from_the_articles(stack: Stack, query: str, by_job: bool) -> None:
    """The 95th percentile is a finite number within the buckets: at least the items' 10 ms
    (they are most of the traffic), at most the highest finite bound (10 s)."""
    result = stack.prometheus.query(query)
    jobs = {metric.get("job") for metric, _ in result}
    # The recycled job served no request during the window: its quantile is NaN.
    assert ({*JOBS, "recycled"} if by_job else {None}) == jobs
    for metric, value in result:
        if metric.get("job") == "recycled":
            assert math.isnan(value)
            continue
        assert math.isfinite(value), metric
        assert ITEM_SECONDS <= value <= 10.0, (metric, value)


@pytest.mark.parametrize("job", list(JOBS))
def test_duration_histogram_counts_every_request(stack: Stack, job: str) -> None:
    """``_count`` and the ``+Inf`` bucket hold every request; the buckets are cumulative, and
    no item request (which sleeps 10 ms) is below the 10 ms bucket."""
    prom = stack.prometheus
    total = sum(expected_counts(JOBS[job]).values())
    assert total == prom.value(f'sum(http_request_duration_seconds_count{{job="{job}"}})')
    assert total == prom.value(
        f'sum(http_request_duration_seconds_bucket{{job="{job}", le="+Inf"}})'
    )
    item_route = ROUTES[JOBS[job]]["items"]
    buckets = prom.by(
        f'http_request_duration_seconds_bucket{{job="{job}", route="{item_route}"}}', "le"
    )
    bounds = sorted(buckets, key=lambda key: float(key[0]))
    counts = [buckets[bound] for bound in bounds]
    assert counts == sorted(counts), buckets
    assert 0.0 == buckets[("0.005",)] == buckets[("0.01",)]
    assert TOTAL["items"] == buckets[("+Inf",)]


@pytest.mark.parametrize("job", list(JOBS))
def test_business_counter_and_red_function(stack: Stack, job: str) -> None:
    """``orders_completed_total`` and ``@obskit.red``'s ``function_calls_total`` /
    ``function_duration_seconds`` under the names and labels docs/metrics.md gives."""
    prom = stack.prometheus
    orders = prom.by(f'orders_completed_total{{job="{job}"}}', "payment_method", "status")
    assert {("card", "success"): TOTAL["paid"], ("card", "declined"): TOTAL["declined"]} == orders
    calls = prom.by(f'function_calls_total{{job="{job}"}}', "function", "module", "result")
    assert {
        ("charge", APP_MODULE, "ok"): TOTAL["paid"],
        ("charge", APP_MODULE, "error"): TOTAL["declined"],
    } == calls
    durations = prom.by(f'function_duration_seconds_count{{job="{job}"}}', "function", "module")
    assert {("charge", APP_MODULE): TOTAL["paid"] + TOTAL["declined"]} == durations


def test_red_queries_from_the_metrics_docs(stack: Stack) -> None:
    """docs/metrics.md's PromQL for ``@obskit.red``: the error ratio is exact, the p95 finite."""
    prom = stack.prometheus
    ratio = prom.by(
        'sum by (function) (rate(function_calls_total{result="error"}[5m]))'
        " / sum by (function) (rate(function_calls_total[5m]))",
        "function",
    )
    assert {("charge",)} == set(ratio)
    assert MAIN["declined"] / (MAIN["paid"] + MAIN["declined"]) == pytest.approx(
        ratio[("charge",)], rel=1e-9
    )
    p95 = prom.by(
        "histogram_quantile(0.95,"
        " sum by (function, le) (rate(function_duration_seconds_bucket[5m])))",
        "function",
    )
    assert {("charge",)} == set(p95)
    assert 0.0 < p95[("charge",)] <= 10.0


def test_cardinality_limit_folds_into_one_overflow_series(stack: Stack) -> None:
    """``page_hits`` (limit 3) hit with 8 pages: Prometheus stores limit + 1 series, the overflow
    one holds the folded hits, and the self-metrics and docs/metrics.md's alert say so."""
    prom = stack.prometheus
    hits = prom.by('page_hits_total{job="fastapi"}', "page")
    assert {("a",): 2.0, ("b",): 1.0, ("c",): 1.0, (OVERFLOW,): 6.0} == hits
    assert PAGE_LIMIT + 1 == prom.value('count(page_hits_total{job="fastapi"})')
    self_metrics = {
        name: prom.value(f'{name}{{job="fastapi", metric="page_hits"}}')
        for name in (
            "obskit_cardinality_overflow_total",
            "obskit_cardinality_series",
            "obskit_cardinality_limit",
        )
    }
    assert {
        "obskit_cardinality_overflow_total": 6.0,
        "obskit_cardinality_series": float(PAGE_LIMIT),
        "obskit_cardinality_limit": float(PAGE_LIMIT),
    } == self_metrics
    nearly_full = prom.by(
        'max by (metric) (obskit_cardinality_series{job="fastapi"}'
        ' / obskit_cardinality_limit{job="fastapi"}) > 0.8',
        "metric",
    )
    assert {("page_hits",): 1.0} == nearly_full


# A bug this test found, since fixed: the cardinality guard counted label sets per process, so
# under PROMETHEUS_MULTIPROC_DIR every gunicorn worker, and every worker that replaced one
# (max_requests), admitted its own `limit` label sets, and the files of exited workers kept theirs:
# the series Prometheus stored grew with workers x restarts (now obskit/metrics/_shared.py)
def test_cardinality_limit_holds_across_recycled_gunicorn_workers(stack: Stack) -> None:
    """``page_hits`` (limit 3) hit with 8 pages on a gunicorn service whose worker is replaced
    after every 4 requests: still limit + 1 series, 5 hits folded."""
    # The fixture has checked that the first worker served a-d and its replacement e-h.
    prom = stack.prometheus
    hits = prom.by('page_hits_total{job="recycled"}', "page")
    assert {("a",): 1.0, ("b",): 1.0, ("c",): 1.0, (OVERFLOW,): 5.0} == hits
    folded = prom.value('obskit_cardinality_overflow_total{job="recycled", metric="page_hits"}')
    assert 5.0 == folded
    # The replacement worker reports the label sets admitted by all, not its own none.
    series = prom.value('obskit_cardinality_series{job="recycled", metric="page_hits"}')
    assert 3.0 == series


def test_exemplars_link_buckets_to_exported_traces(stack: Stack) -> None:
    """OpenMetrics exemplars reach Prometheus (exemplar storage on): each one's trace_id is the
    trace of a SERVER span of the same route in the service's traces, and its value is within
    its bucket's bound."""
    prom = stack.prometheus
    now = time.time()
    found = prom.api(
        "query_exemplars",
        query='http_request_duration_seconds_bucket{job="fastapi"}',
        start=str(now - 300),
        end=str(now),
    )
    exemplars = [
        (series["seriesLabels"], exemplar) for series in found for exemplar in series["exemplars"]
    ]
    assert exemplars, found
    for labels, exemplar in exemplars:
        assert re.fullmatch("[0-9a-f]{32}", exemplar["labels"]["trace_id"]), exemplar
        assert float(exemplar["value"]) <= float(labels["le"]), (labels, exemplar)

    def routes_by_trace() -> dict[str, str]:
        routes = {}
        # Complete lines only: the last one may still be being written.
        for line in stack.traces.read_text().split("\n")[:-1]:
            span = json.loads(line)
            if span["kind"] == 2:  # SERVER
                attributes = {a["key"]: a["value"] for a in span["attributes"]}
                # A request that matched no route has no http.route (semantic conventions).
                route = attributes.get("http.route", {"stringValue": UNMATCHED})
                routes[span["traceId"]] = route["stringValue"]
        return routes

    wanted = {exemplar["labels"]["trace_id"]: labels["route"] for labels, exemplar in exemplars}
    # The batch processor writes the file every 100 ms.
    wait_until(
        lambda: wanted.items() <= routes_by_trace().items(),
        5.0,
        lambda: f"exemplar traces {wanted} not all in {stack.traces}",
    )


@pytest.mark.parametrize("service", ["fastapi", "flask", "recycled"])
def test_promtool_check_metrics_is_clean(stack: Stack, service: str) -> None:
    """``promtool check metrics`` (the text format linter) finds nothing in any ``/metrics``,
    the gunicorn multi-process one and the separate ``metrics_port`` one included."""
    status, headers, body = http_get(stack.metrics_urls[service])
    assert (200, "text/plain") == (status, headers["content-type"].split(";")[0])
    checked = subprocess.run(
        ["promtool", "check", "metrics"],
        input=body,
        capture_output=True,
        timeout=30,
        check=False,
    )
    assert (0, b"", b"") == (checked.returncode, checked.stdout, checked.stderr)
