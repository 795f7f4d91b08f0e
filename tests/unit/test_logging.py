"""JSON logs: fields, trace and request correlation, redaction, safety, consistent sampling."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import decimal
import http
import io
import json
import logging
import logging.handlers
import os
import pathlib
import queue
import random
import re
import socket
import subprocess
import sys
import threading
import time
import types
from collections.abc import Iterator
from typing import Any

import flask
import pytest
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.sdk.trace.sampling import Decision, TraceIdRatioBased
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags

import obskit
from obskit.flask import Obskit
from obskit.logging import (
    FRAMEWORK_LOGGERS,
    BufferedStreamHandler,
    CorrelationFilter,
    JsonFormatter,
    JsonStreamHandler,
    setup_logging,
)
from obskit.testing import capture
from obskit.tracing._fastctx import with_span
from tests.child_process import child_env
from tests.logging_state import preserved_logging
from tests.loopback import get_from

TIMESTAMP = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z")
HEX32 = re.compile(r"[0-9a-f]{32}")
HEX16 = re.compile(r"[0-9a-f]{16}")
HEX2 = re.compile(r"[0-9a-f]{2}")
#: 2,000 fixed, reproducible trace ids.
TRACE_IDS = [random.Random(seed).getrandbits(128) | 1 for seed in range(2_000)]
VISA = "4111 1111 1111 1111"  # Luhn-valid test number
NOT_LUHN = "4111 1111 1111 1112"  # 16 digits, fails the Luhn check


# -- fixtures and helpers --------------------------------------------------------------------


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    """Root and every named logger are restored after."""
    with preserved_logging():
        try:
            yield
        finally:
            obskit.testing.reset()


def lines(buffer: io.StringIO) -> list[dict[str, Any]]:
    """Every line written so far, each parsed as one JSON object."""
    text = buffer.getvalue()
    return [json.loads(line) for line in text.splitlines()]


def only(buffer: io.StringIO, logger: str) -> dict[str, Any]:
    """The single line ``logger`` wrote."""
    found = [line for line in lines(buffer) if line.get("logger", line.get("log.logger")) == logger]
    assert 1 == len(found), buffer.getvalue()
    return found[0]


def json_stream() -> io.StringIO:
    """A buffer that obskit's handler (installed by configure(logging=True)) now writes to."""
    handler = next(h for h in logging.getLogger().handlers if h.get_name() == "obskit-json")
    buffer = io.StringIO()
    handler.setStream(buffer)  # type: ignore[attr-defined]
    return buffer


def tracer() -> trace.Tracer:
    return obskit.tracer_provider().get_tracer("tests.logging")


def in_trace(trace_id: int, sampled: bool = True) -> Any:
    """Attach a remote span context with ``trace_id``; returns the token to detach."""
    flags = TraceFlags(TraceFlags.SAMPLED if sampled else TraceFlags.DEFAULT)
    ctx = SpanContext(trace_id, 0x1234, is_remote=True, trace_flags=flags)
    return otel_context.attach(trace.set_span_in_context(NonRecordingSpan(ctx)))


def format_one(formatter: JsonFormatter, msg: str, *args: Any, **extra: Any) -> str:
    """Format one INFO record of logger ``t`` carrying ``extra``."""
    record = logging.getLogger("t").makeRecord("t", logging.INFO, "f.py", 1, msg, args, None)
    for key, value in extra.items():
        setattr(record, key, value)
    return formatter.format(record)


def fetch(client: Any, path: str, **headers: str) -> tuple[int, bytes]:
    """GET ``path`` through the Flask test client, read the whole body and close the response
    (as a WSGI server does: the request ends, and its context is restored, at the last byte)."""
    with client.get(path, headers=headers) as response:
        return response.status_code, response.get_data()


# -- fields ----------------------------------------------------------------------------------


def test_every_field_is_present_and_well_formed() -> None:
    """A line in a span has timestamp, level, logger, message, service.*, ids and extras."""
    with capture(
        service_name="checkout", service_version="1.2.3", environment="staging", logging=True
    ):
        buffer = json_stream()
        with tracer().start_as_current_span("work"):
            logging.getLogger("app.orders").warning("charged %s", "order", extra={"order": 42})
        line = only(buffer, "app.orders")
    assert {
        "timestamp",
        "level",
        "logger",
        "message",
        "service.name",
        "service.version",
        "deployment.environment",
        "trace_id",
        "span_id",
        "trace_flags",
        "order",
    } == set(line)
    assert TIMESTAMP.fullmatch(line["timestamp"])
    assert "WARNING" == line["level"]
    assert "charged order" == line["message"]
    assert ("checkout", "1.2.3", "staging") == (
        line["service.name"],
        line["service.version"],
        line["deployment.environment"],
    )
    assert HEX32.fullmatch(line["trace_id"])
    assert HEX16.fullmatch(line["span_id"])
    assert HEX2.fullmatch(line["trace_flags"])
    assert 42 == line["order"]


def test_timestamp_is_rfc3339_utc_with_milliseconds() -> None:
    """The timestamp parses as an aware UTC datetime within the time of the call."""
    buffer = io.StringIO()
    setup_logging(stream=buffer)
    before = datetime.datetime.now(datetime.timezone.utc)
    logging.getLogger("app").info("now")
    after = datetime.datetime.now(datetime.timezone.utc)
    text = only(buffer, "app")["timestamp"]
    stamp = datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))
    assert text.endswith("Z")
    assert datetime.timedelta(0) == stamp.utcoffset()
    slack = datetime.timedelta(milliseconds=1)
    assert before - slack <= stamp <= after + slack


def test_timestamp_milliseconds_are_exact() -> None:
    """The formatter renders a record's creation time to the millisecond, in UTC."""
    record = logging.makeLogRecord({"msg": "x", "created": 1_700_000_000.9876})
    line = json.loads(JsonFormatter().format(record))
    assert "2023-11-14T22:13:20.987Z" == line["timestamp"]


def test_trace_and_span_ids_equal_the_current_span() -> None:
    """trace_id/span_id/trace_flags are those of the span current where the line is logged."""
    with capture(logging=True):
        buffer = json_stream()
        with tracer().start_as_current_span("outer"), tracer().start_as_current_span("inner"):
            ctx = trace.get_current_span().get_span_context()
            logging.getLogger("app").info("inside")
        line = only(buffer, "app")
    assert format(ctx.trace_id, "032x") == line["trace_id"]
    assert format(ctx.span_id, "016x") == line["span_id"]
    assert format(ctx.trace_flags, "02x") == line["trace_flags"]


def test_no_trace_fields_outside_a_span() -> None:
    """Outside any span the line has no trace_id, span_id or trace_flags."""
    buffer = io.StringIO()
    setup_logging(stream=buffer)
    logging.getLogger("app").info("idle")
    line = only(buffer, "app")
    assert set() == {"trace_id", "span_id", "trace_flags"} & set(line)


def test_exception_fields() -> None:
    """logger.exception() adds exception.type, .message and .stacktrace."""
    buffer = io.StringIO()
    setup_logging(stream=buffer)
    try:
        raise KeyError("missing")
    except KeyError:
        logging.getLogger("app").exception("failed")
    line = only(buffer, "app")
    assert "KeyError" == line["exception.type"]
    assert "'missing'" == line["exception.message"]
    assert line["exception.stacktrace"].startswith("Traceback (most recent call last):")
    assert line["exception.stacktrace"].rstrip().endswith("KeyError: 'missing'")


# -- request fields (Flask through obskit) -----------------------------------------------------


@pytest.fixture
def flask_client() -> Iterator[tuple[Any, io.StringIO]]:
    """A Flask app instrumented with obskit whose view logs one line; obskit's JSON buffer."""

    with capture(service_name="shop", logging=True):
        buffer = json_stream()
        app = flask.Flask("logs")
        Obskit(app)

        @app.get("/items/<int:item_id>")
        def item(item_id: int) -> dict[str, Any]:
            logging.getLogger("shop.view").info("item %d", item_id)
            span = trace.get_current_span().get_span_context()
            return {"span_id": format(span.span_id, "016x")}

        yield app.test_client(), buffer


def test_request_fields_inside_a_flask_request(flask_client: tuple[Any, io.StringIO]) -> None:
    """Inside a request: route template, method and the X-Request-ID header's value."""
    client, buffer = flask_client
    status, body = fetch(client, "/items/7", **{"X-Request-ID": "req-abc-123"})
    assert 200 == status
    line = only(buffer, "shop.view")
    assert "/items/<int:item_id>" == line["http.route"]
    assert "GET" == line["http.request.method"]
    assert "req-abc-123" == line["request_id"]
    assert json.loads(body)["span_id"] == line["span_id"]


def test_request_id_is_the_span_id_without_header(flask_client: tuple[Any, io.StringIO]) -> None:
    """Without X-Request-ID the request_id is the server span's id."""
    client, buffer = flask_client
    _, body = fetch(client, "/items/8")
    line = only(buffer, "shop.view")
    assert json.loads(body)["span_id"] == line["request_id"]
    assert line["span_id"] == line["request_id"]


def test_no_request_fields_after_the_request(flask_client: tuple[Any, io.StringIO]) -> None:
    """Once the request is over, lines carry no request fields any more."""
    client, buffer = flask_client
    assert 200 == fetch(client, "/items/9")[0]
    logging.getLogger("shop.after").info("later")
    line = only(buffer, "shop.after")
    assert set() == {"request_id", "http.request.method", "http.route", "trace_id"} & set(line)


# -- ECS -------------------------------------------------------------------------------------


def test_ecs_field_names() -> None:
    """log_format="ecs" renames every field to its Elastic Common Schema name."""
    with capture(service_name="checkout", environment="prod", logging=True, log_format="ecs"):
        buffer = json_stream()
        with tracer().start_as_current_span("work"):
            ctx = trace.get_current_span().get_span_context()
            try:
                raise ValueError("bad")
            except ValueError:
                logging.getLogger("app").error("boom", extra={"order": 1})
                logging.getLogger("app").exception("boom")
        line = [entry for entry in lines(buffer) if entry.get("log.logger") == "app"][1]
    assert {
        "@timestamp",
        "log.level",
        "log.logger",
        "message",
        "service.name",
        "service.version",
        "service.environment",
        "trace.id",
        "span.id",
        "trace.flags",
        "error.type",
        "error.message",
        "error.stack_trace",
    } == set(line)
    assert TIMESTAMP.fullmatch(line["@timestamp"])
    assert ("ERROR", "app", "prod") == (
        line["log.level"],
        line["log.logger"],
        line["service.environment"],
    )
    assert format(ctx.trace_id, "032x") == line["trace.id"]
    assert "ValueError" == line["error.type"]


def test_ecs_request_fields() -> None:
    """ECS names for the request fields: http.request.id, http.request.method, url.path_template."""
    with capture(logging=True, log_format="ecs"):
        buffer = json_stream()
        app = flask.Flask("ecs")
        Obskit(app)

        @app.get("/users/<name>")
        def user(name: str) -> str:
            logging.getLogger("ecs.view").info("user")
            return name

        fetch(app.test_client(), "/users/ann", **{"X-Request-ID": "r-1"})
        line = only(buffer, "ecs.view")
    assert ("r-1", "GET", "/users/<name>") == (
        line["http.request.id"],
        line["http.request.method"],
        line["url.path_template"],
    )


def test_message_truncated_is_event_truncated_in_ecs() -> None:
    """The truncation marker is ``event.truncated`` in ECS."""
    formatter = JsonFormatter(field_style="ecs", max_message_bytes=10)
    line = json.loads(format_one(formatter, "x" * 100))
    assert (True, "x" * 10) == (line["event.truncated"], line["message"])


# -- levels ----------------------------------------------------------------------------------


def test_per_logger_levels_from_configure() -> None:
    """log_levels sets each named logger's level; the root keeps log_level."""
    with capture(logging=True, log_level="INFO", log_levels={"noisy": "WARNING", "app": "DEBUG"}):
        buffer = json_stream()
        logging.getLogger("noisy.sub").info("dropped")
        logging.getLogger("noisy.sub").warning("kept")
        logging.getLogger("app").debug("debug kept")
        logging.getLogger("other").debug("dropped too")
        assert logging.WARNING == logging.getLogger("noisy").level
        assert logging.DEBUG == logging.getLogger("app").level
        assert logging.INFO == logging.getLogger().level
        messages = [line["message"] for line in lines(buffer)]
    assert ["kept", "debug kept"] == messages


def test_per_logger_levels_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """OBSKIT_LOG_LEVELS="uvicorn.access=WARNING,app=DEBUG" and OBSKIT_LOG_LEVEL apply."""
    monkeypatch.setenv("OBSKIT_LOGGING", "true")
    monkeypatch.setenv("OBSKIT_LOG_LEVEL", "ERROR")
    monkeypatch.setenv("OBSKIT_LOG_LEVELS", "uvicorn.access=WARNING,app=DEBUG")
    with capture():
        buffer = json_stream()
        logging.getLogger("uvicorn.access").info("access dropped")
        logging.getLogger("uvicorn.access").warning("access kept")
        logging.getLogger("app").debug("app kept")
        logging.getLogger("other").warning("other dropped")
        assert logging.WARNING == logging.getLogger("uvicorn.access").level
        assert logging.DEBUG == logging.getLogger("app").level
        assert logging.ERROR == logging.getLogger().level
        messages = [line["message"] for line in lines(buffer)]
    assert ["access kept", "app kept"] == messages


def test_framework_loggers_are_routed_to_the_json_handler() -> None:
    """uvicorn/gunicorn/django/flask loggers lose their handlers and reach the root as JSON."""
    for name in FRAMEWORK_LOGGERS:
        framework = logging.getLogger(name)
        framework.addHandler(logging.StreamHandler(io.StringIO()))
        framework.propagate = False
    buffer = io.StringIO()
    setup_logging(stream=buffer)
    for name in FRAMEWORK_LOGGERS:
        logging.getLogger(name).warning("from %s", name)
    assert list(FRAMEWORK_LOGGERS) == [line["logger"] for line in lines(buffer)]
    streams = [
        (name, handler)
        for name in FRAMEWORK_LOGGERS
        for handler in logging.getLogger(name).handlers
        if isinstance(handler, logging.StreamHandler)
    ]
    assert [] == streams


def test_framework_loggers_keep_handlers_that_send_lines_elsewhere() -> None:
    """A handler that does not write lines to a stream (Django's ``mail_admins``, syslog, a
    queue) stays on its framework logger, which now also reaches the JSON handler; the console
    and file handlers beside it go."""
    mailed: queue.SimpleQueue[logging.LogRecord] = queue.SimpleQueue()
    django = logging.getLogger("django")
    elsewhere = logging.handlers.QueueHandler(mailed)
    console = logging.StreamHandler(io.StringIO())
    django.handlers = [console, elsewhere]
    buffer = io.StringIO()
    try:
        setup_logging(stream=buffer)
        assert [elsewhere] == django.handlers
        django.error("Internal Server Error: /boom")
        assert ["Internal Server Error: /boom"] == [line["message"] for line in lines(buffer)]
        assert "Internal Server Error: /boom" == mailed.get_nowait().getMessage()
        assert "" == console.stream.getvalue()
    finally:
        django.handlers = []


# A bug this test found, since fixed: setup_logging made every framework logger propagate,
# which turned uvicorn's --no-access-log back on (its access line was built for every request,
# and written whenever the level let it through)
@pytest.mark.parametrize("access_log", [True, False])
def test_a_server_logger_silenced_on_purpose_stays_silent(access_log: bool) -> None:
    """uvicorn's own logging setup with and without ``--no-access-log``, then setup_logging:
    uvicorn's access lines become JSON when it writes them, and stay off when it was told not
    to (uvicorn decides per connection from ``hasHandlers()``)."""
    import uvicorn

    uvicorn.Config(app=None, access_log=access_log).configure_logging()
    buffer = io.StringIO()
    setup_logging(stream=buffer)
    access = logging.getLogger("uvicorn.access")
    assert access_log == access.hasHandlers()
    access.info("GET /items/1")
    logging.getLogger("uvicorn.error").info("Started server process")
    assert (["uvicorn.access"] if access_log else []) + ["uvicorn.error"] == [
        line["logger"] for line in lines(buffer)
    ]


def test_setup_twice_replaces_the_handler() -> None:
    """A second setup_logging() replaces obskit's handler: each line is written once."""
    first, second = io.StringIO(), io.StringIO()
    setup_logging(stream=first)
    setup_logging(stream=second)
    logging.getLogger("app").info("once")
    assert ("", ["once"]) == (first.getvalue(), [line["message"] for line in lines(second)])


@pytest.mark.parametrize(
    ("sampling", "filtered"),
    [
        ({}, False),
        ({"sample_rate": 0.5}, True),
        ({"sample_rates": {"app": 0.5}}, True),
        ({"follow_trace": True}, True),
    ],
)
def test_the_correlation_filter_is_installed_only_for_sampling(
    sampling: dict[str, Any], filtered: bool
) -> None:
    """Without log sampling the formatter reads the trace ids itself; lines carry them anyway."""
    buffer = io.StringIO()
    handler = setup_logging(stream=buffer, **sampling)
    assert filtered == any(isinstance(f, CorrelationFilter) for f in handler.filters)
    token = in_trace(0xABC)
    try:
        logging.getLogger("app").warning("kept at any rate")
    finally:
        otel_context.detach(token)
    assert [format(0xABC, "032x")] == [line["trace_id"] for line in lines(buffer)]


class _NoFlush:
    """A stream with ``write`` only, which StreamHandler accepts."""

    def __init__(self) -> None:
        self.text = ""

    def write(self, text: str) -> None:
        self.text += text


def test_the_json_handler_keeps_stream_handler_semantics(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The lean handler still applies filters (objects and callables), writes one line per
    record, accepts a stream without flush, and hands a failing formatter to handleError
    instead of raising into the caller."""
    buffer = io.StringIO()
    handler = setup_logging(stream=buffer)
    assert isinstance(handler, JsonStreamHandler)
    log = logging.getLogger("app.handler")
    handler.addFilter(lambda record: record.getMessage() != "dropped by a callable")
    quiet = logging.Filter("app.quiet")  # passes only that logger's records
    log.info("kept")
    log.info("dropped by a callable")
    handler.addFilter(quiet)
    log.info("dropped by a filter object")
    logging.getLogger("app.quiet").info("kept too")
    assert ["kept", "kept too"] == [line["message"] for line in lines(buffer)]
    handler.removeFilter(quiet)

    handler.setStream(_NoFlush())  # type: ignore[arg-type]
    log.info("no flush")
    assert "no flush" == json.loads(handler.stream.text)["message"]

    class Broken(logging.Formatter):
        def format(self, record: logging.LogRecord) -> str:
            raise RuntimeError("formatter bug")

    handler.setFormatter(Broken())
    log.info("lost, not raised")  # logging.raiseExceptions: reported on stderr
    assert "formatter bug" in capsys.readouterr().err


def test_logging_setup_alias() -> None:
    """obskit.logging.setup is setup_logging."""
    assert obskit.logging.setup is setup_logging


# -- redaction -------------------------------------------------------------------------------


def redacted(**setup: Any) -> tuple[io.StringIO, logging.Logger]:
    buffer = io.StringIO()
    setup_logging(stream=buffer, **setup)
    return buffer, logging.getLogger("redact")


def test_sensitive_keys_are_masked_case_insensitively_and_nested() -> None:
    """password/token/... keys are masked at top level and nested, whatever their case."""
    buffer, log = redacted()
    log.info(
        "login",
        extra={
            "password": "hunter2",
            "Authorization": "Basic abc",
            "user": {"name": "ann", "API_KEY": "k-1", "nested": [{"Session_Token": "t"}]},
            "headers": {"Cookie": "sid=1", "Accept": "json"},
            "count": 3,
        },
    )
    line = only(buffer, "redact")
    assert "[REDACTED]" == line["password"]
    assert "[REDACTED]" == line["Authorization"]
    assert {
        "name": "ann",
        "API_KEY": "[REDACTED]",
        "nested": [{"Session_Token": "[REDACTED]"}],
    } == (line["user"])
    assert {"Cookie": "[REDACTED]", "Accept": "json"} == line["headers"]
    assert 3 == line["count"]


def test_luhn_valid_card_numbers_are_masked_keeping_the_last_four() -> None:
    """A Luhn-valid card number in the message or a string extra keeps only its last 4 digits."""
    buffer, log = redacted()
    log.info(f"paid with {VISA} today", extra={"note": "card 5500-0000-0000-0004", "n": [VISA]})
    line = only(buffer, "redact")
    assert "paid with ************1111 today" == line["message"]
    assert "card ************0004" == line["note"]
    assert ["************1111"] == line["n"]


def test_non_luhn_numbers_are_not_masked() -> None:
    """A 16-digit number failing the Luhn check (an order id) stays as it is."""
    buffer, log = redacted()
    log.info(f"order {NOT_LUHN}", extra={"ref": "4111111111111112"})
    line = only(buffer, "redact")
    assert f"order {NOT_LUHN}" == line["message"]
    assert "4111111111111112" == line["ref"]


def test_zero_padded_numbers_are_not_card_numbers() -> None:
    """Luhn-valid digit runs starting with 0 (zero ids, padded counters) are not masked."""
    buffer, log = redacted()
    log.info("span 0000000000000000 id 0004111111111111111")
    assert "span 0000000000000000 id 0004111111111111111" == only(buffer, "redact")["message"]


def test_bearer_and_basic_credentials_are_masked() -> None:
    """Bearer and Basic credentials in free text are masked, the scheme name stays."""
    buffer, log = redacted()
    log.info(
        "calling with Authorization: Bearer eyJhbGciOiJIUzI1NiJ9.e30.sig",
        extra={"header": "basic dXNlcjpwYXNzd29yZA=="},
    )
    line = only(buffer, "redact")
    assert "calling with Authorization: Bearer [REDACTED]" == line["message"]
    assert "basic [REDACTED]" == line["header"]


def test_emails_are_masked_only_when_enabled() -> None:
    """E-mail addresses stay by default and are masked with redact_emails."""
    plain, log = redacted()
    log.info("mail ann@example.com", extra={"to": "bob@example.org"})
    line = only(plain, "redact")
    assert ("mail ann@example.com", "bob@example.org") == (line["message"], line["to"])
    masked, log = redacted(redact_emails=True)
    log.info("mail ann@example.com", extra={"to": "bob@example.org"})
    line = only(masked, "redact")
    assert ("mail [REDACTED]", "[REDACTED]") == (line["message"], line["to"])


def test_custom_sensitive_keys() -> None:
    """Extra key names from setup_logging and from configure(log_redact_keys=...) are masked."""
    buffer, log = redacted(sensitive_keys=("iban",))
    log.info("x", extra={"customer_IBAN": "DE89", "password": "p", "plain": "v"})
    line = only(buffer, "redact")
    assert ("[REDACTED]", "[REDACTED]", "v") == (
        line["customer_IBAN"],
        line["password"],
        line["plain"],
    )
    with capture(logging=True, log_redact_keys=("dob",), log_redact_emails=True):
        buffer = json_stream()
        log.info("x", extra={"user_dob": "1990-01-01", "mail": "a@b.io"})
        line = only(buffer, "redact")
    assert ("[REDACTED]", "[REDACTED]") == (line["user_dob"], line["mail"])


def test_exception_message_and_stacktrace_are_redacted() -> None:
    """A card number in an exception is masked in exception.message and in the stack trace."""
    buffer, log = redacted()
    try:
        raise ValueError(f"declined {VISA}")
    except ValueError:
        log.exception("payment failed")
    line = only(buffer, "redact")
    assert "declined ************1111" == line["exception.message"]
    assert VISA not in line["exception.stacktrace"]
    assert "ValueError: declined ************1111" in line["exception.stacktrace"]


def test_card_number_across_the_truncation_point_stays_masked() -> None:
    """A card number cut by the message limit is masked before the cut: no digits leak."""
    formatter = JsonFormatter(max_message_bytes=20)
    line = json.loads(format_one(formatter, "pay 4111111111111111 now"))
    assert (True, "pay ************1111") == (line["message_truncated"], line["message"])
    line = json.loads(format_one(formatter, "paying: 4111111111111111"))
    assert "41111" not in line["message"]


# -- bad input -------------------------------------------------------------------------------


class Unrepresentable:
    def __repr__(self) -> str:
        raise RuntimeError("no repr")

    __str__ = __repr__


def _recursive_dict() -> dict[str, Any]:
    value: dict[str, Any] = {"a": 1}
    value["self"] = value
    return value


def _recursive_list() -> list[Any]:
    value: list[Any] = [1]
    value.append(value)
    return value


BAD_EXTRAS = {
    "object": object(),
    "bytes_invalid_utf8": b"\xff\xfe\x00ok",
    "bytearray": bytearray(b"abc"),
    "set": {3, "b", 1.5},
    "frozenset": frozenset({"x"}),
    "datetime": datetime.datetime(2024, 5, 1, 12, 0, tzinfo=datetime.timezone.utc),
    "date": datetime.date(2024, 5, 1),
    "decimal": decimal.Decimal("12.30"),
    "recursive_dict": _recursive_dict(),
    "recursive_list": _recursive_list(),
    "non_str_keys": {1: "one", None: "none", 2.5: "x", False: "f"},
    "tuple_keys": {(1, 2): "pair"},
    "repr_raises": Unrepresentable(),
    "nested_repr_raises": {"x": [Unrepresentable()]},
    "exception": ValueError("bad"),
    "deep": [[[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]]],
    "nan": float("nan"),
    "lone_surrogate": "x\udcff",
}


@pytest.mark.parametrize("name", sorted(BAD_EXTRAS))
def test_odd_extras_never_raise_and_give_one_json_line(name: str) -> None:
    """An odd extra value neither raises nor breaks the line: exactly one valid JSON line."""
    stream = io.TextIOWrapper(io.BytesIO(), encoding="utf-8", errors="strict", newline="\n")
    setup_logging(stream=stream)
    errors: list[logging.LogRecord] = []
    handler = next(h for h in logging.getLogger().handlers if h.get_name() == "obskit-json")
    handler.handleError = errors.append  # type: ignore[method-assign]
    logging.getLogger("bad").info("odd %s", name, extra={name: BAD_EXTRAS[name], "after": "ok"})
    stream.flush()
    text = stream.buffer.getvalue().decode("utf-8")  # type: ignore[attr-defined]
    assert [] == errors
    assert text.endswith("\n")
    assert "\n" not in text.rstrip("\n")
    line = json.loads(text)
    assert (f"odd {name}", "ok") == (line["message"], line["after"])
    assert name in line


def test_odd_extras_keep_readable_values() -> None:
    """Datetimes are ISO 8601, Decimals exact strings, bytes decoded, sets listed."""
    formatter = JsonFormatter()
    line = json.loads(
        format_one(
            formatter,
            "m",
            when=BAD_EXTRAS["datetime"],
            amount=decimal.Decimal("12.30"),
            raw=b"\xffok",
            tags={"b", "a"},
            ugly=Unrepresentable(),
        )
    )
    assert "2024-05-01T12:00:00+00:00" == line["when"]
    assert "12.30" == line["amount"]
    assert "\ufffdok" == line["raw"]
    assert ["a", "b"] == line["tags"]
    assert "<unrepresentable Unrepresentable>" == line["ugly"]


def test_message_args_that_fail_formatting_do_not_raise() -> None:
    """A %-format mismatch still gives a line with the raw message and arguments."""
    line = json.loads(format_one(JsonFormatter(), "%d items", "many"))
    assert "'%d items' % ('many',)" == line["message"]


def test_a_one_megabyte_message_is_truncated_and_marked() -> None:
    """A 1 MB message is cut to log_max_message_bytes (UTF-8 bytes) and marked."""
    buffer = io.StringIO()
    setup_logging(stream=buffer, max_message_bytes=16 * 1024)
    logging.getLogger("big").info("x" * (1024 * 1024))
    logging.getLogger("big").info("é" * (1024 * 1024))  # 2 bytes each in UTF-8
    ascii_line, wide_line = lines(buffer)
    assert (True, 16 * 1024) == (ascii_line["message_truncated"], len(ascii_line["message"]))
    assert (True, 8 * 1024) == (wide_line["message_truncated"], len(wide_line["message"]))
    assert len(buffer.getvalue()) < 40 * 1024


def test_a_message_under_the_limit_is_not_marked() -> None:
    """A message within the limit is unchanged and carries no truncation marker."""
    line = json.loads(format_one(JsonFormatter(max_message_bytes=100), "y" * 100))
    assert ("y" * 100, False) == (line["message"], "message_truncated" in line)


# A bug the server-logging review found, since fixed: NEL (U+0085, a line break to Python's
# str.splitlines and to some shippers) was written raw
@pytest.mark.parametrize(
    "text",
    ["a\nb", "a\rb", "a\r\nb", "esc\x1b[31mred", "ls\u2028ps\u2029", "nel\x85", "nul\x00", "tab\t"],
)
def test_line_breaks_and_control_characters_stay_on_one_line(text: str) -> None:
    """Newlines, \\r, ESC, NUL, NEL and U+2028/2029 in message, extras and keys stay escaped:
    the output splits into exactly one line, however it is split."""
    buffer = io.StringIO()
    setup_logging(stream=buffer)
    logging.getLogger("ctl").info(text, extra={"value": text, text: "key"})
    out = buffer.getvalue()
    assert "\n" not in out.rstrip("\n")
    assert "\r" not in out
    assert "\x1b" not in out
    assert "\u2028" not in out
    assert "\u2029" not in out
    assert "\x85" not in out
    assert 1 == len(out.splitlines())
    line = json.loads(out)
    assert (text, text, "key") == (line["message"], line["value"], line[text])


def test_unicode_text_stays_readable() -> None:
    """Non-ASCII text is written as UTF-8, not as escapes."""
    out = format_one(JsonFormatter(), "Grüße, 世界")
    assert "Grüße, 世界" in out


# -- threads and tasks -------------------------------------------------------------------------


def test_context_executor_carries_the_trace_id() -> None:
    """obskit.ContextExecutor runs the task in the submitter's trace: same trace id in the line."""
    with capture(logging=True):
        buffer = json_stream()
        with tracer().start_as_current_span("parent") as span, obskit.ContextExecutor(2) as pool:
            pool.submit(logging.getLogger("worker").info, "in pool").result()
        line = only(buffer, "worker")
    assert format(span.get_span_context().trace_id, "032x") == line["trace_id"]
    assert format(span.get_span_context().span_id, "016x") == line["span_id"]


def test_wrap_carries_the_trace_id_and_a_plain_thread_has_none() -> None:
    """A thread running obskit.wrap(fn) logs in the trace; a plain thread logs without one."""
    with capture(logging=True):
        buffer = json_stream()
        with tracer().start_as_current_span("parent") as span:
            wrapped = threading.Thread(
                target=obskit.wrap(lambda: logging.getLogger("wrapped").info("w"))
            )
            plain = threading.Thread(target=lambda: logging.getLogger("plain").info("p"))
            wrapped.start()
            plain.start()
            wrapped.join()
            plain.join()
        wrapped_line, plain_line = only(buffer, "wrapped"), only(buffer, "plain")
    assert format(span.get_span_context().trace_id, "032x") == wrapped_line["trace_id"]
    assert "trace_id" not in plain_line


def test_asyncio_tasks_carry_their_own_trace_ids() -> None:
    """Concurrent asyncio tasks, each in its own span, log their own trace id after awaits."""

    async def task(index: int) -> str:
        with tracer().start_as_current_span(f"task-{index}") as span:
            await asyncio.sleep(0.01 * (3 - index))
            logging.getLogger(f"task.{index}").info("done")
            await asyncio.sleep(0)
            return format(span.get_span_context().trace_id, "032x")

    async def main() -> list[str]:
        return list(await asyncio.gather(*(task(i) for i in range(3))))

    with capture(logging=True):
        buffer = json_stream()
        expected = asyncio.run(main())
        actual = [only(buffer, f"task.{i}")["trace_id"] for i in range(3)]
    assert expected == actual
    assert 3 == len(set(actual))


def test_logging_from_many_threads_gives_whole_lines() -> None:
    """8 threads logging at once: every line is whole JSON with its own thread's trace id."""
    with capture(logging=True):
        buffer = json_stream()

        def work(index: int) -> None:
            with tracer().start_as_current_span("t") as span:
                trace_id = format(span.get_span_context().trace_id, "032x")
                for _ in range(50):
                    logging.getLogger("mt").info("x", extra={"expect": trace_id, "i": index})

        threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        entries = [line for line in lines(buffer) if line["logger"] == "mt"]
    assert 400 == len(entries)
    assert [] == [line for line in entries if line["expect"] != line["trace_id"]]


# -- before/after configure ----------------------------------------------------------------------


def test_logging_before_configure_works_and_after_configure_is_json(tmp_path: Any) -> None:
    """In a fresh process: a line before configure() is plain (no error), after it is JSON."""
    script = (
        "import logging, obskit\n"
        "logging.getLogger('app').warning('before configure')\n"
        "obskit.configure(logging=True, traces_exporter='none', service_name='svc')\n"
        "logging.getLogger('app').warning('after configure')\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "OBSKIT_"))}
    result = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=30,
        env=env,
        cwd=tmp_path,
        check=False,
    )
    assert 0 == result.returncode, result.stderr
    first, *rest = result.stderr.splitlines()
    assert "before configure" == first
    after = [json.loads(line) for line in rest if line.startswith("{")]
    app_lines = [line for line in after if line["logger"] == "app"]
    assert [("after configure", "svc")] == [(x["message"], x["service.name"]) for x in app_lines]
    assert "Traceback" not in result.stderr


def test_formatter_without_the_filter_reads_the_context() -> None:
    """JsonFormatter alone (no CorrelationFilter) still adds the current trace ids."""
    handler = logging.StreamHandler(io.StringIO())
    handler.setFormatter(JsonFormatter())
    log = logging.getLogger("alone")
    log.addHandler(handler)
    log.propagate = False
    log.setLevel(logging.INFO)
    token = in_trace(0xABCDEF)
    try:
        log.info("x")
    finally:
        otel_context.detach(token)
    line = json.loads(handler.stream.getvalue())
    assert (format(0xABCDEF, "032x"), "0000000000001234", "01") == (
        line["trace_id"],
        line["span_id"],
        line["trace_flags"],
    )


# -- sampling --------------------------------------------------------------------------------


def kept_trace_ids(flt: CorrelationFilter, logger: str, level: int = logging.INFO) -> set[int]:
    """The trace ids among TRACE_IDS whose record of ``logger`` at ``level`` ``flt`` keeps."""
    kept = set()
    for trace_id in TRACE_IDS:
        token = in_trace(trace_id)
        try:
            record = logging.LogRecord(logger, level, "f.py", 1, "m", (), None)
            if flt.filter(record):
                kept.add(trace_id)
        finally:
            otel_context.detach(token)
    return kept


def test_sampling_is_consistent_across_loggers_and_filters() -> None:
    """Rate 0.3 over 2,000 trace ids: same kept set for two loggers and two filters, ~30 %."""
    first, second = CorrelationFilter(0.3), CorrelationFilter(0.3)
    kept = kept_trace_ids(first, "app.orders")
    assert kept == kept_trace_ids(first, "uvicorn.access")
    assert kept == kept_trace_ids(second, "app.orders")
    assert kept == kept_trace_ids(second, "other")
    sigma = (0.3 * 0.7 / len(TRACE_IDS)) ** 0.5
    assert abs(len(kept) / len(TRACE_IDS) - 0.3) < 3 * sigma


def test_sampling_keeps_the_same_traces_as_trace_id_ratio_sampling() -> None:
    """The kept set equals the traces TraceIdRatioBased(0.3) samples (same rule everywhere)."""
    sampler = TraceIdRatioBased(0.3)
    sampled = {
        trace_id
        for trace_id in TRACE_IDS
        if sampler.should_sample(None, trace_id, "x").decision is Decision.RECORD_AND_SAMPLE
    }
    assert sampled == kept_trace_ids(CorrelationFilter(0.3), "app")


def test_warning_and_above_are_never_sampled_out() -> None:
    """At rate 0 every WARNING/ERROR/CRITICAL line is still kept, in or out of a trace."""
    flt = CorrelationFilter(0.0)
    for level in (logging.WARNING, logging.ERROR, logging.CRITICAL):
        assert set(TRACE_IDS) == kept_trace_ids(flt, "app", level)
        assert flt.filter(logging.LogRecord("app", level, "f.py", 1, "m", (), None))
    assert set() == kept_trace_ids(flt, "app", logging.INFO)


def test_sampling_through_the_handler_keeps_whole_traces() -> None:
    """Through setup_logging: each trace keeps all its INFO lines on every logger, or none."""
    buffer = io.StringIO()
    setup_logging(stream=buffer, sample_rate=0.3)
    for trace_id in TRACE_IDS[:500]:
        token = in_trace(trace_id)
        try:
            logging.getLogger("a").info("one")
            logging.getLogger("b.c").info("two")
            logging.getLogger("b.c").warning("three")
        finally:
            otel_context.detach(token)
    by_logger: dict[tuple[str, str], set[str]] = {}
    for line in lines(buffer):
        by_logger.setdefault((line["logger"], line["level"]), set()).add(line["trace_id"])
    assert by_logger[("a", "INFO")] == by_logger[("b.c", "INFO")]
    assert 500 == len(by_logger[("b.c", "WARNING")])
    expected = {format(t, "032x") for t in kept_trace_ids(CorrelationFilter(0.3), "x")}
    assert {t for t in expected if int(t, 16) in TRACE_IDS[:500]} == by_logger[("a", "INFO")]


def test_follow_trace_keeps_lines_of_sampled_traces_only() -> None:
    """follow_trace: INFO kept iff the trace is sampled; WARNING always; no trace: kept."""
    flt = CorrelationFilter(follow_trace=True)
    decisions = {}
    for index, trace_id in enumerate(TRACE_IDS[:200]):
        sampled = index % 3 == 0
        token = in_trace(trace_id, sampled=sampled)
        try:
            info = flt.filter(logging.LogRecord("app", logging.INFO, "f", 1, "m", (), None))
            warning = flt.filter(logging.LogRecord("app", logging.WARNING, "f", 1, "m", (), None))
        finally:
            otel_context.detach(token)
        decisions[trace_id] = (sampled, info, warning)
    assert [] == [t for t, (sampled, info, _) in decisions.items() if sampled != info]
    assert all(warning for _, _, warning in decisions.values())
    assert flt.filter(logging.LogRecord("app", logging.INFO, "f", 1, "m", (), None))


def test_follow_trace_through_configure() -> None:
    """configure(log_follow_trace=True): lines of a head-sampled-out trace are dropped."""
    with capture(logging=True, log_follow_trace=True, sampler="always_off"):
        buffer = json_stream()
        with tracer().start_as_current_span("dropped"):
            logging.getLogger("app").info("not kept")
            logging.getLogger("app").error("kept")
        messages = [line["message"] for line in lines(buffer) if line["logger"] == "app"]
    assert ["kept"] == messages


def test_per_logger_rates_longest_prefix_wins() -> None:
    """rates: the longest matching dotted prefix decides; 'ab' does not match prefix 'a'."""
    flt = CorrelationFilter(1.0, rates={"a": 0.0, "a.b": 1.0, "a.b.c": 0.0})
    assert set() == kept_trace_ids(flt, "a")
    assert set() == kept_trace_ids(flt, "a.x")
    assert set(TRACE_IDS) == kept_trace_ids(flt, "a.b")
    assert set(TRACE_IDS) == kept_trace_ids(flt, "a.b.d")
    assert set() == kept_trace_ids(flt, "a.b.c.d")
    assert set(TRACE_IDS) == kept_trace_ids(flt, "ab")
    assert set(TRACE_IDS) == kept_trace_ids(flt, "z")


def test_per_logger_rates_from_configure() -> None:
    """configure(log_sample_rates=...) applies per logger; other loggers use log_sample_rate."""
    with capture(logging=True, log_sample_rate=1.0, log_sample_rates={"noisy": 0.0}):
        buffer = json_stream()
        with tracer().start_as_current_span("t"):
            logging.getLogger("noisy.sub").info("dropped")
            logging.getLogger("quiet").info("kept")
            logging.getLogger("noisy.sub").warning("warning kept")
        messages = [line["message"] for line in lines(buffer) if line["logger"] != "obskit"]
    assert ["kept", "warning kept"] == messages


def test_lines_outside_a_trace_are_kept_at_the_rate() -> None:
    """No trace: rate 0 drops, rate 1 keeps, rate 0.3 keeps about 30 % of 4,000 lines."""

    def kept(rate: float) -> int:
        flt = CorrelationFilter(rate)
        record = logging.LogRecord("bg", logging.INFO, "f", 1, "m", (), None)
        return sum(flt.filter(record) for _ in range(4_000))

    assert 0 == kept(0.0)
    assert 4_000 == kept(1.0)
    sigma = (0.3 * 0.7 * 4_000) ** 0.5
    assert abs(kept(0.3) - 1_200) < 4 * sigma


# -- trace flags and propagation -----------------------------------------------------------------


@pytest.mark.parametrize(("sampler", "sampled"), [("always_on", 1), ("always_off", 0)])
def test_trace_flags_match_the_span_and_the_injected_traceparent(
    sampler: str, sampled: int
) -> None:
    """trace_flags equals the span's flags and the traceparent obskit.inject() sends downstream."""
    with capture(logging=True, sampler=sampler):
        buffer = json_stream()
        with tracer().start_as_current_span("call") as span:
            headers: dict[str, str] = {}
            obskit.inject(headers)
            logging.getLogger("client").info("calling downstream")
        line = only(buffer, "client")
    version, trace_id, span_id, header_flags = headers["traceparent"].split("-")
    assert "00" == version
    assert (trace_id, span_id, header_flags) == (
        line["trace_id"],
        line["span_id"],
        line["trace_flags"],
    )
    assert format(span.get_span_context().trace_flags, "02x") == line["trace_flags"]
    assert sampled == int(line["trace_flags"], 16) & 0x01  # bit 0: sampled


def test_incoming_traceparent_trace_id_reaches_the_log_line() -> None:
    """A request with a traceparent logs that trace id (Flask through obskit)."""
    incoming = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    with capture(logging=True):
        buffer = json_stream()
        app = flask.Flask("tp")
        Obskit(app)

        @app.get("/")
        def index() -> str:
            logging.getLogger("tp.view").info("hello")
            return "ok"

        fetch(app.test_client(), "/", traceparent=incoming)
        line = only(buffer, "tp.view")
    assert "4bf92f3577b34da6a3ce929d0e0e4736" == line["trace_id"]
    assert 1 == int(line["trace_flags"], 16) & 0x01
    assert "00f067aa0ba902b7" != line["span_id"]


def test_formatting_is_fast_enough_not_to_hang() -> None:
    """Sanity bound: 2,000 lines with extras in a span format in well under 2 seconds."""
    buffer = io.StringIO()
    setup_logging(stream=buffer)
    log = logging.getLogger("speed")
    token = in_trace(0x1)
    start = time.perf_counter()
    try:
        for i in range(2_000):
            log.info("line %d", i, extra={"a": 1, "b": "two", "c": [3]})
    finally:
        otel_context.detach(token)
    assert time.perf_counter() - start < 2.0
    assert 2_000 == len(buffer.getvalue().splitlines())


def test_uvicorn_color_message_is_not_a_field() -> None:
    """uvicorn's ``color_message`` extra (ANSI-coloured copy of the message) is left out."""
    out = format_one(JsonFormatter(), "Started", color_message="\x1b[36mStarted\x1b[0m")
    assert "color_message" not in json.loads(out)


def test_buffered_handler_flushes_warnings_at_once_and_info_within_the_interval(
    tmp_path: pathlib.Path,
) -> None:
    """log_flush_interval: INFO waits for the flusher; WARNING goes out at once with it."""
    import time as _time

    path = tmp_path / "log.jsonl"
    stream = path.open("w", encoding="utf-8")
    try:
        obskit.setup_logging(stream=stream, flush_interval=0.3)
        log = logging.getLogger("buffered.test")
        log.info("first")
        assert "" == path.read_text()
        log.warning("second")
        lines = path.read_text().splitlines()
        assert ["first", "second"] == [json.loads(line)["message"] for line in lines]
        log.info("third")
        deadline = _time.monotonic() + 3
        while "third" not in path.read_text() and _time.monotonic() < deadline:
            _time.sleep(0.05)
        assert "third" in path.read_text()
    finally:
        for handler in list(logging.getLogger().handlers):
            if handler.get_name() == "obskit-json":
                logging.getLogger().removeHandler(handler)
        stream.close()


# A bug the server-logging review found, since fixed: the buffered handler left its lines in the
# stream's buffer, and sys.stderr (the default stream) is line-buffered: every line was still one
# write system call; it also called os.getpid() (a system call) for every line
def test_buffered_lines_reach_a_line_buffered_stream_in_one_write() -> None:
    """On a line-buffered stream like ``sys.stderr``, 50 INFO lines go to the OS in one
    write when the flusher runs (a WARNING writes what waited, then itself), and a flood
    past ``MAX_PENDING`` lines is written at once instead of growing the buffer."""
    raw = open(os.devnull, "wb", buffering=0)  # noqa: SIM115 - closed below
    writes: list[bytes] = []

    class CountingRaw(io.RawIOBase):
        def writable(self) -> bool:
            return True

        def write(self, data: Any) -> int:
            writes.append(bytes(data))
            return raw.write(data) or 0

    stream = io.TextIOWrapper(io.BufferedWriter(CountingRaw()), line_buffering=True)
    try:
        handler = obskit.setup_logging(stream=stream, flush_interval=60.0)
        log = logging.getLogger("buffered.pipe")
        for index in range(50):
            log.info("line %d", index)
        assert [] == writes
        handler.flush()  # what the flusher thread does every interval
        assert 1 == len(writes)
        assert 50 == writes[0].count(b"\n")
        log.info("before")
        log.warning("at once")
        assert [2] == [w.count(b"\n") for w in writes[1:]]  # what waited, then the WARNING
        writes.clear()
        for index in range(BufferedStreamHandler.MAX_PENDING):
            log.info("flood %d", index)
        assert 1 == len(writes)  # bounded: written when the buffer was full
    finally:
        logging.getLogger().removeHandler(logging.getLogger().handlers[-1])
        stream.close()
        raw.close()


def test_buffered_lines_are_written_once_across_a_fork(tmp_path: pathlib.Path) -> None:
    """A line waiting in the buffer when the process forks (gunicorn's workers) is the parent's
    to write: the child writes only its own lines, and its flusher runs."""
    path = tmp_path / "log.jsonl"
    script = f"""
import logging, os, time, obskit
stream = open({str(path)!r}, "a", encoding="utf-8")
obskit.setup_logging(stream=stream, flush_interval=0.05)
log = logging.getLogger("forked")
log.info("parent, before the fork")
pid = os.fork()
if pid == 0:
    log.info("child")
    time.sleep(0.5)  # the child's own flusher writes it
    os._exit(0)
os.waitpid(pid, 0)
logging.shutdown()
"""
    done = subprocess.run(
        [sys.executable, "-c", script], env=child_env(), capture_output=True, timeout=30
    )
    assert 0 == done.returncode, done.stderr
    messages = [json.loads(line)["message"] for line in path.read_text().splitlines()]
    assert ["child", "parent, before the fork"] == sorted(messages)


def test_gunicorn_access_lines_dropped_by_their_level_cost_nothing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``obskit.gunicorn.Logger.access`` with ``gunicorn.access`` above INFO (the documented way
    to quieten access lines): it returns before building the line's atoms and context."""
    import gunicorn.config

    from obskit.gunicorn import Logger as GunicornLogger

    cfg = gunicorn.config.Config()
    cfg.set("accesslog", "-")
    logger = GunicornLogger(cfg)
    built: list[object] = []
    monkeypatch.setattr(logger, "atoms", lambda *args: built.append(args) or {})
    logging.getLogger("gunicorn.access").setLevel(logging.WARNING)
    logger.access(None, None, {}, None)
    assert [] == built
    logging.getLogger("gunicorn.access").setLevel(logging.INFO)
    logger.access(None, None, {}, None)
    assert 1 == len(built)


# A bug a review of the change above found, since fixed: keeping a parent's handler while making
# every framework logger propagate sent the parent's handler lines it never had -- Django's
# mail_admins on 'django' mailed runserver's django.server lines (Django keeps that logger apart),
# and uvicorn's layout (uvicorn.access apart from uvicorn) wrote each access line twice to syslog
def test_a_logger_kept_apart_does_not_reach_its_parents_kept_handlers() -> None:
    """Django's layout: 'django' with a handler that stays (a queue standing in for mail_admins),
    'django.server' apart from it with a console handler. After setup_logging: a django.server
    line is JSON once and does not reach 'django''s handler; a django.request line (which
    propagates in Django's layout) reaches both, JSON once; so does the application's own
    handler on the root."""
    mailed: queue.SimpleQueue[logging.LogRecord] = queue.SimpleQueue()
    mine: queue.SimpleQueue[logging.LogRecord] = queue.SimpleQueue()
    django, server = logging.getLogger("django"), logging.getLogger("django.server")
    console = logging.StreamHandler(io.StringIO())
    django.handlers = [logging.handlers.QueueHandler(mailed)]
    server.handlers, server.propagate = [console], False
    root_handler = logging.handlers.QueueHandler(mine)
    buffer = io.StringIO()
    try:
        setup_logging(stream=buffer)
        logging.getLogger().addHandler(root_handler)
        server.error('"GET /boom HTTP/1.1" 500 145')
        logging.getLogger("django.request").error("Internal Server Error: /boom")
        written = [(line["logger"], line["message"]) for line in lines(buffer)]
        mails = [mailed.get_nowait().name for _ in range(mailed.qsize())]
        copies = [mine.get_nowait().name for _ in range(mine.qsize())]
    finally:
        logging.getLogger().removeHandler(root_handler)
        django.handlers, server.handlers, server.propagate = [], [], True
    assert [
        ("django.server", '"GET /boom HTTP/1.1" 500 145'),
        ("django.request", "Internal Server Error: /boom"),
    ] == written
    assert ["django.request"] == mails
    assert ["django.server", "django.request"] == copies
    assert "" == console.stream.getvalue()


def test_handlers_that_write_to_the_console_through_another_are_taken_off() -> None:
    """A ``MemoryHandler`` whose target is a console handler writes lines as text too: taken
    off like the console handler itself."""
    werkzeug = logging.getLogger("werkzeug")
    target = logging.StreamHandler(io.StringIO())
    werkzeug.handlers = [logging.handlers.MemoryHandler(1, target=target)]
    buffer = io.StringIO()
    try:
        setup_logging(stream=buffer)
        werkzeug.warning("GET /x 200")
    finally:
        werkzeug.handlers = []
    assert ["GET /x 200"] == [line["message"] for line in lines(buffer)]
    assert "" == target.stream.getvalue()


def test_gunicorn_syslog_keeps_its_lines_beside_the_json_ones() -> None:
    """gunicorn's ``--log-syslog`` with obskit's logger class and JSON logging: gunicorn's
    syslog handler stays on its loggers (a datagram reaches a real UDP socket) and the same
    line is written as JSON; its stream handler is gone (docs/logging.md)."""
    import gunicorn.config

    from obskit.gunicorn import Logger as GunicornLogger

    obskit.configure(service_name="syslogged", traces_exporter="none", logging=True)
    buffer = json_stream()
    receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    receiver.bind(("127.0.0.1", 0))
    port = receiver.getsockname()[1]
    cfg = gunicorn.config.Config()
    cfg.set("syslog", True)
    cfg.set("syslog_addr", f"udp://127.0.0.1:{port}")
    error_log = logging.getLogger("gunicorn.error")
    try:
        logger = GunicornLogger(cfg)
        kinds = [type(handler).__name__ for handler in error_log.handlers]
        logger.error("worker %s exploded", 7)
        receiver.settimeout(5)
        datagram = receiver.recv(65536).decode()
    finally:
        receiver.close()
        for name in ("gunicorn.error", "gunicorn.access"):
            for handler in logging.getLogger(name).handlers:
                handler.close()
            logging.getLogger(name).handlers = []
    assert ["SysLogHandler"] == kinds
    assert "worker 7 exploded" in datagram
    assert ["worker 7 exploded"] == [
        line["message"] for line in lines(buffer) if line["logger"] == "gunicorn.error"
    ]


def test_log_flush_interval_option_is_validated() -> None:
    """A negative flush interval fails at configure time."""
    with pytest.raises(obskit.ConfigError, match="log_flush_interval"):
        obskit.configure(log_flush_interval=-1)


def _records() -> list[logging.LogRecord]:
    """Records of every shape a line is assembled from (extras, odd text, an exception)."""
    made = []
    extras: list[dict[str, Any]] = [
        {"item": 7},
        {"note": 'quote " backslash \\ tab \t', "n": None, "ok": True, "ratio": 0.5},
        {"nested": {"password": "x", "list": [1, "two"]}, "user": "caf\u00e9 \u2028 sep"},
        {"raw": "bad \udcff byte", "when": datetime.date(2026, 11, 23)},
        # Scalars only: written as text fragments, not through the dict.
        {"i": -12, "f": 1e300, "z": -0.0, "t": False, "s": "4111 1111 1111 1111", "e": ""},
        # Falls back to the dict: a non-finite float, an int past str()'s digit limit, an int
        # subclass, a str subclass.
        {"i": 3, "nan": float("nan"), "inf": float("-inf")},
        {"huge": 10**5000},
        {"level_enum": http.HTTPStatus.OK, "tag": type("Tag", (str,), {})("t")},
    ]
    for index, extra in enumerate(extras):
        record = logging.makeLogRecord({"name": "app", "levelname": "INFO", "levelno": 20})
        record.msg, record.created = f"line {index} \u00e9 \u2029 \udc80", 1_700_000_000.5
        record.__dict__.update(extra)
        made.append(record)
    try:
        raise ValueError("boom 4111 1111 1111 1111")
    except ValueError:
        failing = logging.makeLogRecord({"name": "app", "levelname": "ERROR", "levelno": 40})
        failing.exc_info, failing.created, failing.item = sys.exc_info(), 1_700_000_000.5, 1
        made.append(failing)
    return made


def test_assembled_line_is_the_dict_encoding_byte_for_byte() -> None:
    """The line assembled from pre-encoded keys equals the one-dict encoding of the same record,
    inside a span and a request or not."""
    static = {"service.name": "svc \u00e9", "deployment.environment": "test"}
    fast = JsonFormatter(static_fields=static)
    slow = JsonFormatter(static_fields=static)
    # Every record takes the dict path: each has an extra named like one of its fields.
    slow._fixed = frozenset(["item", "note", "nested", "raw", "i", "huge", "level_enum"])
    with capture(service_name="svc"):
        tracer = trace.get_tracer("test")
        for _ in range(2):  # the second time from the caches
            for record in _records():
                assert slow.format(record) == fast.format(record)
                json.loads(fast.format(record))
        request = types.SimpleNamespace(request_id='id "1"', method="GET", route="/items/{id}")
        with tracer.start_as_current_span("op") as span:
            token = otel_context.attach(with_span(span, None, request))
            try:
                for record in _records():
                    assert slow.format(record) == fast.format(record)
                    line = json.loads(fast.format(record))
                    assert HEX32.fullmatch(line["trace_id"])
                    assert ('id "1"', "/items/{id}") == (line["request_id"], line["http.route"])
            finally:
                otel_context.detach(token)


class _Opaque:
    def __repr__(self) -> str:
        return "<opaque>"


def test_random_extras_give_the_dict_encoding_byte_for_byte() -> None:
    """2,000 records with random extras of every kind (seeded): the text path and the dict path
    write the same bytes, and the line is JSON."""
    rng = random.Random(20261123)
    texts = [
        "",
        "ok",
        "caf\u00e9",
        'tab\t quote" back\\',
        "\u2028",
        "4111 1111 1111 1111",
        "Bearer abcdefgh12345678",
        "x" * 300,
        "\udcff",
        "0000000000000000",
    ]
    values: list[Any] = [
        *texts,
        0,
        -7,
        2**70,
        10**5000,
        0.5,
        -0.0,
        1e-300,
        1e300,
        float("nan"),
        float("inf"),
        True,
        False,
        None,
        [1, "a"],
        {"k": "v", "password": "p"},
        (1, 2),
        b"raw",
        http.HTTPStatus.OK,
        type("Tag", (str,), {})("t"),
        _Opaque(),
        datetime.date(2026, 1, 2),
    ]
    keys = ["item", "note", "n", "secret_token", "http.route", "user", "_private", "ratio"]
    fast = JsonFormatter(static_fields={"service.name": "svc"})
    slow = JsonFormatter(static_fields={"service.name": "svc"})
    slow._fixed = frozenset([*keys, "message_truncated", "stack_info"])  # always the dict path
    for index in range(2_000):
        record = logging.makeLogRecord({"name": "app", "levelname": "INFO", "levelno": 20})
        record.msg, record.created = rng.choice(texts), 1_700_000_000.25
        for key in rng.sample(keys, rng.randint(0, 4)):
            record.__dict__[key] = rng.choice(values)
        line = fast.format(record)
        assert slow.format(record) == line, index
        json.loads(line)


def test_encoded_text_caches_stay_bounded_and_redact_every_time() -> None:
    """Messages and string extras are cached encoded, and a flood of distinct ones (interpolated
    ids, f-strings) keeps the caches bounded; text with a secret is redacted every time and
    never kept in a cache."""
    formatter = JsonFormatter()
    for index in range(20_000):
        record = logging.makeLogRecord({"name": f"app.{index}", "levelname": "INFO"})
        record.msg, record.tag, record.__dict__[f"k{index}"] = f"user {index}", f"t{index}", 1
        line = json.loads(formatter.format(record))
        assert (f"user {index}", f"t{index}", 1) == (
            line["message"],
            line["tag"],
            line[f"k{index}"],
        )
    assert len(formatter._texts) <= 2048
    assert len(formatter._plain) <= 1024
    assert len(formatter._keys) <= 4096
    formatter._texts.clear()
    for _ in range(3):
        record = logging.makeLogRecord({"name": "app", "msg": "paid 4111 1111 1111 1111"})
        record.note = "token Bearer abcdefgh12345678"
        line = json.loads(formatter.format(record))
        assert "paid ************1111" == line["message"]
        assert "token Bearer [REDACTED]" == line["note"]
    assert not formatter._texts  # what redaction changed is never kept


def test_an_extra_named_like_an_obskit_field_replaces_it_once() -> None:
    """An extra that reuses a field name gives one key, the extra's value (no repeated key)."""
    record = logging.makeLogRecord({"name": "app", "levelname": "INFO", "levelno": 20})
    record.msg, record.__dict__["service.name"] = "x", "from-extra"
    text = JsonFormatter(static_fields={"service.name": "svc"}).format(record)
    assert 1 == text.count('"service.name"')
    assert "from-extra" == json.loads(text)["service.name"]


def test_log_sampling_draws_differ_in_a_forked_child() -> None:
    """Log sampling's generator is reseeded at fork, as ``random``'s global one: the workers of
    a preloaded gunicorn master do not keep and drop the same lines."""
    import os

    from obskit import logging as obskit_logging

    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its next draws, to the parent
        try:
            os.write(write_end, repr([obskit_logging._random_bits(64) for _ in range(4)]).encode())
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end) as pipe:
        child = pipe.read()
    os.waitpid(pid, 0)
    assert repr([obskit_logging._random_bits(64) for _ in range(4)]) != child


def test_werkzeugs_request_lines_come_without_terminal_colours() -> None:
    """werkzeug's development server (``flask run``) colours the request line of every answer
    but a 200 with ANSI codes, for a terminal; the JSON line carries the plain text."""
    from werkzeug.serving import make_server
    from werkzeug.wrappers import Response

    buffer = io.StringIO()
    setup_logging(stream=buffer)

    def app(environ: dict[str, Any], start_response: Any) -> Any:
        return Response("gone", status=404)(environ, start_response)

    assert 404 == get_from(make_server("127.0.0.1", 0, app), "/missing")
    (line,) = [line for line in lines(buffer) if line["logger"] == "werkzeug"]
    assert "\x1b" not in line["message"]
    assert line["message"].endswith('"GET /missing HTTP/1.1" 404 -')


# A bug this test found, since fixed (a review of 2026-11-25): the flusher wrote every waiting line
# in one write, far past PIPE_BUF; on the pipe a server's workers share as stdout (Docker,
# Kubernetes) the kernel split it where the reader lagged, and another worker's lines landed
# inside a line (13-38 lines of 6,000 torn under uvicorn --workers 3)
def test_buffered_lines_of_workers_sharing_a_pipe_are_never_torn() -> None:
    """Three processes flush 1,000 waiting lines each at the same moment into one pipe that a
    slow reader drains: every line arrives whole."""
    from tests.child_process import child_env

    workers, lines_each = 3, 1000
    # Each child says when its lines wait, then flushes when told: all three at once.
    script = f"""
import logging, sys
import obskit
handler = obskit.setup_logging(stream=sys.stdout, flush_interval=60.0)
log = logging.getLogger("torn")
for index in range({lines_each}):
    log.info("w%s line %d %s", sys.argv[1], index, "x" * 250)
sys.stderr.write("ready\\n")
sys.stderr.flush()
sys.stdin.read()
handler.flush()
"""
    read_end, write_end = os.pipe()
    children = [
        subprocess.Popen(
            [sys.executable, "-c", script, str(worker)],
            stdin=subprocess.PIPE,
            stdout=write_end,
            stderr=subprocess.PIPE,
            env=child_env(),
        )
        for worker in range(workers)
    ]
    os.close(write_end)
    received = bytearray()
    try:
        for child in children:
            assert b"ready\n" == child.stderr.readline()  # type: ignore[union-attr]
        for child in children:
            child.stdin.close()  # type: ignore[union-attr]
        while chunk := os.read(read_end, 4096):  # a reader that lags: the pipe fills
            received += chunk
            time.sleep(0.0005)
    finally:
        os.close(read_end)
        for child in children:
            child.wait(30)
            child.stderr.close()  # type: ignore[union-attr]
    lines = received.decode(errors="replace").splitlines()
    messages = set()
    for line in lines:
        with contextlib.suppress(ValueError, KeyError, TypeError):  # a torn line
            messages.add(json.loads(line)["message"].rsplit(" ", 1)[0])
    assert (workers * lines_each,) * 2 == (len(lines), len(messages))
