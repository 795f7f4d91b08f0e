"""Head samplers, keep-errors/slow tail decisions with bounded buffers, adaptive ratio."""

from __future__ import annotations

import random
import time
from typing import Any

import pytest
from opentelemetry import context, propagate, trace
from opentelemetry.sdk.trace import TracerProvider, sampling
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, Decision
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags

import obskit
from obskit.config import load_config
from obskit.exporters.jsonl import MemorySpanSink
from obskit.testing import capture, get_sample_value
from obskit.tracing.pipeline import CompactSpanProcessor
from obskit.tracing.sampling import (
    AdaptiveSampler,
    RateLimitedSampler,
    RecordDropped,
    build_sampler,
)

IDS = [random.Random(i).getrandbits(128) | 1 for i in range(10_000)]


def _decisions(sampler_name: str, arg: float) -> list[bool]:
    sampler = build_sampler(
        load_config({}, sampler=sampler_name, sampler_arg=arg, keep_errors=False)
    )
    return [
        sampler.should_sample(None, tid, "GET /").decision is Decision.RECORD_AND_SAMPLE
        for tid in IDS
    ]


@pytest.mark.parametrize("ratio", [0.01, 0.1, 0.25, 0.5])
def test_ratio_sampler_keeps_the_ratio_over_10000_traces(ratio: float) -> None:
    """traceidratio keeps ratio +- 3 standard deviations of 10,000 fixed trace ids."""
    kept = sum(_decisions("traceidratio", ratio)) / len(IDS)
    sigma = (ratio * (1 - ratio) / len(IDS)) ** 0.5
    assert abs(kept - ratio) < 3 * sigma + 1e-9


def test_ratio_decision_is_the_same_in_every_service() -> None:
    """Two independently built samplers (two services) decide alike for each trace id."""
    assert _decisions("traceidratio", 0.3) == _decisions("traceidratio", 0.3)


def _parent(sampled: bool, remote: bool) -> context.Context:
    flags = TraceFlags(TraceFlags.SAMPLED if sampled else TraceFlags.DEFAULT)
    ctx = SpanContext(0xABC, 0xDEF, is_remote=remote, trace_flags=flags)
    return trace.set_span_in_context(NonRecordingSpan(ctx))


@pytest.mark.parametrize("root_ratio", [0.0, 1.0])
@pytest.mark.parametrize("remote", [True, False])
@pytest.mark.parametrize("parent_sampled", [True, False])
def test_parent_based_follows_the_parent_flag(
    root_ratio: float, remote: bool, parent_sampled: bool
) -> None:
    """parentbased_* honours the parent's sampled flag, remote or local, whatever the ratio."""
    sampler = build_sampler(
        load_config(
            {}, sampler="parentbased_traceidratio", sampler_arg=root_ratio, keep_errors=False
        )
    )
    result = sampler.should_sample(_parent(parent_sampled, remote), 0xABC, "child")
    expected = Decision.RECORD_AND_SAMPLE if parent_sampled else Decision.DROP
    assert expected == result.decision


@pytest.mark.parametrize("root_ratio", [0.0, 1.0])
def test_parent_based_root_uses_the_ratio(root_ratio: float) -> None:
    """Without a parent, parentbased_traceidratio falls back to the ratio."""
    sampler = build_sampler(
        load_config(
            {}, sampler="parentbased_traceidratio", sampler_arg=root_ratio, keep_errors=False
        )
    )
    decision = sampler.should_sample(None, 0xABC, "root").decision
    assert (Decision.RECORD_AND_SAMPLE if root_ratio else Decision.DROP) == decision


def test_keep_errors_turns_drop_into_record_only() -> None:
    """With keep-errors on, a head drop is recorded (not sampled) so the tail can still keep it."""
    sampler = build_sampler(
        load_config({}, sampler="traceidratio", sampler_arg=0.0, keep_whole_trace=True)
    )
    assert Decision.RECORD_ONLY == sampler.should_sample(None, 0xABC, "root").decision


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_rate_limited_sampler_under_a_controlled_clock() -> None:
    """At most N new traces per second, refilled continuously, burst capped at N."""
    clock = FakeClock()
    sampler = RateLimitedSampler(5, clock=clock)

    def take(n: int) -> int:
        return sum(
            sampler.should_sample(None, i, "x").decision is Decision.RECORD_AND_SAMPLE
            for i in range(n)
        )

    assert 5 == take(100)
    clock.now += 0.2
    assert 1 == take(100)
    clock.now += 10.0
    assert 5 == take(100)


def test_adaptive_ratio_rises_with_errors_and_falls_back_when_calm() -> None:
    """Above the error threshold the ratio doubles up to max; when calm it halves to base."""
    clock = FakeClock()
    sampler = AdaptiveSampler(0.01, max_ratio=0.08, error_threshold=0.05, interval=1.0, clock=clock)
    ratios = []
    for _ in range(5):  # five stormy intervals: half the requests fail
        for i in range(100):
            sampler.record(error=i % 2 == 0)
        clock.now += 1.0
        sampler.record(error=True)
        ratios.append(sampler.ratio)
    for _ in range(5):  # five calm intervals
        for _ in range(100):
            sampler.record(error=False)
        clock.now += 1.0
        sampler.record(error=False)
        ratios.append(sampler.ratio)
    assert [0.02, 0.04, 0.08, 0.08, 0.08, 0.04, 0.02, 0.01, 0.01, 0.01] == ratios


def test_adaptive_sampler_is_fed_by_finished_requests() -> None:
    """Configured as sampler=adaptive, failing requests raise the ratio."""
    from obskit import _runtime
    from obskit.tracing.sampling import find_adaptive
    from obskit.wsgi import ObskitMiddleware

    with capture(sampler="adaptive", sampler_arg=0.01, adaptive_interval=0.01):
        app = ObskitMiddleware(_wsgi_app)
        for _ in range(3):
            for _ in range(20):
                _call(app, "/fail")
            time.sleep(0.02)
        adaptive = find_adaptive(_runtime._install_global().sampler.delegate)
        assert adaptive is not None
        assert adaptive.ratio > 0.01


def test_errors_are_kept_at_ratio_zero_with_their_children() -> None:
    """keep_whole_trace: a failing trace is exported with all its spans despite the head drop."""
    with capture(sampler="traceidratio", sampler_arg=0.0, keep_whole_trace=True) as cap:
        tracer = trace.get_tracer("t")
        with tracer.start_as_current_span("GET /ok"), tracer.start_as_current_span("db"):
            pass
        with tracer.start_as_current_span("GET /fail") as root:
            with tracer.start_as_current_span("db"):
                pass
            root.set_status(trace.StatusCode.ERROR, "boom")
        names = sorted(s.name for s in cap.spans())
    assert ["GET /fail", "db"] == names
    assert 1.0 == get_sample_value("obskit_traces_kept_total")


def test_slow_traces_are_kept() -> None:
    """keep_whole_trace: a trace slower than slow_threshold is exported despite the head drop."""
    with capture(
        sampler="traceidratio", sampler_arg=0.0, slow_threshold=0.05, keep_whole_trace=True
    ) as cap:
        tracer = trace.get_tracer("t")
        with tracer.start_as_current_span("fast"):
            pass
        with tracer.start_as_current_span("slow"):
            time.sleep(0.06)
        names = [s.name for s in cap.spans()]
    assert ["slow"] == names


def test_downstream_traceparent_matches_the_head_decision() -> None:
    """An unsampled (record-only) trace propagates flags 00; a sampled one 01."""
    with capture(sampler="traceidratio", sampler_arg=0.0, keep_whole_trace=True):
        tracer = trace.get_tracer("t")
        with tracer.start_as_current_span("root"):
            headers: dict[str, str] = {}
            propagate.inject(headers)
        assert 0 == int(headers["traceparent"][-2:], 16) & 1
    with capture(sampler="always_on"):
        with trace.get_tracer("t").start_as_current_span("root"):
            headers = {}
            propagate.inject(headers)
        assert 1 == int(headers["traceparent"][-2:], 16) & 1


def _flood_processor(**bounds: int) -> tuple[CompactSpanProcessor, TracerProvider]:
    processor = CompactSpanProcessor(
        MemorySpanSink(), resource_attributes={}, keep=lambda span: True, **bounds
    )
    provider = TracerProvider(sampler=RecordDropped(ALWAYS_OFF))
    provider.add_span_processor(processor)
    return processor, provider


def test_keep_buffer_bounds_traces_in_flight() -> None:
    """Thousands of undecided traces in flight: at most max_pending_traces are buffered."""
    processor, provider = _flood_processor(max_pending_traces=10)
    tracer = provider.get_tracer("t")
    roots = [tracer.start_span("root") for _ in range(1000)]
    for root in roots:
        ctx = trace.set_span_in_context(root)
        tracer.start_span("child", context=ctx).end()
    assert 10 == len(processor._pending)
    assert 990.0 == get_sample_value("obskit_spans_dropped_total", {"reason": "pending_traces"})
    for root in roots:
        root.end()
    assert 0 == len(processor._pending)
    processor.close(1.0)


def test_keep_buffer_bounds_spans_per_trace_and_bytes() -> None:
    """One huge trace cannot buffer more than max_spans_per_trace spans or max_pending_bytes."""
    processor, provider = _flood_processor(max_spans_per_trace=50, max_pending_bytes=4096)
    tracer = provider.get_tracer("t")
    root = tracer.start_span("root")
    ctx = trace.set_span_in_context(root)
    for _ in range(10_000):
        tracer.start_span("child", context=ctx, attributes={"k": "v" * 20}).end()
    assert processor._pending_bytes <= 4096
    root_ctx = root.get_span_context()
    assert len(processor._pending[root_ctx.trace_id, root_ctx.span_id]) <= 50
    dropped = sum(
        get_sample_value("obskit_spans_dropped_total", {"reason": r}) or 0.0
        for r in ("pending_spans_per_trace", "pending_bytes")
    )
    assert dropped >= 10_000 - 50
    root.end()
    assert 0 == processor._pending_bytes
    processor.close(1.0)


def test_bad_sampler_arguments_fail_at_configure() -> None:
    """Out-of-range sampler arguments are configure-time errors."""
    with pytest.raises(obskit.ConfigError, match="sampler_arg"):
        obskit.configure(sampler="adaptive", sampler_arg=0.5, adaptive_max_ratio=0.1)
    with pytest.raises(obskit.ConfigError, match="adaptive_max_ratio"):
        obskit.configure(sampler="adaptive", adaptive_max_ratio=2)


def _wsgi_app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    path = environ["PATH_INFO"]
    if path == "/slow":
        time.sleep(0.06)
    if path == "/raise":
        raise KeyError("missing")
    status = "503 Service Unavailable" if path == "/fail" else "200 OK"
    start_response(status, [("Content-Type", "text/plain")])
    return [b"ok"]


def _call(app: Any, path: str, traceparent: str | None = None) -> None:
    environ = {"REQUEST_METHOD": "GET", "PATH_INFO": path, "wsgi.url_scheme": "http"}
    if traceparent:
        environ["HTTP_TRACEPARENT"] = traceparent
    try:
        list(app(environ, lambda *args: None))
    except KeyError:
        pass


def test_head_dropped_requests_that_fail_or_are_slow_keep_their_server_span() -> None:
    """At ratio 0, a 5xx, an exception and a slow request still export their SERVER span."""
    from obskit.wsgi import ObskitMiddleware

    with capture(sampler="traceidratio", sampler_arg=0.0, slow_threshold=0.05) as cap:
        app = ObskitMiddleware(_wsgi_app, route_resolver=lambda environ: environ["PATH_INFO"])
        for path in ("/ok", "/fail", "/raise", "/slow", "/ok"):
            _call(app, path)
        spans = {s.name: s for s in cap.spans()}
    assert {"GET /fail", "GET /raise", "GET /slow"} == set(spans)
    assert 2 == spans["GET /fail"].status.code
    assert ["exception"] == [e.name for e in spans["GET /raise"].events]
    assert 3.0 == get_sample_value("obskit_traces_kept_total")


def test_kept_span_keeps_the_ids_already_propagated() -> None:
    """The rebuilt span has the trace id of the incoming header and its parent id."""
    from obskit.wsgi import ObskitMiddleware

    parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00"
    with capture(sampler="parentbased_traceidratio", sampler_arg=0.0) as cap:
        app = ObskitMiddleware(_wsgi_app)
        _call(app, "/fail", parent)
        (span,) = cap.spans()
    assert "4bf92f3577b34da6a3ce929d0e0e4736" == span.trace_id.hex()
    assert "00f067aa0ba902b7" == span.parent_span_id.hex()


def test_keep_errors_off_drops_failing_unsampled_requests() -> None:
    """keep_errors=False: a head-dropped failing request exports nothing."""
    from obskit.wsgi import ObskitMiddleware

    with capture(sampler="traceidratio", sampler_arg=0.0, keep_errors=False) as cap:
        _call(ObskitMiddleware(_wsgi_app), "/fail")
        assert [] == cap.spans()


# -- the request pipeline's fast decision path -------------------------------------------------


def _stock_samplers() -> list[sampling.Sampler]:
    from obskit.tracing.sampling import AdaptiveSampler

    ratio = sampling.TraceIdRatioBased(0.3)
    return [
        sampling.ALWAYS_ON,
        sampling.ALWAYS_OFF,
        ratio,
        AdaptiveSampler(0.2, max_ratio=0.5),
        sampling.ParentBased(ratio),
        sampling.ParentBased(sampling.ALWAYS_OFF),
        sampling.ParentBased(
            ratio,
            remote_parent_sampled=sampling.ALWAYS_OFF,
            remote_parent_not_sampled=sampling.ALWAYS_ON,
            local_parent_not_sampled=ratio,
        ),
    ]


@pytest.mark.parametrize("sampler", _stock_samplers(), ids=lambda s: s.get_description())
def test_fast_decision_agrees_with_should_sample(sampler: sampling.Sampler) -> None:
    """Same decision as the sampler itself, for roots and for every kind of parent."""
    from obskit.tracing.sampling import fast_decision

    decide = fast_decision(sampler)
    assert decide is not None
    rng = random.Random(7)
    parents: list[SpanContext | None] = [None]
    for remote in (True, False):
        for flags in (0, 1):
            parents.append(SpanContext(rng.getrandbits(128), 1, remote, TraceFlags(flags)))
    for parent in parents:
        context = (
            trace.set_span_in_context(NonRecordingSpan(parent)) if parent is not None else None
        )
        for _ in range(2000):
            trace_id = parent.trace_id if parent is not None else rng.getrandbits(128)
            trace_id ^= rng.getrandbits(64)  # vary the low bits the ratio samplers look at
            expected = sampler.should_sample(context, trace_id, "span").decision.is_sampled()
            assert decide(parent, trace_id) is expected


def test_fast_decision_declines_other_samplers() -> None:
    from obskit.tracing.sampling import RateLimitedSampler, RecordDropped, fast_decision

    assert fast_decision(RateLimitedSampler(5)) is None
    assert fast_decision(RecordDropped(sampling.ALWAYS_ON)) is None
    assert fast_decision(sampling.ParentBased(RateLimitedSampler(5))) is None


def test_switchable_sampler_fast_path_follows_its_delegate() -> None:
    from obskit.tracing.sampling import RateLimitedSampler, SwitchableSampler

    switch = SwitchableSampler(sampling.ALWAYS_OFF)
    assert switch.fast is not None
    assert switch.fast(None, 1) is False
    switch.delegate = sampling.ALWAYS_ON
    assert switch.fast is not None
    assert switch.fast(None, 1) is True
    switch.delegate = RateLimitedSampler(1)
    assert switch.fast is None
