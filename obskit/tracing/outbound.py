"""Outbound HTTP: CLIENT spans and injected trace headers for ``requests`` and ``httpx``.

Installed by :func:`obskit.configure` with ``wrapt``'s post-import hooks, so the order of imports
does not matter and nothing is imported that the application does not use. The wrappers patch
``requests.Session.send``, ``httpx.Client.send`` and ``httpx.AsyncClient.send``: every request of
those libraries, whatever API it went through, passes there once. obskit's own exporters use
``http.client`` and grpcio, so exports are never traced.

The client's exception reaches the caller unchanged; obskit's own failures are counted, never
raised.
"""

from __future__ import annotations

import urllib.parse
from typing import Any

import wrapt
from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import SpanKind, StatusCode

from obskit import _selfmetrics, _state
from obskit._version import __version__
from obskit.http import _semconv as sc
from obskit.tracing.server_span import start_lean_span

__all__ = ["install"]

_installed = False
_SUPPRESS = otel_context._SUPPRESS_INSTRUMENTATION_KEY  # the key contrib instrumentations honour
_CLIENT_DONE = otel_context.create_key("obskit-client-span")


_cached_tracer: trace.Tracer | None = None
#: The instrumentation scope of CLIENT spans made as lean spans (the tracer's name otherwise).
_SCOPE = InstrumentationScope("obskit.client", __version__)


def _tracer() -> trace.Tracer:
    # obskit's provider lives for the whole process (reconfiguring swaps what is behind it), so
    # one tracer serves every call; get_tracer() itself costs microseconds.
    global _cached_tracer
    if _cached_tracer is None:
        from obskit._runtime import tracer_provider

        _cached_tracer = tracer_provider().get_tracer("obskit.client", __version__)
    return _cached_tracer


def _tracing() -> bool:
    """Whether obskit records spans: configured, not shut down, with a span pipeline."""
    runtime = _state.runtime
    return runtime is not None and not runtime.closed and runtime.processor is not None


def _full_url(parts: urllib.parse.SplitResult, host: str | None, port: int | None) -> str:
    """``url.full`` without credentials (semantic conventions: never record them)."""
    host = host or ""
    if ":" in host:  # an IPv6 literal keeps its brackets
        host = f"[{host}]"
    netloc = host if port is None else f"{host}:{port}"
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, parts.query, ""))


def _start(method: str, url: str) -> tuple[Any, object] | None:
    """Start a CLIENT span for ``method url``; None when suppressed, nested or not tracing."""
    if otel_context.get_value(_SUPPRESS) or otel_context.get_value(_CLIENT_DONE):
        return None
    if not _tracing():
        # Not configured, shut down, disabled or traces off: the hooks stay installed but
        # leave the request untouched -- no span, and no traceparent of an unsampled span that
        # would turn tracing off downstream or overwrite one the caller set.
        return None
    method = method.upper()
    label = method if method in sc.METHODS else sc.OTHER_METHOD
    parts = urllib.parse.urlsplit(url)
    # SplitResult parses the netloc again on every .hostname and .port: once each here.
    host, given_port = parts.hostname, parts.port
    attributes: dict[str, Any] = {
        sc.HTTP_REQUEST_METHOD: label,
        "url.full": _full_url(parts, host, given_port),
    }
    if host:
        attributes[sc.SERVER_ADDRESS] = host
    port = given_port or {"http": 80, "https": 443}.get(parts.scheme)
    if port:
        attributes[sc.SERVER_PORT] = port
    name = "HTTP" if label == sc.OTHER_METHOD else label
    # Straight to obskit's pipeline, as the request pipeline's SERVER spans.
    span = start_lean_span(name, SpanKind.CLIENT, _SCOPE)
    if span is None:
        span = _tracer().start_span(name, kind=SpanKind.CLIENT, attributes=attributes)
    elif span.is_recording():
        span.set_attributes(attributes)
    ctx = trace.set_span_in_context(span)
    token = otel_context.attach(otel_context.set_value(_CLIENT_DONE, True, ctx))
    return span, token


def _inject(headers: Any) -> None:
    # Inject from the context that holds the CLIENT span, so the server's parent is this span.
    propagate.inject(headers)


def _end(state: tuple[Any, object], status: int | None, exc: BaseException | None) -> None:
    span, token = state
    try:
        if status is not None:
            span.set_attribute(sc.HTTP_RESPONSE_STATUS_CODE, status)
            if status >= 400:  # client spans: 4xx and 5xx are errors (HTTP semconv)
                span.set_attribute(sc.ERROR_TYPE, str(status))
                span.set_status(StatusCode.ERROR)
        if exc is not None:
            span.record_exception(exc)
            span.set_attribute(sc.ERROR_TYPE, sc.error_type(exc))
            span.set_status(StatusCode.ERROR, sc.status_description(exc))
        span.end()
    finally:
        try:
            otel_context.detach(token)  # type: ignore[arg-type]
        except Exception:
            pass


def _safe_start(method: Any, url: Any, headers: Any) -> tuple[Any, object] | None:
    try:
        state = _start(str(method), str(url))
        if state is not None:
            try:
                _inject(headers)
            except Exception:
                # Its context must not stay current in the caller's code: end it, restore.
                _end(state, None, None)
                raise
        elif otel_context.get_value(_CLIENT_DONE) and not otel_context.get_value(_SUPPRESS):
            # Inside a CLIENT span (a redirect hop, a call a response hook or an auth refresh
            # makes): no span of its own, but the request stays in the trace.
            _inject(headers)
        elif not _tracing() and trace.get_current_span().get_span_context().is_valid:
            # Traces off, inside a request that carried a trace context: the request pipeline
            # made that remote context current; forward it unchanged so the trace (and its
            # sampling decision) continues downstream.
            _inject(headers)
        return state
    except Exception as exc:
        _selfmetrics.internal_error("outbound_start", exc)
        return None


def _safe_end(state: tuple[Any, object] | None, status: Any, exc: BaseException | None) -> None:
    if state is None:
        return
    try:
        _end(state, int(status) if status is not None else None, exc)
    except Exception as error:
        _selfmetrics.internal_error("outbound_end", error)


def _sync_send(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
    """``requests.Session.send`` and ``httpx.Client.send``: both take the prepared request."""
    request = args[0] if args else kwargs.get("request")
    state = _safe_start(request.method, request.url, request.headers) if request else None
    try:
        response = wrapped(*args, **kwargs)
    except BaseException as exc:
        _safe_end(state, None, exc)
        raise
    _safe_end(state, getattr(response, "status_code", None), None)
    return response


async def _async_send(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
    request = args[0] if args else kwargs.get("request")
    state = _safe_start(request.method, request.url, request.headers) if request else None
    try:
        response = await wrapped(*args, **kwargs)
    except BaseException as exc:
        _safe_end(state, None, exc)
        raise
    _safe_end(state, getattr(response, "status_code", None), None)
    return response


def install() -> None:
    """Hook ``requests`` and ``httpx`` when (or if already) imported. Idempotent."""
    global _installed
    if _installed:
        return
    _installed = True

    @wrapt.when_imported("requests")
    def _hook_requests(module: Any) -> None:
        wrapt.wrap_function_wrapper(module, "Session.send", _sync_send)

    def _hook_httpx(module: Any) -> None:
        wrapt.wrap_function_wrapper(module, "Client.send", _sync_send)
        wrapt.wrap_function_wrapper(module, "AsyncClient.send", _async_send)

    wrapt.when_imported("httpx")(_hook_httpx)
