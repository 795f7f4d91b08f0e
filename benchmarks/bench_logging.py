"""Cost of one JSON log line: obskit's handler and formatter vs python-json-logger alone.

Each variant is a logger with its own ``StreamHandler`` writing to ``os.devnull``; the measured
call is ``logger.info("order charged", extra={3 fields})``. Variants run interleaved in rounds (so
machine noise hits all of them alike) and the table gives the median nanoseconds per call over
the rounds:

- ``stdlib``: ``logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s")`` (reference);
- ``pjl``: python-json-logger's ``JsonFormatter`` with timestamp, level, logger and message -- the
  fields obskit writes outside a trace (the baseline of the ratio);
- ``obskit``: what ``setup_logging`` installs -- obskit's ``JsonStreamHandler`` and
  ``JsonFormatter`` (with service fields and redaction; the formatter reads the trace context
  itself) -- outside any span, on a plain ``logging.Logger``: the stdlib's record path, as
  with ``setup_logging(direct=False)``;
- ``obskit_span``: the same inside a recording span (adds trace_id, span_id, trace_flags);
- ``std_direct`` / ``std_direct_span``: the same two stdlib calls on a logger as
  ``setup_logging`` leaves it by default (a ``DirectLogger``), which writes the line without a
  ``LogRecord`` when, as here, obskit's handler is the only one listening;
- ``direct`` / ``direct_span``: the same two lines through ``obskit.get_logger`` --
  ``log.info("order charged", **fields)``. The target is about the stdlib record path; the
  direct variants show what skipping the record machinery saves.

``--lean-records`` first turns off what the standard library computes for every record and no
JSON line of obskit's uses -- the caller's file, line and function (``logging._srcfile = None``),
thread, process and process-name fields -- as the logging HOWTO's "Optimization" section
describes, to show what those switches save (for every variant alike).

Run: ``python benchmarks/bench_logging.py [--rounds R] [--calls N] [--lean-records]`` (about
10 s by default). The target is obskit <= 1.5x python-json-logger alone.
"""

from __future__ import annotations

import argparse
import gc
import logging
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

from opentelemetry.sdk.trace import TracerProvider
from pythonjsonlogger.json import JsonFormatter as PJLJsonFormatter

from obskit.logger import DirectLogger, Logger
from obskit.logging import JsonFormatter, JsonStreamHandler

TARGET = 1.5
EXTRA = {"order_id": 4211, "customer": "c-1789", "amount": 12.5}
MESSAGE = "order charged"


def _logger(
    name: str,
    formatter: logging.Formatter,
    handler_type: type[logging.StreamHandler] = logging.StreamHandler,  # type: ignore[type-arg]
) -> logging.Logger:
    handler = handler_type(open(os.devnull, "w"))  # noqa: SIM115 - lives for the run
    handler.setFormatter(formatter)
    log = logging.getLogger(f"bench.{name}")
    log.handlers[:] = [handler]
    log.setLevel(logging.INFO)
    log.propagate = False
    return log


def variants() -> dict[str, Callable[[int], int]]:
    """Name -> run(n): log n lines, return elapsed nanoseconds."""
    stdlib = _logger("stdlib", logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    pjl = _logger(
        "pjl",
        PJLJsonFormatter("%(levelname)s %(name)s %(message)s", timestamp=True),
    )
    static = {"service.name": "bench", "service.version": "1.0.0", "deployment.environment": "dev"}
    obskit = _logger("obskit", JsonFormatter(static_fields=static), JsonStreamHandler)
    obskit_span = _logger("obskit_span", JsonFormatter(static_fields=static), JsonStreamHandler)
    tracer = TracerProvider().get_tracer("bench")
    _logger("direct", JsonFormatter(static_fields=static), JsonStreamHandler)
    direct = Logger("bench.direct")
    std_direct = _logger("std_direct", JsonFormatter(static_fields=static), JsonStreamHandler)
    std_direct.__class__ = DirectLogger  # what setup_logging(direct=True) does to every logger

    def native(n: int) -> int:
        info = direct.info
        start = time.perf_counter_ns()
        for _ in range(n):
            info(MESSAGE, **EXTRA)
        return time.perf_counter_ns() - start

    def native_in_span(n: int) -> int:
        with tracer.start_as_current_span("request"):
            return native(n)

    def plain(log: logging.Logger) -> Callable[[int], int]:
        def run(n: int) -> int:
            info = log.info
            start = time.perf_counter_ns()
            for _ in range(n):
                info(MESSAGE, extra=EXTRA)
            return time.perf_counter_ns() - start

        return run

    def in_span(log: logging.Logger) -> Callable[[int], int]:
        run = plain(log)

        def run_in_span(n: int) -> int:
            with tracer.start_as_current_span("request"):
                return run(n)

        return run_in_span

    return {
        "stdlib": plain(stdlib),
        "pjl": plain(pjl),
        "obskit": plain(obskit),
        "obskit_span": in_span(obskit_span),
        "std_direct": plain(std_direct),
        "std_direct_span": in_span(std_direct),
        "direct": native,
        "direct_span": native_in_span,
    }


def measure(rounds: int, calls: int) -> dict[str, list[float]]:
    """ns per call of each variant, one value per round, variants interleaved in each round."""
    runs = variants()
    for run in runs.values():  # warm up caches (key sensitivity, timestamp second, ...)
        run(min(calls, 1_000))
    results: dict[str, list[float]] = {name: [] for name in runs}
    order = list(runs)
    for index in range(rounds):
        # Rotate the order so no variant always runs right after the same one.
        shift = index % len(order)
        for name in order[shift:] + order[:shift]:
            gc.collect()
            results[name].append(runs[name](calls) / calls)
    return results


def table(results: dict[str, list[float]]) -> str:
    base = statistics.median(results["pjl"])
    rows = [
        "| variant | ns per line (median) | min | ratio vs python-json-logger |",
        "|---|---:|---:|---:|",
    ]
    for name, values in results.items():
        median = statistics.median(values)
        rows.append(f"| {name} | {median:,.0f} | {min(values):,.0f} | {median / base:.2f}x |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--calls", type=int, default=10_000)
    parser.add_argument(
        "--lean-records",
        action="store_true",
        help="turn off the stdlib's caller, thread and process fields first",
    )
    args = parser.parse_args(argv)
    if args.lean_records:
        logging._srcfile = None
        logging.logThreads = False
        logging.logProcesses = False
        logging.logMultiprocessing = False
    began = time.monotonic()
    results = measure(args.rounds, args.calls)
    print(
        f"logger.info(..., extra={{3 fields}}) to os.devnull; {args.rounds} rounds x "
        f"{args.calls:,} calls; Python {platform.python_version()} on {platform.machine()}, "
        f"{os.cpu_count()} CPUs" + ("; --lean-records" if args.lean_records else "")
    )
    print()
    print(table(results))
    print()
    base = statistics.median(results["pjl"])
    verdict: dict[str, Any] = {
        name: statistics.median(results[name]) / base for name in ("obskit", "obskit_span")
    }
    worst = max(verdict.values())
    status = "met" if worst <= TARGET else "NOT met"
    print(f"target obskit <= {TARGET}x python-json-logger: {status} (worst {worst:.2f}x)")
    print(f"took {time.monotonic() - began:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
