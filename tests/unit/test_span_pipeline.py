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
