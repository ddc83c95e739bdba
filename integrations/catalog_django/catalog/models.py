# mypy: disable-error-code="import-untyped", allow-subclassing-any
"""The catalog's own tables: ``items`` and ``received_events``."""

from __future__ import annotations

from django.db import models
from django.db.models.functions import Now


class Item(models.Model):
    id = models.UUIDField(primary_key=True)
    sku = models.TextField(unique=True)
    name = models.TextField()
    created_at = models.DateTimeField(db_default=Now())

    class Meta:
        db_table = "items"


class ReceivedEvent(models.Model):
    """What the inbox handler recorded (``catalog.inbox``), one row per event."""

    event_id = models.TextField(primary_key=True)
    event_type = models.TextField()
    aggregate_id = models.TextField()
    received_at = models.DateTimeField(db_default=Now())

    class Meta:
        db_table = "received_events"
