"""The ``obskit`` command line: ``obskit traces``, ``obskit doctor`` and ``obskit cardinality``."""

from __future__ import annotations

import argparse
import math
import os
import sys
from collections.abc import Callable, Sequence

__all__ = ["main"]

#: Widest duration bar ``obskit traces --width`` draws (a terminal is narrower).
MAX_WIDTH = 1000


def _seconds(text: str) -> float:
    """A timeout option: a finite number of seconds above 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a finite number of seconds above 0: {text!r}")
    return value


def _count(low: int, high: int | None = None) -> Callable[[str], int]:
    """An int option within ``[low, high]``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
        if value < low or (high is not None and value > high):
            bound = f"from {low} to {high}" if high is not None else f"at least {low}"
            raise argparse.ArgumentTypeError(f"must be {bound}: {text!r}")
        return value

    parse.__name__ = "int"  # what argparse names in "invalid int value"
    return parse


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the process exit status."""
    parser = argparse.ArgumentParser(prog="obskit", description="obskit observability toolkit")
    sub = parser.add_subparsers(dest="command", required=True)

    p_traces = sub.add_parser("traces", help="render traces from a JSON-lines file as waterfalls")
    p_traces.add_argument(
        "file",
        nargs="*",
        help="spans files, read as one (several services' files: their traces joined; "
        "default: the configured one)",
    )
    p_traces.add_argument("--trace", help="show only this trace id (prefix allowed)")
    p_traces.add_argument(
        "--last", type=int, default=10, help="show the N most recent traces (0: all)"
    )
    p_traces.add_argument(
        "--width", type=_count(0, MAX_WIDTH), default=40, help="width of the duration bars"
    )
    p_traces.add_argument("--no-color", action="store_true", help="plain output")

    p_doctor = sub.add_parser("doctor", help="effective configuration and connectivity checks")
    p_doctor.add_argument(
        "--timeout", type=_seconds, default=2.0, help="endpoint check timeout (s)"
    )

    p_card = sub.add_parser(
        "cardinality", help="series per metric against its limit, read from a /metrics URL"
    )
    p_card.add_argument("url", help="the service's metrics URL, e.g. http://localhost:8000/metrics")
    p_card.add_argument("--timeout", type=_seconds, default=5.0, help="seconds")
    p_card.add_argument("--top", type=_count(0), default=20, help="unguarded families to list")

    args = parser.parse_args(argv)
    out = sys.stdout
    if out is None:  # started with stdout closed (``obskit doctor >&-``): nowhere to report
        return 1
    try:
        if args.command == "cardinality":
            from obskit.cli.cardinality import run as run_cardinality

            status = int(run_cardinality(args, out))
        elif args.command == "traces":
            from obskit.cli.traces import run as run_traces

            status = int(run_traces(args, out))
        else:
            from obskit.cli.doctor import run as run_doctor

            status = int(run_doctor(args, out))
        out.flush()
        return status
    except BrokenPipeError:
        # The reader is gone (``obskit traces | head -1``): what is left goes nowhere, also at
        # exit, when Python flushes stdout again (the Python docs' recipe, signal module).
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, out.fileno())
        except (OSError, ValueError, AttributeError):
            pass
        return 1
