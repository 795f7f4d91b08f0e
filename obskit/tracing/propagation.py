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

Outbound, :func:`inject` writes the current context into any mutable header mapping. While obskit
records no spans (traces off), a span made on the way (the application's, another
instrumentation's) does not go out: the context it was made under does, unchanged
(:class:`~obskit.tracing.sampling.Forwarded`), through :func:`inject`, obskit's outbound hooks and
:class:`TraceContextPropagator`, which replaces OpenTelemetry's ``tracecontext`` propagator in the
global one.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, MutableMapping
from typing import Any

from opentelemetry import propagate, trace
from opentelemetry.context import Context
from opentelemetry.propagators import textmap as _textmap
from opentelemetry.trace import (
    INVALID_SPAN,
    INVALID_SPAN_CONTEXT,
    NonRecordingSpan,
    SpanContext,
    TraceFlags,
    TraceState,
)
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from obskit import _selfmetrics, _state
from obskit.tracing import _baggage
from obskit.tracing.sampling import Forwarded

__all__ = [
    "TraceContextPropagator",
    "extract",
    "inject",
    "outgoing_span_context",
    "parse_traceparent",
    "parse_tracestate",
]

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
        return _extract_other(textmap, get, context)
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

    Into a plain ``dict`` (``dict(request.headers)`` of an incoming request, spelled
    ``Traceparent``), the fields written replace those already there in any case -- and a
    ``tracestate`` goes with the ``traceparent`` it belonged to --, as HTTP header names are
    case-insensitive. While obskit records no spans, the context a span was made under is
    written, not the span (see :func:`outgoing_span_context`).
    """
    try:
        context = _outgoing_context(context)
        if type(headers) is dict:
            _inject_dict(headers, context)
        else:
            propagate.inject(headers, context)
    except Exception as exc:  # never break the caller's request
        _selfmetrics.internal_error("inject", exc)


def _inject_dict(headers: dict[Any, Any], context: Context | None) -> None:
    written: dict[str, str] = {}
    propagate.inject(written, context)
    if not written:
        return
    replaced = {name.lower() for name in written}
    if "traceparent" in replaced:  # a tracestate belongs to the traceparent it came with
        replaced.add("tracestate")
    for key in [k for k in headers if isinstance(k, str) and k.lower() in replaced]:
        if key not in written:
            del headers[key]
    headers.update(written)


def outgoing_span_context(span_context: SpanContext) -> SpanContext:
    """What a call made under a span of ``span_context`` sends downstream: the span itself, or
    -- for a span made while obskit recorded no spans (traces off), which nobody exports -- the
    context that span was made under, unchanged (``INVALID_SPAN_CONTEXT``, nothing, under a
    root span)."""
    state = span_context.trace_state
    if type(state) is Forwarded and not span_context.trace_flags.sampled:
        return state.forward or INVALID_SPAN_CONTEXT
    return span_context


def _outgoing_context(context: Context | None) -> Context | None:
    """``context`` (the current one by default) with its span replaced by what goes downstream,
    when that is another (:func:`outgoing_span_context`); ``context`` itself otherwise."""
    span_context = trace.get_current_span(context).get_span_context()
    sent = outgoing_span_context(span_context)
    if sent is span_context:
        return context
    span = NonRecordingSpan(sent) if sent.is_valid else INVALID_SPAN
    return trace.set_span_in_context(span, context)


class TraceContextPropagator(TraceContextTextMapPropagator):
    """OpenTelemetry's W3C ``tracecontext`` propagator (the global one holds this one once obskit
    is configured), injecting what :func:`outgoing_span_context` says goes downstream: so that
    ``opentelemetry.propagate.inject`` and every instrumentation that calls it forward the
    incoming context while obskit's traces are off. Extraction is OpenTelemetry's own."""

    def inject(
        self,
        carrier: _textmap.CarrierT,
        context: Context | None = None,
        setter: _textmap.Setter[_textmap.CarrierT] = _textmap.default_setter,
    ) -> None:
        span_context = outgoing_span_context(trace.get_current_span(context).get_span_context())
        if not span_context.is_valid:
            return
        setter.set(
            carrier,
            "traceparent",
            f"00-{span_context.trace_id:032x}-{span_context.span_id:016x}-"
            f"{span_context.trace_flags:02x}",
        )
        state = span_context.trace_state
        if state:
            setter.set(carrier, "tracestate", state.to_header())


class _HeaderGetter(_textmap.Getter[Mapping[str, str]]):
    """A Getter over a request's headers (lowercase name -> combined value): case-insensitive,
    as the Propagators API requires of a Getter over HTTP headers; ``keys`` lists them all."""

    def get(self, carrier: Mapping[str, str], key: str) -> list[str] | None:
        value = carrier.get(key.lower())
        return None if value is None else [value]

    def keys(self, carrier: Mapping[str, str]) -> list[str]:
        return list(carrier)


_HEADERS = _HeaderGetter()
_W3C_FIELDS = ("traceparent", "tracestate", "baggage")


def _extract_other(textmap: Any, get: Getter, context: Context | None) -> Context | None:
    """:func:`extract` through another ``OTEL_PROPAGATORS`` setting: the propagators get the
    headers they name (and W3C's), looked up lowercase -- an ASGI request spells every name
    lowercase, and X-Ray's field is ``X-Amzn-Trace-Id`` -- through a case-insensitive Getter,
    as the Propagators API requires of one over HTTP headers. Headers a propagator finds only
    through ``keys()`` (Jaeger's ``uberctx-*`` baggage) are not passed on."""
    headers: dict[str, str] = {}
    for name in (*_W3C_FIELDS, *textmap.fields):
        lower = name.lower()
        if lower not in headers:
            # As spelled too, for a getter of the caller's own that is case-sensitive.
            value = get(lower) or (get(name) if name != lower else None)
            if value:
                headers[lower] = value
    return propagate.extract(headers, context, getter=_HEADERS) if headers else None
