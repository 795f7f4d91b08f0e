"""FastAPI / Starlette: ``instrument(app)``.

::

    from fastapi import FastAPI
    from obskit.fastapi import instrument

    app = FastAPI()
    instrument(app, service_name="checkout")

Puts :class:`obskit.asgi.ObskitMiddleware` (pure ASGI) outside the app's whole middleware
stack, Starlette's ``ServerErrorMiddleware`` included (as OpenTelemetry's FastAPI
instrumentation does): an exception handler for ``500``/``Exception`` then runs inside the
request's trace (its log lines carry the trace id) and the status it answers with is the one
counted, with the exception on the span. FastAPI 0.165+ has its own OpenTelemetry support, which
starts a SERVER span (and INTERNAL operation spans) as soon as a global TracerProvider exists --
obskit installs one, so both would trace every request. ``instrument()`` therefore switches
FastAPI's own request tracing and metrics off for this app
(``FastAPI(telemetry={"tracing": False, "metrics": False})`` has the same effect) and keeps
obskit's single SERVER span, which also carries what FastAPI's would: route template, status,
exception. FastAPI's INTERNAL operation spans hang off its own SERVER span, so they go with it.
"""

from __future__ import annotations

import functools
import sys
import types
from typing import TYPE_CHECKING, Any, TypeVar

try:
    import starlette.applications
except ImportError as exc:  # pragma: no cover - exercised without the extra
    raise ImportError("obskit.fastapi needs FastAPI: pip install 'obskit[fastapi]'") from exc

from obskit.asgi import ObskitMiddleware, _native_telemetry_off
from obskit.http._pipeline import HttpTelemetry, ensure_configured

if TYPE_CHECKING:
    if sys.version_info >= (3, 11):
        from typing import Unpack
    else:
        from typing_extensions import Unpack

    from obskit._options import Options

__all__ = ["instrument"]

#: The application's own class (``FastAPI``...), which ``instrument()`` returns it as.
App = TypeVar("App", bound=starlette.applications.Starlette)


def instrument(app: App, **options: Unpack[Options]) -> App:
    """Instrument a FastAPI or Starlette application in place and return it (typed as the
    application's own class: ``app = instrument(FastAPI())`` is still a ``FastAPI``).

    Call it before the app serves its first request (as ``add_middleware`` must be); a second
    call does nothing.

    Raises:
        RuntimeError: the app has started already; nothing was changed.
    """
    if getattr(app, "middleware_stack", None) is not None:
        raise RuntimeError(
            "obskit.fastapi.instrument() must be called before the application starts "
            "(its middleware stack is built on the first request)"
        )
    if getattr(app, _INSTRUMENTED, False):
        return app
    ensure_configured(dict(options), "fastapi")
    telemetry = HttpTelemetry()
    build = app.build_middleware_stack

    def build_middleware_stack(self: Any) -> Any:
        return ObskitMiddleware(build(), telemetry=telemetry)

    app.build_middleware_stack = types.MethodType(  # type: ignore[method-assign]
        functools.wraps(build)(build_middleware_stack), app
    )
    setattr(app, _INSTRUMENTED, True)
    _native_telemetry_off(app)
    return app


_INSTRUMENTED = "_obskit_instrumented"
