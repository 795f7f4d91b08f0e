"""W3C Trace Context and baggage, in and out.

Inbound, the request pipeline calls :func:`extract`. When the process uses OpenTelemetry's default
propagators (``tracecontext,baggage``) obskit parses ``traceparent`` and ``tracestate`` itself,
following the W3C Recommendation to the letter and without logging per bad header (the SDK's
``TraceState`` warns on every invalid member, which is a log flood driven by client input); any
other ``OTEL_PROPAGATORS`` setting goes through ``opentelemetry.propagate`` unchanged. Invalid
input never raises: it starts a new trace and is counted in
``obskit_propagation_invalid_total{header,reason}``.

``baggage`` is read and written by obskit's own W3C Baggage codec (:mod:`obskit.tracing._baggage`,
which also replaces OpenTelemetry's baggage propagator in the global one at configure()).

Outbound, :func:`inject` writes the current context into any mutable header mapping.
"""

from __future__ import annotations

import re
from collections.abc import Callable, MutableMapping
from typing import Any

from opentelemetry import propagate, trace
from opentelemetry.context import Context
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags, TraceState

from obskit import _selfmetrics, _state
from obskit.tracing import _baggage

__all__ = ["extract", "inject", "parse_traceparent", "parse_tracestate"]

_TRACEPARENT_LEN = 55
_HEX = frozenset("0123456789abcdef")
_ZERO_TRACE = "0" * 32
_ZERO_SPAN = "0" * 16
_MAX_MEMBERS = 32
_MAX_HEADER = 8192  # a traceparent longer than this is not parsed at all
#: The longest tracestate the grammar allows (32 members of a 256-character key and value, and
#: their commas), with room for optional white space; anything longer is not parsed at all.
_MAX_TRACESTATE_HEADER = 32 * 513 + 31 + 1024
# W3C tracestate key: simple-key, or tenant@system multi-tenant key.
_KEY = re.compile(
    r"(?:[a-z][a-z0-9_\-*/]{0,255}|[a-z0-9][a-z0-9_\-*/]{0,240}@[a-z][a-z0-9_\-*/]{0,13})\Z"
)
# value: printable ASCII except ',' and '=', no trailing space, 1-256 chars.
_VALUE = re.compile(r"[\x20-\x2b\x2d-\x3c\x3e-\x7e]{0,255}[\x21-\x2b\x2d-\x3c\x3e-\x7e]\Z")


def _invalid(header: str, reason: str) -> None:
    try:
        metrics = _selfmetrics.current()
        metrics.propagation_invalid.labels(header, reason).inc()
    except Exception:  # pragma: no cover
        pass


def _is_hex(text: str) -> bool:
    return _HEX.issuperset(text)


def parse_traceparent(value: str) -> tuple[int, int, int] | None:
    """``(trace_id, span_id, flags)`` from a ``traceparent`` value, or None if it is invalid.

    Rules (W3C Trace Context, "traceparent Header Field Values"): lowercase hex only; version
    ``ff`` is invalid; version ``00`` is exactly 55 characters; a higher version may be longer
    but then continues with ``-`` and is parsed as version 00; all-zero trace or parent ids are
    invalid.
    """
    value = value.strip(" \t")
    if len(value) < _TRACEPARENT_LEN:
        _invalid("traceparent", "length")
        return None
    version = value[:2]
    if not _is_hex(version) or version == "ff":
        _invalid("traceparent", "version")
        return None
    if version == "00" and len(value) != _TRACEPARENT_LEN:
        _invalid("traceparent", "length")
        return None
    if len(value) > _TRACEPARENT_LEN and value[_TRACEPARENT_LEN] != "-":
        _invalid("traceparent", "format")
        return None
    if value[2] != "-" or value[35] != "-" or value[52] != "-":
        _invalid("traceparent", "format")
        return None
    trace_hex, span_hex, flags_hex = value[3:35], value[36:52], value[53:55]
    if not (_is_hex(trace_hex) and _is_hex(span_hex) and _is_hex(flags_hex)):
        _invalid("traceparent", "not_lowercase_hex")
        return None
    if trace_hex == _ZERO_TRACE or span_hex == _ZERO_SPAN:
        _invalid("traceparent", "zero_id")
        return None
    flags = int(flags_hex, 16)
    if version != "00":
        # Parsed as version 00, it keeps only the flags version 00 defines (sampled, and Level
        # 2's random trace id): the others mean something else, or nothing, there.
        flags &= 0x03
    return int(trace_hex, 16), int(span_hex, 16), flags


def parse_tracestate(value: str) -> TraceState:
    """A ``TraceState`` from a (combined) ``tracestate`` value; empty if the value is invalid.

    Empty list-members are skipped; an invalid member, a duplicate key or more than 32 members
    make the whole header invalid. A valid list is kept whole, whatever its length (the
    Recommendation's 512 characters are what a vendor must at least propagate; obskit adds no
    member of its own, so it never needs to truncate, and a tracestate that comes with an
    unchanged traceparent must go on unchanged).
    """
    if len(value) > _MAX_TRACESTATE_HEADER:
        _invalid("tracestate", "length")
        return TraceState()
    members: list[tuple[str, str]] = []
    seen: set[str] = set()
    for raw in value.split(","):
        member = raw.strip(" \t")
        if not member:
            continue
        key, sep, val = member.partition("=")
        if not sep or _KEY.match(key) is None or _VALUE.match(val) is None:
            _invalid("tracestate", "member")
            return TraceState()
        if key in seen:
            _invalid("tracestate", "duplicate_key")
            return TraceState()
        seen.add(key)
        members.append((key, val))
        if len(members) > _MAX_MEMBERS:
            _invalid("tracestate", "members")
            return TraceState()
    return TraceState(members)


def _default_propagators(current: Any) -> bool:
    """Whether ``current``, the global propagator, is OpenTelemetry's default
    tracecontext+baggage."""
    fields = set(current.fields)
    result = fields == {"traceparent", "tracestate", "baggage"}
    _state.default_propagators = (current, result)
    return result


Getter = Callable[[str], str | None]


def extract(get: Getter, context: Context | None = None) -> Context | None:
    """The parent context carried by a request's headers, or None when it carries none.

    Args:
        get: returns the (combined) value of a lowercase header name, or None.
        context: the context to add to (the current one by default).
    """
    # The check is cached per global propagator (read inline: this runs on every request).
    textmap = propagate.get_global_textmap()
    cached = _state.default_propagators
    if not (
        cached[1] if cached is not None and cached[0] is textmap else _default_propagators(textmap)
    ):
        carrier = {k: v for k in ("traceparent", "tracestate", "baggage") if (v := get(k))}
        for name in textmap.fields:
            if name not in carrier and (v := get(name)):
                carrier[name] = v
        return propagate.extract(carrier, context) if carrier else None
    traceparent = get("traceparent")
    bag = get("baggage")
    if traceparent is None and bag is None:
        return None
    ctx = context
    if traceparent is not None:
        if len(traceparent) < _MAX_HEADER:
            parsed = parse_traceparent(traceparent)
        else:  # not worth parsing, but still an invalid header to count
            parsed = None
            _invalid("traceparent", "length")
        if parsed is not None:
            trace_id, span_id, flags = parsed
            raw_state = get("tracestate")
            state = parse_tracestate(raw_state) if raw_state else TraceState()
            span_context = SpanContext(
                trace_id, span_id, is_remote=True, trace_flags=TraceFlags(flags), trace_state=state
            )
            ctx = trace.set_span_in_context(NonRecordingSpan(span_context), ctx)
    if bag is not None:
        ctx = _extract_baggage(bag, ctx)
    return ctx


def _invalid_baggage(reason: str) -> None:
    _invalid("baggage", reason)


def _extract_baggage(value: str, ctx: Context | None) -> Context | None:
    # obskit's own W3C Baggage codec (obskit.tracing._baggage): OpenTelemetry's propagator
    # decodes '+' as a space, folds properties into values and drops long headers whole.
    try:
        return _baggage.extract(value, ctx, _invalid_baggage)
    except Exception:
        _invalid("baggage", "format")
        return ctx


def inject(headers: MutableMapping[str, Any], context: Context | None = None) -> None:
    """Write ``traceparent``, ``tracestate`` and ``baggage`` for ``context`` into ``headers``.

    Use it for any client obskit does not instrument itself::

        headers = {}
        obskit.inject(headers)
        client.send(url, headers=headers)
    """
    try:
        propagate.inject(headers, context)
    except Exception as exc:  # never break the caller's request
        _selfmetrics.internal_error("inject", exc)
