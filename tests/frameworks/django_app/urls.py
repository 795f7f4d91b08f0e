"""URLs of the test project."""

from __future__ import annotations

from django.urls import include, path

from tests.frameworks.django_app import views

urlpatterns = [
    path("", include("obskit.django.urls")),
    path("items/<int:item_id>", views.item),
    path("boom", views.boom),
    path("value-error", views.value_error),
    path("unavailable", views.unavailable),
    path("files/<path:rest>", views.catch_all),
    path("stream", views.stream),
    path("stream/ids", views.stream_ids),
    path("async/items/<int:item_id>", views.async_item),
    path("async/boom", views.async_boom),
    path("async/stream", views.async_stream),
    path("async/slow", views.async_slow),
    path("healthz", views.healthz),
    path("private", views.private),
]
