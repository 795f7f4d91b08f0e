"""WSGI middleware: any WSGI app gets server spans, W3C propagation, RED metrics and /metrics.

::

    from obskit.wsgi import ObskitMiddleware
    app = ObskitMiddleware(app, route_resolver=lambda environ: ...)

Frameworks that know their route templates (Flask, via :mod:`obskit.flask`) set the route on the
request object the middleware puts in ``environ["obskit.request"]``; one that turns an unhandled
exception into a 5xx response sets it as that request's ``handled`` exception, so the span
records it once, with its type as ``error.type``.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from opentelemetry.context import Context

from obskit.http._pipeline import (
    HttpTelemetry,
    Request,
    ensure_configured,
    environ_facts,
    finishing_chunks,
    header_getter_from_environ,
    untag,
)
from obskit.metrics.exposition import render
from obskit.tracing import _fastctx as _ctx

__all__ = ["ENVIRON_KEY", "ObskitMiddleware"]

ENVIRON_KEY = "obskit.request"

StartResponse = Callable[..., Any]
WSGIApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]


class _Finishing:
    """A streamed response body (see :func:`~obskit.http._pipeline.finishing_chunks`), whose
    chunks are made with the request's context current; its ``close()`` -- which the server
    calls, sent or not -- ends the request too."""

    __slots__ = ("_context", "_iterable", "_request")

    def __init__(self, iterable: Iterable[bytes], request: Request, context: Context) -> None:
        self._iterable = iterable
        self._request = request
        self._context = context

    def __iter__(self) -> Iterator[bytes]:
        return finishing_chunks(
            self._iterable, self._request, self._context, unanswered=True, closes=False
        )

    def close(self) -> None:
        request = self._request
        try:
            close = getattr(self._iterable, "close", None)
            if close is not None:
                close()
        except BaseException as exc:
            request.finish()  # ends the request as a close() that returned would
            request.finish(None, exc)  # then only tags exc: the server's traceback line is ours
            raise
        request.finish()

    def __del__(self) -> None:
        if not self._request._finished:  # read or closed: nothing to do (the usual case)
            try:
                _freed(self._request, self._context)
            except Exception:  # at interpreter exit, this module's globals may be gone
                pass


def _text(value: str) -> str:
    """A PEP 3333 path (``PATH_INFO``, ``SCRIPT_NAME``) as text: the server hands its bytes over
    decoded as latin-1, and URLs are UTF-8 (as Django and ASGI servers decode them; an invalid
    byte becomes U+FFFD). Called for a path that is not ASCII only; one a server already decoded
    (characters beyond latin-1) is kept as it is."""
    try:
        return value.encode("latin-1").decode("utf-8", "replace")
    except Exception:
        return value


def _freed(request: Request, context: Context) -> None:
    """A body freed unclosed: an outer middleware dropped it for one of its own (PEP 3333 says
    it must close it; not all do). The request still ends, and its context (``context``), left
    current on this thread, is reset if it still is -- else every later request here would be
    taken for a nested one, and every later line logged in a dead trace."""
    if not request._finished:
        request.finish(detach=_ctx.get_current() is context)


def _finish_on_close(iterable: Any, request: Request, context: Context) -> bool:
    """Make ``iterable.close()`` (the server's file wrapper) end ``request`` too, as freeing it
    unclosed does; False if its ``close`` cannot be replaced."""
    close = getattr(iterable, "close", None)

    def finishing_close() -> None:
        try:
            if close is not None:
                close()
        except BaseException as exc:
            request.finish()
            request.finish(None, exc)  # only tags exc, as in _Finishing.close
            raise
        request.finish()

    try:
        iterable.close = finishing_close
    except Exception:
        return False
    try:
        weakref.finalize(iterable, _freed, request, context)
    except TypeError:  # not weakly referable: ended at close() only
        pass
    return True


class ObskitMiddleware:
    """Wrap a WSGI application.

    Args:
        app: the WSGI application.
        route_resolver: ``environ -> route template or None``, called after the app returns
            when the framework adapter has not set a route.
        serve_metrics: answer ``metrics_path`` (the option, default ``/metrics``) here.
        telemetry: a prepared :class:`HttpTelemetry` (adapters share one per app).
        **options: passed to :func:`obskit.configure` if given (or if obskit is not configured).
    """

    def __init__(
        self,
        app: WSGIApp,
        *,
        route_resolver: Callable[[dict[str, Any]], str | None] | None = None,
        serve_metrics: bool = True,
        telemetry: HttpTelemetry | None = None,
        **options: Any,
    ) -> None:
        ensure_configured(options, "wsgi")
        self.app = app
        self.route_resolver = route_resolver
        self.telemetry = telemetry or HttpTelemetry()
        self.serve_metrics = serve_metrics

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO") or "/"
        if not path.isascii():
            path = _text(path)
        telemetry = self.telemetry
        if path == telemetry.metrics_path and self.serve_metrics and telemetry.answers_metrics():
            body, content_type = render(environ.get("HTTP_ACCEPT"))
            start_response(
                "200 OK", [("Content-Type", content_type), ("Content-Length", str(len(body)))]
            )
            return [body]
        script = environ.get("SCRIPT_NAME")
        if script and not script.isascii():
            script = _text(script)
        request = telemetry.begin(
            environ.get("REQUEST_METHOD") or "GET",
            # url.path is the path the client asked for: the mount point too (as Django's
            # request.path has it); excluded paths are matched against the same.
            script + path if script else path,
            header_getter_from_environ(environ),
            environ_facts,
            environ,
        )
        if request is None:
            try:
                return self.app(environ, start_response)
            except BaseException as exc:
                untag(exc)
                raise
        environ[ENVIRON_KEY] = request

        def _start_response(status: str, headers: Any, exc_info: Any = None) -> Any:
            try:
                request.status = int(status[:3])
            except (ValueError, TypeError):  # not "NNN reason": the server's to refuse, not ours
                request.status = None
            return start_response(status, headers, exc_info)

        try:
            iterable = self.app(environ, _start_response)
        except BaseException as exc:
            self._resolve(environ, request)
            # No body: the server answers 500, whatever status the app had started.
            request.status = None
            request.finish(None, exc)
            raise
        self._resolve(environ, request)
        if isinstance(iterable, (list, tuple)):
            # The body is already in memory: nothing is left to time.
            request.finish()
            return iterable
        # The request's context is not left current on this thread once the app has returned:
        # until the body was read to its end or closed, every later request here would be
        # taken for one nested in it and not counted (a test client's response kept, partly
        # read, while the next request is made). It is current again while a chunk is made.
        context = _ctx.get_current()
        request.restore()
        # The server's own file wrapper makes its instances itself (werkzeug's wrap_file,
        # Django's handler): their class is the one in the environ.
        if iterable.__class__ is environ.get("wsgi.file_wrapper") and _finish_on_close(
            iterable, request, context
        ):
            # Returned as it is, so that the server can still send the file its own way
            # (sendfile); the request ends when the server closes it.
            return iterable
        return _Finishing(iterable, request, context)

    def _resolve(self, environ: dict[str, Any], request: Request) -> None:
        if request.route is None and self.route_resolver is not None:
            try:
                route = self.route_resolver(environ)
            except Exception:
                route = None
            if route:
                request.set_route(route, in_flight=False)
