"""Pure ASGI middleware: server spans, W3C propagation, RED metrics and /metrics for any ASGI app.

::

    from obskit.asgi import ObskitMiddleware
    app = ObskitMiddleware(app)

It wraps ``send`` only to see the status and the last body chunk, so streaming responses are
timed to their last byte; WebSocket and lifespan scopes pass through untouched. Starlette and
FastAPI record the matched route in ``scope["route"]``; the middleware hands the app a scope that
notices that assignment, so the route template is known *before* the endpoint runs (span name,
in-flight gauge) without matching the routing table a second time.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from obskit.http._pipeline import (
    HttpTelemetry,
    Request,
    ensure_configured,
    header_getter_from_pairs,
)
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


class _RouteScope(dict):  # type: ignore[type-arg]
    """The scope handed to the app: reports ``scope["route"]`` as soon as the router sets it.

    Mounts set it once per level; their paths are joined into one template.
    """

    __slots__ = ("_obskit_prefix", "_obskit_request")
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

    def _route(self, route: Any) -> None:
        request: Request = self._obskit_request
        template = route_template(route, self._obskit_prefix)
        if template is None:
            return
        if hasattr(route, "routes") and not hasattr(route, "endpoint"):
            # A Mount: its path prefixes whatever the inner router matches.
            self._obskit_prefix = template.rstrip("/")
            template = self._obskit_prefix + "/{path}"
        request.set_route(template)

    def copy(self) -> dict[str, Any]:
        return dict(self)


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
        ensure_configured(options)
        self.app = app
        self.telemetry = telemetry or HttpTelemetry()
        self.metrics_path = self.telemetry.metrics_path if serve_metrics else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope.get("path") or "/"
        headers = scope.get("headers") or ()
        if path == self.metrics_path:
            await self._metrics(headers, send)
            return
        server = scope.get("server") or (None, None)
        client = scope.get("client") or (None, None)
        request = self.telemetry.start(
            scope.get("method") or "GET",
            path,
            header_getter_from_pairs(headers),
            scheme=scope.get("scheme", "http"),
            server_address=server[0],
            server_port=server[1],
            client_address=client[0],
            protocol=scope.get("http_version"),
        )
        if request is None:
            await self.app(scope, receive, send)
            return
        inner = _RouteScope(scope)
        inner._obskit_request = request
        inner._obskit_prefix = ""
        inner[SCOPE_KEY] = request
        finished = False

        async def send_wrapper(message: Message) -> None:
            nonlocal finished
            kind = message["type"]
            if kind == "http.response.start":
                request.status = message.get("status")
            await send(message)
            if kind == "http.response.body" and not message.get("more_body", False):
                finished = True
                request.finish(detach=False)

        try:
            await self.app(inner, receive, send_wrapper)
        except BaseException as exc:
            if not finished:
                finished = True
                request.finish(None, exc, detach=False)
            raise
        finally:
            if not finished:
                request.finish(detach=False)
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
