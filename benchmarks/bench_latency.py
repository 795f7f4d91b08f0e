"""Latency and throughput of bare and obskit servers running side by side, interleaved.

``bench_load.py`` measures each variant in its own wrk run, one after the other. At one connection
the p99 is the 1 % slowest requests, and on a shared VM the host's own hiccups (another tenant, a
stolen CPU slice) land on whichever run happens to be going: per-round p99 ratios of the same
code have ranged from 0.15x to 12.7x there. This benchmark takes most of that out: every
variant's server runs at the same time (the same apps and servers as ``bench_load.py``: uvicorn
for FastAPI, gunicorn's sync worker for Flask and Django, one worker each, all pinned to the same
CPU) and one client sends one request at a time. It cycles over the servers in a fresh random
order each cycle, sending each a block of requests: by default 5 untimed ones, so that the
server's caches are warm again after the other servers ran, then 600 timed ones (about 0.25 s).
A hiccup of the host longer than a cycle then falls on every variant alike, a shorter one on any
variant with the same chance, and what is left in the p99 ratio is the servers' own difference.
obskit's spans are exported, over OTLP/HTTP, to a receiver in this process.

Why blocks of 600: obskit's span pipeline exports a batch when 512 spans are queued (or every
second). With 600 requests per block an obskit server fills and exports its batches during its
own block, as it would serving alone, and pays for them in its own latencies. With short blocks
most exports ran on the timer while the server was idle between its blocks, which flattered
obskit: blocks of 50 read 1.18-1.33x for the p99 at 100 % sampling where blocks of 600 read
1.26-1.36x. Single requests interleaved were worse still: every request found caches the other
servers had just evicted (p50 0.6 ms instead of 0.3), a regime no one-server deployment is in.

The client is ``latency_client.c``, compiled by this script with the system's C compiler (a
client in Python would add its own tens of microseconds to every request and so dilute the
servers' difference), pinned to the other CPUs. It times each request from sending it to having
read the whole response, as wrk does; the connect of a new connection (gunicorn's sync worker
closes it after each response) is not timed, as in wrk.

Reported per framework and variant: timed requests, p50, p99 and p99.9 in milliseconds, the p99
ratio to ``bare`` and to the matched bare variant (see ``bench_load.py``), and the p99 ratio to
``bare`` in each fifth of the run (min-max), to show how stable it is.

Then, with the same servers still running, ``--connections`` (default 16) connections: wrk runs
of ``--seconds`` each, one per variant per round, in a fresh random order each round. Each
variant's req/s and p99 are divided by bare's *of the same round* (runs seconds apart, not
minutes as in ``bench_load.py``, whose rounds restart every server), and by the matched bare
variant's (``bare_log`` for a variant that logs a line per request: the same app, logging the
same line through plain stdlib logging); the table gives the median, the range, and in how many
rounds issue #11's target held. It also gives the server's CPU time per request (user +
system, its processes and their children, read from ``/proc`` around each wrk run) and, paired
the same way, requests per CPU-second against bare: what a saturated server's throughput
follows, read without the scheduler's and the load generator's share of the noise (bare
instances of one app read within 2 % of each other this way).

Run: ``.venv/bin/python benchmarks/bench_latency.py [--cycles N] [--block N] [--connections N]
[--rounds N] [--seconds S] [--frameworks F ...] [--variants V ...]`` (needs a C compiler and
wrk). Bounded: by default 17 blocks of 600 (10,200 timed requests per variant) and 8 rounds of
2 s per variant, about 2 minutes per framework; ``--max-seconds`` for the whole run; every
server is stopped at the end.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import bench_load  # noqa: E402  (a sibling script, not a package module)

DEFAULT_VARIANTS = ("bare", "bare_log", "obskit", "obskit_1pct", "obskit_nolog")
#: Untimed requests that start each block: the server's caches warm again after the others ran.
SETTLE = 5
#: issue #11's bound on the p99 ratio.
TARGET = 1.5
#: issue #11's floors on the throughput ratio at 16 connections: 100 % and 1 % sampling.
THROUGHPUT = 0.6
THROUGHPUT_1PCT = 0.85


def _quantile(values: list[int], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] / 1e6


def build_client(directory: str) -> str:
    """Compile ``latency_client.c`` into ``directory``; the executable's path."""
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        raise SystemExit("a C compiler is needed for the latency client: apt-get install gcc")
    out = os.path.join(directory, "latency_client")
    subprocess.run(
        [compiler, "-O2", "-o", out, str(HERE / "latency_client.c")], check=True, timeout=120
    )
    return out


def one_connection(
    client: str, ports: dict[str, int], cycles: int, block: int
) -> dict[str, list[int]]:
    """Latencies (ns) per variant at one connection, blocks interleaved (``latency_client.c``)."""
    done = subprocess.run(
        [client, str(cycles), str(block), str(SETTLE), "300", "11", *map(str, ports.values())],
        capture_output=True,
        text=True,
        timeout=cycles * (block + SETTLE) * len(ports) * 0.02 + 120,
        preexec_fn=bench_load._pinned("load"),
    )
    if done.returncode != 0:
        raise RuntimeError(f"the latency client failed: {done.stderr.strip()}")
    lines = done.stdout.splitlines()
    return {
        variant: [int(v) for v in line.split()] for variant, line in zip(ports, lines, strict=True)
    }


def many_connections(
    ports: dict[str, int], connections: int, rounds: int, seconds: int, pids: dict[str, int]
) -> dict[str, list[dict[str, float]]]:
    """wrk's figures per variant at ``connections`` connections: one ``seconds``-long wrk run per
    variant per round, in a fresh random order each round, every server resident throughout.
    Each run also gets ``per_cpu_s``: requests per CPU-second of the server's processes (user +
    system time read from ``/proc`` around the run), when it can be read."""
    runs: dict[str, list[dict[str, float]]] = {variant: [] for variant in ports}
    order = list(ports)
    shuffle = random.Random(11).shuffle
    for variant in order:  # warm-up
        bench_load._wrk(f"http://127.0.0.1:{ports[variant]}/items/1", 4, 1)
    for _ in range(rounds):
        shuffle(order)
        for variant in order:
            url = f"http://127.0.0.1:{ports[variant]}/items/1"
            before = bench_load.process_cpu_seconds(pids[variant])
            run = bench_load._wrk(url, connections, seconds)
            after = bench_load.process_cpu_seconds(pids[variant])
            if before is not None and after is not None and after > before:
                run["per_cpu_s"] = run["n"] / (after - before)
            runs[variant].append(run)
    return runs


def measure(
    client: str, framework: str, variants: list[str], args: argparse.Namespace, otlp: str
) -> tuple[dict[str, list[int]], dict[str, list[dict[str, float]]] | None]:
    """Start every variant's server, measure at one connection (and at ``--connections``), stop
    them."""
    servers = {variant: bench_load.start_server(framework, variant, otlp) for variant in variants}
    try:
        ports = {variant: port for variant, (_, port) in servers.items()}
        for port in ports.values():
            bench_load._wait(f"http://127.0.0.1:{port}/items/1")
        single = one_connection(client, ports, args.cycles, args.block)
        many = None
        if args.connections > 1:
            pids = {variant: proc.pid for variant, (proc, _) in servers.items()}
            many = many_connections(ports, args.connections, args.rounds, args.seconds, pids)
        return single, many
    finally:
        for proc, _ in servers.values():
            bench_load.stop_server(proc)


def report(framework: str, latencies: dict[str, list[int]]) -> None:
    print(f"\n### {framework}\n")
    print(
        "| variant | requests | p50 ms | p99 ms | p99.9 ms | p99 vs bare | p99 vs matched bare "
        "| p99 vs bare per fifth (min-max) |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---|")
    p99 = {variant: _quantile(values, 0.99) for variant, values in latencies.items()}
    for variant, values in latencies.items():
        cells = []
        for base in ("bare", bench_load._matched_baseline(variant)):
            if variant == "bare" or base is None or base not in p99:
                cells.append("-")
            else:
                ratio = p99[variant] / p99[base]
                mark = "" if ratio <= TARGET else " (over 1.5x)"
                cells.append(f"{ratio:.2f}x{mark}")
        fifths = "-"
        if variant != "bare" and "bare" in latencies:
            size = len(values) // 5
            bare = latencies["bare"]
            ratios = [
                _quantile(values[i * size : (i + 1) * size], 0.99)
                / _quantile(bare[i * size : (i + 1) * size], 0.99)
                for i in range(5)
            ]
            fifths = f"{min(ratios):.2f}-{max(ratios):.2f}x"
        print(
            f"| {variant} | {len(values):,} | {_quantile(values, 0.5):.3f} | {p99[variant]:.3f} "
            f"| {_quantile(values, 0.999):.3f} | {cells[0]} | {cells[1]} | {fifths} |",
            flush=True,
        )


def _paired(
    runs: dict[str, list[dict[str, float]]], variant: str, base: str | None, key: str
) -> str:
    """``variant``'s ``key`` over ``base``'s, round by round: median, min-max, and in how many
    rounds issue #11's target held (p99 at most 1.5x; req/s at least 0.6x at 100 % sampling,
    0.85x at 1 %)."""
    theirs = runs.get(base) if base else None
    if variant == "bare" or theirs is None:
        return "-"
    pairs = [(m.get(key), t.get(key)) for m, t in zip(runs[variant], theirs, strict=True)]
    ratios = [m / t for m, t in pairs if m is not None and t]
    if not ratios:
        return "-"
    if key == "p99":
        ok = sum(r <= TARGET for r in ratios)
    else:
        ok = sum(r >= (THROUGHPUT_1PCT if "1pct" in variant else THROUGHPUT) for r in ratios)
    return (
        f"{statistics.median(ratios):.2f}x ({min(ratios):.2f}-{max(ratios):.2f}; "
        f"{ok}/{len(ratios)})"
    )


def report_many(connections: int, runs: dict[str, list[dict[str, float]]]) -> None:
    """Medians over rounds, and the ratios to ``bare`` taken within each round."""
    print(
        f"\nAt {connections} connections (wrk; medians over rounds; ratios paired within each "
        "round: median, min-max, rounds within issue #11's target):\n"
    )
    print(
        "| variant | req/s | p50 ms | p99 ms | req/s vs bare | req/s vs matched bare | p99 vs bare "
        "| p99 vs matched bare | server CPU us/request | req per CPU-s vs bare |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for variant, values in runs.items():
        rates = [v["per_cpu_s"] for v in values if "per_cpu_s" in v]
        cpu = f"{1e6 / statistics.median(rates):.0f}" if rates else "-"
        matched = bench_load._matched_baseline(variant)
        print(
            f"| {variant} | {statistics.median(v['rps'] for v in values):,.0f} "
            f"| {statistics.median(v['p50'] for v in values):.2f} "
            f"| {statistics.median(v['p99'] for v in values):.2f} "
            f"| {_paired(runs, variant, 'bare', 'rps')} | {_paired(runs, variant, matched, 'rps')} "
            f"| {_paired(runs, variant, 'bare', 'p99')} | {_paired(runs, variant, matched, 'p99')} "
            f"| {cpu} | {_paired(runs, variant, 'bare', 'per_cpu_s')} |",
            flush=True,
        )
    cpu_us = {
        variant: 1e6 / statistics.median(rates)
        for variant, values in runs.items()
        if (rates := [v["per_cpu_s"] for v in values if "per_cpu_s" in v])
    }
    share = bench_load.issue6_shares(cpu_us)
    if share:
        print(f"\nIssue #6, server CPU us per request: {share}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--cycles", type=int, default=17, help="blocks per variant")
    parser.add_argument("--block", type=int, default=600, help="timed requests per block")
    bench_load.add_selection(parser, DEFAULT_VARIANTS)
    parser.add_argument(
        "--connections",
        type=int,
        default=16,
        help="also measure with wrk at this many connections (1: only the one-connection part)",
    )
    parser.add_argument("--rounds", type=int, default=8, help="wrk rounds (many connections)")
    parser.add_argument("--seconds", type=int, default=2, help="seconds per wrk run")
    parser.add_argument("--max-seconds", type=int, default=1800)
    args = parser.parse_args()
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    if len(cpus) >= 2:
        bench_load._PIN.update(server={cpus[-1]}, load=set(cpus[:-1]))
        os.sched_setaffinity(0, bench_load._PIN["load"])  # the client and the OTLP receiver
    bench_load._Sink.nice = 19
    with bench_load.bounded_run(args.max_seconds) as otlp:
        print(
            f"{args.cycles * args.block:,} timed requests per variant in {args.cycles} blocks of "
            f"{args.block}, one connection; each cycle runs one block per variant in a random "
            f"order; servers pinned to CPU {sorted(bench_load._PIN.get('server', []))}, client "
            f"to CPU {sorted(bench_load._PIN.get('load', []))}; p99 target <= {TARGET}x bare"
        )
        with tempfile.TemporaryDirectory(prefix="bench-latency-") as tmp:
            client = build_client(tmp)
            for framework in args.frameworks:
                before = bench_load.cpu_times()
                single, many = measure(client, framework, args.variants, args, otlp)
                report(framework, single)
                if many is not None:
                    report_many(args.connections, many)
                after = bench_load.cpu_times()
                print(f"\nCPU time stolen by the host: {bench_load.steal_percent(before, after)}")


if __name__ == "__main__":
    main()
