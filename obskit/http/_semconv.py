"""HTTP semantic-convention names and the closed vocabularies that keep labels bounded."""

from __future__ import annotations

import traceback
from collections.abc import Callable
from typing import Any

from opentelemetry.trace import StatusCode

__all__ = [
    "METHODS",
    "OTHER_METHOD",
    "UNMATCHED",
    "error_type",
    "mark_exception",
    "port",
    "protocol_version",
    "sanitize_method",
    "span_name",
    "status_label",
]

# OpenTelemetry HTTP semantic conventions (stable).
HTTP_REQUEST_METHOD = "http.request.method"
HTTP_REQUEST_METHOD_ORIGINAL = "http.request.method_original"
HTTP_ROUTE = "http.route"
HTTP_RESPONSE_STATUS_CODE = "http.response.status_code"
URL_PATH = "url.path"
URL_SCHEME = "url.scheme"
SERVER_ADDRESS = "server.address"
SERVER_PORT = "server.port"
CLIENT_ADDRESS = "client.address"
USER_AGENT = "user_agent.original"
NETWORK_PROTOCOL_VERSION = "network.protocol.version"
ERROR_TYPE = "error.type"

#: The methods of RFC 9110 and RFC 5789; anything else is recorded as ``_OTHER`` (semconv rule).
METHODS = frozenset(
    {"CONNECT", "DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT", "TRACE"}
)
OTHER_METHOD = "_OTHER"
#: The ``route`` label and span name suffix of a request no route matched.
UNMATCHED = "__unmatched__"

_STATUS = {code: str(code) for code in range(100, 600)}


def sanitize_method(method: str) -> str:
    """The method if it is a standard one, else ``_OTHER``."""
    return method if method in METHODS else OTHER_METHOD


def span_name(method: str, route: str | None = None) -> str:
    """An HTTP span's name: ``METHOD route``, or ``METHOD`` alone; ``method`` is sanitized
    already, and ``HTTP`` stands for a non-standard one (semantic conventions)."""
    name = "HTTP" if method == OTHER_METHOD else method
    return f"{name} {route}" if route else name


def status_label(status: int | None) -> str:
    """The ``status`` label: the code as text; ``500`` for a request that raised unanswered."""
    if status is None:
        return "500"
    return _STATUS.get(status) or "invalid"


def error_type(exc: BaseException) -> str:
    """``error.type`` of an exception: its fully qualified name, as the SDK's ``exception.type``
    (builtins unqualified)."""
    cls = type(exc)
    module = cls.__module__
    if module in ("builtins", "__main__"):
        return cls.__qualname__
    return f"{module}.{cls.__qualname__}"


def status_description(exc: BaseException, scrub: Callable[[str], str] | None = None) -> str:
    """An ERROR status' description: ``Type: message``, bounded; an exception whose own
    ``__str__`` fails still gets one (the span must still be ended and exported). ``scrub``:
    what redacts the text first (an outbound call's URL secrets)."""
    try:
        text = str(exc)
    except Exception:
        text = f"<unprintable {type(exc).__name__}>"
    text = f"{type(exc).__name__}: {text}"
    return (text if scrub is None else scrub(text))[:256]


def mark_exception(
    span: Any, exc: BaseException, scrub: Callable[[str], str] | None = None
) -> None:
    """``error.type``, ERROR status and an ``exception`` event on ``span`` (any span: SERVER,
    CLIENT or a decorated function's). The exception's ``__str__`` is user code and may raise:
    the status and type are set first, and the SDK's ``record_exception`` (which calls it
    unguarded) falls back to an event with the type alone.

    ``scrub`` (a CLIENT span whose ``url.full`` had credentials or signatures redacted): applied
    to the status description and the event's message and stack trace, which may name the URL.
    """
    kind = error_type(exc)
    span.set_attribute(ERROR_TYPE, kind)
    span.set_status(StatusCode.ERROR, status_description(exc, scrub))
    try:
        if scrub is None:
            span.record_exception(exc)
        else:
            stack = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
            span.record_exception(
                exc,
                {"exception.message": scrub(str(exc)), "exception.stacktrace": scrub(stack)},
            )
    except Exception:
        span.add_event("exception", {"exception.type": kind})


def port(value: object) -> int | None:
    """A server port from a CGI/WSGI ``SERVER_PORT`` value, or None."""
    try:
        return int(value)  # type: ignore[call-overload,no-any-return]
    except (TypeError, ValueError):
        return None


def protocol_version(value: object) -> str | None:
    """``1.1`` from ``HTTP/1.1`` (``network.protocol.version``), or None."""
    if isinstance(value, str) and value.startswith("HTTP/"):
        return value[5:]
    return None
