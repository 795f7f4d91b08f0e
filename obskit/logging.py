"""Structured JSON logs that lead to their trace: correlation, redaction, consistent sampling.

::

    obskit.configure(service_name="checkout", logging=True)   # or obskit.setup_logging(...)
    logging.getLogger("app").info("charged", extra={"order": 42, "card": "4111 1111 1111 1111"})

One JSON object per line: ``timestamp`` (RFC 3339, UTC), ``level``, ``logger``, ``message``,
``service.*``, ``trace_id``/``span_id``/``trace_flags``, inside a request ``request_id``,
``http.request.method``, ``http.route``; ``extra`` fields at top level; exceptions as
``exception.*``.
``log_format="ecs"`` renames the fields to Elastic Common Schema names.

Three pieces, each usable alone:

- :class:`CorrelationFilter` stamps trace ids and request fields on the record *in the thread
  that logs* (so a ``QueueHandler`` still carries them) and applies sampling: below WARNING, a
  record inside a trace is kept when the trace id falls under the rate -- the same rule in every
  service, so a kept trace keeps all its lines -- or, with ``follow_trace``, when the trace is
  sampled. WARNING and above are never dropped.
- :class:`JsonFormatter` (a python-json-logger ``JsonFormatter``) renders the record with a
  single-pass, allocation-light path, redacts sensitive keys and values, and never raises on
  odd extras (bytes, sets, datetimes, Decimals, objects, recursive structures).
- :func:`setup_logging` installs both on the root logger and routes uvicorn's, gunicorn's,
  Django's and Flask's loggers through it, with levels per logger.

Nothing here swaps the process-wide ``LogRecordFactory`` or calls ``basicConfig``.
"""

from __future__ import annotations

import contextlib
import datetime
import decimal
import json
import logging
import logging.handlers
import os
import random
import re
import select
import socket
import stat
import sys
import threading
import time
import traceback
import weakref
from collections.abc import Callable, Iterable, Mapping
from itertools import islice
from json.encoder import encode_basestring as _escape
from typing import Any, Literal, TextIO

from pythonjsonlogger.json import JsonFormatter as _PJLJsonFormatter

from obskit import _selfmetrics, _state
from obskit.tracing import _fastctx as _ctx
from obskit.tracing._fastctx import current_span

__all__ = [
    "CorrelationFilter",
    "JsonFormatter",
    "JsonStreamHandler",
    "current_request",
    "redact_text",
    "setup",
    "setup_logging",
]


def current_request() -> Any:
    """The obskit request object of the current context, or None."""
    return _ctx.current_request()


# -- redaction -------------------------------------------------------------------------------

DEFAULT_SENSITIVE_KEYS = (
    "password",
    "passwd",
    "secret",
    "token",
    "authorization",
    "cookie",
    "api_key",
    "apikey",
    "card",
    "cvv",
    "ssn",
    "private_key",
    "credential",
    "access_key",
    "dsn",
    "jwt",
)
#: Keys sensitive only as a whole (as part of a longer key they mean other things: author).
_SENSITIVE_NAMES = frozenset({"auth", "pwd"})
MASK = "[REDACTED]"
_CARD = re.compile(r"(?<![0-9])(?:[0-9][ -]?){12,18}[0-9](?![0-9])")
#: ``Bearer <token>``, and ``Basic <base64>`` when it has a digit, a capital or one of ``+/=``
#: as base64 of ``user:password`` does ("basic validation failed" is a word, left alone).
_BEARER = re.compile(
    r"\b(?:((?i:bearer))\s+[A-Za-z0-9._~+/=-]{8,}"
    r"|((?i:basic))\s+(?=[A-Za-z0-9+/=]*[A-Z0-9+/=])[A-Za-z0-9+/=]{8,})"
)
# A match starts only where a run of local-part characters starts (the lookbehind): without it
# a long run with no domain after its @ was tried from each of its characters, quadratic time
# on text a client can send (a query string in an access line).
_EMAIL = re.compile(
    r"(?<![A-Za-z0-9._%+-])[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}"
)
#: ``password=hunter2``, ``DB_PASSWORD=x``, ``refresh_token=x``, ``"password": "x"``,
#: ``DbSettings(password='two words')``, ``Authorization: Digest x``: the value masked, its
#: quotes and an authorization scheme kept. The key may follow ``_`` (an environment variable,
#: a query key) but not a letter, digit or ``/`` (``/etc/passwd: permission denied``), and is
#: followed by ``=`` or ``:`` (``the token expired`` is left alone).
_SECRET_KEY = r"passw(?:or)?d|secret|token|api[_-]?key|access[_-]?key|authorization"
_KEY_VALUE = re.compile(
    rf"(?i)(?<![A-Za-z0-9/])({_SECRET_KEY})"
    r"(['\"]?\s*[=:]\s*)"
    r"(?:(')([^']*)'|(\")([^\"]*)\"|((?:bearer|basic|digest|token)\s+)?([^\s'\",;)&]+))"
)
#: A URL's password: ``postgresql://app:hunter2@db`` as ``postgresql://app:[REDACTED]@db``. A
#: match starts only where a scheme can (the lookbehind), so a long run before a ``://`` is not
#: tried from each of its characters; a port and query (``host:8080?to=a@b``) are no password.
_USERINFO = re.compile(
    r"(?i)(?<![a-z0-9+.-])([a-z][a-z0-9+.-]{0,31}://)([^/?#\s:@]*):([^/?#\s@]+)@"
)
#: Whether :data:`_KEY_VALUE` or :data:`_USERINFO` can match at all (most text: no).
_HINT = re.compile(rf"(?i){_SECRET_KEY}|://")
# Quick pre-checks: most messages have no long digit run and no "earer"/"asic", so the regexes
# above never run for them.
_DIGITS = re.compile(r"[0-9][ -]?[0-9][ -]?[0-9][ -]?[0-9][ -]?[0-9][ -]?[0-9]")


def _masked_pair(match: re.Match[str]) -> str:
    """A :data:`_KEY_VALUE` match with its value masked: a quoted one whole, quotes kept."""
    key, sep = match[1], match[2]
    quote = match[3] or match[5]
    if quote:
        return f"{key}{sep}{quote}{MASK}{quote}"
    return f"{key}{sep}{match[7] or ''}{MASK}"


def _luhn(digits: str) -> bool:
    total = 0
    for index, char in enumerate(reversed(digits)):
        value = ord(char) - 48
        if index % 2:
            value *= 2
            if value > 9:
                value -= 9
        total += value
    return total % 10 == 0


def _mask_card(match: re.Match[str]) -> str:
    digits = "".join(c for c in match.group(0) if c.isdigit())
    # No payment card number starts with 0 (ISO/IEC 7812 major industry identifier), while
    # zero-padded ids and all-zero ids ("0000000000000000" passes the Luhn check) are common.
    if 13 <= len(digits) <= 19 and digits[0] != "0" and _luhn(digits):
        # Keep the last four, as PCI DSS allows and the seeds advise.
        return "*" * (len(digits) - 4) + digits[-4:]
    return match.group(0)


def redact_text(text: str, *, emails: bool = False) -> str:
    """Mask card numbers (Luhn-valid, last 4 kept), bearer/basic credentials, the value of
    ``password=``/``token:``/``api_key=``-like pairs, a URL's password and optionally e-mail
    addresses in free text."""
    if _DIGITS.search(text) is not None:
        text = _CARD.sub(_mask_card, text)
    if "earer" in text or "asic" in text or "EARER" in text or "ASIC" in text:
        text = _BEARER.sub(lambda m: f"{m[1] or m[2]} {MASK}", text)
    if _HINT.search(text) is not None:
        text = _KEY_VALUE.sub(_masked_pair, text)
        text = _USERINFO.sub(lambda m: f"{m.group(1)}{m.group(2)}:{MASK}@", text)
    if emails and "@" in text:
        text = _EMAIL.sub(MASK, text)
    return text


# -- safe serialisation ----------------------------------------------------------------------

_MAX_REPR = 1024


def _safe_default(value: Any) -> Any:
    """json.dumps fallback: never raises, every value becomes something JSON can hold."""
    try:
        if isinstance(value, (datetime.datetime, datetime.date, datetime.time)):
            return value.isoformat()
        if isinstance(value, decimal.Decimal):
            return str(value)
        if isinstance(value, (bytes, bytearray, memoryview)):
            return bytes(value[:_MAX_REPR]).decode("utf-8", "replace")
        if isinstance(value, (set, frozenset)):
            return sorted((repr(v) if not isinstance(v, str) else v) for v in value)
        if isinstance(value, BaseException):
            return f"{type(value).__name__}: {value}"
        text = repr(value)
    except Exception:
        text = f"<unrepresentable {type(value).__name__}>"
    return text[:_MAX_REPR]


_PLAIN = frozenset({int, float, bool})
# What json writes for an int or a finite float.
_int_repr = int.__repr__
_float_repr = float.__repr__
_CONTAINERS = frozenset({dict, list, tuple})


# json.dumps builds a new encoder whenever it gets options, and JSONEncoder.encode builds a C
# encoder on every call; this one is built once. Without a markers dict (no circular check) a
# recursive structure ends in RecursionError, which _dumps answers field by field.
def _make_encode() -> Callable[[Any], str]:
    # allow_nan off: NaN and Infinity are not JSON, and a strict parser drops the whole line;
    # _encode_safely writes them as strings instead.
    slow = json.JSONEncoder(
        default=_safe_default, ensure_ascii=False, separators=(",", ":"), allow_nan=False
    )
    try:
        from json.encoder import c_make_encoder, encode_basestring  # type: ignore[attr-defined]

        fast = c_make_encoder(
            None, _safe_default, encode_basestring, None, ":", ",", False, False, False
        )

        def encode(data: Any) -> str:
            return "".join(fast(data, 0))

        sample = {"a": [1, 2.5, None, True, "é\n"], "b": {"c": -0.0}}
        if encode(sample) == slow.encode(sample):
            return encode
    except Exception:  # pragma: no cover - no C accelerator
        pass
    return slow.encode  # pragma: no cover


_encode = _make_encode()


def _dumps(data: dict[str, Any]) -> str:
    return _safe_text(_encode_safely(data))


def _encode_safely(data: dict[str, Any]) -> str:
    try:
        text = _encode(data)
    except (ValueError, TypeError, RecursionError):
        # A recursive structure, a key json cannot take, NaN or Infinity: field by field.
        safe: dict[str, Any] = {}
        for key, value in data.items():
            name = "null" if key is None else _safe_key(key)
            if value.__class__ is float and value - value != 0.0:  # NaN, Infinity
                safe[name] = _NON_FINITE.get(repr(value), repr(value))
                continue
            try:
                _encode(value)
                safe[name] = value
            except (ValueError, TypeError, RecursionError):
                safe[name] = _safe_default(value)
        text = _encode(safe)
    return text


#: How a non-finite float is written: as the string JavaScript's and most parsers' own
#: non-standard extension would spell it, not as a bare token that strict JSON refuses.
_NON_FINITE = {"nan": "NaN", "inf": "Infinity", "-inf": "-Infinity"}


def _safe_repr(value: Any) -> str:
    """``repr(value)``, bounded, or a stand-in when it fails (a broken ``__repr__``, an int
    past the digit limit)."""
    try:
        text = repr(value)
    except Exception:
        text = f"<unrepresentable {type(value).__name__}>"
    return text[:_MAX_REPR]


def _safe_key(key: Any) -> str:
    """A field name as JSON text: ``str(key)`` (what ``json`` writes for an int key), safely."""
    if key.__class__ is str:
        return key
    try:
        return str(key)[:_MAX_REPR]
    except Exception:
        return f"<unprintable {type(key).__name__}>"


def _safe_text(text: str) -> str:
    """A JSON line made safe to ship: no Unicode line separators, no unencodable surrogates."""
    if not text.isascii():  # O(1) for ASCII text in CPython
        # json escapes the C0 controls only; these three are line breaks to some log shippers
        # (NEL to Python's own str.splitlines too).
        if "\u2028" in text or "\u2029" in text or "\x85" in text:
            text = (
                text.replace("\u2028", "\\u2028")
                .replace("\u2029", "\\u2029")
                .replace("\x85", "\\u0085")
            )
        # Lone surrogates (str decoded with "surrogateescape") cannot be written as UTF-8: the
        # handler would fail and lose the line. Inside a JSON string "\udcff" is a valid escape.
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text


# -- field names -----------------------------------------------------------------------------

_OTEL_FIELDS = {
    "timestamp": "timestamp",
    "level": "level",
    "logger": "logger",
    "message": "message",
    "trace_id": "trace_id",
    "span_id": "span_id",
    "trace_flags": "trace_flags",
    "request_id": "request_id",
    "http.method": "http.request.method",
    "http.route": "http.route",
    "exception.type": "exception.type",
    "exception.message": "exception.message",
    "exception.stacktrace": "exception.stacktrace",
    "service.name": "service.name",
    "service.version": "service.version",
    "deployment.environment": "deployment.environment",
    "message_truncated": "message_truncated",
}
_ECS_FIELDS = {
    "timestamp": "@timestamp",
    "level": "log.level",
    "logger": "log.logger",
    "message": "message",
    "trace_id": "trace.id",
    "span_id": "span.id",
    "trace_flags": "trace.flags",
    "request_id": "http.request.id",
    "http.method": "http.request.method",
    "http.route": "url.path_template",
    "exception.type": "error.type",
    "exception.message": "error.message",
    "exception.stacktrace": "error.stack_trace",
    "service.name": "service.name",
    "service.version": "service.version",
    "deployment.environment": "service.environment",
    "message_truncated": "event.truncated",
}

# Attributes every LogRecord has; anything else on a record came from ``extra=``.
_BASE_ATTRIBUTES = len(vars(logging.LogRecord("", 0, "", 0, "", (), None)))
_RESERVED = frozenset(
    vars(logging.LogRecord("", 0, "", 0, "", (), None)).keys()
    | {"message", "asctime", "taskName", "otelSpanID", "otelTraceID", "otelTraceSampled"}
    | {"otelServiceName", "obskit_trace_id", "obskit_span_id", "obskit_flags", "obskit_request"}
    # uvicorn's copy of the message with ANSI colour codes, for its own console formatter.
    | {"color_message"}
)


#: Log sampling's own generator (drawing from the global one would move an app's seeded
#: sequence). Reseeded in a forked child, as ``random`` reseeds its global one: otherwise every
#: worker a preloaded gunicorn master forks would keep and drop the same lines.
_random = random.Random()
_random_bits = _random.getrandbits
os.register_at_fork(after_in_child=_random.seed)
#: Trace flags as two hex digits. Ids are written with ``int.to_bytes(...).hex()``, about twice
#: as fast as ``format(i, "032x")``, which goes through the general format-spec machinery.
_HEX_BYTE = [f"{i:02x}" for i in range(256)]
#: ".000Z" to ".999Z": the end of a timestamp without a format spec per line.
_MILLIS = [f".{i:03d}Z" for i in range(1000)]
#: What a line outside any span reads as its span context: (trace_id, ..., is_valid=False).
_NO_SPAN = (0, 0, False, 0, None, False)


class _Decided(threading.local):
    """A log-sampling decision already made for the record this thread is about to make:
    ``obskit.logger``'s direct path decides before it formats, and when the line then needs
    the record path after all, :class:`CorrelationFilter` takes that decision instead of
    drawing again (a line outside a trace would otherwise be kept at the rate squared)."""

    kept = False


_decided = _Decided()


def call_message(msg: Any, args: Any) -> str:
    """``LogRecord.getMessage`` of a call, with the formatter's answer to arguments that do not
    fit (:meth:`JsonFormatter.format` writes the same)."""
    text = str(msg)
    if args:
        # LogRecord's rule: one non-empty mapping is the mapping ("%(user)s" % {"user": ...}).
        if len(args) == 1 and isinstance(args[0], Mapping) and args[0]:
            args = args[0]
        try:
            text = text % args
        except Exception:
            text = _mismatch(msg, args)
    return text


def _mappings(args: Any, depth: int = 0) -> bool:
    """Whether a call's ``args`` is or holds a mapping (directly, or in a list or tuple, 8
    levels deep): its keys may be sensitive."""
    if isinstance(args, Mapping):
        return True
    if depth < 8 and isinstance(args, (tuple, list)):
        return any(_mappings(a, depth + 1) for a in args if isinstance(a, (Mapping, tuple, list)))
    return False


def _mismatch(msg: Any, args: Any) -> str:
    """The message written when ``msg % args`` fails: both sides, each part printed safely."""
    if isinstance(args, tuple):
        shown = "(" + ", ".join(_safe_repr(a) for a in args) + ("," if len(args) == 1 else "") + ")"
    else:
        shown = _safe_repr(args)
    return f"{_safe_repr(msg)} % {shown}"


def _after_the_request(record: logging.LogRecord, ctx: Any, request: Any) -> tuple[Any, Any]:
    """For a line logged outside any span: the span context and obskit request of the request
    the record names in its ``request`` extra, if obskit's Django middleware handled it --
    Django logs a 4xx/5xx response ("Not Found: /x") after the middleware chain returned and
    obskit restored the caller's context -- or of the request whose exception the record
    carries: servers log an app's exception ("Exception in ASGI application", gunicorn's
    "Error handling request") after it left obskit's middleware. Else ``ctx`` and ``request``
    unchanged."""
    try:
        # Any object can be the extra: an unbound proxy (flask.request outside a request)
        # raises from getattr, which must neither reach the caller nor spoil the line.
        owner = getattr(getattr(record, "request", None), "_obskit_request", None)
        if owner is None and record.exc_info:
            from obskit.http._pipeline import ended_request

            ended = ended_request(record.exc_info[1], record.created)
            if ended is not None:
                return ended.context, ended
        span = getattr(owner, "span", None)
        if span is None:
            return ctx, request
        return span.get_span_context(), owner
    except Exception:  # not obskit's after all
        return ctx, request


class CorrelationFilter(logging.Filter):
    """Stamp trace and request fields on each record; drop sampled-out records below WARNING.

    Args:
        rate: fraction of traces whose DEBUG/INFO lines are kept (1.0 keeps all); a line
            outside any trace is kept with this probability.
        rates: per-logger rates (the longest matching dotted prefix wins).
        follow_trace: keep DEBUG/INFO lines exactly when their trace is sampled.
    """

    def __init__(
        self,
        rate: float = 1.0,
        *,
        rates: Mapping[str, float] | None = None,
        follow_trace: bool = False,
    ) -> None:
        super().__init__()
        self.rate = rate
        self.rates = dict(rates or {})
        self.follow_trace = follow_trace
        self._bounds: dict[str, int] = {}
        self._sampling = rate < 1.0 or bool(self.rates) or follow_trace

    def _bound(self, name: str) -> int:
        bound = self._bounds.get(name)
        if bound is None:
            rate = self.rate
            best = -1
            for prefix, value in self.rates.items():
                if (name == prefix or name.startswith(prefix + ".")) and len(prefix) > best:
                    rate, best = value, len(prefix)
            # Same arithmetic as TraceIdRatioBased: compare the low 64 bits of the trace id.
            bound = round(rate * (1 << 64))
            if len(self._bounds) < 4096:
                self._bounds[name] = bound
        return bound

    def filter(self, record: logging.LogRecord) -> bool:
        context = _ctx.get_current()
        # A SpanContext is a tuple (trace_id, span_id, is_remote, trace_flags, trace_state,
        # is_valid): indexing skips a property call per field, on every log line.
        ctx = current_span(context).get_span_context()
        request = context.get(_ctx.REQUEST_KEY)
        if not ctx[5]:
            ctx, request = _after_the_request(record, ctx, request)
        if ctx[5]:
            record.obskit_trace_id = ctx[0]
            record.obskit_span_id = ctx[1]
            record.obskit_flags = ctx[3]
        else:
            record.obskit_trace_id = 0
        record.obskit_request = request
        decided = _decided
        if decided.kept:  # the direct path kept this line and handed it over (see _Decided)
            decided.kept = False
            return True
        return self.keeps(record.levelno, record.name, ctx)

    def keeps(self, level: int, name: str, ctx: Any) -> bool:
        """Whether a line of ``level`` from logger ``name`` inside span context ``ctx`` (a
        ``SpanContext``, valid or not) is kept: the sampling decision of :meth:`filter`."""
        if not self._sampling or level >= logging.WARNING:
            return True
        if not ctx[5]:
            if self.follow_trace:
                return True
            # No trace id to decide on: keep the line with probability ``rate``.
            return _random_bits(64) < self._bound(name)
        if self.follow_trace:
            return bool(ctx[3] & 1)
        return bool((ctx[0] & 0xFFFFFFFFFFFFFFFF) < self._bound(name))


class JsonFormatter(_PJLJsonFormatter):
    """python-json-logger's formatter with obskit's fields, redaction and a fast path.

    Args:
        static_fields: added to every line (service name, version, environment).
        field_style: ``"otel"`` or ``"ecs"`` names.
        sensitive_keys: substrings of keys whose values are masked (case-insensitive).
        redact_emails: also mask e-mail addresses in messages and string extras.
        max_message_bytes: messages longer in UTF-8 bytes are cut (after redaction, at a
            character boundary) and marked ``message_truncated``.
        fmt, datefmt, style, validate, defaults: what ``logging.Formatter`` takes, accepted for
            ``dictConfig``'s ``{"class": ...}`` form and not used.
    """

    def __init__(
        self,
        fmt: str | None = None,
        datefmt: str | None = None,
        style: str = "%",
        validate: bool = True,
        *,
        defaults: Mapping[str, Any] | None = None,
        static_fields: Mapping[str, Any] | None = None,
        field_style: Literal["otel", "ecs"] = "otel",
        sensitive_keys: Iterable[str] = DEFAULT_SENSITIVE_KEYS,
        redact_emails: bool = False,
        max_message_bytes: int = 16 * 1024,
    ) -> None:
        # fmt, datefmt, style, validate and defaults: what logging.config.dictConfig passes to
        # a formatter named by "class" (as to any logging.Formatter). The line's fields are
        # obskit's own, so they are accepted and not used.
        super().__init__()
        names = _ECS_FIELDS if field_style == "ecs" else _OTEL_FIELDS
        self.names = names
        self.static = {names.get(k, k): v for k, v in (static_fields or {}).items()}
        self.sensitive = tuple(k.lower() for k in sensitive_keys)
        self.redact_emails = redact_emails
        self.max_message = max_message_bytes
        self._key_sensitive: dict[str, bool] = {}
        # Bounded caches of encoded text: redacted strings (messages, string extras), names
        # written as they are (logger, level, method, route), and extras' key fragments.
        self._texts: dict[str, str] = {}
        self._plain: dict[str, str] = {}
        self._keys: dict[str, str] = {}
        self._second: tuple[int, str] = (-1, "")
        n = names
        self._k_ts, self._k_level, self._k_logger = n["timestamp"], n["level"], n["logger"]
        self._k_msg, self._k_trace, self._k_span = n["message"], n["trace_id"], n["span_id"]
        self._k_flags, self._k_req = n["trace_flags"], n["request_id"]
        self._k_method, self._k_route = n["http.method"], n["http.route"]
        # The line is assembled from pre-encoded keys and the static fields encoded once: the C
        # encoder would escape every key and static value again on every line.
        key = _escape
        # One tuple, read once per line: (timestamp, level, logger, message, static fields,
        # trace_id, span_id, trace_flags, request_id, http.method, http.route) fragments.
        self._j = (
            "{" + key(self._k_ts) + ':"',
            '",' + key(self._k_level) + ":",
            "," + key(self._k_logger) + ":",
            "," + key(self._k_msg) + ":",
            "," + _encode_safely(self.static)[1:-1] if self.static else "",
            "," + key(self._k_trace) + ':"',
            '",' + key(self._k_span) + ':"',
            '",' + key(self._k_flags) + ':"',
            "," + key(self._k_req) + ":",
            "," + key(self._k_method) + ":",
            "," + key(self._k_route) + ":",
        )
        # Extras named like one of these go through the dict path (a later key replaces an
        # earlier one there; assembled text would repeat it).
        self._fixed = frozenset(
            {
                self._k_ts,
                self._k_level,
                self._k_logger,
                self._k_msg,
                self._k_trace,
                self._k_span,
                self._k_flags,
                self._k_req,
                self._k_method,
                self._k_route,
                *self.static,
            }
        )

    def _is_sensitive(self, key: str) -> bool:
        hit = self._key_sensitive.get(key)
        if hit is None:
            # X-Api-Key as x_api_key, user.password as user_password: one spelling compared.
            lowered = key.lower().replace("-", "_").replace(".", "_")
            hit = lowered in _SENSITIVE_NAMES or any(s in lowered for s in self.sensitive)
            if len(self._key_sensitive) < 4096:
                self._key_sensitive[key] = hit
        return hit

    def _redact(self, value: Any, depth: int = 0) -> Any:
        if isinstance(value, str):
            return redact_text(value, emails=self.redact_emails)
        if depth > 8:
            # Deeper (or a structure that contains itself): a placeholder, never the value as
            # it is -- its text would be written unredacted.
            return "[nested too deep]" if isinstance(value, (Mapping, list, tuple)) else value
        if isinstance(value, Mapping):
            return {
                k: (
                    MASK
                    if isinstance(k, str) and self._is_sensitive(k)
                    else self._redact(v, depth + 1)
                )
                for k, v in value.items()
            }
        if isinstance(value, (list, tuple)):
            return [self._redact(v, depth + 1) for v in value]
        if value is None or isinstance(value, (int, float)):  # bool, IntEnum: as JSON has them
            return value
        # Written as text (bytes, a set, an exception, any object's repr): that text is
        # redacted, nested as at top level.
        return self._redact(_safe_default(value), depth + 1)

    def _structured_message(self, msg: Any, args: Any) -> str:
        """The message of a call that logs a mapping, or formats one in (``log.info({...})``,
        ``log.info("payload %s", {...})``): the values of its sensitive keys masked before it
        becomes text, where only the text patterns could still find them; everything else as
        ``str()`` writes it. A mapping that cannot be walked (a lazy proxy that raises) is
        written as it would be unmasked, its text still redacted."""
        try:
            masked_msg = self._masked(msg)
            if isinstance(args, Mapping):  # LogRecord's one-mapping form
                masked_args: Any = (self._masked(args),)
            else:
                masked_args = self._masked(args)
        except Exception:
            masked_msg, masked_args = msg, ((args,) if isinstance(args, Mapping) else args)
        return call_message(masked_msg, masked_args)

    def _masked(self, value: Any, depth: int = 0) -> Any:
        """``value`` itself when no mapping in it has a sensitive key; else a copy with those
        keys' values as ``[REDACTED]`` -- mappings as dicts, lists and tuples as they were --
        and every other value as it is."""
        if depth > 8:
            return value
        if isinstance(value, Mapping):
            masked = {
                k: MASK
                if isinstance(k, str) and self._is_sensitive(k)
                else self._masked(v, depth + 1)
                for k, v in value.items()
            }
            changed = any(masked[k] is not v for k, v in value.items())
            return masked if changed else value
        if isinstance(value, (list, tuple)):
            items = [self._masked(v, depth + 1) for v in value]
            if all(a is b for a, b in zip(items, value, strict=True)):
                return value
            return tuple(items) if isinstance(value, tuple) else items
        return value

    def _timestamp(self, created: float) -> str:
        second = int(created)
        cached = self._second  # one tuple: another thread never sees a half-updated cache
        if cached[0] != second:
            cached = (second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second)))
            self._second = cached
        return cached[1] + _MILLIS[int((created - second) * 1000)]

    def format(self, record: logging.LogRecord) -> str:
        """Render one record as one JSON line; never raises."""
        try:
            return self._format(record)
        except Exception as exc:
            _selfmetrics.current().dropped_logs.labels("format_error").inc()
            _selfmetrics.warn_once(
                "log_format", "obskit: a log record could not be formatted (%r)", exc
            )
            return _dumps({"level": record.levelname, "logger": record.name, "message": "?"})

    def _format(self, record: logging.LogRecord) -> str:
        msg, args = record.msg, record.args
        if (msg.__class__ is not str and isinstance(msg, Mapping)) or (args and _mappings(args)):
            message = self._structured_message(msg, args)
        else:
            try:
                message = record.getMessage()
            except Exception:
                message = _mismatch(msg, args)
        limit = self.max_message
        truncated = redacted = False
        if len(message) * 4 > limit:  # may be over the limit in UTF-8 bytes
            # Redact a window a little longer than the limit first, so a card number or token
            # across the cut is masked before it is cut, then cut at a character boundary.
            message = redact_text(message[: limit + 64], emails=self.redact_emails)
            encoded = message.encode("utf-8", "surrogatepass")
            if len(encoded) > limit:
                cut = limit
                while cut > 0 and encoded[cut] & 0xC0 == 0x80:  # not inside a character
                    cut -= 1
                message = encoded[:cut].decode("utf-8", "surrogatepass")
                truncated = True
            redacted = True
            message_text = _escape(message)
        else:
            message_text = self._texts.get(message) or self._text(message)
        trace_id = getattr(record, "obskit_trace_id", None)
        span_id = flags = 0
        if trace_id is not None and (
            trace_id.__class__ is not int or not hasattr(record, "obskit_flags")
        ):
            trace_id = None  # not CorrelationFilter's stamps: an extra= of that name
        if trace_id is None:  # no CorrelationFilter on the way: read the context here
            context = _ctx.get_current()
            # A SpanContext is a tuple (trace_id, span_id, is_remote, trace_flags, trace_state,
            # is_valid), as in CorrelationFilter.filter. Kept in locals, not on the record: the
            # scan for extras below would only walk past them again.
            ctx = current_span(context).get_span_context()
            request: Any = context.get(_ctx.REQUEST_KEY)
            if not ctx[5]:
                ctx, request = _after_the_request(record, ctx, request)
            if ctx[5]:
                trace_id, span_id, flags = ctx[0], ctx[1], ctx[3]
        else:
            request = getattr(record, "obskit_request", None)
            if trace_id:
                span_id, flags = record.obskit_span_id, record.obskit_flags  # type: ignore[attr-defined]
        name, level = record.name, record.levelname
        # makeLogRecord takes any type for these; the dict path encodes what they are.
        odd_names = name.__class__ is not str or level.__class__ is not str
        tail = None
        if not (truncated or record.exc_info or record.exc_text or record.stack_info):
            # LogRecord.__init__ sets the same attributes in the same order and ``extra`` comes
            # after them, so the scan starts past the standard ones (skipped in C by islice).
            tail = self._scalar_fields(islice(record.__dict__.items(), _BASE_ATTRIBUTES, None))
        if tail is None or odd_names:
            extras = self._extras(record, truncated)
            if odd_names or (extras and not self._fixed.isdisjoint(extras)):
                if not redacted:
                    message = redact_text(message, emails=self.redact_emails)
                return self._as_dict(record, message, (trace_id, span_id, flags), request, extras)
            tail = [",", _encode_safely(extras)[1:]] if extras else ["}"]
        else:
            tail.append("}")
        return self._assemble(
            record.created, level, name, message_text, trace_id, span_id, flags, request, tail
        )

    def event_message(self, msg: Any, args: Any) -> str:
        """The message of a call (``msg % args``), as :meth:`format` builds it from a record:
        mappings' sensitive keys masked, arguments that do not fit written as the formatter
        writes them. Raises what ``str()`` of an argument raises."""
        if msg.__class__ is str and not args:
            return msg
        if isinstance(msg, Mapping) or (args and _mappings(args)):
            return self._structured_message(msg, args)
        return call_message(msg, args)

    def format_event(
        self,
        created: float,
        level: str,
        name: str,
        message: str,
        fields: Mapping[str, Any] | None,
    ) -> str | None:
        """The line :meth:`format` would write for a record of this call (its message, from
        :meth:`event_message`, and ``fields``), built without a record
        (:class:`obskit.logger.Logger`'s direct path); None when the line needs the record
        path: a field that is not a scalar under a plain key, or a message long enough to be
        cut. The record path is then handed ``message`` with no arguments, so that the
        arguments' ``str()`` runs once per line whichever path writes it."""
        if len(message) * 4 > self.max_message:
            return None
        if fields:
            tail = self._scalar_fields(fields.items())
            if tail is None:
                return None
            tail.append("}")
        else:
            tail = ["}"]
        message_text = self._texts.get(message) or self._text(message)
        context = _ctx.get_current()
        # current_span(context), inlined for the default runtime context (a call less per line,
        # as start_server_span reads the parent span).
        span: Any = context.get(_ctx.SPAN_KEY) if _ctx.DIRECT else current_span(context)
        ctx = _NO_SPAN if span is None else span.get_span_context()
        return self._assemble(
            created,
            level,
            name,
            message_text,
            ctx[0] if ctx[5] else 0,
            ctx[1],
            ctx[3],
            context.get(_ctx.REQUEST_KEY),
            tail,
        )

    def _assemble(
        self,
        created: float,
        level: str,
        name: str,
        message_text: str,
        trace_id: int | None,
        span_id: int,
        flags: int,
        request: Any,
        tail: list[str],
    ) -> str:
        """The line as text: the same keys, values and order as the dict path."""
        plain = self._plain
        (
            j_ts,
            j_level,
            j_logger,
            j_msg,
            j_static,
            j_trace,
            j_span,
            j_flags,
            j_req,
            j_method,
            j_route,
        ) = self._j
        parts = [
            j_ts,
            self._timestamp(created),
            j_level,
            plain.get(level) or self._plain_text(level),
            j_logger,
            plain.get(name) or self._plain_text(name),
            j_msg,
            message_text,
            j_static,
        ]
        if trace_id:
            parts += (
                j_trace,
                trace_id.to_bytes(16, "big").hex(),
                j_span,
                span_id.to_bytes(8, "big").hex(),
                j_flags,
                _HEX_BYTE[flags & 0xFF],
                '"',
            )
        if request is not None:
            method, route = request.method, request.route
            parts += (
                j_req,
                _escape(request.request_id),
                j_method,
                plain.get(method) or self._plain_text(method),
            )
            if route is not None:
                parts += (j_route, plain.get(route) or self._plain_text(route))
        parts += tail
        line = "".join(parts)
        return line if line.isascii() else _safe_text(line)

    def _text(self, value: str) -> str:
        """``value`` redacted and JSON-encoded. Short ones are cached: a line's message is most
        often its format string, and string extras repeat (a status, a queue name). Text that
        redaction changed is not: the cache must not keep a card number or a token alive."""
        redacted = redact_text(value, emails=self.redact_emails)
        text = _escape(redacted)
        if len(value) <= 256 and redacted == value:
            texts = self._texts
            if len(texts) >= 2048:  # a flood of distinct values: start over, stay bounded
                texts.clear()
            texts[value] = text
        return text

    def _plain_text(self, value: str) -> str:
        """``value`` JSON-encoded, not redacted (logger and level names, method, route)."""
        text = _escape(value)
        if len(value) <= 256:
            plain = self._plain
            if len(plain) >= 1024:
                plain.clear()
            plain[value] = text
        return text

    def _scalar_fields(self, items: Iterable[tuple[Any, Any]]) -> list[str] | None:
        """Extra fields as ``,"key":value`` fragments when every one is a str, int, float, bool
        or None under a plain key -- the usual line -- else None (the dict path encodes them).
        Keys naming a LogRecord attribute or starting with ``_`` are not extras: skipped."""
        fragments = self._keys
        texts = self._texts
        tail: list[str] = []
        try:
            for key, value in items:
                # Only an exact str key is looked up: a str subclass (an Enum) equal to a cached
                # key must be written as the dict path writes it, whatever was logged before.
                fragment = fragments.get(key) if key.__class__ is str else None
                if fragment is None:
                    if key.__class__ is str and (key in _RESERVED or key[:1] == "_"):
                        continue
                    fragment = self._key_fragment(key)
                    if fragment is None:
                        return None
                cls = value.__class__
                if cls is str:
                    text = texts.get(value) or self._text(value)
                elif cls is int:
                    text = _int_repr(value)  # ValueError past 4300 digits: the dict path
                elif value is None:
                    text = "null"
                elif cls is bool:
                    text = "true" if value else "false"
                elif cls is float and value - value == 0.0:  # finite: written as repr()
                    text = _float_repr(value)
                else:
                    return None
                tail += (fragment, text)
        except ValueError:
            return None
        return tail

    def _key_fragment(self, key: Any) -> str | None:
        """``,"key":`` for an extra written as it is; None for a key that is not a str, is
        sensitive (masked on the dict path) or names one of obskit's own fields."""
        if key.__class__ is not str or key in self._fixed or self._is_sensitive(key):
            return None
        fragment = "," + _escape(key) + ":"
        if len(self._keys) < 4096:
            self._keys[key] = fragment
        return fragment

    def _extras(self, record: logging.LogRecord, truncated: bool) -> dict[str, Any]:
        """Every extra field of ``record``, redacted, with the exception and truncation fields."""
        extras: dict[str, Any] = {}
        for key, value in islice(record.__dict__.items(), _BASE_ATTRIBUTES, None):
            if key.__class__ is not str:  # the stdlib takes extra={1: ...}; JSON keys are text
                key = _safe_key(key)
            if key in _RESERVED or key[:1] == "_":
                continue
            cls = value.__class__
            if self._is_sensitive(key):
                extras[key] = MASK
            elif cls is str:
                extras[key] = redact_text(value, emails=self.redact_emails)
            elif cls in _PLAIN or value is None:
                extras[key] = value
            elif cls in _CONTAINERS or isinstance(value, Mapping):
                extras[key] = self._redact(value)
            elif isinstance(value, str):  # a str subclass (StrEnum): written as its text
                extras[key] = redact_text(str.__str__(value), emails=self.redact_emails)
            elif isinstance(value, (int, float)):  # IntEnum and friends: JSON numbers
                extras[key] = value
            else:
                # Written as text (an exception, bytes, a set, any object): redacted as text is.
                extras[key] = self._redact(_safe_default(value))
        if truncated:
            extras[self.names["message_truncated"]] = True
        if record.exc_info and record.exc_info[1] is not None:
            exc = record.exc_info[1]
            extras[self.names["exception.type"]] = type(exc).__qualname__
            try:
                text = str(exc)
            except Exception:
                text = f"<unprintable {type(exc).__name__}>"
            extras[self.names["exception.message"]] = redact_text(text, emails=self.redact_emails)
            # The stack trace ends with the exception's message: redacted alike.
            extras[self.names["exception.stacktrace"]] = redact_text(
                "".join(traceback.format_exception(*record.exc_info)), emails=self.redact_emails
            )
        elif record.exc_text:
            extras[self.names["exception.stacktrace"]] = redact_text(
                record.exc_text, emails=self.redact_emails
            )
        if record.stack_info:
            extras["stack_info"] = record.stack_info
        return extras

    def _as_dict(
        self,
        record: logging.LogRecord,
        message: str,
        ids: tuple[int | None, int, int],
        request: Any,
        extras: dict[str, Any],
    ) -> str:
        """The line as one dict: for extras that reuse a key of obskit's own fields, and for
        records whose name or level name is not a string (``makeLogRecord`` allows it)."""
        data: dict[str, Any] = {
            self._k_ts: self._timestamp(record.created),
            self._k_level: record.levelname,
            self._k_logger: record.name,
            self._k_msg: message,
        }
        data.update(self.static)
        trace_id, span_id, flags = ids
        if trace_id:
            data[self._k_trace] = trace_id.to_bytes(16, "big").hex()
            data[self._k_span] = span_id.to_bytes(8, "big").hex()
            data[self._k_flags] = _HEX_BYTE[flags & 0xFF]
        if request is not None:
            data[self._k_req] = request.request_id
            data[self._k_method] = request.method
            if request.route is not None:
                data[self._k_route] = request.route
        data.update(extras)
        return _dumps(data)


# -- installation ----------------------------------------------------------------------------

# Loggers that frameworks and servers configure with their own handlers; obskit hands them to the
# root handler so every line is JSON.
FRAMEWORK_LOGGERS = (
    "uvicorn",
    "uvicorn.error",
    "uvicorn.access",
    "gunicorn",
    "gunicorn.error",
    "gunicorn.access",
    "django",
    "django.server",
    "django.request",
    "werkzeug",
)

#: ANSI colour and style codes (SGR): werkzeug's development server colours the request line of
#: every answer but a 200 for a terminal, and in a JSON line they are noise to every reader.
_ANSI_STYLE = re.compile(r"\x1b\[[0-9;]*m")


class _ServerLineFilter(logging.Filter):
    """Tidies what development servers write for a terminal: ANSI codes out of the message
    and its string arguments, a trailing newline off the message (uvicorn's "Exception in ASGI
    application\n"), and the socket Django's ``runserver`` passes as its lines' ``request``
    extra (its repr names file descriptors and addresses, and leads to no request). On their
    loggers only, so that no other line pays for it."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            if isinstance(getattr(record, "request", None), socket.socket):
                delattr(record, "request")
            msg = record.msg
            if isinstance(msg, str) and ("\x1b" in msg or msg.endswith("\n")):
                record.msg = _ANSI_STYLE.sub("", msg).rstrip("\n")
            args = record.args
            if isinstance(args, tuple) and any(isinstance(a, str) and "\x1b" in a for a in args):
                record.args = tuple(
                    _ANSI_STYLE.sub("", a) if isinstance(a, str) else a for a in args
                )
        except Exception as exc:  # the line is written as it came
            _selfmetrics.internal_error("server_logging", exc)
        return True


_SERVER_LINES = _ServerLineFilter()
#: The loggers :data:`_SERVER_LINES` tidies.
_TIDIED_LOGGERS = frozenset({"werkzeug", "uvicorn.error", "django.server"})

_HANDLER_NAME = "obskit-json"
#: What a handler without a formatter uses (the stdlib's ``logging._defaultFormatter``).
_DEFAULT_FORMATTER = logging.Formatter()


#: The attributes :class:`CorrelationFilter` sets on a record.
_STAMPS = ("obskit_trace_id", "obskit_span_id", "obskit_flags", "obskit_request")


def _write_failed(handler: logging.Handler, record: logging.LogRecord) -> None:
    """A formatted line its stream refused, on the record path: counted as on the direct path
    (``obskit_log_records_dropped_total{reason="write_error"}``) and reported by the stdlib's
    ``handleError``."""
    try:
        _selfmetrics.current().dropped_logs.labels("write_error").inc()
    except Exception:  # pragma: no cover - the self-metrics are always there
        pass
    handler.handleError(record)


class JsonStreamHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """The stdlib's ``StreamHandler`` with its per-line path cut to what a line needs.

    Each line is still formatted, written and flushed under the handler's lock. The stdlib gets
    there through five Python-level calls and takes its re-entrant lock three times; here
    :meth:`handle` skips the filter loop when there are no filters and :meth:`emit` formats,
    writes and flushes in one frame.
    """

    def handle(self, record: logging.LogRecord) -> Any:
        if self.filters:
            passed: Any = self.filter(record)
            if not passed:
                return passed
            if isinstance(passed, logging.LogRecord):  # Python 3.12+: a filter's replacement
                record = passed
        else:
            passed = True
        with self.lock:  # type: ignore[union-attr]
            self.emit(record)
        if self.filters:
            # A CorrelationFilter stamped the record for this handler's formatter: the record
            # goes on to the handlers after this one, which must see it as the app made it.
            fields = record.__dict__
            for name in _STAMPS:
                fields.pop(name, None)
        return passed

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = (self.formatter or _DEFAULT_FORMATTER).format(record)
            stream = self.stream
            stream.write(line + self.terminator)
            flush = getattr(stream, "flush", None)
            if flush is not None:
                flush()
        except RecursionError:  # as the stdlib: a recursion must not loop through handleError
            raise
        except Exception:
            _write_failed(self, record)

    def write_line(self, line: str, levelno: int) -> None:
        """Write one formatted line as :meth:`emit` would; the caller holds :attr:`lock`.

        :class:`obskit.logger.Logger`'s direct path, which has no record. :meth:`emit` keeps
        its own copy of these lines: a call more per stdlib record is not worth three lines.
        """
        stream = self.stream
        stream.write(line + self.terminator)
        flush = getattr(stream, "flush", None)
        if flush is not None:
            flush()


class BufferedStreamHandler(JsonStreamHandler):
    """A stream handler that writes WARNING and above at once and the rest every ``interval``.

    The stdlib's StreamHandler flushes -- one ``write`` system call -- after every line, which
    inside a busy request costs more than formatting the line. Here DEBUG/INFO lines wait in the
    handler's own buffer and a small daemon thread writes them together every ``interval``
    seconds (and ``logging.shutdown`` at exit) -- to a pipe in writes of whole lines of at most
    ``PIPE_BUF`` bytes; a line at WARNING or above is written at once, after what waited before
    it. The buffer is the handler's, not the stream's, so this holds
    for a line-buffered stream too (``sys.stderr``, which flushes at every newline), and it is
    bounded: past :attr:`MAX_PENDING` lines they are written at once. A crash that kills the
    process outright can lose up to ``interval`` seconds of DEBUG/INFO lines; lines a write
    refused are counted in ``obskit_log_records_dropped_total{reason="write_error"}``.
    """

    #: Lines kept at most before they are written at once.
    MAX_PENDING = 1024

    def __init__(self, stream: TextIO, interval: float) -> None:
        super().__init__(stream)
        self.interval = interval
        self._pending: list[str] = []
        _buffered.add(self)
        self._start_flusher()

    def _start_flusher(self) -> None:
        ref = weakref.ref(self)
        interval = self.interval

        def run() -> None:
            while True:
                time.sleep(interval)
                handler = ref()
                if handler is None:
                    return
                if handler._pending:
                    handler.flush()
                del handler

        threading.Thread(target=run, name="obskit-log-flush", daemon=True).start()

    def flush(self) -> None:
        with self.lock:  # type: ignore[union-attr]
            pending = self._pending
            if pending:
                self._pending = []
                written = 0
                try:
                    piece = self._piece_bytes()
                    if not piece:
                        self.stream.write("".join(pending))
                    else:
                        for written, end in _pieces(pending, piece):
                            self.stream.write("".join(pending[written:end]))
                            if end < len(pending):
                                self.stream.flush()
                except Exception as exc:  # a full disk, a closed pipe: lost, and counted
                    _lines_lost(len(pending) - written, exc)
                    return
            try:
                super().flush()
            except Exception as exc:  # the lines are in the stream's buffer, not lost yet
                _selfmetrics.warn_once(
                    "log_flush", "obskit: buffered log lines could not be flushed (%r)", exc
                )

    #: ``(stream, bytes)``: the largest write to ``stream`` that no other process's write can
    #: split (0: any size).
    _piece_for: tuple[object, int] = (None, 0)

    def _piece_bytes(self) -> int:
        """``PIPE_BUF`` for a pipe, socket or terminal, 0 for a regular file or in-memory stream.

        The workers of a server share one stdout, a pipe under Docker and Kubernetes: a write
        longer than ``PIPE_BUF`` (4 KiB on Linux) can be split there by another worker's write
        and a line torn in two, where one to a regular file in append mode cannot.
        """
        stream = self.stream
        known, piece = self._piece_for
        if known is not stream:
            try:
                regular = stat.S_ISREG(os.fstat(stream.fileno()).st_mode)
            except Exception:  # no file descriptor: StringIO and the like
                regular = True
            piece = 0 if regular else getattr(select, "PIPE_BUF", 512)
            self._piece_for = (stream, piece)
        return piece

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = (self.formatter or _DEFAULT_FORMATTER).format(record)
        except RecursionError:
            raise
        except Exception:
            _write_failed(self, record)
            return
        self.write_line(line, record.levelno)

    def write_line(self, line: str, levelno: int) -> None:
        pending = self._pending
        pending.append(line + self.terminator)
        if levelno >= logging.WARNING or len(pending) >= self.MAX_PENDING or self._closed:
            self.flush()

    #: Set by :meth:`close` (a replaced or shut-down handler): a line that still reaches it --
    #: its caller chose it just before the replacement -- is written at once, not left waiting
    #: in a buffer nothing will flush again.
    _closed = False

    def close(self) -> None:
        with self.lock:  # type: ignore[union-attr]
            self._closed = True
        self.flush()
        super().close()

    def _after_fork(self) -> None:
        # The child has no flusher thread, and the lines waiting are the parent's to write.
        self._pending = []
        self._start_flusher()


def _pieces(lines: list[str], limit: int) -> Iterable[tuple[int, int]]:
    """``(start, end)`` of runs of whole ``lines`` of at most ``limit`` bytes each (UTF-8; a
    longer line alone)."""
    start = size = 0
    for index, line in enumerate(lines):
        length = len(line) if line.isascii() else len(line.encode("utf-8", "surrogatepass"))
        if size + length > limit and index > start:
            yield start, index
            start, size = index, 0
        size += length
    yield start, len(lines)


def _lines_lost(count: int, exc: BaseException) -> None:
    try:
        _selfmetrics.current().dropped_logs.labels("write_error").inc(count)
        _selfmetrics.warn_once(
            "log_write", "obskit: %d log lines could not be written (%r)", count, exc
        )
    except Exception:  # pragma: no cover - the self-metrics are always there
        pass


_buffered: weakref.WeakSet[BufferedStreamHandler] = weakref.WeakSet()


def _restart_flushers() -> None:
    for handler in list(_buffered):
        handler._after_fork()


os.register_at_fork(after_in_child=_restart_flushers)


def setup_logging(
    *,
    level: str | int = "INFO",
    levels: Mapping[str, str | int] | None = None,
    stream: TextIO | None = None,
    field_style: Literal["otel", "ecs"] = "otel",
    static_fields: Mapping[str, Any] | None = None,
    sample_rate: float = 1.0,
    sample_rates: Mapping[str, float] | None = None,
    follow_trace: bool = False,
    sensitive_keys: Iterable[str] = (),
    redact_emails: bool = False,
    max_message_bytes: int = 16 * 1024,
    flush_interval: float = 0.0,
    direct: bool = True,
) -> logging.Handler:
    """Install obskit's JSON handler on the root logger (replacing a previous obskit handler).

    Framework and server loggers lose the handlers that write their lines to a stream and
    propagate to the root, so uvicorn, gunicorn, Django and Flask lines come out as JSON too;
    their other handlers (Django's ``mail_admins``, syslog) stay. One that has no handler and
    does not propagate was silenced on purpose (``uvicorn --no-access-log``) and stays so.
    Returns the handler.

    ``direct`` (default on): a ``logging.getLogger(name)`` line whose only listener is this
    handler is written as :func:`obskit.get_logger` writes it, without a ``LogRecord`` -- the
    same bytes at about half the cost; any other handler, filter, ``exc_info`` or a replaced
    record path sends the line down the stdlib's path as before
    (:class:`obskit.logger.DirectLogger`). ``direct=False`` leaves logger classes alone.
    """
    if static_fields is None:
        from obskit._runtime import get_config

        config = get_config()
        static_fields = (
            {
                "service.name": config.service_name,
                "service.version": config.service_version,
                "deployment.environment": config.environment,
            }
            if config is not None
            else {}
        )
    target = stream or sys.stderr
    handler: logging.StreamHandler = (  # type: ignore[type-arg]
        BufferedStreamHandler(target, flush_interval)
        if flush_interval > 0
        else JsonStreamHandler(target)
    )
    handler.set_name(_HANDLER_NAME)
    handler.setFormatter(
        JsonFormatter(
            static_fields=static_fields,
            field_style=field_style,
            sensitive_keys=(*DEFAULT_SENSITIVE_KEYS, *sensitive_keys),
            redact_emails=redact_emails,
            max_message_bytes=max_message_bytes,
        )
    )
    if sample_rate < 1.0 or sample_rates or follow_trace:
        handler.addFilter(
            CorrelationFilter(sample_rate, rates=sample_rates, follow_trace=follow_trace)
        )
    # Without sampling the filter would only copy the ids the formatter reads itself (this
    # handler formats in the thread that logs): one step less per line.
    root = logging.getLogger()
    # The previous obskit handler is replaced in place, in one assignment: a line that another
    # thread logs meanwhile goes through one of the two, never through neither or both.
    with getattr(logging, "_lock", None) or contextlib.nullcontext():  # addHandler's lock
        current = root.handlers
        replaced = [h for h in current if h.get_name() == _HANDLER_NAME]
        handlers = [h for h in current if h.get_name() != _HANDLER_NAME]
        handlers.insert(current.index(replaced[0]) if replaced else len(handlers), handler)
        root.handlers = handlers
    for old in replaced:
        retire_handler(old)
    root.setLevel(level if isinstance(level, int) else level.upper())
    take_over_framework_loggers()
    for name, value in (levels or {}).items():
        logging.getLogger(name).setLevel(value if isinstance(value, int) else value.upper())
    from obskit.logger import install_direct, uninstall_direct  # obskit.logger imports this

    if direct:
        install_direct()
    else:
        uninstall_direct()
    return handler


def retire_handler(handler: logging.Handler) -> None:
    """Flush and close an obskit handler that is out of use (replaced or shut down): lines
    still waiting in a buffered one go out, not away, and a line that still reaches it -- its
    caller chose it just before -- is written through. Never raises; a failure is counted."""
    try:
        handler.flush()
        handler.close()
    except Exception as exc:
        _selfmetrics.internal_error("log_flush", exc)


def take_over_framework_loggers(names: Iterable[str] = FRAMEWORK_LOGGERS) -> None:
    """Hand the server and framework loggers ``names`` to the root logger (obskit's handler):
    each loses its handlers that write lines to a stream and reaches the root's handlers,
    unless it was silenced on purpose; other handlers (mail, syslog, a queue) stay. Called by
    :func:`setup_logging`, and through :func:`take_back_framework_loggers` by the adapters of
    servers that set their loggers up again."""
    # Every state is read before any logger changes: servers share handler lists between
    # loggers (uvicorn's gunicorn worker gives gunicorn.error uvicorn.error's list), and
    # emptying one must not make the other look silenced.
    frameworks = [logging.getLogger(name) for name in names]
    silenced = [not lg.handlers and not lg.propagate for lg in frameworks]
    apart = [not lg.propagate for lg in frameworks]
    for framework, off in zip(frameworks, silenced, strict=True):
        if off:
            # Silenced on purpose (uvicorn --no-access-log, gunicorn without --access-logfile):
            # propagating would bring those lines back, or at least their cost -- uvicorn
            # builds its access line whenever the logger has a handler to reach.
            continue
        # A new list: a shared one stays its other owner's. Only handlers that write lines to
        # a stream go (the console, a file): they would write each line again, as text. One
        # that sends lines elsewhere (Django's mail_admins, syslog, a queue, an error tracker)
        # does a job obskit's JSON line does not, and stays.
        framework.handlers = [h for h in framework.handlers if not _writes_lines(h)]
        if framework.name in _TIDIED_LOGGERS and _SERVER_LINES not in framework.filters:
            framework.addFilter(_SERVER_LINES)
    # Then how each reaches the root's handlers, once every one has lost its stream handlers.
    for framework, off, kept_apart in zip(frameworks, silenced, apart, strict=True):
        if off:
            continue
        if kept_apart and _parents_listen(framework):
            # Kept apart from its parents (uvicorn.access from uvicorn, django.server from
            # django), one of which still has a handler of its own (syslog, mail_admins):
            # propagating would send that handler lines it never had. It stays apart and
            # reaches the root's handlers directly.
            if _TO_ROOT not in framework.handlers:
                framework.addHandler(_TO_ROOT)
        else:
            if _TO_ROOT in framework.handlers:
                framework.removeHandler(_TO_ROOT)
            framework.propagate = True
    _drop_flask_default_handler()


def _writes_lines(handler: logging.Handler) -> bool:
    """Whether a framework logger's ``handler`` writes its lines to a stream, as text: a
    ``StreamHandler`` (a ``FileHandler`` too), or a ``MemoryHandler`` or a ``QueueHandler``
    whose target or listener (``dictConfig`` sets it, Python 3.12+) is one."""
    if isinstance(handler, logging.StreamHandler):
        return True
    if isinstance(handler, logging.handlers.MemoryHandler):
        return isinstance(handler.target, logging.StreamHandler)
    if isinstance(handler, logging.handlers.QueueHandler):
        listener = getattr(handler, "listener", None)
        handlers = getattr(listener, "handlers", None) or ()
        return any(isinstance(h, logging.StreamHandler) for h in handlers)
    return False


def _parents_listen(logger: logging.Logger) -> bool:
    """Whether a parent of ``logger`` below the root has a handler of its own."""
    parent = logger.parent
    while isinstance(parent, logging.Logger) and parent is not logging.root:
        if any(h is not _TO_ROOT for h in parent.handlers):
            return True
        if not parent.propagate:
            return False
        parent = parent.parent
    return False


class _ToRoot(logging.Handler):
    """The handler of a framework logger kept apart from its parents: its lines go to the root
    logger's handlers (obskit's JSON handler, and any of the application's), as propagation
    would take them, without the parents' own handlers on the way."""

    def __init__(self) -> None:
        super().__init__()
        self.set_name("obskit-to-root")

    def handle(self, record: logging.LogRecord) -> bool:
        logging.root.callHandlers(record)
        return True

    def emit(self, record: logging.LogRecord) -> None:  # pragma: no cover - handle() does it
        logging.root.callHandlers(record)


_TO_ROOT = _ToRoot()


def take_back_framework_loggers(names: Iterable[str]) -> None:
    """:func:`take_over_framework_loggers` again, if obskit's JSON handler is installed, for a
    server that has just set its loggers up anew (uvicorn at start, gunicorn at a reload).
    Never raises: a failure is counted, the server goes on."""
    try:
        if any(h.get_name() == _HANDLER_NAME for h in logging.getLogger().handlers):
            names = tuple(names)
            take_over_framework_loggers(names)
            # The server set their levels anew too (gunicorn's setup at a reload, uvicorn's
            # log_config): the log_levels option's ones for these loggers apply again.
            runtime = _state.runtime
            if runtime is not None and not runtime.closed:
                for name, level in runtime.config.log_levels.items():
                    if name in names:
                        logging.getLogger(name).setLevel(level)
    except Exception as exc:
        _selfmetrics.internal_error("server_logging", exc)


def _drop_flask_default_handler() -> None:
    """Take Flask's own stderr handler off every app's logger (``getLogger(app.name)``): Flask
    adds it on an app's first log call when no handler reaches that logger yet, and it would
    write each of the app's lines a second time, as text."""
    flask_logging = sys.modules.get("flask.logging")
    default = getattr(flask_logging, "default_handler", None)
    if default is None:
        return
    for candidate in list(logging.Logger.manager.loggerDict.values()):
        if isinstance(candidate, logging.Logger) and default in candidate.handlers:
            candidate.removeHandler(default)


#: ``obskit.logging.setup(...)`` -- the same as :func:`setup_logging`.
setup = setup_logging
