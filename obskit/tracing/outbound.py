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

import copy as _copy
import functools
import re
import urllib.parse
from collections.abc import Callable
from typing import Any

import wrapt
from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import SpanKind, StatusCode

from obskit import _selfmetrics, _state
from obskit._version import __version__
from obskit.http import _semconv as sc
from obskit.tracing.propagation import outgoing_span_context
from obskit.tracing.server_span import start_lean_span

__all__ = ["install"]

_installed = False
_SUPPRESS = otel_context._SUPPRESS_INSTRUMENTATION_KEY  # the key contrib instrumentations honour
#: Set by OpenTelemetry's contrib HTTP instrumentations around a send they traced (and by obskit
#: around its own): the HTTP layers below must not trace it again.
_SUPPRESS_HTTP = otel_context._SUPPRESS_HTTP_INSTRUMENTATION_KEY
_CLIENT_DONE = otel_context.create_key("obskit-client-span")
#: The values of the query keys ``url.full`` redacts (``sc.SECRET_QUERY_KEYS``, which SERVER
#: spans' ``url.query`` redacts too) in an error's text (``url: /key?Signature=...`` of urllib3's
#: messages): up to the next ``&``, white space, quote or ``#``.
_SECRET_IN_TEXT = re.compile(
    "(?i)([?&](?:" + "|".join(map(re.escape, sorted(sc.SECRET_QUERY_KEYS))) + r")=)[^&\s'\"#<>]*"
)


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


def _full_url(parts: urllib.parse.SplitResult) -> tuple[str, Callable[[str], str] | None]:
    """``url.full`` as the semantic conventions write it -- credentials as
    ``REDACTED:REDACTED@``, the values of presigned-URL query keys as ``REDACTED``, the fragment
    kept --, and how to scrub the same out of an error's text (None: nothing was redacted)."""
    netloc = parts.netloc
    query = parts.query
    userinfo = None
    if "@" in netloc:
        userinfo, _, host = netloc.rpartition("@")
        netloc = "REDACTED:REDACTED@" + host
    secret = False
    if query:
        redacted = sc.redact_query(query)
        secret = redacted != query
        query = redacted
    full = urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))
    if userinfo is None and not secret:
        return full, None
    return full, functools.partial(_scrub, userinfo, secret)


def _scrub(userinfo: str | None, secret: bool, text: str) -> str:
    """``text`` (an error's message or traceback) with what ``url.full`` redacted redacted."""
    if userinfo:
        text = text.replace(userinfo + "@", "REDACTED:REDACTED@")
    if secret:
        text = _SECRET_IN_TEXT.sub(r"\1REDACTED", text)
    return text


def _start(method: str, url: str) -> tuple[Any, object, Any] | None:
    """Start a CLIENT span for ``method url``; None when suppressed, nested or not tracing."""
    if otel_context.get_value(_SUPPRESS) or otel_context.get_value(_CLIENT_DONE):
        return None
    runtime = _state.runtime
    if runtime is None or runtime.closed or runtime.processor is None:
        # Not configured, shut down, disabled or traces off: the hooks stay installed but
        # leave the request untouched -- no span, and no traceparent of an unsampled span that
        # would turn tracing off downstream or overwrite one the caller set.
        return None
    original = method
    # requests and httpx send the method upper-cased whatever the caller gave.
    method = method.upper()
    label = method if method in runtime.config.known_methods else sc.OTHER_METHOD
    parts = urllib.parse.urlsplit(url)
    # SplitResult parses the netloc again on every .hostname and .port: once each here.
    host = parts.hostname
    try:
        given_port = parts.port
    except ValueError:  # past 65535: httpx sends it, urllib.parse refuses it
        given_port = None
    full, scrub = _full_url(parts)
    attributes: dict[str, Any] = {sc.HTTP_REQUEST_METHOD: label, "url.full": full}
    if label == sc.OTHER_METHOD:
        attributes[sc.HTTP_REQUEST_METHOD_ORIGINAL] = original[:64]
    if host:
        attributes[sc.SERVER_ADDRESS] = host
    port = given_port or sc.DEFAULT_PORTS.get(parts.scheme)
    if port:
        attributes[sc.SERVER_PORT] = port
    name = sc.span_name(label)
    # Straight to obskit's pipeline, as the request pipeline's SERVER spans.
    span = start_lean_span(name, SpanKind.CLIENT, _SCOPE)
    if span is None:
        span = _tracer().start_span(name, kind=SpanKind.CLIENT, attributes=attributes)
    elif span.is_recording():
        span.set_attributes(attributes)
    ctx = otel_context.set_value(_CLIENT_DONE, True, trace.set_span_in_context(span))
    # While the client sends, the HTTP layers below it (urllib3, httpx's transport) are not
    # traced again by OpenTelemetry's contrib instrumentations: this span is the request's.
    token = otel_context.attach(otel_context.set_value(_SUPPRESS_HTTP, True, ctx))
    return span, token, scrub


def _inject(headers: Any, context: Any = None) -> None:
    # Inject from the context that holds the CLIENT span, so the server's parent is this span.
    # A tracestate the caller set belongs to another trace context: it must not go out beside
    # this traceparent (the propagator writes none when this trace has no state).
    try:
        del headers["tracestate"]  # both clients' headers are case-insensitive
    except KeyError:
        pass
    propagate.inject(headers, context)


def _end(state: tuple[Any, object, Any], status: Any, exc: BaseException | None) -> None:
    span, token, scrub = state
    try:
        try:
            code = None if status is None else int(status)
        except (TypeError, ValueError):  # a custom adapter's or a test double's odd status
            code = None
        try:
            if code is not None:
                span.set_attribute(sc.HTTP_RESPONSE_STATUS_CODE, code)
                if code >= 400:  # client spans: 4xx and 5xx are errors (HTTP semconv)
                    span.set_attribute(sc.ERROR_TYPE, str(code))
                    span.set_status(StatusCode.ERROR)
            if exc is not None:
                # An error's text names the URL too (urllib3's "Max retries exceeded with url:
                # /key?Signature=..."): redacted as url.full is, when it had something to.
                sc.mark_exception(span, exc, scrub)
        finally:
            span.end()
    finally:
        try:
            otel_context.detach(token)  # type: ignore[arg-type]
        except Exception:
            pass


def _safe_start(request: Any, copy: Any) -> tuple[tuple[Any, object, Any] | None, Any]:
    """Start the CLIENT span of ``request`` (or none) and write the trace headers, when there
    are any to write, into ``copy(request)``: ``(span state, the copy or None)``."""
    state = None
    try:
        if otel_context.get_value(_SUPPRESS_HTTP) and not otel_context.get_value(_CLIENT_DONE):
            # Another HTTP instrumentation (OpenTelemetry contrib's) traced this send and set
            # its traceparent already: neither a second span nor another header.
            return None, None
        state = _start(str(request.method), str(request.url))
        if (
            state is not None
            # Inside a CLIENT span (a redirect hop, a call a response hook or an auth refresh
            # makes): no span of its own, but the request stays in the trace.
            or (otel_context.get_value(_CLIENT_DONE) and not otel_context.get_value(_SUPPRESS))
        ):
            own = copy(request)
            _inject(own.headers)
            return state, own
        if not _tracing():
            # Traces off, inside a request that carried a trace context: the request pipeline
            # made that remote context current; forward it unchanged so the trace (and its
            # sampling decision) continues downstream -- also from inside a span opened on the
            # way, which nobody exports (obskit.tracing.sampling.Forwarded).
            sent = outgoing_span_context(trace.get_current_span().get_span_context())
            if sent.is_valid:
                own = copy(request)
                _inject(own.headers, trace.set_span_in_context(trace.NonRecordingSpan(sent)))
                return None, own
        return state, None
    except Exception as exc:
        if state is not None:  # its context must not stay current in the caller's code
            _safe_end(state, None, None)
        _selfmetrics.internal_error("outbound_start", exc)
        return None, None


def _safe_end(
    state: tuple[Any, object, Any] | None, status: Any, exc: BaseException | None
) -> None:
    if state is None:
        return
    try:
        _end(state, status, exc)
    except Exception as error:
        _selfmetrics.internal_error("outbound_end", error)


def _copier(request: Any) -> Any:
    """How to copy ``request`` (a client's own request type), or None for anything else (the
    client refuses it as without obskit: ``Session.send(requests.Request(...))``).

    The trace headers go into a copy, never into the caller's object: one request object sent
    from two threads at once then carries each send's own traceparent, and a later untraced
    send of it no stale one."""
    copy = _COPIERS.get(type(request))
    if copy is None:
        # A subclass (a custom adapter's or transport's request type): copied as its own class,
        # with its own attributes.
        for kind, maker in _SUBCLASS_COPIERS.items():
            if isinstance(request, kind):
                return maker
    return copy


def _replaced(own: Any, args: Any, kwargs: Any) -> tuple[Any, Any]:
    if args:
        return (own, *args[1:]), kwargs
    return args, {**kwargs, "request": own}


def _status(response: Any) -> Any:
    return getattr(response, "status_code", None)


def _begin(args: Any, kwargs: Any) -> tuple[Any, Any, Any]:
    """``(span state, args, kwargs)`` for a client's ``send``: the CLIENT span started and, when
    there are trace headers to send, the request replaced by a copy carrying them."""
    request = args[0] if args else kwargs.get("request")
    copy = _copier(request)
    if copy is None:
        return None, args, kwargs
    state, own = _safe_start(request, copy)
    if own is not None:
        args, kwargs = _replaced(own, args, kwargs)
    return state, args, kwargs


def _sync_send(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
    """``requests.Session.send`` and ``httpx.Client.send``: both take the prepared request."""
    state, args, kwargs = _begin(args, kwargs)
    try:
        response = wrapped(*args, **kwargs)
    except BaseException as exc:
        _safe_end(state, None, exc)
        raise
    _safe_end(state, _status(response), None)
    return response


async def _async_send(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
    state, args, kwargs = _begin(args, kwargs)
    try:
        response = await wrapped(*args, **kwargs)
    except BaseException as exc:
        _safe_end(state, None, exc)
        raise
    _safe_end(state, _status(response), None)
    return response


#: How each client's own request type is copied (filled in as the clients are imported).
_COPIERS: dict[type, Any] = {}
#: How a subclass of one is copied.
_SUBCLASS_COPIERS: dict[type, Any] = {}


def _copy_httpx(kind: Any, request: Any) -> Any:
    """A new ``httpx.Request`` (``kind``) sending the same: method, URL, a copy of the headers,
    the same body stream and extensions (timeouts)."""
    copy = kind(
        request.method,
        request.url,
        headers=request.headers.copy(),
        stream=request.stream,
        extensions=dict(request.extensions),
    )
    content = getattr(request, "_content", None)
    if content is not None:  # read already (an auth flow, an event hook): as read
        copy._content = content
    return copy


def _copy_prepared_subclass(request: Any) -> Any:
    """A copy of a ``requests.PreparedRequest`` subclass, of its class: what
    ``PreparedRequest.copy`` copies (headers, cookie jar) copied, the rest shared as there."""
    own = _copy.copy(request)
    headers = request.headers
    own.headers = None if headers is None else headers.copy()
    jar = getattr(request, "_cookies", None)
    if jar is not None:
        own._cookies = jar.copy() if hasattr(jar, "copy") else _copy.copy(jar)
    return own


def _copy_httpx_subclass(request: Any) -> Any:
    """A copy of an ``httpx.Request`` subclass, of its class, sending the same (as
    :func:`_copy_httpx`): a copy of the headers and extensions, the same body stream."""
    own = _copy.copy(request)
    own.stream = request.stream  # httpx.Request's __getstate__ leaves the stream out
    own.headers = request.headers.copy()
    own.extensions = dict(request.extensions)
    return own


def install() -> None:
    """Hook ``requests`` and ``httpx`` when (or if already) imported. Idempotent."""
    global _installed
    if _installed:
        return
    _installed = True

    @wrapt.when_imported("requests")
    def _hook_requests(module: Any) -> None:
        _COPIERS[module.PreparedRequest] = module.PreparedRequest.copy
        _SUBCLASS_COPIERS[module.PreparedRequest] = _copy_prepared_subclass
        wrapt.wrap_function_wrapper(module, "Session.send", _sync_send)

    def _hook_httpx(module: Any) -> None:
        _COPIERS[module.Request] = functools.partial(_copy_httpx, module.Request)
        _SUBCLASS_COPIERS[module.Request] = _copy_httpx_subclass
        wrapt.wrap_function_wrapper(module, "Client.send", _sync_send)
        wrapt.wrap_function_wrapper(module, "AsyncClient.send", _async_send)

    wrapt.when_imported("httpx")(_hook_httpx)
