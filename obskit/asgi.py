"""Pure ASGI middleware: server spans, W3C propagation, RED metrics and /metrics for any ASGI app.

::

    from obskit.asgi import ObskitMiddleware
    app = ObskitMiddleware(app)

It wraps ``send`` only to see the status and the last body chunk, so streaming responses are
timed to their last byte; WebSocket and lifespan scopes pass through untouched. The route
template is learnt *before* the endpoint runs (span name, in-flight gauge) without matching the
routing table a second time:

- under FastAPI (0.165+), from FastAPI's own route-selection hook: its router reports the full
  template (include prefixes, mounts) to the per-request telemetry record in
  ``scope["fastapi.telemetry"]``; obskit puts a record there whose "span" forwards the route to
  the request (see :func:`_fastapi_route_hook`);
- elsewhere (Starlette, other routers that set ``scope["route"]``), the app gets a scope that
  notices that assignment (:class:`_RouteScope`, a dict subclass: slower, as every scope access
  then leaves CPython's exact-dict fast path).

Either way a request ends with the last message of its response (its last body chunk; its
trailers, if it announced them; an ``http.response.pathsend``), and the rules for the rarer
statuses (:func:`_ended`: a trailing-slash redirect labelled with its target, a 5xx ended before
its background tasks) are the same on both paths.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from obskit import _selfmetrics
from obskit._runtime import flush_at_shutdown
from obskit.http._pipeline import (
    CLIENT_CLOSED,
    HttpTelemetry,
    Request,
    ensure_configured,
    header_getter_from_pairs,
    untag,
)
from obskit.logging import take_back_framework_loggers
from obskit.metrics.exposition import render

__all__ = ["ObskitMiddleware", "route_template"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
SCOPE_KEY = "obskit.request"


def route_template(route: Any, prefix: str = "") -> str | None:
    """The path template of a Starlette/FastAPI route object (``/items/{item_id}``)."""
    path = getattr(route, "path_format", None) or getattr(route, "path", None)
    if not isinstance(path, str):
        return None
    return prefix + path


def _find_mount(app: Any, endpoint: Any) -> Any:
    """The Mount of ``app``'s router that hands requests to ``endpoint``, or None."""
    router = getattr(app, "router", None)
    for route in getattr(router, "routes", None) or ():
        if getattr(route, "app", None) is endpoint and hasattr(route, "routes"):
            return route
    return None


class _AsgiRequest(Request):
    """A request served over ASGI.

    Its header getter reads the scope's header list, which does not refer back to the request:
    there is no reference cycle to break when it ends (see :meth:`Request.detach`), so the
    headers are simply kept. FastAPI's router reports each route it selects to it, as it would
    to the span of FastAPI's own telemetry record: ``set_attribute("http.route", template)``.
    """

    # Only the context to restore: Request.restore does exactly that.
    detach = Request.restore

    def set_attribute(self, key: str, value: Any) -> None:
        if key == "http.route" and isinstance(value, str):
            self.set_route(value)

    def update_name(self, name: str) -> None:
        pass


def _reports_every_route(router: Any, fastapi_app: Any, depth: int = 0) -> bool:
    """Whether every mount under ``router`` hands requests to a FastAPI app (whose router
    reports its routes too); a plain Starlette app or router under a mount would only be seen
    as ``/mount/{path}`` by FastAPI's hook."""
    for route in getattr(router, "routes", None) or ():
        if hasattr(route, "routes") and hasattr(route, "app"):  # a Mount
            inner = route.app
            if not isinstance(inner, fastapi_app) or depth > 8:
                return False
            if not _reports_every_route(inner.router, fastapi_app, depth + 1):
                return False
    return True


def _fastapi_route_hook(app: Any) -> tuple[Callable[[Request], Any] | None, bool]:
    """For an app that routes with FastAPI: ``record(request)`` gives the value of
    ``scope["fastapi.telemetry"]`` through which FastAPI's router reports the route, the
    exceptions its error handling answers and the target of its trailing-slash redirects; else
    None. Also whether that record learns every route: not if a mount hands requests to a
    non-FastAPI app, whose routes the generic :class:`_RouteScope` must then learn.

    The record is FastAPI's private ``_RequestTelemetry`` (its router checks the type). With no
    tracer and no logger in it, FastAPI starts no span and emits no log of its own; its presence
    also tells FastAPI's native telemetry that this request is instrumented already. If a later
    FastAPI changes that record, this returns None and :class:`_RouteScope` alone is used.
    """
    routing = sys.modules.get("fastapi.routing")
    applications = sys.modules.get("fastapi.applications")
    if routing is None or applications is None:
        return None, False  # FastAPI was never imported: the app is not a FastAPI app
    kinds = (routing.APIRouter, applications.FastAPI)
    level = app
    for _ in range(64):  # down the middleware chain (each holds the next as ``.app``)
        if level is None or isinstance(level, kinds):
            break
        level = getattr(level, "app", None)
    if not isinstance(level, kinds):
        return None, False
    every_route = _reports_every_route(getattr(level, "router", level), applications.FastAPI)
    try:
        from fastapi.telemetry._api import _RequestTelemetry

        fields = dataclasses.fields(_RequestTelemetry)
        names = {field.name for field in fields}
        # Per-request mutable defaults: "data" (given as None) and "_exceptions" (made below).
        factories = {f.name for f in fields if f.default_factory is not dataclasses.MISSING}
        if (
            not {"span", "span_method", "tracer", "logger", "data", "_exceptions"} <= names
            or not factories <= {"data", "_exceptions"}
            or hasattr(_RequestTelemetry, "__post_init__")
        ):
            return None, False
        # Built from a template rather than through the dataclass' __init__ (a third of the
        # cost): the same fields, a fresh exception list, and the listener as the "span".
        template = dict(
            vars(
                _RequestTelemetry(span=None, span_method="GET", tracer=None, logger=None, data=None)
            )
        )
    except Exception:  # another FastAPI: the generic path
        return None, False
    new = object.__new__

    def record(request: Request) -> Any:
        made = new(_RequestTelemetry)
        fields = made.__dict__
        fields.update(template)
        fields["span"] = request  # stands in for the span (see _AsgiRequest)
        fields["span_method"] = request.method
        fields["_exceptions"] = []
        return made

    return record, every_route


class _RouteIfUnknown:
    """The "span" of FastAPI's record on the :class:`_RouteScope` path (a FastAPI app that
    mounts a non-FastAPI app): a route FastAPI's router reports is taken only while the request
    has none -- the target of a trailing-slash redirect, which only FastAPI's router knows (its
    included routers are its own). Every other route is learnt from the scope, which also sees
    the prefixes of the non-FastAPI mounts FastAPI's record does not."""

    __slots__ = ("_request",)

    def __init__(self, request: Request) -> None:
        self._request = request

    def set_attribute(self, key: str, value: Any) -> None:
        if key == "http.route" and isinstance(value, str) and self._request.route is None:
            self._request.set_route(value)

    def update_name(self, name: str) -> None:
        pass


class _RouteScope(dict):  # type: ignore[type-arg]
    """The scope handed to the app: reports ``scope["route"]`` as soon as the router sets it.

    Mounts set it once per level; their paths are joined into one template.
    """

    __slots__ = ("_obskit_pending", "_obskit_prefix", "_obskit_request")
    _obskit_pending: Any
    _obskit_prefix: str
    _obskit_request: Request

    def __setitem__(self, key: str, value: Any) -> None:
        dict.__setitem__(self, key, value)
        if key == "route":
            self._route(value)

    def update(self, *args: Any, **kwargs: Any) -> None:
        dict.update(self, *args, **kwargs)
        if "route" in self and ((args and "route" in args[0]) or "route" in kwargs):
            self._route(dict.__getitem__(self, "route"))
        elif args and isinstance(args[0], dict) and {"root_path", "endpoint"} <= args[0].keys():
            # A Mount's child scope. Starlette's router has set scope["route"] to the Mount
            # already; FastAPI's (0.165+) does not, so find the Mount by the app it hands on.
            endpoint = args[0]["endpoint"]
            mount = _find_mount(dict.get(self, "app"), endpoint)
            if mount is None:
                # A Mount of an included router: FastAPI records it (with the include
                # prefixes) in the effective route context only after this update.
                self._obskit_pending = endpoint
            elif dict.get(self, "route") is not mount:
                self._route(mount)

    def _route(self, route: Any) -> None:
        pending = self._obskit_pending
        if pending is not None:
            self._obskit_pending = None
            mount = getattr(self._context(), "starlette_route", None)
            if getattr(mount, "app", None) is pending and mount is not route:
                self._route(mount)
        request: Request = self._obskit_request
        template = route_template(self._effective(route), self._obskit_prefix)
        if template is None:
            return
        if hasattr(route, "routes") and not hasattr(route, "endpoint"):
            # A Mount: its path prefixes whatever the inner router matches.
            # Its path_format ends in "/{path}": the part the inner router matches.
            self._obskit_prefix = template.removesuffix("/{path}").rstrip("/")
            template = self._obskit_prefix + "/{path}"
        request.set_route(template)

    def _effective(self, route: Any) -> Any:
        """What carries ``route``'s full template.

        FastAPI (0.165+) includes routers lazily: the route it sets in the scope has the path
        of its own router, without the ``include_router(prefix=...)`` prefixes, and the full
        path is on the "effective route context" FastAPI records just before.
        """
        context = self._context()
        if context is not None and getattr(context, "original_route", None) is route:
            starlette_route = getattr(context, "starlette_route", None)
            if isinstance(getattr(starlette_route, "path_format", None), str):
                return starlette_route
            if isinstance(getattr(context, "path_format", None), str):
                return context
        return route

    def _context(self) -> Any:
        """FastAPI's effective route context of the latest match, or None."""
        fastapi_scope = dict.get(self, "fastapi")
        if isinstance(fastapi_scope, dict):
            return fastapi_scope.get("effective_route_context")
        return None

    def _redirected(self) -> None:
        """Report the route a trailing-slash redirect of Starlette's router leads to.

        The router answers a path no route matches with a redirect when one of its routes
        matches the path with its trailing slash added or removed -- the first such route, as
        the router chose it. FastAPI's router reports its own (see :class:`_RouteIfUnknown`).
        Called for a redirect answered with no route known.
        """
        router = dict.get(self, "router")
        routing = sys.modules.get("starlette.routing")
        if routing is None or not getattr(router, "redirect_slashes", False):
            return
        try:
            redirect = dict(self)
            path = redirect["path"]
            redirect["path"] = path.rstrip("/") if path.endswith("/") else path + "/"
            for route in getattr(router, "routes", None) or ():
                if route.matches(redirect)[0] is not routing.Match.NONE:
                    self._route(route)
                    return
        except Exception:  # a router unlike Starlette's: the request stays unmatched
            pass

    def copy(self) -> dict[str, Any]:
        return dict(self)


def _facts(
    scope: Scope,
) -> tuple[str, str | None, int | None, str | None, str | None, str | None]:
    """The connection facts of a SERVER span (see :meth:`HttpTelemetry.begin`); the query
    string's bytes as latin-1 text, as a WSGI server hands them over."""
    server = scope.get("server") or (None, None)
    client = scope.get("client") or (None, None)
    raw = scope.get("query_string")
    query = raw.decode("latin-1") if raw and raw.__class__ is bytes else None
    scheme = scope.get("scheme", "http")
    return (scheme, server[0], server[1], client[0], scope.get("http_version"), query)


def _ended(request: Request, status: int, scope: Scope) -> None:
    """End ``request`` at the last message of its response (sent), whose status is 300 or
    more: the rarer statuses, with the rules of both route paths (FastAPI's hook and
    :class:`_RouteScope`).

    - A redirect with no route known: Starlette's trailing-slash redirect, labelled with the
      route it leads to (FastAPI's router reported its own already).
    - A 5xx ends here too, before the response's background tasks run, with the exception it
      answers. Under FastAPI, its ExceptionTelemetryMiddleware, just inside
      ServerErrorMiddleware, has put that exception in the request's record already. Otherwise
      -- no record, an exception handler's answer (Starlette's ExceptionMiddleware, which
      returns after it), or an app FastAPI mounts that answered its exception itself (a
      Starlette app's own ServerErrorMiddleware) -- the exception is still being handled: a
      framework answers it from the ``except`` block that caught it, in the request's task,
      where ``sys.exc_info()`` is that exception. (An endpoint that returns a 5xx from its own
      ``except`` block has left it by the time the response is sent.)
    """
    if status < 400:
        if request.route is None and scope.__class__ is _RouteScope:
            scope._redirected()
    elif status >= 500:
        errors = getattr(scope.get("fastapi.telemetry"), "_exceptions", None)
        exc = errors[-1] if errors else sys.exc_info()[1]
        if exc is not None and _http_answer(exc):
            exc = None  # HTTPException(503): the app's answer, not a failure of its code
        _end_failed(request, exc)
        return
    request.finish(detach=False)


def _http_answer(exc: BaseException) -> bool:
    """Whether ``exc`` is Starlette's ``HTTPException`` (FastAPI's is a subclass), which an app
    raises to answer with a status: by name, as this module does not import Starlette."""
    return any(
        kind.__name__ == "HTTPException" and kind.__module__.startswith("starlette.")
        for kind in exc.__class__.__mro__
    )


def _end_failed(request: Request, exc: BaseException | None) -> None:
    """End ``request`` with ``exc`` (or tag ``exc`` with it, if it has ended). A client that
    went away while the app read its request body -- Starlette's ``ClientDisconnect``, raised
    when ``receive`` hands over ``http.disconnect``; matched by name, as this module does not
    import Starlette -- is recorded as 499, as Django's adapter records it, not as the 500
    that ServerErrorMiddleware sends to nobody: the server did not fail."""
    kind = exc.__class__
    if kind.__name__ == "ClientDisconnect" and kind.__module__.startswith("starlette."):
        request.finish(CLIENT_CLOSED, detach=False)
    request.finish(None, exc, detach=False)


def _untraced(scope: Scope) -> Scope:
    """``scope`` for a request obskit does not trace (an excluded path, a WebSocket): marked
    the way obskit marks the requests it traces, so that FastAPI's native telemetry (0.165+) of
    an app wrapped directly, ``ObskitMiddleware(FastAPI())``, does not trace it either."""
    if "fastapi.telemetry" in scope:
        return scope
    untraced = dict(scope)
    untraced["fastapi.telemetry"] = None
    return untraced


def _flushing_at_shutdown(send: Send) -> Send:
    """``send`` of a lifespan scope that exports what obskit has queued once the app's shutdown
    is over, before the server hears of it.

    uvicorn re-raises SIGTERM after its graceful shutdown (the exit status a supervisor
    expects), so the process ends by the signal and no ``atexit`` handler -- obskit's flush at
    exit among them -- runs: without this, the spans of a pod's last second would be lost.
    """

    async def forward(message: Message) -> None:
        if message["type"] in ("lifespan.shutdown.complete", "lifespan.shutdown.failed"):
            flush_at_shutdown()  # bounded by the shutdown_timeout option
        await send(message)

    return forward


def _native_telemetry_off(app: Any) -> bool:
    """Switch FastAPI's own request tracing and metrics (0.165+) off for ``app``, as
    ``FastAPI(telemetry={"tracing": False, "metrics": False})`` does; whether either was on.
    Left on, they would start a second SERVER span around obskit's (they run outside every
    user middleware)."""
    config = getattr(app, "_telemetry", None)
    if not isinstance(config, dict) or not (config.get("tracing") or config.get("metrics")):
        return False
    config["tracing"] = False
    config["metrics"] = False
    return True


def _native_tracing_off(scope: Scope) -> bool:
    """Whether FastAPI's own telemetry started this request's SERVER span around obskit's
    middleware (added with ``app.add_middleware``, inside FastAPI's telemetry). If so, obskit
    reuses that span for this request and switches the app's native tracing and metrics off for
    the next ones, as :func:`obskit.fastapi.instrument` does, so every request has one SERVER
    span."""
    native = scope.get("fastapi.telemetry")
    if native is None or getattr(native, "span", None) is None:
        return False  # an outer obskit middleware's marker, or FastAPI's with no span
    try:  # nor its INTERNAL operation spans (dependencies, endpoint, serialization) for this one
        native.tracer = None
    except Exception:  # a FastAPI whose record is not as expected: they are exported
        pass
    if _native_telemetry_off(scope.get("app")):
        _selfmetrics.warn_once(
            "fastapi_native_telemetry",
            "obskit: FastAPI's own telemetry traced a request around obskit's middleware; "
            "obskit reused its span and switched it off for this app. obskit.fastapi."
            "instrument(app) puts obskit outside the app and avoids this.",
        )
    return True


def _route_path(root: str, path: str) -> str:
    """``path`` without the ``root`` path it carries behind a proxy's prefix (``uvicorn
    --root-path /api``): the path the app routes on, as Starlette's ``get_route_path``."""
    if path.startswith(root) and path[len(root) : len(root) + 1] == "/":
        return path[len(root) :]
    return path


class ObskitMiddleware:
    """Wrap an ASGI application (Starlette, FastAPI, or any other).

    Args:
        app: the ASGI application.
        serve_metrics: answer ``metrics_path`` (the option, default ``/metrics``) here.
        telemetry: a prepared :class:`HttpTelemetry`.
        **options: passed to :func:`obskit.configure` if given (or if obskit is not configured).
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        serve_metrics: bool = True,
        telemetry: HttpTelemetry | None = None,
        **options: Any,
    ) -> None:
        ensure_configured(options, "asgi")
        self.app = app
        self.telemetry = telemetry or HttpTelemetry()
        self.serve_metrics = serve_metrics
        record, every_route = _fastapi_route_hook(app)
        self._fastapi_record = record if every_route else None
        #: FastAPI's record on the _RouteScope path, for what only FastAPI's router knows: the
        #: exceptions it answers, the targets of its redirects (see _RouteIfUnknown).
        self._watched_record = None if every_route else record

    async def _serve_untraced(self, scope: Scope, receive: Receive, send: Send) -> None:
        """A request obskit does not trace (an excluded path, a WebSocket)."""
        try:
            await self.app(_untraced(scope), receive, send)
        except BaseException as exc:
            untag(exc)
            raise

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            if scope["type"] == "lifespan":
                # uvicorn.run(app) after configure(logging=True) sets its loggers up again as it
                # starts (its log_config): access lines would be plain text, out of their trace.
                take_back_framework_loggers(("uvicorn", "uvicorn.error", "uvicorn.access"))
                await self.app(scope, receive, _flushing_at_shutdown(send))
                return
            await self._serve_untraced(scope, receive, send)
            return
        if SCOPE_KEY in scope:
            # An instrumented app mounted in an instrumented app: the outer one has the request.
            await self.app(scope, receive, send)
            return
        path = scope.get("path") or "/"
        headers = scope.get("headers") or ()
        root = scope.get("root_path")
        telemetry = self.telemetry
        # Behind a proxy's prefix (uvicorn --root-path) the path carries the root path: the
        # metrics path and the excluded paths are the app's own, matched without it.
        route_path = _route_path(root, path) if root else path
        if (
            route_path == telemetry.metrics_path
            and self.serve_metrics
            and telemetry.answers_metrics()
        ):
            await self._metrics(headers, send)
            return
        if route_path is not path and self.telemetry.excludes(route_path):
            await self._serve_untraced(scope, receive, send)
            return
        adopt = False
        if "fastapi.telemetry" in scope:  # rare: a FastAPI layer outside this middleware
            adopt = _native_tracing_off(scope)
        request = telemetry.begin(
            scope.get("method") or "GET",
            path,
            header_getter_from_pairs(headers),
            _facts,
            scope,
            request_type=_AsgiRequest,
            adopt=adopt,
        )
        if request is None:  # an excluded path (health, metrics): no span of FastAPI's either
            await self._serve_untraced(scope, receive, send)
            return
        fastapi_record = self._fastapi_record
        inner: Scope
        if fastapi_record is not None and not adopt:
            inner = dict(scope)
            inner["fastapi.telemetry"] = fastapi_record(request)
        else:
            inner = route_scope = _RouteScope(scope)
            route_scope._obskit_request = request
            route_scope._obskit_prefix = ""
            route_scope._obskit_pending = None
            if not adopt:
                # FastAPI apps below this middleware (mounted sub-applications) skip their
                # native telemetry when this key is present: obskit's span is the one SERVER span.
                watched = self._watched_record
                if watched is None:
                    inner["fastapi.telemetry"] = None
                else:
                    record = watched(request)
                    record.span = _RouteIfUnknown(request)
                    inner["fastapi.telemetry"] = record
        inner[SCOPE_KEY] = request
        # The message that ends the response: its last body chunk, or its last trailers if
        # http.response.start announced trailers; or an http.response.pathsend.
        ending = "http.response.body"
        more = "more_body"

        async def send_wrapper(message: Message) -> None:
            nonlocal ending, more
            kind = message["type"]
            if kind == "http.response.start":
                request.status = message.get("status")
                if message.get("trailers"):  # rare: the http.response.trailers extension
                    ending, more = "http.response.trailers", "more_trailers"
                await send(message)
                return
            if (kind != ending or message.get(more, False)) and kind != "http.response.pathsend":
                await send(message)
                return
            # The last message: sent outside the request's context (see Request.suspend).
            outside = request.suspend()
            try:
                await send(message)
            finally:
                request.resume(outside)
            status = request.status
            if status.__class__ is int and status >= 300:
                _ended(request, status, inner)
                return
            request.finish(detach=False)

        disconnected = False

        async def receive_wrapper() -> Message:
            nonlocal disconnected
            message = await receive()
            if message["type"] == "http.disconnect":
                disconnected = True
            return message

        try:
            await self.app(inner, receive_wrapper, send_wrapper)
        except BaseException as exc:
            _end_failed(request, exc)
            raise
        finally:
            if not request._finished:  # no last message went out
                # An app that returns unanswered after the client left (Django's ASGI handler
                # cancels its view and returns) did not fail: nobody was there to answer.
                unanswered = disconnected and request.status is None
                request.finish(CLIENT_CLOSED if unanswered else None, detach=False)
            request.detach()

    async def _metrics(self, headers: Any, send: Send) -> None:
        accept = header_getter_from_pairs(headers)("accept")
        body, content_type = render(accept)
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", content_type.encode("latin-1")),
                    (b"content-length", str(len(body)).encode("latin-1")),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})
