"""``path("", include("obskit.django.urls"))`` serves obskit's metrics endpoint.

The path is the ``metrics_path`` option (default ``/metrics``), read when Django loads the URLs:
from ``settings.OBSKIT`` first, as the middleware will configure obskit with it -- Django's system
checks (``runserver``, ``manage.py test``) load the URLs before the middleware is made.
"""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse
from django.urls import path

from obskit._runtime import get_config
from obskit.config import load_config
from obskit.metrics.exposition import render

__all__ = ["urlpatterns"]


def metrics(request: HttpRequest) -> HttpResponse:
    """Prometheus text or OpenMetrics, negotiated from ``Accept``."""
    body, content_type = render(request.headers.get("Accept"))
    return HttpResponse(body, content_type=content_type)


# Prometheus does not log in: under Django 5.1+'s LoginRequiredMiddleware the scrape would get
# the login page's redirect. Served without a login like obskit's other metrics endpoints (the
# WSGI/ASGI middleware's, metrics_port); docs/http.md says how to keep it off the internet.
metrics.login_required = False  # type: ignore[attr-defined]  # what @login_not_required sets


def _metrics_path() -> str:
    from django.conf import settings
    from django.core.exceptions import ImproperlyConfigured

    try:
        options = dict(getattr(settings, "OBSKIT", {}) or {})
    except ImproperlyConfigured:  # URLs declared before settings.configure() (a script)
        options = {}
    if "metrics_path" in options:
        return load_config(metrics_path=options["metrics_path"]).metrics_path
    return (get_config() or load_config()).metrics_path


_path = _metrics_path().lstrip("/")
urlpatterns = [path(_path, metrics, name="obskit-metrics")]
