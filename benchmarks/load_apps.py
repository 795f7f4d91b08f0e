"""The apps ``bench_load.py`` runs under real servers; the variant comes from ``BENCH_VARIANT``.

- ``bare``: the framework alone (no logging).
- ``obskit``: obskit with RED metrics, spans at 100 % sampling exported to a local OTLP/HTTP sink
  on loopback (a real export, not a no-op), and one JSON log line per request with trace ids.
- ``obskit_1pct``: the same at 1 % sampling.
- ``obskit_buf`` / ``obskit_1pct_buf``: the same with ``log_flush_interval=0.2`` (INFO lines
  flushed every 0.2 s instead of after every line; WARNING and above at once).

Each app serves ``/items/{id}`` and ``/__bench/gc`` (garbage-collector counts of this process,
excluded from telemetry) so the driver can count collections per 10,000 requests.
"""

from __future__ import annotations

import gc
import json
import logging
import os
from typing import Any

VARIANT = os.environ.get("BENCH_VARIANT", "bare")
_collections = [0, 0, 0]


def _count(phase: str, info: dict[str, int]) -> None:
    if phase == "start":
        _collections[info["generation"]] += 1


gc.callbacks.append(_count)


def gc_counts() -> dict[str, Any]:
    """Collections per generation since the process started."""
    return {"collections": list(_collections), "pid": os.getpid()}


def _configure() -> logging.Logger:
    log = logging.getLogger("bench.app")
    if VARIANT == "bare":
        return log
    import obskit

    options: dict[str, Any] = {
        "service_name": f"bench-{VARIANT}",
        "logging": True,
        "excluded_paths": ["/metrics", "/__bench/gc"],
    }
    endpoint = os.environ.get("BENCH_OTLP_ENDPOINT")
    if endpoint:
        options["otlp_endpoint"] = endpoint
    else:
        options["traces_exporter"] = "none"
    if VARIANT.startswith("obskit_1pct"):
        options.update(sampler="parentbased_traceidratio", sampler_arg=0.01)
    obskit.configure(**options)
    # JSON lines go to /dev/null: the cost of formatting is measured, not the terminal's.
    # "_buf" variants flush DEBUG/INFO lines every 0.2 s instead of after every line.
    obskit.setup_logging(
        stream=open(os.devnull, "w"),  # noqa: SIM115
        flush_interval=0.2 if VARIANT.endswith("_buf") else 0.0,
    )
    return log


LOG = _configure()


def _make_fastapi() -> Any:
    from fastapi import FastAPI

    telemetry = {"tracing": False, "metrics": False} if VARIANT == "bare" else None
    app = FastAPI(telemetry=telemetry)
    log = VARIANT != "bare"

    @app.get("/items/{item_id}")
    async def item(item_id: int) -> dict[str, int]:
        if log:
            LOG.info("item served", extra={"item": item_id})
        return {"id": item_id}

    @app.get("/__bench/gc")
    async def bench_gc() -> dict[str, Any]:
        return gc_counts()

    if VARIANT != "bare":
        from obskit.fastapi import instrument

        instrument(app)
    return app


def _make_flask() -> Any:
    from flask import Flask

    app = Flask("bench")
    log = VARIANT != "bare"

    @app.get("/items/<int:item_id>")
    def item(item_id: int) -> dict[str, int]:
        if log:
            LOG.info("item served", extra={"item": item_id})
        return {"id": item_id}

    @app.get("/__bench/gc")
    def bench_gc() -> dict[str, Any]:
        return gc_counts()

    if VARIANT != "bare":
        from obskit.flask import Obskit

        Obskit(app)
    return app


def _make_django() -> Any:
    import django
    from django.conf import settings

    middleware = ["obskit.django.ObskitMiddleware"] if VARIANT != "bare" else []
    settings.configure(
        DEBUG=False,
        SECRET_KEY="bench",
        ALLOWED_HOSTS=["*"],
        ROOT_URLCONF="benchmarks.load_urls",
        MIDDLEWARE=middleware,
        INSTALLED_APPS=[],
        LOGGING_CONFIG=None,
    )
    django.setup()
    from django.core.wsgi import get_wsgi_application

    return get_wsgi_application()


def django_item(request: Any, item_id: int) -> Any:
    """The Django view of ``/items/<int:item_id>``."""
    from django.http import JsonResponse

    if VARIANT != "bare":
        LOG.info("item served", extra={"item": item_id})
    return JsonResponse({"id": item_id})


def django_gc(request: Any) -> Any:
    """The Django view of ``/__bench/gc``."""
    from django.http import HttpResponse

    return HttpResponse(json.dumps(gc_counts()), content_type="application/json")


def __getattr__(name: str) -> Any:
    # Build only the app the server asks for.
    makers = {"fastapi_app": _make_fastapi, "flask_app": _make_flask, "django_app": _make_django}
    if name in makers:
        app = makers[name]()
        globals()[name] = app
        return app
    raise AttributeError(name)
