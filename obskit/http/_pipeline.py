"""The framework-neutral request pipeline every adapter drives.

An adapter translates its protocol into three calls: :meth:`HttpTelemetry.begin` (or the plainer
:meth:`HttpTelemetry.start`) when a request arrives, :meth:`Request.set_route` once the framework
has matched a route template, and :meth:`Request.finish` after the last byte (or the exception);
a streamed body goes through :func:`finishing_chunks`, and an app nested in another's request
reports to it through :func:`nested_request`. Everything else -- the SERVER span and its
semantic-convention attributes, W3C extraction, exclusions, RED metrics with exemplars, the
in-flight gauge, OTLP duration metrics, following a reconfiguration -- lives here, once.
"""

from __future__ import annotations

import asyncio
import contextvars
import secrets
import time
from _thread import get_ident as _get_ident
from bisect import bisect_left
from collections.abc import (
    AsyncIterable,
    AsyncIterator,
    Callable,
    Iterable,
    Iterator,
    Mapping,
    Sequence,
)
from typing import Any, NamedTuple

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.trace import Span as _SdkSpan
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import INVALID_SPAN, SpanKind, StatusCode
from prometheus_client.samples import Exemplar

from obskit import _runtime, _selfmetrics, _state
from obskit._version import __version__
from obskit.config import Config, load_config
from obskit.http import _semconv as sc
from obskit.metrics._direct import Cell, Cells, Observer, adder, taking
from obskit.metrics.cardinality import DETACHED
from obskit.metrics.instruments import counter, gauge, histogram
from obskit.tracing import _fastctx as _ctx
from obskit.tracing.propagation import Getter, extract
from obskit.tracing.server_span import _MAX_ATTRIBUTES, ServerSpan, start_server_span

__all__ = [
    "HttpTelemetry",
    "NestedRequest",
    "Request",
    "finishing_chunks",
    "finishing_chunks_async",
    "nested_request",
]

_perf = time.perf_counter
_get_current = _ctx.get_current
_SPAN_KEY = _ctx.SPAN_KEY
_REQUEST_KEY = _ctx.REQUEST_KEY
_MISSING = contextvars.Token.MISSING
#: What the context is when nothing was ever attached (the runtime context's default).
_EMPTY_CONTEXT = Context()
_new_tuple = tuple.__new__
#: (method, route) pairs whose metric writers are cached; past it they are looked up per request.
_MAX_ROUTES = 2048
_SERVER = SpanKind.SERVER
_ERROR = StatusCode.ERROR


#: The order adapters' options go over one another: Django's project settings first, a
#: wrapper or an app's own adapter over them (obskit's ASGI middleware around Django's
#: application names what Django's settings did not).
_ADAPTER_ORDER = ("django", "flask", "fastapi", "wsgi", "asgi")


def ensure_configured(options: dict[str, Any] | None = None, adapter: str = "") -> Config:
    """The running configuration; configure obskit (with ``options``) if nobody has yet.

    ``options`` given to an adapter (``instrument(app, service_name=...)``, Django's
    ``settings.OBSKIT``; ``adapter`` names its kind) go over what the application passed to
    ``obskit.configure()`` -- they do not replace it: a collector endpoint or ``logging=True`` set
    in code stays -- and, kind by kind in :data:`_ADAPTER_ORDER`, over what the other kinds of
    adapter asked; they replace what an adapter of the same kind asked before (an app factory's
    per-test options do not stick). An adapter asking nothing changes nothing, except Django's
    middleware: ``settings.OBSKIT`` is the project's one source, so an empty one replaces what
    it said before too (``override_settings(OBSKIT=...)`` holds for one test client)."""
    config = _runtime.get_config()
    options = dict(options or {})
    asked = _state.adapter_options
    replaces = adapter == "django"
    if config is not None and not options and not (replaces and asked.get(adapter)):
        return config
    wanted = options  # what this kind asked before is replaced, not added to
    merged = dict(_state.app_options)
    for kind in sorted({*asked, adapter}, key=_adapter_rank):
        merged.update(wanted if kind == adapter else asked[kind])
    config = _runtime._configure(load_config(**merged))
    if wanted:
        asked[adapter] = wanted
    else:
        asked.pop(adapter, None)
    return config


def _adapter_rank(kind: str) -> int:
    return _ADAPTER_ORDER.index(kind) if kind in _ADAPTER_ORDER else len(_ADAPTER_ORDER)


class HttpTelemetry:
    """Per-application request telemetry, built once when the adapter is installed.

    Args:
        excluded_paths: paths with no span and no RED metrics (default: the ``excluded_paths``
            option, which holds the metrics and health endpoints).
        tracer_provider: a provider other than obskit's global one.
        buckets: duration histogram bounds (default: the ``http_buckets`` option).
    """

    def __init__(
        self,
        *,
        excluded_paths: Sequence[str] | None = None,
        tracer_provider: trace.TracerProvider | None = None,
        buckets: Sequence[float] | None = None,
    ) -> None:
        config = _runtime.get_config() or load_config()
        self.config = config
        #: Whether the framework serves methods case-insensitively (its adapter sets it).
        self.methods_fold_case = False
        provider = tracer_provider or _runtime.tracer_provider()
        # obskit's own provider: SERVER spans take the lean path (obskit.tracing.server_span).
        self._lean = tracer_provider is None
        self.tracer = provider.get_tracer("obskit.http", __version__)
        self.tracer_scope = InstrumentationScope("obskit.http", __version__)
        self._sampler = _runtime._install_global().sampler
        self._excluded_paths = None if excluded_paths is None else frozenset(excluded_paths)
        self._buckets = list(buckets or config.http_buckets)
        self.requests = counter(
            "http_requests",
            "HTTP requests handled, by method, route template and status code.",
            ["method", "route", "status"],
        )
        # Its bounds are fixed with the first adapter: a reconfiguration's http_buckets do not
        # change an exposed histogram (Prometheus would see two series sets under one name). A
        # later adapter asking for others gets the first's bounds and a warning, not an error
        # from the app's start-up.
        try:
            self.duration = histogram(
                "http_request_duration_seconds",
                "Time from request arrival to the last response byte, in seconds.",
                ["method", "route"],
                buckets=self._buckets,
            )
        except ValueError as exc:
            existing = _state.instruments.get("http_request_duration_seconds")
            if existing is None or existing.label_names != ("method", "route"):
                raise
            _selfmetrics.warn_once("http_buckets", "obskit: %s; its first bounds are kept", exc)
            self.duration = existing
        self.in_flight = gauge(
            "http_requests_in_flight",
            "HTTP requests being handled, by method and route template.",
            ["method", "route"],
        )
        self._routes: dict[tuple[str, str], _RouteSeries] = {}
        #: The runtime whose settings this follows (see follow); self until the first call.
        self._runtime: Any = self
        self._otlp_duration: Any = None
        self.follow(_state.runtime)

    def follow(self, runtime: Any) -> None:
        """Take the settings of ``runtime`` (the running configuration, None before any):
        exclusions, the tail policy, exemplars, the metrics path and the OTLP duration
        histogram. Called when a reconfiguration has replaced the runtime, so that adapters built
        before it honour the new options (what ``configure()`` promises)."""
        config = self.config if runtime is None or runtime.closed else runtime.config
        self.config = config
        # The methods named in spans and RED labels (http_known_methods); any other is _OTHER.
        self._methods = config.known_methods
        self._span_names = {m: sc.span_name(m) for m in (*self._methods, sc.OTHER_METHOD)}
        #: ``(hops, read X-Forwarded-Host)`` behind trusted proxies, else None.
        self.proxies = (
            (config.trusted_proxy_hops, config.trust_forwarded_host)
            if config.trusted_proxy_hops
            else None
        )
        given = self._excluded_paths
        self.excluded = frozenset(config.excluded_paths) if given is None else given
        # With a separate metrics port, the app's own path is left to the app.
        separate = runtime is not None and runtime.metrics_server is not None
        self.metrics_path: str | None = None if separate else config.metrics_path
        self.exemplars = not config.multiproc_dir
        # Head-dropped requests that fail or are slow get their SERVER span rebuilt and kept
        # (unless keep_whole_trace already records everything).
        self.keep_errors = config.keep_errors and not config.keep_whole_trace
        self.keep_slow = (
            None
            if config.slow_threshold is None or config.keep_whole_trace
            else config.slow_threshold
        )
        # Whether a head-dropped request must keep what its SERVER span would be rebuilt from.
        self._keeps = self.keep_errors or self.keep_slow is not None
        # The old provider is shut down, and what it would record is lost.
        provider = runtime.meter_provider if runtime is not None else None
        self._otlp_duration = (
            None
            if provider is None
            else provider.get_meter("obskit.http", __version__).create_histogram(
                "http.server.request.duration",
                unit="s",
                description="Duration of HTTP server requests.",
                explicit_bucket_boundaries_advisory=self._buckets,
            )
        )
        self._runtime = runtime

    def _unknown_method(self, method: str) -> str:
        """The label of a method not in ``http_known_methods``: its canonical (upper-case)
        spelling where the framework serves methods case-insensitively (``methods_fold_case``:
        Flask serves a ``get`` as GET), as the semantic conventions ask; else ``_OTHER``.
        ``http.request.method_original`` keeps what came."""
        if self.methods_fold_case:
            upper = method.upper()
            if upper in self._methods:
                return upper
        return sc.OTHER_METHOD

    def excludes(self, path: str) -> bool:
        """Whether ``path`` is one of the excluded paths, under the running configuration's
        settings (:meth:`begin` checks the same, inline): for an adapter that matches another
        spelling of the path too (ASGI's, without the root path)."""
        runtime = _state.runtime
        if runtime is not self._runtime:
            self.follow(runtime)
        return path in self.excluded

    def answers_metrics(self) -> bool:
        """Whether the app's own :attr:`metrics_path` still answers the scrape: not once the
        separate metrics port (``metrics_port``), busy when this process started, has been
        taken over by it. Asked only for a request to that path."""
        runtime = _state.runtime
        retry = runtime.metrics_retry if runtime is not None else None
        return retry is None or retry.server is None

    def series(self, method: str, route: str) -> _RouteSeries:
        """The metric writers of ``(method, route)``, cached while the registry is the same."""
        key = (method, route)
        series = self._routes.get(key)
        if series is None or series.generation != _state.generation:
            series = _RouteSeries(self, key)
            if series.cacheable and len(self._routes) < _MAX_ROUTES:
                self._routes[key] = series
        return series

    def start(
        self,
        method: str,
        path: str,
        get_header: Getter,
        *,
        scheme: str = "http",
        server_address: str | None = None,
        server_port: int | None = None,
        client_address: str | None = None,
        protocol: str | None = None,
        route: str | None = None,
        query: str | None = None,
    ) -> Request | None:
        """Begin a request; None when its path is excluded. Never raises. ``server_address``
        and ``server_port``: the listening socket's, used when the request has no valid
        ``Host`` header; ``query``: the URL's query string, as received (no ``?``)."""
        facts = (scheme, server_address, server_port, client_address, protocol, query)
        return self.begin(method, path, get_header, _given, facts, route)

    def begin(
        self,
        method: str,
        path: str,
        get_header: Getter,
        describe: Describe,
        source: Any,
        route: str | None = None,
        *,
        request_type: type[Request] | None = None,
        adopt: bool = False,
    ) -> Request | None:
        """:meth:`start`, with the connection facts given as ``describe(source)``: a tuple
        ``(scheme, server_address, server_port, client_address, protocol, query)``
        (:data:`Facts`) computed only for a request whose span records them (or that the tail
        policy may keep), not for every unsampled request. ``request_type``: an adapter's
        subclass of :class:`Request`. ``adopt``: the current span is a SERVER span another
        tracer started for this request (FastAPI's own, around the middleware): it is the
        request's span, which obskit neither changes nor ends. Never raises.
        """
        runtime = _state.runtime
        if runtime is not self._runtime:
            self.follow(runtime)
        if path in self.excluded:
            return None
        current: Any = _get_current()
        outer: Any = current.get(_REQUEST_KEY)
        if outer is not None and not outer._finished:
            # An instrumented app inside an instrumented one (``init_app`` twice, two
            # instrumented apps behind a dispatcher, a Flask app mounted in FastAPI, Django's
            # middleware under obskit's WSGI/ASGI one): the outer has the request, counted and
            # traced once there. (A finished request left current does not count.)
            return None
        if not adopt:
            found = current.get(_SPAN_KEY)
            # Another instrumentation's SERVER span open around this request -- OpenTelemetry's
            # Django middleware, which puts itself first in MIDDLEWARE (and so before obskit's),
            # or its WSGI/ASGI middleware outside obskit's -- is the request's span, as
            # FastAPI's own is: one SERVER span per request, not two.
            if found is not None and isinstance(found, _SdkSpan):
                adopt = found.kind is _SERVER and found.is_recording()
        try:
            label = method if method in self._methods else self._unknown_method(method)
            processor = runtime.processor if runtime is not None else None
            try:
                parent = None if adopt else extract(get_header)
                if adopt:
                    span = _ctx.current_span()
                    processor = None  # its tracer's, not obskit's: no keep policy either
                elif processor is None:
                    # Traces off (or disabled): no SERVER span; the incoming context, if any,
                    # stays current so logs carry its ids and outbound calls forward it.
                    span = _ctx.current_span(parent) if parent is not None else INVALID_SPAN
                elif self._lean and runtime.lean_spans:  # type: ignore[union-attr]
                    span = start_server_span(
                        self._sampler, parent, self._span_names[label], processor, self.tracer_scope
                    )
                else:
                    span = self.tracer.start_span(
                        self._span_names[label], context=parent, kind=_SERVER
                    )
            except Exception as exc:  # a failing sampler or propagator: the span is lost, the
                # request still counts in the RED metrics
                _selfmetrics.internal_error("http_span", exc)
                parent, span = None, INVALID_SPAN
            request = (request_type or Request)(self, label, span, get_header)
            if adopt:
                request._adopted = True
                if runtime is not None and runtime.meter_provider is not None:
                    # The OTLP duration's url.scheme (never a span rebuilt: see _keep).
                    request._unsampled = (parent, method, path, describe, source)
            elif span.is_recording():
                request._recording = True
                _set_attributes(
                    span,
                    _server_attributes(
                        label, method, path, describe(source), get_header, self.proxies
                    ),
                )
            elif (processor is not None and self._keeps) or (
                runtime is not None and runtime.meter_provider is not None
            ):
                # Kept only for a request the tail policy may still export (Request._keep), or
                # whose OTLP duration names its url.scheme.
                request._unsampled = (parent, method, path, describe, source)
            request._token = _ctx.attach(_ctx.with_span(span, parent, request))
            if route is not None:
                request.set_route(route)
            return request
        except Exception as exc:
            _selfmetrics.internal_error("http_start", exc)
            return None


#: A request's connection facts: ``(scheme, server_address, server_port, client_address,
#: protocol, query)`` -- the address and port of the listening socket (the ``Host`` header, read
#: through the header getter, comes first), the query string as received, without ``?``.
Facts = tuple[str, str | None, int | None, str | None, str | None, str | None]
#: What an adapter gives :meth:`HttpTelemetry.begin` to compute the facts of a sampled request.
Describe = Callable[[Any], Facts]


#: ``describe`` of the connection facts :meth:`HttpTelemetry.start` was given as they are.
def _given(facts: Any) -> Any:
    return facts


def _no_header(name: str) -> str | None:
    return None


class _RouteSeries:
    """The RED metric writers of one (method, route), looked up through the guards once.

    Per request the pipeline then pays one dict lookup and one :meth:`record` instead of three
    guarded lookups and prometheus_client's per-call checks. In-process (not in multi-process
    mode), the series' values share one :class:`~obskit.metrics._direct.Cells`, so a request's
    end is one locked update of its status count, duration sum and bucket, and in-flight gauge.
    """

    __slots__ = (
        "_bounds",
        "_bucket0",
        "_buckets",
        "_cells",
        "_flight",
        "_slots",
        "_statuses",
        "_sum",
        "_telemetry",
        "cacheable",
        "generation",
        "in_flight",
        "key",
        "observe",
        "span_name",
    )

    def __init__(self, telemetry: HttpTelemetry, key: tuple[str, str]) -> None:
        self._telemetry = telemetry
        self.key = key
        self.generation = _state.generation
        duration = telemetry.duration.labels(*key)
        in_flight = telemetry.in_flight.labels(*key)
        # An overflow child is counted per observation by its guard: never cached; nor is one
        # that could not be made (DETACHED: the next request tries again).
        self.cacheable = not (
            telemetry.duration.folded(duration)
            or telemetry.in_flight.folded(in_flight)
            or duration is DETACHED
            or in_flight is DETACHED
        )
        self._statuses: dict[int | None, Callable[[float], None]] = {}
        self._slots: dict[int | None, int] = {}
        self._cells: Cells | None = None
        if self.cacheable:
            with taking:
                self._share(duration, in_flight)
        self.observe = Observer(duration)
        #: The SERVER span's name for this route (semantic conventions: ``METHOD route``).
        self.span_name = sc.span_name(*key)
        self.in_flight = adder(in_flight)

    def _share(self, duration: Any, in_flight: Any) -> None:
        """Move the duration and in-flight values into one :class:`Cells` (shared with another
        application's series of the same children, if one took them first)."""
        try:
            buckets = duration._buckets
            bounds = tuple(float(b) for b in duration._upper_bounds)
            first = getattr(duration, "_sum", None)
            cells = first._cells if type(first) is Cell else Cells()
            total = cells.take(duration, "_sum")
            flight = cells.take(in_flight, "_value")
            slots = [cells.take(buckets, i) for i in range(len(buckets))]
        except Exception:
            return
        first_bucket = slots[0] if slots else None
        if (
            total is None
            or flight is None
            or first_bucket is None
            or len(slots) != len(bounds)
            or slots != list(range(first_bucket, first_bucket + len(slots)))
        ):
            return  # the values stay usable one by one (Cell.inc), just not merged
        self._cells = cells
        self._sum = total
        self._flight = flight
        self._bucket0 = first_bucket
        self._bounds = bounds
        self._buckets = buckets

    def count(self, code: int | None) -> None:
        """One request answered with status ``code`` (None: raised, unanswered)."""
        add = self._statuses.get(code)
        if add is None:
            requests = self._telemetry.requests
            child = requests.labels(*self.key, sc.status_label(code))
            if requests.folded(child) or child is DETACHED or len(self._statuses) >= 64:
                adder(child)(1)
                return
            if self._cells is not None:
                with taking:
                    slot = self._cells.take(child, "_value")
                if slot is not None:
                    self._slots[code] = slot
            add = self._statuses[code] = adder(child)
        add(1)

    def record(
        self, code: int | None, duration: float, exemplar: dict[str, str] | None, leave: bool
    ) -> None:
        """One request's end: its status, its duration and, if ``leave``, its leaving the
        in-flight gauge."""
        slot = self._slots.get(code)
        cells = self._cells
        if slot is None or cells is None:
            self.count(code)
            if exemplar is None:
                self.observe(duration)
            else:
                self.observe(duration, exemplar)
            if leave:
                self.in_flight(-1)
            return
        bucket = self._bucket0 + bisect_left(self._bounds, duration)
        values = cells.values
        with cells.lock:
            values[slot] += 1.0
            values[self._sum] += duration
            values[bucket] += 1.0
            if leave:
                values[self._flight] -= 1.0
        if exemplar is not None:
            # Exemplar is a NamedTuple: built as tuple.__new__ would, without its Python-level
            # __new__ frame.
            self._buckets[bucket - self._bucket0].set_exemplar(
                _new_tuple(Exemplar, (exemplar, duration, time.time()))
            )


def _server_attributes(
    label: str,
    method: str,
    path: str,
    facts: tuple[Any, ...],
    get_header: Getter,
    proxies: tuple[int, bool] | None = None,
) -> dict[str, Any]:
    """The SERVER span's request attributes (stable HTTP semantic conventions).

    ``url.query`` when a query was received, the values of presigned-URL keys redacted as
    CLIENT spans' ``url.full`` has them. ``server.address`` and ``server.port`` name the host the
    client asked for: the ``Host`` header (HTTP/2's ``:authority``, which ASGI servers pass as
    ``host``; a port it omits is the scheme's), else the listening socket. Behind trusted
    proxies (``proxies``) see :func:`_proxied_attributes`; otherwise ``X-Forwarded-*`` are not
    read: any client can send them.
    """
    if proxies is not None:
        return _proxied_attributes(label, method, path, facts, get_header, *proxies)
    scheme, address, port, client, protocol, query = facts
    attrs: dict[str, Any] = {
        sc.HTTP_REQUEST_METHOD: label,
        sc.URL_PATH: path,
        sc.URL_SCHEME: scheme,
    }
    if query and query.__class__ is str:
        attrs[sc.URL_QUERY] = sc.redact_query(query)
    if label != method:  # _OTHER, or a canonical spelling of it
        attrs[sc.HTTP_REQUEST_METHOD_ORIGINAL] = method[:64]
    host = get_header("host")
    if host:
        named = sc.server_authority(host, scheme)
        if named is not None:
            address, port = named
    if address:
        attrs[sc.SERVER_ADDRESS] = address
    if port:
        attrs[sc.SERVER_PORT] = port
    if client:
        attrs[sc.CLIENT_ADDRESS] = client
    if protocol:
        attrs[sc.NETWORK_PROTOCOL_VERSION] = protocol
    agent = get_header("user-agent")
    if agent:
        attrs[sc.USER_AGENT] = agent[:512]
    return attrs


def _proxied_attributes(
    label: str,
    method: str,
    path: str,
    facts: tuple[Any, ...],
    get_header: Getter,
    hops: int,
    with_host: bool,
) -> dict[str, Any]:
    """:func:`_server_attributes` behind ``hops`` trusted proxies (``trusted_proxy_hops``): what
    they wrote in ``X-Forwarded-For`` and ``-Proto`` -- and ``-Host`` if ``with_host``
    (``trust_forwarded_host``) -- comes first, and the socket's peer (the nearest proxy) is
    ``network.peer.address``. Apart, so the usual request pays nothing."""
    origin, host, proto = sc.forwarded(get_header, hops)
    if not with_host:
        host = None
    scheme, address, port, peer, protocol, query = facts
    scheme = proto or scheme
    getter = get_header
    if host is not None and sc.server_authority(host, scheme) is not None:

        def getter(name: str) -> str | None:
            return host if name == "host" else get_header(name)

    client = peer if origin is None else origin
    attrs = _server_attributes(
        label, method, path, (scheme, address, port, client, protocol, query), getter
    )
    if peer and client != peer:
        attrs[sc.NETWORK_PEER_ADDRESS] = peer
    return attrs


def _set_attributes(span: Any, attributes: dict[str, Any]) -> None:
    """Set :func:`_server_attributes` on a span. Their values are str and int by construction
    (adapters pass what PEP 3333 and the ASGI spec type as such), so obskit's own span takes
    them in one dict update instead of checking each one as ``set_attributes`` must."""
    if type(span) is ServerSpan and len(span.attributes) + len(attributes) <= _MAX_ATTRIBUTES:
        if span.attributes:
            span.attributes.update(attributes)
        else:  # a new span: the dict built for it becomes its attributes, no copy
            span.attributes = attributes
    else:
        span.set_attributes(attributes)


def _mark_outcome(span: Any, code: int | None, exc: BaseException | None) -> None:
    """Status code, exception and error status on a recording SERVER span."""
    if code is not None:
        if (
            type(span) is ServerSpan
            and code.__class__ is int
            and len(span.attributes) < _MAX_ATTRIBUTES
        ):
            span.attributes[sc.HTTP_RESPONSE_STATUS_CODE] = code  # set_attribute, inlined
        else:
            span.set_attribute(sc.HTTP_RESPONSE_STATUS_CODE, code)
    if exc is not None:
        sc.mark_exception(span, exc)
    elif code is not None and code >= 500:
        span.set_attribute(sc.ERROR_TYPE, str(code))
        span.set_status(_ERROR)


class EndedRequest(NamedTuple):
    """What a line logged about a request's exception after the request ended (uvicorn's
    "Exception in ASGI application", gunicorn's "Error handling request") needs of the request:
    plain values, so that the exception stays picklable and copyable. Read by
    ``obskit.logging._after_the_request``."""

    #: The span context as a tuple: (trace_id, span_id, is_remote, trace_flags, -, is_valid).
    context: tuple[int, int, bool, int, None, bool]
    method: str
    route: str | None
    request_id: str
    #: When the exception left the request (``time.time()``, as a LogRecord's ``created``).
    ended: float


#: Threads whose tag an exception keeps at most: a shared exception object raised out of
#: requests on many threads at once, as many as a server's threads (a tag is a small tuple).
_MAX_TAGS = 256


def _tag(exc: BaseException, request: Request) -> None:
    """Tag ``exc``, on its way out of the request, with what its log line will need.

    One exception object can leave several requests at once (the failed result of a shared
    future, a cached error): the tag is per thread, as the server logs the exception on the
    thread it left the request on (gunicorn's "Error handling request", uvicorn's task).
    """
    try:
        ctx = request.span.get_span_context()
        ended = EndedRequest(
            (ctx[0], ctx[1], False, int(ctx[3]), None, bool(ctx[5])),
            request.method,
            request.route,
            request.request_id,
            time.time(),
        )
    except Exception:  # pragma: no cover - a span context unlike OpenTelemetry's
        return
    _set_tag(exc, ended)


def untag(exc: BaseException) -> None:
    """Note that ``exc`` left a request obskit does not trace (an excluded path) on this thread:
    its line names no request, not one the same object left before."""
    _set_tag(exc, None)


def _set_tag(exc: BaseException, ended: EndedRequest | None) -> None:
    try:
        # setdefault: two threads tagging a fresh object at once share one dict (an assignment
        # of each its own would lose one thread's tag, and the other's would stand in for it).
        tags = exc.__dict__.setdefault("_obskit_ended", {})
        if tags.__class__ is not dict:
            return
        ident = _get_ident()
        tags.pop(ident, None)
        tags[ident] = ended  # the newest last: the oldest go first, never this thread's own
        for _ in range(len(tags) - _MAX_TAGS):
            oldest = next(iter(tags))
            if oldest == ident:
                break
            tags.pop(oldest, None)  # another thread may have taken it out first
    except Exception:  # an exception type without a __dict__: its line goes without the ids
        pass


def ended_request(exc: BaseException | None, created: float) -> EndedRequest | None:
    """The request ``exc`` left on this thread, for a line logged at ``created`` about it.

    Another thread's only when this thread has none and no other thread's request raised the
    same object; None when the line comes more than 5 s after (the same object raised again
    later, or logged long after, is not that request's any more).
    """
    try:
        tags = getattr(exc, "_obskit_ended", None)
        if tags.__class__ is not dict:
            return None
        ident = _get_ident()
        if ident in tags:
            ended = tags[ident]
        elif len(tags) == 1:
            ended = next(iter(tags.values()))
        else:
            return None
        if ended.__class__ is EndedRequest and abs(created - ended.ended) < 5.0:
            return ended
    except Exception:  # not obskit's after all
        pass
    return None


class Request:
    """One request in flight. Adapters call :meth:`set_route` and then :meth:`finish` once."""

    # No __slots__: most attributes keep their class-level default for most requests, and an
    # instance then pays for the five it sets, not for fifteen.
    _token: object = None
    _finished = False
    _recording = False
    #: The span is another instrumentation's SERVER span (see :meth:`HttpTelemetry.begin`):
    #: obskit neither changes, ends nor rebuilds it, but its exemplars name its trace.
    _adopted = False
    #: An exception the framework caught and answered with an error response (Flask's
    #: ``got_request_exception``, Django's ``process_exception``): recorded on the span if the
    #: request ends with a 5xx status, ignored if the framework answered 4xx (``Http404``).
    handled: BaseException | None = None
    route: str | None = None
    status: int | None = None
    _in_flight: Callable[[float], None] | None = None
    _series: _RouteSeries | None = None
    #: What a head-dropped request's SERVER span would be rebuilt from, if the tail policy may
    #: keep it: ``(parent, method, path, describe, source)``.
    _unsampled: tuple[Any, ...] | None = None
    _request_id: str | None = None

    def __init__(
        self, telemetry: HttpTelemetry, method: str, span: Any, get_header: Getter
    ) -> None:
        self.telemetry = telemetry
        self.method = method
        self.span = span
        self._get_header = get_header
        self.start = _perf()

    @property
    def request_id(self) -> str:
        """The ``X-Request-ID`` the client sent (bounded), else the server span's id.

        Resolved when first asked for (by a log line), not on every request.
        """
        given = self._request_id
        if given is None:
            given = self._request_id = self._get_header("x-request-id") or ""
        if given:
            return given[:128]
        ctx = self.span.get_span_context()  # (trace_id, span_id, is_remote, ...)
        if ctx[1] and not ctx[2]:
            return ctx[1].to_bytes(8, "big").hex()  # type: ignore[no-any-return]
        # No span of this request (traces off): a random id, made once.
        self._request_id = secrets.token_hex(8)
        return self._request_id

    def set_route(self, route: str, *, in_flight: bool = True) -> None:
        """Record the matched route template: span name, ``http.route`` and the in-flight gauge.

        ``in_flight=False`` when the route is only known after the handler ran (nothing left
        to count as in flight).
        """
        if self.route == route:
            return
        try:
            if self._in_flight is not None:
                self._in_flight(-1)
                self._in_flight = None
            self.route = route
            telemetry = self.telemetry
            series = telemetry._routes.get((self.method, route))  # telemetry.series(), inlined
            if series is None or series.generation != _state.generation:
                series = telemetry.series(self.method, route)
            self._series = series
            if in_flight:
                self._in_flight = series.in_flight
                series.in_flight(1)
            if self._recording:
                span = self.span
                if (
                    type(span) is ServerSpan
                    and span.end_time is None
                    and route.__class__ is str
                    and len(span.attributes) < _MAX_ATTRIBUTES
                ):  # update_name and set_attribute, inlined
                    span.name = series.span_name
                    span.attributes[sc.HTTP_ROUTE] = route
                else:
                    span.update_name(series.span_name)
                    span.set_attribute(sc.HTTP_ROUTE, route)
        except Exception as exc:
            _selfmetrics.internal_error("http_route", exc)

    def finish(
        self, status: int | None = None, exc: BaseException | None = None, *, detach: bool = True
    ) -> None:
        """End the request: RED metrics, span status and end. Never raises; only the first
        call counts, so adapters may call it from every path that can end a request.

        ``detach=False`` leaves the request's context attached; the caller then calls
        :meth:`detach` from the frame that started the request (ASGI ``send`` may run in
        another task, where the context token is not valid).
        """
        if self._finished:
            if exc is not None:
                # Raised after the answer (a background task, a dependency's teardown, a WSGI
                # body's close()): the server's traceback line still belongs to this request.
                _tag(exc, self)
            if detach:
                self.detach()
            return
        self._finished = True
        duration = _perf() - self.start
        if status is None:
            status = self.status
        if exc is None and self.handled is not None and (status is None or status >= 500):
            exc = self.handled
        if exc is not None:
            _tag(exc, self)
        # The recording is inline rather than a method of its own: one call less per request.
        try:
            telemetry = self.telemetry
            route = self.route or sc.UNMATCHED
            method = self.method
            # No status: the app raised, or returned without answering -- the server answers
            # 500 for it (uvicorn, gunicorn, Django's handlers), and every signal says so.
            code = 500 if status is None else status
            series = self._series
            if series is None or series.generation != _state.generation:
                series = telemetry.series(method, route)
            span = self.span
            exemplar = None
            # An unsampled span never records; an adopted one may be sampled.
            if (self._recording or self._adopted) and telemetry.exemplars:
                ctx = span.get_span_context()  # a tuple: (trace_id, span_id, remote, flags, ...)
                if ctx[3] & 1:
                    exemplar = {"trace_id": ctx[0].to_bytes(16, "big").hex()}
            in_flight = self._in_flight
            leave = in_flight is not None and in_flight is series.in_flight
            series.record(code, duration, exemplar, leave)
            if in_flight is not None and not leave:  # in flight under another series' gauge
                in_flight(-1)
            runtime = _state.runtime
            if runtime is not telemetry._runtime:  # reconfigured while this request ran
                telemetry.follow(runtime)
            otlp = telemetry._otlp_duration
            if otlp is not None:
                otlp.record(duration, self._otlp_attributes(self.route, code, exc))
            if self._recording:
                _mark_outcome(span, code, exc)
            failed = exc is not None or (code is not None and code >= 500)
            if runtime is not None and runtime.record_outcome is not None:
                runtime.record_outcome(failed)
            if self._unsampled is not None:
                slow = telemetry.keep_slow
                if (failed and telemetry.keep_errors) or (slow is not None and duration >= slow):
                    self._keep(duration, code, exc, route)
            if self._recording:
                span.end()
        except Exception as error:
            _selfmetrics.internal_error("http_finish", error)
            if self._recording:  # the span is still exported, with what it has
                try:
                    if getattr(self.span, "end_time", None) is None:
                        self.span.end()
                except Exception:
                    pass
        if detach:
            self.detach()

    def _otlp_attributes(
        self, route: str | None, code: int | None, exc: BaseException | None
    ) -> dict[str, Any]:
        """``http.server.request.duration``'s attributes (HTTP semantic conventions):
        ``http.route`` only when a route matched (the metric's is conditionally required, and
        the path may not stand in for it; the Prometheus label's ``__unmatched__`` is
        obskit's), the protocol version as on the span."""
        attributes: dict[str, Any] = {sc.HTTP_REQUEST_METHOD: self.method}
        if route is not None:
            attributes[sc.HTTP_ROUTE] = route
        scheme = protocol = None
        if self._recording:
            recorded = getattr(self.span, "attributes", None) or {}
            scheme = recorded.get(sc.URL_SCHEME)
            protocol = recorded.get(sc.NETWORK_PROTOCOL_VERSION)
        elif self._unsampled is not None:
            describe, source = self._unsampled[3:]
            facts = describe(source)
            proxies = self.telemetry.proxies
            if proxies is not None:
                scheme = sc.forwarded_scheme(self._get_header, proxies[0])
            scheme = scheme or facts[0]
            protocol = facts[4]
        attributes[sc.URL_SCHEME] = scheme or "http"
        if protocol:
            attributes[sc.NETWORK_PROTOCOL_VERSION] = protocol
        if code is not None:
            attributes[sc.HTTP_RESPONSE_STATUS_CODE] = code
        if exc is not None:
            attributes[sc.ERROR_TYPE] = sc.error_type(exc)
        elif code is not None and code >= 500:
            attributes[sc.ERROR_TYPE] = str(code)
        return attributes

    def suspend(self) -> Any:
        """Make the context from before the request current, in whichever task calls this,
        until :meth:`resume`; for a call into the server that may capture the current context.
        Returns what :meth:`resume` needs.

        uvicorn schedules its keep-alive timer while sending the last body chunk, and an asyncio
        timer keeps a copy of the current context: the request's span and this object would stay
        alive for up to the keep-alive timeout, long enough to reach the garbage collector's
        older generations and trigger full collections -- the tail latency of issue #11. The
        context is set with a token of the caller's own: Starlette sends a streaming response
        from a child task (ASGI 2.3+), where the request's own token cannot be reset.
        """
        token = self._token
        if token is None:
            return None
        # A ContextVar token knows the value it replaced; another runtime context's may not,
        # and then the request's context stays current (as before this was done).
        outer = getattr(token, "old_value", None)
        if outer is None:
            return None
        try:
            return _ctx.attach(_EMPTY_CONTEXT if outer is _MISSING else outer)
        except Exception:
            return None

    def resume(self, token: Any) -> None:
        """Undo :meth:`suspend` (given what it returned), in the same task."""
        if token is None:
            return
        try:
            _ctx.detach(token)
        except Exception:
            pass

    def restore(self) -> None:
        """Reset the request's own context token: the context before the request is current
        again. Called from the frame (task) that started the request; once."""
        token = self._token
        if token is None:
            return
        self._token = None
        try:
            _ctx.detach(token)
        except Exception:
            pass

    def detach(self) -> None:
        """Restore the context that was current before the request started."""
        token = self._token
        if token is not None:  # restore(), inlined: this runs once per request
            self._token = None
            try:
                _ctx.detach(token)
            except Exception:
                pass
        if self._finished:
            # The header getter may hold the server's environ, which holds this request (WSGI
            # adapters keep it there): a reference cycle per request that only the garbage
            # collector would free. The one header still asked for later is kept.
            get_header = self._get_header
            if get_header is not _no_header:
                if self._request_id is None:
                    try:
                        self._request_id = get_header("x-request-id") or ""
                    except Exception:
                        self._request_id = ""
                self._get_header = _no_header
            # Likewise the connection facts' source (the environ, Django's request), and the
            # exception the framework handled (its traceback holds the frames, which hold the
            # framework's request, which holds this one).
            self._unsampled = None
            self.handled = None

    def _keep(
        self, duration: float, code: int | None, exc: BaseException | None, route: str
    ) -> None:
        """Rebuild and export the SERVER span of a head-dropped request that failed or was slow.

        Same ids as the non-recording span (already propagated downstream and logged), same
        attributes and outcome as a sampled request's span.
        """
        runtime = _state.runtime
        processor = runtime.processor if runtime is not None else None
        unsampled = self._unsampled
        if processor is None or unsampled is None or self._adopted:
            return  # (an adopted span is its instrumentation's to export: never twice)
        parent, method, path, describe, source = unsampled
        parent_ctx = _ctx.current_span(parent).get_span_context() if parent else None
        span = ServerSpan(
            sc.span_name(self.method, self.route),
            self.span.get_span_context(),
            parent_ctx if parent_ctx is not None and parent_ctx.is_valid else None,
            _SERVER,
            processor,
            self.telemetry.tracer_scope,
        )
        end = time.time_ns()
        span.start_time = end - int(duration * 1e9)
        span._perf -= int(duration * 1e9)  # its clock reads now as ``end`` (an event's time)
        facts = describe(source)
        _set_attributes(
            span,
            _server_attributes(
                self.method, method, path, facts, self._get_header, self.telemetry.proxies
            ),
        )
        if self.route is not None:
            span.set_attribute(sc.HTTP_ROUTE, route)
        _mark_outcome(span, code, exc)
        span.end(end)
        _selfmetrics.traces_kept()


#: The tail of a mount's route template (``/v1/{path}``): what the app mounted there matches.
_MOUNT_TAIL = "/{path}"


class NestedRequest:
    """What an instrumented app nested in another one's request has instead of a request of
    its own (a Flask app mounted in FastAPI, Django under obskit's WSGI middleware): the
    outer request counts and traces it once, and what only the inner app knows -- its route,
    the exception it answered -- goes to the outer one."""

    __slots__ = ("outer",)

    def __init__(self, outer: Request) -> None:
        self.outer = outer

    def set_route(self, route: str, *, in_flight: bool = True) -> None:
        """The inner app's route: joined to the outer's mount (``/v1/{path}`` and
        ``/items/<int:i>`` give ``/v1/items/<int:i>``), or the outer's route when it has none."""
        known = self.outer.route
        if known is None:
            self.outer.set_route(route, in_flight=in_flight)
        elif known.endswith(_MOUNT_TAIL) and route.startswith("/"):
            self.outer.set_route(known[: -len(_MOUNT_TAIL)] + route, in_flight=in_flight)

    @property
    def handled(self) -> BaseException | None:
        return self.outer.handled

    @handled.setter
    def handled(self, exc: BaseException | None) -> None:
        self.outer.handled = exc


def nested_request() -> NestedRequest | None:
    """For an adapter whose :meth:`HttpTelemetry.begin` returned None: the outer
    instrumented app's request this one is nested in, or None (an excluded path)."""
    outer: Any = _get_current().get(_REQUEST_KEY)
    if outer is None or outer._finished:
        return None
    return NestedRequest(outer)


def finishing_chunks(
    content: Iterable[bytes],
    request: Request,
    context: Context,
    *,
    unanswered: bool = False,
    closes: bool = True,
) -> Iterator[bytes]:
    """``content``'s chunks for a streamed response, ending ``request`` at the last one, with
    the exception that stops them, or when the consumer closes early (the client went away:
    not a failure). Every adapter's streamed body goes through here.

    ``context``: the request's, made current only while ``content`` produces each chunk (so
    that what the body logs carries the trace); the adapter restored the caller's context
    before handing the body over, so that it is not left current between chunks (Django's
    body may be read in another task; a WSGI test client reads the first chunk and returns).
    ``unanswered``: nothing reaches the client before the first chunk (WSGI), so an exception
    before it is answered with a 500 whatever status the app had started. ``closes``: an early
    stop closes ``content``, as ``yield from`` would; False where the adapter's body object
    closes it itself (WSGI: the server calls its ``close()``), so that it is closed once.
    """
    iterator: Iterator[bytes] | None = None
    try:
        token = _ctx.attach(context)
        try:
            iterator = iter(content)
            first = next(iterator)  # StopIteration: an empty body
        finally:
            _ctx.detach(token)
        unanswered = False
        yield first
        while True:
            token = _ctx.attach(context)
            try:
                chunk = next(iterator)
            except StopIteration:
                break
            finally:
                _ctx.detach(token)
            yield chunk
    except StopIteration:
        pass
    except GeneratorExit:
        close = getattr(iterator, "close", None) if closes else None
        try:
            if close is not None:  # as ``yield from`` would, with the request's context
                token = _ctx.attach(context)
                try:
                    close()
                finally:
                    _ctx.detach(token)
        finally:
            request.finish()
        raise
    except BaseException as exc:
        if unanswered:
            request.status = None
        request.finish(None, exc)
        raise
    request.finish()


async def finishing_chunks_async(
    content: AsyncIterable[bytes], request: Request, context: Context
) -> AsyncIterator[bytes]:
    """:func:`finishing_chunks` for an asynchronous body."""
    iterator = None
    try:
        token = _ctx.attach(context)
        try:
            iterator = aiter(content)
        finally:
            _ctx.detach(token)
        while True:
            token = _ctx.attach(context)
            try:
                chunk = await anext(iterator)
            except StopAsyncIteration:
                break
            finally:
                _ctx.detach(token)
            yield chunk
    except GeneratorExit:
        close = getattr(iterator, "aclose", None)
        try:
            if close is not None:
                token = _ctx.attach(context)
                try:
                    await close()
                finally:
                    _ctx.detach(token)
        finally:
            request.finish()
        raise
    except asyncio.CancelledError:
        # The task streaming it was cancelled -- Django's ASGI handler does so when the client
        # disconnects --: the client went away, not a failure of the request.
        request.finish()
        raise
    except BaseException as exc:
        request.finish(None, exc)
        raise
    request.finish()


#: The status a request is recorded with when its client went away before any response
#: (nginx's "client closed request"): not a 5xx -- the server did not fail, nobody was answered.
CLIENT_CLOSED = 499


_environ_keys: dict[str, str] = {}


def header_getter_from_environ(environ: Mapping[str, Any]) -> Callable[[str], str | None]:
    """A Getter over a WSGI environ (or Django's ``request.META``): ``HTTP_*`` keys."""

    def get(name: str) -> str | None:
        key = _environ_keys.get(name)
        if key is None:
            key = "HTTP_" + name.upper().replace("-", "_")
            if len(_environ_keys) < 256:
                _environ_keys[name] = key
        value = environ.get(key)
        # PEP 3333 hands header bytes over as latin-1 str; non-ASCII bytes stay as they are and
        # simply fail W3C validation later.
        return None if value is None else str(value)

    return get


def environ_facts(environ: Mapping[str, Any]) -> Facts:
    """The connection facts of a WSGI environ (see :meth:`HttpTelemetry.begin`)."""
    return (
        environ.get("wsgi.url_scheme", "http"),
        environ.get("SERVER_NAME"),
        sc.port(environ.get("SERVER_PORT")),
        environ.get("REMOTE_ADDR"),
        sc.protocol_version(environ.get("SERVER_PROTOCOL")),
        environ.get("QUERY_STRING"),
    )


def header_getter_from_pairs(headers: Sequence[tuple[bytes, bytes]]) -> Callable[[str], str | None]:
    """A Getter over ASGI ``[(name, value)]`` header pairs; repeated headers are comma-joined.

    The pairs are indexed once, at the first lookup (a request asks for two to five headers):
    by ``dict()`` in C, and again with joins only if a name repeats.
    """
    table: dict[bytes, bytes] | None = None

    def get(name: str) -> str | None:
        nonlocal table
        if table is None:
            pairs = headers if isinstance(headers, (list, tuple)) else list(headers)
            table = dict(pairs)
            if len(table) != len(pairs):
                table = {}
                for key, value in pairs:
                    seen = table.get(key)
                    table[key] = value if seen is None else seen + b"," + value
        key = _pair_keys.get(name)
        if key is None:
            key = name.encode("latin-1")
            if len(_pair_keys) < 256:
                _pair_keys[name] = key
        found = table.get(key)
        return None if found is None else found.decode("latin-1")

    return get


#: Header names as ASGI spells them (bytes); the same few are asked for on every request.
_pair_keys: dict[str, bytes] = {}
