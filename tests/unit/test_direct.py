"""obskit.metrics._direct writes exactly what prometheus_client's own methods write."""

from __future__ import annotations

import math

import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import generate_latest

from obskit.metrics._direct import Cell, Cells, Observer, adder, setter, taking

VALUES = [0.0, 0.004, 0.005, 0.0051, 0.3, 1.0, 2.5, 7.0, 1e9, -1.0, math.inf, math.nan]


def _exposed(registry: CollectorRegistry) -> list[bytes]:
    """The exposition without ``_created`` lines (their timestamps differ)."""
    return [line for line in generate_latest(registry).splitlines() if b"_created" not in line]


def _pair(
    kind: type, **kwargs: object
) -> tuple[CollectorRegistry, object, CollectorRegistry, object]:
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    a = kind("m", "doc", ["l"], registry=ours, **kwargs)
    b = kind("m", "doc", ["l"], registry=theirs, **kwargs)
    return ours, a.labels("x"), theirs, b.labels("x")  # type: ignore[attr-defined]


def test_histogram_observer_matches_observe() -> None:
    ours, a, theirs, b = _pair(Histogram)
    observe = Observer(a)
    for value in VALUES:
        observe(value)
        b.observe(value)  # type: ignore[attr-defined]
    assert _exposed(ours) == _exposed(theirs)


def test_histogram_observer_keeps_exemplars() -> None:
    _, a, _, b = _pair(Histogram, buckets=(0.1, 1.0))
    Observer(a)(0.5, {"trace_id": "ab" * 16})
    b.observe(0.5, {"trace_id": "ab" * 16})  # type: ignore[attr-defined]
    bucket_a = a._buckets[1].get_exemplar()  # type: ignore[attr-defined]
    bucket_b = b._buckets[1].get_exemplar()  # type: ignore[attr-defined]
    assert (bucket_a.labels, bucket_a.value) == (bucket_b.labels, bucket_b.value)


@pytest.mark.parametrize("kind", [Counter, Gauge])
def test_adder_matches_inc(kind: type) -> None:
    ours, a, theirs, b = _pair(kind)
    add = adder(a)
    for value in (1, 2.5, 0):
        add(value)
        b.inc(value)  # type: ignore[attr-defined]
    if kind is Gauge:
        add(-2)
        b.dec(2)  # type: ignore[attr-defined]
    assert _exposed(ours) == _exposed(theirs)


def test_unexpected_internals_fall_back_to_public_methods() -> None:
    calls: list[tuple[float, object]] = []

    class Odd:
        def observe(self, amount: float, exemplar: object = None) -> None:
            calls.append((amount, exemplar))

        def inc(self, amount: float = 1) -> None:
            calls.append((amount, None))

    Observer(Odd())(0.25)
    adder(Odd())(3)
    assert calls == [(0.25, None), (3, None)]


def test_cells_render_what_the_values_they_replace_would() -> None:
    ours, a, theirs, b = _pair(Histogram, buckets=(0.1, 1.0))
    cells = Cells()
    with taking:
        assert cells.take(a, "_sum") == 0
        assert [cells.take(a._buckets, i) for i in range(3)] == [1, 2, 3]  # type: ignore[attr-defined]
        assert cells.take(a, "_sum") == 0  # taken already: the same slot
        assert Cells().take(a, "_sum") is None  # another group's cell is not taken twice
    observe = Observer(a)  # writes through the cells' slots, one lock each
    for value in VALUES:
        observe(value)
        b.observe(value)  # type: ignore[attr-defined]
    a.observe(0.5)  # type: ignore[attr-defined]
    b.observe(0.5)  # type: ignore[attr-defined]
    assert _exposed(ours) == _exposed(theirs)


def test_a_writer_of_the_replaced_value_loses_nothing() -> None:
    ours, a, theirs, b = _pair(Counter)
    stale = a._value.inc  # type: ignore[attr-defined]  # fetched before the swap
    cells = Cells()
    with taking:
        cells.take(a, "_value")
    stale(2)
    a.inc(3)  # type: ignore[attr-defined]
    b.inc(5)  # type: ignore[attr-defined]
    assert _exposed(ours) == _exposed(theirs)


def test_a_gauge_set_through_a_cell_replaces_both_parts() -> None:
    ours, a, theirs, b = _pair(Gauge)
    a.inc(4)  # type: ignore[attr-defined]
    with taking:
        Cells().take(a, "_value")
    a.inc(1)  # type: ignore[attr-defined]
    a.set(7)  # type: ignore[attr-defined]
    a.dec(2)  # type: ignore[attr-defined]
    b.set(5)  # type: ignore[attr-defined]
    assert _exposed(ours) == _exposed(theirs)


def test_only_in_process_values_are_taken() -> None:
    class Shared:  # stands for a multi-process (file-backed) value
        def inc(self, amount: float) -> None:
            pass

    holder = type("Holder", (), {})()
    holder._value = Shared()  # type: ignore[attr-defined]
    with taking:
        assert Cells().take(holder, "_value") is None
    assert isinstance(holder._value, Shared)  # type: ignore[attr-defined]
    assert not isinstance(holder._value, Cell)  # type: ignore[attr-defined]


def test_setter_matches_set() -> None:
    ours, a, theirs, b = _pair(Gauge)
    put = setter(a)
    for value in (3, 2.5, -1, 0):
        put(float(value))
        b.set(value)  # type: ignore[attr-defined]
    assert _exposed(ours) == _exposed(theirs)


def test_most_recent_gauges_keep_their_own_methods() -> None:
    _, a, _, _ = _pair(Gauge, multiprocess_mode="mostrecent")
    assert setter(a) == a.set  # type: ignore[attr-defined]  # stamps each value with the time
    with pytest.raises(RuntimeError):
        adder(a)(1)  # Gauge.inc refuses this mode
