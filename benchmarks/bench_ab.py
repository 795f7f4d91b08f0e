"""This tree against another revision, under the real servers: does a change cost server CPU?

On a shared VM the same variant's server CPU per request moves by up to 10 % from one run to the
next (docs/benchmarks.md), more than most changes to obskit's request path cost, so comparing a
run before a change with a run after it decides nothing. Here both trees run at once: the base
revision is checked out into a temporary git worktree, each variant's server is started from
both trees (same interpreter, same installed frameworks; each imports its own tree's ``obskit``
and ``benchmarks/load_apps.py``), every server pinned to the same CPU, and wrk runs at 16
connections alternate between all of them in a fresh random order each round. Each round pairs
a variant's two servers, seconds apart, so the host's drift cancels in the ratio.

Reported per framework and variant: server CPU per request (median over rounds) in the base and
in this tree, and ``this / base`` paired within each round (median, min-max) for CPU per request
and for req/s. A paired median within a few per cent of 1.00 over 20-30 rounds is "no
measurable change"; fewer rounds spread wider.

Run: ``python benchmarks/bench_ab.py --base REV [--frameworks ...] [--variants ...] [--rounds N]``
(the variants must exist in both trees' ``load_apps.py``). Bounded by ``--max-seconds``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import bench_latency  # noqa: E402  (sibling scripts, not package modules)
import bench_load  # noqa: E402


def paired(this: Sequence[float | None], base: Sequence[float | None]) -> str:
    """``this / base`` over rounds where both were measured: median (min-max), or "-"."""
    ratios = [t / b for t, b in zip(this, base, strict=True) if t is not None and b]
    if not ratios:
        return "-"
    return f"{statistics.median(ratios):.3f} ({min(ratios):.3f}-{max(ratios):.3f})"


def _cpu_us(run: dict[str, float]) -> float | None:
    per_cpu_s = run.get("per_cpu_s")
    return 1e6 / per_cpu_s if per_cpu_s else None


def compare(
    framework: str, variants: list[str], base_root: Path, args: argparse.Namespace, otlp: str
) -> None:
    """Start every variant from both trees, run the interleaved rounds, print one row each."""
    servers = {}
    try:
        for tree, root in (("base", base_root), ("this", bench_load.ROOT)):
            for variant in variants:
                servers[(tree, variant)] = bench_load.start_server(framework, variant, otlp, root)
        ports = {f"{tree}:{variant}": port for (tree, variant), (_, port) in servers.items()}
        for port in ports.values():
            bench_load._wait(f"http://127.0.0.1:{port}/items/1")
        pids = {f"{tree}:{variant}": proc.pid for (tree, variant), (proc, _) in servers.items()}
        runs = bench_latency.many_connections(
            ports, args.connections, args.rounds, args.seconds, pids
        )
    finally:
        for proc, _ in servers.values():
            bench_load.stop_server(proc)
    for variant in variants:
        base, this = runs[f"base:{variant}"], runs[f"this:{variant}"]
        base_cpu, this_cpu = [_cpu_us(r) for r in base], [_cpu_us(r) for r in this]
        medians = [
            f"{statistics.median(c for c in cpus if c is not None):.0f}"
            if any(c is not None for c in cpus)
            else "-"
            for cpus in (base_cpu, this_cpu)
        ]
        print(
            f"| {framework} | {variant} | {medians[0]} | {medians[1]} "
            f"| {paired(this_cpu, base_cpu)} "
            f"| {paired([r['rps'] for r in this], [r['rps'] for r in base])} |",
            flush=True,
        )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--base", required=True, help="the revision to compare with (git rev)")
    bench_load.add_selection(parser, ("obskit_1pct",))
    parser.add_argument("--rounds", type=int, default=20, help="wrk rounds")
    parser.add_argument("--seconds", type=int, default=2, help="seconds per wrk run")
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--max-seconds", type=int, default=1800)
    args = parser.parse_args()
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    if len(cpus) >= 2:
        bench_load._PIN.update(server={cpus[-1]}, load=set(cpus[:-1]))
        os.sched_setaffinity(0, bench_load._PIN["load"])  # wrk and the OTLP receiver
    bench_load._Sink.nice = 19
    repo = bench_load.ROOT
    with tempfile.TemporaryDirectory(prefix="bench-ab-") as tmp:
        base_root = Path(tmp) / "base"
        subprocess.run(
            ["git", "-C", str(repo), "worktree", "add", "--detach", str(base_root), args.base],
            check=True,
            capture_output=True,
        )
        try:
            with bench_load.bounded_run(args.max_seconds) as otlp:
                print(
                    f"base {args.base} against this tree; {args.rounds} rounds of {args.seconds} s "
                    f"at {args.connections} connections, servers pinned to CPU "
                    f"{sorted(bench_load._PIN.get('server', []))}\n"
                )
                print(
                    "| framework | variant | base CPU us/request | this CPU us/request "
                    "| CPU this/base, paired | req/s this/base, paired |"
                )
                print("|---|---|---:|---:|---:|---:|")
                for framework in args.frameworks:
                    compare(framework, list(args.variants), base_root, args, otlp)
        finally:
            subprocess.run(
                ["git", "-C", str(repo), "worktree", "remove", "--force", str(base_root)],
                check=False,
                capture_output=True,
            )


if __name__ == "__main__":
    main()
