"""Writing to prometheus_client children without the checks every call repeats.

``Counter.inc``, ``Gauge.inc`` and ``Histogram.observe`` check on every call that the object is
a child (not the labelled parent), and ``observe`` walks the bucket bounds in Python. A child
obskit got through its guard is a child, so hot paths (the HTTP pipeline, per request) take its
value objects once and write them directly: one locked add per counter, and for a histogram the
sum, a bucket found by ``bisect`` in C, and the exemplar. The exposition is unchanged: these are
the same value objects prometheus_client renders (single-process and multi-process alike).

If prometheus_client's internals ever differ from what is expected, the public methods are used.
"""

from __future__ import annotations

import math
import time
from bisect import bisect_left
from collections.abc import Callable
from typing import Any

from prometheus_client.samples import Exemplar

__all__ = ["Observer", "adder"]


def adder(child: Any) -> Callable[[float], None]:
    """``add(amount)`` for a counter or gauge child (negative amounts: gauges only)."""
    inc = getattr(getattr(child, "_value", None), "inc", None)
    if callable(inc):
        return inc  # type: ignore[no-any-return]
    return child.inc  # type: ignore[no-any-return]


class Observer:
    """``observe(amount, exemplar=None)`` for a histogram child."""

    __slots__ = ("_bounds", "_buckets", "_fallback", "_sum")

    def __init__(self, child: Any) -> None:
        self._fallback: Callable[..., None] | None = None
        try:
            bounds = tuple(float(b) for b in child._upper_bounds)
            buckets = tuple(child._buckets)
            add_sum = child._sum.inc
            if len(bounds) != len(buckets) or bounds[-1] != math.inf:
                raise ValueError("unexpected histogram layout")
            if not all(callable(getattr(b, "inc", None)) for b in buckets):
                raise ValueError("unexpected bucket values")
        except Exception:
            self._fallback = child.observe
            return
        self._bounds = bounds
        self._buckets = buckets
        self._sum = add_sum

    def __call__(self, amount: float, exemplar: dict[str, str] | None = None) -> None:
        fallback = self._fallback
        if fallback is not None:
            fallback(amount, exemplar)
            return
        self._sum(amount)
        if amount != amount:  # NaN falls in no bucket, as in prometheus_client
            return
        # The first bound >= amount: the bucket prometheus_client's loop would pick.
        bucket = self._buckets[bisect_left(self._bounds, amount)]
        bucket.inc(1)
        if exemplar:
            bucket.set_exemplar(Exemplar(exemplar, amount, time.time()))
