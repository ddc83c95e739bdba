"""The outbox tables (``outbox_events``, ``inbox_events``, ``outbox_schema_version``) in the
schema of ``settings.OUTBOX``, from the library's DDL template."""

from __future__ import annotations

from django.db import migrations  # type: ignore[import-untyped]

from outbox_di.integrations.django import operations


class Migration(migrations.Migration):  # type: ignore[misc]
    initial = True
    dependencies: list[tuple[str, str]] = []
    operations = [operations.ApplyOutboxSchema()]
