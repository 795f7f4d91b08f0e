"""W3C Baggage, parsed and written as the Recommendation says.

OpenTelemetry's ``W3CBaggagePropagator`` decodes values with ``unquote_plus`` and encodes them
with ``quote_plus`` (a ``+`` arrives as a space, a space leaves as ``+``, which W3C receivers
read as a literal plus), folds a member's properties into its value, drops any member over
4096 bytes (a limit of an early draft) and drops the whole header past 8192 bytes. This codec:

- values are RFC 3986 percent-encoded: decoded with ``unquote`` (invalid UTF-8 becomes U+FFFD,
  as the Recommendation says), encoded with every character that is not a ``baggage-octet``
  (and ``%``) percent-encoded;
- properties (``k=v;p=1``) stay properties: the application reads ``v``, and the properties go
  on after it, as they came;
- limits are kept by whole entries from the left: at most 180 members and 8192 bytes are read
  and written (the Recommendation asks for at least 64 and 8192); an invalid member is skipped
  alone. What is skipped is counted in ``obskit_propagation_invalid_total{header="baggage"}``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import quote, unquote

from opentelemetry import baggage
from opentelemetry.context import Context
from opentelemetry.propagators.textmap import (
    CarrierT,
    Getter,
    Setter,
    TextMapPropagator,
    default_getter,
    default_setter,
)

__all__ = ["BaggagePropagator", "Value", "extract", "serialize"]

MAX_BYTES = 8192
MAX_MEMBERS = 180
#: A header longer than this is not read at all (a client's mistake or an attack): 64 members
#: of the longest useful size, with room for white space.
_MAX_HEADER = 8 * MAX_BYTES

_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+\Z")
# baggage-octet: %x21 / %x23-2B / %x2D-3A / %x3C-5B / %x5D-7E (no space, '"', ',', ';', '\').
_VALUE = re.compile(r"[\x21\x23-\x2b\x2d-\x3a\x3c-\x5b\x5d-\x7e]*\Z")
#: Characters written as they are; everything else is percent-encoded ('%' too, so that a
#: value that contains one decodes to itself).
_SAFE = "".join(chr(c) for c in range(0x21, 0x7F) if chr(c) not in '",;\\%')


class Value(str):
    """A baggage value that came with properties (``k=v;p=1``): equal to ``v`` for the
    application, and written again with its ``properties`` when the baggage goes on."""

    properties: str

    def __new__(cls, value: str, properties: str) -> Value:
        made = super().__new__(cls, value)
        made.properties = properties
        return made

    def __reduce__(self) -> tuple[Any, ...]:
        # copy, deepcopy and pickle (a process pool's, Celery's) make it again with both.
        return type(self), (str(self), self.properties)


def _member(text: str) -> tuple[str, str] | None:
    """``(key, value)`` of one list-member, the value decoded (a :class:`Value` when it has
    properties); None when the member is invalid."""
    head, sep, properties = text.partition(";")
    key, eq, raw = head.partition("=")
    key, raw = key.strip(" \t"), raw.strip(" \t")
    if not eq or _TOKEN.match(key) is None or _VALUE.match(raw) is None:
        return None
    value = unquote(raw, errors="replace")
    if sep:
        props = ";".join(p.strip(" \t") for p in properties.split(";") if p.strip(" \t"))
        if props:
            return key, Value(value, props)
    return key, value


def extract(value: str, context: Context | None, invalid: Callable[[str], None]) -> Context | None:
    """``context`` with the baggage of a (combined) ``baggage`` header value added."""
    if len(value) > _MAX_HEADER:
        invalid("length")
        return context
    ctx = context
    size = 0
    count = 0
    for raw in value.split(","):
        text = raw.strip(" \t")
        if not text:
            continue
        size += len(text.encode()) + (1 if count else 0)
        if count >= MAX_MEMBERS or size > MAX_BYTES:
            invalid("members" if count >= MAX_MEMBERS else "length")
            break
        member = _member(text)
        if member is None:
            invalid("member")
            continue
        ctx = baggage.set_baggage(member[0], member[1], ctx)
        count += 1
    return ctx


def serialize(entries: Iterable[tuple[str, object]], invalid: Callable[[str], None]) -> str:
    """The ``baggage`` header value of ``entries``, within the limits (whole entries from the
    left); an entry whose key is not a token, or whose value cannot be written (a lone surrogate
    of ``os.fsdecode``, which UTF-8 cannot encode; a ``__str__`` that raises), is skipped."""
    members: list[str] = []
    size = -1  # no comma before the first member
    for key, value in entries:
        if not isinstance(key, str) or _TOKEN.match(key) is None:
            invalid("member")
            continue
        try:
            member = f"{key}={quote(str(value), safe=_SAFE)}"
            properties = getattr(value, "properties", None)
            if properties:
                member += ";" + properties
            length = len(member.encode())
        except Exception:
            invalid("member")
            continue
        size += length + 1
        if len(members) >= MAX_MEMBERS or size > MAX_BYTES:
            invalid("members" if len(members) >= MAX_MEMBERS else "length")
            break
        members.append(member)
    return ",".join(members)


def _count(reason: str) -> None:
    from obskit.tracing.propagation import _invalid

    _invalid("baggage", reason)


class BaggagePropagator(TextMapPropagator):
    """The W3C ``baggage`` header, read and written by this module's codec (see its docs)."""

    def extract(
        self,
        carrier: CarrierT,
        context: Context | None = None,
        getter: Getter[CarrierT] = default_getter,
    ) -> Context:
        values = getter.get(carrier, "baggage")
        ctx = context if context is not None else Context()
        if not values:
            return ctx
        return extract(",".join(values), ctx, _count) or ctx

    def inject(
        self,
        carrier: CarrierT,
        context: Context | None = None,
        setter: Setter[CarrierT] = default_setter,
    ) -> None:
        entries = baggage.get_all(context)
        if not entries:
            return
        header = serialize(entries.items(), _count)
        if header:
            setter.set(carrier, "baggage", header)

    @property
    def fields(self) -> set[str]:
        return {"baggage"}


def install(textmap: Any) -> Any:
    """``textmap`` with OpenTelemetry's own W3C baggage propagator replaced by
    :class:`BaggagePropagator`, and its W3C trace-context propagator by obskit's
    (:class:`obskit.tracing.propagation.TraceContextPropagator`, which forwards the incoming
    context while traces are off); ``textmap`` itself when it holds neither (another setup)."""
    from opentelemetry.baggage.propagation import W3CBaggagePropagator
    from opentelemetry.propagators.composite import CompositePropagator
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    from obskit.tracing.propagation import TraceContextPropagator  # imports this module

    parts = getattr(textmap, "_propagators", None)
    if not isinstance(textmap, CompositePropagator) or not isinstance(parts, list):
        return textmap
    ours = {
        W3CBaggagePropagator: BaggagePropagator,
        TraceContextTextMapPropagator: TraceContextPropagator,
    }
    if not any(type(p) in ours for p in parts):
        return textmap
    return CompositePropagator([ours[type(p)]() if type(p) in ours else p for p in parts])
