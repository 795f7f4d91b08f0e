"""obskit's hand-written OTLP span encoder against the protobuf library's own decoding."""

from __future__ import annotations

import pytest
from google.protobuf.internal.encoder import _VarintBytes  # type: ignore[attr-defined]
from opentelemetry.proto.trace.v1.trace_pb2 import Span as SpanProto
from opentelemetry.sdk.trace import TracerProvider

from obskit.tracing._encode import encode_span, varint


@pytest.mark.parametrize(
    "value", [0, 1, 127, 128, 200, 8000, 16383, 16384, 2**21, 2**63 - 1, -1, -(2**63)]
)
def test_varint_is_protobufs(value: int) -> None:
    expected = _VarintBytes(value if value >= 0 else value + (1 << 64))
    assert expected == varint(value)


def _decoded_attributes(span: object) -> dict[str, object]:
    message = SpanProto.FromString(encode_span(span))
    out: dict[str, object] = {}
    for kv in message.attributes:
        kind = kv.value.WhichOneof("value")
        out[kv.key] = getattr(kv.value, kind)
    return out


def test_int_and_str_attributes_survive_the_value_cache() -> None:
    tracer = TracerProvider().get_tracer("t")
    values: dict[str, object] = {
        "server.port": 8000,
        "http.response.status_code": 200,
        "count": 1,
        "flag": True,  # a bool equals 1 but is a bool: never confused with the cached int
        "big": 2**40,
        "negative": -5,
        "name": "200",  # a string that looks like a cached int
    }
    for _ in range(3):  # the first pass fills the caches, the next ones read them
        span = tracer.start_span("s", attributes=values)
        span.end()
        assert values == _decoded_attributes(span)
    span = tracer.start_span("s", attributes={"count": True, "flag": 1})
    span.end()
    assert {"count": True, "flag": 1} == _decoded_attributes(span)
    assert isinstance(_decoded_attributes(span)["count"], bool)
