"""Django: ``"obskit.django.ObskitMiddleware"`` in ``MIDDLEWARE``, options in ``settings.OBSKIT``.

::

    MIDDLEWARE = ["obskit.django.ObskitMiddleware", ...]   # first, to time everything
    OBSKIT = {"service_name": "checkout"}

    # urls.py
    urlpatterns = [path("", include("obskit.django.urls")), ...]   # serves /metrics
"""

from obskit.django.middleware import ObskitMiddleware

__all__ = ["ObskitMiddleware"]
