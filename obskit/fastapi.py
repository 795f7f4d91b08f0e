"""FastAPI / Starlette: ``instrument(app)``.

::

    from fastapi import FastAPI
    from obskit.fastapi import instrument

    app = FastAPI()
    instrument(app, service_name="checkout")

Adds :class:`obskit.asgi.ObskitMiddleware` (pure ASGI) to the app. FastAPI 0.165+ has its own
OpenTelemetry support, which starts a SERVER span (and INTERNAL operation spans) as soon as a
global TracerProvider exists -- obskit installs one, so both would trace every request.
``instrument()`` therefore switches FastAPI's own request tracing and metrics off for this app
(``FastAPI(telemetry={"tracing": False, "metrics": False})`` has the same effect) and keeps
obskit's single SERVER span, which also carries what FastAPI's would: route template, status,
exception. FastAPI's INTERNAL operation spans hang off its own SERVER span, so they go with it.
"""

from __future__ import annotations

from typing import Any

try:
    import starlette.applications
except ImportError as exc:  # pragma: no cover - exercised without the extra
    raise ImportError("obskit.fastapi needs FastAPI: pip install 'obskit[fastapi]'") from exc

from obskit.asgi import ObskitMiddleware
from obskit.http._pipeline import HttpTelemetry, ensure_configured

__all__ = ["instrument"]


def instrument(
    app: starlette.applications.Starlette,
    **options: Any,
) -> starlette.applications.Starlette:
    """Instrument a FastAPI or Starlette application in place and return it."""
    ensure_configured(options)
    telemetry_config = getattr(app, "_telemetry", None)
    if isinstance(telemetry_config, dict):
        # FastAPI's native telemetry runs outside every user middleware; left on it would start
        # a second SERVER span around obskit's.
        telemetry_config["metrics"] = False
        telemetry_config["tracing"] = False
    app.add_middleware(ObskitMiddleware, telemetry=HttpTelemetry())  # type: ignore[arg-type]
    return app
