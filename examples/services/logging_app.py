r"""A tiny service whose access lines and own lines are JSON with the request's trace id.

Each factory configures obskit with ``logging=True`` (other options from the environment:
``OTEL_SERVICE_NAME``, ``OBSKIT_TRACES_FILE``, ...) and imports only its own framework::

    uvicorn --factory logging_app:create_fastapi_app
    gunicorn --logger-class obskit.gunicorn.Logger --access-logfile - \
        'logging_app:create_flask_app()'

Both answer ``GET /items/{item_id}`` (logging ``"looked up item"`` with ``extra={"item_id": ...}``
from the handler, once through the stdlib logger -- which ``setup_logging`` made a
``DirectLogger``, the line's ``logger_class`` field -- and once through ``obskit.get_logger``; both
write the line without a ``LogRecord``) and ``GET /healthz``.
"""

from __future__ import annotations

import logging
from typing import Any

import obskit

log = logging.getLogger("logging_app")
direct = obskit.get_logger("logging_app.direct")


def create_fastapi_app() -> Any:
    """The FastAPI app, instrumented with obskit (run by uvicorn)."""
    from fastapi import FastAPI

    from obskit.fastapi import instrument

    obskit.configure(logging=True)
    app = FastAPI()
    instrument(app)

    @app.get("/items/{item_id}")
    async def item(item_id: int) -> dict[str, Any]:
        kind = type(log).__name__
        log.info("looked up item", extra={"item_id": item_id, "logger_class": kind})
        direct.info("looked up item", item_id=item_id, logger_class=kind)
        return {"id": item_id, "service": "fastapi"}

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    return app


def create_flask_app() -> Any:
    """The Flask app, instrumented with obskit (run by gunicorn)."""
    from flask import Flask

    from obskit.flask import Obskit

    obskit.configure(logging=True)
    app = Flask("logging_app")
    Obskit(app)

    @app.get("/items/<int:item_id>")
    def item(item_id: int) -> dict[str, Any]:
        kind = type(log).__name__
        log.info("looked up item", extra={"item_id": item_id, "logger_class": kind})
        direct.info("looked up item", item_id=item_id, logger_class=kind)
        return {"id": item_id, "service": "flask"}

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    return app
