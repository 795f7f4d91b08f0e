"""The ``obskit`` command line: ``obskit traces`` and ``obskit doctor``."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the process exit status."""
    parser = argparse.ArgumentParser(prog="obskit", description="obskit observability toolkit")
    sub = parser.add_subparsers(dest="command", required=True)

    p_traces = sub.add_parser("traces", help="render traces from a JSON-lines file as waterfalls")
    p_traces.add_argument("file", nargs="?", help="spans file (default: the configured one)")
    p_traces.add_argument("--trace", help="show only this trace id (prefix allowed)")
    p_traces.add_argument("--last", type=int, default=10, help="show the N most recent traces")
    p_traces.add_argument("--width", type=int, default=40, help="width of the duration bars")
    p_traces.add_argument("--no-color", action="store_true", help="plain output")

    p_doctor = sub.add_parser("doctor", help="effective configuration and connectivity checks")
    p_doctor.add_argument("--timeout", type=float, default=2.0, help="endpoint check timeout (s)")

    p_card = sub.add_parser(
        "cardinality", help="series per metric against its limit, read from a /metrics URL"
    )
    p_card.add_argument("url", help="the service's metrics URL, e.g. http://localhost:8000/metrics")
    p_card.add_argument("--timeout", type=float, default=5.0, help="seconds")
    p_card.add_argument("--top", type=int, default=20, help="unguarded families to list")

    args = parser.parse_args(argv)
    if args.command == "cardinality":
        from obskit.cli.cardinality import run as run_cardinality

        return int(run_cardinality(args, sys.stdout))
    if args.command == "traces":
        from obskit.cli.traces import run as run_traces

        return int(run_traces(args, sys.stdout))
    from obskit.cli.doctor import run as run_doctor

    return int(run_doctor(args, sys.stdout))
