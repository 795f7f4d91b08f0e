"""HTTP semantic-convention names and the closed vocabularies that keep labels bounded."""

from __future__ import annotations

import re
import traceback
from collections.abc import Callable
from typing import Any

from opentelemetry.trace import StatusCode

from obskit.config import Config

__all__ = [
    "METHODS",
    "OTHER_METHOD",
    "SECRET_QUERY_KEYS",
    "UNMATCHED",
    "error_type",
    "forwarded",
    "mark_exception",
    "port",
    "protocol_version",
    "redact_query",
    "server_authority",
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
URL_QUERY = "url.query"
SERVER_ADDRESS = "server.address"
SERVER_PORT = "server.port"
CLIENT_ADDRESS = "client.address"
NETWORK_PEER_ADDRESS = "network.peer.address"
USER_AGENT = "user_agent.original"
NETWORK_PROTOCOL_VERSION = "network.protocol.version"
ERROR_TYPE = "error.type"

#: The methods of RFC 9110 and RFC 5789; anything else is recorded as ``_OTHER`` (semconv rule).
#: The default of the ``http_known_methods`` option (``OTEL_INSTRUMENTATION_HTTP_KNOWN_METHODS``),
#: which replaces it for SERVER and CLIENT spans and the RED metrics.
METHODS = frozenset(Config.http_known_methods)
OTHER_METHOD = "_OTHER"
#: The ``route`` label and span name suffix of a request no route matched.
UNMATCHED = "__unmatched__"

_STATUS = {code: str(code) for code in range(100, 600)}

#: Query keys whose values ``url.query`` (SERVER spans) and ``url.full`` (CLIENT spans) redact, as
#: the semantic conventions list them: presigned-URL credentials.
SECRET_QUERY_KEYS = frozenset(
    {
        # The semantic conventions' list.
        "AWSAccessKeyId",
        "Signature",
        "sig",
        "X-Goog-Signature",
        # AWS SigV4 presigned URLs (what boto3 makes by default), OAuth 2.0 and common API keys.
        "X-Amz-Signature",
        "X-Amz-Credential",
        "X-Amz-Security-Token",
        "access_token",
        "id_token",
        "refresh_token",
        "client_secret",
        "api_key",
        "apikey",
        "password",
    }
)
#: The same, compared case-insensitively (``X-AMZ-SIGNATURE``, ``Access_Token``).
_SECRET_KEYS_FOLDED = frozenset(key.casefold() for key in SECRET_QUERY_KEYS)
#: A query item of one of those keys with a value (``sig=...``): what :func:`redact_query` finds.
_SECRET_ITEM = re.compile(
    "(?i)(?:^|&)(?:" + "|".join(map(re.escape, sorted(SECRET_QUERY_KEYS))) + ")="
)
#: The port a URL scheme implies when an authority names none.
DEFAULT_PORTS = {"http": 80, "https": 443}
#: A Host header's host: a DNS name or IPv4 address (RFC 3986's unreserved characters and
#: percent-encoding: not the sub-delimiters, so that two Host headers joined by a comma name
#: none), or an IPv6 address (hex, colons, dots, then a zone id).
_REG_NAME = re.compile(r"[A-Za-z0-9._~%-]+")
_IPV6 = re.compile(r"[0-9A-Fa-f:.]+(?:%[A-Za-z0-9._~%-]+)?")
#: A Host header this long names no host (DNS names stop at 253 characters).
_MAX_AUTHORITY = 300
#: Host header values already parsed: (address, port), port 0 when none is given and -1 when the
#: given one is not a port; ("", -1) when the value names no host. A service sees few values;
#: past the bound they are parsed every time.
_authorities: dict[str, tuple[str, int]] = {}
_MAX_AUTHORITIES = 256


def redact_query(query: str) -> str:
    """``query`` with the values of :data:`SECRET_QUERY_KEYS` replaced by ``REDACTED``, the
    keys kept (``q=a&sig=REDACTED``), as the semantic conventions say for ``url.query`` and
    ``url.full``; the same string when it has none."""
    if _SECRET_ITEM.search(query) is None:
        return query
    return "&".join(
        f"{name}=REDACTED" if sep and name.casefold() in _SECRET_KEYS_FOLDED else item
        for item in query.split("&")
        for name, sep, _ in (item.partition("="),)
    )


def _parse_authority(value: str) -> tuple[str, int]:
    """:data:`_authorities`' entry of a Host header value (``host[:port]``, ``[v6]:port``)."""
    if len(value) > _MAX_AUTHORITY:
        return "", -1
    if value.startswith("["):  # an IPv6 literal: [::1]:8080
        end = value.find("]")
        if end < 0:
            return "", -1
        address, rest = value[1:end], value[end + 1 :]
        if not _IPV6.fullmatch(address) or rest[:1] not in ("", ":"):
            return "", -1
        given = rest[1:]
    else:
        address, sep, given = value.rpartition(":")
        if not sep:
            address, given = value, ""
        if ":" in address:  # an IPv6 address without its brackets: no port of its own
            address, given = value, ""
            valid = _IPV6.fullmatch(address)
        else:
            valid = _REG_NAME.fullmatch(address)
        if valid is None:
            return "", -1
    if not given:
        return address, 0
    if given.isascii() and given.isdigit() and 0 < int(given) <= 65535:
        return address, int(given)
    return address, -1  # a host with a port that is not one: the host alone


def server_authority(value: str, scheme: str) -> tuple[str, int | None] | None:
    """``server.address`` and ``server.port`` from a ``Host`` header (or HTTP/2's
    ``:authority``, which ASGI servers pass as ``host``): ``[::1]:8080`` gives ``("::1", 8080)``,
    a host without a port the port ``scheme`` implies (80, 443), a host with a bad port no port;
    None when ``value`` names no host (empty, malformed, too long). Never raises."""
    try:
        found = _authorities.get(value)
        if found is None:
            found = _parse_authority(value)
            if len(_authorities) < _MAX_AUTHORITIES:
                _authorities[value] = found
        address, given = found
        if given > 0:  # the common case: host and port given, the cached pair as it is
            return found
        if not address:
            return None
        return address, (DEFAULT_PORTS.get(scheme) if given == 0 else None)
    except Exception:  # not text (a Getter of start() that returns bytes)
        return None


#: An X-Forwarded-For entry: an IPv4 or IPv6 address, an IPv6 one possibly in brackets, with or
#: without a port (some proxies add it). Anything else (``unknown``, a name) is not an address.
_FORWARDED_FOR = re.compile(
    r"(?P<v4>[0-9]{1,3}(?:\.[0-9]{1,3}){3})(?::[0-9]{1,5})?"
    r"|\[(?P<v6b>[0-9A-Fa-f:.]+)\](?::[0-9]{1,5})?"
    r"|(?P<v6>[0-9A-Fa-f]*:[0-9A-Fa-f:.]*)"
)


def _hop(value: str | None, hops: int) -> str | None:
    """The entry of a comma-separated forwarded list that the outermost of ``hops`` trusted
    proxies appended (the ``hops``-th from the right); None when the list is shorter, as
    Werkzeug's ``ProxyFix`` does: entries further left are whatever the client sent."""
    if not value or len(value) > 4096:
        return None
    items = value.split(",")
    if len(items) < hops:
        return None
    return items[-hops].strip() or None


def forwarded(get_header: Any, hops: int) -> tuple[str | None, str | None, str | None]:
    """``(client address, host, scheme)`` from ``X-Forwarded-For``, ``X-Forwarded-Host`` and
    ``X-Forwarded-Proto``, each as ``hops`` trusted proxies wrote it (see :func:`_hop`); None
    for what they did not send or what is not an address, a host or ``http``/``https``."""
    client = _hop(get_header("x-forwarded-for"), hops)
    if client is not None:
        found = _FORWARDED_FOR.fullmatch(client)
        client = None if found is None else found["v4"] or found["v6b"] or found["v6"]
    return client, _hop(get_header("x-forwarded-host"), hops), forwarded_scheme(get_header, hops)


def forwarded_scheme(get_header: Any, hops: int) -> str | None:
    """:func:`forwarded`'s scheme alone: what an unsampled request's OTLP duration needs."""
    scheme = _hop(get_header("x-forwarded-proto"), hops)
    if scheme is not None:
        scheme = scheme.lower()
        if scheme not in DEFAULT_PORTS:
            return None
    return scheme


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
