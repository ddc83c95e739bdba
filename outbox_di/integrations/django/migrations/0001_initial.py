"""Version 1 of the outbox schema (``outbox_events``, ``inbox_events``,
``outbox_schema_version``) in the schema of ``settings.OUTBOX``: the library's
``sql/migrations/0001_initial.sql``."""

from __future__ import annotations

from django.db import migrations  # type: ignore[import-untyped]

from outbox_di.integrations.django import operations


class Migration(migrations.Migration):  # type: ignore[misc]
    initial = True
    dependencies: list[tuple[str, str]] = []
    operations = [operations.ApplyOutboxVersion(1)]
