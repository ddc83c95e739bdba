# mypy: disable-error-code="import-untyped", allow-subclassing-any
"""The catalog's tables; the outbox's own migration comes first (the views enqueue into it)."""

from __future__ import annotations

from django.db import migrations, models
from django.db.models.functions import Now


class Migration(migrations.Migration):
    initial = True

    dependencies = [("outbox_di", "0001_initial")]

    operations = [
        migrations.CreateModel(
            name="Item",
            fields=[
                ("id", models.UUIDField(primary_key=True, serialize=False)),
                ("sku", models.TextField(unique=True)),
                ("name", models.TextField()),
                ("created_at", models.DateTimeField(db_default=Now())),
            ],
            options={"db_table": "items"},
        ),
        migrations.CreateModel(
            name="ReceivedEvent",
            fields=[
                ("event_id", models.TextField(primary_key=True, serialize=False)),
                ("event_type", models.TextField()),
                ("aggregate_id", models.TextField()),
                ("received_at", models.DateTimeField(db_default=Now())),
            ],
            options={"db_table": "received_events"},
        ),
    ]
