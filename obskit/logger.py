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
import os
import sys
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
    _decided,
)
from obskit.tracing._fastctx import current_span

__all__ = ["DirectLogger", "Logger", "get_logger", "install_direct", "uninstall_direct"]

_DIRECT_HANDLERS: frozenset[type[JsonStreamHandler]] = frozenset(
    {JsonStreamHandler, BufferedStreamHandler}
)
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
#: The stdlib's own level -> name table (``addLevelName`` updates it in place), read as
#: ``getLevelName`` reads it, without the call.
_LEVEL_NAMES: dict[int, str] = getattr(logging, "_levelToName", {})


_StdLogger = logging.Logger
_LogRecord = logging.LogRecord
_LOGGING_FILE = os.path.normcase(logging.addLevelName.__code__.co_filename)


def _stdlib_own(function: Any) -> Any:
    """``function`` if it is the stdlib's own (defined in ``logging/__init__.py``), else a
    value no attribute is (so that the checks below always send lines down the stdlib path):
    a patch made before obskit was imported -- sentry-python's ``sentry_sdk.init()`` replaces
    ``Logger.callHandlers`` -- must not be taken for the original."""
    code = getattr(function, "__code__", None)
    if code is not None and os.path.normcase(code.co_filename) == _LOGGING_FILE:
        return function
    return object()


#: What a record goes through on the stdlib path. Where one of them was replaced (sentry-python
#: patches ``Logger.callHandlers`` to see every record), every line takes that path, as it does
#: under a record factory of the app's (which may add fields).
_LOG = _stdlib_own(_StdLogger._log)
_HANDLE = _stdlib_own(_StdLogger.handle)
_CALL_HANDLERS = _stdlib_own(_StdLogger.callHandlers)
_MAKE_RECORD = _stdlib_own(_StdLogger.makeRecord)
_FILTER = _stdlib_own(_StdLogger.filter)
#: Logger methods that, set on an instance, would be called on the stdlib path.
_INSTANCE_HOOKS = frozenset({"handle", "callHandlers", "makeRecord", "filter"})
#: How many attributes a logger of the stdlib's manager has (``manager`` is set on each): a
#: logger with more may have one of those methods of its own (the exact check then runs).
_LOGGER_ATTRIBUTES = len(vars(_StdLogger("obskit.probe")).keys() | {"manager"})

_record_factory = logging.getLogRecordFactory


def _stdlib_path_untouched(logger: logging.Logger, handler: Any) -> bool:
    """Whether the stdlib path from ``logger`` to ``handler`` is the stdlib's and obskit's own:
    the stock record factory, no method of ``logging.Logger``'s record path replaced, a logger
    of a class whose methods are the stdlib's (a subclass may override any of them), and no
    such method, nor the handler's ``emit``/``handle`` or its formatter's ``format``, replaced
    on the instance (as a test's patch would). Checked on every direct line (about 0.3 us):
    a patch can come at any time, sentry-python's when ``sentry_sdk.init()`` runs."""
    own = logger.__dict__
    handler_own = handler.__dict__
    return (
        logger.__class__ in _KNOWN_LOGGERS
        and _StdLogger.callHandlers is _CALL_HANDLERS
        and _StdLogger.handle is _HANDLE
        and _StdLogger.makeRecord is _MAKE_RECORD
        and _StdLogger.filter is _FILTER  # a veto patched in (Filterer.filter is inherited)
        and _StdLogger._log is _LOG
        and _record_factory() is _LogRecord
        and (len(own) <= _LOGGER_ATTRIBUTES or _INSTANCE_HOOKS.isdisjoint(own))
        and "emit" not in handler_own
        and "handle" not in handler_own
        and "format" not in handler.formatter.__dict__
    )


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
    # Checked last: most loggers that fail, fail on a handler.
    if found is None or not _stdlib_path_untouched(logger, found):
        return None
    return found  # type: ignore[no-any-return]


def _sampled(sampler: Any, level: int, name: str) -> bool:
    """The decision ``sampler`` (a :class:`CorrelationFilter`, the only filter
    :func:`_direct_handler` lets through) would make for this line, or the one already made
    for it (``get_logger`` handing a kept line to a :class:`DirectLogger`)."""
    if _decided.kept:
        return True
    keeps: bool = sampler.keeps(level, name, current_span().get_span_context())
    return keeps


class Logger:
    """A logger named like a stdlib logger, taking fields as keyword arguments.

    A drop-in for ``logging.getLogger(name)``'s logging calls (``debug`` to ``critical``,
    ``exception``, ``log``, ``isEnabledFor``): calls written for the stdlib, with ``extra=``,
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

    isEnabledFor = is_enabled_for  # the stdlib's spelling, for code written against it

    def debug(self, msg: Any, /, *args: Any, **fields: Any) -> None:
        """Log at DEBUG."""
        if self._std.isEnabledFor(_DEBUG):
            self._log(_DEBUG, msg, args, fields)

    def info(self, msg: Any, /, *args: Any, **fields: Any) -> None:
        """Log at INFO."""
        if self._std.isEnabledFor(_INFO):
            self._log(_INFO, msg, args, fields)

    def warning(self, msg: Any, /, *args: Any, **fields: Any) -> None:
        """Log at WARNING."""
        if self._std.isEnabledFor(_WARNING):
            self._log(_WARNING, msg, args, fields)

    def error(self, msg: Any, /, *args: Any, **fields: Any) -> None:
        """Log at ERROR."""
        if self._std.isEnabledFor(_ERROR):
            self._log(_ERROR, msg, args, fields)

    def exception(self, msg: Any, /, *args: Any, **fields: Any) -> None:
        """Log at ERROR with the exception being handled."""
        if self._std.isEnabledFor(_ERROR):
            fields.setdefault("exc_info", True)
            self._log(_ERROR, msg, args, fields)

    def critical(self, msg: Any, /, *args: Any, **fields: Any) -> None:
        """Log at CRITICAL."""
        if self._std.isEnabledFor(_CRITICAL):
            self._log(_CRITICAL, msg, args, fields)

    def log(self, level: int, msg: Any, /, *args: Any, **fields: Any) -> None:
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
        kept = False
        if not fields or _NOT_DIRECT.isdisjoint(fields):
            handler = _direct_handler(self._std, level)
            if handler is not None:
                done = _write(handler, level, self.name, msg, args, fields)
                if done.__class__ is bool:
                    return
                msg, args = done  # type: ignore[misc]
                kept = bool(handler.filters)
        if kept:  # sampled in already: the record path must not draw again
            _decided.kept = True
            try:
                self._stdlib(level, msg, args, fields)
            finally:
                _decided.kept = False
        else:
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
        keywords["stacklevel"] = keywords.get("stacklevel", 1) + _OWN_FRAMES
        self._std._log(level, msg, args, extra=extra or None, **keywords)


#: What :meth:`Logger._stdlib` adds to ``stacklevel`` so that the record names the
#: caller: its own frames between the caller and ``Logger._log`` (this one, ``_log`` and the
#: public method). Python 3.11+'s ``findCaller`` counts each of them; 3.10's starts counting
#: from the frame above ``Logger._log``'s caller, one of them already.
_OWN_FRAMES = 3 if sys.version_info >= (3, 11) else 2


def _write(
    handler: JsonStreamHandler,
    level: int,
    name: str,
    msg: Any,
    args: Any,
    fields: Mapping[str, Any] | None,
) -> bool | tuple[Any, Any]:
    """Write the line of a call straight to ``handler`` (see :func:`_direct_handler`): True
    when written, False when log sampling dropped it, else the ``(msg, args)`` the record path
    is to take (a field or a message the line cannot carry as it is; a line that log sampling
    kept has been kept by then): the message already built, with no arguments, so that their
    ``str()`` runs once."""
    built = line = None
    try:
        if handler.filters and not _sampled(handler.filters[0], level, name):
            return False  # log sampling (setup_logging's CorrelationFilter) dropped it
        formatter: Any = handler.formatter
        # A message with no arguments, the usual line, without the call.
        built = msg if msg.__class__ is str and not args else formatter.event_message(msg, args)
        line = formatter.format_event(
            time.time(),  # looked up per call, as LogRecord does: a test may pin the clock
            _LEVEL_NAMES.get(level) or logging.getLevelName(level),
            name,
            built,
            fields,
        )
        if line is None:
            return built, ()
        with handler.lock:  # type: ignore[union-attr]
            handler.write_line(line, level)
        return True
    except Exception:
        if built is None:  # the message could not be built: the record path reports it
            return msg, args
        if line is None:
            return built, ()
        # Formatted, not written: reported as the stdlib reports it (handleError, with a
        # record made now for its message) and counted; not retried.
        _dropped(handler, name, level, msg, args)
        return True


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
        kept = False
        if (
            not exc_info
            and not stack_info
            and not self.disabled  # Logger.handle's check: _log may be called directly
            and (extra is None or (extra.__class__ is dict and _RESERVED.isdisjoint(extra)))
        ):
            handler = _direct_handler(self, level)
            if handler is not None:
                done = _write(handler, level, self.name, msg, args, extra)
                if done.__class__ is bool:
                    return
                msg, args = done  # type: ignore[misc]
                kept = bool(handler.filters)
        # Looked up per call, so that a patch of Logger._log made later is honoured; one
        # frame more (this one) between the caller and findCaller.
        if kept:  # sampled in already: the record path must not draw again
            _decided.kept = True
            try:
                _StdLogger._log(self, level, msg, args, exc_info, extra, stack_info, stacklevel + 1)
            finally:
                _decided.kept = False
        else:
            _StdLogger._log(self, level, msg, args, exc_info, extra, stack_info, stacklevel + 1)


class _DirectRootLogger(DirectLogger, logging.RootLogger):
    """The root logger (``logging.info(...)``, ``logging.getLogger()``) as a
    :class:`DirectLogger`."""


#: Logger classes whose methods on the record path are the stdlib's.
_KNOWN_LOGGERS = frozenset({_StdLogger, logging.RootLogger, DirectLogger, _DirectRootLogger})


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


def _dropped(handler: Any, name: str, level: int, msg: Any, args: Any) -> None:
    """A line formatted on the direct path that its stream refused (called while the error is
    handled): ``handler.handleError`` gets a record of the call, as on the record path, and
    ``obskit_log_records_dropped_total{reason="write_error"}`` counts it."""
    try:
        _selfmetrics.current().dropped_logs.labels("write_error").inc()
        handler.handleError(_LogRecord(name, level, "(unknown file)", 0, msg, args, None))
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
