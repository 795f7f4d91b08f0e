"""Options given to an adapter, and where they meet the application's own ``obskit.configure()``
(a review of 2026-11-25)."""

from __future__ import annotations

import importlib
from collections.abc import Iterator

import pytest
from django.test import override_settings

import obskit
from obskit import _runtime


@pytest.fixture
def unconfigured() -> Iterator[None]:
    obskit.shutdown()
    try:
        yield
    finally:
        obskit.shutdown()


# A bug this test found, since fixed: options given to an adapter (instrument(app,
# service_name=...), Obskit(app, ...), settings.OBSKIT) made a fresh configure() with those
# options alone (obskit/http/_pipeline.py ensure_configured): an application that configured
# obskit in code as the README shows, then instrumented its app as docs/http.md shows, lost its
# collector endpoint, its JSON logs and its service version, silently.
@pytest.mark.usefixtures("unconfigured")
def test_adapter_options_go_over_the_applications_configure() -> None:
    from flask import Flask

    from obskit.flask import Obskit

    obskit.configure(
        service_name="checkout",
        service_version="1.4.2",
        traces_exporter="none",
        sampler="traceidratio",
        sampler_arg=0.25,
        metrics_path="/internal/metrics",
    )
    Obskit(Flask("t"), service_name="checkout-web")
    config = _runtime.get_config()
    assert config is not None
    assert ("checkout-web", "1.4.2", "none", "traceidratio", 0.25, "/internal/metrics") == (
        config.service_name,
        config.service_version,
        config.traces_exporter,
        config.sampler,
        config.sampler_arg,
        config.metrics_path,
    )


# A bug this test found, since fixed: obskit.django.urls read metrics_path from the running
# configuration when Django loaded the URLs -- and Django's system checks (runserver, manage.py
# test) load them before the middleware configures obskit from settings.OBSKIT: the configured
# path answered 404 and /metrics was served instead.
@pytest.mark.usefixtures("unconfigured")
def test_django_urls_take_metrics_path_from_settings_before_the_middleware_runs() -> None:
    import obskit.django.urls as urls

    try:
        with override_settings(OBSKIT={"metrics_path": "/internal/metrics"}):
            importlib.reload(urls)
            assert "internal/metrics" == str(urls.urlpatterns[0].pattern)
    finally:
        importlib.reload(urls)
    assert "metrics" == str(urls.urlpatterns[0].pattern)


def _service() -> tuple[str, str]:
    config = _runtime.get_config()
    assert config is not None
    return config.service_name, config.traces_exporter


# Bugs a review found in a first version of the per-adapter options, since fixed: an adapter of
# the same kind built later with no options -- an instrumented app mounted in another, or the
# middleware instrument() and Obskit() build for themselves -- took the first one's options
# back (its spans went to the local file as unknown_service); obskit.configure() after an
# adapter, then another adapter, brought the forgotten adapter options back.
@pytest.mark.usefixtures("unconfigured")
def test_an_adapter_with_no_options_keeps_what_another_asked() -> None:
    """``instrument(app, service_name=..., traces_exporter=...)`` then ``instrument(v1)``,
    and a Starlette app under ``ObskitMiddleware(..., service_name=...)`` with an instrumented
    FastAPI app mounted in it, served: the options given stay."""
    from fastapi import FastAPI
    from fastapi.testclient import TestClient
    from starlette.applications import Starlette
    from starlette.routing import Mount

    from obskit.asgi import ObskitMiddleware
    from obskit.fastapi import instrument

    instrument(FastAPI(), service_name="checkout", traces_exporter="none")
    instrument(FastAPI())
    assert ("checkout", "none") == _service()

    obskit.shutdown()
    v1 = FastAPI()
    v1.get("/items")(lambda: {"ok": True})
    instrument(v1)
    outer = ObskitMiddleware(
        Starlette(routes=[Mount("/v1", app=v1)]), service_name="shop", traces_exporter="none"
    )
    with TestClient(outer) as client:
        assert 200 == client.get("/v1/items").status_code
    assert ("shop", "none") == _service()


@pytest.mark.usefixtures("unconfigured")
def test_configure_after_an_adapter_is_the_configuration_from_then_on() -> None:
    """``Obskit(app)`` with options, then ``obskit.configure(...)``: the application's
    configuration; a later adapter's options go over it, not the forgotten ones."""
    from flask import Flask

    from obskit.flask import Obskit
    from obskit.wsgi import ObskitMiddleware

    Obskit(Flask("t"), service_name="shop", traces_exporter="none")
    obskit.configure(service_name="checkout", traces_exporter="none")
    ObskitMiddleware(lambda environ, start_response: [], log_level="DEBUG")
    config = _runtime.get_config()
    assert config is not None
    assert ("checkout", "DEBUG") == (config.service_name, config.log_level)


@pytest.mark.usefixtures("unconfigured")
def test_the_asgi_wrapper_around_django_goes_over_settings_obskit_whatever_the_order() -> None:
    """``ObskitMiddleware(get_asgi_application(), service_name=...)``, then a request through
    Django's test client (which builds the middleware from settings.OBSKIT again): the
    wrapper's service name stays."""
    from django.core.handlers.asgi import ASGIHandler
    from django.test import Client

    from obskit.asgi import ObskitMiddleware

    ObskitMiddleware(ASGIHandler(), service_name="from-wrapper", traces_exporter="none")
    Client().get("/items/1")
    assert "from-wrapper" == _service()[0]


# A bug a third review found in the second version, since fixed: a Flask or FastAPI adapter's
# options were added to what an adapter of the same kind had asked before, so an app factory's
# per-test options (a sampler, a metrics path) stuck to every later test's app.
@pytest.mark.usefixtures("unconfigured")
def test_an_app_factorys_options_replace_the_previous_apps() -> None:
    """Three apps from one factory, the second with ``sampler=always_off`` and another
    metrics path: the third, with the project's options again, has neither."""
    from flask import Flask

    from obskit.flask import Obskit

    def create_app(**extra: str) -> Flask:
        app = Flask("t")
        app.config["OBSKIT"] = {"service_name": "shop", "traces_exporter": "none", **extra}
        Obskit(app)
        return app

    create_app()
    create_app(sampler="always_off", metrics_path="/m")
    create_app()
    config = _runtime.get_config()
    assert config is not None
    assert ("shop", "parentbased_always_on", "/metrics") == (
        config.service_name,
        config.sampler,
        config.metrics_path,
    )
