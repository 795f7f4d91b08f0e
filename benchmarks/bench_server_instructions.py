"""Instructions per request of the server process under its real server, counted by callgrind.

``bench_load.py`` runs each framework's app (``load_apps.py``) under its real server, one worker
(uvicorn for FastAPI, gunicorn's sync worker for Flask and Django), and measures throughput with
wrk; on a shared VM that figure moves by +-20 % between runs. A one-worker server at saturation is
CPU-bound, so its throughput is about 1 / (CPU work per request). This script measures that work
deterministically: the same server command runs under ``valgrind --tool=callgrind
--instr-atstart=no --trace-children=yes`` (gunicorn forks its worker: each process writes its own
file), is warmed up with 200 requests, and counting is switched on (``callgrind_control``) only
around exactly ``--requests`` requests sent by this driver, one at a time, over one HTTP/1.1
connection (gunicorn's sync worker closes it after each response; the client then reconnects, as
wrk does). The totals of all the server's processes are summed (the gunicorn master's is about
zero) and divided by the number of requests. The driver and its OTLP receiver run in this
process, which is not counted. The same variant counts the same within 1-2 %, whatever the load
on the machine.

The table gives, per framework and variant, thousands of instructions per request, the
instructions added over ``bare``, and the implied throughput ratio ``bare / variant`` and
``matched bare / variant`` (the matched bare variant does the same logging work, see
``bench_load.py``).

Limits: instructions are not time. Cache misses, system calls, waits for the GIL and the
loopback network are not weighed, so the implied ratios are an estimate of the CPU-bound
throughput, not a measurement of it. obskit's export thread runs in the server process, so its
work during the counted window (batching, encoding and sending spans) IS counted, spread over the
requests; exports are batched on a timer, so with few requests its share is lumpier.

Run: ``.venv/bin/python benchmarks/bench_server_instructions.py [--frameworks F ...]
[--variants V ...] [--requests N]`` (needs Debian's ``valgrind``; about a minute per variant).
Everything is bounded: every subprocess and request has a timeout, the whole run stops after
``--max-seconds``, and every server is stopped at the end.
"""

from __future__ import annotations

import argparse
import http.client
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import bench_load  # noqa: E402  (a sibling script, not a package module)

ROOT = HERE.parent
WARMUP = 200
#: Seconds allowed for a server to answer its first request under valgrind.
START_TIMEOUT = 180.0
#: Seconds allowed for a server to exit (and callgrind to write its files) after SIGTERM.
STOP_TIMEOUT = 120.0
_TOTALS = re.compile(r"([\d,]+)\s+\(100\.0%\)\s+PROGRAM TOTALS")
_TOTALS_BARE = re.compile(r"([\d,]+)\s+PROGRAM TOTALS")


def _group_pids(pgid: int) -> list[int]:
    """The live processes of process group ``pgid`` (the server and, for gunicorn, its worker)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # Fields after "(comm)": state, ppid, pgrp, ...
        fields = stat[stat.rindex(")") + 2 :].split()
        if fields[0] != "Z" and int(fields[2]) == pgid:
            pids.append(int(entry.name))
    return sorted(pids)


def _instrument(state: str, pids: list[int]) -> None:
    """Switch callgrind's counting on or off in ``pids`` (only ours, not other users' runs)."""
    out = subprocess.run(
        ["callgrind_control", "-i", state, *map(str, pids)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if out.returncode != 0 or "rror" in out.stdout + out.stderr:
        raise RuntimeError(f"callgrind_control -i {state} {pids} failed: {out.stdout}{out.stderr}")


def _requests(port: int, n: int, path: str = "/items/1") -> None:
    """Send ``n`` sequential GETs to ``path`` over one connection, reading each response."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        for _ in range(n):
            # Reconnects by itself when the server closed the connection (gunicorn sync worker).
            conn.request("GET", path)
            response = conn.getresponse()
            response.read()
            if response.status != 200:
                raise RuntimeError(f"{path} answered {response.status}")
    finally:
        conn.close()


def _settle(port: int) -> None:
    """A full collection in the server before counting (see ``load_apps.gc_counts``): a fresh
    process makes one as its start-up objects age, about 15M instructions, at a point that moves
    with what was imported; counted, it added up to 18k per request to some variants only."""
    _requests(port, 1, "/__bench/gc?collect=1")


def _total(path: Path) -> int:
    """The instruction total of one callgrind output file."""
    summary = subprocess.run(
        ["callgrind_annotate", str(path)],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    ).stdout
    match = _TOTALS.search(summary) or _TOTALS_BARE.search(summary)
    if match is None:
        raise RuntimeError(f"no PROGRAM TOTALS in callgrind_annotate {path}")
    return int(match.group(1).replace(",", ""))


def _stop(proc: subprocess.Popen[bytes]) -> bool:
    """Stop the server's process group; True if it exited on SIGTERM (files written)."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=STOP_TIMEOUT)
        # The gunicorn master may exit before its worker has finished writing its file.
        deadline = time.monotonic() + STOP_TIMEOUT
        while _group_pids(proc.pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        return not _group_pids(proc.pid)
    except ProcessLookupError:
        return True
    except subprocess.TimeoutExpired:
        pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        pass
    return False


def count(framework: str, variant: str, requests: int, otlp: str) -> float:
    """Instructions per request of the server running ``framework``'s app in ``variant``."""
    port = bench_load._free_port()
    env = dict(os.environ, BENCH_VARIANT=variant, BENCH_OTLP_ENDPOINT=otlp, PYTHONPATH=str(ROOT))
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    with tempfile.TemporaryDirectory(prefix="bench-cg-") as tmp:
        proc = subprocess.Popen(
            [
                "valgrind",
                "--tool=callgrind",
                "--instr-atstart=no",
                "--trace-children=yes",
                f"--callgrind-out-file={tmp}/cg.%p",
                *bench_load._server_command(framework, port),
            ],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        stopped = False
        try:
            bench_load._wait(f"http://127.0.0.1:{port}/items/1", timeout=START_TIMEOUT)
            _requests(port, WARMUP)
            _settle(port)
            pids = _group_pids(proc.pid)
            _instrument("on", pids)
            _requests(port, requests)
            _instrument("off", pids)
        finally:
            stopped = _stop(proc)
        if not stopped:
            raise RuntimeError(f"{framework}/{variant}: server did not exit on SIGTERM")
        files = {int(p.name.split(".")[1]): p for p in Path(tmp).glob("cg.*")}
        missing = set(pids) - set(files)
        if missing:
            raise RuntimeError(f"{framework}/{variant}: no callgrind file for pids {missing}")
        return sum(_total(files[pid]) for pid in pids) / requests


def _ratio(numerator: float | None, denominator: float) -> str:
    return "-" if numerator is None else f"{numerator / denominator:.2f}x"


def _table(framework: str, results: dict[str, float]) -> None:
    bare = results.get("bare")
    print(f"\n### {framework}\n")
    print(
        "| variant | k instr/request | added over bare (k) | implied throughput vs bare "
        "| matched bare | implied throughput vs matched bare |"
    )
    print("|---|---:|---:|---:|---|---:|")
    for variant, value in results.items():
        matched = bench_load._matched_baseline(variant)
        added = "-" if bare is None or variant == "bare" else f"{(value - bare) / 1000:+.0f}"
        vs_bare = "-" if variant == "bare" else _ratio(bare, value)
        print(
            f"| {variant} | {value / 1000:.0f} | {added} | {vs_bare} | {matched or '-'} "
            f"| {_ratio(results.get(matched) if matched else None, value)} |",
            flush=True,
        )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    bench_load.add_selection(parser, bench_load.VARIANTS)
    parser.add_argument("--requests", type=int, default=1000, help="counted requests per variant")
    parser.add_argument(
        "--max-seconds", type=int, default=3 * 3600, help="bound on the whole run (default 3 h)"
    )
    args = parser.parse_args()
    for tool in ("valgrind", "callgrind_control", "callgrind_annotate"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} is needed: apt-get install valgrind")
    with bench_load.bounded_run(args.max_seconds) as otlp:
        print(
            f"{args.requests} counted requests per variant after {WARMUP} warm-up requests; "
            "server processes' instructions under callgrind\n"
            "implied throughput = baseline instructions per request / variant's; matched bare: "
            "bare_log for variants that log a line per request, bare for *_nolog* and bare_log"
        )
        for framework in args.frameworks:
            results = {v: count(framework, v, args.requests, otlp) for v in args.variants}
            _table(framework, results)


if __name__ == "__main__":
    main()
