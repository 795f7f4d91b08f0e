"""Settings of the test project: obskit's middleware first, its metrics URLs included."""

from __future__ import annotations

SECRET_KEY = "tests-only-not-secret"
DEBUG = False
ALLOWED_HOSTS = ["*"]
ROOT_URLCONF = "tests.frameworks.django_app.urls"
MIDDLEWARE = ["obskit.django.ObskitMiddleware"]
INSTALLED_APPS: list[str] = []
DATABASES: dict[str, dict[str, str]] = {}
USE_TZ = True
# What the tests pass to obskit.testing.capture() too: equal options do not reconfigure obskit.
OBSKIT = {"service_name": "django-tests", "bsp_schedule_delay": 0.05}
