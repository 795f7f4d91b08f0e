"""The JSON-lines file's spans: written as protobuf's generic ``MessageToDict`` would write them,
without its cost (it took about 120 us a span on the export thread, which the request threads
felt: a soak review measured p99 5-7x with the default file)."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

from benchmarks.bench_jsonl import message_to_dict_lines
from obskit.exporters.jsonl import request_to_json_lines
from obskit.testing import capture


def _reference(request: bytes) -> list[dict[str, Any]]:
    """The lines as obskit wrote them before: ``MessageToDict`` with the ids in hex."""
    return [json.loads(line) for line in message_to_dict_lines(request)]


def _same(request: bytes) -> None:
    lines = request_to_json_lines(request)
    expected = _reference(request)
    # The same documents, with keys in the same order (field number, as MessageToDict's).
    assert [json.dumps(doc, ensure_ascii=False) for doc in expected] == [
        json.dumps(json.loads(line), ensure_ascii=False) for line in lines
    ]


def _value(kind: str) -> AnyValue:
    values: dict[str, AnyValue] = {
        "string": AnyValue(string_value='caf\u00e9 \u2713 "q"\n'),
        "empty_string": AnyValue(string_value=""),
        "bool": AnyValue(bool_value=True),
        "false": AnyValue(bool_value=False),
        "int": AnyValue(int_value=-(2**63)),
        "zero": AnyValue(int_value=0),
        "double": AnyValue(double_value=0.1),
        "nan": AnyValue(double_value=math.nan),
        "inf": AnyValue(double_value=math.inf),
        "-inf": AnyValue(double_value=-math.inf),
        "bytes": AnyValue(bytes_value=b"\x00\xffab"),
        "unset": AnyValue(),
    }
    if kind == "array":
        value = AnyValue()
        value.array_value.values.extend([values["int"], values["string"], values["unset"]])
        return value
    if kind == "empty_array":
        value = AnyValue()
        value.array_value.SetInParent()
        return value
    if kind == "kvlist":
        value = AnyValue()
        value.kvlist_value.values.extend(
            [KeyValue(key="a", value=values["nan"]), KeyValue(key="b", value=_value("array"))]
        )
        return value
    return values[kind]


KINDS = ["string", "empty_string", "bool", "false", "int", "zero", "double", "nan", "inf"]
KINDS += ["-inf", "bytes", "unset", "array", "empty_array", "kvlist"]


def _every_field() -> bytes:
    span = Span(
        trace_id=bytes(range(16)),
        span_id=bytes(range(8)),
        trace_state="vendor=1,other=x",
        parent_span_id=bytes(range(8, 16)),
        flags=0x301,
        name="GET /items/{id}",
        kind=Span.SPAN_KIND_SERVER,
        start_time_unix_nano=2**63 + 1,
        end_time_unix_nano=2**64 - 1,
        dropped_attributes_count=3,
        dropped_events_count=4,
        dropped_links_count=5,
        status=Status(message="boom", code=Status.STATUS_CODE_ERROR),
    )
    span.attributes.extend(KeyValue(key=kind, value=_value(kind)) for kind in KINDS)
    span.attributes.append(KeyValue(key="no value"))
    span.attributes.append(KeyValue(value=_value("int")))  # no key
    event = span.events.add(time_unix_nano=7, name="exception", dropped_attributes_count=1)
    event.attributes.append(KeyValue(key="exception.type", value=_value("string")))
    span.events.add()  # an empty event
    link = span.links.add(trace_id=bytes(16), span_id=b"\x01" * 8, trace_state="a=b", flags=1)
    link.attributes.append(KeyValue(key="k", value=_value("bool")))
    link.dropped_attributes_count = 2
    span.links.add()
    bare = Span(name="x")  # no ids, no status, nothing set
    empty_status = Span(name="y", status=Status())
    request = ExportTraceServiceRequest()
    rs = request.resource_spans.add()
    rs.resource.attributes.append(KeyValue(key="service.name", value=_value("string")))
    scope_spans = rs.scope_spans.add()
    scope_spans.scope.name = "obskit"
    scope_spans.scope.version = "1"
    scope_spans.spans.extend([span, bare, empty_status])
    rs.scope_spans.add().spans.append(Span(name="unscoped"))
    return request.SerializeToString()


def test_every_field_and_value_kind_is_written_as_message_to_dict_writes_it() -> None:
    _same(_every_field())


@pytest.mark.parametrize("kind", KINDS)
def test_each_attribute_value_alone(kind: str) -> None:
    span = Span(name="s", trace_id=b"\x01" * 16, span_id=b"\x02" * 8)
    span.attributes.append(KeyValue(key="k", value=_value(kind)))
    request = ExportTraceServiceRequest()
    request.resource_spans.add().scope_spans.add().spans.append(span)
    _same(request.SerializeToString())


def test_obskits_own_spans_are_written_as_before() -> None:
    """What the span pipeline really encodes (a SERVER span with an exception and a link-free
    child, an INTERNAL span), compared in the exported requests themselves."""
    from opentelemetry import trace
    from opentelemetry.trace import Link, SpanKind

    with capture(service_name="jsonl", sampler="always_on") as cap:
        tracer = trace.get_tracer("test")
        with tracer.start_as_current_span("parent", kind=SpanKind.SERVER) as parent:
            parent.set_attribute("http.route", "/items/{id}")
            parent.set_attribute("numbers", [1, 2, 3])
            parent.add_event("note", {"ratio": 0.5, "ok": True})
            with tracer.start_as_current_span(
                "child", links=[Link(parent.get_span_context(), {"why": "batch"})]
            ):
                pass
            try:
                raise ValueError("caf\u00e9")
            except ValueError as exc:
                parent.record_exception(exc)
        exported = cap.requests()
    assert 2 == sum(
        len(ss.spans) for r in exported for rs in r.resource_spans for ss in rs.scope_spans
    )
    for request in exported:
        _same(request.SerializeToString())
