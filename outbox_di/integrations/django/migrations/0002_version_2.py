"""Version 2 of the outbox schema in the schema of ``settings.OUTBOX``: the dead rows' partial
indexes (``outbox_events_dead_idx``, ``inbox_events_dead_idx``), the library's
``sql/migrations/0002_dead_rows_index.sql``."""

from __future__ import annotations

from django.db import migrations  # type: ignore[import-untyped]

from outbox_di.integrations.django import operations


class Migration(migrations.Migration):  # type: ignore[misc]
    dependencies = [("outbox_di", "0001_initial")]
    operations = [operations.ApplyOutboxVersion(2)]
