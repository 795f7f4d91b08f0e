"""``obskit cardinality URL``: each metric's series count against its limit, from ``/metrics``.

The guard lives inside the running service, so the report reads what the service exposes: the
``obskit_cardinality_series`` and ``obskit_cardinality_limit`` self-metrics, the overflow
counter, and the number of series of every metric family on the page (obskit's or not).
"""

from __future__ import annotations

import argparse
import math
import urllib.request
from typing import TextIO

from prometheus_client.parser import text_string_to_metric_families

__all__ = ["run"]


def _count(value: float) -> str:
    """A sample as a whole number; NaN and infinities as the exposition writes them."""
    return str(int(value)) if math.isfinite(value) else repr(value)


def run(args: argparse.Namespace, out: TextIO) -> int:
    """Print the cardinality report; 1 if the page cannot be read, 0 otherwise."""
    try:
        with urllib.request.urlopen(args.url, timeout=args.timeout) as response:
            text = response.read().decode("utf-8", "replace")
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
