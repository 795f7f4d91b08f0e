"""Cost per call of ``@obskit.red`` and of the cardinality guard, against what they replace.

Part (a), nanoseconds per call of a one-line function ``f(x) -> x``:

- ``bare``: the function alone (the loop and call overhead every other row also pays);
- ``obskit.red``: ``@obskit.red`` (counter + histogram, result ok/error);
- ``hand-written``: the seeds' prometheus_client RED wrapper -- ``perf_counter()`` around the call,
  then ``Counter.labels(fn, module, result).inc()`` and ``Histogram.labels(fn, module).observe()``
  with the labels looked up on every call (the seeds pass them as keywords, which is slower still);
- ``otel span``: a raw OpenTelemetry SDK span around the call (``tracer.start_as_current_span``,
  SDK ``TracerProvider``, one no-op span processor, sampled): what tracing alone costs;
- ``obskit.red(trace=True) unsampled``: inside an unsampled trace of this process (a local
  parent span with flags ``00``, as inside an unsampled request): no span is created;
- ``obskit.red(trace=True) unsampled, remote parent``: under an extracted ``traceparent`` with
  flags ``00`` (a consumer that attached its producer's context): the sampler is asked, and its
  drop makes no span either;
- ``obskit.red(trace=True) sampled``: inside a sampled parent, each call an INTERNAL span through
  obskit's real pipeline (encoded to OTLP protobuf at span end and queued for a null exporter).

Part (b), nanoseconds per observation on a label set already seen: ``instrument.labels("GET",
"/items/{id}").inc()`` through obskit's guard; prometheus_client's own ``metric.labels(...).inc()``
(the same update without the guard); the cheapest unguarded lookup a Python ``labels(*values)``
can be (``def lookup(*values): return children[values]`` over a dict of the same children); and
the child kept by the caller (``child.inc()``, no label lookup at all), for a Counter and a
Histogram. The guard's overhead is reported against each of the three, and the kept child
against prometheus_client's own kept child.

Every row is a tight ``for`` loop compiled for its statement (as ``timeit`` does, but with the
garbage collector left on); rows run interleaved in each round, in a rotating order, after a
warm-up; the table gives the median and the minimum over rounds.

Run: ``python benchmarks/bench_metrics.py [--calls N] [--rounds R]`` (about 30 s by default on a
2-core VM).
"""

from __future__ import annotations

import argparse
import functools
import gc
import itertools
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.trace import NonRecordingSpan, SpanContext
from prometheus_client import CollectorRegistry, Counter, Histogram

import obskit
from obskit import _runtime
from obskit.config import load_config
from obskit.testing import get_sample_value

#: @obskit.red must cost less than the hand-written wrapper.
RED_VS_HANDWRITTEN = 1.0
#: (traced unsampled - bare) / (red - bare) at most.
UNSAMPLED_VS_RED = 1.5
#: What the guard adds to an update on a known label set, nanoseconds at most.
GUARD_NS = 100.0

Run = Callable[[int], int]


# -- timing -----------------------------------------------------------------------------------


def loop(stmt: str, namespace: dict[str, Any]) -> Run:
    """``run(n)``: execute ``stmt`` n times in a compiled loop, return elapsed nanoseconds."""
    source = (
        "def _run(_n):\n"
        "    _start = _clock()\n"
        "    for _ in _repeat(None, _n):\n"
        f"        {stmt}\n"
        "    return _clock() - _start\n"
    )
    scope = dict(namespace, _clock=time.perf_counter_ns, _repeat=itertools.repeat)
    exec(compile(source, f"<bench {stmt}>", "exec"), scope)
    run: Run = scope["_run"]
    return run


def in_context(ctx: otel_context.Context, run: Run) -> Run:
    """``run`` with ``ctx`` attached (the parent span of the calls)."""

    def wrapped(n: int) -> int:
        token = otel_context.attach(ctx)
        try:
            return run(n)
        finally:
            otel_context.detach(token)

    return wrapped


def measure(runs: dict[str, Run], rounds: int, calls: int) -> dict[str, list[float]]:
    """ns per call of each run, one value per round, runs interleaved in a rotating order."""
    for run in runs.values():
        run(min(calls, 2_000))  # warm up: metric children, caches, the span pipeline
    results: dict[str, list[float]] = {name: [] for name in runs}
    order = list(runs)
    for index in range(rounds):
        shift = index % len(order)
        for name in order[shift:] + order[:shift]:
            gc.collect()
            results[name].append(runs[name](calls) / calls)
    return results


# -- part (a): @obskit.red ----------------------------------------------------------------------


class NullSink:
    """A span sink that accepts everything (no network): the pipeline up to the exporter."""

    name = "null"

    def export(self, request: bytes, count: int, timeout: float) -> bool:
        return True

    def shutdown(self) -> None:
        pass


class NoopProcessor(SpanProcessor):
    """The cheapest span processor: receives each span and does nothing."""


def handwritten_red(calls: Counter, duration: Histogram) -> Callable[[Any], Any]:
    """The seeds' hand-written prometheus_client RED decorator (labels looked up per call)."""

    def decorator(func: Callable[..., Any]) -> Callable[..., Any]:
        name, module = func.__name__, func.__module__

        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            result = "ok"
            try:
                return func(*args, **kwargs)
            except Exception:
                result = "error"
                raise
            finally:
                calls.labels(name, module, result).inc()
                duration.labels(name, module).observe(time.perf_counter() - start)

        return wrapper

    return decorator


def red_variants() -> dict[str, Run]:
    """Part (a): name -> run(n)."""

    def f(x: Any) -> Any:
        return x

    red_f = obskit.red(name="f")(f)
    traced_f = obskit.red(name="traced_f", trace=True)(f)

    registry = CollectorRegistry()
    calls = Counter("hand_calls", "Calls.", ["function", "module", "result"], registry=registry)
    duration = Histogram(
        "hand_duration_seconds", "Duration.", ["function", "module"], registry=registry
    )
    hand_f = handwritten_red(calls, duration)(f)

    otel_provider = TracerProvider()
    otel_provider.add_span_processor(NoopProcessor())
    otel_tracer = otel_provider.get_tracer("bench")

    def otel_f(x: Any) -> Any:
        with otel_tracer.start_as_current_span("bench.f"):
            return x

    unsampled, unsampled_remote = (
        trace.set_span_in_context(
            NonRecordingSpan(
                SpanContext(
                    0x0AF7651916CD43DD8448EB211C80319C, 0xB7AD6B7169203331, is_remote=remote
                )
            )
        )
        for remote in (False, True)
    )
    parent = obskit.tracer_provider().get_tracer("bench").start_span("parent")
    assert parent.is_recording(), "obskit must sample the parent (always_on)"
    sampled = trace.set_span_in_context(parent)

    return {
        "bare": loop("f(1)", {"f": f}),
        "obskit.red": loop("f(1)", {"f": red_f}),
        "hand-written prometheus": loop("f(1)", {"f": hand_f}),
        "otel span (SDK, no-op processor)": loop("f(1)", {"f": otel_f}),
        "obskit.red(trace=True) unsampled": in_context(unsampled, loop("f(1)", {"f": traced_f})),
        "obskit.red(trace=True) unsampled, remote parent": in_context(
            unsampled_remote, loop("f(1)", {"f": traced_f})
        ),
        "obskit.red(trace=True) sampled": in_context(sampled, loop("f(1)", {"f": traced_f})),
    }


# -- part (b): the cardinality guard ------------------------------------------------------------


def guard_variants() -> dict[str, Run]:
    """Part (b): name -> run(n), for a Counter and a Histogram."""
    registry = CollectorRegistry()
    runs: dict[str, Run] = {"empty loop": loop("pass", {})}
    kinds: dict[str, tuple[Any, Any, str]] = {
        "counter": (
            obskit.counter("bench_requests", "Requests.", ["method", "route"]),
            Counter("prom_requests", "Requests.", ["method", "route"], registry=registry),
            "inc()",
        ),
        "histogram": (
            obskit.histogram("bench_latency_seconds", "Latency.", ["method", "route"]),
            Histogram("prom_latency_seconds", "Latency.", ["method", "route"], registry=registry),
            "observe(0.01)",
        ),
    }
    for kind, (guarded, prom, op) in kinds.items():
        child = guarded.labels("GET", "/items/{id}")
        children = {("GET", "/items/{id}"): child}

        def lookup(*values: Any, children: dict[tuple[Any, ...], Any] = children) -> Any:
            return children[values]

        prom_child = prom.labels("GET", "/items/{id}")
        names = {
            "guarded": guarded,
            "child": child,
            "prom": prom,
            "prom_child": prom_child,
            "lookup": lookup,
        }
        runs[f"{kind}: guarded"] = loop(f'guarded.labels("GET", "/items/{{id}}").{op}', names)
        runs[f"{kind}: guarded labels() alone"] = loop(
            'guarded.labels("GET", "/items/{id}")', names
        )
        runs[f"{kind}: cached child"] = loop(f"child.{op}", names)
        runs[f"{kind}: prometheus cached child"] = loop(f"prom_child.{op}", names)
        runs[f"{kind}: unguarded dict lookup"] = loop(f'lookup("GET", "/items/{{id}}").{op}', names)
        runs[f"{kind}: prometheus labels()"] = loop(
            f'prom.labels("GET", "/items/{{id}}").{op}', names
        )
    return runs


# -- report -----------------------------------------------------------------------------------


def table(results: dict[str, list[float]], base: str | None, header: str) -> str:
    """A Markdown table: median and min ns per call, and (with ``base``) the median minus base."""
    extra_header = f" +ns vs {base} |" if base else ""
    rows = [
        f"| {header} | ns (median) | ns (min) |{extra_header}",
        "|---|---:|---:|" + ("---:|" if base else ""),
    ]
    base_ns = statistics.median(results[base]) if base else 0.0
    for name, values in results.items():
        median = statistics.median(values)
        row = f"| {name} | {median:,.0f} | {min(values):,.0f} |"
        if base:
            row += f" {median - base_ns:+,.0f} |" if name != base else " |"
        rows.append(row)
    return "\n".join(rows)


def verdict(ok: bool) -> str:
    return "met" if ok else "NOT met"


def report(a: dict[str, list[float]], b: dict[str, list[float]]) -> list[str]:
    """The ratios the issue targets, with whether each target is met."""
    med = {name: statistics.median(values) for name, values in {**a, **b}.items()}
    bare = med["bare"]
    red = med["obskit.red"] - bare
    hand = med["hand-written prometheus"] - bare
    lines = [
        f"- @obskit.red vs hand-written wrapper (added cost): {red:,.0f} ns vs {hand:,.0f} ns = "
        f"{red / hand:.2f}x; target < {RED_VS_HANDWRITTEN:.0f}x: "
        f"{verdict(red / hand < RED_VS_HANDWRITTEN)}",
    ]
    for row in ("unsampled", "unsampled, remote parent"):
        # Paired within each round (rows of a round run seconds apart), so that a noisy round
        # moves both sides of its ratio; and from the minimums, the least disturbed reading.
        traced = a[f"obskit.red(trace=True) {row}"]
        paired = statistics.median(
            (t - b) / (r - b) for t, r, b in zip(traced, a["obskit.red"], a["bare"], strict=True)
        )
        low = (min(traced) - min(a["bare"])) / (min(a["obskit.red"]) - min(a["bare"]))
        lines.append(
            f"- trace=True {row} vs metrics only: (traced - bare) / (red - bare), median of the "
            f"rounds' ratios {paired:.2f}x, of the minimums {low:.2f}x; target <= "
            f"{UNSAMPLED_VS_RED}x: {verdict(paired <= UNSAMPLED_VS_RED)}"
        )
    for kind in ("counter", "histogram"):
        guarded = med[f"{kind}: guarded"]
        alone = med[f"{kind}: guarded labels() alone"] - med["empty loop"]
        lines.append(f"- guard overhead ({kind}; guarded labels() alone: {alone:,.0f} ns):")
        for base, meaning in (
            ("prometheus labels()", "the same update without the guard"),
            ("unguarded dict lookup", "the cheapest Python labels(*values)"),
            ("cached child", "no label lookup at all"),
        ):
            added = guarded - med[f"{kind}: {base}"]
            lines.append(
                f"  - vs {base} ({meaning}): {added:+,.0f} ns; target <= {GUARD_NS:.0f} ns: "
                f"{verdict(added <= GUARD_NS)}"
            )
        # A caller that keeps the child pays the guard once, at labels(): per observation the
        # guarded child is prometheus_client's own.
        kept = med[f"{kind}: cached child"] - med[f"{kind}: prometheus cached child"]
        lines.append(
            f"  - child kept by the caller, guarded vs prometheus_client's: {kept:+,.0f} ns; "
            f"target <= {GUARD_NS:.0f} ns: {verdict(kept <= GUARD_NS)}"
        )
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=50_000, help="calls per row per round")
    parser.add_argument("--rounds", type=int, default=9)
    args = parser.parse_args(argv)
    began = time.monotonic()
    _runtime._configure(
        load_config(service_name="bench", sampler="parentbased_always_on", bsp_schedule_delay=0.05),
        sink=NullSink(),
    )
    a = measure(red_variants(), args.rounds, args.calls)
    b = measure(guard_variants(), args.rounds, args.calls)
    dropped = get_sample_value("obskit_spans_dropped_total", {"reason": "queue_full"}) or 0.0
    obskit.shutdown()
    print(
        f"{args.rounds} rounds x {args.calls:,} calls per row; Python "
        f"{platform.python_version()} on {platform.machine()}, {os.cpu_count()} CPUs"
    )
    print()
    print("(a) one call of f(x) -> x")
    print()
    print(table(a, "bare", "variant"))
    print()
    print("(b) one observation on a label set already seen")
    print()
    print(table(b, None, "statement"))
    print()
    for line in report(a, b):
        print(line)
    if dropped:
        print(f"- sampled spans dropped by the full export queue: {dropped:,.0f}")
    print(f"took {time.monotonic() - began:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
