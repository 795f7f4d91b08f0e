"""W3C Trace Context in and out: obskit's strict ``traceparent``/``tracestate`` parser follows the
Recommendation's rules, counts what it rejects, and ``extract``/``inject`` never raise.

The rules are tables of ``(header value, expected result)``; every rejected value must also be
counted once in ``obskit_propagation_invalid_total{header,reason}``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry import baggage, propagate, trace
from opentelemetry.context import Context
from opentelemetry.propagators.composite import CompositePropagator
from opentelemetry.propagators.textmap import (
    CarrierT,
    Getter,
    Setter,
    TextMapPropagator,
    default_getter,
    default_setter,
)
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags, TraceState
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

import obskit
from obskit import _state
from obskit.testing import get_sample_value
from obskit.tracing.propagation import extract, inject, parse_traceparent, parse_tracestate

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
SPAN = "00f067aa0ba902b7"
TRACE_ID = int(TRACE, 16)
SPAN_ID = int(SPAN, 16)
VALID = f"00-{TRACE}-{SPAN}-01"


def invalid_count(header: str, reason: str) -> float:
    """How many ``header`` values were rejected for ``reason`` (0 when none)."""
    labels = {"header": header, "reason": reason}
    return get_sample_value("obskit_propagation_invalid_total", labels) or 0.0


def invalid_total() -> float:
    """Every rejected header value, whatever the header and reason."""
    metrics = {m.name: m for m in _state.registry.collect()}
    family = metrics.get("obskit_propagation_invalid")
    if family is None:
        return 0.0
    return sum(s.value for s in family.samples if s.name.endswith("_total"))


def getter(headers: dict[str, str]) -> Any:
    """A Getter over a dict of lowercase header names, as the request pipeline passes one."""
    return headers.get


@pytest.fixture
def restore_textmap() -> Iterator[None]:
    """Put the process's global propagator back after a test that replaced it."""
    previous = propagate.get_global_textmap()
    try:
        yield
    finally:
        propagate.set_global_textmap(previous)


# --- traceparent -------------------------------------------------------------------------------

VALID_TRACEPARENTS = [
    pytest.param(VALID, (TRACE_ID, SPAN_ID, 1), id="version-00-sampled"),
    pytest.param(f"00-{TRACE}-{SPAN}-00", (TRACE_ID, SPAN_ID, 0), id="flags-00"),
    pytest.param(f"00-{TRACE}-{SPAN}-03", (TRACE_ID, SPAN_ID, 3), id="flags-03-random-bit"),
    pytest.param(f"00-{TRACE}-{SPAN}-ff", (TRACE_ID, SPAN_ID, 255), id="flags-unknown-bits"),
    pytest.param(f"cc-{TRACE}-{SPAN}-01", (TRACE_ID, SPAN_ID, 1), id="future-version-55"),
    pytest.param(
        f"cc-{TRACE}-{SPAN}-01-what-the-future-will-be-like",
        (TRACE_ID, SPAN_ID, 1),
        id="future-version-with-suffix",
    ),
    pytest.param(f" {VALID}\t", (TRACE_ID, SPAN_ID, 1), id="surrounding-ows"),
]


@pytest.mark.parametrize(("value", "expected"), VALID_TRACEPARENTS)
def test_valid_traceparent_is_parsed(value: str, expected: tuple[int, int, int]) -> None:
    """A valid traceparent gives (trace id, parent id, flags) and counts nothing as invalid."""
    assert expected == parse_traceparent(value)
    assert 0.0 == invalid_total()


INVALID_TRACEPARENTS = [
    pytest.param(f"ff-{TRACE}-{SPAN}-01", "version", id="version-ff"),
    pytest.param(f"0A-{TRACE}-{SPAN}-01", "version", id="uppercase-version"),
    pytest.param(f"00-{TRACE.upper()}-{SPAN}-01", "not_lowercase_hex", id="uppercase-trace-id"),
    pytest.param(f"00-{TRACE}-{SPAN.upper()}-01", "not_lowercase_hex", id="uppercase-parent-id"),
    pytest.param(f"00-{TRACE}-{SPAN}-0A", "not_lowercase_hex", id="uppercase-flags"),
    pytest.param(f"00-{'0' * 32}-{SPAN}-01", "zero_id", id="all-zero-trace-id"),
    pytest.param(f"00-{TRACE}-{'0' * 16}-01", "zero_id", id="all-zero-parent-id"),
    pytest.param(VALID[:54], "length", id="version-00-length-54"),
    pytest.param(VALID + "0", "length", id="version-00-length-56"),
    pytest.param(VALID + "-suffix", "length", id="version-00-with-suffix"),
    pytest.param(f"cc-{TRACE}-{SPAN}-01.suffix", "format", id="future-version-no-dash-at-55"),
    pytest.param(f"00_{TRACE}_{SPAN}_01", "format", id="wrong-separators"),
    pytest.param(f"00-{TRACE[:-1]}g-{SPAN}-01", "not_lowercase_hex", id="non-hex-trace-id"),
    pytest.param(f"00-{TRACE}-{SPAN[:-1]}x-01", "not_lowercase_hex", id="non-hex-parent-id"),
    pytest.param(f"00-{TRACE}-{SPAN}-0z", "not_lowercase_hex", id="non-hex-flags"),
    pytest.param("", "length", id="empty"),
    pytest.param("   \t ", "length", id="whitespace-only"),
    pytest.param("0" * 10_240, "length", id="10-KB"),
    pytest.param(f"00-{TRACE[:-1]}é-{SPAN}-01", "not_lowercase_hex", id="non-ascii"),
    pytest.param(f"00-{TRACE[:-1]}٣-{SPAN}-01", "not_lowercase_hex", id="non-ascii-digit"),
    pytest.param(f"{VALID},{VALID}", "length", id="two-values-comma-joined"),
]


@pytest.mark.parametrize(("value", "reason"), INVALID_TRACEPARENTS)
def test_invalid_traceparent_is_rejected_and_counted(value: str, reason: str) -> None:
    """An invalid traceparent parses to None and is counted once with its reason."""
    assert parse_traceparent(value) is None
    assert 1.0 == invalid_count("traceparent", reason)
    assert 1.0 == invalid_total()


# --- tracestate --------------------------------------------------------------------------------

VALID_TRACESTATES = [
    pytest.param("vendor=abc", [("vendor", "abc")], id="simple"),
    pytest.param(
        "tenant@system=v1,1tenant@sys=v2",
        [("tenant@system", "v1"), ("1tenant@sys", "v2")],
        id="multi-tenant-keys",
    ),
    pytest.param("a-b_c*d/e=x,k0=y", [("a-b_c*d/e", "x"), ("k0", "y")], id="key-special-chars"),
    pytest.param(" a=1 ,\tb=2\t, c=3 ", [("a", "1"), ("b", "2"), ("c", "3")], id="ows"),
    pytest.param("a=1,,b=2, ,", [("a", "1"), ("b", "2")], id="empty-members-skipped"),
    pytest.param("a=with space inside", [("a", "with space inside")], id="inner-space"),
    pytest.param("a=!~:;<>?[]", [("a", "!~:;<>?[]")], id="printable-value"),
    pytest.param("a=" + "v" * 256, [("a", "v" * 256)], id="value-256-chars"),
    pytest.param("k" * 256 + "=v", [("k" * 256, "v")], id="key-256-chars"),
    # A trailing space cannot belong to a value: it is the OWS around the list-member.
    pytest.param("a=b ,c=d ", [("a", "b"), ("c", "d")], id="trailing-space-is-ows"),
    pytest.param(
        ",".join(f"k{i}=v{i}" for i in range(32)),
        [(f"k{i}", f"v{i}") for i in range(32)],
        id="32-members",
    ),
]


@pytest.mark.parametrize(("value", "expected"), VALID_TRACESTATES)
def test_valid_tracestate_is_parsed(value: str, expected: list[tuple[str, str]]) -> None:
    """A valid tracestate keeps every member in order and counts nothing as invalid."""
    assert expected == list(parse_tracestate(value).items())
    assert 0.0 == invalid_total()


INVALID_TRACESTATES = [
    pytest.param(",".join(f"k{i}=v{i}" for i in range(33)), "members", id="33-members"),
    pytest.param("a=1,b=2,a=3", "duplicate_key", id="duplicate-key"),
    pytest.param("Vendor=x", "member", id="uppercase-key"),
    pytest.param("ven dor=x", "member", id="space-in-key"),
    pytest.param("a!b=x", "member", id="invalid-key-char"),
    pytest.param("1abc=x", "member", id="simple-key-starts-with-digit"),
    pytest.param("tenant@Sys=x", "member", id="uppercase-system"),
    pytest.param("tenant@1sys=x", "member", id="system-starts-with-digit"),
    pytest.param("t@" + "s" * 15 + "=x", "member", id="system-too-long"),
    pytest.param("k" * 257 + "=v", "member", id="key-too-long"),
    pytest.param("a=b=c", "member", id="value-with-equals"),
    pytest.param("a=b,c", "member", id="value-with-comma"),
    pytest.param("a=", "member", id="empty-value"),
    pytest.param("=x", "member", id="empty-key"),
    pytest.param("novalue", "member", id="no-equals"),
    pytest.param("a=b\x7f", "member", id="control-char-in-value"),
    pytest.param("a=b\tc", "member", id="tab-in-value"),
    pytest.param("a=caf\u00e9", "member", id="non-ascii-value"),
    pytest.param("a=" + "v" * 257, "member", id="value-too-long"),
    pytest.param("ok=1," + "x" * 20000, "length", id="over-the-grammar-maximum"),
]


@pytest.mark.parametrize(("value", "reason"), INVALID_TRACESTATES)
def test_invalid_tracestate_is_empty_and_counted(value: str, reason: str) -> None:
    """An invalid tracestate gives an empty TraceState and is counted once with its reason."""
    assert [] == list(parse_tracestate(value).items())
    assert 1.0 == invalid_count("tracestate", reason)
    assert 1.0 == invalid_total()


def _member(key: str, size: int) -> tuple[str, str]:
    """A ``key=value`` member of exactly ``size`` characters."""
    return key, "v" * (size - len(key) - 1)


def _header(members: list[tuple[str, str]]) -> str:
    return ",".join(f"{k}={v}" for k, v in members)


SMALL = [_member(f"s{i:02d}", 44) for i in range(12)]
#: 32 members of a 256-character key and a 256-character value: the longest valid list.
BIG = [(f"k{i:02d}" + "k" * 253, "v" * 256) for i in range(32)]


@pytest.mark.parametrize(
    "members",
    [
        pytest.param(SMALL[:10], id="under-512"),
        pytest.param([*SMALL, _member("long", 200)], id="over-512"),
        pytest.param(BIG, id="the-grammar-maximum"),
    ],
)
def test_a_valid_tracestate_is_kept_whole_whatever_its_length(
    members: list[tuple[str, str]],
) -> None:
    """W3C Trace Context, tracestate Limits: 512 characters is what a vendor must at least
    propagate; obskit adds no member of its own, so it never truncates a valid list."""
    value = _header(members)
    assert members == list(parse_tracestate(value).items())
    assert 0.0 == invalid_total()


# --- extract -----------------------------------------------------------------------------------


def _span_context(ctx: Context | None) -> SpanContext:
    return trace.get_current_span(ctx).get_span_context()


def test_extract_without_headers_is_none() -> None:
    """No traceparent and no baggage: no parent context at all."""
    assert extract(getter({"tracestate": "a=1", "user-agent": "x"})) is None


def test_extract_baggage_only() -> None:
    """Baggage alone gives its entries and no remote span."""
    ctx = extract(getter({"baggage": "user.id=42,tenant=acme%20corp"}))
    assert {"user.id": "42", "tenant": "acme corp"} == dict(baggage.get_all(ctx))
    assert not _span_context(ctx).is_valid


def test_extract_traceparent_and_tracestate() -> None:
    """traceparent + tracestate give a remote, sampled parent carrying the trace state."""
    ctx = extract(getter({"traceparent": VALID, "tracestate": "vendor=abc, t@sys=x"}))
    span_context = _span_context(ctx)
    expected = (TRACE_ID, SPAN_ID, True, True, [("vendor", "abc"), ("t@sys", "x")])
    actual = (
        span_context.trace_id,
        span_context.span_id,
        span_context.is_remote,
        span_context.trace_flags.sampled,
        list(span_context.trace_state.items()),
    )
    assert expected == actual
    assert {} == dict(baggage.get_all(ctx))


def test_extract_all_three_headers() -> None:
    """traceparent, tracestate and baggage together all reach the context."""
    headers = {"traceparent": VALID, "tracestate": "a=1", "baggage": "k=v"}
    ctx = extract(getter(headers))
    assert (TRACE_ID, {"k": "v"}) == (_span_context(ctx).trace_id, dict(baggage.get_all(ctx)))


def test_extract_invalid_traceparent_keeps_baggage_and_counts() -> None:
    """An invalid traceparent starts a new trace; its tracestate is ignored; baggage applies."""
    headers = {"traceparent": VALID.upper(), "tracestate": "Bad=1", "baggage": "k=v"}
    ctx = extract(getter(headers))
    assert not _span_context(ctx).is_valid
    assert {"k": "v"} == dict(baggage.get_all(ctx))
    assert 1.0 == invalid_count("traceparent", "not_lowercase_hex")
    assert 1.0 == invalid_total()  # the tracestate of an invalid traceparent is not even parsed


def test_extract_invalid_tracestate_keeps_the_parent() -> None:
    """An invalid tracestate is dropped, the valid traceparent still is the parent."""
    ctx = extract(getter({"traceparent": VALID, "tracestate": "a=1,a=2"}))
    span_context = _span_context(ctx)
    assert (TRACE_ID, []) == (span_context.trace_id, list(span_context.trace_state.items()))
    assert 1.0 == invalid_count("tracestate", "duplicate_key")


def test_extract_oversized_traceparent_is_rejected_and_counted() -> None:
    """A traceparent over 8 KB is not parsed at all, and is still counted as invalid."""
    ctx = extract(getter({"traceparent": VALID + "0" * 10_000}))
    assert not _span_context(ctx).is_valid
    assert 1.0 == invalid_count("traceparent", "length")


def test_extract_adds_to_the_given_context() -> None:
    """The parent is added to the context passed in, keeping its other values."""
    base = baggage.set_baggage("from", "caller")
    ctx = extract(getter({"traceparent": VALID}), base)
    assert ("caller", TRACE_ID) == (baggage.get_baggage("from", ctx), _span_context(ctx).trace_id)


class HeaderPropagator(TextMapPropagator):
    """A non-W3C propagator: ``x-test-trace: <trace hex>:<span hex>``; records its calls."""

    def __init__(self) -> None:
        self.carriers: list[dict[str, str]] = []

    def extract(
        self,
        carrier: CarrierT,
        context: Context | None = None,
        getter: Getter[CarrierT] = default_getter,
    ) -> Context:
        self.carriers.append(dict(carrier))  # type: ignore[call-overload]
        values = getter.get(carrier, "x-test-trace")
        if not values:
            return context or Context()
        trace_hex, span_hex = values[0].split(":")
        span_context = SpanContext(
            int(trace_hex, 16), int(span_hex, 16), True, TraceFlags(TraceFlags.SAMPLED)
        )
        return trace.set_span_in_context(NonRecordingSpan(span_context), context)

    def inject(
        self,
        carrier: CarrierT,
        context: Context | None = None,
        setter: Setter[CarrierT] = default_setter,
    ) -> None:
        span_context = trace.get_current_span(context).get_span_context()
        value = f"{span_context.trace_id:032x}:{span_context.span_id:016x}"
        setter.set(carrier, "x-test-trace", value)

    @property
    def fields(self) -> set[str]:
        return {"x-test-trace"}


@pytest.mark.usefixtures("restore_textmap")
def test_extract_uses_a_custom_global_propagator() -> None:
    """With another global propagator, extract() goes through opentelemetry.propagate."""
    propagator = HeaderPropagator()
    propagate.set_global_textmap(propagator)
    headers = {"x-test-trace": f"{TRACE}:{SPAN}", "user-agent": "curl"}
    ctx = extract(getter(headers))
    assert (TRACE_ID, SPAN_ID) == (_span_context(ctx).trace_id, _span_context(ctx).span_id)
    # Only the propagator's fields (and the W3C ones when present) are handed over.
    assert [{"x-test-trace": f"{TRACE}:{SPAN}"}] == propagator.carriers


@pytest.mark.usefixtures("restore_textmap")
def test_extract_uses_a_tracecontext_only_composite() -> None:
    """A CompositePropagator of TraceContext alone is not the default: OTel parses, no baggage."""
    propagate.set_global_textmap(CompositePropagator([TraceContextTextMapPropagator()]))
    ctx = extract(getter({"traceparent": VALID, "tracestate": "a=1", "baggage": "k=v"}))
    span_context = _span_context(ctx)
    assert (TRACE_ID, SPAN_ID, [("a", "1")]) == (
        span_context.trace_id,
        span_context.span_id,
        list(span_context.trace_state.items()),
    )
    assert {} == dict(baggage.get_all(ctx))


@pytest.mark.usefixtures("restore_textmap")
def test_extract_with_custom_propagator_and_no_headers_is_none() -> None:
    """With another global propagator and none of its headers, there is no parent context."""
    propagate.set_global_textmap(HeaderPropagator())
    assert extract(getter({"user-agent": "curl"})) is None


# --- inject ------------------------------------------------------------------------------------


def _remote_context(flags: int = 1, state: TraceState | None = None) -> Context:
    span_context = SpanContext(
        TRACE_ID, SPAN_ID, is_remote=False, trace_flags=TraceFlags(flags), trace_state=state
    )
    return trace.set_span_in_context(NonRecordingSpan(span_context))


def test_inject_writes_the_current_span() -> None:
    """inject() writes "00-<trace>-<span>-0x" for the current span, plus its tracestate."""
    span = trace.get_current_span(_remote_context(1, TraceState([("vendor", "abc")])))
    headers: dict[str, str] = {}
    with trace.use_span(span):
        inject(headers)
    assert {"traceparent": VALID, "tracestate": "vendor=abc"} == headers


def test_inject_writes_the_given_context_with_baggage() -> None:
    """inject(headers, ctx) writes ctx's span (unsampled: flags 00) and its baggage, the value
    percent-encoded as W3C Baggage says ('/' is a baggage-octet, a space is not)."""
    obskit.tracer_provider()  # obskit's propagators in place, as after configure()
    ctx = baggage.set_baggage("tenant", "acme eu/x", _remote_context(0))
    headers: dict[str, str] = {"accept": "text/plain"}
    inject(headers, ctx)
    expected = {
        "accept": "text/plain",
        "traceparent": f"00-{TRACE}-{SPAN}-00",
        "baggage": "tenant=acme%20eu/x",
    }
    assert expected == headers


def test_inject_round_trips_through_extract() -> None:
    """What inject() writes, extract() reads back as the same trace and parent."""
    headers: dict[str, str] = {}
    inject(headers, _remote_context(1))
    assert (TRACE_ID, SPAN_ID) == (
        _span_context(extract(getter(headers))).trace_id,
        _span_context(extract(getter(headers))).span_id,
    )


def test_inject_without_a_span_writes_nothing() -> None:
    """With no current span there is no traceparent to write."""
    headers: dict[str, str] = {}
    inject(headers)
    assert {} == headers


class HostileHeaders(dict):  # type: ignore[type-arg]
    """A header mapping that refuses every write."""

    def __setitem__(self, key: str, value: Any) -> None:
        raise RuntimeError("read-only headers")


def test_inject_never_raises_for_an_odd_carrier(monkeypatch: pytest.MonkeyPatch) -> None:
    """A carrier whose writes raise: inject() returns quietly and counts an internal error."""
    monkeypatch.setattr(_state, "raise_internal_errors", False)
    headers = HostileHeaders()
    inject(headers, _remote_context(1))
    assert {} == dict(headers)
    labels = {"component": "inject"}
    assert 1.0 == get_sample_value("obskit_internal_errors_total", labels)


def test_inject_into_a_non_mapping_never_raises(monkeypatch: pytest.MonkeyPatch) -> None:
    """Even a carrier that is no mapping at all does not break the caller."""
    monkeypatch.setattr(_state, "raise_internal_errors", False)
    inject((), _remote_context(1))  # type: ignore[arg-type]
    labels = {"component": "inject"}
    assert 1.0 == get_sample_value("obskit_internal_errors_total", labels)
