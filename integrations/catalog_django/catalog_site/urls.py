# mypy: disable-error-code="import-untyped, import-not-found"
"""The catalog's HTTP API: ``POST /items``, ``GET /received``, ``GET /health``."""

from __future__ import annotations

from catalog import views
from django.urls import path

urlpatterns = [
    path("items", views.create_item),
    path("received", views.received),
    path("health", views.health),
]
