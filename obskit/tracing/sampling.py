"""Head samplers: the OpenTelemetry SDK's own, plus a rate-limited one, built from configuration.

Standard names (``always_on``, ``traceidratio``, ``parentbased_*``...) map to the SDK's samplers so
the same trace id gets the same decision in every service that uses the same ratio. obskit adds
``ratelimited`` (at most N new traces per second, token bucket) and ``parentbased_ratelimited``.

When the keep-errors/slow policy is on, a head "drop" becomes ``RECORD_ONLY``: the spans are
recorded but not marked sampled (so ``traceparent`` downstream and ``trace_flags`` in logs say
01 only for head-sampled traces), and the span pipeline buffers them until the local root ends.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence

from opentelemetry.context import Context
from opentelemetry.sdk.trace import sampling
from opentelemetry.trace import Link, SpanKind, TraceState
from opentelemetry.util.types import Attributes

from obskit.config import Config

__all__ = ["RateLimitedSampler", "RecordDropped", "SwitchableSampler", "build_sampler"]


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
        with self._lock:
            now = self._clock()
            self._tokens = min(self.capacity, self._tokens + (now - self._last) * self.rate)
            self._last = now
            take = self._tokens >= 1.0
            if take:
                self._tokens -= 1.0
        decision = sampling.Decision.RECORD_AND_SAMPLE if take else sampling.Decision.DROP
        return sampling.SamplingResult(decision, None, _parent_state(parent_context))

    def get_description(self) -> str:
        return f"RateLimitedSampler{{{self.rate}/s}}"


def _parent_state(parent_context: Context | None) -> TraceState | None:
    from opentelemetry.trace import get_current_span

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
            return sampling.SamplingResult(
                sampling.Decision.RECORD_ONLY, result.attributes, result.trace_state
            )
        return result

    def get_description(self) -> str:
        return f"RecordDropped{{{self.delegate.get_description()}}}"


class SwitchableSampler(sampling.Sampler):
    """The process-wide provider's sampler; reconfiguring obskit swaps its delegate."""

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
        return self.delegate.should_sample(
            parent_context, trace_id, name, kind, attributes, links, trace_state
        )

    def get_description(self) -> str:
        return self.delegate.get_description()


def build_sampler(config: Config) -> sampling.Sampler:
    """The head sampler the configuration asks for."""
    name = config.sampler
    arg = config.sampler_arg
    root: sampling.Sampler
    base = name.removeprefix("parentbased_")
    if base == "always_on":
        root = sampling.ALWAYS_ON
    elif base == "always_off":
        root = sampling.ALWAYS_OFF
    elif base == "traceidratio":
        root = sampling.TraceIdRatioBased(1.0 if arg is None else arg)
    else:  # ratelimited
        root = RateLimitedSampler(100.0 if arg is None else arg)
    sampler: sampling.Sampler = (
        sampling.ParentBased(root) if name.startswith("parentbased_") else root
    )
    if config.keep_errors or config.slow_threshold is not None:
        sampler = RecordDropped(sampler)
    return sampler
