"""Adversarial review of the command line: ``obskit cardinality``, ``obskit doctor`` and
``obskit traces`` (``obskit/cli/``), run as ``python -m obskit``.

The promise under review: the CLI is what an SRE runs against a live service or its files at
3 a.m. Whatever it is pointed at -- a /metrics URL that answers junk, gzip or OpenMetrics, closes
mid-answer, redirects or streams without end; a collector that is not one; a spans file that is
a FIFO, a directory, one enormous line, a huge or pathological trace, or that a live process is
writing and rotating; odd option values, odd environment values, a broken multi-process
directory, a closed pipe on stdout -- it exits with a clear message and a non-zero status
(argparse's 2 for a usage error, the documented code otherwise), never with a Python traceback,
never hangs, never holds memory in proportion to a hostile input, and the numbers it prints are
the ones the page or the file really holds.

Everything is real: the CLI runs as a child process (``sys.executable -m obskit``) with a
deadline on each run, its peak RSS read from ``/proc`` while it runs; the peers are http.server
handlers or raw sockets on 127.0.0.1 started by the test; the files are real files, FIFOs,
sparse files and /proc entries under ``tmp_path``.

Tests marked ``xfail(strict=True)`` pin an obskit bug still open (the reason names the function
at fault and why); the others pin behaviour that holds.
"""

from __future__ import annotations

import base64
import contextlib
import gzip
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

import obskit
from obskit import _state
from obskit.metrics.exposition import MetricsServer
from tests.child_process import child_env
from tests.loopback import QuietHandler, free_port, http_get, serving

BASE_NS = 1_700_000_000_000_000_000
#: Deadline of a run that must finish at once (startup is ~0.3 s).
QUICK = 15.0
#: Deadline of a run on an input that made the CLI hang (or take tens of seconds, quadratic):
#: the fixed CLI needs < 1 s alone; several such runs share the host's cores at once, and on a
#: busy host (another test run beside this one) 3 s was not always enough.
HANG = 8.0


# -- running the CLI ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Run:
    """One finished (or killed) ``python -m obskit`` run."""

    status: int | None  # None: killed at its deadline
    out: str
    err: str
    seconds: float
    peak_mb: float  # the child's peak RSS

    @property
    def clean(self) -> bool:
        """No Python traceback and no 'Exception ignored' report on stderr."""
        return "Traceback" not in self.err and "Exception ignored" not in self.err


def _env(**extra: str) -> dict[str, str]:
    """The child's environment: no OTEL_/OBSKIT_/proxy settings, strict UTF-8 stdout."""
    return child_env(PYTHONIOENCODING="utf-8", **extra)


def obskit_cli(
    *argv: str,
    timeout: float = QUICK,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    stdout: int | None = None,
    pass_fds: tuple[int, ...] = (),
) -> Run:
    """Run ``python -m obskit ARGV``; kill it past ``timeout`` seconds."""
    with tempfile.TemporaryFile() as out_f, tempfile.TemporaryFile() as err_f:
        started = time.monotonic()
        proc = subprocess.Popen(
            [sys.executable, "-m", "obskit", *argv],
            stdin=subprocess.DEVNULL,
            stdout=out_f if stdout is None else stdout,
            stderr=err_f,
            env=_env() if env is None else env,
            cwd=cwd,
            pass_fds=pass_fds,
        )
        status: int | None = None
        peak_mb = 0.0
        while True:
            # The high-water mark of the child's own memory (after its exec), read while it
            # runs: wait4's ru_maxrss would also count the pages of the test process it was
            # forked from, hundreds of MB late in the whole suite.
            peak_mb = max(peak_mb, _high_water_mb(proc.pid))
            pid, wait_status, _ = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                status = os.waitstatus_to_exitcode(wait_status)
                break
            if time.monotonic() - started > timeout:
                proc.kill()
                os.wait4(proc.pid, 0)
                break
            time.sleep(0.01)
        seconds = time.monotonic() - started
        proc.returncode = -9 if status is None else status  # reaped here, not by Popen
        out_f.seek(0)
        err_f.seek(0)
        return Run(
            status,
            out_f.read().decode("utf-8", "replace"),
            err_f.read().decode("utf-8", "replace"),
            seconds,
            peak_mb,
        )


def _high_water_mb(pid: int) -> float:
    """``VmHWM`` of a running process in MB (0 once it has exited)."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except (OSError, ValueError):
        pass
    return 0.0


# -- peers ----------------------------------------------------------------------------------------


@contextlib.contextmanager
def raw_peer(answer: Callable[[socket.socket], None], read_head: bool = True) -> Iterator[int]:
    """A loopback port whose every connection gets its request head read (unless not
    ``read_head``), then ``answer``."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    listener.settimeout(0.05)
    stop = threading.Event()

    def serve(conn: socket.socket) -> None:
        with conn:
            conn.settimeout(5)
            try:
                head = b"" if read_head else b"\r\n\r\n"
                while b"\r\n\r\n" not in head and len(head) < 65536:
                    data = conn.recv(65536)
                    if not data:
                        return
                    head += data
                answer(conn)
            except OSError:  # the client gave up
                pass

    def accept() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except (TimeoutError, OSError):
                continue
            threading.Thread(target=serve, args=(conn,), daemon=True).start()

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1]
    finally:
        stop.set()
        thread.join(5)
        listener.close()


def sends(data: bytes) -> Callable[[socket.socket], None]:
    """An answer that writes ``data`` and closes."""
    return lambda conn: conn.sendall(data)


def endless_body(conn: socket.socket) -> None:
    """200 with no length, then 64 KiB chunks of comment lines until the client leaves (or
    30 s)."""
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nConnection: close\r\n\r\n")
    chunk = b"# padding padding padding padding padding padding padding padding pad\n" * 910
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        conn.sendall(chunk)


@dataclass(frozen=True)
class Page:
    """What a route answers: status, headers, body."""

    body: bytes
    content_type: str = "text/plain; version=0.0.4; charset=utf-8"
    status: int = 200
    headers: tuple[tuple[str, str], ...] = ()


@contextlib.contextmanager
def pages(routes: dict[str, Page]) -> Iterator[str]:
    """An HTTP server answering ``routes`` (404 elsewhere); yields its base URL."""

    class Handler(QuietHandler):
        def do_GET(self) -> None:
            page = routes.get(self.path)
            if page is None:
                self.send_error(404)
                return
            self.send_response(page.status)
            self.send_header("Content-Type", page.content_type)
            for name, value in page.headers:
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(page.body)))
            self.end_headers()
            self.wfile.write(page.body)

    with serving(Handler) as port:
        yield f"http://127.0.0.1:{port}"


def gauge_page(name: str, count: int, typed: bool = True) -> bytes:
    """A text exposition of gauge ``name`` with ``count`` series."""
    head = f"# HELP {name} Test.\n# TYPE {name} gauge\n" if typed else ""
    return (head + "".join(f'{name}{{x="{i}"}} 1.0\n' for i in range(count))).encode()


def report_rows(out: str) -> dict[str, list[str]]:
    """metric -> [series, limit, use, folded] of the guarded table of ``obskit cardinality``."""
    rows = {}
    for line in out.split("\n\n")[0].splitlines()[1:]:
        cells = line.split()
        if len(cells) >= 5:
            rows[cells[0]] = cells[1:5]
    return rows


def unguarded(out: str) -> dict[str, int]:
    """family -> series of the 'unguarded families' list of ``obskit cardinality``."""
    _, _, listing = out.partition("unguarded families on the page")
    rows = {}
    for line in listing.splitlines()[1:]:
        name, _, count = line.strip().rpartition(" ")
        rows[name.strip()] = int(count)
    return rows


# -- spans files ----------------------------------------------------------------------------------


def span_line(trace_id: str, span_id: int, start: int, end: int, **extra: Any) -> str:
    """One OTLP/JSON span line as the JSON-lines exporter writes it (times in ns from BASE)."""
    doc = {
        "traceId": trace_id,
        "spanId": f"{span_id:016x}",
        "name": f"op {span_id}",
        "kind": 1,
        "startTimeUnixNano": str(BASE_NS + start),
        "endTimeUnixNano": str(BASE_NS + end),
        "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "svc"}}]},
        **extra,
    }
    return json.dumps(doc)


def write_trace(path: Path, count: int, parent_of: Callable[[int], int | None]) -> Path:
    """One trace of spans 1..count; span i's parent is ``parent_of(i)`` (None: a root)."""
    lines = []
    for i in range(1, count + 1):
        parent = parent_of(i)
        extra = {"parentSpanId": f"{parent:016x}"} if parent is not None else {}
        lines.append(span_line("ab" * 16, i, i * 1000, 2 * count * 1000 - i, **extra))
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def shown_traces(out: str) -> dict[str, tuple[int, int]]:
    """trace id -> (span count in its header, span lines printed under it)."""
    result: dict[str, tuple[int, int]] = {}
    current = None
    for line in out.splitlines():
        if line.startswith("trace "):
            current = line.split()[1]
            match = re.search(r"  (\d+) spans?\b", line)
            assert match, line
            result[current] = (int(match.group(1)), 0)
        elif line.startswith("  ") and current is not None:
            header, rows = result[current]
            result[current] = (header, rows + 1)
    return result


# =================================================================================================
# obskit cardinality
# =================================================================================================


@pytest.fixture
def metrics_page() -> Iterator[str]:
    """A plain, correct metrics page (7 series of ``plain``) on loopback; its URL."""
    with pages({"/metrics": Page(gauge_page("plain", 7))}) as base:
        yield base + "/metrics"


# A bug this test found, since fixed: cli/cardinality.py run catches (OSError, ValueError) around
# _fetch; http.client's HTTPException (BadStatusLine from a non-HTTP port, LineTooLong,
# IncompleteRead of a chunked answer cut short, InvalidURL for a port typo or a space) is neither,
# so it ends the command with a traceback
@pytest.mark.parametrize(
    "case", ["ssh-port", "header-too-long", "chunked-cut", "port-typo", "space-in-url"]
)
def test_cardinality_http_protocol_errors_are_reported(case: str) -> None:
    """A port that is not HTTP, a header past http.client's limit, a chunked answer cut short
    or a malformed URL: exit 1 (or 2, usage, for the URL typos) with a message naming the URL,
    no traceback."""
    answers = {
        "ssh-port": b"SSH-2.0-OpenSSH_9.6p1 Ubuntu-3ubuntu13\r\n",
        "header-too-long": b"HTTP/1.1 200 OK\r\nX-Pad: " + b"a" * 70_000 + b"\r\n\r\n",
        "chunked-cut": b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n"
        b"Transfer-Encoding: chunked\r\n\r\nb\r\n# HELP a b\n\r\n",
    }
    with raw_peer(sends(answers.get(case, b""))) as port:
        url = {
            "port-typo": f"http://127.0.0.1:{port}x/metrics",
            "space-in-url": f"http://127.0.0.1:{port}/met rics",
        }.get(case, f"http://127.0.0.1:{port}/metrics")
        run = obskit_cli("cardinality", url, "--timeout", "3")
    assert run.clean, run.err
    assert run.status in (1, 2), run.out
    assert url in run.out + run.err


# A bug this test found, since fixed: cli/cardinality.py _fetch stops at the first empty read1();
# http.client returns b'' when the peer closes before Content-Length bytes (no IncompleteRead from
# read1), so a page cut short is parsed and reported as complete with exit 0
def test_cardinality_page_cut_short_is_not_reported_as_complete() -> None:
    """An answer announcing 2x the bytes it sends, cut at a line boundary: exit 1, not a report
    that counts half the series."""
    body = gauge_page("jobs", 40)
    cut = body[: body.index(b'jobs{x="20"}')]
    head = f"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {len(body)}\r\n\r\n"
    with raw_peer(sends(head.encode() + cut)) as port:
        run = obskit_cli("cardinality", f"http://127.0.0.1:{port}/metrics", "--timeout", "3")
    assert run.clean, run.err
    assert unguarded(run.out).get("jobs") != 20, "half the page reported as the whole"
    assert run.status == 1, run.out


# A bug this test found, since fixed: cli/cardinality.py run stores series[family.name] = len(...)
# per parsed family; prometheus_client's text parser yields one family per sample of an untyped
# metric (no # TYPE line), so each overwrites the last and a metric with 50 series is reported as 1
def test_cardinality_counts_every_series_of_an_untyped_metric() -> None:
    """A hand-written exposition without # TYPE lines (valid text format: untyped): the
    unguarded list shows the 50 series the page holds."""
    with pages({"/metrics": Page(gauge_page("legacy_requests", 50, typed=False))}) as base:
        run = obskit_cli("cardinality", base + "/metrics")
    assert (run.status, run.clean) == (0, True), run.err
    assert unguarded(run.out) == {"legacy_requests": 50}


# A bug this test found, since fixed: cli/cardinality.py run parses every answer with the Prometheus
# text parser whatever its Content-Type; an OpenMetrics page's counter (# TYPE jobs counter, samples
# jobs_total) splits into one untyped family per sample, reported as 'jobs_total 1' and 'jobs 0'
def test_cardinality_reads_an_openmetrics_answer() -> None:
    """A server that answers OpenMetrics (its Content-Type says so): the counter's 7 series are
    counted once, under one family."""
    body = (
        "# HELP jobs Jobs.\n# TYPE jobs counter\n"
        + "".join(f'jobs_total{{queue="q{i}"}} 1.0\n' for i in range(7))
        + "# EOF\n"
    ).encode()
    page = Page(body, content_type="application/openmetrics-text; version=1.0.0; charset=utf-8")
    with pages({"/metrics": page}) as base:
        run = obskit_cli("cardinality", base + "/metrics")
    assert (run.status, run.clean) == (0, True), run.err
    assert {k: v for k, v in unguarded(run.out).items() if k.startswith("jobs")} in (
        {"jobs": 7},
        {"jobs_total": 7},
    )


# A bug this test found, since fixed: cli/cardinality.py _fetch decodes the body without looking at
# Content-Encoding; urllib sends no Accept-Encoding, which RFC 9110 12.5.3 reads as 'any coding is
# fine', and a gzip answer is reported as 'not a Prometheus metrics page'
def test_cardinality_reads_a_gzip_answer() -> None:
    """A page sent with Content-Encoding: gzip (a proxy in front of the app) is read."""
    page = Page(
        gzip.compress(gauge_page("queue_depth", 9)), headers=(("Content-Encoding", "gzip"),)
    )
    with pages({"/metrics": page}) as base:
        run = obskit_cli("cardinality", base + "/metrics")
    assert (run.status, run.clean) == (0, True), run.out + run.err
    assert unguarded(run.out) == {"queue_depth": 9}


def test_cardinality_gzip_bomb_stays_bounded() -> None:
    """A 1 MB gzip answer that inflates to 1 GiB: exit 1, bounded memory, no traceback (whatever
    the fix for gzip answers does, it must keep the page cap)."""
    member = gzip.compress(b"\0" * (8 << 20), compresslevel=9)
    page = Page(member * 128, headers=(("Content-Encoding", "gzip"),))
    with pages({"/metrics": page}) as base:
        run = obskit_cli("cardinality", base + "/metrics", "--timeout", "5")
    assert run.clean, run.err
    assert run.status == 1, run.out
    assert run.peak_mb < 512, f"peak RSS {run.peak_mb:.0f} MB"


def test_cardinality_endless_page_is_cut_with_bounded_memory() -> None:
    """A 200 answer that streams as fast as loopback allows, without end: exit 1 at the page cap
    (or the deadline), peak RSS far below what was sent."""
    with raw_peer(endless_body) as port:
        run = obskit_cli("cardinality", f"http://127.0.0.1:{port}/metrics", "--timeout", "5")
    assert run.clean, run.err
    assert run.status == 1
    assert "page larger than" in run.out or "not read within" in run.out, run.out
    assert run.peak_mb < 400, f"peak RSS {run.peak_mb:.0f} MB"
    assert run.seconds < 10


@pytest.mark.parametrize("case", ["500", "closes-at-once", "redirect-loop", "redirect-to-file"])
def test_cardinality_failed_answers_exit_1(case: str, tmp_path: Path) -> None:
    """A 500, a connection closed without an answer, a redirect loop and a redirect to a local
    file:// URL: exit 1 with 'cannot read URL', the local file never read."""
    secret = tmp_path / "secret.prom"
    secret.write_text('local_secret{token="hunter2"} 1\n')
    routes = {
        "/500": Page(b"oops", status=500),
        "/redirect-loop": Page(b"", status=302, headers=(("Location", "/redirect-loop"),)),
        "/redirect-to-file": Page(b"", status=302, headers=(("Location", secret.as_uri()),)),
    }
    with pages(routes) as base, raw_peer(sends(b"")) as closing:
        url = f"{base}/{case}"
        if case == "closes-at-once":
            url = f"http://127.0.0.1:{closing}/metrics"
        run = obskit_cli("cardinality", url, "--timeout", "3")
    assert run.clean, run.err
    assert run.status == 1
    assert run.out.startswith(f"cannot read {url}: "), run.out
    assert "hunter2" not in run.out


def test_cardinality_follows_a_redirect_to_the_page() -> None:
    """/metrics answering 301 to /internal/metrics (a mounted app): the page it leads to is
    reported, every series counted."""
    routes = {
        "/metrics": Page(b"", status=301, headers=(("Location", "/internal/metrics"),)),
        "/internal/metrics": Page(gauge_page("pool_size", 12) + gauge_page("workers", 3)),
    }
    with pages(routes) as base:
        run = obskit_cli("cardinality", base + "/metrics")
    assert (run.status, run.clean) == (0, True), run.err
    assert unguarded(run.out) == {"pool_size": 12, "workers": 3}


# A bug this test found, since fixed: cli/__init__.py main declares --timeout as type=float and
# --top as type=int with no range: 0, -1 and nan reach urlopen and the healthy page is reported
# unreadable (exit 1), inf makes socket.settimeout raise OverflowError (a traceback), --top -1
# silently drops a family; argparse should refuse them (exit 2)
@pytest.mark.parametrize(
    "option",
    [
        ("--timeout", "0"),
        ("--timeout", "-1"),
        ("--timeout", "nan"),
        ("--timeout", "inf"),
        ("--top", "-1"),
    ],
    ids=lambda option: "=".join(option),
)
def test_cardinality_out_of_range_options_are_usage_errors(
    option: tuple[str, str], metrics_page: str
) -> None:
    """Against a healthy page, an option value out of range is a usage error: exit 2, usage on
    stderr, no traceback -- not a report that the service cannot be read."""
    run = obskit_cli("cardinality", metrics_page, f"{option[0]}={option[1]}")
    assert run.clean, run.err
    assert (run.status, "usage: obskit cardinality" in run.err) == (2, True), run.out


# A bug this test found, since fixed: cli/cardinality.py run writes to the raw stdout: it never
# wraps it in _output.safe_output as doctor and traces do, so a URL argument holding an undecodable
# byte (a surrogate after surrogateescape) ends the command with UnicodeEncodeError on a strict
# UTF-8 stdout
def test_cardinality_undecodable_url_on_a_strict_utf8_stdout() -> None:
    """``obskit cardinality $'http://127.0.0.1:PORT/\\xff'`` (a byte pasted from a binary log):
    exit 1 with the message, escaped."""
    url = os.fsdecode(b"http://127.0.0.1:%d/metrics\xff" % free_port())
    run = obskit_cli("cardinality", url)
    assert run.clean, run.err
    assert (run.status, run.out.startswith("cannot read http://127.0.0.1:")) == (1, True)


# -- against a real obskit service -----------------------------------------------------------------


@pytest.fixture
def obskit_service() -> Iterator[str]:
    """This process as a service: guarded metrics (limit 5; 8 label sets of a counter, 3 of a
    gauge, 1 of a histogram) on a real ``MetricsServer``; the /metrics URL."""
    declared = _state.instruments
    _state.instruments = dict(declared)  # put back before the conftest's reset() rebinds them
    server = None
    try:
        obskit.configure(traces_exporter="none", cardinality_limit=5)
        orders = obskit.counter("advcli_orders", "Orders.", ["method"])
        for i in range(8):
            orders.labels(f"m{i}").inc()
        depth = obskit.gauge("advcli_queue_depth", "Depth.", ["queue"])
        for i in range(3):
            depth.labels(f"q{i}").set(i)
        obskit.histogram("advcli_latency", "Latency.", ["route"], buckets=[0.1, 1]).labels(
            "/a"
        ).observe(0.5)
        server = MetricsServer(0, host="127.0.0.1")
        yield f"http://127.0.0.1:{server.port}/metrics"
    finally:
        if server is not None:
            server.close()
        _state.instruments = declared


def test_cardinality_report_matches_a_real_service(obskit_service: str) -> None:
    """Each guarded row -- series, limit, use, folded -- matches what the exposition holds:
    the admitted label sets (not __overflow__) of the metric, its limit, the overflow count."""
    run = obskit_cli("cardinality", obskit_service)
    assert (run.status, run.clean) == (0, True), run.err
    _, _, body = http_get(obskit_service)
    admitted: dict[str, set[tuple[tuple[str, str], ...]]] = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            if family.name.startswith("advcli_") and "__overflow__" not in sample.labels.values():
                labels = {k: v for k, v in sample.labels.items() if k != "le"}
                admitted.setdefault(family.name, set()).add(tuple(sorted(labels.items())))
    assert {k: len(v) for k, v in admitted.items()} == {
        "advcli_orders": 5,
        "advcli_orders_created": 5,
        "advcli_queue_depth": 3,
        "advcli_latency": 1,
        "advcli_latency_created": 1,
    }
    # (other tests' instruments outlive them, rebound with no series: not these rows)
    rows = {name: row for name, row in report_rows(run.out).items() if name.startswith("advcli_")}
    assert rows == {
        "advcli_orders": ["5", "5", "100%", "3"],
        "advcli_queue_depth": ["3", "5", "60%", "0"],
        "advcli_latency": ["1", "5", "20%", "0"],
    }


# A bug this test found, since fixed: cli/cardinality.py run lists every family not named like a
# guarded metric as unguarded; prometheus_client's text format writes a counter's and a histogram's
# _created samples as their own family (advcli_orders_created), so guarded metrics fill the
# 'unguarded' top-N and push out the families an SRE is looking for
def test_cardinality_created_families_of_guarded_metrics_are_not_unguarded(
    obskit_service: str,
) -> None:
    """No <guarded metric>_created family appears in the unguarded list."""
    run = obskit_cli("cardinality", obskit_service)
    assert (run.status, run.clean) == (0, True), run.err
    listed = set(unguarded(run.out))
    assert listed, run.out
    assert not {name for name in listed if name.startswith("advcli_")}, run.out


# =================================================================================================
# obskit doctor
# =================================================================================================


@pytest.fixture
def collector() -> Iterator[str]:
    """A healthy OTLP/HTTP collector (200 on any POST); its base URL."""

    class Handler(QuietHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length", "0")))
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

    with serving(Handler) as port:
        yield f"http://127.0.0.1:{port}"


# A bug this test found, since fixed: cli/__init__.py main declares doctor --timeout as type=float
# with no range: 0 makes the socket non-blocking (FAIL 'Operation now in progress'), -1 gives 'no
# answer within -1s', nan and inf crash the check (ValueError/OverflowError): a healthy collector is
# reported down with exit 1 instead of a usage error (exit 2)
@pytest.mark.parametrize("value", ["0", "-1", "nan", "inf"])
def test_doctor_out_of_range_timeout_is_a_usage_error(value: str, collector: str) -> None:
    """``doctor --timeout=V`` with V out of range: exit 2 and usage, not 'the collector
    failed'."""
    run = obskit_cli(
        "doctor", f"--timeout={value}", env=_env(OTEL_EXPORTER_OTLP_ENDPOINT=collector)
    )
    assert run.clean, run.err
    assert "FAIL  traces:" not in run.out, run.out
    assert (run.status, "usage: obskit doctor" in run.err) == (2, True)


def test_doctor_reports_a_healthy_collector_ok(collector: str) -> None:
    """The baseline for the test above: the same collector with --timeout 2 is OK, exit 0."""
    run = obskit_cli("doctor", "--timeout", "2", env=_env(OTEL_EXPORTER_OTLP_ENDPOINT=collector))
    assert (run.status, run.clean) == (0, True), run.out + run.err
    assert f"OK    traces: {collector}/v1/traces answered 200" in run.out


@pytest.mark.parametrize("case", ["ssh-port", "closes-at-once", "endless-answer", "tls-to-http"])
def test_doctor_hostile_collectors_fail_within_the_timeout(case: str) -> None:
    """An endpoint that is no collector -- an SSH port, a port that closes at once, an answer
    that never ends, https:// to a plain-HTTP port -- is FAIL with a reason, exit 1, within
    --timeout (+ startup), never a traceback."""
    answer = {
        "ssh-port": sends(b"SSH-2.0-OpenSSH_9.6p1\r\n"),
        "closes-at-once": sends(b""),
        "endless-answer": endless_body,
        "tls-to-http": sends(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n"),
    }[case]
    with raw_peer(answer, read_head=case != "tls-to-http") as port:
        scheme = "https" if case == "tls-to-http" else "http"
        env = _env(OTEL_EXPORTER_OTLP_ENDPOINT=f"{scheme}://127.0.0.1:{port}")
        run = obskit_cli("doctor", "--timeout", "0.5", env=env)
    assert run.clean, run.err
    assert run.status == 1, run.out
    assert re.search(r"FAIL  traces: \S+", run.out), run.out
    assert run.seconds < 5


@pytest.mark.parametrize(
    ("command", "variable", "value"),
    [
        ("doctor", "OBSKIT_SLOW_THRESHOLD", "inf"),
        ("doctor", "OBSKIT_CARDINALITY_LIMIT", "0"),
        ("doctor", "OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:99999"),
        ("traces", "OBSKIT_METRICS_PORT", "70000"),
    ],
)
def test_out_of_range_environment_exits_2(
    command: str, variable: str, value: str, tmp_path: Path
) -> None:
    """An environment value out of range: exit 2 with a message naming the variable and the
    value (``traces`` without FILE reads the configuration too). (A numeric ``OTEL_*`` value
    out of range is ignored with a warning instead: test_config.py.)"""
    run = obskit_cli(command, env=_env(**{variable: value}), cwd=tmp_path)
    assert run.clean, run.err
    assert run.status == 2, run.out
    assert f"'{value}' (from env:{variable})" in run.out


def test_doctor_with_a_fifo_traces_file_and_a_corrupt_multiproc_dir(tmp_path: Path) -> None:
    """A traces file that is a FIFO with no reader (doctor must not open it for writing, which
    would block) and a multi-process directory of corrupt .db files: doctor finishes at once and
    reports both checks."""
    fifo = tmp_path / "spans.jsonl"
    os.mkfifo(fifo)
    multiproc = tmp_path / "multiproc"
    multiproc.mkdir()
    (multiproc / "counter_4242.db").write_bytes(os.urandom(5000))
    (multiproc / "gauge_livesum_4243.db").write_bytes(b"\x07")
    env = _env(OBSKIT_TRACES_FILE=str(fifo), PROMETHEUS_MULTIPROC_DIR=str(multiproc))
    run = obskit_cli("doctor", env=env, timeout=10)
    assert run.clean, run.err
    assert run.status in (0, 1), run.out
    assert "traces: file " in run.out
    assert "multiproc_dir: " in run.out
    assert run.seconds < 5


# =================================================================================================
# obskit traces
# =================================================================================================


def test_traces_reads_spans_from_a_pipe(tmp_path: Path) -> None:
    """``obskit traces <(kubectl exec ... cat spans.jsonl)``: a pipe with a writer is read to its
    end (what a fix for the FIFO hang must keep working)."""
    read_fd, write_fd = os.pipe()
    try:
        lines = [span_line("cd" * 16, i, i * 1000, 9000, parentSpanId=f"{1:016x}") for i in (2, 3)]
        data = (span_line("cd" * 16, 1, 0, 10_000) + "\n" + "\n".join(lines) + "\n").encode()
        os.write(write_fd, data)
        os.close(write_fd)
        write_fd = -1
        run = obskit_cli("traces", f"/dev/fd/{read_fd}", pass_fds=(read_fd,), cwd=tmp_path)
    finally:
        os.close(read_fd)
        if write_fd >= 0:
            os.close(write_fd)
    assert (run.status, run.clean) == (0, True), run.out + run.err
    assert shown_traces(run.out) == {"cd" * 16: (3, 3)}


# A bug this test found, since fixed: cli/traces.py _read_into iterates the file by lines: a line
# with no newline is read whole into memory (bytes, then the decoded str) before json.loads rejects
# it, so memory grows with the line; lines past a cap should be skipped as malformed while reading
# in chunks
def test_traces_enormous_line_uses_bounded_memory(tmp_path: Path) -> None:
    """A 128 MiB file that is one line of NULs (a preallocated or zero-filled file after a
    crash): one malformed line, peak RSS well below the file's size."""
    path = tmp_path / "spans.jsonl"
    with path.open("wb") as fh:
        fh.truncate(128 << 20)  # sparse: no disk written
    run = obskit_cli("traces", str(path), timeout=30)
    assert (run.status, run.clean) == (0, True), run.err
    assert "1 malformed line skipped" in run.out
    assert run.peak_mb < 100, f"peak RSS {run.peak_mb:.0f} MB for a 128 MiB line"


# A bug this test found, since fixed: cli/traces.py run reports 'cannot read {path}' with the FILE
# argument, but the file that failed may be FILE.1 (load_spans reads it first): the message names a
# file that is fine; exc.filename names the one at fault
def test_traces_unreadable_rotated_file_is_the_one_named(tmp_path: Path) -> None:
    """FILE is a good spans file, FILE.1 is a directory: the message names FILE.1."""
    path = write_trace(tmp_path / "spans.jsonl", 3, lambda i: None if i == 1 else 1)
    (tmp_path / "spans.jsonl.1").mkdir()
    run = obskit_cli("traces", str(path))
    assert run.clean, run.err
    assert run.status == 1
    assert f"cannot read {path}.1" in run.out, run.out


@pytest.mark.parametrize(
    ("target", "status", "message"),
    [
        ("directory", 1, "cannot read"),
        ("/proc/self/mem", 1, "cannot read /proc/self/mem: Input/output error"),
        ("/dev/null", 0, "no spans in /dev/null yet"),
    ],
)
def test_traces_files_that_cannot_be_read(
    target: str, status: int, message: str, tmp_path: Path
) -> None:
    """A directory and a file whose read fails with EIO (/proc/self/mem, even for root): exit 1
    with the reason; /dev/null: no spans, exit 0."""
    path = str(tmp_path) if target == "directory" else target
    run = obskit_cli("traces", path)
    assert run.clean, run.err
    assert run.status == status
    assert message in run.out, run.out


WRITER = """
import sys, time
import obskit
from opentelemetry import trace
from opentelemetry.trace import SpanKind

obskit.configure(
    service_name="writer", traces_file=sys.argv[1], traces_file_max_bytes=30_000,
    bsp_schedule_delay=0.01,
)
tracer = trace.get_tracer("writer")
for i in range(500):
    with tracer.start_as_current_span(f"GET /item/{i}", kind=SpanKind.SERVER):
        with tracer.start_as_current_span("SELECT item", kind=SpanKind.CLIENT):
            pass
        with tracer.start_as_current_span("render"):
            pass
    if i % 25 == 0:
        time.sleep(0.01)
obskit.shutdown(5)
"""


def _file_traces(path: Path) -> dict[str, int]:
    """trace id -> distinct spans of FILE.1 and FILE."""
    spans: dict[str, set[str]] = {}
    for name in (f"{path}.1", str(path)):
        with contextlib.suppress(FileNotFoundError), open(name, encoding="utf-8") as fh:
            for line in fh:
                doc = json.loads(line)
                spans.setdefault(doc["traceId"], set()).add(doc["spanId"])
    return {trace_id: len(ids) for trace_id, ids in spans.items()}


def test_traces_while_a_live_process_writes_and_rotates(tmp_path: Path) -> None:
    """A real obskit process writes 1,500 spans, rotating its 30 kB file many times, while
    ``obskit traces`` runs: every run exits 0 (or 1 before the first write) with headers that
    match the rows under them; afterwards, every trace and span count matches the files."""
    path = tmp_path / "spans.jsonl"
    writer = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(path)], env=child_env(), cwd=tmp_path
    )
    try:
        during = [obskit_cli("traces", str(path), "--last", "0") for _ in range(3)]
        assert writer.wait(timeout=20) == 0
    finally:
        if writer.poll() is None:
            writer.kill()
            writer.wait(5)
    for run in during:
        assert run.clean, run.err
        assert run.status in (0, 1), run.out
        for header, rows in shown_traces(run.out).values():
            assert header == rows
    assert (tmp_path / "spans.jsonl.1").exists(), "the writer never rotated"
    run = obskit_cli("traces", str(path), "--last", "0", "--no-color")
    assert (run.status, run.clean) == (0, True), run.err
    assert "malformed" not in run.out
    expected = _file_traces(path)
    assert {t: header for t, (header, _) in shown_traces(run.out).items()} == expected
    assert all(header == rows for header, rows in shown_traces(run.out).values())


# =================================================================================================
# every command: a closed pipe on stdout
# =================================================================================================


# A bug this test found, since fixed: cli/__init__.py main lets BrokenPipeError escape: `obskit
# traces | head -1` or `obskit doctor | head -1` ends with a traceback, and again 'Exception
# ignored' when Python flushes stdout at exit; main should catch it, point stdout at devnull and
# exit (1 or 141)
@pytest.mark.parametrize("command", ["traces", "doctor"])
def test_a_closed_pipe_on_stdout_is_no_traceback(command: str, tmp_path: Path) -> None:
    """The reader of stdout is gone before the command writes (``| head -1`` that already
    exited): no traceback on stderr."""
    path = write_trace(tmp_path / "spans.jsonl", 50, lambda i: None if i == 1 else 1)
    read_fd, write_fd = os.pipe()
    os.close(read_fd)
    try:
        argv = ["traces", str(path)] if command == "traces" else ["doctor"]
        run = obskit_cli(*argv, stdout=write_fd, cwd=tmp_path)
    finally:
        os.close(write_fd)
    assert run.status is not None
    assert run.clean, run.err


# =================================================================================================
# inputs that hang the CLI today
# =================================================================================================


@pytest.fixture(scope="module")
def hanging(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Future[Run]]]:
    """The runs on inputs that hang the CLI today, started together: each is killed at its
    HANG-second deadline, so the five cost HANG seconds in all, not five times that. Each test
    below checks its own run."""
    directory = tmp_path_factory.mktemp("hanging")
    spans_fifo = directory / "spans-fifo.jsonl"
    os.mkfifo(spans_fifo)
    metrics_fifo = directory / "metrics.prom"
    os.mkfifo(metrics_fifo)
    wide = write_trace(directory / "wide.jsonl", 8000, lambda i: None if i == 1 else 1)
    deep = write_trace(directory / "deep.jsonl", 5000, lambda i: i - 1 if i > 1 else None)
    cycles = write_trace(directory / "cycles.jsonl", 12_000, lambda i: i + 1 if i % 2 else i - 1)
    argvs = {
        "spans-fifo": ("traces", str(spans_fifo)),
        "metrics-fifo": ("cardinality", metrics_fifo.as_uri(), "--timeout", "0.5"),
        "wide": ("traces", str(wide), "--width", "10"),
        "deep": ("traces", str(deep), "--width", "10"),
        "cycles": ("traces", str(cycles), "--width", "10"),
    }
    with ThreadPoolExecutor(max_workers=len(argvs)) as pool:
        yield {
            name: pool.submit(obskit_cli, *argv, timeout=HANG, cwd=directory)
            for name, argv in argvs.items()
        }


# A bug this test found, since fixed: cli/traces.py load_spans checks os.path.exists then _read_into
# opens the path; open() of a FIFO with no writer blocks forever (no timeout, no O_NONBLOCK), so
# `obskit traces FIFO` never returns
def test_traces_fifo_without_a_writer_does_not_hang(hanging: dict[str, Future[Run]]) -> None:
    """A FIFO where the spans file should be (a log shipper's pipe), nobody writing: the command
    returns (no spans, or cannot read), no traceback."""
    run = hanging["spans-fifo"].result()
    assert run.status is not None, f"still blocked after {HANG} s"
    assert run.clean, run.err
    assert run.status in (0, 1)


# A bug this test found, since fixed: cli/cardinality.py _fetch hands any URL to urlopen: a file://
# URL naming a FIFO with no writer blocks in open() before --timeout applies (the README says the
# whole read is bounded by S seconds); refusing non-http(s) schemes (exit 2) or opening non-blocking
# would bound it
def test_cardinality_file_url_of_a_fifo_is_bounded(hanging: dict[str, Future[Run]]) -> None:
    """``obskit cardinality file:///.../metrics.prom --timeout 0.5`` on a FIFO returns."""
    run = hanging["metrics-fifo"].result()
    assert run.status is not None, f"still blocked after {HANG} s"
    assert run.clean, run.err
    assert run.status in (1, 2)


# A bug this test found, since fixed: cli/traces.py Trace.start and Trace.end are properties that
# scan every span, and _span_line reads them for each row: rendering a trace is O(spans^2), and one
# trace of 8,000 spans (a batch job's N+1 queries, 2 MB of file) takes tens of seconds
def test_traces_one_trace_with_many_spans_renders_at_once(
    hanging: dict[str, Future[Run]],
) -> None:
    """One root with 7,999 children renders within the deadline, every span shown."""
    run = hanging["wide"].result()
    assert run.status is not None, f"no answer after {HANG} s"
    assert (run.status, run.clean) == (0, True), run.err
    assert shown_traces(run.out) == {"ab" * 16: (8000, 8000)}


# A bug this test found, since fixed: cli/traces.py _walk builds each row's tree prefix as its
# parent's prefix plus 3 characters and _label runs Style.clean over all of it, though labels are
# cut to _LABEL_MAX: time and memory are O(depth^2), and a chain of 5,000 nested spans (recursion,
# retries) takes tens of seconds
def test_traces_deep_chain_renders_at_once(hanging: dict[str, Future[Run]]) -> None:
    """A chain of 5,000 spans, each the parent of the next, renders within the deadline."""
    run = hanging["deep"].result()
    assert run.status is not None, f"no answer after {HANG} s"
    assert (run.status, run.clean) == (0, True), run.err
    assert shown_traces(run.out) == {"ab" * 16: (5000, 5000)}


# A bug this test found, since fixed: cli/traces.py tree_rows, when only parent cycles are left,
# scans every span for the earliest unvisited one once per cycle: O(spans x cycles), so a corrupted
# file of 6,000 two-span cycles (12,000 lines) takes many seconds though it claims to be cycle-safe
def test_traces_many_parent_cycles_render_at_once(hanging: dict[str, Future[Run]]) -> None:
    """12,000 spans in pairs that name each other as parent: every span shown, quickly."""
    run = hanging["cycles"].result()
    assert run.status is not None, f"no answer after {HANG} s"
    assert (run.status, run.clean) == (0, True), run.err
    assert shown_traces(run.out) == {"ab" * 16: (12_000, 12_000)}


# =================================================================================================
# fourth review: bounds, secrets and escapes
# =================================================================================================


def trickled_headers(conn: socket.socket) -> None:
    """A status line, then one header byte every 0.2 s until the client leaves (or 10 s): each
    socket read gets data well within any --timeout."""
    conn.sendall(b"HTTP/1.1 200 OK\r\n")
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        conn.sendall(b"X")
        time.sleep(0.2)


class SlowRedirects(QuietHandler):
    """/N answers, after 0.6 s, a redirect to /N+1: each answer within --timeout 1, the chain
    (urllib follows 10) far past it."""

    def do_GET(self) -> None:
        time.sleep(0.6)
        self.send_response(302)
        self.send_header("Location", f"/{int(self.path.strip('/') or 0) + 1}")
        self.send_header("Content-Length", "0")
        self.end_headers()


# A bug this test found, since fixed: cli/cardinality.py _fetch checks its deadline only in _read,
# once the headers are in; urlopen's timeout bounds each socket operation, so headers trickled a
# byte at a time never end the command and a chain of redirects answered in 0.6 s each takes 7 s
# with --timeout 1 (the README says the whole read is bounded by S seconds)
@pytest.mark.parametrize("case", ["trickled-headers", "redirect-chain"])
def test_cardinality_timeout_bounds_headers_and_redirects(case: str) -> None:
    """``--timeout 1``: exit 1 with 'not read within', well before 3x the timeout."""
    with contextlib.ExitStack() as stack:
        if case == "trickled-headers":
            url = f"http://127.0.0.1:{stack.enter_context(raw_peer(trickled_headers))}/metrics"
        else:
            url = f"http://127.0.0.1:{stack.enter_context(serving(SlowRedirects))}/0"
        run = obskit_cli("cardinality", url, "--timeout", "1", timeout=HANG)
    assert run.status is not None, f"still running after {HANG} s"
    assert (run.status, run.clean) == (1, True), run.out + run.err
    assert "not read within 1 s" in run.out, run.out
    assert run.seconds < 3, f"{run.seconds:.1f} s with --timeout 1"


# A bug this test found, since fixed: config.py ConfigError shows an invalid value with repr(): an
# endpoint refused for a port typo (or a left-out scheme, or a broken IPv6 bracket) is printed by
# doctor and traces with its password and token in clear, though doctor masks a valid one
@pytest.mark.parametrize(
    ("endpoint", "shown"),
    [
        (
            "https://tenant:S3CRET-PW@collector.example:99999/?api_key=S3CRET-KEY",
            "'https://tenant:***@collector.example:99999/?api_key=***'",
        ),
        ("tenant:S3CRET-PW@collector.example:4318", "'***'"),
        ("https://tenant:S3CRET-PW@[collector.example/?api_key=S3CRET-KEY", "'***'"),
    ],
    ids=["port-typo", "no-scheme", "ipv6-bracket"],
)
@pytest.mark.parametrize("command", ["doctor", "traces"])
def test_an_invalid_endpoint_is_shown_masked(
    command: str, endpoint: str, shown: str, tmp_path: Path
) -> None:
    """``OTEL_EXPORTER_OTLP_ENDPOINT`` invalid and holding secrets: exit 2 naming the option,
    the URL shown masked, no secret anywhere."""
    run = obskit_cli(command, env=_env(OTEL_EXPORTER_OTLP_ENDPOINT=endpoint), cwd=tmp_path)
    assert (run.status, run.clean) == (2, True), run.out + run.err
    assert "S3CRET" not in run.out + run.err
    assert f"invalid otlp_endpoint={shown} (from env:OTEL_EXPORTER_OTLP_ENDPOINT)" in run.out


# A bug this test found, since fixed: cli/doctor.py _error_reason gives http.client's InvalidURL as
# its text, which quotes the request target: a space in the collector URL's path shows its query's
# token in the FAIL line
def test_doctor_invalid_url_reason_shows_no_token() -> None:
    """A collector URL with a space in its path: FAIL, the token masked everywhere."""
    endpoint = f"http://127.0.0.1:{free_port()}/otlp path?api_key=S3CRET-KEY"
    run = obskit_cli("doctor", "--timeout", "1", env=_env(OTEL_EXPORTER_OTLP_ENDPOINT=endpoint))
    assert (run.status, run.clean) == (1, True), run.out + run.err
    assert "FAIL  traces: " in run.out, run.out
    assert "invalid URL" in run.out, run.out
    assert "S3CRET" not in run.out + run.err


class BasicAuthPage(QuietHandler):
    """/metrics behind HTTP basic auth (admin / s3cr3t pass, percent-encoded in the URL);
    /elsewhere redirects to the port in ?to= (another origin). Every Authorization header seen
    is kept in ``seen``."""

    seen: list[tuple[int, str | None]] = []

    def do_GET(self) -> None:
        auth = self.headers.get("Authorization")
        self.seen.append((self.server.server_address[1], auth))
        path, _, query = self.path.partition("?")
        if path == "/elsewhere":
            self.send_response(302)
            self.send_header("Location", f"http://127.0.0.1:{query.partition('=')[2]}/metrics")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        expected = "Basic " + base64.b64encode(b"admin:s3cr3t pass").decode()
        body = gauge_page("private_jobs", 4) if auth == expected else b"who are you?"
        self.send_response(200 if auth == expected else 401)
        self.send_header("Content-Type", "text/plain; version=0.0.4")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


# A bug this test found, since fixed: cli/cardinality.py run prints the URL raw in its error
# messages (password and ?token= in clear), and _fetch hands a URL's user info to urlopen, which
# looks 'admin:pw@127.0.0.1' up as a host name instead of sending basic auth
def test_cardinality_url_credentials_are_sent_as_basic_auth_never_printed() -> None:
    """The URL's user info goes as HTTP basic credentials (the page behind it is read) and to
    the same origin only (not through a redirect to another port); messages show the URL with
    its password and query values masked."""
    BasicAuthPage.seen = []
    with serving(BasicAuthPage) as port, serving(BasicAuthPage) as other:
        base = f"http://admin:s3cr3t%20pass@127.0.0.1:{port}"
        ok = obskit_cli("cardinality", f"{base}/metrics?token=s3cr3t-token", "--timeout", "3")
        elsewhere = obskit_cli("cardinality", f"{base}/elsewhere?to={other}", "--timeout", "3")
    down = obskit_cli("cardinality", f"http://admin:s3cr3t@127.0.0.1:{free_port()}/m?token=s3cr3t")
    assert (ok.status, ok.clean) == (0, True), ok.out + ok.err
    assert unguarded(ok.out) == {"private_jobs": 4}
    assert (elsewhere.status, elsewhere.clean) == (1, True), elsewhere.out + elsewhere.err
    assert [auth for seen_port, auth in BasicAuthPage.seen if seen_port == other] == [None]
    assert (down.status, down.clean) == (1, True), down.out + down.err
    assert down.out.startswith("cannot read http://admin:***@127.0.0.1:"), down.out
    assert "?token=***: " in down.out, down.out
    assert "Connection refused" in down.out, down.out
    for run in (ok, elsewhere, down):
        assert "s3cr3t" not in run.out + run.err


# A bug this test found, since fixed: cli/traces.py _any_value calls int() on any intValue; json
# reads 1e400 (and Infinity) as a float infinity, and int() raises OverflowError, which neither
# _attributes nor parse_span catches: one such line ends the command with a traceback
@pytest.mark.parametrize("number", ["1e400", "Infinity", "-Infinity", "NaN", "1.5"])
def test_traces_an_int_value_that_is_no_integer_is_no_crash(number: str, tmp_path: Path) -> None:
    """A resource attribute and an event attribute whose intValue is not an integer: the span
    is still shown (the attribute ignored), exit 0."""
    good = span_line("ab" * 16, 1, 0, 1000)
    bad = span_line(
        "ab" * 16,
        2,
        100,
        900,
        parentSpanId=f"{1:016x}",
        events=[{"name": "e", "attributes": [{"key": "n", "value": {"intValue": "X"}}]}],
    ).replace(
        '{"stringValue": "svc"}}]',
        '{"stringValue": "svc"}}, {"key": "n", "value": {"intValue": "X"}}]',
    )
    path = tmp_path / "spans.jsonl"
    path.write_text(good + "\n" + bad.replace('"X"', number) + "\n", encoding="utf-8")
    run = obskit_cli("traces", str(path), "--no-color", cwd=tmp_path)
    assert (run.status, run.clean) == (0, True), run.out + run.err
    assert shown_traces(run.out) == {"ab" * 16: (2, 2)}


# A bug this test found, since fixed: cli/cardinality.py run catches only ValueError around the
# parse; prometheus_client's OpenMetrics parser raises KeyError on some malformed pages (a
# histogram sample without a _bucket suffix), which ends the command with a traceback
def test_cardinality_any_parser_error_is_not_a_metrics_page() -> None:
    """An OpenMetrics answer the parser rejects with KeyError: exit 1, 'is not a Prometheus
    metrics page', no traceback."""
    page = Page(
        b'# TYPE d histogram\nd {le="+Inf"} 2.0\n# EOF\n',
        content_type="application/openmetrics-text; version=1.0.0; charset=utf-8",
    )
    with pages({"/metrics": page}) as base:
        run = obskit_cli("cardinality", base + "/metrics")
    assert (run.status, run.clean) == (1, True), run.out + run.err
    assert run.out.startswith(f"{base}/metrics is not a Prometheus metrics page: "), run.out


# A bug this test found, since fixed: cli/cardinality.py _read hands a gzip answer's body to zlib;
# zlib.error (a body that is not gzip after all) is no ValueError and ends the command with a
# traceback
def test_cardinality_a_corrupt_gzip_answer_is_reported() -> None:
    """Content-Encoding: gzip on a body that is not gzip: exit 1, 'cannot read', no traceback."""
    page = Page(b"not gzip at all", headers=(("Content-Encoding", "gzip"),))
    with pages({"/metrics": page}) as base:
        run = obskit_cli("cardinality", base + "/metrics")
    assert (run.status, run.clean) == (1, True), run.out + run.err
    assert run.out.startswith(f"cannot read {base}/metrics: compressed page unreadable"), run.out


# A bug this test found, since fixed: cli/cardinality.py run writes label values, family names and
# the parser's message from the page raw: escape sequences in a page retitle or clear the SRE's
# terminal (obskit traces escapes them, Style.clean)
@pytest.mark.parametrize("case", ["label-value", "parser-message"])
def test_cardinality_escapes_control_characters_of_the_page(case: str) -> None:
    """A page whose guarded metric name (a label value), or whose unparsable line, holds ESC and
    BEL: the report shows them escaped, none raw."""
    body = {
        "label-value": "# TYPE obskit_cardinality_series gauge\n"
        'obskit_cardinality_series{metric="orders\x1b]0;owned\x07\x1b[2J"} 3\n',
        "parser-message": "\x1b[31mred_family 1\n",
    }[case]
    with pages({"/metrics": Page(body.encode())}) as base:
        run = obskit_cli("cardinality", base + "/metrics")
    assert run.clean, run.err
    assert run.status == (0 if case == "label-value" else 1), run.out
    assert "\x1b" not in run.out, repr(run.out)
    assert "\x07" not in run.out, repr(run.out)
    assert "\\x1b" in run.out, run.out
    if case == "label-value":
        assert "orders\\x1b]0;owned\\x07\\x1b[2J " in run.out, run.out
