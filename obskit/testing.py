"""Test helpers for applications that use obskit (and for obskit's own tests).

``capture()`` configures obskit with an in-memory span sink that receives the same encoded OTLP
bytes a collector would, and decodes them into ``opentelemetry.proto`` ``Span`` messages::

    with obskit.testing.capture() as cap:
        handle_request()
    assert cap.spans()[0].name == "GET /items/{item_id}"
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from prometheus_client import CollectorRegistry

from obskit import _runtime, _state
from obskit.config import load_config
from obskit.exporters.jsonl import MemorySpanSink

__all__ = ["Capture", "capture", "get_sample_value", "reset", "samples"]


def reset() -> None:
    """Shut obskit down and start its state afresh (:mod:`obskit._state`): a fresh registry
    (metrics declared earlier rebound to it, zeroed), no runtime, no warnings given."""
    _runtime.shutdown(timeout=1.0)
    with _state.lock:
        _state.runtime = None
        _state.registry = CollectorRegistry(auto_describe=True)
        _state.self_metrics = None
        _state.warned.clear()
        _state.generation += 1
        _state.pinned_sink = None
        _state.app_options = {}
        _state.adapter_options = {}
        from obskit.metrics.instruments import rebind_all

        # Metrics declared at import time (module-level business metrics, decorators) keep
        # working, with zeroed values, in the fresh registry.
        rebind_all()


def get_sample_value(name: str, labels: dict[str, str] | None = None) -> float | None:
    """The current value of one sample in obskit's registry (prometheus_client's helper), as a
    scrape would read it now (the series of resources freed since are gone)."""
    from obskit.metrics.exposition import before_collection

    before_collection()
    return _state.registry.get_sample_value(name, labels or {})


def samples(name: str) -> list[tuple[dict[str, str], float]]:
    """Every ``(labels, value)`` of the sample ``name`` in obskit's registry (all its series),
    as a scrape would read them now."""
    from obskit.metrics.exposition import before_collection

    before_collection()
    return [
        (dict(sample.labels), sample.value)
        for family in _state.registry.collect()
        for sample in family.samples
        if sample.name == name
    ]


class Capture:
    """Spans exported while capturing, decoded from the real OTLP protobuf bytes."""

    def __init__(self, sink: MemorySpanSink) -> None:
        self.sink = sink

    def requests(self) -> list[Any]:
        """Every ``ExportTraceServiceRequest`` exported so far (after a flush)."""
        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
            ExportTraceServiceRequest,
        )

        _runtime.force_flush()
        return [ExportTraceServiceRequest.FromString(r) for r in list(self.sink.requests)]

    def spans(self) -> list[Any]:
        """Every exported ``Span`` message, in export order."""
        return [
            span
            for request in self.requests()
            for rs in request.resource_spans
            for ss in rs.scope_spans
            for span in ss.spans
        ]

    def clear(self) -> None:
        """Forget what was captured."""
        _runtime.force_flush()
        self.sink.requests.clear()


@contextmanager
def capture(**options: Any) -> Iterator[Capture]:
    """Configure obskit with ``options`` and an in-memory span sink for the duration."""
    sink = MemorySpanSink()
    options.setdefault("bsp_schedule_delay", 0.05)
    _state.pinned_sink = sink
    try:
        _runtime._configure(load_config(**options), sink=sink)
        _state.app_options = dict(options)
        _state.adapter_options = {}
        yield Capture(sink)
    finally:
        _state.pinned_sink = None
        _runtime.shutdown(timeout=1.0)  # which forgets the options too
