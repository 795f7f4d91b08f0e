"""Per-request cost of obskit vs the usual stack, per framework, in-process (no network).

Variants, each in its own worker process (so no global state leaks between them) and interleaved
in rounds (so machine noise hits all of them alike):

- ``bare``: the framework app alone;
- ``obskit``: RED metrics + SERVER spans at 100 % sampling (+ JSON log line with trace ids when
  obskit's logging is available);
- ``obskit_1pct``: the same at 1 % sampling (traceidratio 0.01, keep-errors on);
- ``bare_log`` (with ``--variants``): the bare app writing the same log line through plain
  stdlib logging -- the matched baseline of the obskit variants that log;
- ``obskit_nolog`` / ``obskit_nolog_1pct`` (with ``--variants``): obskit with no log line;
- ``obskit_nolog_notrace`` (with ``--variants``): obskit with traces off (no span processor: no
  span, sampled or not) and no log line -- RED metrics and the request pipeline alone, what every
  request pays whatever the sampling decision (issue #6's share, read both ways);
- ``obskit_direct`` / ``obskit_1pct_direct`` (with ``--variants``): as ``obskit`` /
  ``obskit_1pct``, the same call on ``obskit.get_logger("app")`` instead of
  ``logging.getLogger("app")`` (the line written without a ``LogRecord``);
- ``alternative``: OpenTelemetry contrib instrumentation for the framework with the SDK's
  BatchSpanProcessor (spans encoded to OTLP protobuf as an OTLP exporter would) + the popular
  Prometheus exporter (prometheus-flask-exporter, prometheus-fastapi-instrumentator,
  django-prometheus).

Run: ``.venv/bin/python benchmarks/bench_http.py [--requests N] [--rounds R] [--frameworks ...]``
(``make bench`` installs what it needs). Prints a Markdown table of microseconds per request
(median over rounds) and the added cost relative to bare.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
from typing import Any

VARIANTS = ("bare", "obskit", "obskit_1pct", "alternative")
#: More variants (``--variants``): ``bare_log`` is the bare app logging the same line through
#: stdlib logging (plain text); ``obskit_nolog``/``obskit_nolog_1pct`` are obskit with no log line.
EXTRA_VARIANTS = (
    "bare_log",
    "obskit_nolog",
    "obskit_nolog_1pct",
    "obskit_nolog_notrace",
    "obskit_direct",
    "obskit_1pct_direct",
)


def _logs(variant: str) -> bool:
    """Whether the app writes one log line per request in this variant."""
    return variant != "bare" and "nolog" not in variant


FRAMEWORKS = ("flask", "fastapi", "django")


# -- worker side ---------------------------------------------------------------------------


def _alt_provider() -> Any:
    from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

    class EncodingExporter(SpanExporter):
        def export(self, spans: Any) -> SpanExportResult:
            encode_spans(spans).SerializeToString()
            return SpanExportResult.SUCCESS

    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(EncodingExporter()))
    return provider


def _configure_obskit(variant: str) -> None:
    import obskit

    options: dict[str, Any] = {"service_name": "bench", "traces_exporter": "none"}
    if "1pct" in variant:
        options.update(sampler="parentbased_traceidratio", sampler_arg=0.01)
    from obskit import _runtime
    from obskit.config import load_config

    class NullSink:
        name = "null"

        def export(self, request: bytes, count: int, timeout: float) -> bool:
            return True

        def shutdown(self) -> None:
            pass

    # traces_exporter "none" and no sink: no span processor, so no span at all ("notrace").
    sink = None if "notrace" in variant else NullSink()
    _runtime._configure(load_config(**options), sink=sink)
    logging_setup = getattr(obskit, "setup_logging", None)
    if logging_setup is not None:
        logging_setup(stream=open(os.devnull, "w"))  # noqa: SIM115


#: The app's logger, module-level as in an app: ``logging.getLogger("app")``, or
#: ``obskit.get_logger("app")`` in the ``*_direct`` variants (set by :func:`build`).
_LINE: Any = None


def _log_line() -> None:
    _LINE.info("handled item", extra={"item": 7})


def _flask_app(variant: str) -> Any:
    from flask import Flask

    app = Flask("bench")
    log = _logs(variant)

    @app.get("/items/<int:item_id>")
    def item(item_id: int) -> Any:
        if log:
            _log_line()
        return {"id": item_id}

    if variant.startswith("obskit"):
        _configure_obskit(variant)
        from obskit.flask import Obskit

        Obskit(app)
    elif variant == "alternative":
        from opentelemetry.instrumentation.flask import FlaskInstrumentor
        from prometheus_flask_exporter import PrometheusMetrics

        FlaskInstrumentor().instrument_app(app, tracer_provider=_alt_provider())
        PrometheusMetrics(app)
    return app  # Flask.__call__ for every variant (Obskit wraps app.wsgi_app)


def _django_app(variant: str) -> Any:
    import django
    from django.conf import settings

    middleware = ["django.middleware.common.CommonMiddleware"]
    apps = ["django.contrib.contenttypes"]
    if variant.startswith("obskit"):
        _configure_obskit(variant)
        middleware.insert(0, "obskit.django.ObskitMiddleware")
    elif variant == "alternative":
        middleware = [
            "django_prometheus.middleware.PrometheusBeforeMiddleware",
            *middleware,
            "django_prometheus.middleware.PrometheusAfterMiddleware",
        ]
        apps.append("django_prometheus")
    settings.configure(
        DEBUG=False,
        SECRET_KEY="bench",
        ALLOWED_HOSTS=["*"],
        ROOT_URLCONF=__name__,
        MIDDLEWARE=middleware,
        INSTALLED_APPS=apps,
        LOGGING_CONFIG=None,
    )
    if variant == "alternative":
        from opentelemetry.instrumentation.django import DjangoInstrumentor

        DjangoInstrumentor().instrument(tracer_provider=_alt_provider())
    django.setup()
    from django.core.handlers.wsgi import WSGIHandler

    return WSGIHandler()


def _django_view(request: Any, item_id: int) -> Any:
    from django.http import JsonResponse

    if _logs(os.environ.get("BENCH_VARIANT", "bare")):
        _log_line()
    return JsonResponse({"id": item_id})


def __getattr__(name: str) -> Any:  # Django's ROOT_URLCONF=__name__ reads urlpatterns lazily
    if name == "urlpatterns":
        from django.urls import path

        return [path("items/<int:item_id>", _django_view)]
    raise AttributeError(name)


def _fastapi_app(variant: str) -> Any:
    from fastapi import FastAPI

    # Bare apps (with or without the log line) have FastAPI's own telemetry off, as obskit's
    # instrument() does: its per-request "is a provider configured?" check is not obskit's cost.
    bare = variant in ("bare", "bare_log")
    app = FastAPI(telemetry={"tracing": False, "metrics": False} if bare else None)
    log = _logs(variant)

    @app.get("/items/{item_id}")
    async def item(item_id: int) -> Any:
        if log:
            _log_line()
        return {"id": item_id}

    if variant.startswith("obskit"):
        _configure_obskit(variant)
        from obskit.fastapi import instrument

        instrument(app)
    elif variant == "alternative":
        from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor
        from prometheus_fastapi_instrumentator import Instrumentator

        FastAPIInstrumentor.instrument_app(app, tracer_provider=_alt_provider())
        Instrumentator().instrument(app)
    return app


def _warmup(n: int) -> int:
    """Untimed requests a runner sends before its ``n`` timed ones."""
    return min(500, n)


def served(n: int) -> int:
    """Requests a runner (``runner(app, n)``) serves in all: its warm-up and ``n`` timed ones.
    ``bench_instructions.py`` and ``bench_opcodes.py`` count over all of them."""
    return _warmup(n) + n


def _run_wsgi(app: Any, n: int) -> float:
    environ_base = {
        "REQUEST_METHOD": "GET",
        "PATH_INFO": "/items/7",
        "QUERY_STRING": "",
        "SERVER_NAME": "127.0.0.1",
        "SERVER_PORT": "8000",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "REMOTE_ADDR": "127.0.0.1",
        "HTTP_HOST": "127.0.0.1:8000",
        "HTTP_USER_AGENT": "bench/1.0",
        "wsgi.url_scheme": "http",
        "wsgi.input": None,
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": False,
        "wsgi.multiprocess": False,
        "wsgi.run_once": False,
        "wsgi.version": (1, 0),
    }
    import io

    def start_response(status: str, headers: Any, exc_info: Any = None) -> Any:
        return None

    def one() -> None:
        environ = dict(environ_base)
        environ["wsgi.input"] = io.BytesIO()
        body = app(environ, start_response)
        for _ in body:
            pass
        close = getattr(body, "close", None)
        if close is not None:
            close()

    for _ in range(_warmup(n)):
        one()
    start = time.perf_counter()
    for _ in range(n):
        one()
    return (time.perf_counter() - start) / n * 1e6


def _run_asgi(app: Any, n: int) -> float:
    scope_base = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": "/items/7",
        "raw_path": b"/items/7",
        "root_path": "",
        "query_string": b"",
        "headers": [(b"host", b"127.0.0.1:8000"), (b"user-agent", b"bench/1.0")],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8000),
    }

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Any) -> None:
        return None

    async def loop() -> float:
        for _ in range(_warmup(n)):
            await app(dict(scope_base), receive, send)
        start = time.perf_counter()
        for _ in range(n):
            await app(dict(scope_base), receive, send)
        return (time.perf_counter() - start) / n * 1e6

    return asyncio.run(loop())


def build(framework: str, variant: str) -> tuple[Any, Any]:
    """One app variant and its runner (``runner(app, n)`` -> µs per request), built in this
    process (``bench_instructions.py`` uses it too)."""
    import logging

    if not variant.startswith("obskit"):
        # obskit variants log through obskit's JSON handler only (set up in _configure_obskit).
        logging.basicConfig(stream=open(os.devnull, "w"), level=logging.INFO)  # noqa: SIM115
    os.environ["BENCH_VARIANT"] = variant
    global _LINE
    if variant.endswith("_direct"):
        from obskit import get_logger

        _LINE = get_logger("app")
    else:
        _LINE = logging.getLogger("app")
    make = {"flask": _flask_app, "fastapi": _fastapi_app, "django": _django_app}[framework]
    return make(variant), (_run_asgi if framework == "fastapi" else _run_wsgi)


def worker_command(script: str, framework: str, variant: str, requests: int) -> list[str]:
    """The command line that runs ``script``'s worker for one variant in a fresh process."""
    return [sys.executable, script, "--worker", framework, variant, "--requests", str(requests)]


def worker(framework: str, variant: str, n: int) -> None:
    """Build one app variant and print microseconds per request as JSON."""
    import gc

    app, runner = build(framework, variant)
    collections = [0, 0, 0]

    def count(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            collections[info["generation"]] += 1

    gc.callbacks.append(count)
    us = runner(app, n)
    print(json.dumps({"us": us, "gc": collections}))


# -- driver side ---------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--frameworks", nargs="+", default=list(FRAMEWORKS))
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS))
    parser.add_argument("--worker", nargs=2, metavar=("FRAMEWORK", "VARIANT"))
    args = parser.parse_args()
    if args.worker:
        worker(args.worker[0], args.worker[1], args.requests)
        return
    results: dict[tuple[str, str], list[float]] = {}
    gcs: dict[tuple[str, str], list[int]] = {}
    for _ in range(args.rounds):
        for framework in args.frameworks:
            for variant in args.variants:
                out = subprocess.run(
                    worker_command(__file__, framework, variant, args.requests),
                    capture_output=True,
                    text=True,
                    timeout=600,
                )
                if out.returncode != 0:
                    sys.stderr.write(out.stderr)
                    raise SystemExit(f"worker {framework}/{variant} failed")
                data = json.loads(out.stdout.strip().splitlines()[-1])
                results.setdefault((framework, variant), []).append(data["us"])
                gcs[(framework, variant)] = data["gc"]
    print(
        f"\n{args.requests} requests x {args.rounds} rounds, median µs/request "
        f"(added over bare; share of the alternative's added cost)\n"
    )
    print("| framework | " + " | ".join(args.variants) + " |")
    print("|---|" + "---|" * len(args.variants))
    for framework in args.frameworks:
        bare = statistics.median(results[(framework, "bare")])
        alt = statistics.median(results.get((framework, "alternative"), [bare]))
        cells = []
        for variant in args.variants:
            value = statistics.median(results[(framework, variant)])
            if variant == "bare":
                cells.append(f"{value:.1f}")
                continue
            added = value - bare
            share = (
                f"; {added / (alt - bare):.0%}" if variant != "alternative" and alt > bare else ""
            )
            cells.append(f"{value:.1f} (+{added:.1f}{share})")
        print(f"| {framework} | " + " | ".join(cells) + " |")
    print("\nGC collections (gen0, gen1, gen2) during the last round's timed loop:")
    for key, value in gcs.items():
        print(f"  {key[0]:8s} {key[1]:12s} {value}")


if __name__ == "__main__":
    main()
