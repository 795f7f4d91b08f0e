"""``/items/<int:item_id>``, ``/call`` and obskit's ``/metrics``."""

from __future__ import annotations

from django.urls import include, path

from . import views

urlpatterns = [
    path("items/<int:item_id>", views.item, name="item"),
    path("call", views.call, name="call"),
    path("", include("obskit.django.urls")),
]
