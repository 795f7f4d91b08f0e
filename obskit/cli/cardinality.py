"""``obskit cardinality URL``: each metric's series count against its limit, from ``/metrics``.

The guard lives inside the running service, so the report reads what the service exposes: the
``obskit_cardinality_series`` and ``obskit_cardinality_limit`` self-metrics, the overflow
counter, and the number of series of every metric family on the page (obskit's or not).
"""

from __future__ import annotations

import argparse
import math
import time
import urllib.request
from typing import TextIO

from prometheus_client.parser import text_string_to_metric_families

__all__ = ["run"]


def _count(value: float) -> str:
    """A sample as a whole number; NaN and infinities as the exposition writes them."""
    return str(int(value)) if math.isfinite(value) else repr(value)


# A scrape of a service at its 1,000-series-per-metric limits is a few MB; a page past this is
# not one service's metrics (or never ends), and reading it whole would hold the memory.
_MAX_PAGE = 64 * 1024 * 1024


def _fetch(url: str, timeout: float) -> str:
    """The page at ``url``, read within ``timeout`` seconds in all: urlopen's own timeout bounds
    each socket operation only, so a URL that keeps streaming would hold the command."""
    deadline = time.monotonic() + timeout
    chunks: list[bytes] = []
    size = 0
    with urllib.request.urlopen(url, timeout=timeout) as response:
        while True:
            # read1: what has arrived, so the deadline is checked while a slow page trickles in
            chunk = response.read1(65536)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
            if size > _MAX_PAGE:
                raise ValueError(f"page larger than {_MAX_PAGE // (1024 * 1024)} MiB")
            if time.monotonic() > deadline:
                raise TimeoutError(f"page not read within {timeout:g} s")
    return b"".join(chunks).decode("utf-8", "replace")


def run(args: argparse.Namespace, out: TextIO) -> int:
    """Print the cardinality report; 1 if the page cannot be read, 0 otherwise."""
    try:
        text = _fetch(args.url, args.timeout)
    except (OSError, ValueError) as exc:
        out.write(f"cannot read {args.url}: {exc}\n")
        return 1
    series: dict[str, int] = {}
    limits: dict[str, float] = {}
    guarded: dict[str, float] = {}
    overflow: dict[str, float] = {}
    try:
        for family in text_string_to_metric_families(text):
            series[family.name] = len(
                {(s.name, tuple(sorted(s.labels.items()))) for s in family.samples}
            )
            for sample in family.samples:
                metric = sample.labels.get("metric")
                if metric is None:
                    continue
                if sample.name == "obskit_cardinality_limit":
                    limits[metric] = sample.value
                elif sample.name == "obskit_cardinality_series":
                    guarded[metric] = sample.value
                elif sample.name == "obskit_cardinality_overflow_total":
                    overflow[metric] = sample.value
    except ValueError as exc:  # not a metrics page (an HTML error page, a login form)
        out.write(f"{args.url} is not a Prometheus metrics page: {exc}\n")
        return 1
    out.write(f"{'metric':48} {'series':>8} {'limit':>8} {'use':>6} {'folded':>8}\n")

    def share(metric: str) -> float:
        limit = limits.get(metric, 0.0)
        ratio = guarded[metric] / limit if limit and math.isfinite(limit) else 0.0
        return ratio if math.isfinite(ratio) else 0.0

    for metric in sorted(guarded, key=lambda m: -share(m)):
        limit = limits.get(metric, 0.0)
        use = f"{share(metric):.0%}" if limit and math.isfinite(limit) else "-"
        folded = overflow.get(metric, 0.0)
        flag = "  <- over limit, folding" if folded else ""
        out.write(
            f"{metric:48} {_count(guarded[metric]):>8} {_count(limit):>8} {use:>6} "
            f"{_count(folded):>8}{flag}\n"
        )
    others = {k: v for k, v in series.items() if k not in guarded and not k.startswith("obskit_")}
    if others:
        out.write("\nunguarded families on the page (series incl. buckets):\n")
        for name, count in sorted(others.items(), key=lambda kv: -kv[1])[: args.top]:
            out.write(f"  {name:46} {count:>8}\n")
    return 0
