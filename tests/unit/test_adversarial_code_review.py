"""Findings of a read-through review of obskit's code (2026-11-24), each pinned by a test.

Every test names the bug it found, since fixed, or the duplication it removed; all run in-process
on WSGI/ASGI apps called directly, with spans captured by ``obskit.testing.capture()`` (the
real span pipeline, encoded to OTLP bytes and decoded back).
"""

from __future__ import annotations

import io
import logging
from typing import Any

import pytest
from opentelemetry.sdk.trace import SpanProcessor

import obskit
from obskit.testing import Capture, capture, samples
from obskit.wsgi import ObskitMiddleware as WsgiMiddleware

ERROR = 2  # OTLP Status.STATUS_CODE_ERROR


class Unprintable(Exception):
    """User code's exception whose ``__str__`` itself raises."""

    def __str__(self) -> str:
        raise RuntimeError("no str")


def environ(path: str = "/x", method: str = "GET") -> dict[str, Any]:
    return {
        "REQUEST_METHOD": method,
        "PATH_INFO": path,
        "SERVER_NAME": "127.0.0.1",
        "SERVER_PORT": "8000",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "wsgi.url_scheme": "http",
        "wsgi.input": io.BytesIO(),
    }


def span_rows(cap: Capture) -> list[tuple[str, dict[str, Any], int, list[str]]]:
    rows = []
    for span in cap.spans():
        attributes = {a.key: a.value.string_value or a.value.int_value for a in span.attributes}
        rows.append((span.name, attributes, span.status.code, [e.name for e in span.events]))
    return rows


def requests_total() -> list[tuple[tuple[tuple[str, str], ...], float]]:
    return sorted(
        (tuple(sorted(labels.items())), v) for labels, v in samples("http_requests_total")
    )


def call(app: Any, path: str = "/x") -> None:
    try:
        body = app(environ(path), lambda *a: None)
        b"".join(body)
        getattr(body, "close", lambda: None)()
    except Exception:
        pass


# A bug this test found, since fixed: obskit/http/_pipeline.py _mark_outcome called the SDK's
# span.record_exception() unguarded (on the SDK span path: an application's own span processor,
# keep_whole_trace, a tracer_provider= of its own); the SDK calls str(exc), and a raising
# __str__ skipped the rest of finish(): no ERROR status, no error.type.
def test_a_raising_str_still_marks_the_sdk_server_span_failed() -> None:
    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        raise Unprintable()

    provider = obskit.tracer_provider()
    multi = provider._active_span_processor  # type: ignore[attr-defined]
    before = multi._span_processors
    try:
        with capture() as cap:
            provider.add_span_processor(SpanProcessor())  # the SDK span path
            call(WsgiMiddleware(app))
            rows = span_rows(cap)
    finally:  # an application's processor turns obskit's lean spans off for good: undone here
        multi._span_processors = before
        provider.lean = True  # type: ignore[attr-defined]
    assert [(ERROR, f"{__name__}.Unprintable", ["exception"])] == [
        (status, attributes.get("error.type"), events) for _, attributes, status, events in rows
    ]
    assert [] == samples("obskit_internal_errors_total")


# A bug this test found, since fixed: the same, with keep_whole_trace on and the head decision
# "drop": the failing request's trace was lost (the keep decision came after the raise).
def test_a_raising_str_does_not_lose_a_kept_trace() -> None:
    class Plain(Exception):
        pass

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        raise (Unprintable if environ["PATH_INFO"] == "/bad" else Plain)()

    with capture(sampler="always_off", keep_errors=True, keep_whole_trace=True) as cap:
        middleware = WsgiMiddleware(app)
        for path in ("/good", "/bad"):
            call(middleware, path)
        rows = span_rows(cap)
    assert [("/good", ERROR), ("/bad", ERROR)] == [
        (attributes["url.path"], status) for _, attributes, status, _ in rows
    ]


# A bug this test found, since fixed: @obskit.red asked its errors= predicate twice per failing
# call (once for the metric, once for the span), so a predicate that is not a pure function
# could count the call as an error and leave the span unmarked, or the reverse.
@pytest.mark.parametrize("shape", ["function", "coroutine", "generator"])
def test_the_errors_predicate_is_asked_once_per_failing_call(shape: str) -> None:
    import asyncio

    asked: list[BaseException] = []

    def is_error(exc: BaseException) -> bool:
        asked.append(exc)
        return len(asked) % 2 == 1  # the first answer is "an error", the next one not

    with capture(sampler="always_on") as cap:
        if shape == "function":

            @obskit.red(trace=True, errors=is_error)
            def work() -> None:
                raise LookupError("x")

            with pytest.raises(LookupError):
                work()
        elif shape == "coroutine":

            @obskit.red(trace=True, errors=is_error)
            async def work_async() -> None:
                raise LookupError("x")

            with pytest.raises(LookupError):
                asyncio.run(work_async())
        else:

            @obskit.red(trace=True, errors=is_error)
            def work_gen() -> Any:
                yield 1
                raise LookupError("x")

            with pytest.raises(LookupError):
                list(work_gen())
        rows = span_rows(cap)
        results = {labels["result"]: value for labels, value in samples("function_calls_total")}
    assert 1 == len(asked)
    assert 1.0 == results.get("error")
    assert [ERROR] == [status for _, _, status, _ in rows]


# A bug this test found, since fixed: obskit/http/_pipeline.py HttpTelemetry copied
# excluded_paths, keep_errors, slow_threshold, keep_whole_trace, the exemplar switch and the
# metrics path when an adapter was built; a later configure() -- whose docstring promises "the
# previous pipeline is ... replaced" -- reached only the sampler of adapters built before it.
def test_adapters_built_before_a_reconfiguration_follow_its_options() -> None:
    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        start_response("500 Internal Server Error", [])
        return [b"x"]

    with capture(sampler="always_off", keep_errors=True) as cap:
        middleware = WsgiMiddleware(app)
        call(middleware, "/before")
        obskit.configure(sampler="always_off", keep_errors=False, excluded_paths=("/skip",))
        for path in ("/fail", "/skip"):
            call(middleware, path)
        paths = [attributes["url.path"] for _, attributes, _, _ in span_rows(cap)]
        counted = requests_total()
    assert ["/before"] == paths  # /fail not kept (keep_errors off), /skip not traced
    assert [((("method", "GET"), ("route", "__unmatched__"), ("status", "500")), 2.0)] == counted


def test_an_explicit_exclusion_list_survives_a_reconfiguration() -> None:
    from obskit.http._pipeline import HttpTelemetry

    with capture(sampler="always_on") as cap:
        telemetry = HttpTelemetry(excluded_paths=["/private"])
        middleware = WsgiMiddleware(lambda e, s: (s("200 OK", []), [b"ok"])[1], telemetry=telemetry)
        obskit.configure(sampler="always_on", excluded_paths=())
        for path in ("/private", "/public"):
            call(middleware, path)
        paths = [attributes["url.path"] for _, attributes, _, _ in span_rows(cap)]
    assert ["/public"] == paths


# A bug this test found, since fixed: with metrics_port busy at start-up, the app's own path
# serves the scrape "until the port is taken over" (obskit/_runtime.py) -- but it kept serving
# it after the port was bound, exposing /metrics on the service's public port for good.
def test_the_app_path_stops_serving_metrics_once_the_port_is_taken_over(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import socket
    import time

    from obskit import _state
    from obskit.metrics import exposition

    monkeypatch.setattr(exposition, "BIND_RETRY_INTERVAL", 0.05)
    blocker = socket.socket()
    blocker.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    blocker.bind(("0.0.0.0", 0))  # the metrics server's own address
    blocker.listen()
    port = blocker.getsockname()[1]

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        start_response("404 Not Found", [])
        return [b"the app's own answer"]

    def scrape(middleware: Any) -> tuple[list[str], bytes]:
        statuses: list[str] = []
        body = b"".join(middleware(environ("/metrics"), lambda status, h: statuses.append(status)))
        return statuses, body

    with capture(metrics_port=port):
        try:
            middleware = WsgiMiddleware(app)
            retry = _state.runtime.metrics_retry  # type: ignore[union-attr]
            assert retry is not None
            statuses, body = scrape(middleware)
            assert ["200 OK"] == statuses
            assert b"# HELP obskit_" in body
        finally:
            blocker.close()
        deadline = time.monotonic() + 10
        while retry.server is None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert retry.server is not None
        assert (["404 Not Found"], b"the app's own answer") == scrape(middleware)


# A bug this test found, since fixed: obskit/wsgi.py returned a streamed body with the request
# still current on the thread, reset only at its last byte or close(); an outer middleware that
# dropped the body for one of its own left it current for good -- every later request on that
# thread was taken for a nested one (not counted, not traced), the in-flight gauge stayed at 1,
# and every later log line carried the dead request's trace.
def test_a_streamed_body_dropped_unclosed_leaves_the_thread_clean() -> None:
    import gc

    from flask import Flask, Response

    from obskit.flask import Obskit
    from obskit.logging import current_request

    app = Flask(__name__)

    @app.get("/items/<int:i>")
    def item(i: int) -> Response:
        return Response(chunk for chunk in [b"a", b"b"])

    Obskit(app)

    def outer(environ: dict[str, Any], start_response: Any) -> Any:
        result = app.wsgi_app(environ, start_response)
        return [b"replaced"] if environ["PATH_INFO"] == "/items/2" else result

    with capture() as cap:
        for n in range(1, 5):
            body = outer(environ(f"/items/{n}"), lambda *a: None)
            b"".join(body)
            getattr(body, "close", lambda: None)()
            del body
            gc.collect()
        paths = [attributes["url.path"] for _, attributes, _, _ in span_rows(cap)]
        counted = requests_total()
        flight = samples("http_requests_in_flight")
    assert ["/items/1", "/items/2", "/items/3", "/items/4"] == sorted(paths)
    assert [((("method", "GET"), ("route", "/items/<int:i>"), ("status", "200")), 4.0)] == counted
    assert [0.0] == [value for _, value in flight]
    assert current_request() is None


def _closed_after_one_chunk_sync(cap: Capture) -> list[tuple[str, dict[str, Any], int, list[str]]]:
    from opentelemetry.context import get_current

    from obskit.http._pipeline import HttpTelemetry, finishing_chunks

    request = HttpTelemetry().start("GET", "/sync", lambda name: None)
    assert request is not None
    request.status = 200
    context = get_current()
    request.restore()
    chunks = finishing_chunks(iter([b"a", b"b"]), request, context)
    next(chunks)
    chunks.close()
    return span_rows(cap)


def _closed_after_one_chunk_async(
    cap: Capture,
) -> list[tuple[str, dict[str, Any], int, list[str]]]:
    import asyncio

    from opentelemetry.context import get_current

    from obskit.http._pipeline import HttpTelemetry, finishing_chunks_async

    async def content() -> Any:
        yield b"a"
        yield b"b"

    async def main() -> None:
        request = HttpTelemetry().start("GET", "/async", lambda name: None)
        assert request is not None
        request.status = 200
        context = get_current()
        request.restore()
        chunks = finishing_chunks_async(content(), request, context)
        await chunks.__anext__()
        await chunks.aclose()

    asyncio.run(main())
    return span_rows(cap)


# Duplication this test pinned, since removed: obskit/wsgi.py and obskit/django/middleware.py
# had three "end the request with the body" wrappers that disagreed -- a client gone after the
# first chunk was a clean 200 in two and an ERROR span with error.type GeneratorExit in Django's
# async one. One pair in obskit/http/_pipeline.py now serves every adapter.
@pytest.mark.parametrize(
    "run", [_closed_after_one_chunk_sync, _closed_after_one_chunk_async], ids=["sync", "async"]
)
def test_a_body_closed_early_is_not_a_failure(run: Any) -> None:
    with capture(sampler="always_on") as cap:
        rows = run(cap)
    ((_, attributes, status, events),) = rows
    assert (200, None, 0, []) == (
        attributes.get("http.response.status_code"),
        attributes.get("error.type"),
        status,
        events,
    )


def test_a_body_freed_late_ends_its_request_without_resetting_a_newer_context() -> None:
    """Freed when something else is current (it was held, then dropped): the request ends and
    is counted, and the context current then is left alone. (Resetting the request's own
    context then would throw away whatever was set over it; it stays under it instead, and
    comes back when that is reset -- the limit of a body that is neither read nor closed.)"""
    import gc

    from opentelemetry import context as otel_context

    from obskit.logging import current_request

    def app(environ: dict[str, Any], start_response: Any) -> Any:
        start_response("200 OK", [])
        return (chunk for chunk in [b"a"])

    with capture() as cap:
        body = WsgiMiddleware(app)(environ("/held"), lambda *a: None)
        newer = otel_context.set_value("newer", "yes")
        token = otel_context.attach(newer)
        try:
            del body
            gc.collect()
            assert "yes" == otel_context.get_value("newer")
        finally:
            otel_context.detach(token)
            stale = current_request()
            if stale is not None:
                stale.restore()
        paths = [attributes["url.path"] for _, attributes, _, _ in span_rows(cap)]
    assert ["/held"] == paths
    assert [0.0] == [value for _, value in samples("http_requests_in_flight")]


# -- A second read-through (configuration, OTLP signals, span pipeline, metrics, logging) ------


# A bug this test found, since fixed: obskit/_otlp_signals.py's OTLP log handler sent the record
# as it was: the JSON line masked the card number, the bearer token and the password extra, the
# collector got them in clear.
def test_logs_exported_over_otlp_are_redacted_as_the_json_lines_are() -> None:
    import logging

    from tests.otlp_receiver import OtlpHttpReceiver

    message = "paid with 4111 1111 1111 1111, Authorization: Bearer abcdefghijklmnop"
    with OtlpHttpReceiver() as rx:
        with capture(
            traces_exporter="none",
            logs_exporter="otlp",
            otlp_endpoint=rx.endpoint,
            log_redact_keys=("card",),
        ):
            logging.getLogger("review.payments").warning(
                message, extra={"password": "hunter2", "card": "4111", "note": "mail a@b.example"}
            )
            assert obskit.force_flush(5.0)
        records = [
            record
            for request in rx.requests("logs")
            for rl in request.resource_logs
            for sl in rl.scope_logs
            for record in sl.log_records
            if sl.scope.name == "review.payments"
        ]
    ((body, attributes),) = [
        (r.body.string_value, {a.key: a.value.string_value for a in r.attributes}) for r in records
    ]
    assert "paid with ************1111, Authorization: Bearer [REDACTED]" == body
    assert ("[REDACTED]", "[REDACTED]", "mail a@b.example") == (
        attributes["password"],
        attributes["card"],
        attributes["note"],  # e-mail addresses are masked only with log_redact_emails
    )


# Bugs this test found, since fixed: obskit/config.py and obskit/_otlp_signals.py appended
# "/v1/<signal>" to the endpoint string, inside its query (".../otlp?tenant=acme/v1/traces").
def test_a_signal_path_goes_into_the_path_not_the_query() -> None:
    from obskit._otlp_signals import _endpoint
    from obskit.config import load_config

    config = load_config(otlp_endpoint="https://collector.example:4318/otlp?tenant=acme")
    assert "https://collector.example:4318/otlp/v1/traces?tenant=acme" == config.traces_endpoint
    assert "https://collector.example:4318/otlp/v1/metrics?tenant=acme" == _endpoint(
        config, "metrics"
    )


# A deviation this test found, since fixed: a per-signal traces endpoint must be used as it is,
# the root path when it has none (the OTLP exporter spec); obskit sent to /v1/traces, the SDK's
# exporters (obskit's metrics and logs) and `obskit doctor` to /.
@pytest.mark.parametrize(
    ("given", "used"),
    [
        ("http://collector:4318", "http://collector:4318/"),
        ("http://collector:4318/custom/traces", "http://collector:4318/custom/traces"),
    ],
)
def test_a_per_signal_traces_endpoint_is_used_as_it_is(given: str, used: str) -> None:
    from obskit.config import load_config

    assert used == load_config(otlp_traces_endpoint=given).traces_endpoint


# Bugs this test found, since fixed: with OTEL_EXPORTER_OTLP_TRACES_PROTOCOL and the generic
# OTEL_EXPORTER_OTLP_PROTOCOL both grpc, metrics and logs went over http/protobuf (the generic
# variable was ignored); with no endpoint at all, they were sent to the traces' default port
# (localhost:4317/v1/metrics over HTTP).
def test_metrics_and_logs_take_the_generic_protocol_and_their_own_default_endpoint(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from obskit._otlp_signals import _endpoint, _protocol
    from obskit.config import load_config

    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "grpc")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "otlp")
    config = load_config()
    assert ("grpc", "grpc") == (_protocol(config, "metrics"), _protocol(config, "logs"))
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_PROTOCOL")
    config = load_config()
    assert "http://localhost:4317" == config.traces_endpoint  # the traces' (gRPC) default
    assert "http/protobuf" == _protocol(config, "metrics")
    assert None is _endpoint(config, "metrics")  # the SDK exporter's own default: port 4318


# A bug this test found, since fixed: obskit/_runtime.py's configure summary (an INFO line)
# wrote the collector URL's password and query token; `obskit doctor` masked them.
def test_the_configure_summary_masks_the_collectors_credentials(
    caplog: pytest.LogCaptureFixture,
) -> None:
    import logging

    with caplog.at_level(logging.INFO, logger="obskit"), capture():
        obskit.configure(
            otlp_endpoint="https://svc:S3cr3t@collector.invalid:4318/?api_key=abc123",
            traces_exporter="otlp",
        )
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "https://svc:***@collector.invalid:4318/v1/traces?api_key=***" in text
    assert "S3cr3t" not in text
    assert "abc123" not in text


# A bug this test found, since fixed: obskit/cli/doctor.py check_grpc built the gRPC target
# without an IPv6 literal's brackets ("::1:4317"), so doctor reported FAIL for a collector the
# exporter reached (one grpc_target for both now).
def test_doctor_checks_an_ipv6_grpc_collector_as_the_exporter_reaches_it() -> None:
    import socket
    from concurrent import futures

    grpc = pytest.importorskip("grpc")
    from obskit.cli.doctor import check_grpc

    try:
        socket.socket(socket.AF_INET6).close()
    except OSError:
        pytest.skip("no IPv6 on this host")
    handler = grpc.method_handlers_generic_handler(
        "opentelemetry.proto.collector.trace.v1.TraceService",
        {"Export": grpc.unary_unary_rpc_method_handler(lambda request, context: b"")},
    )
    server = grpc.server(futures.ThreadPoolExecutor(2))
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("[::1]:0")
    server.start()
    try:
        result = check_grpc(f"http://[::1]:{port}", {}, 5.0)
    finally:
        server.stop(None).wait(5)
    assert ("OK", f"http://[::1]:{port} accepted an empty Export") == (
        result.level,
        result.reason,
    )


# A bug this test found, since fixed: obskit/_runtime.py returned before setup_logging when the
# SDK was disabled (OTEL_SDK_DISABLED), so logging=True wrote no JSON line at all -- and a
# reconfiguration to disabled removed the JSON handler: INFO lines vanished.
def test_json_logs_stay_when_the_sdk_is_disabled(capsys: pytest.CaptureFixture[str]) -> None:
    import json
    import logging

    from tests.logging_state import preserved_logging

    with preserved_logging():
        with capture(logging=True, traces_exporter="none"):
            obskit.configure(logging=True, traces_exporter="none", disabled=True)
            logging.getLogger("review.disabled").info("still written")
            obskit.force_flush()
        written = capsys.readouterr().err  # obskit's JSON lines go to stderr by default
    messages = [json.loads(line)["message"] for line in written.splitlines() if line[:1] == "{"]
    assert "still written" in messages


# A bug this test found, since fixed: log_level was applied only with logging=True; with OTLP
# logs alone the root logger stayed at the stdlib's WARNING and no INFO record was exported.
def test_log_level_decides_what_otlp_logs_export_without_json_logging() -> None:
    from tests.logging_state import preserved_logging
    from tests.otlp_receiver import OtlpHttpReceiver

    root = logging.getLogger()
    # A collector that answers: a dead port's exporter would retry, and warn, into later tests.
    with preserved_logging(), OtlpHttpReceiver() as rx:
        options = {"traces_exporter": "none", "logs_exporter": "otlp", "otlp_endpoint": rx.endpoint}
        root.setLevel(logging.WARNING)
        with capture(**options):
            assert logging.INFO == root.level
        root.setLevel(logging.ERROR)  # the app's own choice is left alone
        with capture(**options):
            assert logging.ERROR == root.level


# Bugs this test found, since fixed: obskit/config.py passed log_flush_interval unbounded to the
# flusher thread's wait (1e10 killed it with OverflowError: INFO lines were then written only at
# exit), and named OTEL_RESOURCE_ATTRIBUTES as the source of a service.name given by the
# resource_attributes= argument.
def test_log_flush_interval_is_a_bounded_wait_and_resource_sources_are_right() -> None:
    from obskit.config import MAX_WAIT, load_config

    assert MAX_WAIT == load_config(log_flush_interval=1e10).log_flush_interval
    config = load_config(resource_attributes={"service.name": "from-arg"})
    assert ("from-arg", "argument") == (config.service_name, config.source_of("service_name"))


# A bug this test found, since fixed: obskit/tracing/pipeline.py woke its export thread when the
# queue held max_export_batch_size spans or 4 MiB; a queue smaller than either (OTEL_BSP_MAX_
# QUEUE_SIZE=100 with the default batch of 512, or a small bsp_max_queue_bytes) filled up and
# dropped spans as queue_full until the schedule delay ran out (900 of 1,000 in the review).
def test_a_small_span_queue_wakes_its_export_thread_before_it_fills() -> None:
    from obskit.config import ConfigError, load_config
    from obskit.exporters.jsonl import MemorySpanSink
    from obskit.tracing.pipeline import CompactSpanProcessor

    assert 100 == load_config(bsp_max_queue_size=100).bsp_max_export_batch_size
    with pytest.raises(ConfigError, match="at most bsp_max_queue_size"):
        load_config(bsp_max_queue_size=100, bsp_max_export_batch_size=200)
    processor = CompactSpanProcessor(
        MemorySpanSink(),
        resource_attributes={},
        max_queue_size=100,
        max_export_batch_size=512,
        max_queue_bytes=256 * 1024,
        schedule_delay=60.0,
    )
    try:
        assert (100, 128 * 1024) == (processor._batch, processor._wake_bytes)
    finally:
        processor.close(timeout=1.0)


# A deviation this test found, since fixed: obskit/tracing/server_span.py's lean spans kept the
# first events (and links) past a limit and refused the newest, where the SDK's BoundedList
# keeps the newest: on a full span, the exception event recorded at its end was the one lost.
def test_a_full_lean_span_keeps_its_newest_events_as_sdk_spans_do() -> None:
    """Two events allowed (OTEL_SPAN_EVENT_COUNT_LIMIT=2, as set_limits takes it from the SDK):
    the SDK's BoundedList would keep step-2 and the exception, and count one dropped."""
    from opentelemetry import trace
    from opentelemetry.sdk.trace import SpanLimits

    from obskit.tracing import server_span

    @obskit.red(trace=True)
    def work() -> None:
        span = trace.get_current_span()
        span.add_event("step-1")
        span.add_event("step-2")
        raise LookupError("boom")

    with capture(sampler="always_on") as cap:
        server_span.set_limits(SpanLimits(max_events=2))
        try:
            with pytest.raises(LookupError):
                work()
        finally:
            server_span.set_limits(SpanLimits())
        kept = [([e.name for e in s.events], s.dropped_events_count) for s in cap.spans()]
    assert [(["step-2", "exception"], 1)] == kept


# A bug this test found, since fixed: obskit/metrics/exposition.py's metrics port server polled
# for its stop every 0.5 s (socketserver's default), and close() waits for that poll:
# obskit.shutdown(timeout=0.01) took 200-500 ms with a metrics_port (every reconfiguration too).
def test_shutdown_with_a_metrics_port_stays_near_its_timeout() -> None:
    import socket
    import time

    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    with capture(traces_exporter="none", metrics_port=port):
        started = time.monotonic()
        obskit.shutdown(timeout=0.01)
        took = time.monotonic() - started
    assert took < 0.3, took


# Deviations this test found, since fixed: obskit/config.py read OTEL_SDK_DISABLED=1 or =yes as
# true (the OpenTelemetry spec: only "true", in any case; anything else is false, with a
# warning), and refused the spec's comma-separated OTEL_*_EXPORTER lists ("otlp,prometheus").
@pytest.mark.parametrize(
    ("value", "disabled", "warned"),
    [
        ("true", True, False),
        ("TRUE", True, False),
        ("false", False, False),
        ("", False, False),
        ("1", False, True),
        ("yes", False, True),
    ],
)
def test_otel_sdk_disabled_reads_as_opentelemetry_does(
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    value: str,
    disabled: bool,
    warned: bool,
) -> None:
    import logging

    from obskit.config import load_config

    monkeypatch.setenv("OTEL_SDK_DISABLED", value)
    with caplog.at_level(logging.WARNING, logger="obskit"):
        assert disabled is load_config().disabled
    assert warned == any("not a boolean" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize(
    ("variable", "value", "option", "read"),
    [
        ("OTEL_METRICS_EXPORTER", "otlp,prometheus", "metrics_exporter", "prometheus+otlp"),
        ("OTEL_METRICS_EXPORTER", "prometheus, otlp", "metrics_exporter", "prometheus+otlp"),
        ("OTEL_METRICS_EXPORTER", "none,otlp", "metrics_exporter", "otlp"),
        ("OTEL_TRACES_EXPORTER", "otlp,otlp", "traces_exporter", "otlp"),
        ("OTEL_LOGS_EXPORTER", "otlp", "logs_exporter", "otlp"),
    ],
)
def test_otel_exporter_lists_are_read(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, option: str, read: str
) -> None:
    from obskit.config import load_config

    monkeypatch.setenv(variable, value)
    assert read == getattr(load_config(otlp_endpoint="http://127.0.0.1:4318"), option)


def test_an_exporter_list_obskit_cannot_serve_is_a_config_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from obskit.config import ConfigError, load_config

    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "otlp,jsonl")  # spans go to one destination
    with pytest.raises(ConfigError, match="traces_exporter"):
        load_config()


# A bug this test found, since fixed: obskit/metrics/use.py's fork hooks, meant for gunicorn's
# master under --preload, ran at every fork in multi-process mode: a worker that forked a helper
# (multiprocessing) zeroed its own gauges, and the helper published the units its parent held.
_FORKING_WORKER = """
import json, os, sys, time
import obskit
from obskit.metrics.exposition import render
from obskit.metrics.use import use

def gauges():
    found = {}
    for line in render("text/plain")[0].decode().splitlines():
        if line.startswith(("resource_in_use{", "resource_capacity{")):
            found[line.split("{")[0]] = float(line.rsplit(" ", 1)[1])
    return found

obskit.configure(traces_exporter="none", multiproc_dir=sys.argv[1], runtime_metrics=False)
db = use("review-db", capacity=10)
db.acquired()
db.acquired()  # this worker holds 2 connections
seen = {"before": gauges()}
pid = os.fork()
if pid == 0:  # the helper: serves nothing, holds none of its parent's connections
    time.sleep(1.0)
    os._exit(0)
time.sleep(0.3)
seen["while_alive"] = gauges()
os.waitpid(pid, 0)
seen["after"] = gauges()
print(json.dumps(seen))
"""


def test_a_worker_that_forks_a_helper_keeps_its_use_gauges(tmp_path: Any) -> None:
    """Run in a child process: multi-process mode switches prometheus_client's value class for
    the rest of the process."""
    import json
    import subprocess
    import sys

    from tests.child_process import child_env

    directory = tmp_path / "prometheus"
    directory.mkdir()
    done = subprocess.run(
        [sys.executable, "-c", _FORKING_WORKER, str(directory)],
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert 0 == done.returncode, done.stderr
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    held = {"resource_in_use": 2.0, "resource_capacity": 10.0}
    assert held == seen["before"]
    # The helper alive: its own capacity counts (a live process), none of its parent's units.
    assert {"resource_in_use": 2.0, "resource_capacity": 20.0} == seen["while_alive"]
    assert held == seen["after"]


# -- Python 3.12 and 3.13 (a helper ran the whole suite on both) ----------------------------------

_SHORT_SCRIPT = """
import atexit, logging, sys, threading
import obskit
obskit.configure(otlp_endpoint=sys.argv[1], otlp_protocol=sys.argv[2], service_name="short",
                 logs_exporter="otlp")

def as_python_3_12_at_exit():
    # Registered after obskit's exit flush, so run before it (atexit is last in, first out):
    # from here on no thread can start, as on Python 3.12 at interpreter shutdown.
    def refuse(self):
        raise RuntimeError("can't create new thread at interpreter shutdown")
    threading.Thread.start = refuse

atexit.register(as_python_3_12_at_exit)
with obskit.tracer_provider().get_tracer("short").start_as_current_span("short-script-span"):
    logging.getLogger("short.app").warning("a log line")
"""


# A bug this test found, since fixed: on Python 3.12 no thread can start at interpreter shutdown
# (gh-104690), and obskit started three there -- the OTLP/HTTP deadline watcher at a sink's first
# export (often the exit flush), the bounded shutdown of the OTLP metrics and logs providers, and
# the SDK log handler's flush: a short script or a recycled gunicorn worker lost its spans and log
# records. The watcher starts with the sink now, the bounded shutdowns run on a thread started at
# configure, and the handler's flush is quiet.
@pytest.mark.parametrize("protocol", ["http/protobuf", "grpc"])
def test_a_short_script_exports_its_span_and_log_where_no_thread_starts_at_exit(
    protocol: str,
) -> None:
    import subprocess
    import sys

    from tests.child_process import child_env
    from tests.otlp_receiver import OtlpGrpcReceiver, OtlpHttpReceiver

    receiver = OtlpHttpReceiver() if protocol == "http/protobuf" else OtlpGrpcReceiver()
    with receiver as rx:
        done = subprocess.run(
            [sys.executable, "-c", _SHORT_SCRIPT, rx.endpoint, rx.protocol],
            env=child_env(OTEL_BSP_SCHEDULE_DELAY="600000", OTEL_BLRP_SCHEDULE_DELAY="600000"),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert rx.wait_for(lambda: len(rx.requests("logs")) >= 1)
        spans = [s.span.name for s in rx.wait_for_spans(1)]
    assert 0 == done.returncode, done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    assert ["short-script-span"] == spans


# -- A third read-through (decorators, logging paths, gunicorn, the docs' promises) ---------------


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[Any] = []

    def emit(self, record: Any) -> None:
        self.records.append(record)


# A bug this test found, since fixed: obskit/gunicorn.py Logger.access read gunicorn's
# access_log_enabled, which gunicorn 22 and 23 (allowed by pyproject: gunicorn>=22) do not have:
# an AttributeError on every request, outside the method's own guard -- no access line, and the
# sync worker skipped the response's close() and went to its error handling.
@pytest.mark.parametrize(("accesslog", "lines"), [("-", 1), (None, 0)])
def test_access_lines_with_a_gunicorn_before_24(accesslog: str | None, lines: int) -> None:
    import datetime

    from gunicorn.config import Config

    import obskit.gunicorn as og

    class Gunicorn23Logger(og.Logger):  # type: ignore[misc]
        access_log_enabled = None  # gunicorn 22 and 23 have no such attribute

    config = Config()
    config.set("accesslog", accesslog)
    log = Gunicorn23Logger(config)
    seen = _Records()
    log.access_log.addHandler(seen)
    try:

        class Response:
            status = "200 OK"
            sent = 2
            headers: list[Any] = []

        class Request:
            headers: list[Any] = []

        environ = {
            "REQUEST_METHOD": "GET",
            "RAW_URI": "/x",
            "PATH_INFO": "/x",
            "SERVER_PROTOCOL": "HTTP/1.1",
            "REMOTE_ADDR": "127.0.0.1",
        }
        log.access(Response(), Request(), environ, datetime.timedelta(seconds=1))
    finally:
        log.access_log.removeHandler(seen)
    assert lines == len(seen.records)


# A bug this test found, since fixed: gunicorn's logger setup, which a reload (SIGHUP) runs
# again, set the gunicorn loggers' levels anew: obskit handed their handlers back but not the
# log_levels option's levels (gunicorn.access=WARNING stopped working after the first reload).
def test_a_gunicorn_reload_keeps_the_configured_levels_of_its_loggers() -> None:
    import logging

    from gunicorn.config import Config

    import obskit.gunicorn as og
    from tests.logging_state import preserved_logging

    with preserved_logging():
        config = Config()
        config.set("accesslog", "-")
        log = og.Logger(config)
        levels = {"gunicorn.access": "WARNING", "gunicorn.error": "ERROR"}
        with capture(traces_exporter="none", logging=True, log_levels=levels):
            log.setup(config)  # what gunicorn's Arbiter.reload does
            access, error = (logging.getLogger(name) for name in levels)
            assert (logging.WARNING, logging.ERROR) == (access.level, error.level)


# A bug this test found, since fixed: obskit/metrics/red.py ended a traced call's span in a bare
# `finally`; an application's span processor whose on_end raises (the SDK does not catch it)
# replaced what the decorated function returned or raised.
def test_a_raising_span_processor_does_not_replace_the_calls_outcome(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from opentelemetry.sdk.trace import SpanProcessor

    from obskit import _state

    monkeypatch.setattr(_state, "raise_internal_errors", False)  # as in production

    class Raising(SpanProcessor):
        def on_end(self, span: Any) -> None:
            raise RuntimeError("processor on_end failed")

    @obskit.red(trace=True)
    def returns() -> str:
        return "value"

    @obskit.red(trace=True)
    def raises() -> None:
        raise KeyError("own")

    provider = obskit.tracer_provider()
    multi = provider._active_span_processor  # type: ignore[attr-defined]
    before = multi._span_processors
    try:
        with capture(sampler="always_on"):
            provider.add_span_processor(Raising())
            assert "value" == returns()
            with pytest.raises(KeyError, match="own"):
                raises()
            errors = {
                labels["component"]: v for labels, v in samples("obskit_internal_errors_total")
            }
    finally:
        multi._span_processors = before
        provider.lean = True  # type: ignore[attr-defined]
    assert 2.0 == errors.get("red_span")


# A bug this test found, since fixed: obskit/metrics/use.py took errors=/timeouts= as isinstance's
# second argument as given: a list of types turned every exception of the application into a
# TypeError (and @obskit.red took a list as a predicate, counting every exception an error).
def test_exception_types_given_as_a_list() -> None:
    from obskit.metrics.use import use

    with capture(traces_exporter="none"):
        tracker = use("review-list", capacity=1, errors=[LookupError], timeouts=[TimeoutError])
        with pytest.raises(LookupError, match="own"), tracker:
            raise LookupError("own")

        @obskit.red(errors=[KeyError])
        def work(exc: BaseException) -> None:
            raise exc

        for exc in (KeyError("k"), ValueError("v")):
            with pytest.raises(type(exc)):
                work(exc)
        results = {labels["result"]: v for labels, v in samples("function_calls_total")}
        failures = {
            labels["reason"]: v
            for labels, v in samples("resource_errors_total")
            if labels.get("resource") == "review-list" and v
        }
    assert (1.0, 1.0) == (results.get("error"), results.get("ok"))  # only the KeyError
    assert {"failure": 1.0} == failures
    with pytest.raises(TypeError, match="exception types"):
        use("review-bad", errors=["not a type"])  # type: ignore[list-item]


# Bugs this test found, since fixed: obskit/_shapes.py turned athrow(GeneratorExit) into a
# decorated async generator into aclose() of the inner one (RuntimeError where the undecorated
# generator yields its cleanup value), and took a @types.coroutine function for a generator
# (its decorated form could not be awaited).
def test_decorated_async_generators_and_legacy_coroutines_behave_as_undecorated() -> None:
    import asyncio
    import types

    async def cleaning() -> Any:
        try:
            yield 1
        except GeneratorExit:
            yield "cleanup"

    @types.coroutine
    def legacy() -> Any:
        yield from ()
        return 42

    async def main() -> tuple[Any, Any, Any]:
        plain, decorated = cleaning(), obskit.red(cleaning)()
        await plain.__anext__()
        await decorated.__anext__()
        thrown = (await plain.athrow(GeneratorExit), await decorated.athrow(GeneratorExit))
        return thrown, await legacy(), await obskit.red(legacy)()

    with capture(traces_exporter="none"):
        thrown, plain_value, decorated_value = asyncio.run(main())
    assert ("cleanup", "cleanup") == thrown
    assert 42 == plain_value == decorated_value


# A bug this test found, since fixed: obskit/logging.py redacted the text it writes for bytes,
# sets, exceptions and other objects at top level only: nested in a dict or list, a card number in
# them reached the line in clear.
def test_text_written_for_nested_values_is_redacted(capsys: pytest.CaptureFixture[str]) -> None:
    import enum
    import json

    from tests.logging_state import preserved_logging

    card = "4111 1111 1111 1111"

    class Obj:
        def __repr__(self) -> str:
            return f"Obj({card})"

    class Level(enum.IntEnum):
        HIGH = 3

    extra = {
        "nested_bytes": {"raw": card.encode()},
        "nested_set": [{card}],
        "nested_obj": {"o": Obj()},
        "nested_exc": [ValueError(card)],
        "nested_level": {"l": Level.HIGH},
    }
    with preserved_logging(), capture(traces_exporter="none", logging=True):
        logging.getLogger("review.redact").warning("m", extra=extra)
        obskit.force_flush()
        written = capsys.readouterr().err
    (line,) = [json.loads(x) for x in written.splitlines() if '"review.redact"' in x]
    masked = "************1111"
    assert {"raw": masked} == line["nested_bytes"]
    assert [[masked]] == line["nested_set"]
    assert {"o": f"Obj({masked})"} == line["nested_obj"]
    assert [f"ValueError: {masked}"] == line["nested_exc"]
    assert {"l": 3} == line["nested_level"]  # numbers stay numbers


# A bug this test found, since fixed: obskit/logging.py JsonFormatter took an extra= named
# obskit_trace_id for CorrelationFilter's stamp (the formatter used without the filter, as
# dictConfig may set it up): the line lost its message and was counted as a format error.
def test_an_extra_named_like_obskits_stamps_leaves_the_line_whole() -> None:
    import io
    import json

    from obskit.logging import JsonFormatter

    buffer = io.StringIO()
    handler = logging.StreamHandler(buffer)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("review.stamps")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        logger.warning("order %s paid", 43, extra={"obskit_trace_id": 7})
        logger.warning("plain", extra={"obskit_request": "r-1", "kept": 1})
    finally:
        logger.removeHandler(handler)
        logger.propagate = True
    lines = [json.loads(line) for line in buffer.getvalue().splitlines()]
    assert [("order 43 paid", None), ("plain", 1)] == [(x["message"], x.get("kept")) for x in lines]
    assert not any(key.startswith("obskit_") for line in lines for key in line)


@obskit.red
def _picklable_red(x: int) -> int:
    return x * 2


class _PicklableMethods:
    @obskit.red
    def method(self, x: int) -> int:
        return x + 1

    @classmethod
    @obskit.red
    def class_method(cls, x: int) -> int:
        return x + 2


# A bug this test found, since fixed: a function decorated by @obskit.red or a USE tracker could
# not be pickled or deep-copied (wrapt's proxy refuses), so it could not be handed to a process
# pool or multiprocessing -- the docs say nothing about the function changes.
def test_decorated_functions_pickle_and_copy_as_functions_do() -> None:
    import copy
    import pickle

    from obskit.metrics.use import use

    tracked = use("review-pickle", capacity=1)(_picklable_red)
    assert pickle.loads(pickle.dumps(_picklable_red)) is _picklable_red
    assert copy.deepcopy(_picklable_red) is _picklable_red
    assert copy.copy(_picklable_red) is _picklable_red
    assert 6 == pickle.loads(pickle.dumps(_PicklableMethods().method))(5)
    assert 7 == pickle.loads(pickle.dumps(_PicklableMethods.class_method))(5)
    with pytest.raises((pickle.PicklingError, AttributeError, TypeError)):
        pickle.dumps(tracked)  # not reachable by its name: as for any function assigned elsewhere
