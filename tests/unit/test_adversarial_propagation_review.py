"""Findings of a read-through review of propagation and outbound calls (2026-11-25), each pinned by
a test.

Apps are obskit's WSGI and ASGI middlewares called directly; outbound calls go to a loopback
server that records the header fields it received; spans are captured with
``obskit.testing.capture()`` (the real span pipeline, encoded to OTLP bytes and decoded back).
"""

from __future__ import annotations

import asyncio
import copy
import os
import pickle
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import requests
from opentelemetry import baggage, propagate, trace
from opentelemetry import context as otel_context
from opentelemetry.context import Context
from opentelemetry.propagators.textmap import (
    CarrierT,
    Getter,
    Setter,
    TextMapPropagator,
    default_getter,
    default_setter,
)
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags

import obskit
from obskit.asgi import ObskitMiddleware as AsgiMiddleware
from obskit.testing import capture, get_sample_value
from obskit.tracing import propagation
from obskit.tracing._baggage import Value
from obskit.wsgi import ObskitMiddleware as WsgiMiddleware
from tests.loopback import QuietHandler, free_port, serving
from tests.otlp_receiver import attributes
from tests.wsgi_environ import environ

TIMEOUT = 5.0
CLIENT = 3  # OTLP Span.SpanKind.SPAN_KIND_CLIENT
TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
INCOMING = f"00-{TRACE}-00f067aa0ba902b7-01"
STATE = "congo=t61rcWkgMzE"


@pytest.fixture
def peer() -> Iterator[tuple[str, list[dict[str, str]]]]:
    """A loopback server: its base URL, and the header fields (lowercase names; repeated ones
    comma-joined) of every request it received."""
    seen: list[dict[str, str]] = []

    class Handler(QuietHandler):
        def do_GET(self) -> None:
            fields: dict[str, str] = {}
            for name, value in self.headers.items():
                key = name.lower()
                fields[key] = f"{fields[key]},{value}" if key in fields else value
            seen.append(fields)
            self.send_response(204)
            self.end_headers()

    with serving(Handler) as port:
        yield f"http://127.0.0.1:{port}", seen


@pytest.fixture
def restore_textmap() -> Iterator[None]:
    previous = propagate.get_global_textmap()
    try:
        yield
    finally:
        propagate.set_global_textmap(previous)


def _call_wsgi(app: Any, **headers: str) -> None:
    env = environ("/x", **{"HTTP_" + k.upper(): v for k, v in headers.items()})
    body = WsgiMiddleware(app)(env, lambda *args: None)
    list(body)
    getattr(body, "close", lambda: None)()


def _call_asgi(app: Any, headers: list[tuple[bytes, bytes]]) -> None:
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": "/x",
        "raw_path": b"/x",
        "root_path": "",
        "query_string": b"",
        "headers": [(b"host", b"a"), *headers],
        "server": ("127.0.0.1", 80),
        "client": ("127.0.0.1", 1),
    }

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        pass

    asyncio.run(AsgiMiddleware(app)(scope, receive, send))


# -- 1. traces off: a span opened on the way does not break propagation --------------------------


# A bug this test found, since fixed: with traces_exporter="none" the provider's sampler was
# ALWAYS_OFF, so a span the app (or any OpenTelemetry instrumentation) opened got a new span id
# and sampled=0, and the outbound hook (obskit/tracing/outbound.py), obskit.inject and
# opentelemetry.propagate.inject all sent that span -- a parent nobody exported, and tracing
# turned off downstream. Spans made while traces are off now forward the incoming context
# unchanged (obskit.tracing.sampling.Forwarded), as a W3C "forwarding" service does.
def test_traces_off_a_span_opened_on_the_way_forwards_the_incoming_context(
    peer: tuple[str, list[dict[str, str]]],
) -> None:
    base, seen = peer
    obskit.configure(service_name="review", traces_exporter="none", logging=False)
    app_tracer = trace.get_tracer("app")
    carriers: list[dict[str, str]] = []

    def app(env: Any, start_response: Any) -> list[bytes]:
        requests.get(f"{base}/direct", timeout=TIMEOUT)
        with (
            app_tracer.start_as_current_span("load order"),
            app_tracer.start_as_current_span("inner"),
        ):
            requests.get(f"{base}/requests", timeout=TIMEOUT)
            httpx.get(f"{base}/httpx", timeout=TIMEOUT)
            ours: dict[str, str] = {}
            obskit.inject(ours)
            theirs: dict[str, str] = {}
            propagate.inject(theirs)
            carriers.extend((ours, theirs))
        start_response("200 OK", [])
        return [b"ok"]

    _call_wsgi(app, traceparent=INCOMING, tracestate=STATE)
    sent = [(fields.get("traceparent"), fields.get("tracestate")) for fields in seen]
    sent += [(c.get("traceparent"), c.get("tracestate")) for c in carriers]
    assert [(INCOMING, STATE)] * 5 == sent


# A bug this test found, since fixed: with traces off, a span the app opened outside any request
# made every call under it carry a new, unsampled traceparent, which turns tracing off in every
# parent-based service downstream. There is no incoming context to forward: nothing is sent, and
# the downstream service decides for itself; the span still has ids for the log lines.
def test_traces_off_a_root_span_sends_no_traceparent(
    peer: tuple[str, list[dict[str, str]]],
) -> None:
    base, seen = peer
    obskit.configure(service_name="review", traces_exporter="none", logging=False)
    carrier: dict[str, str] = {}
    with trace.get_tracer("job").start_as_current_span("nightly") as span:
        requests.get(f"{base}/job", timeout=TIMEOUT)
        obskit.inject(carrier)
        propagate.inject(carrier)
        assert span.get_span_context().is_valid
    assert ([None], {}) == ([fields.get("traceparent") for fields in seen], carrier)


# -- 2. a baggage value that cannot be encoded ---------------------------------------------------


# A bug this test found, since fixed: quote() raised UnicodeEncodeError on a lone surrogate (the
# os.fsdecode() of a file name that is not UTF-8) in obskit/tracing/_baggage.py serialize();
# the outbound hook caught it, ended the CLIENT span before the request was sent and sent no
# trace header at all. The member is now skipped alone and counted.
@pytest.mark.parametrize("mode", ["lean", "sdk"])
def test_a_baggage_value_utf8_cannot_encode_is_skipped_alone(
    peer: tuple[str, list[dict[str, str]]], mode: str
) -> None:
    base, seen = peer
    name = os.fsdecode(b"report-\xe9.csv")
    with capture(service_name="review", keep_whole_trace=mode == "sdk") as cap:
        ctx = baggage.set_baggage("file", name, baggage.set_baggage("tenant", "acme"))
        token = otel_context.attach(ctx)
        try:
            assert 204 == requests.get(f"{base}/", timeout=TIMEOUT).status_code
            carrier: dict[str, str] = {}
            obskit.inject(carrier)
        finally:
            otel_context.detach(token)
        (span,) = [s for s in cap.spans() if s.kind == CLIENT]
    (fields,) = seen
    assert span.span_id.hex() == fields["traceparent"].split("-")[2]
    assert ("tenant=acme", "tenant=acme") == (fields["baggage"], carrier["baggage"])
    assert 204 == attributes(span)["http.response.status_code"]
    counted = {"header": "baggage", "reason": "member"}
    assert 2.0 == get_sample_value("obskit_propagation_invalid_total", counted)


# -- 5. baggage values with properties copy and pickle ------------------------------------------


# A bug this test found, since fixed: Value.__new__ (obskit/tracing/_baggage.py) required
# `properties`, so copy.copy, copy.deepcopy and pickle of a baggage value that came with
# properties (k=v;p=1) raised TypeError into user code (a process pool, Celery).
def test_a_baggage_value_with_properties_copies_and_pickles() -> None:
    obskit.configure(service_name="review", traces_exporter="none", logging=False)
    ctx = propagation.extract({"baggage": "tenant=acme;ttl=30,user=42"}.get)
    bag = dict(baggage.get_all(ctx))
    for again in (
        copy.copy(bag),
        copy.deepcopy(bag),
        pickle.loads(pickle.dumps(bag)),
        {k: copy.copy(v) for k, v in bag.items()},
        {k: pickle.loads(pickle.dumps(v, protocol=0)) for k, v in bag.items()},
    ):
        tenant = again["tenant"]
        assert (bag, Value, "ttl=30") == (again, type(tenant), tenant.properties)
        carrier: dict[str, str] = {}
        obskit.inject(carrier, baggage.set_baggage("tenant", tenant))
        assert "tenant=acme;ttl=30" == carrier["baggage"]


# -- 6. obskit.inject into a dict holding Title-Case trace fields --------------------------------


def _in_span(flags: int = 1) -> Context:
    span_context = SpanContext(
        int(TRACE, 16), 0x53995C3F42CD8AD8, is_remote=False, trace_flags=TraceFlags(flags)
    )
    return trace.set_span_in_context(NonRecordingSpan(span_context))


# A bug this test found, since fixed: obskit.inject (obskit/tracing/propagation.py) into a dict
# that already held `Traceparent`/`Tracestate` (dict(flask.request.headers), Title-Case) added
# lowercase ones beside them; the downstream got both values, combined into an invalid one, and
# restarted the trace. Header names are case-insensitive: the fields written replace the old
# ones in any case (a tracestate goes with its traceparent); other fields stay.
def test_inject_into_a_dict_replaces_trace_fields_spelled_in_another_case() -> None:
    obskit.configure(service_name="review", traces_exporter="none", logging=False)
    headers = {
        "Traceparent": INCOMING,
        "Tracestate": STATE,
        "TRACESTATE": "other=1",
        "Accept": "*/*",
        "Baggage": "kept=1",
    }
    obskit.inject(headers, _in_span())
    assert {
        "Accept": "*/*",
        "Baggage": "kept=1",
        "traceparent": f"00-{TRACE}-53995c3f42cd8ad8-01",
    } == headers


# -- 7. an outbound error's text names the presigned URL ----------------------------------------


# A bug this test found, since fixed: url.full redacts a presigned URL's signature, but requests'
# ConnectionError message names the path and query, and obskit/http/_semconv.py mark_exception
# wrote it into the CLIENT span's status description and exception event in clear. An outbound
# span's error text is now redacted as its url.full is.
@pytest.mark.parametrize("mode", ["lean", "sdk"])
def test_an_outbound_error_does_not_carry_the_presigned_urls_signature(mode: str) -> None:
    query = "AWSAccessKeyId=AKIAEXAMPLE&Signature=SECRETSIG123&Expires=1"
    url = f"http://127.0.0.1:{free_port()}/bucket/key?{query}"
    with capture(service_name="review", keep_whole_trace=mode == "sdk") as cap:
        with pytest.raises(requests.ConnectionError) as raised:
            requests.get(url, timeout=TIMEOUT)
        (span,) = [s for s in cap.spans() if s.kind == CLIENT]
    assert "SECRETSIG123" in str(raised.value)  # the caller's exception is left as it was
    (event,) = span.events
    texts = [span.status.message, *map(str, attributes(event).values())]
    texts += map(str, attributes(span).values())
    assert [] == [t for t in texts if "SECRETSIG123" in t or "AKIAEXAMPLE" in t]
    assert "Signature=REDACTED&Expires=1" in attributes(event)["exception.message"]
    assert "Signature=REDACTED&Expires=1" in attributes(event)["exception.stacktrace"]
    assert span.status.message.startswith("ConnectionError: ")


# -- 14. url.full: credentials as REDACTED:REDACTED@, the fragment kept ---------------------------


# A bug this test found, since fixed: obskit/tracing/outbound.py _full_url removed the
# credentials and the fragment; the HTTP semantic conventions ask for
# https://REDACTED:REDACTED@host/ and for the fragment, "if it is known", to be included.
def test_url_full_writes_credentials_as_redacted_and_keeps_the_fragment(
    peer: tuple[str, list[dict[str, str]]],
) -> None:
    base, seen = peer
    url = base.replace("http://", "http://alice:pw@") + "/docs/page?color=blue#section-2"
    with capture(service_name="review") as cap:
        requests.get(url, timeout=TIMEOUT)
        httpx.get(url, timeout=TIMEOUT)
        recorded = [attributes(s)["url.full"] for s in cap.spans() if s.kind == CLIENT]
    expected = base.replace("http://", "http://REDACTED:REDACTED@") + "/docs/page?color=blue"
    assert [expected + "#section-2"] * 2 == recorded
    assert 2 == len(seen)


# -- 3. other OTEL_PROPAGATORS get the request's headers as they are -----------------------------

XRAY_TRACE, XRAY_SPAN = 0x5759E988BD862E3FE1BE46A994272793, 0x53995C3F42CD8AD8


class XRayLike(TextMapPropagator):
    """The field of opentelemetry-propagator-aws-xray, spelled as it spells it."""

    KEY = "X-Amzn-Trace-Id"

    def extract(
        self,
        carrier: CarrierT,
        context: Context | None = None,
        getter: Getter[CarrierT] = default_getter,
    ) -> Context:
        if not getter.get(carrier, self.KEY):
            return context or Context()
        found = SpanContext(XRAY_TRACE, XRAY_SPAN, is_remote=True, trace_flags=TraceFlags(1))
        return trace.set_span_in_context(NonRecordingSpan(found), context)

    def inject(
        self,
        carrier: CarrierT,
        context: Context | None = None,
        setter: Setter[CarrierT] = default_setter,
    ) -> None:
        pass

    @property
    def fields(self) -> set[str]:
        return {self.KEY}


def _seen_by_wsgi_and_asgi(headers: dict[str, str]) -> list[tuple[int, dict[str, object]]]:
    """``(trace id, baggage)`` the app saw, through the WSGI and the ASGI middleware."""
    seen: list[tuple[int, dict[str, object]]] = []

    def look() -> None:
        context = trace.get_current_span().get_span_context()
        seen.append((context.trace_id, dict(baggage.get_all())))

    def wsgi_app(env: Any, start_response: Any) -> list[bytes]:
        look()
        start_response("200 OK", [])
        return [b""]

    async def asgi_app(scope: Any, receive: Any, send: Any) -> None:
        look()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    _call_wsgi(wsgi_app, **{k.replace("-", "_"): v for k, v in headers.items()})
    # ASGI servers spell header names lowercase.
    _call_asgi(asgi_app, [(k.lower().encode(), v.encode()) for k, v in headers.items()])
    return seen


# A bug this test found, since fixed: with another OTEL_PROPAGATORS setting,
# obskit/tracing/propagation.py extract looked each field up as the propagator spells it, and
# the ASGI getter only matches lowercase names: AWS X-Ray's `X-Amzn-Trace-Id` was lost under
# ASGI. The Propagators API requires a Getter over HTTP headers to be case-insensitive.
@pytest.mark.usefixtures("restore_textmap")
def test_another_propagator_finds_its_mixed_case_field_under_wsgi_and_asgi() -> None:
    obskit.configure(service_name="review", traces_exporter="none", logging=False)
    propagate.set_global_textmap(XRayLike())
    header = "Root=1-5759e988-bd862e3fe1be46a994272793;Parent=53995c3f42cd8ad8;Sampled=1"
    seen = _seen_by_wsgi_and_asgi({"X-Amzn-Trace-Id": header})
    assert [(XRAY_TRACE, {})] * 2 == seen
    # A getter of the caller's own (names lowercase, as the Getter type says) is asked too.
    ctx = propagation.extract({"x-amzn-trace-id": header}.get)
    assert XRAY_TRACE == trace.get_current_span(ctx).get_span_context().trace_id


# -- 4. a request subclass stays itself ----------------------------------------------------------


class SignedRequest(requests.PreparedRequest):
    signing_key: str | None = None


class SigningAdapter(requests.adapters.BaseAdapter):
    def __init__(self) -> None:
        super().__init__()
        self.sent: list[Any] = []

    def send(self, request: Any, **kwargs: Any) -> requests.Response:
        self.sent.append(request)
        response = requests.Response()
        response.status_code = 200
        response.request = request
        return response

    def close(self) -> None:
        pass


class TenantRequest(httpx.Request):
    tenant: str | None = None


# A bug this test found, since fixed: obskit/tracing/outbound.py wrote the trace headers into a
# copy made by the base class (PreparedRequest.copy, httpx.Request(...)), so a custom adapter or
# transport got a plain PreparedRequest / httpx.Request without the subclass's attributes. A
# subclass is now copied as its own class; the caller's object still gets no header.
@pytest.mark.parametrize("mode", ["lean", "sdk"])
def test_a_request_subclass_reaches_the_adapter_and_the_transport_as_itself(mode: str) -> None:
    adapter = SigningAdapter()
    received: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        received.append(request)
        return httpx.Response(200)

    prepared = SignedRequest()
    prepared.prepare(method="POST", url="sign://bucket/obj", data=b"body", cookies={"c": "1"})
    prepared.signing_key = "k-123"
    request = TenantRequest("POST", "http://example.test/", content=b"payload")
    request.tenant = "acme"
    with capture(service_name="review", keep_whole_trace=mode == "sdk") as cap:
        with requests.Session() as session:
            session.mount("sign://", adapter)
            session.send(prepared)
        with httpx.Client(transport=httpx.MockTransport(handler)) as client:
            client.send(request)
        spans = [s.span_id.hex() for s in cap.spans() if s.kind == CLIENT]
    (sent,) = adapter.sent
    (got,) = received
    assert (SignedRequest, "k-123", b"body", "c=1") == (
        type(sent),
        sent.signing_key,
        sent.body,
        sent.headers["Cookie"],
    )
    assert (TenantRequest, "acme", b"payload") == (type(got), got.tenant, got.read())
    assert spans == [r.headers["traceparent"].split("-")[2] for r in (sent, got)]
    assert "traceparent" not in prepared.headers
    assert "traceparent" not in request.headers
    assert sent is not prepared
    assert got is not request
