"""Hand-written OTLP protobuf encoding of finished spans.

Why not the generated protobuf classes: a finished span must leave the request thread as one
``bytes`` object. ``bytes`` is not a GC container, so a queue of encoded spans adds nothing for the
cyclic garbage collector to traverse or promote -- the cause of the 20-34 ms full collections that
the default batching processor puts into the p99 (issue #11). Building the protobuf message objects
would allocate a graph per span; writing the wire format directly allocates a few short-lived
strings and one ``bytes``. The output is byte-for-byte valid ``opentelemetry.proto.trace.v1.Span``
(tests decode it with opentelemetry-proto).

Field numbers: opentelemetry/proto/trace/v1/trace.proto and common/v1/common.proto.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

_pack_d = struct.Struct("<d").pack
_pack_q = struct.Struct("<Q").pack
_pack_i = struct.Struct("<I").pack

# Pre-computed tags: (field_number << 3) | wire_type. encode_span writes the fixed-size fields
# as literals of tag and length together: trace_id (1, LEN 16: b"\x0a\x10"), span_id (2, LEN
# 8: b"\x12\x08"), parent_span_id (4, LEN 8: b"\x22\x08"), start/end time (7 and 8, I64:
# 0x39, 0x41).
_T_SPAN_TRACE_STATE = b"\x1a"  # 3, LEN
_T_SPAN_NAME = b"\x2a"  # 5, LEN
_T_SPAN_KIND = b"\x30"  # 6, VARINT
_T_SPAN_ATTR = b"\x4a"  # 9, LEN
_T_SPAN_DROPPED_ATTRS = b"\x50"  # 10, VARINT
_T_SPAN_EVENT = b"\x5a"  # 11, LEN
_T_SPAN_LINK = b"\x6a"  # 13, LEN
_T_SPAN_STATUS = b"\x7a"  # 15, LEN
_T_SPAN_FLAGS = b"\x85\x01"  # 16, I32

_VARINT_CACHE = [bytes([i]) for i in range(128)]


def varint(value: int) -> bytes:
    """Unsigned LEB128; negative int64 values use their two's complement as protobuf does."""
    if 0 <= value < 128:
        return _VARINT_CACHE[value]
    if 0 < value < 16384:  # two bytes (ports, status codes, most lengths): no loop
        return bytes(((value & 0x7F) | 0x80, value >> 7))
    if value < 0:
        value += 1 << 64
    out = bytearray()
    while value > 127:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _len(tag: bytes, payload: bytes) -> bytes:
    n = len(payload)
    return tag + (_VARINT_CACHE[n] if n < 128 else varint(n)) + payload


def _str(tag: bytes, value: str) -> bytes:
    return _len(tag, value.encode("utf-8", "replace"))


#: How deep arrays and maps nest in one attribute value. Each level is two protobuf messages,
#: and decoders refuse a message nested past a limit (100 in protobuf's own runtimes): a value
#: nested deeper would make the Collector (or the JSON-lines writer) refuse the whole batch, and a
#: list that contains itself would never end. What is deeper is written as this marker.
MAX_VALUE_DEPTH = 16
_TOO_DEEP = _str(b"\x0a", f"[nested deeper than {MAX_VALUE_DEPTH} levels]")


def any_value(value: Any, depth: int = 0) -> bytes:
    """Encode an AnyValue message body."""
    # bool is checked before int: it is an int subclass.
    if isinstance(value, str):
        return _str(b"\x0a", value)
    if isinstance(value, bool):
        return b"\x10\x01" if value else b"\x10\x00"
    if isinstance(value, int):
        if -(1 << 63) <= value < (1 << 63):
            return b"\x18" + varint(value)
        return _str(b"\x0a", str(value))
    if isinstance(value, float):
        return b"\x21" + _pack_d(value)
    if isinstance(value, bytes):
        return _len(b"\x3a", value)
    if isinstance(value, (Sequence, Mapping)) and depth >= MAX_VALUE_DEPTH:
        return _TOO_DEEP
    if isinstance(value, Sequence):
        return _len(b"\x2a", b"".join(_len(b"\x0a", any_value(v, depth + 1)) for v in value))
    if isinstance(value, Mapping):
        return _len(
            b"\x32",
            b"".join(_len(b"\x0a", key_value(str(k), v, depth + 1)) for k, v in value.items()),
        )
    if value is None:  # a None inside an array: an empty AnyValue, as the SDK's encoder writes
        return b""
    return _str(b"\x0a", str(value))


def key_value(key: str, value: Any, depth: int = 0) -> bytes:
    """Encode a KeyValue message body."""
    return _str(b"\x0a", key) + _len(b"\x12", any_value(value, depth))


# Encoded span attributes, cached by (key, value): most attributes repeat from span to span
# (method, route, scheme, host, port, status code, user agent), and a (key, value) pair is the
# tuple ``dict.items()`` yields, so a hit is one lookup instead of five calls and three
# allocations. Only exact str and int values are cached or looked up: a bool or a float equal to
# a cached int (True == 1, 200.0 == 200) must never hit its entry. Bounded in keys, in values per
# key (so unbounded values such as url.path cannot crowd the others out), in entries overall and
# in the length of what is cached (a few MB at most); past the bounds attributes are simply
# encoded each time.
_KEY_CACHE_MAX = 1024
_VALUE_CACHE_MAX = 256
_CACHE_MAX = 8192
_TEXT_CACHE_MAX = 256
_kv_cache: dict[tuple[str, str | int], bytes] = {}
#: Values cached per key.
_kv_counts: dict[str, int] = {}


def _span_attribute(key: str, value: Any) -> bytes:
    cls = value.__class__
    if cls is str or cls is int:
        pair = (key, value)
        encoded = _kv_cache.get(pair)
        if encoded is not None:
            return encoded
        encoded = _len(_T_SPAN_ATTR, key_value(key, value))
        count = _kv_counts.get(key, 0)
        if (
            count < _VALUE_CACHE_MAX
            and len(_kv_cache) < _CACHE_MAX
            and len(key) <= _TEXT_CACHE_MAX
            and (cls is int or len(value) <= _TEXT_CACHE_MAX)
            and (count or len(_kv_counts) < _KEY_CACHE_MAX)
        ):
            _kv_counts[key] = count + 1
            _kv_cache[pair] = encoded
        return encoded
    return _len(_T_SPAN_ATTR, key_value(key, value))


def attributes(tag: bytes, attrs: Mapping[str, Any] | None) -> bytes:
    if not attrs:
        return b""
    if tag is _T_SPAN_ATTR:
        return b"".join([_span_attribute(k, v) for k, v in attrs.items()])
    return b"".join([_len(tag, key_value(k, v)) for k, v in attrs.items()])


_pack_times = struct.Struct("<BQBQ").pack  # start (field 7) and end (field 8), both fixed64
#: ``SpanKind`` value -> encoded kind field (the OTLP enum is the API's value + 1).
_KIND_FIELD = [_T_SPAN_KIND + _VARINT_CACHE[value + 1] for value in range(5)]
_NAME_CACHE_MAX = 1024
_name_cache: dict[str, bytes] = {}


def encode_span(span: Any) -> bytes:
    """Encode a finished span (obskit's ``ServerSpan`` or an SDK ``ReadableSpan``) as an OTLP
    ``Span`` message.

    Runs once per sampled span on the request thread, so it is written for CPython's speed:
    encoded names and attributes are cached, enum values are read from ``_value_`` (an Enum's
    ``value`` property is a Python-level descriptor call) and the common cache hit does not call
    a helper.
    """
    ctx = span.context
    parts = [
        b"\x0a\x10"
        + ctx.trace_id.to_bytes(16, "big")
        + b"\x12\x08"
        + ctx.span_id.to_bytes(8, "big")
    ]
    state = ctx.trace_state
    if state:
        parts.append(_str(_T_SPAN_TRACE_STATE, state.to_header()))
    parent = span.parent
    # Bits 8-9 of flags say whether the parent is known and remote (trace.proto SpanFlags).
    flags = (ctx.trace_flags & 0xFF) | 0x100
    if parent is not None:
        parts.append(b"\x22\x08" + parent.span_id.to_bytes(8, "big"))
        if parent.is_remote:
            flags |= 0x200
    name = span.name
    encoded_name = _name_cache.get(name)
    if encoded_name is None:
        encoded_name = _str(_T_SPAN_NAME, name)
        if len(_name_cache) < _NAME_CACHE_MAX and len(name) <= _TEXT_CACHE_MAX:
            _name_cache[name] = encoded_name
    parts.append(encoded_name)
    parts.append(_KIND_FIELD[span.kind._value_])
    parts.append(_pack_times(0x39, span.start_time or 0, 0x41, span.end_time or 0))
    # obskit's spans keep a plain dict. The SDK's public properties copy on every read (a
    # MappingProxy over BoundedAttributes; tuples of events and links): read the underlying
    # containers when they are there, the public API otherwise.
    attrs = span.attributes
    dropped = 0
    if attrs.__class__ is not dict:
        bounded = getattr(span, "_attributes", None)
        inner = getattr(bounded, "_dict", None)
        if inner is not None:
            attrs = inner
            dropped = getattr(bounded, "dropped", 0)
        else:  # a lean span that lost attributes to a limit
            dropped = getattr(attrs, "dropped", 0)
    if attrs:
        cache = _kv_cache
        for pair in attrs.items():
            cls = pair[1].__class__
            if cls is str or cls is int:
                cached = cache.get(pair)
                if cached is not None:
                    parts.append(cached)
                    continue
            parts.append(_span_attribute(*pair))
        if dropped:
            parts.append(_T_SPAN_DROPPED_ATTRS + varint(dropped))
    events = getattr(span, "_events", None)
    if events is None:
        events = span.events
    for event in events:
        body = b"\x09" + _pack_q(event.timestamp) + _str(b"\x12", event.name)
        body += attributes(b"\x1a", event.attributes)
        cut = getattr(event.attributes, "dropped", 0)  # the SDK's BoundedAttributes
        if cut:
            body += b"\x20" + varint(cut)  # Event.dropped_attributes_count
        parts.append(_len(_T_SPAN_EVENT, body))
    # The SDK's BoundedList knows how many the span limits cut; a lean span's list does not.
    cut = getattr(events, "dropped", 0)
    if cut:
        parts.append(b"\x60" + varint(cut))  # Span.dropped_events_count (12)
    links = getattr(span, "_links", None)
    if links is None:
        links = span.links
    for link in links:
        lctx = link.context
        body = (
            b"\x0a\x10"
            + lctx.trace_id.to_bytes(16, "big")
            + b"\x12\x08"
            + lctx.span_id.to_bytes(8, "big")
        )
        if lctx.trace_state:
            body += _str(b"\x1a", lctx.trace_state.to_header())  # Link.trace_state
        body += attributes(b"\x22", link.attributes)
        cut = getattr(link.attributes, "dropped", 0)
        if cut:
            body += b"\x28" + varint(cut)  # Link.dropped_attributes_count
        # Link.flags (fixed32): the linked context's trace flags and whether it is remote,
        # with the same SpanFlags bits as the span's own.
        link_flags = (lctx.trace_flags & 0xFF) | (0x300 if lctx.is_remote else 0x100)
        body += b"\x35" + _pack_i(link_flags)
        parts.append(_len(_T_SPAN_LINK, body))
    cut = getattr(links, "dropped", 0)
    if cut:
        parts.append(b"\x70" + varint(cut))  # Span.dropped_links_count (14)
    status = span.status
    code = status.status_code._value_
    description = status.description
    if code or description:
        body = _str(b"\x12", description) if description else b""
        if code:
            body += b"\x18" + _VARINT_CACHE[code]
        parts.append(_len(_T_SPAN_STATUS, body))
    parts.append(_T_SPAN_FLAGS + _pack_i(flags))
    return b"".join(parts)


def encode_resource(attrs: Mapping[str, Any]) -> bytes:
    """A ``Resource`` message body."""
    return attributes(b"\x0a", attrs)


def encode_scope(
    name: str,
    version: str | None,
    attrs: Mapping[str, Any] | None = None,
    schema_url: str | None = None,
) -> bytes:
    """The fields of a ``ScopeSpans`` message other than its spans: the
    ``InstrumentationScope`` (name, version, attributes) and the schema URL."""
    body = _str(b"\x0a", name)
    if version:
        body += _str(b"\x12", version)
    if attrs:
        body += attributes(b"\x1a", attrs)  # InstrumentationScope.attributes
    header = _len(b"\x0a", body)  # ScopeSpans.scope
    if schema_url:
        header += _str(b"\x1a", schema_url)  # ScopeSpans.schema_url
    return header


def frame_span(span: Any) -> bytes:
    """A finished span encoded as one ``ScopeSpans.spans`` entry (field 2, length-prefixed).

    The span pipeline queues spans in this form, so building an export request is a join of
    bytes in C: the export thread spends next to no time holding the GIL per span, time that
    would otherwise stall request threads.
    """
    return _len(b"\x12", encode_span(span))


def encode_request(resource: bytes, scopes: Iterable[tuple[bytes, Sequence[bytes]]]) -> bytes:
    """An ``ExportTraceServiceRequest`` with one ResourceSpans holding each scope's spans.

    ``scopes`` pairs a scope from :func:`encode_scope` with spans from :func:`frame_span`.
    Repeated message fields are concatenations on the wire, so spans encoded at span end are
    spliced in as they are.
    """
    scope_spans = b"".join(_len(b"\x12", scope + b"".join(spans)) for scope, spans in scopes)
    return _len(b"\x0a", _len(b"\x0a", resource) + scope_spans)
