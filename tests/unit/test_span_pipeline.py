"""The span pipeline's per-scope state stays bounded whatever the instrumentation does."""

from __future__ import annotations

import random

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import SpanContext, TraceFlags

from obskit.exporters.jsonl import MemorySpanSink
from obskit.tracing import pipeline
from obskit.tracing.pipeline import CompactSpanProcessor


def _span(scope: InstrumentationScope) -> ReadableSpan:
    context = SpanContext(
        random.getrandbits(128) or 1,
        random.getrandbits(64) or 1,
        is_remote=False,
        trace_flags=TraceFlags(TraceFlags.SAMPLED),
    )
    return ReadableSpan(
        name="s", context=context, instrumentation_scope=scope, start_time=1, end_time=2
    )


def test_a_new_scope_object_per_span_does_not_grow_the_scope_table() -> None:
    """OpenTelemetry SDKs before tracers were cached (obskit supports 1.30 on) make a new
    scope object on every get_tracer() call, and some code calls it for every request: scopes
    are told apart by name and version, not by object."""
    sink = MemorySpanSink()
    processor = CompactSpanProcessor(sink, resource_attributes={})
    for _ in range(3000):
        processor.on_end(_span(InstrumentationScope("per.request", "1.0")))
        processor.on_end(_span(InstrumentationScope("other")))
    assert processor.force_flush(10_000)
    assert 2 == len(processor._scope_bytes)
    assert len(processor._scope_objects) <= pipeline._MAX_SCOPE_OBJECTS
    assert len(processor._scope_index) <= pipeline._MAX_SCOPE_OBJECTS
    spans: dict[tuple[str, str], int] = {}
    for raw in sink.requests:
        request = ExportTraceServiceRequest.FromString(raw)
        for resource_spans in request.resource_spans:
            for scope_spans in resource_spans.scope_spans:
                key = (scope_spans.scope.name, scope_spans.scope.version)
                spans[key] = spans.get(key, 0) + len(scope_spans.spans)
    assert {("per.request", "1.0"): 3000, ("other", ""): 3000} == spans
    processor.close(1.0)


def test_lean_spans_keep_their_own_events_and_links() -> None:
    """A lean span starts with shared empty events and links; adding to one span leaves every
    other span's empty, and both kinds survive encoding."""
    from opentelemetry.proto.trace.v1.trace_pb2 import Span as SpanProto
    from opentelemetry.trace import SpanKind

    from obskit.tracing._encode import encode_span
    from obskit.tracing.server_span import ServerSpan

    processor = CompactSpanProcessor(MemorySpanSink(), resource_attributes={})
    scope = InstrumentationScope("t")
    busy = ServerSpan("busy", _span(scope).context, None, SpanKind.SERVER, processor, scope)
    quiet = ServerSpan("quiet", _span(scope).context, None, SpanKind.SERVER, processor, scope)
    linked = _span(scope).context
    busy.add_event("first", {"n": 1})
    busy.add_event("second")
    busy.add_link(linked, {"why": "batch"})
    busy.add_link(_span(scope).context)
    busy.end()
    quiet.end()
    decoded = SpanProto.FromString(encode_span(busy))
    assert ["first", "second"] == [event.name for event in decoded.events]
    assert 2 == len(decoded.links)
    assert linked.span_id.to_bytes(8, "big") == decoded.links[0].span_id
    assert "why" == decoded.links[0].attributes[0].key
    empty = SpanProto.FromString(encode_span(quiet))
    assert [] == list(empty.events)
    assert [] == list(empty.links)
    processor.close(1.0)
