"""OTLP export end to end: obskit's spans reach real OTLP receivers (gRPC and HTTP/protobuf),
decoded with opentelemetry-proto; a refused or hanging collector never blocks or breaks the app."""

from __future__ import annotations

import gc
import logging
import os
import socket
import threading
import time
import tracemalloc
from typing import Any

import grpc
import pytest
from opentelemetry import trace
from opentelemetry.proto.trace.v1.trace_pb2 import Span, SpanFlags, Status
from opentelemetry.trace import SpanKind
from opentelemetry.trace import Status as OtelStatus
from opentelemetry.trace import StatusCode as OtelStatusCode

import obskit
from obskit.testing import get_sample_value
from tests.otlp_receiver import (
    HangingServer,
    OtlpGrpcReceiver,
    OtlpHttpReceiver,
    ReceivedSpan,
    attributes_dict,
    closed_port,
)

pytestmark = pytest.mark.e2e

PROTOCOLS = ["grpc", "http/protobuf"]
SINK_NAME = {"grpc": "otlp_grpc", "http/protobuf": "otlp_http"}
EXPORT_THREAD = "obskit-span-export"


def configure_for(rx: OtlpGrpcReceiver | OtlpHttpReceiver, **options: object) -> None:
    options.setdefault("service_name", "checkout")
    options.setdefault("bsp_schedule_delay", 0.05)
    obskit.configure(otlp_endpoint=rx.endpoint, otlp_protocol=rx.protocol, **options)


def by_name(spans: list[ReceivedSpan]) -> dict[str, ReceivedSpan]:
    return {received.span.name: received for received in spans}


def make_spans(tracer: trace.Tracer, n: int, payload: str = "") -> None:
    for i in range(n):
        with tracer.start_as_current_span("work") as span:
            span.set_attribute("i", i)
            if payload:
                span.set_attribute("payload", payload)


def wait_for_export_threads(timeout: float) -> list[str]:
    """Join obskit's export threads left running by a shutdown that timed out; names still alive.

    A shutdown that times out leaves the in-flight export running until its own timeout; joining
    it keeps it from counting into the next test's freshly reset self-metrics.
    """
    deadline = time.monotonic() + timeout
    for thread in threading.enumerate():
        if thread.name == EXPORT_THREAD:
            thread.join(max(deadline - time.monotonic(), 0.0))
    return [t.name for t in threading.enumerate() if t.name == EXPORT_THREAD and t.is_alive()]


def sample(name: str, **labels: str) -> float:
    return get_sample_value(name, labels) or 0.0


# -- delivery ----------------------------------------------------------------------------------


def test_spans_arrive_with_resource_hierarchy_attributes_status_events_and_kinds(
    receiver: OtlpGrpcReceiver | OtlpHttpReceiver,
) -> None:
    """Spans arrive intact: resource, parent/child ids, typed attributes, status, event, kinds."""
    configure_for(receiver, service_version="1.2.3", environment="staging")
    tracer = trace.get_tracer("e2e.tracer", "0.9.0")
    attributes = {
        "str": "héllo ✓",
        "int": 42,
        "negative": -7,
        "float": 2.5,
        "bool": True,
        "strs": ["a", "b"],
        "ints": [1, 2, 3],
        "floats": [0.5, 1.5],
        "bools": [True, False],
    }
    with tracer.start_as_current_span("GET /orders/{id}", kind=SpanKind.SERVER) as root:
        with tracer.start_as_current_span(
            "charge card", kind=SpanKind.CLIENT, attributes=attributes
        ) as child:
            child.record_exception(ValueError("card declined"))
            child.set_status(OtelStatus(OtelStatusCode.ERROR, "payment failed"))
        with tracer.start_as_current_span("publish", kind=SpanKind.PRODUCER):
            pass
        with tracer.start_as_current_span("consume", kind=SpanKind.CONSUMER):
            pass
        with tracer.start_as_current_span("compute"):
            pass
    root_ctx, child_ctx = root.get_span_context(), child.get_span_context()

    assert True is obskit.force_flush(5.0)
    spans = by_name(receiver.wait_for_spans(5))

    assert 5 == len(receiver.spans())
    assert [] == receiver.errors
    resource = spans["GET /orders/{id}"].resource
    assert {
        "service.name": "checkout",
        "service.version": "1.2.3",
        "deployment.environment": "staging",
        "deployment.environment.name": "staging",
        "host.name": socket.gethostname(),
        "process.pid": os.getpid(),
        "telemetry.sdk.language": "python",
    } == {
        key: resource.get(key)
        for key in (
            "service.name",
            "service.version",
            "deployment.environment",
            "deployment.environment.name",
            "host.name",
            "process.pid",
            "telemetry.sdk.language",
        )
    }
    assert {"e2e.tracer"} == {received.scope for received in spans.values()}
    scope = receiver.requests()[0].resource_spans[0].scope_spans[0].scope
    assert ("e2e.tracer", "0.9.0") == (scope.name, scope.version)

    root_span, child_span = spans["GET /orders/{id}"].span, spans["charge card"].span
    trace_id = root_ctx.trace_id.to_bytes(16, "big")
    assert {trace_id} == {received.span.trace_id for received in spans.values()}
    assert (root_ctx.span_id.to_bytes(8, "big"), b"") == (
        root_span.span_id,
        root_span.parent_span_id,
    )
    assert child_ctx.span_id.to_bytes(8, "big") == child_span.span_id
    assert {root_span.span_id} == {
        received.span.parent_span_id
        for name, received in spans.items()
        if name != "GET /orders/{id}"
    }
    assert 0 < child_span.start_time_unix_nano <= child_span.end_time_unix_nano
    # W3C trace flags (sampled, random) in the low byte; parent known and local.
    assert int(child_ctx.trace_flags) | SpanFlags.SPAN_FLAGS_CONTEXT_HAS_IS_REMOTE_MASK == (
        child_span.flags
    )
    assert 1 == child_span.flags & 1  # sampled

    assert attributes == attributes_dict(child_span.attributes)
    assert (Status.STATUS_CODE_ERROR, "payment failed") == (
        child_span.status.code,
        child_span.status.message,
    )
    assert Status.STATUS_CODE_UNSET == root_span.status.code
    assert ["exception"] == [event.name for event in child_span.events]
    event_attributes = attributes_dict(child_span.events[0].attributes)
    assert ("ValueError", "card declined") == (
        event_attributes["exception.type"],
        event_attributes["exception.message"],
    )
    assert "ValueError: card declined" in event_attributes["exception.stacktrace"]

    assert {
        "GET /orders/{id}": Span.SPAN_KIND_SERVER,
        "charge card": Span.SPAN_KIND_CLIENT,
        "publish": Span.SPAN_KIND_PRODUCER,
        "consume": Span.SPAN_KIND_CONSUMER,
        "compute": Span.SPAN_KIND_INTERNAL,
    } == {name: received.span.kind for name, received in spans.items()}
    assert 5.0 == sample("obskit_spans_exported_total", exporter=SINK_NAME[receiver.protocol])


def test_configured_headers_arrive(receiver: OtlpGrpcReceiver | OtlpHttpReceiver) -> None:
    """otlp_headers are sent with every export, as HTTP headers or gRPC metadata."""
    configure_for(receiver, otlp_headers={"x-api-key": "s3cret", "X-Tenant": "acme"})
    with trace.get_tracer("e2e").start_as_current_span("op"):
        pass

    obskit.force_flush(5.0)
    receiver.wait_for_spans(1)

    assert 1 == len(receiver.attempts)
    headers = receiver.attempts[0].headers
    assert ("s3cret", "acme") == (headers.get("x-api-key"), headers.get("x-tenant"))
    if receiver.protocol == "http/protobuf":
        assert "application/x-protobuf" == headers.get("content-type")
        # The exporter, its language and version, as the OTLP specification asks.
        assert f"obskit-OTLP-Exporter-Python/{obskit.__version__}" == headers.get("user-agent")


def test_gzip_compression_is_decoded_by_the_collector(
    receiver: OtlpGrpcReceiver | OtlpHttpReceiver,
) -> None:
    """With otlp_compression="gzip" requests are gzip-encoded and still decode to the spans sent."""
    configure_for(receiver, otlp_compression="gzip")
    make_spans(trace.get_tracer("e2e"), 50)

    obskit.force_flush(5.0)
    spans = receiver.wait_for_spans(50)

    assert 50 == len(spans)
    assert [] == receiver.errors
    assert set(range(50)) == {attributes_dict(s.span.attributes)["i"] for s in spans}
    if receiver.protocol == "http/protobuf":
        assert {"gzip"} == {a.headers.get("content-encoding") for a in receiver.attempts}


def test_gzip_compression_applies_to_metrics_and_logs_too(
    receiver: OtlpGrpcReceiver | OtlpHttpReceiver,
) -> None:
    """otlp_compression="gzip" reaches the SDK's metrics and logs exporters (it reached spans
    only); what they send still decodes."""
    configure_for(receiver, otlp_compression="gzip", metrics_exporter="otlp", logs_exporter="otlp")
    provider = obskit.meter_provider()
    assert provider is not None
    provider.get_meter("e2e").create_counter("e2e.orders").add(3)
    logging.getLogger("e2e.orders").warning("order shipped")
    assert True is obskit.force_flush(5.0)

    assert receiver.requests("logs")
    assert receiver.requests("metrics")
    assert [] == receiver.errors
    if receiver.protocol == "http/protobuf":
        sent = {(a.signal, a.headers.get("content-encoding")) for a in receiver.attempts}
        assert {("logs", "gzip"), ("metrics", "gzip")} <= sent
        assert {encoding for _, encoding in sent} == {"gzip"}


def test_log_records_arrive_with_the_trace_context(
    receiver: OtlpGrpcReceiver | OtlpHttpReceiver,
) -> None:
    """With logs_exporter="otlp", a stdlib log record reaches the collector with its span's ids."""
    configure_for(receiver, logs_exporter="otlp")
    with trace.get_tracer("e2e").start_as_current_span("op") as span:
        logging.getLogger("e2e.orders").warning("order %s shipped", 42)
    ctx = span.get_span_context()

    assert True is obskit.shutdown(timeout=5.0)  # flushes the log batch

    records = [
        (attributes_dict(rl.resource.attributes)["service.name"], record)
        for request in receiver.requests("logs")
        for rl in request.resource_logs
        for sl in rl.scope_logs
        for record in sl.log_records
        if record.body.string_value == "order 42 shipped"
    ]
    assert 1 == len(records)
    service, record = records[0]
    assert ("checkout", "WARN") == (service, record.severity_text)
    assert (ctx.trace_id.to_bytes(16, "big"), ctx.span_id.to_bytes(8, "big")) == (
        record.trace_id,
        record.span_id,
    )


# -- answers from the collector ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("receiver", "failure", "retried"),
    [
        ("http/protobuf", 503, True),
        ("http/protobuf", 400, False),
        ("grpc", grpc.StatusCode.UNAVAILABLE, True),
        ("grpc", grpc.StatusCode.INVALID_ARGUMENT, False),
    ],
    indirect=["receiver"],
)
def test_retryable_answers_are_retried_and_others_are_not(
    receiver: OtlpGrpcReceiver | OtlpHttpReceiver, failure: object, retried: bool
) -> None:
    """503/UNAVAILABLE is retried and delivered; 400/INVALID_ARGUMENT is counted, not retried."""
    configure_for(receiver, otlp_timeout=5.0)
    receiver.fail_next(1, failure)  # type: ignore[arg-type]
    with trace.get_tracer("e2e").start_as_current_span("op"):
        pass

    assert True is obskit.force_flush(5.0)  # the export (with its retries) has returned

    ok = 200 if receiver.protocol == "http/protobuf" else grpc.StatusCode.OK
    sink = SINK_NAME[receiver.protocol]
    if retried:
        assert [failure, ok] == [a.status for a in receiver.attempts]
        assert 1 == len(receiver.spans())
        assert (1.0, 0.0) == (
            sample("obskit_spans_exported_total", exporter=sink),
            sample("obskit_export_failures_total", signal="traces", exporter=sink),
        )
    else:
        assert [failure] == [a.status for a in receiver.attempts]
        assert [] == receiver.spans()
        assert (0.0, 1.0, 1.0) == (
            sample("obskit_spans_exported_total", exporter=sink),
            sample("obskit_export_failures_total", signal="traces", exporter=sink),
            sample("obskit_spans_dropped_total", reason="export_failed"),
        )


# -- faults ------------------------------------------------------------------------------------


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_unreachable_collector_never_blocks_or_raises(protocol: str) -> None:
    """Refused connections: span end stays fast, failures are counted, shutdown is bounded."""
    obskit.configure(
        service_name="e2e",
        otlp_endpoint=f"http://127.0.0.1:{closed_port()}",
        otlp_protocol=protocol,
        otlp_timeout=5.0,
        bsp_schedule_delay=0.05,
        bsp_max_export_batch_size=2048,  # the remainder after the in-flight export is one batch
    )
    tracer = trace.get_tracer("e2e")
    make_spans(tracer, 1)
    # Start an export that keeps retrying the refused connection (for ~3 s of its 5 s budget).
    exporting = obskit.force_flush(timeout=0.2)

    started = time.monotonic()
    make_spans(tracer, 2000)  # while that export is failing and retrying
    creating = time.monotonic() - started
    started = time.monotonic()
    finished = obskit.shutdown(timeout=1.0)
    shutting_down = time.monotonic() - started
    left_running = wait_for_export_threads(timeout=8.0)

    assert False is exporting
    assert creating < 2.0, f"creating 2000 spans took {creating:.2f}s (export timeout 5s)"
    assert shutting_down < 1.5, f"shutdown(timeout=1.0) took {shutting_down:.2f}s"
    assert False is finished  # the export in flight was still retrying when the timeout ran out
    assert [] == left_running
    sink = SINK_NAME[protocol]
    assert 0.0 == sample("obskit_spans_exported_total", exporter=sink)
    # The export under way when shutdown gave up is abandoned and counted with what was queued.
    assert 2001.0 == sum(
        sample("obskit_spans_dropped_total", reason=reason)
        for reason in ("export_failed", "queue_full", "shutdown_timeout")
    )


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_hanging_collector_drops_beyond_the_queue_bound(protocol: str) -> None:
    """A silent collector: excess spans dropped and counted, memory and shutdown bounded."""
    sink = SINK_NAME[protocol]
    with HangingServer() as hanging:
        obskit.configure(
            service_name="e2e",
            otlp_endpoint=hanging.endpoint,
            otlp_protocol=protocol,
            # Longer than shutdown's timeout below: the export under way when shutdown starts is
            # still hanging at its deadline, so shutdown must abandon it (with 1 s, an export
            # could time out just before shutdown, leave the queue empty, and the flush succeed).
            otlp_timeout=10.0,
            bsp_schedule_delay=0.05,
            bsp_max_queue_size=100,  # always full here: shutdown always has a batch it cannot send
        )
        tracer = trace.get_tracer("e2e")
        # ~400 encoded bytes a span: an unbounded queue would grow by ~8 MB over 20000 spans.
        payload = "x" * 256

        started = time.monotonic()
        make_spans(tracer, 5000, payload)  # also the warm-up for the memory measurement
        creating = time.monotonic() - started
        dropped = sample("obskit_spans_dropped_total", reason="queue_full")
        # Read after ``dropped``: at least the batches that had failed when it was read.
        failed_batches = sample("obskit_export_failures_total", signal="traces", exporter=sink)

        gc.collect()
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            make_spans(tracer, 20000, payload)
            gc.collect()
            growth = tracemalloc.get_traced_memory()[0] - before
        finally:
            tracemalloc.stop()

        started = time.monotonic()
        flushed = obskit.shutdown(timeout=1.0)
        shutting_down = time.monotonic() - started
        connections = hanging.connections
    left_running = wait_for_export_threads(timeout=5.0)

    assert creating < 2.0, f"creating 5000 spans took {creating:.2f}s"
    assert connections >= 1  # the exporter did reach the hanging collector
    # Past the bound at most: the failed batches, one in flight and a full queue (100 each).
    passed = 5000 - dropped
    assert passed <= 100 * (failed_batches + 2), f"{passed} spans passed, {failed_batches} failed"
    assert growth < 2_000_000, f"memory grew by {growth / 1e6:.1f} MB over 20000 spans"
    assert shutting_down < 1.5, f"shutdown(timeout=1.0) took {shutting_down:.2f}s"
    assert False is flushed
    assert [] == left_running
    assert 0.0 == sample("obskit_spans_exported_total", exporter=sink)
    assert 25000.0 == sum(
        sample("obskit_spans_dropped_total", reason=reason)
        for reason in ("export_failed", "queue_full", "shutdown_timeout")
    )  # every span is accounted for


# -- environment -------------------------------------------------------------------------------


def test_otel_environment_variables_configure_grpc_export(monkeypatch: pytest.MonkeyPatch) -> None:
    """OTEL_EXPORTER_OTLP_*, OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES set up gRPC export."""
    with OtlpGrpcReceiver() as rx:
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", rx.endpoint)
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
        monkeypatch.setenv("OTEL_SERVICE_NAME", "inventory")
        monkeypatch.setenv(
            "OTEL_RESOURCE_ATTRIBUTES",
            "service.name=overridden,service.version=4.5.6,deployment.environment=prod,"
            "team=stock%20keepers",
        )
        monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "50")
        config = obskit.configure()
        with trace.get_tracer("e2e").start_as_current_span("reserve"):
            pass
        obskit.force_flush(5.0)
        spans = rx.wait_for_spans(1)
        obskit.shutdown(timeout=2.0)

    assert ("otlp", "grpc") == (config.traces_exporter, config.otlp_protocol)
    assert ["reserve"] == [s.span.name for s in spans]
    resource = spans[0].resource
    assert {
        "service.name": "inventory",  # OTEL_SERVICE_NAME wins over service.name in the list
        "service.version": "4.5.6",
        "deployment.environment": "prod",
        "team": "stock keepers",
    } == {
        k: resource.get(k)
        for k in ("service.name", "service.version", "deployment.environment", "team")
    }
    assert 1.0 == sample("obskit_spans_exported_total", exporter="otlp_grpc")


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_otlp_metrics_carry_http_server_request_duration(protocol: str) -> None:
    """With OTLP metrics on, requests are also pushed as http.server.request.duration."""
    from obskit.wsgi import ObskitMiddleware

    receiver_class = OtlpGrpcReceiver if protocol == "grpc" else OtlpHttpReceiver
    with receiver_class() as rx:
        obskit.configure(
            service_name="metrics-e2e",
            otlp_endpoint=rx.endpoint,
            otlp_protocol=protocol,
            metrics_exporter="prometheus+otlp",
            metric_export_interval=0.2,
        )

        def app(environ: dict[str, object], start_response: Any) -> list[bytes]:
            start_response("200 OK", [])
            return [b"ok"]

        wrapped = ObskitMiddleware(app, route_resolver=lambda environ: "/items/{id}")
        for _ in range(3):
            list(wrapped({"REQUEST_METHOD": "GET", "PATH_INFO": "/items/1"}, lambda *a: None))

        def pushed() -> list[Any]:
            return [
                metric
                for request in rx.requests("metrics")
                for rm in request.resource_metrics
                for sm in rm.scope_metrics
                for metric in sm.metrics
                if metric.name == "http.server.request.duration"
            ]

        assert rx.wait_for(lambda: bool(pushed()), timeout=10)
        point = pushed()[-1].histogram.data_points[0]
        attrs = {kv.key: kv.value for kv in point.attributes}
        # Shut down while the receiver still answers: a metrics exporter left pushing every
        # 0.2 s to a receiver gone would retry on its own thread for seconds, its warnings
        # landing in whichever test runs then.
        obskit.shutdown()
    assert 3 == point.count
    assert "/items/{id}" == attrs["http.route"].string_value
    assert 200 == attrs["http.response.status_code"].int_value
