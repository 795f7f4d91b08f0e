"""The span pipeline's per-scope state stays bounded whatever the instrumentation does."""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any

import pytest
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


@pytest.fixture
def tight_limits() -> Iterator[None]:
    """Lean spans under small OTEL_SPAN_*_LIMIT values; the SDK's defaults restored after."""
    from opentelemetry.sdk.trace import SpanLimits

    from obskit.tracing.server_span import set_limits

    set_limits(
        SpanLimits(
            max_span_attributes=3,
            max_events=1,
            max_links=1,
            max_event_attributes=1,
            max_link_attributes=1,
            max_attribute_length=4,
        )
    )
    try:
        yield
    finally:
        set_limits(SpanLimits())


@pytest.mark.usefixtures("tight_limits")
def test_lean_span_limits_cut_and_count_what_they_drop() -> None:
    """Counts, lengths and the dropped_*_count fields, as the SDK's span would encode them."""
    from opentelemetry.proto.trace.v1.trace_pb2 import Span as SpanProto
    from opentelemetry.trace import SpanKind

    from obskit.tracing._encode import encode_span
    from obskit.tracing.server_span import ServerSpan

    processor = CompactSpanProcessor(MemorySpanSink(), resource_attributes={})
    scope = InstrumentationScope("t")
    span = ServerSpan("s", _span(scope).context, None, SpanKind.SERVER, processor, scope)
    for key in "abcde":
        span.set_attribute(key, "long value")
    span.set_attributes({"f": 1, "a": ["long", "longer"]})
    # Past a limit the oldest event or link goes, as from the SDK's BoundedList.
    span.add_event("dropped")
    span.add_event("kept", {"x": "long value", "y": 2})
    span.add_link(_span(scope).context)
    span.add_link(_span(scope).context, {"p": 1, "q": 2})
    span.end()
    decoded = SpanProto.FromString(encode_span(span))
    values = {kv.key: kv.value for kv in decoded.attributes}
    assert ["a", "b", "c"] == list(values)
    assert ["long", "long"] == [v.string_value for v in values["a"].array_value.values]
    assert "long" == values["b"].string_value
    assert 3 == decoded.dropped_attributes_count
    assert (["kept"], 1) == ([e.name for e in decoded.events], decoded.dropped_events_count)
    # Events' and links' attributes are the SDK's BoundedAttributes: past the limit the oldest
    # goes, the newest stays.
    assert ("y", 2, 1) == (
        decoded.events[0].attributes[0].key,
        decoded.events[0].attributes[0].value.int_value,
        decoded.events[0].dropped_attributes_count,
    )
    assert (1, 1, 1) == (
        len(decoded.links),
        decoded.dropped_links_count,
        decoded.links[0].dropped_attributes_count,
    )
    processor.close(1.0)


def test_limits_apply_to_the_request_pipelines_own_attributes(
    request: pytest.FixtureRequest,
) -> None:
    """The SERVER span's attributes, written by the pipeline without set_attribute, are cut
    to the limits when the span ends."""
    from obskit.testing import capture
    from obskit.wsgi import ObskitMiddleware

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        start_response("200 OK", [])
        return [b"ok"]

    with capture() as cap:
        request.getfixturevalue("tight_limits")  # after configure(), which sets the provider's
        environ = {"REQUEST_METHOD": "GET", "PATH_INFO": "/a/long/path", "wsgi.url_scheme": "http"}
        list(ObskitMiddleware(app)(environ, lambda *a: None))
        (span,) = cap.spans()
    assert 3 == len(span.attributes)
    assert span.dropped_attributes_count > 0
    assert all(len(kv.value.string_value) <= 4 for kv in span.attributes)


# A bug this test found, since fixed (a review of 2026-11-25): the lean span took its start and
# end from the wall clock; a step back of that clock while a request ran (NTP, a VM resumed) gave
# a SERVER span ending 57 s before it started, while the duration histogram read 3 s
def test_a_wall_clock_step_during_a_request_leaves_its_span_duration_true(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A controlled wall clock that steps back a minute once the request has started: the span
    ends after it starts, by what the request took; its exception event lies between."""
    import time

    import obskit
    from obskit.testing import capture
    from obskit.tracing import server_span
    from obskit.wsgi import ObskitMiddleware
    from tests.wsgi_environ import environ

    stepped = {"by": 0}

    def wall_clock() -> int:
        return time.time_ns() - stepped["by"]

    @obskit.red(trace=True)
    def work() -> None:
        time.sleep(0.001)

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        stepped["by"] = 60 * 10**9  # the clock steps back a minute while the request runs
        time.sleep(0.01)
        work()  # a child span started after the step: inside its parent all the same
        raise RuntimeError("boom")

    monkeypatch.setattr(server_span, "_time_ns", wall_clock)
    with capture(service_name="clock") as cap:
        with pytest.raises(RuntimeError):
            ObskitMiddleware(app)(environ("/x"), lambda *a: None)
        child, span = cap.spans()
    duration = span.end_time_unix_nano - span.start_time_unix_nano
    assert 10**7 <= duration < 10**9
    (event,) = span.events
    assert span.start_time_unix_nano <= event.time_unix_nano <= span.end_time_unix_nano
    assert span.start_time_unix_nano <= child.start_time_unix_nano <= child.end_time_unix_nano
    assert child.end_time_unix_nano <= span.end_time_unix_nano
