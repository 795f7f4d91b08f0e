"""Python opcodes per request, counted with ``sys.settrace``: a cost measure that takes seconds.

What obskit adds to a request is Python code run once per request, between the framework's own,
and under a real server each added opcode of such straight-line code costs about the same
whatever it does: on the quiet host of 2026-11-24 the servers' CPU time per request
(``bench_latency.py``) rose by 36-46 ns per opcode this script counts in-process for every
variant that adds obskit or a log line to FastAPI or Flask, 29-38 ns for Django
(docs/benchmarks.md, "Opcodes per request"). Where a variant's opcodes go is therefore a fair
map of where its server cost goes, and a count does not move with the host's load. Not a law,
though: the repeated iterations of a loop cost far less than that (234 opcodes of the span
encoder's per-attribute loop moved into C saved no CPU time at all), so check a cut that
removes loop iterations with ``bench_latency.py``'s CPU column.

Each variant of ``bench_http.py``'s in-process apps runs in its own process; after a warm-up,
opcode events are counted on the request thread around ``--requests`` timed requests (plus the
runner's own warm-up of up to 500, which are counted too: the count is per request either way).
Not counted: work in C (``dict()``, regular expressions, encoders) and the span export thread
(which joins bytes in batches). At 1 % sampling the count moves by a few opcodes per request
with which requests are sampled.

Run: ``python benchmarks/bench_opcodes.py [--frameworks ...] [--variants ...] [--requests N]
[--functions VARIANT]`` (``--functions`` also prints, per framework, obskit's functions by
opcodes per request in that variant).
"""

from __future__ import annotations

import argparse
import collections
import json
import subprocess
import sys
from pathlib import Path
from types import FrameType
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import bench_http  # noqa: E402  (sibling scripts, not package modules)
import bench_load  # noqa: E402
from bench_instructions import VARIANTS  # noqa: E402  (the same variants, so the tables align)


def worker(framework: str, variant: str, requests: int) -> None:
    """Build the app, warm it up, count opcodes around ``requests`` requests; print JSON."""
    app, run = bench_http.build(framework, variant)
    run(app, 300)
    counts: collections.Counter[tuple[str, str]] = collections.Counter()

    def trace(frame: FrameType, event: str, arg: Any) -> Any:
        frame.f_trace_opcodes = True
        frame.f_trace_lines = False
        if event == "opcode":
            code = frame.f_code
            counts[(code.co_filename, code.co_name)] += 1
        return trace

    # Python 3.12 (PEP 669's settrace) emits opcode events only if f_trace_opcodes was set
    # before settrace() was called (gh-114480); 3.10, 3.11 and 3.13 need no such step.
    here = sys._getframe()
    here.f_trace_opcodes = True
    sys.settrace(trace)
    try:
        run(app, requests)
    finally:
        sys.settrace(None)
        here.f_trace_opcodes = False
    served = bench_http.served(requests)  # the runner's warm-up ran under the trace too
    total = sum(counts.values()) / served
    package = str(Path(__import__("obskit").__file__).parent)
    own = {
        f"{Path(file).relative_to(package).as_posix()}:{name}": n / served
        for (file, name), n in counts.items()
        if file.startswith(package)
    }
    print(json.dumps({"total": total, "obskit": own}))


def count(framework: str, variant: str, requests: int) -> dict[str, Any]:
    """Opcodes per request of one variant, in a fresh process."""
    out = subprocess.run(
        bench_http.worker_command(__file__, framework, variant, requests),
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    if out.returncode != 0:
        sys.stderr.write(out.stderr)
        raise SystemExit(f"worker {framework}/{variant} failed")
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--frameworks", nargs="+", default=["fastapi", "flask", "django"])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS))
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--functions", metavar="VARIANT")
    parser.add_argument("--worker", nargs=2, metavar=("FRAMEWORK", "VARIANT"))
    args = parser.parse_args()
    if args.worker:
        worker(args.worker[0], args.worker[1], args.requests)
        return
    variants = list(args.variants)
    if args.functions and args.functions not in variants:
        variants.append(args.functions)
    print("Python opcodes per request on the request thread (added over bare)\n")
    print("| framework | " + " | ".join(variants) + " |")
    print("|---|" + "---:|" * len(variants))
    details: dict[str, dict[str, float]] = {}
    shares: dict[str, str | None] = {}
    for framework in args.frameworks:
        results = {v: count(framework, v, args.requests) for v in variants}
        bare = results["bare"]["total"] if "bare" in results else None
        cells = []
        for variant in variants:
            value = results[variant]["total"]
            added = "" if bare is None or variant == "bare" else f" (+{value - bare:,.0f})"
            cells.append(f"{value:,.0f}{added}")
        print(f"| {framework} | " + " | ".join(cells) + " |", flush=True)
        shares[framework] = bench_load.issue6_shares({v: r["total"] for v, r in results.items()})
        if args.functions:
            details[framework] = results[args.functions]["obskit"]
    if any(shares.values()):
        print("\nIssue #6: an unsampled request's added cost as a share of a sampled one's\n")
        for framework, share in shares.items():
            if share:
                print(f"- {framework}: {share}")
    for framework, functions in details.items():
        print(f"\n{framework}, {args.functions}: obskit's functions by opcodes per request\n")
        print(f"| function | opcodes (of {sum(functions.values()):,.0f}) |")
        print("|---|---:|")
        for name, value in sorted(functions.items(), key=lambda item: -item[1]):
            if value >= 1:
                print(f"| `{name}` | {value:,.0f} |")


if __name__ == "__main__":
    main()
