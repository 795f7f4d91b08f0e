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
