"""The apps ``bench_load.py`` runs under real servers; the variant comes from ``BENCH_VARIANT``.

Bare variants (no obskit import at all):

- ``bare``: the framework alone (no logging).
- ``bare_log``: the framework alone, writing the same line per request as the obskit variants
  through plain stdlib logging (a ``StreamHandler`` on ``/dev/null``, plain-text
  ``%(message)s`` formatter, level INFO, on the ``bench.app`` logger): the matched baseline of
  the obskit variants that log.

obskit variants (RED metrics, spans exported over OTLP/HTTP to a local sink on loopback, a real
export and not a no-op; ``obskit.setup_logging`` always called, so log correlation is on):

- ``obskit``: spans at 100 % sampling and one JSON log line per request with trace ids.
- ``obskit_1pct``: the same at 1 % sampling.
- ``obskit_buf`` / ``obskit_1pct_buf``: the same with ``log_flush_interval=0.2`` (INFO lines
  flushed every 0.2 s instead of after every line; WARNING and above at once).
- ``obskit_direct`` / ``obskit_1pct_direct``: as ``obskit`` / ``obskit_1pct``, with the same
  call on ``obskit.get_logger("bench.app")`` instead of ``logging.getLogger("bench.app")``: the
  line is written without a ``LogRecord`` (obskit's handler is the only one listening).
- ``obskit_nolog`` / ``obskit_nolog_1pct``: as ``obskit`` / ``obskit_1pct``, but the app writes
  no log line: compared with ``bare``.
- ``obskit_nolog_notrace``: as ``obskit_nolog`` with traces off (``traces_exporter="none"``: no
  span, sampled or not): RED metrics and the request pipeline alone, the part of an obskit request
  that does not depend on the sampling decision (issue #6's share, read over it).

Each app serves ``/items/{id}`` and ``/__bench/gc`` (garbage-collector counts of this process,
excluded from telemetry) so the driver can count collections per 10,000 requests;
``/__bench/gc?collect=1`` first runs a full collection, which ``bench_server_instructions.py``
asks for after its warm-up: the one full collection a fresh process makes as its start-up objects
age (between 1,000 and 8,000 requests after start here, bare or not) then falls outside the
counted window instead of into some variants' windows and not others'.
"""

from __future__ import annotations

import gc
import json
import logging
import os
from typing import Any

VARIANTS = (
    "bare",
    "bare_log",
    "obskit",
    "obskit_1pct",
    "obskit_buf",
    "obskit_1pct_buf",
    "obskit_nolog",
    "obskit_nolog_1pct",
    "obskit_nolog_notrace",
    "obskit_direct",
    "obskit_1pct_direct",
)
VARIANT = os.environ.get("BENCH_VARIANT", "bare")
if VARIANT not in VARIANTS:
    raise ValueError(f"unknown BENCH_VARIANT {VARIANT!r}; expected one of {VARIANTS}")


def _is_bare(variant: str) -> bool:
    """Whether the variant runs the framework alone (no obskit import)."""
    return variant.startswith("bare")


def _logs(variant: str) -> bool:
    """Whether the app writes one log line per request in this variant."""
    return variant != "bare" and "nolog" not in variant


BARE = _is_bare(VARIANT)
LOGS = _logs(VARIANT)
_collections = [0, 0, 0]


def _count(phase: str, info: dict[str, int]) -> None:
    if phase == "start":
        _collections[info["generation"]] += 1


gc.callbacks.append(_count)


def gc_counts(collect: Any = None) -> dict[str, Any]:
    """Collections per generation since the process started (after a full collection if
    ``collect`` is "1")."""
    if collect == "1":
        gc.collect()
    return {"collections": list(_collections), "pid": os.getpid()}


def _configure() -> Any:
    log = logging.getLogger("bench.app")
    if BARE:
        if LOGS:
            # Plain stdlib logging to /dev/null: the same line, no obskit.
            handler = logging.StreamHandler(open(os.devnull, "w"))  # noqa: SIM115
            handler.setFormatter(logging.Formatter("%(message)s"))
            log.addHandler(handler)
            log.setLevel(logging.INFO)
        return log
    import obskit

    options: dict[str, Any] = {
        "service_name": f"bench-{VARIANT}",
        "logging": True,
        "excluded_paths": ["/metrics", "/__bench/gc"],
    }
    endpoint = os.environ.get("BENCH_OTLP_ENDPOINT")
    if endpoint and "notrace" not in VARIANT:
        options["otlp_endpoint"] = endpoint
    else:
        options["traces_exporter"] = "none"
    if "1pct" in VARIANT:
        options.update(sampler="parentbased_traceidratio", sampler_arg=0.01)
    obskit.configure(**options)
    # JSON lines go to /dev/null: the cost of formatting is measured, not the terminal's.
    # "_buf" variants flush DEBUG/INFO lines every 0.2 s instead of after every line.
    # Called in "_nolog" variants too: log correlation stays on though the app logs nothing.
    obskit.setup_logging(
        stream=open(os.devnull, "w"),  # noqa: SIM115
        flush_interval=0.2 if VARIANT.endswith("_buf") else 0.0,
    )
    if VARIANT.endswith("_direct"):
        return obskit.get_logger("bench.app")  # the same calls as on the stdlib logger
    return log


LOG = _configure()


def _make_fastapi() -> Any:
    from fastapi import FastAPI

    telemetry = {"tracing": False, "metrics": False} if BARE else None
    app = FastAPI(telemetry=telemetry)
    log = LOGS

    @app.get("/items/{item_id}")
    async def item(item_id: int) -> dict[str, int]:
        if log:
            LOG.info("item served", extra={"item": item_id})
        return {"id": item_id}

    @app.get("/__bench/gc")
    async def bench_gc(collect: str = "0") -> dict[str, Any]:
        return gc_counts(collect)

    if not BARE:
        from obskit.fastapi import instrument

        instrument(app)
    return app


def _make_flask() -> Any:
    from flask import Flask

    app = Flask("bench")
    log = LOGS

    @app.get("/items/<int:item_id>")
    def item(item_id: int) -> dict[str, int]:
        if log:
            LOG.info("item served", extra={"item": item_id})
        return {"id": item_id}

    @app.get("/__bench/gc")
    def bench_gc() -> dict[str, Any]:
        from flask import request

        return gc_counts(request.args.get("collect"))

    if not BARE:
        from obskit.flask import Obskit

        Obskit(app)
    return app


def _make_django() -> Any:
    import django
    from django.conf import settings

    middleware = [] if BARE else ["obskit.django.ObskitMiddleware"]
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

    if LOGS:
        LOG.info("item served", extra={"item": item_id})
    return JsonResponse({"id": item_id})


def django_gc(request: Any) -> Any:
    """The Django view of ``/__bench/gc``."""
    from django.http import HttpResponse

    return HttpResponse(
        json.dumps(gc_counts(request.GET.get("collect"))), content_type="application/json"
    )


def __getattr__(name: str) -> Any:
    # Build only the app the server asks for.
    makers = {"fastapi_app": _make_fastapi, "flask_app": _make_flask, "django_app": _make_django}
    if name in makers:
        app = makers[name]()
        globals()[name] = app
        return app
    raise AttributeError(name)
