"""The Django middleware: sync- and async-capable, driving the shared request pipeline."""

from __future__ import annotations

import asyncio
import sys
import weakref
from collections.abc import Awaitable, Callable
from typing import Any

try:
    from asgiref.sync import iscoroutinefunction, markcoroutinefunction
    from django.conf import settings
    from django.core.signals import got_request_exception
    from django.http import HttpRequest, HttpResponseBase
except ImportError as exc:  # pragma: no cover - exercised without the extra
    raise ImportError("obskit.django needs Django: pip install 'obskit[django]'") from exc

from obskit.http._pipeline import (
    CLIENT_CLOSED,
    HttpTelemetry,
    NestedRequest,
    Request,
    ensure_configured,
    environ_facts,
    finishing_chunks,
    finishing_chunks_async,
    header_getter_from_environ,
    nested_request,
    untag,
)
from obskit.tracing import _fastctx as _ctx
from obskit.wsgi import ENVIRON_KEY

__all__ = ["ObskitMiddleware", "route_of"]

#: Where the request keeps its obskit request (obskit.logging reads it off Django's log lines).
_ATTR = "_obskit_request"


def route_of(request: HttpRequest) -> str | None:
    """The matched URL pattern (``/items/<int:item_id>``), or None when nothing matched."""
    match = getattr(request, "resolver_match", None)
    route = getattr(match, "route", None)
    if not isinstance(route, str):
        return None
    # path("") -- the site root, or the root of an include() -- matches with route "".
    return route if route.startswith("/") else "/" + route


def _facts(
    request: HttpRequest,
) -> tuple[str, str | None, int | None, str | None, str | None, str | None]:
    """The connection facts of a SERVER span; the scheme as Django sees it (which honours
    ``SECURE_PROXY_SSL_HEADER``), the query string from ``META`` (under ASGI too)."""
    return (request.scheme or "http", *environ_facts(request.META)[1:])


def _nested_route(request: HttpRequest, response: Any) -> Any:
    """Under obskit's WSGI/ASGI middleware: the route of a request answered before its view
    (an earlier middleware's ``process_view``: a CSRF refusal), as ``_done`` does it for a
    request of the Django middleware's own."""
    outer = nested_request()
    if outer is not None and outer.outer.route is None:
        route = route_of(request)
        if route:
            outer.set_route(route, in_flight=False)
    return response


def _exception_raised(sender: Any, request: HttpRequest | None = None, **kwargs: Any) -> None:
    """``got_request_exception``: Django answers 500 for an exception raised anywhere below the
    middleware (another middleware's ``__call__`` or ``process_view`` too, which
    ``process_exception`` does not see); the span gets the exception, not just the status."""
    try:
        exc = sys.exc_info()[1]
        obs: Request | NestedRequest | None = getattr(request, _ATTR, None) or nested_request()
        if exc is not None and obs is not None and obs.handled is None:
            obs.handled = exc
        elif exc is not None and obs is None:  # an excluded path: its line names no request
            untag(exc)
    except Exception:  # a signal receiver must not turn Django's 500 into another error
        pass


got_request_exception.connect(_exception_raised, dispatch_uid="obskit.django.exception")


class ObskitMiddleware:
    """Server span, W3C propagation and RED metrics for every Django request."""

    sync_capable = True
    async_capable = True

    def __init__(self, get_response: Callable[[HttpRequest], Any]) -> None:
        self.get_response = get_response
        ensure_configured(dict(getattr(settings, "OBSKIT", {}) or {}), "django")
        self.telemetry = HttpTelemetry()
        self.is_async = iscoroutinefunction(get_response)
        if self.is_async:
            markcoroutinefunction(self)

    def _start(self, request: HttpRequest) -> Request | None:
        path_info = request.path_info
        if path_info == self.telemetry.metrics_path:
            # The scrape (obskit.django.urls), wherever the site is mounted (SCRIPT_NAME): not
            # the service's traffic.
            return None
        if path_info != request.path and self.telemetry.excludes(path_info):
            # Behind a mount prefix (SCRIPT_NAME, uvicorn --root-path) the excluded paths are
            # the site's own, as for the ASGI middleware: /api/healthz is /healthz.
            return None
        return self.telemetry.begin(
            request.method or "GET",
            request.path,
            header_getter_from_environ(request.META),
            _facts,
            request,
        )

    def __call__(self, request: HttpRequest) -> Any:
        if self.is_async:
            return self.__acall__(request)
        obs = self._start(request)
        if obs is None:
            return _nested_route(request, self.get_response(request))
        setattr(request, _ATTR, obs)
        # Under WSGI, META is the environ: obskit.gunicorn.Logger finds the request there to
        # write its access line in the request's trace.
        request.META[ENVIRON_KEY] = obs
        try:
            response = self.get_response(request)
        except BaseException as exc:
            obs.finish(None, exc)
            raise
        return self._done(request, obs, response)

    async def __acall__(self, request: HttpRequest) -> Any:
        obs = self._start(request)
        get_response: Callable[[HttpRequest], Awaitable[Any]] = self.get_response
        if obs is None:
            return _nested_route(request, await get_response(request))
        setattr(request, _ATTR, obs)
        try:
            response = await get_response(request)
        except asyncio.CancelledError:
            # Django's ASGI handler cancels the view when the client disconnects: nobody is
            # answered, and the server did not fail (no 500, no ERROR span).
            obs.finish(obs.status or CLIENT_CLOSED)
            raise
        except BaseException as exc:
            obs.finish(None, exc)
            raise
        return self._done(request, obs, response)

    def _done(
        self, request: HttpRequest, obs: Request, response: HttpResponseBase
    ) -> HttpResponseBase:
        if obs.route is None:
            route = route_of(request)
            if route:
                obs.set_route(route, in_flight=False)
        status = response.status_code
        if getattr(response, "streaming", False):
            # Time the stream to its last chunk, which the server reads after this frame returned:
            # restore the caller's context now (sync too, or the thread keeps the span current).
            obs.status = status
            closers = getattr(response, "_resource_closers", None)
            if isinstance(closers, list):
                # The server closes every response it sends, read or not (HEAD): the request
                # ends then at the latest.
                closers.append(obs.finish)
            # A response dropped unsent (an outer middleware's 304 in its place) is never closed:
            # the request ends when it is freed.
            weakref.finalize(response, obs.finish)
            # A file is left to the server's file wrapper (sendfile); the close above ends it.
            if getattr(response, "file_to_stream", None) is None or not isinstance(closers, list):
                content = response.streaming_content
                context = _ctx.get_current()
                if hasattr(content, "__aiter__"):
                    response.streaming_content = finishing_chunks_async(content, obs, context)
                else:
                    response.streaming_content = finishing_chunks(content, obs, context)
            obs.detach()
            return response
        obs.finish(status)
        return response

    def process_view(self, request: HttpRequest, *args: Any, **kwargs: Any) -> None:
        """Route template known before the view runs: span name and in-flight gauge."""
        obs: Request | NestedRequest | None = getattr(request, _ATTR, None) or nested_request()
        if obs is not None:
            route = route_of(request)
            if route:
                obs.set_route(route)

    def process_exception(self, request: HttpRequest, exception: Exception) -> None:
        """Django turns view exceptions into 500 responses; keep the exception for the span.

        It is recorded when the request finishes with a 5xx status (``Http404`` and friends
        become 4xx responses, which are not server errors).
        """
        obs: Request | NestedRequest | None = getattr(request, _ATTR, None) or nested_request()
        if obs is not None:
            obs.handled = exception
        else:  # an excluded path: Django's "Internal Server Error" line names no request
            untag(exception)
