"""Writing to prometheus_client children without the checks every call repeats.

``Counter.inc``, ``Gauge.inc`` and ``Histogram.observe`` check on every call that the object is
a child (not the labelled parent), and ``observe`` walks the bucket bounds in Python. A child
obskit got through its guard is a child, so hot paths (the HTTP pipeline, per request) take its
value objects once and write them directly: one locked add per counter, and for a histogram the
sum, a bucket found by ``bisect`` in C, and the exemplar. The exposition is unchanged: these are
the same value objects prometheus_client renders (single-process and multi-process alike), or,
for the HTTP pipeline's route series in-process, :class:`Cell` views that prometheus_client
renders the same way.

If prometheus_client's internals ever differ from what is expected, the public methods are used.
"""

from __future__ import annotations

import math
import os
import threading
import time
from bisect import bisect_left
from collections.abc import Callable
from typing import Any

from prometheus_client.samples import Exemplar
from prometheus_client.values import MutexValue

__all__ = ["Cell", "Cells", "Observer", "adder", "renew_values", "setter", "taking"]


def adder(child: Any) -> Callable[[float], None]:
    """``add(amount)`` for a counter or gauge child (negative amounts: gauges only)."""
    inc = getattr(getattr(child, "_value", None), "inc", None)
    if callable(inc) and not getattr(child, "_is_most_recent", False):
        return inc  # type: ignore[no-any-return]
    return child.inc  # type: ignore[no-any-return]


def setter(child: Any) -> Callable[[float], None]:
    """``set(value)`` for a gauge child."""
    value_set = getattr(getattr(child, "_value", None), "set", None)
    # A "mostrecent" multi-process gauge stamps each value with the time: its own set() does.
    if callable(value_set) and not getattr(child, "_is_most_recent", False):
        return value_set  # type: ignore[no-any-return]
    return child.set  # type: ignore[no-any-return]


def renew_values(metric: Any) -> None:
    """Give every series of a prometheus_client ``metric`` new value objects of the current
    ``values.ValueClass``, carrying their counts over.

    prometheus_client picks a series' value class when the series is made; switching to the
    multi-process class later (``configure(multiproc_dir=...)`` after a module declared and
    used its metrics) would leave those series in memory that the multi-process scrape never
    reads. Callables taken from the old objects (:func:`adder`, :class:`Observer`) go stale:
    the caller bumps ``_state.generation`` so the hot paths take new ones.
    """
    lock = getattr(metric, "_lock", None)
    if lock is None or not callable(getattr(metric, "_metric_init", None)):
        return
    with lock:
        children = list(getattr(metric, "_metrics", {}).values())
    if not getattr(metric, "_labelnames", ()):
        children = [metric]
    for child in children:
        old = {name: getattr(child, name, None) for name in ("_value", "_sum", "_count")}
        old_buckets = list(getattr(child, "_buckets", ()))
        child._metric_init()
        pairs = [(getattr(child, name), value) for name, value in old.items() if value is not None]
        pairs += zip(getattr(child, "_buckets", ()), old_buckets, strict=False)
        for new, previous in pairs:
            amount = previous.get()
            if amount:
                new.set(amount)


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


class Cells:
    """The values of several children in one list under one lock.

    The HTTP pipeline ends each request with four writes to one route's series (the status
    counter, the histogram's sum and bucket, the in-flight gauge). As prometheus_client values
    they are four locked calls; as slots of one ``Cells`` they are one locked update. The
    children's value objects are replaced by :class:`Cell` views of the slots (:meth:`take`), so
    prometheus_client renders them unchanged and every other writer of those children lands in
    the same slots. Only prometheus_client's in-process ``MutexValue`` is taken: multi-process
    values (files shared between workers) are left as they are.
    """

    __slots__ = ("lock", "values")

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.values: list[float] = []

    def take(self, holder: Any, key: Any) -> int | None:
        """The slot of the value ``holder.key`` (``holder[key]`` for a list): the slot it has
        if it is a :class:`Cell` of these cells, a new one if it is a plain ``MutexValue``
        (which is then replaced by a :class:`Cell`); None for anything else. Call with
        :data:`taking` held."""
        value = holder[key] if isinstance(holder, list) else getattr(holder, key, None)
        if type(value) is Cell:
            return value._index if value._cells is self else None
        if type(value) is not MutexValue:
            return None
        index = len(self.values)
        self.values.append(0.0)
        cell = Cell(self, index, value)
        if isinstance(holder, list):
            holder[key] = cell
        else:
            setattr(holder, key, cell)
        return index


class _Taking:
    """A lock (``with taking:``) that a forked child renews: held by another thread at the fork,
    it would be held for ever in the child. Taken only when a route's series is first made."""

    __slots__ = ("_lock",)

    def __init__(self) -> None:
        self._lock = threading.Lock()

    def __enter__(self) -> None:
        self._lock.acquire()

    def __exit__(self, *exc: object) -> None:
        self._lock.release()

    def renew(self) -> None:
        self._lock = threading.Lock()


#: Held while values are moved into :class:`Cells`, so that two series never take the same
#: child at once.
taking = _Taking()
os.register_at_fork(after_in_child=taking.renew)


class Cell:
    """Stands in for a child's ``MutexValue``: a slot of a :class:`Cells`, plus the replaced
    value, which a writer that fetched it before the swap may still add to; it is read back, not
    copied, so no such addition is lost. Exemplars stay on the replaced value."""

    __slots__ = ("_base", "_cells", "_index")

    def __init__(self, cells: Cells, index: int, base: Any) -> None:
        self._cells = cells
        self._index = index
        self._base = base

    def inc(self, amount: float) -> None:
        cells = self._cells
        with cells.lock:
            cells.values[self._index] += amount

    def set(self, value: float, timestamp: float | None = None) -> None:
        cells = self._cells
        with cells.lock:
            cells.values[self._index] = value
            self._base.set(0.0)

    def get(self) -> float:
        cells = self._cells
        with cells.lock:
            value = cells.values[self._index]
        return value + float(self._base.get())

    def set_exemplar(self, exemplar: Exemplar) -> None:
        self._base.set_exemplar(exemplar)

    def get_exemplar(self) -> Exemplar | None:
        exemplar: Exemplar | None = self._base.get_exemplar()
        return exemplar
