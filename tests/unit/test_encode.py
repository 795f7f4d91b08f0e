"""obskit's hand-written OTLP span encoder against the protobuf library's own decoding."""

from __future__ import annotations

from collections.abc import Iterator

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


@pytest.fixture
def fresh_cache() -> Iterator[None]:
    """An empty attribute cache for the test; the process' own is put back after it."""
    from obskit.tracing import _encode

    saved = dict(_encode._kv_cache), dict(_encode._kv_counts)
    _encode._kv_cache.clear()
    _encode._kv_counts.clear()
    try:
        yield
    finally:
        _encode._kv_cache.clear()
        _encode._kv_counts.clear()
        _encode._kv_cache.update(saved[0])
        _encode._kv_counts.update(saved[1])


@pytest.mark.usefixtures("fresh_cache")
def test_the_value_cache_stays_bounded_and_keeps_the_repeating_attributes() -> None:
    from obskit.tracing import _encode

    tracer = TracerProvider().get_tracer("t")
    # 2,000 distinct paths (an unbounded attribute) next to attributes that repeat.
    for n in range(2000):
        span = tracer.start_span("s", attributes={"url.path": f"/u/{n}", "http.route": "/u/{n}"})
        span.end()
        assert {"url.path": f"/u/{n}", "http.route": "/u/{n}"} == _decoded_attributes(span)
    paths = sum(1 for key, _ in _encode._kv_cache if key == "url.path")
    assert paths == _encode._VALUE_CACHE_MAX
    assert _encode._kv_counts["url.path"] == _encode._VALUE_CACHE_MAX
    assert ("http.route", "/u/{n}") in _encode._kv_cache
    # Long values are encoded, not kept; the whole cache stays under its bound.
    agent = "a" * (_encode._TEXT_CACHE_MAX + 1)
    span = tracer.start_span("s", attributes={"user_agent.original": agent})
    span.end()
    assert {"user_agent.original": agent} == _decoded_attributes(span)
    assert ("user_agent.original", agent) not in _encode._kv_cache
    # 40 keys x 256 values each would be 10,240 entries, past the overall bound.
    for key in range(40):
        for n in range(_encode._VALUE_CACHE_MAX):
            _encode._span_attribute(f"bound.k{key}", n)
    assert len(_encode._kv_cache) == _encode._CACHE_MAX
    # Nor are long span names kept.
    long_name = "n" * (_encode._TEXT_CACHE_MAX + 1)
    span = tracer.start_span(long_name)
    span.end()
    assert long_name == SpanProto.FromString(encode_span(span)).name
    assert long_name not in _encode._name_cache
    # A float equal to a cached int is looked up as what it is.
    span = tracer.start_span("s", attributes={"http.response.status_code": 200})
    span.end()
    span = tracer.start_span("s", attributes={"http.response.status_code": 200.0})
    span.end()
    decoded = _decoded_attributes(span)["http.response.status_code"]
    assert decoded == 200.0
    assert isinstance(decoded, float)
