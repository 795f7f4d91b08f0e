"""obskit's structured logger: the same line as the stdlib path, without a LogRecord when only
obskit's handler is listening, and the stdlib's delivery in every other case."""

from __future__ import annotations

import datetime
import io
import json
import logging
import random
import re
import subprocess
import sys
import textwrap
import threading
import types
from collections.abc import Iterator
from typing import Any
from unittest import mock

import pytest
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags

import obskit
from obskit import _selfmetrics, get_logger
from obskit.logger import DirectLogger, Logger
from obskit.logging import setup_logging
from obskit.tracing._fastctx import with_span
from tests.logging_state import preserved_logging

TIMESTAMP = re.compile(r'^\{"timestamp":"[^"]*",')
NAME = "obskit.tests.logger"


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    with preserved_logging():
        yield


def only_obskit(stream: io.StringIO | None = None, **options: Any) -> io.StringIO:
    """obskit's handler on a buffer, as the only handler of the test's logger (pytest adds its
    own to the root and to every non-propagating logger as each test phase starts: called
    first thing in a test's body, this takes them off again).

    ``direct`` is off unless asked for: ``logging.getLogger(NAME)`` is then the plain stdlib
    logger, the reference the direct paths are compared with."""
    buffer = stream or io.StringIO()
    options.setdefault("direct", False)
    handler = setup_logging(stream=buffer, **options)
    logging.getLogger().removeHandler(handler)
    logger = logging.getLogger(NAME)
    logger.handlers[:] = [handler]
    logger.propagate = False
    return buffer


class _Records:
    """Counts the LogRecords the process makes (the stdlib path makes one per line)."""

    # Counted in LogRecord.__init__ rather than through a record factory: a replaced factory
    # (which may add fields) sends every line down the stdlib path on purpose.
    def __enter__(self) -> _Records:
        self.count = 0
        self._init = init = logging.LogRecord.__init__

        def counting(record: logging.LogRecord, *args: Any, **kwargs: Any) -> None:
            self.count += 1
            init(record, *args, **kwargs)

        logging.LogRecord.__init__ = counting  # type: ignore[method-assign]
        return self

    def __exit__(self, *exc: object) -> None:
        logging.LogRecord.__init__ = self._init  # type: ignore[method-assign]


def untimed(text: str) -> list[str]:
    """Each line without its timestamp (the two paths read the clock at different moments)."""
    return [TIMESTAMP.sub("{", line) for line in text.splitlines()]


def in_request() -> Any:
    """Attach a sampled span with fixed ids and a request; returns the token to detach."""
    ctx = SpanContext(0xABC, 0xDEF, is_remote=False, trace_flags=TraceFlags(1))
    request = types.SimpleNamespace(request_id="req-1", method="GET", route="/items/{id}")
    return otel_context.attach(with_span(NonRecordingSpan(ctx), None, request))


# -- the direct path -------------------------------------------------------------------------


def test_the_line_equals_the_stdlib_line_and_makes_no_record() -> None:
    stream = only_obskit(static_fields={"service.name": "svc"})
    log, std = get_logger(NAME), logging.getLogger(NAME)
    token = in_request()
    try:
        with _Records() as records:
            log.info("handled %s", "item", item=7, ok=True, ratio=0.5, none=None, note="é")
        assert 0 == records.count
        std.info(
            "handled %s",
            "item",
            extra={"item": 7, "ok": True, "ratio": 0.5, "none": None, "note": "é"},
        )
    finally:
        otel_context.detach(token)
    direct, stdlib = untimed(stream.getvalue())
    assert stdlib == direct
    line = json.loads(stream.getvalue().splitlines()[0])
    assert "handled item" == line["message"]
    assert f"{0xABC:032x}" == line["trace_id"]
    assert f"{0xDEF:016x}" == line["span_id"]
    assert "01" == line["trace_flags"]
    assert ("req-1", "GET", "/items/{id}") == (
        line["request_id"],
        line["http.request.method"],
        line["http.route"],
    )
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", line["timestamp"])


def test_random_fields_give_the_stdlib_line() -> None:
    """1,000 calls with random fields of every kind (seeded), inside a request and outside:
    the direct path, or its hand-over to the stdlib, writes what the stdlib call writes."""
    stream = only_obskit(static_fields={"service.name": "svc"})
    rng = random.Random(20261124)
    values: list[Any] = [
        "",
        "ok",
        "caf\u00e9",
        'quote" back\\',
        "\u2028",
        "4111 1111 1111 1111",
        "\udcff",
        0,
        2**70,
        10**5000,
        -0.0,
        float("nan"),
        True,
        None,
        [1, "a"],
        {"password": "p"},
        b"raw",
        datetime.date(2026, 1, 2),
    ]
    keys = ["item", "note", "secret_token", "http.route", "trace_id", "_private", "user.id"]
    log, std = get_logger(NAME), logging.getLogger(NAME)
    for index in range(1_000):
        fields = {key: rng.choice(values) for key in rng.sample(keys, rng.randint(0, 4))}
        message = rng.choice(["m", "caf\u00e9 %s", "x" * 5000])
        args = ("a",) if "%s" in message else ()
        token = in_request() if index % 2 else None
        try:
            before = len(stream.getvalue().splitlines())
            log.warning(message, *args, **fields)
            std.warning(message, *args, extra=fields)
        finally:
            if token is not None:
                otel_context.detach(token)
        direct, stdlib = untimed(stream.getvalue())[before:]
        assert stdlib == direct, (index, fields)
        json.loads(stream.getvalue().splitlines()[-1])


def test_levels_follow_the_stdlib_logger() -> None:
    stream = only_obskit(static_fields={"service.name": "svc"})
    log, std = get_logger(NAME), logging.getLogger(NAME)
    std.setLevel(logging.WARNING)
    log.info("dropped")
    log.debug("dropped")
    log.warning("kept")
    assert not log.is_enabled_for(logging.INFO)
    logging.disable(logging.CRITICAL)
    log.critical("disabled")
    logging.disable(logging.NOTSET)
    std.disabled = True
    log.error("disabled logger")
    std.disabled = False
    log.log(logging.ERROR, "by number")
    assert ["kept", "by number"] == [
        json.loads(x)["message"] for x in stream.getvalue().splitlines()
    ]


def test_custom_level_names_are_the_stdlibs(monkeypatch: pytest.MonkeyPatch) -> None:
    stream = only_obskit()
    monkeypatch.setitem(logging._levelToName, 25, "NOTICE")  # as addLevelName(25, "NOTICE")
    log, std = get_logger(NAME), logging.getLogger(NAME)
    log.log(25, "named")
    std.log(25, "named")
    log.log(27, "unnamed")
    std.log(27, "unnamed")
    named, named_stdlib, unnamed, unnamed_stdlib = untimed(stream.getvalue())
    assert (named_stdlib, unnamed_stdlib) == (named, unnamed)
    assert ("NOTICE", "Level 27") == (json.loads(named)["level"], json.loads(unnamed)["level"])


def test_the_handler_level_is_honoured() -> None:
    stream = only_obskit(static_fields={"service.name": "svc"})
    handler = logging.getLogger(NAME).handlers[0]
    handler.setLevel(logging.ERROR)
    get_logger(NAME).warning("below the handler")
    get_logger(NAME).error("at the handler")
    assert ["at the handler"] == [json.loads(x)["message"] for x in stream.getvalue().splitlines()]


def test_bind_adds_fields_and_later_ones_win() -> None:
    stream = only_obskit(static_fields={"service.name": "svc"})
    log = get_logger(NAME).bind(tenant="acme", attempt=1)
    log.info("retry", attempt=2)
    line = json.loads(stream.getvalue())
    assert ("acme", 2) == (line["tenant"], line["attempt"])
    assert "<obskit.Logger 'obskit.tests.logger'>" == repr(log)
    assert get_logger(NAME) is get_logger(NAME)
    assert "root" == get_logger().name


def test_stdlib_calls_with_extra_give_the_same_line() -> None:
    """A drop-in for logging.getLogger: ``extra=`` is read as fields (keywords win)."""
    stream = only_obskit(static_fields={"service.name": "svc"})
    log, std = get_logger(NAME), logging.getLogger(NAME)
    with _Records() as records:
        log.info("charged %s", "card", extra={"order": 42, "note": "x"})
    assert 0 == records.count
    std.info("charged %s", "card", extra={"order": 42, "note": "x"})
    log.info("both", extra={"order": 1, "note": "extra"}, note="keyword")
    direct, stdlib, both = untimed(stream.getvalue())
    assert stdlib == direct
    assert (1, "keyword") == (json.loads(both)["order"], json.loads(both)["note"])


def test_a_field_named_like_a_record_attribute_is_renamed() -> None:
    stream = only_obskit(static_fields={"service.name": "svc"})
    get_logger(NAME).info("user", name="bob", module="m", message="x")
    line = json.loads(stream.getvalue())
    assert ("bob", "m", "x", "user") == (
        line["name_"],
        line["module_"],
        line["message_"],
        line["message"],
    )


def test_one_mapping_argument_is_the_mapping_as_in_the_stdlib() -> None:
    stream = only_obskit(static_fields={"service.name": "svc"})
    get_logger(NAME).info("user %(user)s", {"user": "ann"})
    logging.getLogger(NAME).info("user %(user)s", {"user": "ann"})
    direct, stdlib = untimed(stream.getvalue())
    assert stdlib == direct
    assert "user ann" == json.loads(stream.getvalue().splitlines()[0])["message"]


def test_message_arguments_that_do_not_fit_do_not_raise() -> None:
    stream = only_obskit(static_fields={"service.name": "svc"})
    get_logger(NAME).info("%d items", "many")
    get_logger(NAME).info(42)
    messages = [json.loads(x)["message"] for x in stream.getvalue().splitlines()]
    assert ["'%d items' % ('many',)", "42"] == messages


# -- the stdlib path -------------------------------------------------------------------------


def test_another_handler_gets_the_record_with_the_callers_location() -> None:
    stream = only_obskit(static_fields={"service.name": "svc"})
    seen: list[logging.LogRecord] = []
    other = logging.Handler()
    other.emit = seen.append  # type: ignore[method-assign]
    logging.getLogger(NAME).addHandler(other)
    get_logger(NAME).info("both", item=1)
    assert 1 == len(seen)
    record = seen[0]
    assert (__file__, "test_another_handler_gets_the_record_with_the_callers_location") == (
        record.pathname,
        record.funcName,
    )
    assert 1 == record.item  # type: ignore[attr-defined]
    assert 1 == json.loads(stream.getvalue())["item"]


@pytest.mark.parametrize("where", ["logger", "handler"])
def test_a_filter_on_the_way_takes_the_stdlib_path(where: str) -> None:
    stream = only_obskit(static_fields={"service.name": "svc"})
    handler = logging.getLogger(NAME).handlers[0]
    target: Any = logging.getLogger(NAME) if where == "logger" else handler
    target.addFilter(lambda record: record.getMessage() != "filtered")
    with _Records() as records:
        get_logger(NAME).info("filtered")
        get_logger(NAME).info("passed")
    assert 2 == records.count
    assert ["passed"] == [json.loads(x)["message"] for x in stream.getvalue().splitlines()]


def test_log_sampling_keeps_the_same_lines_without_a_record() -> None:
    """With log sampling on (setup_logging's CorrelationFilter on the handler) the direct path
    makes the filter's decision itself: over 2,000 fixed trace ids at rate 0.3 it keeps exactly
    the lines the stdlib path keeps, WARNING and above always, and makes no LogRecord."""
    stream = only_obskit(sample_rate=0.3)
    log, std = get_logger(NAME), logging.getLogger(NAME)
    trace_ids = [random.Random(seed).getrandbits(128) | 1 for seed in range(2_000)]
    kept: dict[str, set[int]] = {"direct": set(), "stdlib": set()}
    for index, trace_id in enumerate(trace_ids):
        span = NonRecordingSpan(SpanContext(trace_id, 1, False, TraceFlags(1)))
        token = otel_context.attach(trace.set_span_in_context(span))
        try:
            with _Records() as records:
                log.info("line", i=index, via="direct")
            assert 0 == records.count
            std.info("line", extra={"i": index, "via": "stdlib"})
        finally:
            otel_context.detach(token)
    for line in stream.getvalue().splitlines():
        parsed = json.loads(line)
        kept[parsed["via"]].add(parsed["i"])
    assert kept["stdlib"] == kept["direct"]
    assert 450 < len(kept["direct"]) < 750  # about 30 % of 2,000
    log.warning("never sampled out")
    assert "never sampled out" == json.loads(stream.getvalue().splitlines()[-1])["message"]


def test_exception_and_stack_info_keep_their_stdlib_meaning() -> None:
    stream = only_obskit(static_fields={"service.name": "svc"})
    log = get_logger(NAME)
    try:
        raise ValueError("bad value")
    except ValueError:
        log.exception("failed", order=42)
    log.info("where", stack_info=True)
    failed, where = (json.loads(x) for x in stream.getvalue().splitlines())
    assert ("ERROR", 42, "ValueError", "bad value") == (
        failed["level"],
        failed["order"],
        failed["exception.type"],
        failed["exception.message"],
    )
    assert "test_exception_and_stack_info_keep_their_stdlib_meaning" in where["stack_info"]


def test_without_obskits_handler_it_is_the_stdlib_logger() -> None:
    seen: list[logging.LogRecord] = []
    other = logging.Handler()
    other.emit = seen.append  # type: ignore[method-assign]
    logging.getLogger(NAME).addHandler(other)
    logging.getLogger(NAME).propagate = False
    get_logger(NAME).warning("plain %s", "stdlib", item=3)
    assert ["plain stdlib"] == [r.getMessage() for r in seen]


# -- logging.getLogger loggers (DirectLogger) --------------------------------------------------


def direct_and_reference(**options: Any) -> tuple[io.StringIO, logging.Logger, logging.Logger]:
    """setup_logging with ``direct`` on (the default): the test's stdlib logger, and a plain
    ``logging.Logger`` of the same name writing to the same handler (the stdlib path)."""
    options.setdefault("static_fields", {"service.name": "svc"})
    stream = only_obskit(direct=True, **options)
    std = logging.getLogger(NAME)
    reference = logging.Logger(NAME)  # not registered: a second logger of the same name
    reference.handlers[:] = std.handlers
    reference.propagate = False
    return stream, std, reference


def test_setup_logging_makes_stdlib_loggers_direct_and_direct_false_undoes_it() -> None:
    class Own(logging.Logger):
        pass

    own = Own("obskit.tests.logger.own")  # a library's own class: left alone
    logging.Logger.manager.loggerDict[own.name] = own
    try:
        only_obskit(direct=True)
        assert type(logging.getLogger(NAME)) is DirectLogger
        assert type(logging.getLogger(NAME + ".made.later")) is DirectLogger
        assert type(own) is Own
        assert isinstance(logging.getLogger(), DirectLogger)
        assert isinstance(logging.getLogger(), logging.RootLogger)
        only_obskit(direct=False)
        assert type(logging.getLogger(NAME)) is logging.Logger
        assert type(logging.getLogger(NAME + ".made.after")) is logging.Logger
        assert type(logging.getLogger()) is logging.RootLogger
        assert logging.getLoggerClass() is logging.Logger
    finally:
        del logging.Logger.manager.loggerDict[own.name]
        only_obskit(direct=True)  # as the other tests of the session found it


@pytest.mark.parametrize("how", ["option", "environment"])
def test_configure_log_direct_false_leaves_logger_classes_alone(
    how: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from obskit import testing

    options: dict[str, Any] = {"logging": True, "traces_exporter": "none"}
    if how == "option":
        options["log_direct"] = False
    else:
        monkeypatch.setenv("OBSKIT_LOG_DIRECT", "false")
    try:
        obskit.configure(**options)
        assert type(logging.getLogger(NAME)) is logging.Logger
        obskit.configure(logging=True, traces_exporter="none", log_direct=True)
        assert type(logging.getLogger(NAME)) is DirectLogger
    finally:
        testing.reset()
        only_obskit(direct=True)  # as the other tests of the session found it


def test_stdlib_calls_write_the_stdlib_line_without_a_record() -> None:
    """1,000 seeded random stdlib calls (fields in ``extra``, %-arguments, one mapping
    argument, long messages), inside a request and outside: what a plain ``logging.Logger``
    writes, byte for byte, and no LogRecord for the lines the direct path can carry."""
    stream, std, reference = direct_and_reference()
    rng = random.Random(1124)
    values: list[Any] = ["", "caf\u00e9", 'q"\\', "\udcff", 7, 2**70, -0.0, True, None, [1], b"x"]
    keys = ["item", "note", "secret_token", "http.route", "user.id"]
    direct_lines = 0
    for index in range(1_000):
        extra = {key: rng.choice(values) for key in rng.sample(keys, rng.randint(0, 3))}
        message, args = rng.choice(
            [("m", ()), ("caf\u00e9 %s", ("a",)), ("%(u)s", ({"u": 1},)), ("x" * 5000, ())]
        )
        token = in_request() if index % 2 else None
        try:
            before = len(stream.getvalue().splitlines())
            with _Records() as records:
                std.warning(message, *args, extra=extra or None)
            direct_lines += records.count == 0
            reference.warning(message, *args, extra=extra or None)
        finally:
            if token is not None:
                otel_context.detach(token)
        direct, stdlib = untimed(stream.getvalue())[before:]
        assert stdlib == direct, (index, extra, message)
    # Lines with a list or bytes field, a cut message, or a redacted or surrogate string take
    # the stdlib path by design; the rest (about a third here, 314 with this seed) do not.
    assert direct_lines > 250


def test_the_root_logger_and_logging_info_take_the_direct_path() -> None:
    stream, std, _ = direct_and_reference()
    root = logging.getLogger()
    root.handlers[:] = std.handlers  # the fixture puts the root's own handlers back
    with _Records() as records:
        logging.info("module level %s", "call", extra={"item": 1})
        root.warning("root logger")
    assert 0 == records.count
    lines = [json.loads(x) for x in stream.getvalue().splitlines()]
    assert [("root", "module level call", 1), ("root", "root logger", None)] == [
        (line["logger"], line["message"], line.get("item")) for line in lines
    ]
    seen: list[logging.LogRecord] = []
    other = logging.Handler()
    other.emit = seen.append  # type: ignore[method-assign]
    root.addHandler(other)
    logging.info("with another handler")
    assert [(__file__, "test_the_root_logger_and_logging_info_take_the_direct_path")] == [
        (r.pathname, r.funcName) for r in seen
    ]


def test_stdlib_hand_over_keeps_the_callers_location_and_stacklevel() -> None:
    stream, std, _ = direct_and_reference()
    seen: list[logging.LogRecord] = []
    other = logging.Handler()
    other.emit = seen.append  # type: ignore[method-assign]
    std.addHandler(other)

    def helper() -> None:
        std.info("from helper", stacklevel=2)

    std.info("here", extra={"item": 1})
    helper()
    std.error("failed", exc_info=ValueError("bad"))
    where = [(r.pathname, r.funcName) for r in seen]
    assert [(__file__, "test_stdlib_hand_over_keeps_the_callers_location_and_stacklevel")] * 3 == (
        where
    )
    assert 3 == len(stream.getvalue().splitlines())


def test_get_logger_over_a_direct_stdlib_logger_keeps_the_callers_location() -> None:
    """get_logger's hand-over goes through the DirectLogger setup_logging made of its stdlib
    logger: one frame more, still counted."""
    stream, std, _ = direct_and_reference()
    seen: list[logging.LogRecord] = []
    other = logging.Handler()
    other.emit = seen.append  # type: ignore[method-assign]
    std.addHandler(other)
    get_logger(NAME).info("via obskit", item=1)
    get_logger(NAME).warning("with level", stacklevel=1)
    name = "test_get_logger_over_a_direct_stdlib_logger_keeps_the_callers_location"
    assert [(__file__, name)] * 2 == [(r.pathname, r.funcName) for r in seen]
    assert 2 == len(stream.getvalue().splitlines())


def test_a_replaced_stdlib_record_path_is_always_taken(monkeypatch: pytest.MonkeyPatch) -> None:
    """A record factory that adds fields, or a patched ``Logger.callHandlers`` (as
    sentry-python installs to see every record) or ``Logger._log``, gets every line, as
    without obskit."""
    stream, std, _ = direct_and_reference()
    factory = logging.getLogRecordFactory()

    def tenant_factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = factory(*args, **kwargs)
        record.tenant = "acme"  # type: ignore[attr-defined]
        return record

    monkeypatch.setattr(logging, "_logRecordFactory", tenant_factory)
    std.info("with factory")
    monkeypatch.setattr(logging, "_logRecordFactory", factory)
    seen: list[str] = []
    call_handlers = logging.Logger.callHandlers

    def patched(self: logging.Logger, record: logging.LogRecord) -> None:
        seen.append(record.getMessage())
        call_handlers(self, record)

    monkeypatch.setattr(logging.Logger, "callHandlers", patched)
    std.info("with patch")
    get_logger(NAME).info("obskit logger with patch")
    monkeypatch.setattr(logging.Logger, "callHandlers", call_handlers)
    calls: list[object] = []
    std_log = logging.Logger._log

    def patched_log(self: logging.Logger, level: int, msg: object, *args: Any, **kw: Any) -> None:
        calls.append(msg)
        std_log(self, level, msg, *args, **kw)

    monkeypatch.setattr(logging.Logger, "_log", patched_log)
    std.info("with _log patched")
    lines = [json.loads(x) for x in stream.getvalue().splitlines()]
    assert "acme" == lines[0]["tenant"]
    assert ["with patch", "obskit logger with patch"] == seen
    assert ["with _log patched"] == calls
    assert 4 == len(lines)


def test_stdlib_refusals_and_levels_are_unchanged() -> None:
    stream, std, _ = direct_and_reference()
    with pytest.raises(KeyError):
        std.info("clash", extra={"name": "x"})  # the stdlib refuses LogRecord attributes
    std.setLevel(logging.WARNING)
    std.info("dropped")
    std.warning("kept")
    std.disabled = True
    std.error("disabled")
    assert ["kept"] == [json.loads(x)["message"] for x in stream.getvalue().splitlines()]


def test_stdlib_log_sampling_keeps_the_same_lines() -> None:
    stream, std, reference = direct_and_reference(sample_rate=0.3)
    for index in range(2_000):
        ctx = SpanContext(random.Random(index).getrandbits(128) | 1, 1, False, TraceFlags(1))
        token = otel_context.attach(trace.set_span_in_context(NonRecordingSpan(ctx)))
        try:
            std.info("line", extra={"i": index, "via": "direct"})
            reference.info("line", extra={"i": index, "via": "stdlib"})
        finally:
            otel_context.detach(token)
    kept: dict[str, set[int]] = {"direct": set(), "stdlib": set()}
    for line in stream.getvalue().splitlines():
        parsed = json.loads(line)
        kept[parsed["via"]].add(parsed["i"])
    assert kept["stdlib"] == kept["direct"]
    assert 450 < len(kept["direct"]) < 750


# -- safety ----------------------------------------------------------------------------------


class _Broken(io.StringIO):
    def write(self, text: str) -> int:
        raise OSError("disk full")


def test_a_stream_that_fails_does_not_raise_is_counted_and_reported_as_the_stdlib_does(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Each line the stream refuses goes to the handler's ``handleError`` with a record of the
    call (the stdlib's "--- Logging error ---" report), as on the record path, and is counted."""
    monkeypatch.setattr(obskit._state, "raise_internal_errors", False)
    only_obskit(_Broken(), direct=True)
    handler = logging.getLogger(NAME).handlers[0]
    reported: list[str] = []
    monkeypatch.setattr(handler, "handleError", lambda record: reported.append(record.getMessage()))
    dropped = _selfmetrics.current().dropped_logs.labels("write_error")
    before = dropped._value.get()
    get_logger(NAME).info("lost")
    logging.getLogger(NAME).info("lost %s", "again")
    assert 2 == dropped._value.get() - before
    assert ["lost", "lost again"] == reported


def test_a_patch_of_the_stdlib_made_before_obskit_was_imported_is_honoured() -> None:
    """sentry-python's ``sentry_sdk.init()``, called first thing, replaces
    ``Logger.callHandlers``: obskit, imported after, must not take the patch for the stdlib's
    own and skip it (in a fresh interpreter: the import order is the point)."""
    code = textwrap.dedent(
        """
        import io, json, logging
        seen = []
        original = logging.Logger.callHandlers
        def call_handlers(self, record):
            seen.append(record.getMessage())
            original(self, record)
        logging.Logger.callHandlers = call_handlers
        import obskit
        buffer = io.StringIO()
        obskit.setup_logging(stream=buffer)
        logging.getLogger("app").error("payment failed")
        logging.error("root error")
        obskit.get_logger("app").error("via obskit")
        lines = [json.loads(x)["message"] for x in buffer.getvalue().splitlines()]
        print(json.dumps([seen, lines]))
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    seen, lines = json.loads(done.stdout)
    expected = ["payment failed", "root error", "via obskit"]
    assert (expected, expected) == (seen, lines)


def test_a_kept_line_handed_to_the_record_path_is_not_sampled_twice() -> None:
    """Outside a trace log sampling draws at random. A line the direct path kept and then hands
    to the record path (a list field) keeps its decision: kept at the rate, not its square."""
    stream, std, _ = direct_and_reference(sample_rate=0.5)
    for index in range(4_000):
        std.info("listed", extra={"i": index, "items": [1]})
        get_logger(NAME).info("listed by obskit", i=index, items=[1])
    lines = [json.loads(x)["message"] for x in stream.getvalue().splitlines()]
    assert 1_800 < lines.count("listed") < 2_200
    assert 1_800 < lines.count("listed by obskit") < 2_200


def test_a_message_handed_to_the_record_path_is_built_once() -> None:
    """``str()`` of the message and its arguments runs once, as in the stdlib: the direct path
    checks the fields before it builds the message."""
    stream, std, _ = direct_and_reference()
    calls: list[int] = []

    class Lazy:
        def __str__(self) -> str:
            calls.append(1)
            return f"call {len(calls)}"

    std.info("%s", Lazy(), extra={"items": [1, 2]})
    get_logger(NAME).info("%s", Lazy(), items=[1, 2])
    assert 2 == len(calls)
    assert ["call 1", "call 2"] == [
        json.loads(x)["message"] for x in stream.getvalue().splitlines()
    ]


def test_a_pinned_clock_reaches_the_direct_path() -> None:
    stream, std, _ = direct_and_reference()
    with mock.patch("time.time", return_value=1_700_000_000.123):
        std.info("pinned")
        get_logger(NAME).info("pinned too")
    stamps = [json.loads(x)["timestamp"] for x in stream.getvalue().splitlines()]
    assert ["2023-11-14T22:13:20.122Z"] * 2 == stamps


def test_a_disabled_logger_writes_nothing_even_through_log() -> None:
    """``logger._log`` called directly (a custom-level idiom) skips ``isEnabledFor``; the
    stdlib's ``handle`` still drops the line of a disabled logger."""
    stream, std, _ = direct_and_reference()
    std.disabled = True
    std._log(logging.WARNING, "via _log", ())
    assert "" == stream.getvalue()


@pytest.mark.parametrize(
    ("owner", "method"),
    [
        ("handler", "emit"),
        ("handler", "handle"),
        ("formatter", "format"),
        ("logger", "callHandlers"),
    ],
)
def test_a_method_replaced_on_an_instance_is_called(owner: str, method: str) -> None:
    """A test's patch on the logger, the handler or the formatter instance sees the line."""
    stream, std, _ = direct_and_reference()
    handler = std.handlers[0]
    target: Any = {"handler": handler, "formatter": handler.formatter, "logger": std}[owner]
    original = getattr(target, method)
    calls: list[str] = []

    def counted(*args: Any) -> Any:
        calls.append(method)
        return original(*args)

    setattr(target, method, counted)
    try:
        std.info("seen")
    finally:
        delattr(target, method)
    assert [method] == calls
    assert "seen" == json.loads(stream.getvalue())["message"]


def test_a_logger_subclass_keeps_its_overrides() -> None:
    stream, std, _ = direct_and_reference()

    class Quiet(logging.getLoggerClass()):  # type: ignore[misc]
        def filter(self, record: logging.LogRecord) -> bool:
            return "secret" not in record.getMessage()

    quiet = Quiet(NAME + ".quiet")
    quiet.handlers[:] = std.handlers
    quiet.propagate = False
    quiet.info("a secret")
    quiet.info("public")
    assert ["public"] == [json.loads(x)["message"] for x in stream.getvalue().splitlines()]


def test_many_threads_give_whole_lines() -> None:
    stream = only_obskit(static_fields={"service.name": "svc"})
    log = get_logger(NAME)

    def work(n: int) -> None:
        for i in range(300):
            log.info("line", worker=n, i=i, pad="x" * 200)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    parsed = [json.loads(x) for x in stream.getvalue().splitlines()]
    assert 2_400 == len(parsed)
    assert {(n, i) for n in range(8) for i in range(300)} == {(p["worker"], p["i"]) for p in parsed}


def test_the_buffered_handler_flushes_warnings_at_once() -> None:
    class Counting(io.StringIO):
        flushes = 0

        def flush(self) -> None:
            self.flushes += 1

    buffer = Counting()
    only_obskit(buffer, flush_interval=60.0)
    log = get_logger(NAME)
    log.info("buffered")
    assert 0 == buffer.flushes
    log.warning("at once")
    assert 1 == buffer.flushes
    assert ["buffered", "at once"] == [
        json.loads(x)["message"] for x in buffer.getvalue().splitlines()
    ]


def test_logger_is_the_public_type() -> None:
    assert isinstance(obskit.get_logger("x"), Logger)
