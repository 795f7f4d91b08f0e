"""obskit's configuration: one frozen :class:`Config`, built from a declared table of options.

Every option has a name (the keyword of :func:`obskit.configure`), the environment variables it
reads (the standard ``OTEL_*`` one first where OpenTelemetry defines it, ``OBSKIT_*`` otherwise), a
default and a parser. Precedence is **explicit argument > environment > default**; the source of
every value is kept so ``obskit doctor`` can say where it came from.

A bad value fails in :func:`obskit.configure` with a :class:`ConfigError` naming the option, the
value and what is allowed -- never at the first request.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import logging
import math
import os
import re
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

from obskit._options import Sampler

__all__ = ["SAMPLERS", "Config", "ConfigError", "OptionSpec", "describe", "load_config"]


class ConfigError(ValueError):
    """An option has a value obskit cannot use; the message names option, value and allowed."""

    def __init__(self, option: str, value: object, allowed: str, source: str = "argument") -> None:
        self.option = option
        self.value = value
        self.allowed = allowed
        self.source = source
        shown = _shown(option, value)
        super().__init__(f"obskit: invalid {option}={shown} (from {source}); allowed: {allowed}")

    def __reduce__(self) -> tuple[Any, ...]:
        # Rebuilt from its fields (an exception unpickles from ``args``, the message alone):
        # one raised in a process pool's worker reaches the parent instead of breaking the pool.
        return (type(self), (self.option, self.value, self.allowed, self.source))


def _shown(option: str, value: object) -> str:
    """``value`` as a :class:`ConfigError` names it, without the secrets it may hold."""
    if "headers" in option:  # header values carry credentials (a bearer token): never echoed
        return repr(MASK)
    if isinstance(value, str) and (option in _URL_OPTIONS or "://" in value):
        # A URL's password and query values (a token) are masked as doctor masks them -- also,
        # and above all, in a URL refused for a typo (a port of 99999).
        return repr(masked_url(value))
    if option in _URL_OPTIONS and not isinstance(value, (int, float)):
        return f"<{type(value).__name__}>"  # bytes of a URL would show it whole
    return repr(value)


#: Samplers accepted by ``sampler=`` / ``OTEL_TRACES_SAMPLER``: the spec's names plus obskit's
#: rate-limited and adaptive ones -- :data:`obskit._options.Sampler`, the type checkers' list.
SAMPLERS: tuple[str, ...] = get_args(Sampler)

Protocol = Literal["grpc", "http/protobuf"]


@dataclass(frozen=True)
class Config:
    """Effective obskit configuration, built by :func:`obskit.configure` or :func:`load_config`.

    Attributes are documented in ``docs/configuration.md`` with their environment variables.
    """

    service_name: str = "unknown_service"
    service_version: str = "0.0.0"
    environment: str = "development"
    resource_attributes: Mapping[str, str] = field(default_factory=dict)
    disabled: bool = False
    # tracing
    traces_exporter: Literal["otlp", "jsonl", "none"] = "jsonl"
    otlp_endpoint: str | None = None
    otlp_traces_endpoint: str | None = None
    otlp_protocol: Protocol = "http/protobuf"
    otlp_headers: Mapping[str, str] = field(default_factory=dict)
    otlp_timeout: float = 10.0
    otlp_compression: Literal["gzip", "none"] = "none"
    #: PEM files for TLS to the collector: its CA (a private one), and this client's key and
    #: certificate for mutual TLS. None: the system's CAs, no client certificate.
    otlp_certificate: str | None = None
    otlp_client_key: str | None = None
    otlp_client_certificate: str | None = None
    traces_file: str = "obskit-traces.jsonl"
    traces_file_max_bytes: int = 64 * 1024 * 1024
    sampler: str = "parentbased_always_on"
    sampler_arg: float | None = None
    adaptive_max_ratio: float = 0.1
    adaptive_error_threshold: float = 0.01
    adaptive_interval: float = 10.0
    keep_errors: bool = True
    keep_whole_trace: bool = False
    slow_threshold: float | None = None
    bsp_schedule_delay: float = 1.0
    bsp_max_queue_size: int = 2048
    bsp_max_queue_bytes: int = 8 * 1024 * 1024
    bsp_max_export_batch_size: int = 512
    bsp_export_timeout: float = 30.0
    # metrics
    metrics_exporter: Literal["prometheus", "otlp", "prometheus+otlp", "none"] = "prometheus"
    metrics_path: str = "/metrics"
    metrics_port: int | None = None
    metric_export_interval: float = 60.0
    excluded_paths: tuple[str, ...] = ("/metrics", "/livez", "/readyz", "/startupz", "/healthz")
    http_buckets: tuple[float, ...] = (
        0.005,
        0.01,
        0.025,
        0.05,
        0.075,
        0.1,
        0.25,
        0.5,
        0.75,
        1.0,
        2.5,
        5.0,
        7.5,
        10.0,
    )
    #: The HTTP methods SERVER spans and RED metrics name; any other is ``_OTHER``. The default:
    #: RFC 9110's, PATCH (RFC 5789) and QUERY (the IETF's safe method with a body), as the
    #: semantic conventions define "known".
    http_known_methods: tuple[str, ...] = (
        "CONNECT",
        "DELETE",
        "GET",
        "HEAD",
        "OPTIONS",
        "PATCH",
        "POST",
        "PUT",
        "QUERY",
        "TRACE",
    )
    #: How many reverse proxies in front of the service append to ``X-Forwarded-For`` and
    #: ``-Proto`` (Werkzeug ``ProxyFix``'s count): SERVER spans take ``client.address`` and
    #: ``url.scheme`` from the value the outermost of them wrote (``server.address``/``port``
    #: from ``X-Forwarded-Host`` too with ``trust_forwarded_host``). 0: those headers are not
    #: read (any client can send them).
    trusted_proxy_hops: int = 0
    #: Whether those proxies write ``X-Forwarded-Host`` too (many do not: AWS ALB, nginx by
    #: default), so that the client's own, passed through, cannot name the server.
    trust_forwarded_host: bool = False
    multiproc_dir: str | None = None
    include_default_registry: bool = True
    cardinality_limit: int = 1000
    runtime_metrics: bool = True
    # logs
    logging: bool = False
    log_level: str = "INFO"
    log_levels: Mapping[str, str] = field(default_factory=dict)
    log_format: Literal["otel", "ecs"] = "otel"
    log_sample_rate: float = 1.0
    log_sample_rates: Mapping[str, float] = field(default_factory=dict)
    log_follow_trace: bool = False
    log_redact_keys: tuple[str, ...] = ()
    log_redact_emails: bool = False
    log_max_message_bytes: int = 16 * 1024
    log_flush_interval: float = 0.0
    log_direct: bool = True
    logs_exporter: Literal["otlp", "none"] = "none"
    # lifecycle
    shutdown_timeout: float = 5.0
    sources: Mapping[str, str] = field(default_factory=dict, compare=False, repr=False)

    def source_of(self, option: str) -> str:
        """Where ``option``'s value came from: ``argument``, ``env:NAME`` or ``default``."""
        return self.sources.get(option, "default")

    @functools.cached_property
    def known_methods(self) -> frozenset[str]:
        """:attr:`http_known_methods` as a set, made once: what spans and RED labels test."""
        return frozenset(self.http_known_methods)

    @property
    def traces_endpoint(self) -> str | None:
        """The URL spans are sent to over OTLP: the per-signal endpoint as it is (the root path
        when it has none, as the spec says), else the shared one with ``/v1/traces`` appended
        for http/protobuf."""
        if self.otlp_traces_endpoint:
            if self.otlp_protocol != "http/protobuf":
                return self.otlp_traces_endpoint
            parts = urllib.parse.urlsplit(self.otlp_traces_endpoint)
            return urllib.parse.urlunsplit(parts._replace(path=parts.path or "/"))
        if not self.otlp_endpoint:
            return None
        if self.otlp_protocol == "http/protobuf":
            return signal_url(self.otlp_endpoint, "traces")
        return self.otlp_endpoint


def signal_url(endpoint: str, signal: str) -> str:
    """The OTLP/HTTP URL of ``signal`` under the shared ``endpoint``: ``/v1/<signal>`` appended
    to its path, its query kept where it was (``https://c:4318/otlp?tenant=a`` gives
    ``https://c:4318/otlp/v1/traces?tenant=a``)."""
    parts = urllib.parse.urlsplit(endpoint)
    return urllib.parse.urlunsplit(parts._replace(path=parts.path.rstrip("/") + f"/v1/{signal}"))


#: What stands for a secret in what obskit shows (a URL's password or query value).
MASK = "***"


def masked_url(url: str) -> str:
    """``url`` with any password in its user info and every query value replaced by ***, for
    what obskit logs or prints (a collector URL's query, when it has one, most often carries a
    token)."""
    try:
        parts = urllib.parse.urlsplit(url)
        if not parts.netloc and "@" in url:
            # No '//': a user:password@host whose scheme was left out (urlsplit reads 'user'
            # as the scheme and the password as the path), so nothing of it is shown.
            return MASK
        if parts.query:
            query = "&".join(
                f"{name}={MASK}" if sep else name
                for name, sep, _ in (item.partition("=") for item in parts.query.split("&"))
            )
            parts = parts._replace(query=query)
        if "@" in parts.netloc:
            userinfo, host = parts.netloc.rsplit("@", 1)
            # A password is masked; a user name alone may be the token itself
            # (https://<token>@collector), so it goes too.
            user, colon, _ = userinfo.partition(":")
            parts = parts._replace(netloc=f"{user}:{MASK}@{host}" if colon else f"{MASK}@{host}")
        if parts.fragment:
            parts = parts._replace(fragment=MASK)
        return urllib.parse.urlunsplit(parts)
    except Exception:  # not a URL urllib can take apart: nothing of it is shown, and the
        return MASK  # masking of what is printed must itself never fail


# -- parsers: each takes the raw value (str from the environment or any object from an argument) ---


class _Invalid(Exception):
    def __init__(self, allowed: str) -> None:
        self.allowed = allowed


class _Unrecognised(_Invalid):
    """A value outside an enumeration obskit reads (``known``: the value made of the items of
    a list it does know, else None). From an ``OTEL_*`` variable it is ignored with a warning,
    as the OpenTelemetry specification requires of an unrecognised enum value: the variables are
    shared with other OpenTelemetry software (``console`` or ``zipkin`` exporters,
    ``http/json``, the ``xray`` sampler), which must not stop the service from starting."""

    def __init__(self, allowed: str, known: str | None = None) -> None:
        super().__init__(allowed)
        self.known = known


def _str(raw: object) -> str:
    if not isinstance(raw, str) or not raw.strip():
        raise _Invalid("a non-empty string")
    return raw.strip()


def _pem_file(raw: object) -> str | None:
    """A path to a readable file (a PEM certificate or key), checked at configure: a typo
    found when the first export fails would lose every span until then."""
    if raw is None or (isinstance(raw, str) and not raw.strip()):
        return None
    if not isinstance(raw, str):
        raise _Invalid("a path to a PEM file")
    path = raw.strip()
    try:
        with open(path, "rb"):
            pass
    except OSError as exc:
        raise _Invalid(f"a readable PEM file ({exc.strerror or exc})") from None
    return path


def _opt_str(raw: object) -> str | None:
    if raw is None or (isinstance(raw, str) and not raw.strip()):
        return None
    return _str(raw)


def _bool(raw: object) -> bool:
    if isinstance(raw, bool):
        return raw
    if isinstance(raw, str) and raw.strip().lower() in ("true", "1", "yes", "on"):
        return True
    if isinstance(raw, str) and raw.strip().lower() in ("false", "0", "no", "off", ""):
        return False
    raise _Invalid("true or false")


def _otel_bool(raw: object) -> bool:
    """An OpenTelemetry boolean variable (OTEL_SDK_DISABLED): true only for ``true`` in any
    case; anything else is false -- with a warning unless it is ``false`` or empty (the spec's
    rule: no implementation may read ``1`` or ``yes`` as true)."""
    if isinstance(raw, bool):
        return raw
    value = raw.strip().lower() if isinstance(raw, str) else raw
    if value == "true":
        return True
    if value not in ("false", ""):
        logging.getLogger("obskit").warning(
            "obskit: %r is not a boolean OpenTelemetry reads as true (only 'true' is); taken "
            "as false",
            raw,
        )
    return False


def _exporters(*allowed: str, both: str | None = None) -> Callable[[object], str]:
    """An OTEL_*_EXPORTER value: one of ``allowed``, or the spec's comma-separated list of them
    (``otlp,prometheus`` is ``both``; ``none`` in a list of others is ignored)."""
    one = _choice(*allowed)
    described = "one of " + ", ".join(allowed) + (f" (or both, {both})" if both else "")

    def combined(names: set[str]) -> str | None:
        if len(names) > 1:
            names.discard("none")
        if len(names) == 1:
            return names.pop()
        if both is not None and names == set(both.split("+")):
            return both
        return None

    def parse(raw: object) -> str:
        if not isinstance(raw, str) or "," not in raw:
            return one(raw)
        names: set[str] = set()
        unknown = False
        for item in raw.split(","):
            if item.strip():
                try:
                    names.add(one(item))
                except _Unrecognised:
                    unknown = True
        value = combined(names)
        if unknown:  # ``otlp,console``: the part obskit knows, should the variable's source allow
            raise _Unrecognised(described, value)
        if value is None:
            raise _Invalid(described)
        return value

    return parse


def _number(
    raw: object, *, scale: float = 1.0, minimum: float = 0.0, positive: bool = False
) -> float:
    try:
        value = float(raw) / scale if isinstance(raw, str) else float(raw)  # type: ignore[arg-type]
    except (TypeError, ValueError, OverflowError):  # OverflowError: an int past float's range
        raise _Invalid("a number" + (f" >= {minimum}" if minimum == 0 else "")) from None
    if math.isnan(value) or math.isinf(value) or value < minimum or (positive and value == 0):
        raise _Invalid(f"a finite number {'> 0' if positive else f'>= {minimum}'}")
    return value


#: The longest wait obskit hands to a lock, a condition, a thread join or a socket: a year is
#: "forever" to a service, and every one of those accepts it (past ``threading.TIMEOUT_MAX`` they
#: raise OverflowError).
MAX_WAIT = 365 * 86400.0


def bounded_wait(seconds: float) -> float:
    """``seconds`` as a wait every blocking call accepts: within [0, :data:`MAX_WAIT`], NaN 0."""
    if not seconds > 0.0:  # also NaN
        return 0.0
    return min(seconds, MAX_WAIT)


def _seconds_from_ms(raw: object) -> float:
    # OTEL_* durations are milliseconds in the environment; arguments are seconds.
    return bounded_wait(_number(raw, scale=1000.0, positive=True))


def _seconds(raw: object) -> float:
    return bounded_wait(_number(raw, positive=True))


#: A header name both transports send: an HTTP token that is also a gRPC metadata key (which
#: obskit lowercases).
_HEADER_NAME = re.compile(r"[A-Za-z0-9_.-]+")
#: A header value both transports send: printable ASCII (gRPC's ASCII-Value; HTTP allows more,
#: which gRPC metadata refuses).
_HEADER_VALUE = re.compile(r"[\x20-\x7e]*")


def _headers(raw: object) -> dict[str, str]:
    pairs = _key_values(raw)
    for name, value in pairs.items():
        # Checked here, not at the first export: a header the transport refuses would fail
        # every export (http.client raises on ':' in a name; gRPC on a space or non-ASCII).
        # The message names no value: headers carry credentials.
        if not _HEADER_NAME.fullmatch(name):
            raise _Invalid(
                "header names of letters, digits, '-', '_' and '.' (an HTTP token that gRPC "
                "metadata also takes)"
            )
        if not _HEADER_VALUE.fullmatch(value):
            raise _Invalid(
                "header values of printable ASCII, no line breaks (percent-encode the rest in "
                "OTEL_EXPORTER_OTLP_HEADERS)"
            )
    return pairs


def _opt_dir(raw: object) -> str | None:
    path = _opt_str(raw)
    if path is None:
        return None
    # A directory, or one that can be made: not a file, not under a file.
    probe = os.path.abspath(path)
    while probe and not os.path.exists(probe):
        parent = os.path.dirname(probe)
        if parent == probe:
            break
        probe = parent
    if os.path.exists(probe) and not os.path.isdir(probe):
        raise _Invalid("a directory (or a path where one can be made)")
    return path


def _path(raw: object) -> str:
    text = _str(raw)
    if not text.startswith("/"):  # a request path always does: "metrics" would match nothing
        raise _Invalid("a path starting with /")
    return text


def _positive_int(raw: object) -> int:
    if isinstance(raw, bool):
        raise _Invalid("a positive integer")
    try:
        value: int = int(raw)  # type: ignore[call-overload]
    except (TypeError, ValueError, OverflowError):  # OverflowError: int(float("inf"))
        raise _Invalid("a positive integer") from None
    if value <= 0 or (isinstance(raw, float) and raw != value):
        raise _Invalid("a positive integer")
    return value


def _hops(raw: object) -> int:
    allowed = "a number of proxies, 0 (forwarded headers not read) to 16"
    if isinstance(raw, str):
        raw = raw.strip()
    if raw == "0" or (raw == 0 and not isinstance(raw, bool)):
        return 0
    try:
        value = _positive_int(raw)
    except _Invalid:
        raise _Invalid(allowed) from None
    if value > 16:
        raise _Invalid(allowed)
    return value


def _opt_port(raw: object) -> int | None:
    if raw is None or raw == "":
        return None
    value = _positive_int(raw)
    if value > 65535:
        raise _Invalid("a TCP port 1-65535")
    return value


def _choice(*allowed: str) -> Callable[[object], str]:
    def parse(raw: object) -> str:
        value = raw.strip().lower() if isinstance(raw, str) else raw
        if value not in allowed:
            raise _Unrecognised("one of " + ", ".join(allowed))
        return value

    return parse


def _endpoint(raw: object) -> str | None:
    if raw is None or (isinstance(raw, str) and not raw.strip()):
        return None
    if not isinstance(raw, str):
        raise _Invalid("an http:// or https:// URL such as http://localhost:4318")
    url = raw.strip()
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port  # raises ValueError on a bad port
    except ValueError:
        raise _Invalid("an http:// or https:// URL with a valid port") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise _Invalid("an http:// or https:// URL such as http://localhost:4318")
    del port
    return url


def _key_values(raw: object) -> dict[str, str]:
    """W3C-baggage-style ``k=v,k2=v2`` (values percent-decoded), as OTEL_*_HEADERS and
    OTEL_RESOURCE_ATTRIBUTES are defined; a mapping is accepted as an argument."""
    if isinstance(raw, Mapping):
        return {str(k): str(v) for k, v in raw.items()}
    if not isinstance(raw, str):
        raise _Invalid("a mapping or 'key=value,key2=value2'")
    result: dict[str, str] = {}
    for item in raw.split(","):
        if not item.strip():
            continue
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise _Invalid("'key=value' pairs separated by commas")
        result[urllib.parse.unquote(key.strip())] = urllib.parse.unquote(value.strip())
    return result


def _ratio(raw: object) -> float:
    value = _number(raw)
    if value > 1.0:
        raise _Invalid("a ratio between 0 and 1")
    return value


def _paths(raw: object) -> tuple[str, ...]:
    items = raw.split(",") if isinstance(raw, str) else raw
    if not isinstance(items, (list, tuple, set, frozenset)):
        raise _Invalid("a list of paths or 'path1,path2'")
    paths = tuple(str(p).strip() for p in items if str(p).strip())
    if any(not p.startswith("/") for p in paths):
        raise _Invalid("paths starting with '/'")
    return paths


#: An HTTP method: an RFC 9110 token.
_METHOD = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")


def _methods(raw: object) -> tuple[str, ...]:
    """``OTEL_INSTRUMENTATION_HTTP_KNOWN_METHODS``: comma-separated, case-sensitive, the whole
    list (it replaces the default, it does not add to it)."""
    items = raw.split(",") if isinstance(raw, str) else raw
    allowed = "HTTP method names (case-sensitive), e.g. 'GET,POST,PROPFIND'"
    if not isinstance(items, (list, tuple, set, frozenset)) or not all(
        isinstance(item, str) for item in items
    ):
        raise _Invalid(allowed)
    if isinstance(items, (set, frozenset)):
        items = sorted(items)
    methods = tuple(dict.fromkeys(item.strip() for item in items if item.strip()))
    if not methods or not all(_METHOD.fullmatch(method) for method in methods):
        raise _Invalid(allowed)
    return methods


def _buckets(raw: object) -> tuple[float, ...]:
    items = raw.split(",") if isinstance(raw, str) else raw
    if not isinstance(items, (list, tuple)):
        raise _Invalid("increasing bucket bounds in seconds, e.g. '0.01,0.1,1'")
    try:
        bounds = tuple(float(b) for b in items)
    except (TypeError, ValueError):
        raise _Invalid("increasing bucket bounds in seconds, e.g. '0.01,0.1,1'") from None
    if (
        not bounds
        or any(b <= 0 or math.isnan(b) for b in bounds)
        or list(bounds) != sorted(set(bounds))
    ):
        raise _Invalid("strictly increasing positive bucket bounds in seconds")
    return bounds


_LEVELS = ("CRITICAL", "ERROR", "WARNING", "INFO", "DEBUG", "NOTSET")


def _level(raw: object) -> str:
    value = raw.strip().upper() if isinstance(raw, str) else raw
    if value not in _LEVELS:
        raise _Invalid("one of " + ", ".join(_LEVELS))
    return str(value)


def _levels(raw: object) -> dict[str, str]:
    pairs = _key_values(raw)
    try:
        return {k: _level(v) for k, v in pairs.items()}
    except _Invalid:
        raise _Invalid("'logger=LEVEL' pairs with levels " + ", ".join(_LEVELS)) from None


def _rates(raw: object) -> dict[str, float]:
    pairs = _key_values(raw)
    try:
        return {k: _ratio(v) for k, v in pairs.items()}
    except _Invalid:
        raise _Invalid("'logger=rate' pairs with rates between 0 and 1") from None


def _names(raw: object) -> tuple[str, ...]:
    items = raw.split(",") if isinstance(raw, str) else raw
    if not isinstance(items, (list, tuple, set, frozenset)):
        raise _Invalid("a list of names or 'name1,name2'")
    return tuple(str(i).strip().lower() for i in items if str(i).strip())


def _sampler_arg(raw: object) -> float | None:
    if raw is None or raw == "":
        return None
    return _number(raw)


@dataclass(frozen=True)
class OptionSpec:
    """One row of the option table."""

    name: str
    env: tuple[str, ...]
    parse: Callable[[object], Any]
    doc: str


#: Parsers whose failure on an ``OTEL_*`` variable is warned about and ignored, the variable as
#: if unset: the specification's rule for a numeric value it cannot parse or that is out of
#: range, and for a malformed ``OTEL_RESOURCE_ATTRIBUTES`` (discarded whole). A stale value of a
#: variable shared with other OpenTelemetry software must not stop a deployment.
#: ``OTEL_TRACES_SAMPLER_ARG`` is not among them: a sampling rate out of range stays a
#: configure-time error (issue #6), as does every argument and ``OBSKIT_*`` variable.
_LENIENT = frozenset({_seconds_from_ms, _positive_int, _key_values})

_O = OptionSpec
OPTIONS: tuple[OptionSpec, ...] = (
    _O("service_name", ("OTEL_SERVICE_NAME",), _str, "service.name resource attribute"),
    _O("service_version", ("OBSKIT_SERVICE_VERSION",), _str, "service.version"),
    _O("environment", ("OBSKIT_ENVIRONMENT",), _str, "deployment.environment(.name)"),
    _O(
        "resource_attributes",
        ("OTEL_RESOURCE_ATTRIBUTES",),
        _key_values,
        "extra resource attributes",
    ),
    _O("disabled", ("OTEL_SDK_DISABLED",), _otel_bool, "turn every signal off (no-op SDK)"),
    _O(
        "traces_exporter",
        ("OTEL_TRACES_EXPORTER",),
        _exporters("otlp", "jsonl", "none"),
        "where spans go; default: otlp when an endpoint is set, else the local JSON-lines file",
    ),
    _O("otlp_endpoint", ("OTEL_EXPORTER_OTLP_ENDPOINT",), _endpoint, "OTLP collector base URL"),
    _O(
        "otlp_traces_endpoint",
        ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",),
        _endpoint,
        "full URL for spans (overrides the base endpoint)",
    ),
    _O(
        "otlp_protocol",
        ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL"),
        _choice("grpc", "http/protobuf"),
        "OTLP transport",
    ),
    _O(
        "otlp_headers",
        ("OTEL_EXPORTER_OTLP_TRACES_HEADERS", "OTEL_EXPORTER_OTLP_HEADERS"),
        _headers,
        "headers sent with every export",
    ),
    _O(
        "otlp_timeout",
        ("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", "OTEL_EXPORTER_OTLP_TIMEOUT"),
        _seconds_from_ms,
        "export timeout (env: milliseconds; argument: seconds)",
    ),
    _O(
        "otlp_compression",
        ("OTEL_EXPORTER_OTLP_TRACES_COMPRESSION", "OTEL_EXPORTER_OTLP_COMPRESSION"),
        _choice("gzip", "none"),
        "compression of export requests",
    ),
    _O(
        "otlp_certificate",
        ("OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE", "OTEL_EXPORTER_OTLP_CERTIFICATE"),
        _pem_file,
        "CA certificate (PEM) that signs the collector's TLS certificate",
    ),
    _O(
        "otlp_client_key",
        ("OTEL_EXPORTER_OTLP_TRACES_CLIENT_KEY", "OTEL_EXPORTER_OTLP_CLIENT_KEY"),
        _pem_file,
        "client private key (PEM) for mutual TLS",
    ),
    _O(
        "otlp_client_certificate",
        ("OTEL_EXPORTER_OTLP_TRACES_CLIENT_CERTIFICATE", "OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE"),
        _pem_file,
        "client certificate chain (PEM) for mutual TLS",
    ),
    _O(
        "traces_file", ("OBSKIT_TRACES_FILE",), _str, "JSON-lines file used when no endpoint is set"
    ),
    _O(
        "traces_file_max_bytes",
        ("OBSKIT_TRACES_FILE_MAX_BYTES",),
        _positive_int,
        "size at which the traces file is rotated to FILE.1",
    ),
    _O("sampler", ("OTEL_TRACES_SAMPLER",), _choice(*SAMPLERS), "head sampler"),
    _O(
        "sampler_arg",
        ("OTEL_TRACES_SAMPLER_ARG",),
        _sampler_arg,
        "ratio in [0, 1] for *traceidratio, base ratio for *adaptive, traces/s for *ratelimited",
    ),
    _O(
        "adaptive_max_ratio",
        ("OBSKIT_ADAPTIVE_MAX_RATIO",),
        lambda raw: _ratio(raw),
        "highest ratio the adaptive sampler rises to",
    ),
    _O(
        "adaptive_error_threshold",
        ("OBSKIT_ADAPTIVE_ERROR_THRESHOLD",),
        lambda raw: _ratio(raw),
        "error rate above which the adaptive sampler doubles its ratio",
    ),
    _O(
        "adaptive_interval",
        ("OBSKIT_ADAPTIVE_INTERVAL",),
        _seconds,
        "seconds between adaptive ratio adjustments",
    ),
    _O("keep_errors", ("OBSKIT_KEEP_ERRORS",), _bool, "export traces whose local root failed"),
    _O(
        "keep_whole_trace",
        ("OBSKIT_KEEP_WHOLE_TRACE",),
        _bool,
        "record head-dropped traces and buffer their spans, so kept traces keep child spans "
        "(costs as much as sampling them); off: only the request's SERVER span is kept",
    ),
    _O(
        "slow_threshold",
        ("OBSKIT_SLOW_THRESHOLD",),
        lambda raw: None if raw in (None, "") else _seconds(raw),
        "export traces whose local root lasts longer (seconds)",
    ),
    _O("bsp_schedule_delay", ("OTEL_BSP_SCHEDULE_DELAY",), _seconds_from_ms, "export interval"),
    _O("bsp_max_queue_size", ("OTEL_BSP_MAX_QUEUE_SIZE",), _positive_int, "spans waiting, at most"),
    _O(
        "bsp_max_queue_bytes",
        ("OBSKIT_BSP_MAX_QUEUE_BYTES",),
        _positive_int,
        "encoded bytes waiting, at most",
    ),
    _O(
        "bsp_max_export_batch_size",
        ("OTEL_BSP_MAX_EXPORT_BATCH_SIZE",),
        _positive_int,
        "spans per export request",
    ),
    _O(
        "bsp_export_timeout", ("OTEL_BSP_EXPORT_TIMEOUT",), _seconds_from_ms, "batch export timeout"
    ),
    _O(
        "metrics_exporter",
        ("OTEL_METRICS_EXPORTER",),
        _exporters("prometheus", "otlp", "prometheus+otlp", "none", both="prometheus+otlp"),
        "prometheus: /metrics; otlp: push over OTLP; both with prometheus+otlp",
    ),
    _O("metrics_path", ("OBSKIT_METRICS_PATH",), _path, "path serving Prometheus metrics"),
    _O("metrics_port", ("OBSKIT_METRICS_PORT",), _opt_port, "serve /metrics on a separate port"),
    _O(
        "metric_export_interval",
        ("OTEL_METRIC_EXPORT_INTERVAL",),
        _seconds_from_ms,
        "OTLP metric push interval",
    ),
    _O(
        "excluded_paths",
        ("OBSKIT_EXCLUDED_PATHS",),
        _paths,
        "paths left out of traces and RED metrics (metrics and health endpoints)",
    ),
    _O(
        "http_buckets",
        ("OBSKIT_HTTP_BUCKETS",),
        _buckets,
        "http_request_duration_seconds bucket bounds",
    ),
    _O(
        "http_known_methods",
        ("OTEL_INSTRUMENTATION_HTTP_KNOWN_METHODS",),
        _methods,
        "HTTP methods named in spans and RED metrics (others are _OTHER); replaces the default",
    ),
    _O(
        "trusted_proxy_hops",
        ("OBSKIT_TRUSTED_PROXY_HOPS",),
        _hops,
        "reverse proxies whose X-Forwarded-For/-Proto SERVER spans trust (0: none)",
    ),
    _O(
        "trust_forwarded_host",
        ("OBSKIT_TRUST_FORWARDED_HOST",),
        _bool,
        "the trusted proxies write X-Forwarded-Host: SERVER spans' server.address reads it",
    ),
    _O(
        "multiproc_dir",
        ("PROMETHEUS_MULTIPROC_DIR",),
        _opt_dir,
        "prometheus_client multi-process directory (gunicorn workers)",
    ),
    _O(
        "include_default_registry",
        ("OBSKIT_INCLUDE_DEFAULT_REGISTRY",),
        _bool,
        "also expose prometheus_client's default registry on /metrics",
    ),
    _O(
        "cardinality_limit",
        ("OBSKIT_CARDINALITY_LIMIT",),
        _positive_int,
        "default distinct label sets per metric",
    ),
    _O(
        "runtime_metrics",
        ("OBSKIT_RUNTIME_METRICS",),
        _bool,
        "process CPU, memory, fds, threads and GC pauses as obskit_runtime_* metrics",
    ),
    _O("logging", ("OBSKIT_LOGGING",), _bool, "install the JSON log handler on the root logger"),
    _O("log_level", ("OBSKIT_LOG_LEVEL",), _level, "root log level"),
    _O(
        "log_levels", ("OBSKIT_LOG_LEVELS",), _levels, "per-logger levels: 'uvicorn.access=WARNING'"
    ),
    _O("log_format", ("OBSKIT_LOG_FORMAT",), _choice("otel", "ecs"), "field names"),
    _O(
        "log_sample_rate",
        ("OBSKIT_LOG_SAMPLE_RATE",),
        lambda raw: _ratio(raw),
        "share of traces whose DEBUG/INFO lines are kept (consistent by trace id)",
    ),
    _O("log_sample_rates", ("OBSKIT_LOG_SAMPLE_RATES",), _rates, "per-logger sample rates"),
    _O(
        "log_follow_trace",
        ("OBSKIT_LOG_FOLLOW_TRACE",),
        _bool,
        "keep DEBUG/INFO lines exactly when their trace is sampled",
    ),
    _O("log_redact_keys", ("OBSKIT_LOG_REDACT_KEYS",), _names, "extra sensitive key names"),
    _O("log_redact_emails", ("OBSKIT_LOG_REDACT_EMAILS",), _bool, "mask e-mail addresses"),
    _O(
        "log_max_message_bytes",
        ("OBSKIT_LOG_MAX_MESSAGE_BYTES",),
        _positive_int,
        "longer messages are truncated and marked",
    ),
    _O(
        "log_flush_interval",
        ("OBSKIT_LOG_FLUSH_INTERVAL",),
        lambda raw: bounded_wait(_number(raw)),  # a wait: past MAX_WAIT the flusher would die
        "seconds between flushes of DEBUG/INFO lines (0: every line; WARNING+ always at once)",
    ),
    _O(
        "log_direct",
        ("OBSKIT_LOG_DIRECT",),
        _bool,
        "logging.getLogger lines skip the LogRecord when obskit's handler is the only listener",
    ),
    _O("logs_exporter", ("OTEL_LOGS_EXPORTER",), _exporters("otlp", "none"), "OTLP log export"),
    _O(
        "shutdown_timeout",
        ("OBSKIT_SHUTDOWN_TIMEOUT",),
        _seconds,
        "longest flush at exit (seconds)",
    ),
)
OPTION_NAMES = frozenset(o.name for o in OPTIONS)
#: Every environment variable an option reads.
VARIABLES = frozenset(name for o in OPTIONS for name in o.env)


def unknown_variables(environ: Mapping[str, str] | None = None) -> list[str]:
    """The ``OBSKIT_*`` variables set in ``environ`` that no option reads (a typo, or a name
    obskit does not have, such as ``OBSKIT_SERVICE_NAME``), each with the likely one meant:
    ``"OBSKIT_SERVICE_NAME (did you mean OTEL_SERVICE_NAME?)"``. A mistyped argument raises;
    a variable cannot, as a stale one must not stop a deployment, so this is for a warning."""
    env = os.environ if environ is None else environ
    found = []
    for name in sorted(env):
        if not name.startswith("OBSKIT_") or name in VARIABLES:
            continue
        otel = "OTEL_" + name.removeprefix("OBSKIT_")
        guess = otel if otel in VARIABLES else None
        if guess is None:
            close = difflib.get_close_matches(name, sorted(VARIABLES), n=1, cutoff=0.8)
            guess = close[0] if close else None
        found.append(f"{name} (did you mean {guess}?)" if guess else name)
    return found


#: Options whose value is a URL: a ConfigError shows their value masked (:func:`masked_url`).
_URL_OPTIONS = frozenset(o.name for o in OPTIONS if o.parse is _endpoint)

# OTEL_RESOURCE_ATTRIBUTES may carry these; they fill the matching options when no explicit
# argument or dedicated variable set them (the spec gives OTEL_SERVICE_NAME precedence).
_RESOURCE_ALIASES = {
    "service.name": "service_name",
    "service.version": "service_version",
    "deployment.environment": "environment",
    "deployment.environment.name": "environment",
}


def load_config(environ: Mapping[str, str] | None = None, **options: Any) -> Config:
    """Build a :class:`Config` from ``options`` (explicit), the environment, then defaults.

    Raises:
        ConfigError: an option is unknown or has a value that cannot be used.
    """
    env = os.environ if environ is None else environ
    unknown = set(options) - OPTION_NAMES
    if unknown:
        name = sorted(unknown)[0]
        raise ConfigError(name, options[name], "one of " + ", ".join(sorted(OPTION_NAMES)))

    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    ignored: set[str] = set()
    resource_from_argument: set[str] = set()  # the resource attributes given as an argument
    for spec in OPTIONS:
        parse = spec.parse
        if spec.name in options and options[spec.name] is not None:
            if parse is _seconds_from_ms:
                parse = _seconds  # milliseconds are the environment's unit; arguments seconds
            try:
                values[spec.name] = parse(options[spec.name])
            except _Invalid as exc:
                raise ConfigError(spec.name, options[spec.name], exc.allowed) from None
            sources[spec.name] = "argument"
            if spec.name == "resource_attributes":
                # Merged over the deployment's OTEL_RESOURCE_ATTRIBUTES, key by key, as the
                # SDK's Resource.create does: the argument wins a key both set, and what the
                # environment adds (k8s.pod.name, service.namespace) is not lost.
                resource_from_argument = set(values[spec.name])
                raw = env.get("OTEL_RESOURCE_ATTRIBUTES", "")
                if raw.strip():
                    try:
                        values[spec.name] = {**parse(raw), **values[spec.name]}
                        sources[spec.name] = "argument+env:OTEL_RESOURCE_ATTRIBUTES"
                    except _Invalid as exc:  # discarded whole, as without the argument
                        source = "env:OTEL_RESOURCE_ATTRIBUTES"
                        _ignored(spec.name, raw, _Unrecognised(exc.allowed), source)
            continue
        if spec.name == "sampler_arg" and "sampler" in ignored:
            # The argument of a sampler obskit does not run (Jaeger's remote sampler takes
            # "endpoint=...,pollingIntervalMs=..."): ignored with it, not a ConfigError.
            found = next((name for name in spec.env if env.get(name, "").strip()), None)
            if found is not None:
                _warn_once(
                    f"config:{found}",
                    "obskit: %s is ignored with the sampler it is the argument of",
                    found,
                )
            continue
        # The first variable set (the signal's own before the generic one) whose value obskit
        # reads: one it does not read is as if unset, and the next one applies.
        for name in spec.env:
            raw = env.get(name, "")
            if not raw.strip():
                continue
            source = f"env:{name}"
            try:
                values[spec.name] = parse(raw)
            except _Unrecognised as exc:
                if not name.startswith("OTEL_"):  # obskit's own variable: a typo is an error
                    raise ConfigError(spec.name, raw, exc.allowed, source) from None
                _ignored(spec.name, raw, exc, source)
                if exc.known is None:
                    continue
                values[spec.name] = exc.known
            except _Invalid as exc:
                if not (name.startswith("OTEL_") and parse in _LENIENT):
                    raise ConfigError(spec.name, raw, exc.allowed, source) from None
                _ignored(spec.name, raw, _Unrecognised(exc.allowed), source)
                continue
            sources[spec.name] = source
            break
        else:
            if any(env.get(name, "").strip() for name in spec.env):
                ignored.add(spec.name)  # set, and ignored: the option keeps its default

    resource = dict(values.get("resource_attributes", {}))
    for attr, option in _RESOURCE_ALIASES.items():
        if attr in resource and option not in values and str(resource[attr]).strip():
            # An empty value (service.name=) is as good as none: the option's default stays.
            values[option] = resource[attr]
            # Where the key came from: the argument, or OTEL_RESOURCE_ATTRIBUTES.
            from_argument = attr in resource_from_argument
            sources[option] = "argument" if from_argument else "env:OTEL_RESOURCE_ATTRIBUTES"

    if "traces_exporter" not in values:
        has_endpoint = values.get("otlp_endpoint") or values.get("otlp_traces_endpoint")
        values["traces_exporter"] = "otlp" if has_endpoint else "jsonl"
        sources["traces_exporter"] = "derived"
    elif values["traces_exporter"] == "otlp" and not (
        values.get("otlp_endpoint") or values.get("otlp_traces_endpoint")
    ):
        # The spec's default collector address, as the OTel exporters use it.
        grpc = values.get("otlp_protocol") == "grpc"
        values["otlp_endpoint"] = "http://localhost:4317" if grpc else "http://localhost:4318"
        sources["otlp_endpoint"] = "default"

    _check_sampler(values, sources)
    _check_span_batches(values, sources)
    _check_metrics_port(values, sources)
    _check_tls(values, sources)
    if values.get("logs_exporter") == "otlp":
        log_batch_settings(env)
    return Config(**values, sources=sources)


class _EncryptedKey(Exception):
    """OpenSSL asked for a passphrase: the key file is encrypted."""


def _no_passphrase() -> bytes:
    # Without a callback OpenSSL would prompt on the terminal, blocking configure().
    raise _EncryptedKey


def tls_context(
    certificate: str | None, client_key: str | None, client_certificate: str | None
) -> Any:
    """An ``ssl.SSLContext`` for a collector: ``certificate`` its CA's PEM (None: the system's
    CAs), ``client_certificate`` (with ``client_key``, or the key in the same file) this
    client's chain for mutual TLS. Raises :class:`ConfigError` naming the option whose file
    does not hold what it should, and never asks for a passphrase (the OTLP exporters take no
    encrypted key)."""
    import ssl

    try:
        context = ssl.create_default_context(cafile=certificate)
    except (ssl.SSLError, OSError, ValueError) as exc:
        raise ConfigError(
            "otlp_certificate", certificate, f"a PEM file of CA certificates ({_reason(exc)})"
        ) from None
    if client_certificate:
        if not client_key and not _holds_a_key(client_certificate):
            raise key_missing(client_certificate)
        try:
            context.load_cert_chain(client_certificate, client_key, password=_no_passphrase)
        except _EncryptedKey:
            raise ConfigError(
                "otlp_client_key" if client_key else "otlp_client_certificate",
                client_key or client_certificate,
                "an unencrypted private key (the OTLP exporters take no passphrase)",
            ) from None
        except (ssl.SSLError, OSError, ValueError) as exc:
            raise ConfigError(
                "otlp_client_certificate",
                client_certificate,
                f"a PEM certificate chain and its private key ({_reason(exc)})",
            ) from None
    return context


#: A PEM private key block (PKCS#8, RSA, EC, encrypted), in a file with the certificate chain.
PEM_KEY = re.compile(
    rb"-----BEGIN ((?:ENCRYPTED |RSA |EC |DSA )?PRIVATE KEY)-----.*?-----END \1-----\s*",
    re.DOTALL,
)


def key_missing(client_certificate: str) -> ConfigError:
    """The error for a client certificate given with no private key, in ``otlp_client_key``
    or in its own file (gRPC's C core aborts the process on one; HTTP fails mid-configure)."""
    return ConfigError(
        "otlp_client_key",
        None,
        f"a key file: the client certificate {client_certificate} needs its private key "
        "(otlp_client_key), or the key in the same file",
    )


def _holds_a_key(path: str) -> bool:
    try:
        with open(path, "rb") as file:
            return PEM_KEY.search(file.read()) is not None
    except OSError:
        return True  # load_cert_chain says why it cannot be read


def _reason(exc: BaseException) -> str:
    return str(getattr(exc, "reason", None) or getattr(exc, "strerror", None) or exc)


def _check_tls(values: dict[str, Any], sources: dict[str, str]) -> None:
    """The TLS files hold a CA certificate, a certificate chain and its key, as their options
    say: checked here, before anything is set up, where an exporter would fail in the middle
    of configure() with an ``ssl.SSLError`` (HTTP) or abort the process (gRPC's C core)."""
    files = [
        values.get(o) for o in ("otlp_certificate", "otlp_client_key", "otlp_client_certificate")
    ]
    if files[0] is None and files[2] is None:
        return
    try:
        tls_context(*files)
    except ConfigError as exc:
        raise ConfigError(
            exc.option,
            exc.value,
            exc.allowed,
            sources.get(exc.option) or sources.get("otlp_client_certificate", "argument"),
        ) from None


#: The OpenTelemetry SDK's log batching variables, read by its BatchLogRecordProcessor when
#: logs go out over OTLP, and their defaults there.
_BLRP_DEFAULTS = {
    "OTEL_BLRP_MAX_QUEUE_SIZE": 2048,
    "OTEL_BLRP_MAX_EXPORT_BATCH_SIZE": 512,
    "OTEL_BLRP_SCHEDULE_DELAY": 1000,
    "OTEL_BLRP_EXPORT_TIMEOUT": 30000,
}


def _check_span_batches(values: dict[str, Any], sources: dict[str, str]) -> None:
    """An export batch no larger than the span queue (the spec's rule for OTEL_BSP_*, which
    the SDK enforces too): the default batch shrinks to a smaller queue; a batch given larger
    than the queue is refused."""
    defaults = Config()
    queue = values.get("bsp_max_queue_size", defaults.bsp_max_queue_size)
    batch = values.get("bsp_max_export_batch_size", defaults.bsp_max_export_batch_size)
    if batch <= queue:
        return
    if "bsp_max_export_batch_size" not in values:
        values["bsp_max_export_batch_size"] = queue
        sources["bsp_max_export_batch_size"] = "derived"
        return
    raise ConfigError(
        "bsp_max_export_batch_size",
        batch,
        f"at most bsp_max_queue_size ({queue})",
        sources.get("bsp_max_export_batch_size", "argument"),
    )


def _warn_once(key: str, message: str, *args: object) -> None:
    """:func:`obskit._selfmetrics.warn_once` (``load_config`` runs again at each
    ``configure()`` and for each metric declared before it), imported when first needed."""
    from obskit._selfmetrics import warn_once

    warn_once(key, message, *args)


def _ignored(option: str, raw: object, exc: _Unrecognised, source: str) -> None:
    """Warn that an ``OTEL_*`` variable's value (or part of a list) is not one obskit reads."""
    what = "ignored, as if unset" if exc.known is None else f"obskit uses {exc.known!r} of it"
    name = source.removeprefix("env:")
    _warn_once(
        f"config:{name}={raw}",
        "obskit: %s=%s is not a value obskit reads for %s (%s); %s",
        name,
        _shown(option, raw),
        option,
        exc.allowed,
        what,
    )


def _check_metrics_port(values: dict[str, Any], sources: dict[str, str]) -> None:
    """A metrics port with no ``prometheus`` in the metrics exporter is not served: said, since
    the exporter can come from a variable set for other software (``opentelemetry-instrument``
    sets ``OTEL_METRICS_EXPORTER=otlp`` when it is unset)."""
    exporter = values.get("metrics_exporter", "prometheus")
    if values.get("metrics_port") is None or "prometheus" in exporter:
        return
    _warn_once(
        f"config:metrics_port={values['metrics_port']}:{exporter}",
        "obskit: metrics_port=%s (from %s) is not served: metrics_exporter=%r (from %s) does not "
        "include prometheus; set it to prometheus+otlp (OTEL_METRICS_EXPORTER=otlp,prometheus) "
        "to both serve and push the metrics",
        values["metrics_port"],
        sources.get("metrics_port", "argument"),
        exporter,
        sources.get("metrics_exporter", "default"),
    )


def signal_timeout(name: str, raw: str) -> float | None:
    """``OTEL_EXPORTER_OTLP_{METRICS,LOGS}_TIMEOUT`` (milliseconds, as the specification says)
    in seconds; None, warned about once, for a value that is not a number above 0."""
    try:
        return _seconds_from_ms(raw)
    except _Invalid as exc:
        _warn_once(
            f"config:{name}={raw}",
            "obskit: %s=%r is not a value obskit reads (%s); ignored, as if unset",
            name,
            raw,
            exc.allowed,
        )
        return None


def log_batch_settings(env: Mapping[str, str]) -> dict[str, int]:
    """``OTEL_BLRP_*`` as obskit hands them to the SDK's log batch processor (so that it reads
    none itself): a value that is not a whole number, or is not above 0, is warned about once
    and ignored, as the specification says of a numeric value; the default export batch shrinks
    to a smaller queue, and a batch given larger than the queue is a :class:`ConfigError` (the
    SDK would raise a bare ``ValueError`` from deep inside ``configure()``, after other parts
    started)."""
    sizes: dict[str, int] = {}
    given: set[str] = set()  # the variables whose value is used
    for name, default in _BLRP_DEFAULTS.items():
        raw = env.get(name, "").strip()
        sizes[name] = default
        if not raw:
            continue
        try:
            value = int(raw)
        except ValueError:
            value = 0
        if value > 0 or (value == 0 and name == "OTEL_BLRP_EXPORT_TIMEOUT" and raw == "0"):
            sizes[name] = value
            given.add(name)
        else:
            _warn_once(
                f"config:{name}={raw}",
                "obskit: %s=%r is not a whole number above 0; ignored, as if unset",
                name,
                raw,
            )
    queue, batch = sizes["OTEL_BLRP_MAX_QUEUE_SIZE"], sizes["OTEL_BLRP_MAX_EXPORT_BATCH_SIZE"]
    if batch > queue and "OTEL_BLRP_MAX_EXPORT_BATCH_SIZE" not in given:
        # The default batch shrinks to a smaller queue, as for spans (_check_span_batches).
        sizes["OTEL_BLRP_MAX_EXPORT_BATCH_SIZE"] = queue
    elif batch > queue:
        # The variable that was set (the queue's, if both were).
        name = (
            "OTEL_BLRP_MAX_QUEUE_SIZE"
            if env.get("OTEL_BLRP_MAX_QUEUE_SIZE", "").strip()
            else "OTEL_BLRP_MAX_EXPORT_BATCH_SIZE"
        )
        raise ConfigError(
            name,
            env.get(name, ""),
            f"a log queue at least as large as its export batch ({queue} < {batch}: set "
            "OTEL_BLRP_MAX_EXPORT_BATCH_SIZE no larger than OTEL_BLRP_MAX_QUEUE_SIZE)",
            f"env:{name}",
        )
    return sizes


#: The adaptive sampler's base ratio when ``sampler_arg`` is not given.
ADAPTIVE_DEFAULT_BASE = 0.001


def sampler_arg_default(sampler: str) -> float | None:
    """The argument ``sampler`` takes when ``sampler_arg`` is not set (None: it takes none)."""
    if sampler.endswith("traceidratio"):
        return 1.0
    if sampler.endswith("adaptive"):
        return ADAPTIVE_DEFAULT_BASE
    if sampler.endswith("ratelimited"):
        return 100.0
    return None


def _check_sampler(values: dict[str, Any], sources: dict[str, str]) -> None:
    sampler = values.get("sampler", Config.sampler)
    arg = values.get("sampler_arg")
    if arg is None:
        if sampler.endswith("adaptive"):  # the default base must fit under the maximum too
            top = values.get("adaptive_max_ratio", Config.adaptive_max_ratio)
            if top < ADAPTIVE_DEFAULT_BASE:
                raise ConfigError(
                    "adaptive_max_ratio",
                    top,
                    f"a ratio >= the adaptive sampler's default base ({ADAPTIVE_DEFAULT_BASE}), "
                    "or a lower base as sampler_arg",
                    sources.get("adaptive_max_ratio", "argument"),
                )
        return
    source = sources.get("sampler_arg", "argument")
    if sampler.endswith(("traceidratio", "adaptive")) and not 0.0 <= arg <= 1.0:
        raise ConfigError("sampler_arg", arg, f"a ratio between 0 and 1 for {sampler}", source)
    if sampler.endswith("ratelimited") and arg <= 0:
        raise ConfigError("sampler_arg", arg, f"traces per second > 0 for {sampler}", source)
    if sampler.endswith("adaptive"):
        top = values.get("adaptive_max_ratio", Config.adaptive_max_ratio)
        if arg > top:
            raise ConfigError(
                "sampler_arg", arg, f"a base ratio <= adaptive_max_ratio ({top})", source
            )


def describe(config: Config) -> list[tuple[str, object, str]]:
    """(option, value, source) rows for every option, for ``obskit doctor``."""
    return [
        (f.name, getattr(config, f.name), config.source_of(f.name))
        for f in dataclasses.fields(config)
        if f.name != "sources"
    ]
