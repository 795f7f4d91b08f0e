"""Head samplers: the OpenTelemetry SDK's own, plus a rate-limited one, built from configuration.

Standard names (``always_on``, ``traceidratio``, ``parentbased_*``...) map to the SDK's samplers so
the same trace id gets the same decision in every service that uses the same ratio. obskit adds
``ratelimited`` (at most N new traces per second, token bucket) and ``parentbased_ratelimited``.

Keep-errors/slow works in two ways. By default a head-dropped request gets a cheap
non-recording span, and the request pipeline rebuilds its SERVER span only if the request fails
or is slow (child spans of such a request are not kept). With ``keep_whole_trace`` a head "drop"
becomes ``RECORD_ONLY``: every span is recorded but not marked sampled (so ``traceparent``
downstream and ``trace_flags`` in logs have the sampled bit only for head-sampled traces), and
the span pipeline buffers the local trace until its root ends -- complete traces, at the cost of
recording them all.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence

from opentelemetry.context import Context
from opentelemetry.sdk.trace import sampling
from opentelemetry.trace import Link, SpanContext, SpanKind, TraceState, get_current_span
from opentelemetry.util.types import Attributes

from obskit.config import Config, sampler_arg_default

__all__ = [
    "TRACES_OFF",
    "AdaptiveSampler",
    "Forwarded",
    "RateLimitedSampler",
    "RecordDropped",
    "SwitchableSampler",
    "TracesOffSampler",
    "build_sampler",
    "fast_decision",
]


class RateLimitedSampler(sampling.Sampler):
    """Sample at most ``rate`` new traces per second (token bucket, burst of ``max(1, rate)``)."""

    def __init__(self, rate: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = float(rate)
        self.capacity = max(1.0, self.rate)
        self._tokens = self.capacity
        self._clock = clock
        self._last = clock()
        self._lock = threading.Lock()

    def should_sample(
        self,
        parent_context: Context | None,
        trace_id: int,
        name: str,
        kind: SpanKind | None = None,
        attributes: Attributes = None,
        links: Sequence[Link] | None = None,
        trace_state: TraceState | None = None,
    ) -> sampling.SamplingResult:
        local = _local_parent(parent_context)
        if local is not None:  # a span of a trace this process already decided: the same answer
            return local
        with self._lock:
            now = self._clock()
            # max(): a clock stepped back (a wall clock given as clock=) must not owe tokens.
            self._tokens = min(self.capacity, self._tokens + max(0.0, now - self._last) * self.rate)
            self._last = now
            take = self._tokens >= 1.0
            if take:
                self._tokens -= 1.0
        decision = sampling.Decision.RECORD_AND_SAMPLE if take else sampling.Decision.DROP
        return sampling.SamplingResult(decision, None, _parent_state(parent_context))

    def get_description(self) -> str:
        return f"RateLimitedSampler{{{self.rate}/s}}"


class AdaptiveSampler(sampling.Sampler):
    """Trace-id ratio sampling whose ratio follows the error rate, as the seeds' SRE teams do.

    Every ``interval`` seconds the error rate of the HTTP requests served in that interval is
    compared with ``error_threshold``: above it the ratio doubles (up to ``max_ratio``), otherwise
    it halves (down to ``base``). The decision is still a function of the trace id, so services
    running the same ratio keep or drop the same traces. Outcomes are fed by the HTTP request
    pipeline (:meth:`record`, once per request, sampled or not); other local roots
    (``@obskit.red`` calls, background jobs) do not move the ratio.
    """

    def __init__(
        self,
        base: float,
        *,
        max_ratio: float = 0.1,
        error_threshold: float = 0.01,
        interval: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not 0.0 <= base <= max_ratio <= 1.0:
            raise ValueError(f"need 0 <= base ({base}) <= max_ratio ({max_ratio}) <= 1")
        self.base = base
        self.max_ratio = max_ratio
        self.error_threshold = error_threshold
        self.interval = interval
        self._clock = clock
        self._lock = threading.Lock()
        self._window_start = clock()
        self._total = 0
        self._errors = 0
        self._set_ratio(base)

    def _set_ratio(self, ratio: float) -> None:
        self.ratio = ratio
        self._bound = sampling.TraceIdRatioBased.get_bound_for_rate(ratio)

    def record(self, error: bool) -> None:
        """Count one finished local root; adjust the ratio when the interval is over."""
        with self._lock:
            self._total += 1
            self._errors += error
            now = self._clock()
            if now - self._window_start < self.interval:
                return
            rate = self._errors / self._total
            if rate > self.error_threshold:
                self._set_ratio(min(self.max_ratio, max(self.ratio, 1e-6) * 2))
            else:
                self._set_ratio(max(self.base, self.ratio / 2))
            self._window_start, self._total, self._errors = now, 0, 0

    def should_sample(
        self,
        parent_context: Context | None,
        trace_id: int,
        name: str,
        kind: SpanKind | None = None,
        attributes: Attributes = None,
        links: Sequence[Link] | None = None,
        trace_state: TraceState | None = None,
    ) -> sampling.SamplingResult:
        local = _local_parent(parent_context)
        if local is not None:  # the ratio may have moved since this trace's root was decided
            return local
        # Same rule as TraceIdRatioBased: the low 64 bits of the trace id against a bound.
        if trace_id & sampling.TraceIdRatioBased.TRACE_ID_LIMIT < self._bound:
            decision = sampling.Decision.RECORD_AND_SAMPLE
        else:
            decision = sampling.Decision.DROP
        return sampling.SamplingResult(decision, None, _parent_state(parent_context))

    def get_description(self) -> str:
        return f"AdaptiveSampler{{{self.base}..{self.max_ratio}, now {self.ratio}}}"


def find_adaptive(sampler: sampling.Sampler) -> AdaptiveSampler | None:
    """The adaptive sampler inside a composition, if any."""
    while True:
        if isinstance(sampler, AdaptiveSampler):
            return sampler
        inner = getattr(sampler, "delegate", None) or getattr(sampler, "_root", None)
        if inner is None:
            return None
        sampler = inner


def _local_parent(parent_context: Context | None) -> sampling.SamplingResult | None:
    """The parent's own decision when the parent is a span of this process: samplers whose
    answer can change from one call to the next (a token bucket, a moving ratio) must give a
    trace's later spans -- a CLIENT span, a decorated function -- the answer its root got, or
    the log line, the trace and the downstream ``traceparent`` would disagree. A remote parent
    is left to ``parentbased_*``, as OpenTelemetry's samplers leave it."""
    ctx = get_current_span(parent_context).get_span_context()
    if not ctx.is_valid or ctx.is_remote:
        return None
    decision = (
        sampling.Decision.RECORD_AND_SAMPLE if ctx.trace_flags.sampled else sampling.Decision.DROP
    )
    return sampling.SamplingResult(decision, None, ctx.trace_state)


def _parent_state(parent_context: Context | None) -> TraceState | None:
    ctx = get_current_span(parent_context).get_span_context()
    return ctx.trace_state if ctx.is_valid else None


class RecordDropped(sampling.Sampler):
    """Turn a delegate's DROP into RECORD_ONLY so keep-errors/slow can still export the trace."""

    def __init__(self, delegate: sampling.Sampler) -> None:
        self.delegate = delegate

    def should_sample(
        self,
        parent_context: Context | None,
        trace_id: int,
        name: str,
        kind: SpanKind | None = None,
        attributes: Attributes = None,
        links: Sequence[Link] | None = None,
        trace_state: TraceState | None = None,
    ) -> sampling.SamplingResult:
        result = self.delegate.should_sample(
            parent_context, trace_id, name, kind, attributes, links, trace_state
        )
        if result.decision is sampling.Decision.DROP:
            # The SDK gives a span the attributes of its sampling result, and a DROP result
            # carries none: the span's own start attributes go on with it, or a kept trace would
            # lose them (those other instrumentations set at start_span).
            kept = {**attributes, **(result.attributes or {})} if attributes else result.attributes
            return sampling.SamplingResult(sampling.Decision.RECORD_ONLY, kept, result.trace_state)
        return result

    def get_description(self) -> str:
        return f"RecordDropped{{{self.delegate.get_description()}}}"


#: ``decide(parent, trace_id) -> sampled``: the decision of a stock sampler without building a
#: ``SamplingResult``; ``parent`` is the valid parent span context or None.
FastDecision = Callable[[SpanContext | None, int], bool]


def fast_decision(sampler: sampling.Sampler) -> FastDecision | None:
    """An equivalent decision function for the SDK's stock samplers (and the adaptive one).

    These decide on the trace id and the parent's flags alone, add no attributes and pass the
    parent's trace state on, so the request pipeline can skip the general ``should_sample`` call
    and its result object on every request. None for anything else (rate-limited, custom
    samplers, ``RecordDropped``): those are asked through ``should_sample`` as usual.
    """
    kind = type(sampler)
    if kind is sampling.StaticSampler:
        sampled = sampler._decision is sampling.Decision.RECORD_AND_SAMPLE  # type: ignore[attr-defined]
        return (lambda parent, trace_id: True) if sampled else (lambda parent, trace_id: False)
    limit = sampling.TraceIdRatioBased.TRACE_ID_LIMIT
    if kind is sampling.TraceIdRatioBased:
        bound = sampler.bound  # type: ignore[attr-defined]
        return lambda parent, trace_id: trace_id & limit < bound
    if kind is AdaptiveSampler:
        adaptive: AdaptiveSampler = sampler  # type: ignore[assignment]

        def adaptive_decision(parent: SpanContext | None, trace_id: int) -> bool:
            if parent is not None and parent.is_valid and not parent.is_remote:
                return bool(parent.trace_flags & 1)  # as should_sample: the root's answer
            return trace_id & limit < adaptive._bound

        return adaptive_decision
    if kind is not sampling.ParentBased:
        return None
    parts = [
        fast_decision(getattr(sampler, name, None))  # type: ignore[arg-type]
        for name in (
            "_root",
            "_remote_parent_sampled",
            "_remote_parent_not_sampled",
            "_local_parent_sampled",
            "_local_parent_not_sampled",
        )
    ]
    if any(part is None for part in parts):
        return None
    root, remote_sampled, remote_not, local_sampled, local_not = parts
    # The usual production root, a ratio, is decided inline: no second call per request.
    root_ratio = type(sampler._root) is sampling.TraceIdRatioBased  # type: ignore[attr-defined]
    bound = sampler._root.bound if root_ratio else 0  # type: ignore[attr-defined]

    def decide(parent: SpanContext | None, trace_id: int) -> bool:
        if parent is None:
            if root_ratio:
                return trace_id & limit < bound
            return root(parent, trace_id)  # type: ignore[misc]
        if parent.is_remote:
            chosen = remote_sampled if parent.trace_flags & 1 else remote_not
        else:
            chosen = local_sampled if parent.trace_flags & 1 else local_not
        return chosen(parent, trace_id)  # type: ignore[misc]

    return decide


class Forwarded(TraceState):
    """The trace state of a span made while obskit records no spans: the parent's members, and
    :attr:`forward`, what a call made under the span sends downstream.

    The SDK gives every span a new span id and, for a dropped one, flags without the sampled bit:
    injected as it is, such a span would name a parent nobody exports and turn tracing off
    downstream. obskit's injectors (:func:`obskit.inject`, the outbound hooks, and the
    ``tracecontext`` propagator obskit puts in the global one) send :attr:`forward` instead --
    the context the span was made under, unchanged, as a W3C "forwarding" service does.
    """

    def __init__(self, state: TraceState, forward: SpanContext | None) -> None:
        super().__init__(list(state.items()) if state else None)
        #: The parent's span context (a remote one: the incoming request's), passed on by every
        #: span below; None under a root span (nothing to forward).
        self.forward = forward


class TracesOffSampler(sampling.Sampler):
    """The sampler while obskit records no spans (traces off, disabled, not configured yet or
    shut down): every span is dropped, and marked (:class:`Forwarded`) so that a call made
    under it forwards the context it came under instead of the span's own, unexported, id.

    A sampler cannot keep the parent's span id or sampled flag (the SDK makes a new id and sets
    the flag from the decision), so the forwarding is done where the headers are written."""

    def should_sample(
        self,
        parent_context: Context | None,
        trace_id: int,
        name: str,
        kind: SpanKind | None = None,
        attributes: Attributes = None,
        links: Sequence[Link] | None = None,
        trace_state: TraceState | None = None,
    ) -> sampling.SamplingResult:
        parent = get_current_span(parent_context).get_span_context()
        if not parent.is_valid:
            return _ROOT_OFF
        state = parent.trace_state
        if type(state) is not Forwarded or parent.trace_flags.sampled:
            # The first span below the parent: forward the parent (a span below it forwards
            # the same, through the same state).
            state = Forwarded(state, parent)
        return sampling.SamplingResult(sampling.Decision.DROP, None, state)

    def get_description(self) -> str:
        return "TracesOff"


_ROOT_OFF = sampling.SamplingResult(sampling.Decision.DROP, None, Forwarded(TraceState(), None))
#: The sampler obskit's provider uses whenever no span pipeline is configured.
TRACES_OFF = TracesOffSampler()


class SwitchableSampler(sampling.Sampler):
    """The process-wide provider's sampler; reconfiguring obskit swaps its delegate."""

    def __init__(self, delegate: sampling.Sampler) -> None:
        self.delegate = delegate

    @property
    def delegate(self) -> sampling.Sampler:
        """The sampler that decides; ``fast`` follows it."""
        return self._delegate

    @delegate.setter
    def delegate(self, sampler: sampling.Sampler) -> None:
        # ``fast`` is a plain attribute, read once per span. A decision uses either ``fast`` or
        # the delegate, never both, so a read between the two assignments still decides as one
        # sampler would (the old one or the new one).
        self.fast: FastDecision | None = fast_decision(sampler)
        self._delegate = sampler

    def should_sample(
        self,
        parent_context: Context | None,
        trace_id: int,
        name: str,
        kind: SpanKind | None = None,
        attributes: Attributes = None,
        links: Sequence[Link] | None = None,
        trace_state: TraceState | None = None,
    ) -> sampling.SamplingResult:
        return self.delegate.should_sample(
            parent_context, trace_id, name, kind, attributes, links, trace_state
        )

    def get_description(self) -> str:
        return self.delegate.get_description()


def build_sampler(config: Config) -> sampling.Sampler:
    """The head sampler the configuration asks for."""
    name = config.sampler
    given = config.sampler_arg
    arg: float = given if given is not None else sampler_arg_default(name) or 0.0
    root: sampling.Sampler
    base = name.removeprefix("parentbased_")
    if base == "always_on":
        root = sampling.ALWAYS_ON
    elif base == "always_off":
        root = sampling.ALWAYS_OFF
    elif base == "traceidratio":
        root = sampling.TraceIdRatioBased(arg)
    elif base == "adaptive":
        root = AdaptiveSampler(
            arg,
            max_ratio=config.adaptive_max_ratio,
            error_threshold=config.adaptive_error_threshold,
            interval=config.adaptive_interval,
        )
    else:  # ratelimited
        root = RateLimitedSampler(arg)
    sampler: sampling.Sampler = (
        sampling.ParentBased(root) if name.startswith("parentbased_") else root
    )
    if config.keep_whole_trace and (config.keep_errors or config.slow_threshold is not None):
        sampler = RecordDropped(sampler)
    return sampler
