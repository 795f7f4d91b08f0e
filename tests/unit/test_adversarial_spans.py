"""Findings of a read-through review of sampling and span production (2026-11-25), each pinned by
a test: what a span obskit makes records and exports must be what the OpenTelemetry SDK's span
would, for the same calls, under the same sampler and limits.

Spans are captured with ``obskit.testing.capture()`` (the real span pipeline, encoded to OTLP
bytes and decoded back).
"""

from __future__ import annotations

import decimal
import enum
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from opentelemetry import context as otel_context
from opentelemetry import propagate
from opentelemetry import trace as trace_api
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1.trace_pb2 import Span as SpanProto
from opentelemetry.sdk.trace import SpanLimits, TracerProvider
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode, TraceFlags, TraceState

import obskit
from obskit.exporters.jsonl import MemorySpanSink
from obskit.testing import capture, samples
from obskit.tracing._encode import encode_span
from obskit.tracing.pipeline import CompactSpanProcessor
from obskit.tracing.sampling import RecordDropped
from obskit.tracing.server_span import ServerSpan, set_limits

TRACE_ID = "4bf92f3577b34da60000000000000001"
PARENT_ID = "00f067aa0ba902b7"


@obskit.red(trace=True)
def handle_message() -> int:
    return 1


# A bug this test found, since fixed: @obskit.red(trace=True) made no span under an extracted
# (remote) parent -- a consumer that attached its producer's traceparent -- because the remote
# parent "is not recording" (obskit/metrics/red.py new_span): the sampler was never asked, and
# under the default parent-based sampler every decorated span of a sampled trace was lost.
@pytest.mark.parametrize(
    ("sampler", "arg", "flags", "kept"),
    [
        ("parentbased_always_on", None, "01", True),
        ("parentbased_always_on", None, "00", False),
        ("parentbased_traceidratio", 0.0, "01", True),
        ("always_on", None, "00", True),
        ("ratelimited", 10.0, "00", True),
        ("always_off", None, "01", False),
    ],
)
def test_red_span_under_a_remote_parent_is_the_samplers_decision(
    sampler: str, arg: float | None, flags: str, kept: bool
) -> None:
    carrier = {"traceparent": f"00-{TRACE_ID}-{PARENT_ID}-{flags}"}
    with capture(sampler=sampler, sampler_arg=arg) as cap:
        token = otel_context.attach(propagate.extract(carrier))
        try:
            assert 1 == handle_message()
        finally:
            otel_context.detach(token)
        spans = cap.spans()
    expected = [(bytes.fromhex(TRACE_ID), bytes.fromhex(PARENT_ID))] if kept else []
    assert expected == [(s.trace_id, s.parent_span_id) for s in spans]


@pytest.mark.parametrize(
    ("sampler", "arg", "minted"),
    [
        ("parentbased_always_on", None, False),  # a stock sampler's drop: no span, as locally
        ("parentbased_traceidratio", 1.0, False),
        ("ratelimited", 10.0, True),  # asked through should_sample: the sampler's own span
    ],
)
def test_under_a_remote_unsampled_parent_a_dropped_red_span_is_not_made(
    sampler: str, arg: float | None, minted: bool
) -> None:
    """The call inside a consumer's unsampled trace runs under the producer's context itself,
    as a call inside this process's own unsampled trace does, and its RED metrics are
    recorded; a span is made (by the sampler, which may sample it) only where the sampler is
    not one whose decision obskit knows."""
    seen: list[tuple[int, bool]] = []

    @obskit.red(name="consume", trace=True)
    def consume() -> None:
        context = trace_api.get_current_span().get_span_context()
        seen.append((context.span_id, context.is_remote))

    carrier = {"traceparent": f"00-{TRACE_ID}-{PARENT_ID}-00"}
    with capture(sampler=sampler, sampler_arg=arg) as cap:
        token = otel_context.attach(propagate.extract(carrier))
        try:
            consume()
        finally:
            otel_context.detach(token)
        exported = cap.spans()
        calls = [
            v
            for labels, v in samples("function_calls_total")
            if labels["function"] == "consume" and labels["result"] == "ok"
        ]
    ((span_id, remote),) = seen
    assert minted == (span_id != int(PARENT_ID, 16))
    assert remote is not minted
    assert minted == bool(exported)  # ratelimited samples this new trace of its own
    assert [1.0] == calls


def test_red_span_inside_an_unsampled_local_trace_is_still_skipped() -> None:
    """The cheap path stays: a child of this process's own unsampled span is not created."""
    with capture(sampler="always_off") as cap:
        tracer = obskit.tracer_provider().get_tracer("tests")
        with tracer.start_as_current_span("unsampled root"):
            assert 1 == handle_message()
        assert [] == cap.spans()


# -- the lean span against the SDK's, call for call ---------------------------------------------


@contextmanager
def limits(**given: int) -> Iterator[SpanLimits]:
    """The same span limits for obskit's lean spans and for an SDK provider made with them."""
    chosen = SpanLimits(**given)
    set_limits(chosen)
    try:
        yield chosen
    finally:
        set_limits(SpanLimits())


def lean_and_sdk(chosen: SpanLimits, calls: Callable[[Any], None]) -> tuple[Any, Any]:
    """``calls`` made on a lean span and on an SDK span; both encoded by obskit and decoded."""
    processor = CompactSpanProcessor(MemorySpanSink(), resource_attributes={})
    scope = InstrumentationScope("t")
    context = SpanContext(1, 2, False, TraceFlags(TraceFlags.SAMPLED))
    lean = ServerSpan("s", context, None, SpanKind.SERVER, processor, scope)
    sdk = TracerProvider(span_limits=chosen).get_tracer("t").start_span("s")
    try:
        for span in (lean, sdk):
            calls(span)
            span.end()
        return tuple(SpanProto.FromString(encode_span(s)) for s in (lean, sdk))  # type: ignore[return-value]
    finally:
        processor.close(1.0)


def described(span: Any) -> dict[str, Any]:
    """What a decoded span says, ids and times aside."""
    return {
        "attributes": [(kv.key, kv.value) for kv in span.attributes],
        "dropped_attributes": span.dropped_attributes_count,
        "events": [
            (e.name, [(kv.key, kv.value) for kv in e.attributes], e.dropped_attributes_count)
            for e in span.events
        ],
        "links": [
            (
                link.span_id,
                link.trace_state,
                link.flags,
                [(kv.key, kv.value) for kv in link.attributes],
                link.dropped_attributes_count,
            )
            for link in span.links
        ],
        "status": (span.status.code, span.status.message),
    }


class Color(enum.Enum):
    RED = "red"


# A bug this test found, since fixed: the lean span (obskit/tracing/server_span.py) kept lists
# by reference (a later change to the list changed what was exported), kept an empty key, and
# dropped without counting the values the SDK's span keeps (bytes, None in a list, an Enum, a
# Decimal, a mapping), in events too.
def test_lean_span_attributes_are_the_sdks() -> None:
    tags = ["a"]

    def calls(span: Any) -> None:
        span.set_attribute("tags", tags)
        span.set_attribute("", "empty key")
        span.set_attribute("raw", b"\x00\x01")
        span.set_attribute("optional", ["a", None])
        span.set_attribute("color", Color.RED)
        span.set_attribute("price", decimal.Decimal("1.50"))
        span.set_attribute("map", {"k": "v"})
        span.set_attributes({"n": 1, "f": 0.5})
        span.add_event("e", {"raw": b"x", "list": [None, 1], "": 1})

    with limits() as chosen:
        lean, sdk = lean_and_sdk(chosen, calls)
        tags.append("changed")  # after the span ended: too late to matter to either
    assert described(sdk) == described(lean)
    assert ["a"] == [
        v.string_value for v in dict(described(lean)["attributes"])["tags"].array_value.values
    ]


# A bug this test found, since fixed: the lean span cut event and link attributes to the span's
# own value-length limit (OTEL_SPAN_ATTRIBUTE_VALUE_LENGTH_LIMIT); the SDK cuts them to the
# general one (OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT), so one setting cut every exception's stack
# trace to a few characters on obskit's spans only. Past their count limit, the oldest attribute
# of an event or link goes, as in the SDK's BoundedAttributes.
@pytest.mark.parametrize(
    "given",
    [
        {"max_span_attribute_length": 20},
        {"max_attribute_length": 20, "max_span_attribute_length": 1000},
        {"max_event_attributes": 1, "max_link_attributes": 1},
    ],
)
def test_lean_span_event_and_link_limits_are_the_sdks(given: dict[str, int]) -> None:
    def calls(span: Any) -> None:
        span.set_attribute("long", "x" * 100)
        try:
            raise ValueError("a message longer than twenty characters")
        except ValueError as exc:
            span.record_exception(exc)
        span.add_link(SpanContext(1, 3, True, TraceFlags(1)), {"p": "y" * 50, "q": 2})

    with limits(**given) as chosen:
        lean, sdk = lean_and_sdk(chosen, calls)
    lean_events, sdk_events = described(lean)["events"], described(sdk)["events"]
    # The stack traces name different lines of this test: compare their lengths and the rest.
    for events in (lean_events, sdk_events):
        for _, attrs, _ in events:
            for i, (key, value) in enumerate(attrs):
                if key == "exception.stacktrace":
                    attrs[i] = (key, min(len(value.string_value), 1000))
    assert described(sdk) | {"events": sdk_events} == described(lean) | {"events": lean_events}


# A bug this test found, since fixed: the lean span's set_status(UNSET) wiped an ERROR (the API
# spec: setting UNSET SHOULD be ignored), a link to an invalid context that carries attributes
# was dropped (the SDK keeps it), and links were encoded without their trace state and flags.
def test_lean_span_status_and_links_are_the_sdks() -> None:
    state = TraceState([("vendor", "v1")])

    def calls(span: Any) -> None:
        span.set_status(Status(StatusCode.ERROR, "payment declined"))
        span.set_status(Status(StatusCode.UNSET))
        span.set_status(StatusCode.UNSET)
        span.add_link(SpanContext(0, 0, False), {"reason": "no parent"})
        span.add_link(SpanContext(5, 6, True, TraceFlags(1), state))
        span.add_link(SpanContext(0, 0, False))  # says nothing: dropped by both

    with limits() as chosen:
        lean, sdk = lean_and_sdk(chosen, calls)
    assert described(sdk) == described(lean)
    assert (2, "payment declined") == described(lean)["status"]
    assert [("vendor=v1", 0x301)] == [(link.trace_state, link.flags) for link in lean.links][1:]


# -- keep_whole_trace: buffers per local root ---------------------------------------------------

NOT_SAMPLED = {"traceparent": f"00-{TRACE_ID}-{PARENT_ID}-00"}


def failing(span: Any) -> bool:
    return bool(span.status.status_code is StatusCode.ERROR)


def keeping_processor(**bounds: int) -> tuple[CompactSpanProcessor, MemorySpanSink, Any]:
    """A span processor with a keep-errors policy behind an SDK provider that records every
    span and samples none, as with ``keep_whole_trace`` and a head decision of drop."""
    sink = MemorySpanSink()
    processor = CompactSpanProcessor(sink, resource_attributes={}, keep=failing, **bounds)
    provider = TracerProvider(sampler=RecordDropped(ALWAYS_OFF))
    provider.add_span_processor(processor)
    return processor, sink, provider.get_tracer("t")


def exported(processor: CompactSpanProcessor, sink: MemorySpanSink) -> list[str]:
    processor.force_flush(5000)
    return [
        span.name
        for request in sink.requests
        for rs in ExportTraceServiceRequest.FromString(request).resource_spans
        for ss in rs.scope_spans
        for span in ss.spans
    ]


# A bug this test found, since fixed: keep_whole_trace buffered and decided per trace id
# (obskit/tracing/pipeline.py _hold): when two requests of one trace reached the service (a
# retry, two calls from one caller), a successful first one settled the trace as dropped and the
# failing second one lost its child spans, uncounted; run at the same time, the root that ended
# first took the other's finished children with its own decision.
@pytest.mark.parametrize("overlapping", [False, True])
def test_two_requests_of_one_trace_keep_or_drop_their_own_spans(overlapping: bool) -> None:
    processor, sink, tracer = keeping_processor()
    remote = propagate.extract(NOT_SAMPLED)
    try:
        ok = tracer.start_span("GET /ok", context=remote, kind=SpanKind.SERVER)
        with trace_api.use_span(ok):
            tracer.start_span("db ok").end()
        if not overlapping:
            ok.end()
        fail = tracer.start_span("GET /fail", context=remote, kind=SpanKind.SERVER)
        with trace_api.use_span(fail):
            tracer.start_span("db fail").end()
        if overlapping:
            ok.end()
        fail.set_status(StatusCode.ERROR)
        fail.end()
        assert ["db fail", "GET /fail"] == exported(processor, sink)
        assert {} == dict(processor._pending)
    finally:
        processor.close(1.0)


# A bug this test found, since fixed: a local root that ended with nothing buffered opened a
# buffer anyway -- with the buffer table full, evicting the oldest undecided trace, whose root
# then failed and was exported without its children.
def test_a_root_alone_evicts_no_other_traces_buffer() -> None:
    processor, sink, tracer = keeping_processor(max_pending_traces=2)
    try:
        roots = [tracer.start_span(f"root {name}") for name in "AB"]
        for root, name in zip(roots, "AB", strict=True):
            with trace_api.use_span(root):
                tracer.start_span(f"child {name}").end()
        tracer.start_span("root C, alone").end()
        roots[0].set_status(StatusCode.ERROR)
        for root in roots:
            root.end()
        assert ["child A", "root A"] == exported(processor, sink)
    finally:
        processor.close(1.0)


# A bug this test found, since fixed: a trace with max_spans_per_trace children buffered dropped
# its root -- the failing SERVER span that decides to keep it -- and was exported as orphans.
def test_a_full_trace_keeps_its_root() -> None:
    processor, sink, tracer = keeping_processor(max_spans_per_trace=3)
    try:
        root = tracer.start_span("GET /checkout", kind=SpanKind.SERVER)
        with trace_api.use_span(root):
            for index in range(4):  # one more than the bound: dropped and counted
                tracer.start_span(f"db {index}").end()
        root.set_status(StatusCode.ERROR)
        root.end()
        assert ["db 0", "db 1", "db 2", "GET /checkout"] == exported(processor, sink)
    finally:
        processor.close(1.0)


# A bug this test found, since fixed: the span pipeline keyed instrumentation scopes by name and
# version only and encoded neither ScopeSpans.schema_url nor the scope's attributes
# (obskit/tracing/pipeline.py _scope_by_value, _encode.encode_scope): two tracers of one library
# with different schema URLs were merged into one scope, and the URL was lost.
def test_scopes_keep_their_schema_url_and_attributes() -> None:
    schema = "https://opentelemetry.io/schemas/"
    with capture(sampler="always_on") as cap:
        provider = obskit.tracer_provider()
        provider.get_tracer("lib", "1.0", f"{schema}1.26.0", {"scope.attr": "x"}).start_span(
            "from-a"
        ).end()
        provider.get_tracer("lib", "1.0", f"{schema}1.11.0").start_span("from-b").end()
        provider.get_tracer("lib", "1.0").start_span("from-c").end()
        scopes = sorted(
            (
                ss.schema_url,
                ss.scope.name,
                ss.scope.version,
                [(kv.key, kv.value.string_value) for kv in ss.scope.attributes],
                [span.name for span in ss.spans],
            )
            for request in cap.requests()
            for rs in request.resource_spans
            for ss in rs.scope_spans
        )
    assert [
        ("", "lib", "1.0", [], ["from-c"]),
        (f"{schema}1.11.0", "lib", "1.0", [], ["from-b"]),
        (f"{schema}1.26.0", "lib", "1.0", [("scope.attr", "x")], ["from-a"]),
    ] == scopes
