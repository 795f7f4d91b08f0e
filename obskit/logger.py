"""A structured logger that writes obskit's JSON line without building a ``LogRecord``.

::

    from obskit import get_logger

    log = get_logger("checkout")
    log.info("charged", order=42, amount=9.5)
    log.bind(tenant="acme").warning("retrying %s", "payment", attempt=2)

Fields are keyword arguments (``extra=`` of the stdlib). Levels, ``setLevel``, ``disable`` and
handlers stay the stdlib's: a :class:`Logger` asks the stdlib logger of the same name whether a
level is enabled, and its line is the one obskit's :class:`~obskit.logging.JsonFormatter` would
write for the equivalent stdlib call, with the same trace and request fields.

Why a logger of its own: the stdlib spends most of a line's cost before any handler runs --
``findCaller`` walks the stack, ``LogRecord`` sets some twenty attributes and splits the file
path -- for fields obskit's JSON line does not write. When the only handler the stdlib logger
would reach is obskit's (what :func:`obskit.setup_logging` installs) and no filter is on the
way (but for log sampling's own filter, whose decision it makes itself), a :class:`Logger`
formats and writes the line itself, under that handler's lock. In every other case (another
handler, another filter, ``exc_info``, a field that is not a str, int, float, bool or None, a
message long enough to be cut) it hands the call to the stdlib logger, so the line reaches every
handler exactly as ``logging`` would deliver it. structlog gives the same advice for speed: keep
the hot path out of the stdlib's record machinery.

:func:`obskit.setup_logging` gives plain ``logging.getLogger(name)`` loggers the same path
(:class:`DirectLogger`, ``direct=True`` by default): their lines are written the same way when
the same conditions hold, and take the stdlib's path otherwise.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import Any

from obskit import _selfmetrics
from obskit.logging import (
    _RESERVED,
    BufferedStreamHandler,
    CorrelationFilter,
    JsonFormatter,
    JsonStreamHandler,
)
from obskit.tracing._fastctx import current_span

__all__ = ["DirectLogger", "Logger", "get_logger", "install_direct", "uninstall_direct"]

_DIRECT_HANDLERS = frozenset({JsonStreamHandler, BufferedStreamHandler})
#: Keyword arguments that keep the stdlib's meaning instead of becoming fields.
_STDLIB_KEYWORDS = frozenset({"exc_info", "stack_info", "stacklevel"})
#: Fields the direct path leaves to the stdlib path (which renames or interprets them).
_NOT_DIRECT = _RESERVED | _STDLIB_KEYWORDS
_DEBUG, _INFO, _WARNING, _ERROR, _CRITICAL = (
    logging.DEBUG,
    logging.INFO,
    logging.WARNING,
    logging.ERROR,
    logging.CRITICAL,
)
_time = time.time
#: The stdlib's own level -> name table (``addLevelName`` updates it in place), read as
#: ``getLevelName`` reads it, without the call.
_LEVEL_NAMES: dict[int, str] = getattr(logging, "_levelToName", {})


_StdLogger = logging.Logger
_LogRecord = logging.LogRecord
#: What a record goes through on the stdlib path. Where one of them was replaced (sentry-python
#: patches ``Logger.callHandlers`` to see every record; an app may install a record factory
#: that adds fields, or a logger class of its own), every line takes that path.
_LOG = _StdLogger._log
_HANDLE = _StdLogger.handle
_CALL_HANDLERS = _StdLogger.callHandlers
_MAKE_RECORD = _StdLogger.makeRecord

_record_factory = logging.getLogRecordFactory


def _direct_handler(logger: logging.Logger, level: int) -> JsonStreamHandler | None:
    """obskit's handler when it is the only one a record of ``level`` from ``logger`` would
    reach, nothing on the way filters but log sampling's :class:`CorrelationFilter` (whose
    decision the caller makes) and no part of the stdlib's record path was replaced; else None
    (the stdlib path)."""
    found: Any = None
    current: Any = logger
    while current is not None:
        if current.filters:
            return None
        for handler in current.handlers:  # most loggers on the way have none
            kind: Any = handler.__class__
            filters = handler.filters
            if (
                found is not None
                or kind not in _DIRECT_HANDLERS
                or (filters and (len(filters) > 1 or filters[0].__class__ is not CorrelationFilter))
                or handler.formatter.__class__ is not JsonFormatter
            ):
                return None
            if level >= handler.level:
                found = handler
        if not current.propagate:
            break
        current = current.parent
    if found is None:
        return None
    cls: Any = logger.__class__  # checked last: most loggers that fail, fail on a handler
    if (
        _StdLogger._log is not _LOG
        or cls.handle is not _HANDLE
        or cls.callHandlers is not _CALL_HANDLERS
        or cls.makeRecord is not _MAKE_RECORD
        or _record_factory() is not _LogRecord
    ):
        return None
    return found  # type: ignore[no-any-return]


def _sampled(sampler: Any, level: int, name: str) -> bool:
    """The decision ``sampler`` (a :class:`CorrelationFilter`, the only filter
    :func:`_direct_handler` lets through) would make for this line."""
    keeps: bool = sampler.keeps(level, name, current_span().get_span_context())
    return keeps


def _message(msg: Any, args: tuple[Any, ...]) -> str:
    """``LogRecord.getMessage``, with the formatter's answer to arguments that do not fit."""
    text = str(msg)
    if args:
        # LogRecord's rule: one non-empty mapping is the mapping ("%(user)s" % {"user": ...}).
        if len(args) == 1 and isinstance(args[0], Mapping) and args[0]:
            args = args[0]  # type: ignore[assignment]
        try:
            text = text % args
        except Exception:
            text = f"{msg!r} % {args!r}"
    return text


class Logger:
    """A logger named like a stdlib logger, taking fields as keyword arguments.

    A drop-in for ``logging.getLogger(name)``: calls written for the stdlib, with ``extra=``,
    ``exc_info``, ``stack_info`` or ``stacklevel``, keep their meaning; keyword arguments are
    fields too (``log.info("charged", order=42)``). A field named like a ``LogRecord``
    attribute (``name``, ``module``, ``message``...), which ``extra=`` refuses, is written with
    a trailing underscore (``name_``). Never raises from formatting or writing: a line that
    cannot be written is counted in ``obskit_log_records_dropped_total{reason="write_error"}``.
    """

    __slots__ = ("_fields", "_std", "name")

    def __init__(self, name: str, fields: Mapping[str, Any] | None = None) -> None:
        self.name = name
        self._std = logging.getLogger(name)
        self._fields: dict[str, Any] = dict(fields or {})

    def __repr__(self) -> str:
        return f"<obskit.Logger {self.name!r}>"

    def bind(self, **fields: Any) -> Logger:
        """A logger of the same name that adds ``fields`` to every line (later ones win)."""
        return Logger(self.name, {**self._fields, **fields})

    def is_enabled_for(self, level: int) -> bool:
        """Whether a line at ``level`` would be logged (the stdlib logger's answer)."""
        return self._std.isEnabledFor(level)

    def debug(self, msg: Any, *args: Any, **fields: Any) -> None:
        """Log at DEBUG."""
        if self._std.isEnabledFor(_DEBUG):
            self._log(_DEBUG, msg, args, fields)

    def info(self, msg: Any, *args: Any, **fields: Any) -> None:
        """Log at INFO."""
        if self._std.isEnabledFor(_INFO):
            self._log(_INFO, msg, args, fields)

    def warning(self, msg: Any, *args: Any, **fields: Any) -> None:
        """Log at WARNING."""
        if self._std.isEnabledFor(_WARNING):
            self._log(_WARNING, msg, args, fields)

    def error(self, msg: Any, *args: Any, **fields: Any) -> None:
        """Log at ERROR."""
        if self._std.isEnabledFor(_ERROR):
            self._log(_ERROR, msg, args, fields)

    def exception(self, msg: Any, *args: Any, **fields: Any) -> None:
        """Log at ERROR with the exception being handled."""
        if self._std.isEnabledFor(_ERROR):
            fields.setdefault("exc_info", True)
            self._log(_ERROR, msg, args, fields)

    def critical(self, msg: Any, *args: Any, **fields: Any) -> None:
        """Log at CRITICAL."""
        if self._std.isEnabledFor(_CRITICAL):
            self._log(_CRITICAL, msg, args, fields)

    def log(self, level: int, msg: Any, *args: Any, **fields: Any) -> None:
        """Log at ``level``."""
        if self._std.isEnabledFor(level):
            self._log(level, msg, args, fields)

    def _log(self, level: int, msg: Any, args: tuple[Any, ...], fields: dict[str, Any]) -> None:
        if fields and "extra" in fields:  # the stdlib's spelling of fields
            extra = fields.pop("extra")
            if extra.__class__ is dict:
                fields = {**extra, **fields} if fields else extra
            elif isinstance(extra, Mapping):
                fields = {**extra, **fields}
        if self._fields:
            fields = {**self._fields, **fields}
        # A field named like a LogRecord attribute or a stdlib keyword: the stdlib path.
        if not fields or _NOT_DIRECT.isdisjoint(fields):
            handler = _direct_handler(self._std, level)
            if handler is not None and _write(handler, level, self.name, msg, args, fields):
                return
        self._stdlib(level, msg, args, fields)

    def _stdlib(self, level: int, msg: Any, args: tuple[Any, ...], fields: dict[str, Any]) -> None:
        """Hand the call to the stdlib logger, as ``logger.log(level, msg, *args, extra=...)``
        from the caller's frame would."""
        keywords: dict[str, Any] = {}
        extra: dict[str, Any] = {}
        for key, value in fields.items():
            if key in _STDLIB_KEYWORDS:
                keywords[key] = value
            elif key in _RESERVED:
                extra[key + "_"] = value
            else:
                extra[key] = value
        # Logger._log's frames: this one, _log and the public method (findCaller skips the rest).
        keywords["stacklevel"] = keywords.get("stacklevel", 1) + 3
        self._std._log(level, msg, args, extra=extra or None, **keywords)


def _write(
    handler: JsonStreamHandler,
    level: int,
    name: str,
    msg: Any,
    args: Any,
    fields: Mapping[str, Any] | None,
) -> bool:
    """Write the line of a call straight to ``handler`` (see :func:`_direct_handler`); False
    when the call needs the stdlib path after all (a field or message the line cannot carry
    as it is)."""
    line = None
    try:
        if handler.filters and not _sampled(handler.filters[0], level, name):
            return True  # log sampling (setup_logging's CorrelationFilter) dropped it
        message = msg if msg.__class__ is str and not args else _message(msg, args)
        line = handler.formatter.format_event(  # type: ignore[union-attr]
            _time(), _LEVEL_NAMES.get(level) or logging.getLevelName(level), name, message, fields
        )
        if line is None:
            return False
        with handler.lock:  # type: ignore[union-attr]
            handler.write_line(line, level)
        return True
    except Exception as exc:
        if line is not None:  # formatted, not written: as the stdlib, not retried
            _dropped(exc)
            return True
        return False  # not formatted: the stdlib path formats (and reports) it its own way


class DirectLogger(logging.Logger):
    """A stdlib ``logging.Logger`` whose calls write obskit's line the way :class:`Logger`
    does, when obskit's handler is the only one listening; every other call (another handler
    or filter, ``exc_info``, ``stack_info``, an ``extra`` that is not a plain ``dict`` or that
    the stdlib would refuse) goes through :meth:`logging.Logger._log` unchanged.

    :func:`install_direct` (called by :func:`obskit.setup_logging`) makes the loggers of the
    process this class; nothing else about them changes.
    """

    def _log(
        self,
        level: int,
        msg: object,
        args: Any,
        exc_info: Any = None,
        extra: Mapping[str, object] | None = None,
        stack_info: bool = False,
        stacklevel: int = 1,
    ) -> None:
        if (
            not exc_info
            and not stack_info
            and (extra is None or (extra.__class__ is dict and _RESERVED.isdisjoint(extra)))
        ):
            handler = _direct_handler(self, level)
            if handler is not None and _write(handler, level, self.name, msg, args, extra):
                return
        # Looked up per call, so that a patch of Logger._log made later is honoured; one
        # frame more (this one) between the caller and findCaller.
        _StdLogger._log(self, level, msg, args, exc_info, extra, stack_info, stacklevel + 1)


class _DirectRootLogger(DirectLogger, logging.RootLogger):
    """The root logger (``logging.info(...)``, ``logging.getLogger()``) as a
    :class:`DirectLogger`."""


def install_direct() -> None:
    """Turn every plain ``logging.Logger`` of the process, those made from now on, and the
    root logger into :class:`DirectLogger` instances. Loggers of another class (a library's
    own subclass) and a logger class set with ``logging.setLoggerClass`` are left alone."""
    for logger in list(logging.Logger.manager.loggerDict.values()):
        if logger.__class__ is _StdLogger:
            logger.__class__ = DirectLogger
    if logging.root.__class__ is logging.RootLogger:
        logging.root.__class__ = _DirectRootLogger
    if logging.getLoggerClass() is _StdLogger:
        logging.setLoggerClass(DirectLogger)


def uninstall_direct() -> None:
    """Undo :func:`install_direct`."""
    for logger in list(logging.Logger.manager.loggerDict.values()):
        if logger.__class__ is DirectLogger:
            logger.__class__ = _StdLogger  # type: ignore[assignment]
    if logging.root.__class__ is _DirectRootLogger:
        logging.root.__class__ = logging.RootLogger  # type: ignore[assignment]
    if logging.getLoggerClass() is DirectLogger:
        logging.setLoggerClass(_StdLogger)


def _dropped(exc: BaseException) -> None:
    try:
        _selfmetrics.current().dropped_logs.labels("write_error").inc()
        _selfmetrics.warn_once(
            "log_write", "obskit: a log line could not be written (%s: %s)", type(exc).__name__, exc
        )
    except Exception:
        pass


_loggers: dict[str, Logger] = {}


def get_logger(name: str | None = None) -> Logger:
    """The :class:`Logger` of ``name`` (the root logger's when None); one per name."""
    key = name or "root"
    logger = _loggers.get(key)
    if logger is None:
        logger = _loggers.setdefault(key, Logger(key))
    return logger
