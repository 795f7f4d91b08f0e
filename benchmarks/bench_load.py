"""End-to-end load benchmark: each framework's app under its real server, bare vs obskit.

FastAPI runs under uvicorn, Flask and Django under gunicorn (sync worker), one worker each, on
loopback. ``wrk`` (Debian's package; ``make bench`` installs it) drives them at 1 and 16
connections. Variants are alternated in rounds. For each run the driver reports requests per
second, p50 and p99 latency, and the server's garbage-collector runs per 10,000 requests
(counted in the server with ``gc.callbacks``). obskit's spans are really exported, over
OTLP/HTTP, to a small receiver in this driver process.

Each obskit variant is also compared with a bare app doing the same work ("matched"): variants
whose app logs a line per request (``obskit``, ``obskit_1pct``, ``*_buf``) with ``bare_log``
(the same line through plain stdlib logging), ``*_nolog*`` with ``bare``; ``bare_log`` itself
is shown against ``bare``. See ``load_apps.py`` for the variants.

Run: ``.venv/bin/python benchmarks/bench_load.py [--duration S] [--rounds R]
[--frameworks F ...] [--variants V ...]``. Everything is bounded: each wrk run lasts
``--duration`` seconds (after a 2 s warm-up) and every server is stopped at the end.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
FRAMEWORKS = ("fastapi", "flask", "django")
#: Run by default.
VARIANTS = ("bare", "bare_log", "obskit", "obskit_1pct", "obskit_nolog", "obskit_nolog_1pct")
#: Available with ``--variants`` (buffered log flushing, obskit's logger, traces off; see
#: ``load_apps.py``).
EXTRA_VARIANTS = (
    "obskit_buf",
    "obskit_1pct_buf",
    "obskit_direct",
    "obskit_1pct_direct",
    "obskit_nolog_notrace",
)


def issue6_shares(costs: dict[str, float]) -> str | None:
    """Issue #6's ratio from a cost per request by variant (opcodes, instructions, CPU time):
    the unsampled request's added cost as a share of the sampled one's, over bare as the issue
    words it, and over ``obskit_nolog_notrace`` (obskit with traces off), which leaves out what
    every request pays whatever the sampling decision (RED metrics, the middleware, the context)
    and so compares what tracing itself adds. None without the variants it needs."""
    try:
        bare, unsampled, sampled = (costs[v] for v in ("bare", "obskit_nolog_1pct", "obskit_nolog"))
    except KeyError:
        return None
    text = (
        f"over bare {unsampled - bare:,.0f} / {sampled - bare:,.0f} = "
        f"{(unsampled - bare) / (sampled - bare):.0%}"
    )
    base = costs.get("obskit_nolog_notrace")
    if base is not None:
        text += (
            f"; tracing's own (over traces off) {unsampled - base:,.0f} / {sampled - base:,.0f}"
            f" = {(unsampled - base) / (sampled - base):.0%}"
        )
    return text


def _logs(variant: str) -> bool:
    """Whether the app writes one log line per request in this variant (as in load_apps)."""
    return variant != "bare" and "nolog" not in variant


def _matched_baseline(variant: str) -> str | None:
    """The bare variant doing the same work as ``variant`` (``bare_log`` is matched to ``bare``)."""
    if variant == "bare":
        return None
    if variant.startswith("bare") or not _logs(variant):
        return "bare"
    return "bare_log"


class _Sink(BaseHTTPRequestHandler):
    # Keep-alive, as the OTel Collector's OTLP/HTTP receiver: with HTTP/1.0 every export would
    # open a new connection, a cost the server's export thread would not pay in production.
    protocol_version = "HTTP/1.1"
    spans_bytes = 0
    #: Scheduling niceness of the receiving threads (set by --sink-nice).
    nice = 0
    _niced = threading.local()

    def do_POST(self) -> None:
        if _Sink.nice and not getattr(_Sink._niced, "done", False):
            # The receiver stands in for a collector on another host: on this machine it shares
            # the load CPU with wrk, and must not delay wrk's own timing.
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), _Sink.nice)
            _Sink._niced.done = True
        length = int(self.headers.get("Content-Length", "0"))
        _Sink.spans_bytes += len(self.rfile.read(length))
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _server_command(framework: str, port: int) -> list[str]:
    bin_dir = Path(sys.executable).parent
    if framework == "fastapi":
        return [
            str(bin_dir / "uvicorn"),
            "benchmarks.load_apps:fastapi_app",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
            "--no-access-log",
            "--log-level",
            "warning",
        ]
    return [
        str(bin_dir / "gunicorn"),
        f"benchmarks.load_apps:{framework}_app",
        "-b",
        f"127.0.0.1:{port}",
        "-w",
        "1",
        "--log-level",
        "warning",
    ]


def _wait(url: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1) as response:
                response.read()
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"server at {url} did not answer within {timeout}s")


def _gc(base: str) -> list[int]:
    with urllib.request.urlopen(base + "/__bench/gc", timeout=5) as response:
        return list(json.loads(response.read())["collections"])


_LAT = re.compile(r"^\s+(50|99)(?:\.0+)?%\s+([\d.]+)(us|ms|s)\s*$", re.M)
_RPS = re.compile(r"Requests/sec:\s+([\d.]+)")
_TOTAL = re.compile(r"(\d+) requests in")
#: wrk's lines for answers that were not 2xx/3xx, and for connections that failed. A server
#: that closes after each answer (gunicorn's sync worker) makes no read errors: wrk reconnects.
_NON_2XX = re.compile(r"Non-2xx or 3xx responses: (\d+)")
_SOCKET_ERRORS = re.compile(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)")


#: CPUs for the server and for the load side (wrk and the OTLP receiver in this process), when
#: pinned (``--pin``): on a small VM the two otherwise take turns on the same cores and the
#: scheduler's choices move the figures more than what is measured.
_PIN: dict[str, set[int]] = {}


def _pinned(role: str) -> Any:
    """A ``preexec_fn`` that pins the child (and what it forks) to ``role``'s CPUs, or None."""
    cpus = _PIN.get(role)
    if not cpus:
        return None
    return lambda: os.sched_setaffinity(0, cpus)


def _wrk(url: str, connections: int, duration: int) -> dict[str, float]:
    threads = min(connections, 2)
    out = subprocess.run(
        [
            "wrk",
            f"-t{threads}",
            f"-c{connections}",
            f"-d{duration}s",
            "--latency",
            "--timeout",
            "5s",
            url,
        ],
        capture_output=True,
        text=True,
        timeout=duration + 30,
        check=True,
        preexec_fn=_pinned("load"),
    ).stdout
    # A failed request must not count as served: wrk counts it in its rate and latencies.
    failed = _NON_2XX.search(out)
    errors = _SOCKET_ERRORS.search(out)
    if failed is not None or (errors is not None and any(int(n) for n in errors.groups())):
        raise RuntimeError(f"wrk against {url}: requests failed\n{out}")
    scale = {"us": 1e-3, "ms": 1.0, "s": 1e3}
    lat = {p: float(v) * scale[u] for p, v, u in _LAT.findall(out)}
    rps = float(_RPS.search(out).group(1))  # type: ignore[union-attr]
    total = int(_TOTAL.search(out).group(1))  # type: ignore[union-attr]
    return {
        "rps": rps,
        "p50": lat.get("50", float("nan")),
        "p99": lat.get("99", float("nan")),
        "n": total,
    }


def start_server(
    framework: str, variant: str, otlp: str, root: Path = ROOT
) -> tuple[subprocess.Popen[bytes], int]:
    """Start ``framework``'s app in ``variant`` under its server (pinned when ``--pin``); the
    process and its port. Stop it with :func:`stop_server`. ``root``: the source tree whose
    ``obskit`` and ``benchmarks`` the server imports (``bench_ab.py`` runs another revision's)."""
    port = _free_port()
    env = dict(os.environ, BENCH_VARIANT=variant, BENCH_OTLP_ENDPOINT=otlp, PYTHONPATH=str(root))
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    proc = subprocess.Popen(
        _server_command(framework, port),
        cwd=root,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
        preexec_fn=_pinned("server"),
    )
    return proc, port


def stop_server(proc: subprocess.Popen[bytes]) -> None:
    """Stop a server's process group (SIGTERM, then SIGKILL after 10 s)."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=10)
    except ProcessLookupError:
        pass
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=5)


def start_sink() -> tuple[ThreadingHTTPServer, str]:
    """The OTLP/HTTP receiver (:class:`_Sink`) on a free loopback port, serving from a daemon
    thread; the server and its base URL."""
    sink = ThreadingHTTPServer(("127.0.0.1", 0), _Sink)
    threading.Thread(target=sink.serve_forever, daemon=True).start()
    return sink, f"http://127.0.0.1:{sink.server_port}"


def cpu_times(stat: str | None = None) -> tuple[int, int] | None:
    """``(steal, total)`` CPU time of all CPUs since boot, in jiffies, from ``/proc/stat`` (or
    the text ``stat``); None where there is none. Steal is the time the hypervisor gave this
    VM's CPUs to someone else: wall-clock ratios taken while it is high are noise."""
    if stat is None:
        try:
            with open("/proc/stat") as file:
                stat = file.readline()
        except OSError:
            return None
    fields = stat.split()
    if len(fields) < 9 or fields[0] != "cpu":
        return None
    # user nice system idle iowait irq softirq steal (guest time is already in user and nice)
    values = [int(value) for value in fields[1:9]]
    return values[7], sum(values)


def process_cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of process ``pid`` and its live descendants (gunicorn's
    worker is the master's child), from ``/proc``; None where there is none."""
    tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    total = 0
    pending = [pid]
    try:
        while pending:
            current = pending.pop()
            with open(f"/proc/{current}/stat") as file:
                fields = file.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime
            with open(f"/proc/{current}/task/{current}/children") as file:
                pending.extend(int(child) for child in file.read().split())
    except (OSError, ValueError, IndexError):
        return None
    return total / tick


def steal_percent(before: tuple[int, int] | None, after: tuple[int, int] | None) -> str:
    """The share of CPU time stolen between two :func:`cpu_times` readings, as text."""
    if before is None or after is None or after[1] <= before[1]:
        return "unknown"
    share = 100.0 * (after[0] - before[0]) / (after[1] - before[1])
    note = " -- over 5 %: this run's wall-clock ratios are not reliable" if share > 5 else ""
    return f"{share:.1f} %{note}"


class Deadline(Exception):
    """A run took longer than its ``--max-seconds``."""


@contextlib.contextmanager
def bounded_run(max_seconds: int) -> Iterator[str]:
    """Start the OTLP receiver and give its URL; stop the run with :class:`Deadline` after
    ``max_seconds``; at the end release both and print the total time."""

    def on_alarm(signum: int, frame: Any) -> None:
        raise Deadline("the run exceeded --max-seconds")

    sink, otlp = start_sink()
    signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(max_seconds)
    started = time.monotonic()
    try:
        yield otlp
    finally:
        signal.alarm(0)
        sink.shutdown()
        print(f"\ntotal time: {time.monotonic() - started:.0f} s")


def run_one(framework: str, variant: str, duration: int, otlp: str) -> dict[str, Any]:
    """Start one server, measure at 1 and 16 connections, stop it."""
    proc, port = start_server(framework, variant, otlp)
    base = f"http://127.0.0.1:{port}"
    result: dict[str, Any] = {}
    try:
        _wait(base + "/items/1")
        _wrk(base + "/items/1", 4, 2)  # warm up
        for connections in (1, 16):
            before = _gc(base)
            stats = _wrk(base + "/items/1", connections, duration)
            after = _gc(base)
            per_10k = [
                (a - b) * 10_000 / max(stats["n"], 1) for a, b in zip(after, before, strict=True)
            ]
            stats["gc"] = per_10k
            result[f"c{connections}"] = stats
    finally:
        stop_server(proc)
    return result


def _median(runs: list[dict[str, Any]], connections: str, key: str) -> float:
    return statistics.median(r[connections][key] for r in runs)


def _ratio(
    runs: dict[tuple[str, str], list[dict[str, Any]]],
    framework: str,
    variant: str,
    baseline: str | None,
    connections: str,
    key: str,
) -> float | None:
    """``variant``'s median ``key`` over ``baseline``'s, or None if the baseline was not run."""
    if baseline is None or (framework, baseline) not in runs:
        return None
    return _median(runs[(framework, variant)], connections, key) / _median(
        runs[(framework, baseline)], connections, key
    )


def _fmt(ratio: float | None) -> str:
    return "-" if ratio is None else f"{ratio:.2f}x"


def add_selection(parser: argparse.ArgumentParser, default_variants: Sequence[str]) -> None:
    """``--frameworks`` and ``--variants`` (any of ``load_apps``' variants), as every load
    script takes them."""
    parser.add_argument(
        "--frameworks", nargs="+", default=list(FRAMEWORKS), choices=FRAMEWORKS, metavar="FW"
    )
    others = [v for v in VARIANTS + EXTRA_VARIANTS if v not in default_variants]
    parser.add_argument(
        "--variants",
        nargs="+",
        default=list(default_variants),
        choices=VARIANTS + EXTRA_VARIANTS,
        metavar="VARIANT",
        help=f"default: {' '.join(default_variants)}; also: {' '.join(others)}",
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--duration", type=int, default=5, help="seconds per wrk run")
    parser.add_argument("--rounds", type=int, default=2)
    add_selection(parser, VARIANTS)
    parser.add_argument(
        "--pin",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="pin the server to the last CPU and the load side to the others (default: on, "
        "with 2 or more CPUs)",
    )
    parser.add_argument("--out", metavar="FILE", help="also write every run's figures as JSON")
    parser.add_argument(
        "--sink-nice",
        type=int,
        default=19,
        help="niceness of the OTLP receiver's threads, which share the load CPU with wrk "
        "(default: 19, the lowest priority; 0 to leave them as they are)",
    )
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed: apt-get install wrk (make bench does it)")
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    if args.pin and len(cpus) >= 2:
        _PIN.update(server={cpus[-1]}, load=set(cpus[:-1]))
        os.sched_setaffinity(0, _PIN["load"])  # this process runs the OTLP receiver
    _Sink.nice = args.sink_nice
    sink, otlp = start_sink()
    runs: dict[tuple[str, str], list[dict[str, Any]]] = {}
    before = cpu_times()
    try:
        for index in range(args.rounds):
            # Variants in a rotating order, so that a drift of the host over a round does not
            # always favour the same variant.
            shift = index % len(args.variants)
            order = args.variants[shift:] + args.variants[:shift]
            for framework in args.frameworks:
                for variant in order:
                    runs.setdefault((framework, variant), []).append(
                        run_one(framework, variant, args.duration, otlp)
                    )
    finally:
        sink.shutdown()
    stolen = steal_percent(before, cpu_times())
    if args.out:
        raw = {f"{fw}/{variant}": values for (fw, variant), values in runs.items()}
        Path(args.out).write_text(json.dumps(raw, indent=1))
    print(f"\n{args.rounds} rounds x {args.duration}s per run; medians over rounds")
    print(f"CPU time stolen by the host during the runs: {stolen}")
    if _PIN:
        print(f"server pinned to CPU {sorted(_PIN['server'])}, load to CPU {sorted(_PIN['load'])}")
    print(
        "matched bare: bare_log for variants that log a line per request, "
        "bare for *_nolog* and for bare_log\n"
    )
    print(
        "| framework | variant | conns | req/s | vs bare | vs matched bare | p50 ms | p99 ms "
        "| p99 vs bare | p99 vs matched | GC gen0/gen1/gen2 per 10k req |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for framework in args.frameworks:
        for connections in ("c1", "c16"):
            for variant in args.variants:
                values = runs[(framework, variant)]
                rps = _median(values, connections, "rps")
                p50 = _median(values, connections, "p50")
                p99 = _median(values, connections, "p99")
                gcs = [statistics.median(v[connections]["gc"][g] for v in values) for g in range(3)]
                unmatched = None if variant == "bare" else "bare"
                matched = _matched_baseline(variant)
                cell = {
                    (base, key): _fmt(_ratio(runs, framework, variant, base, connections, key))
                    for base in (unmatched, matched)
                    for key in ("rps", "p99")
                }
                print(
                    f"| {framework} | {variant} | {connections[1:]} | {rps:,.0f} "
                    f"| {cell[unmatched, 'rps']} | {cell[matched, 'rps']} "
                    f"| {p50:.2f} | {p99:.2f} "
                    f"| {cell[unmatched, 'p99']} | {cell[matched, 'p99']} "
                    f"| {gcs[0]:.1f} / {gcs[1]:.1f} / {gcs[2]:.2f} |"
                )

    _print_paired(runs, args.frameworks, args.variants, args.rounds)


def _paired(
    runs: dict[tuple[str, str], list[dict[str, Any]]],
    framework: str,
    variant: str,
    baseline: str,
    connections: str,
) -> list[float]:
    """p99 of ``variant`` over p99 of ``baseline`` in each round (runs of one round are minutes
    apart at most, so they share the host's state better than medians over the whole run)."""
    mine, theirs = runs[(framework, variant)], runs[(framework, baseline)]
    return [
        m[connections]["p99"] / t[connections]["p99"] for m, t in zip(mine, theirs, strict=True)
    ]


def _print_paired(
    runs: dict[tuple[str, str], list[dict[str, Any]]],
    frameworks: list[str],
    variants: list[str],
    rounds: int,
) -> None:
    """Issue #11's p99 target, round by round: the median of the per-round ratios and how many
    rounds were within 1.5x."""
    print(
        "\np99 ratio per round (median, min-max, rounds within 1.5x)\n\n"
        "| framework | variant | conns | vs bare | vs matched bare |\n|---|---|---|---|---|"
    )
    for framework in frameworks:
        for connections in ("c1", "c16"):
            for variant in variants:
                cells = []
                for base in ("bare", _matched_baseline(variant)):
                    if variant == "bare" or base is None or base not in variants:
                        cells.append("-")
                        continue
                    ratios = _paired(runs, framework, variant, base, connections)
                    within = sum(r <= 1.5 for r in ratios)
                    cells.append(
                        f"{statistics.median(ratios):.2f}x ({min(ratios):.2f}-{max(ratios):.2f}; "
                        f"{within}/{rounds})"
                    )
                print(f"| {framework} | {variant} | {connections[1:]} | {cells[0]} | {cells[1]} |")


if __name__ == "__main__":
    main()
