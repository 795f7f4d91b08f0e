"""URLconf of the Django app in ``load_apps``."""

from django.urls import path

from benchmarks.load_apps import django_gc, django_item

urlpatterns = [
    path("items/<int:item_id>", django_item),
    path("__bench/gc", django_gc),
]
