"""Minimal settings: no database, no sessions, obskit's middleware first."""

from __future__ import annotations

import os

_PACKAGE = __name__.rpartition(".")[0]

# An example service only: never reuse this key. Set DJANGO_SECRET_KEY for anything else.
SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "example-only-not-secret")
DEBUG = os.environ.get("DJANGO_DEBUG", "") == "1"
ALLOWED_HOSTS = os.environ.get("DJANGO_ALLOWED_HOSTS", "127.0.0.1,localhost,[::1]").split(",")

INSTALLED_APPS: list[str] = []
MIDDLEWARE = ["obskit.django.ObskitMiddleware"]
ROOT_URLCONF = f"{_PACKAGE}.urls"
WSGI_APPLICATION = f"{_PACKAGE}.wsgi.application"
DATABASES: dict[str, dict[str, str]] = {}
USE_TZ = True
OBSKIT: dict[str, object] = {}  # everything from the environment
