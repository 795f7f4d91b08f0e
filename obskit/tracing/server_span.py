"""A lean span for obskit's own SERVER, INTERNAL (``@obskit.red``) and outbound CLIENT spans.

Every request pays for its SERVER span, and the SDK's ``_Span`` is built for generality:
``BoundedAttributes`` that re-validate each value, a lock per span, limits objects, a
``ReadableSpan`` copy at end. This class implements the OpenTelemetry ``Span`` API with
``__slots__`` and a plain dict, makes the same sampling decision through the same sampler and id
rules as the SDK's ``Tracer.start_span``, and at ``end()`` hands itself to obskit's span pipeline,
which encodes it straight to OTLP bytes. Child spans started by any OpenTelemetry instrumentation
see it as their parent through the context as usual.

They use it only when spans go to obskit's own pipeline, ``keep_whole_trace`` is off and no
other span processor was added to obskit's provider (``Runtime.lean_spans``); otherwise the SDK
tracer is used, so every processor sees every span.
"""

from __future__ import annotations

import random
import time
import traceback
from collections.abc import Mapping
from typing import Any

from opentelemetry import trace as trace_api
from opentelemetry.attributes import BoundedAttributes
from opentelemetry.context import Context
from opentelemetry.sdk.trace.sampling import Decision, Sampler
from opentelemetry.trace import (
    Link,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    TraceFlags,
)
from opentelemetry.trace.span import DEFAULT_TRACE_STATE
from opentelemetry.util.types import Attributes

from obskit import _runtime, _state
from obskit.http._semconv import error_type
from obskit.tracing import _fastctx
from obskit.tracing._fastctx import current_span
from obskit.tracing.pipeline import CompactSpanProcessor, _Event
from obskit.tracing.sampling import SwitchableSampler

__all__ = ["ServerSpan", "start_lean_span", "start_server_span"]

#: The SDK's default span limits: what the request pipeline's inlined attribute writes assume
#: (more goes through ``set_attribute``); lower limits are enforced again at ``end()``.
_MAX_ATTRIBUTES = 128
_VALID = (str, bool, int, float)
#: The same, for an exact-type test by one hash lookup.
_VALID_TYPES = frozenset(_VALID)
_getrandbits = random.getrandbits
_SAMPLED = TraceFlags.SAMPLED
_RANDOM = TraceFlags.RANDOM_TRACE_ID
_time_ns = time.time_ns
_perf_ns = time.perf_counter_ns
_new_tuple = tuple.__new__
_get_current = _fastctx.get_current
#: The status of a span no one set one on, shared: a Status is never changed in place
#: (set_status replaces it).
_UNSET = Status(StatusCode.UNSET)
#: Every trace-flags value a new span can have (sampled bit, random-trace-id bit), made once.
_FLAGS = {flags: TraceFlags(flags) for flags in (0, _SAMPLED, _RANDOM, _SAMPLED | _RANDOM)}


class _Counted(dict[str, Any]):
    """Attributes that lost some to a limit: the encoder reads ``dropped`` as the SDK's
    ``BoundedAttributes.dropped``."""

    dropped = 0


class _CountedList(list[Any]):
    """Events or links that lost some to a limit (the SDK's ``BoundedList.dropped``)."""

    dropped = 0


# The OTEL_SPAN_*_LIMIT / OTEL_ATTRIBUTE_*_LIMIT values of the process's SDK provider, applied
# by set_limits() at configure(); the SDK's defaults until then.
_attribute_limit = 128
_event_limit = 128
_link_limit = 128
_length_limit: int | None = None
#: Events' and links' value-length limit: the general OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT, as the
#: SDK's spans use (the span's own limit is only for the span's attributes).
_other_length_limit: int | None = None
#: The event and link attribute count limits as the SDK's ``BoundedAttributes`` takes them.
_event_attribute_maxlen: int | None = 128
_link_attribute_maxlen: int | None = 128
#: False when a limit is below the default or values are cut to a length: end() then checks
#: what the pipeline's inlined writes added.
_default_limits = True


def set_limits(limits: Any) -> None:
    """Take an SDK ``SpanLimits`` (``None`` fields: no limit) for every lean span."""
    global _attribute_limit, _event_limit, _link_limit
    global _length_limit, _default_limits, _other_length_limit
    global _event_attribute_maxlen, _link_attribute_maxlen

    def count(value: int | None) -> int:
        return 1 << 62 if value is None else value

    _attribute_limit = count(limits.max_span_attributes)
    _event_limit = count(limits.max_events)
    _link_limit = count(limits.max_links)
    _length_limit = limits.max_span_attribute_length
    _other_length_limit = limits.max_attribute_length
    _event_attribute_maxlen = limits.max_event_attributes
    _link_attribute_maxlen = limits.max_link_attributes
    _default_limits = _attribute_limit >= _MAX_ATTRIBUTES and _length_limit is None


def _cut(value: Any, length: int) -> Any:
    """``value`` with its text cut to ``length`` characters, as the SDK's BoundedAttributes."""
    if isinstance(value, str):
        return value[:length]
    if isinstance(value, (list, tuple)):
        return tuple(v[:length] if isinstance(v, str) else v for v in value)
    return value


def _bounded(attributes: dict[str, Any], limit: int, length: int | None) -> dict[str, Any]:
    """``attributes`` within a count and a value-length limit; the dropped count rides along."""
    if len(attributes) > limit:
        kept: dict[str, Any] = _Counted(list(attributes.items())[:limit])
        kept.dropped = len(attributes) - limit + getattr(attributes, "dropped", 0)  # type: ignore[attr-defined]
        attributes = kept
    if length is not None:
        for key, value in attributes.items():
            attributes[key] = _cut(value, length)
    return attributes


#: What :func:`_cleaned` returns for a key or value the SDK's span would not keep.
_REFUSED: Any = object()


def _cleaned(key: Any, value: Any) -> Any:
    """``value`` as the installed SDK's span keeps it under ``key`` (sequences copied to tuples,
    bytes, maps or odd types as its ``BoundedAttributes`` takes them, cut to the span's length
    limit), or ``_REFUSED``. For what the fast path (a non-empty str key, an exact str, bool,
    int or float) does not take: the rules are the SDK's own, whichever version is installed."""
    try:
        bounded = BoundedAttributes(None, None, immutable=False, max_value_len=_length_limit)
        bounded[key] = value
        for kept in bounded.values():
            return kept
    except Exception:
        pass
    return _REFUSED


def _bounded_attributes(attributes: Attributes, maxlen: int | None) -> Any:
    """An event's or a link's attributes as the SDK's span makes them (same class, limits)."""
    return BoundedAttributes(maxlen, attributes, immutable=True, max_value_len=_other_length_limit)


class ServerSpan(trace_api.Span):
    """A recording span that reports to obskit's span pipeline when it ends."""

    __slots__ = (
        "_events",
        "_links",
        "_perf",
        "_processor",
        "attributes",
        "context",
        "end_time",
        "instrumentation_scope",
        "kind",
        "name",
        "parent",
        "start_time",
        "status",
    )

    def __init__(
        self,
        name: str,
        context: SpanContext,
        parent: SpanContext | None,
        kind: SpanKind,
        processor: CompactSpanProcessor,
        scope: Any,
    ) -> None:
        self.name = name
        self.context = context
        self.parent = parent
        self.kind = kind
        self.attributes: dict[str, Any] = {}
        self.status = _UNSET
        self.instrumentation_scope = scope
        self.start_time = _time_ns()
        # The span's clock: wall time at the start, the monotonic clock from there (as the
        # Java and JS SDKs' anchored clock), so that a step of the wall clock while the request
        # runs (NTP, a VM resumed) gives neither a negative nor a made-up duration.
        self._perf = _perf_ns()
        self.end_time: int | None = None
        self._processor = processor
        # Shared empty tuples until the first add_event/add_link: most spans have neither, and
        # two lists per span are two more objects for the garbage collector to count.
        self._events: list[_Event] | tuple[()] = ()
        self._links: list[Link] | tuple[()] = ()

    # -- the Span API ------------------------------------------------------------------------

    def get_span_context(self) -> SpanContext:
        return self.context

    def is_recording(self) -> bool:
        return self.end_time is None

    def set_attributes(self, attributes: Mapping[str, Any]) -> None:
        if self.end_time is not None:
            return
        for key, value in attributes.items():
            self.set_attribute(key, value)

    def set_attribute(self, key: str, value: Any) -> None:
        if self.end_time is not None:
            return
        if key.__class__ is not str or not key or value.__class__ not in _VALID_TYPES:
            # The SDK's rules for the rest: an empty or non-str key is refused and counted, a
            # list is copied (a later change to it is not the span's), bytes, maps and other
            # types are what the installed SDK makes of them.
            value = _cleaned(key, value)
            if value is _REFUSED:
                self._drop_attribute()
                return
        own = self.attributes
        if key in own or len(own) < _attribute_limit:
            own[key] = value
        else:
            self._drop_attribute()

    def _drop_attribute(self) -> None:
        own = self.attributes
        if own.__class__ is not _Counted:
            own = self.attributes = _Counted(own)
        own.dropped += 1

    def add_event(
        self, name: str, attributes: Attributes = None, timestamp: int | None = None
    ) -> None:
        if self.end_time is not None:
            return
        events = self._events
        if len(events) >= _event_limit:
            # As the SDK's BoundedList: the oldest goes, the newest (an exception at the end of
            # a full span) stays.
            events = self._events = _dropped_one(events)
            if not events:
                return  # a limit of 0
            del events[0]
        clean = _bounded_attributes(attributes, _event_attribute_maxlen)
        if not isinstance(events, list):
            events = self._events = []
        events.append(_Event(name, timestamp or self._now(), clean))

    def add_link(self, context: SpanContext, attributes: Attributes = None) -> None:
        # The SDK's rule: a link to an invalid context is kept when it says something
        # (attributes or a trace state).
        if (
            self.end_time is None
            and context is not None
            and (context.is_valid or attributes or context.trace_state)
        ):
            links = self._links
            if len(links) >= _link_limit:
                links = self._links = _dropped_one(links)  # the oldest goes, as in the SDK
                if not links:
                    return
                del links[0]
            if not isinstance(links, list):
                links = self._links = []
            links.append(Link(context, _bounded_attributes(attributes, _link_attribute_maxlen)))

    def update_name(self, name: str) -> None:
        if self.end_time is None and name.__class__ is str:
            self.name = name

    def set_status(self, status: Status | StatusCode, description: str | None = None) -> None:
        if self.end_time is not None or self.status.status_code is StatusCode.OK:
            return  # OK is final (API spec)
        if isinstance(status, Status):
            if status.status_code is not StatusCode.UNSET:  # setting UNSET is ignored (API spec)
                self.status = status
        elif status is not StatusCode.UNSET:
            self.status = Status(status, description if status is StatusCode.ERROR else None)

    def record_exception(
        self,
        exception: BaseException,
        attributes: Attributes = None,
        timestamp: int | None = None,
        escaped: bool = False,
    ) -> None:
        cls = type(exception)
        try:
            message = str(exception)
        except Exception:
            message = f"<unprintable {cls.__name__}>"
        event: dict[str, Any] = {
            "exception.type": error_type(exception),
            "exception.message": message,
            "exception.stacktrace": "".join(
                traceback.format_exception(cls, exception, exception.__traceback__)
            ),
            "exception.escaped": str(escaped),
        }
        if attributes:
            event.update(attributes)
        self.add_event("exception", event, timestamp)

    def _now(self) -> int:
        """Now on the span's clock (see ``__init__``)."""
        return self.start_time + _perf_ns() - self._perf

    def end(self, end_time: int | None = None) -> None:
        if self.end_time is not None:
            return
        self.end_time = end_time or self.start_time + _perf_ns() - self._perf
        if not _default_limits:  # the pipeline's inlined writes assume the SDK's defaults
            self.attributes = _bounded(self.attributes, _attribute_limit, _length_limit)
        self._processor.submit(self)


def _dropped_one(items: Any) -> _CountedList:
    if items.__class__ is not _CountedList:
        items = _CountedList(items)
    items.dropped += 1
    return items  # type: ignore[no-any-return]


def start_server_span(
    sampler: Sampler,
    parent: Context | None,
    name: str,
    processor: CompactSpanProcessor,
    scope: Any,
    kind: SpanKind = SpanKind.SERVER,
) -> trace_api.Span:
    """Decide and start a span exactly as the SDK's ``Tracer.start_span`` would.

    Same sampler call, same id rules (random ids, the W3C random-trace-id flag), same trace
    state; a drop gives a ``NonRecordingSpan`` with the new ids.
    """
    # SpanContext is a tuple: (trace_id, span_id, is_remote, trace_flags, trace_state, is_valid).
    parent_ctx: SpanContext | None
    if _fastctx.DIRECT:  # current_span() inlined: most requests arrive with no parent span
        holder: Any = (parent if parent is not None else _get_current()).get(_fastctx.SPAN_KEY)
        parent_ctx = None if holder is None else holder.get_span_context()
    else:  # pragma: no cover - another runtime context
        holder = current_span(parent)
        parent_ctx = holder.get_span_context()
    if parent_ctx is not None and parent_ctx[5]:
        trace_id = parent_ctx[0]
        random_id = parent_ctx[3] & _RANDOM
    else:
        parent_ctx = None
        trace_id = _getrandbits(128)
        while not trace_id:
            trace_id = _getrandbits(128)
        random_id = _RANDOM
    fast = sampler.fast if isinstance(sampler, SwitchableSampler) else None
    if fast is not None:
        # A stock sampler: same decision, no SamplingResult (see sampling.fast_decision).
        sampled = fast(parent_ctx, trace_id)
        state = parent_ctx[4] if parent_ctx is not None else DEFAULT_TRACE_STATE
        attributes = None
    else:
        result = sampler.should_sample(parent, trace_id, name, kind)
        sampled = result.decision is Decision.RECORD_AND_SAMPLE
        state, attributes = result.trace_state or DEFAULT_TRACE_STATE, result.attributes
    span_id = _getrandbits(64)
    while not span_id:
        span_id = _getrandbits(64)
    # Built as SpanContext.__new__ would build it, without re-checking ids made valid here.
    context = _new_tuple(
        SpanContext,
        (trace_id, span_id, False, _FLAGS[(_SAMPLED if sampled else 0) | random_id], state, True),
    )
    if not sampled:
        return trace_api.NonRecordingSpan(context)
    span = ServerSpan(name, context, parent_ctx, kind, processor, scope)
    if holder.__class__ is ServerSpan:
        # A local parent of obskit's: its clock, so that a step of the wall clock between the
        # two starts puts neither span outside the other (the Java SDK shares its anchored
        # clock down a local trace the same way).
        span.start_time = holder.start_time + span._perf - holder._perf
    if attributes:
        span.set_attributes(attributes)
    return span


def start_lean_span(name: str, kind: SpanKind, scope: Any) -> trace_api.Span | None:
    """A span of ``kind`` under the current context, made by :func:`start_server_span` with
    obskit's sampler and pipeline; None when spans must go through the SDK tracer instead
    (``Runtime.lean_spans`` is off: not configured, ``keep_whole_trace``, or another span
    processor on obskit's provider)."""
    runtime = _state.runtime
    if runtime is None or not runtime.lean_spans or runtime.processor is None:
        return None
    return start_server_span(
        _runtime._install_global().sampler, None, name, runtime.processor, scope, kind
    )
