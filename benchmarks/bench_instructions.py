"""Instructions per request, counted by valgrind's callgrind: a repeatable cost measure.

Wall-clock figures on a shared VM move by 10-25 % between runs; callgrind counts the machine
instructions the process executes, which do not depend on what else the machine is doing. Each
variant of ``bench_http.py``'s in-process apps runs in its own process under
``valgrind --tool=callgrind --instr-atstart=no``; counting is switched on (``callgrind_control``)
only around the timed requests, after imports and warm-up. Instructions are not time (caches,
system calls and the export thread's waits are not weighed), but a change that removes work
shows up here at once and reproducibly.

Run: ``python benchmarks/bench_instructions.py [--frameworks ...] [--variants ...]
[--requests N]`` (needs Debian's ``valgrind``; about 15 s per variant).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import bench_http  # noqa: E402  (a sibling script, not a package module)

VARIANTS = (
    "bare",
    "bare_log",
    "obskit_nolog_1pct",
    "obskit_nolog",
    "obskit_1pct",
    "obskit",
)


def worker(framework: str, variant: str, requests: int) -> None:
    """Build the app, warm it up, and count instructions around ``requests`` requests."""
    app, run = bench_http.build(framework, variant)
    run(app, 200)
    pid = str(os.getpid())
    subprocess.run(["callgrind_control", "-i", "on", pid], capture_output=True, check=False)
    run(app, requests)  # its own warm-up too: bench_http.served(requests) in all
    subprocess.run(["callgrind_control", "-i", "off", pid], capture_output=True, check=False)


def count(framework: str, variant: str, requests: int) -> float:
    """Instructions per request of one variant."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "callgrind.out"
        subprocess.run(
            [
                "valgrind",
                "--tool=callgrind",
                "--instr-atstart=no",
                f"--callgrind-out-file={out}",
                *bench_http.worker_command(__file__, framework, variant, requests),
            ],
            capture_output=True,
            check=True,
            timeout=900,
        )
        summary = subprocess.run(
            ["callgrind_annotate", str(out)], capture_output=True, text=True, check=True
        ).stdout
    match = re.search(r"([\d,]+)\s+\(100\.0%\)\s+PROGRAM TOTALS", summary) or re.search(
        r"([\d,]+)\s+PROGRAM TOTALS", summary
    )
    if match is None:
        raise SystemExit(f"no totals from callgrind for {framework}/{variant}")
    return int(match.group(1).replace(",", "")) / bench_http.served(requests)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--frameworks", nargs="+", default=["fastapi", "flask", "django"])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS))
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--worker", nargs=2, metavar=("FRAMEWORK", "VARIANT"))
    args = parser.parse_args()
    if args.worker:
        worker(args.worker[0], args.worker[1], args.requests)
        return
    if shutil.which("valgrind") is None:
        raise SystemExit("valgrind is needed: apt-get install valgrind")
    print("| framework | " + " | ".join(args.variants) + " |")
    print("|---|" + "---:|" * len(args.variants))
    for framework in args.frameworks:
        results = {v: count(framework, v, args.requests) for v in args.variants}
        bare = results.get("bare")
        cells = []
        for variant in args.variants:
            value = results[variant] / 1000
            added = "" if bare is None or variant == "bare" else f" (+{value - bare / 1000:.0f})"
            cells.append(f"{value:.0f}k{added}")
        print(f"| {framework} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
