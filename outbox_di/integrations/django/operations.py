"""``ApplyOutboxSchema``: the migration operation that applies the library's DDL.

The DDL is the library's own template rendered for ``OUTBOX["schema"]`` (the text ``outbox-di
render-ddl`` prints), so ``manage.py sqlmigrate outbox_di 0001`` shows it and ``outbox-di check``
compares the result with the same template. Every statement is idempotent: a schema that
``outbox-di migrate`` already made is left as it is.
"""

from __future__ import annotations

from typing import Any

from django.apps import apps as django_apps  # type: ignore[import-untyped]
from django.db.migrations.operations.base import Operation  # type: ignore[import-untyped]

from outbox_di import schema

__all__ = ["ApplyOutboxSchema"]


class ApplyOutboxSchema(Operation):  # type: ignore[misc]
    """Render the outbox DDL for the configured schema and run it on the outbox's database.

    It runs only on the database alias of ``OUTBOX["database"]`` (where ``enqueue`` writes);
    migrating another alias skips it. Reversing it drops nothing: the schema may hold the
    service's own tables and the events not yet published.
    """

    reduces_to_sql = True
    reversible = True

    def state_forwards(self, app_label: str, state: Any) -> None:
        """No model state: the tables belong to the library, not to Django's ORM."""

    def database_forwards(
        self, app_label: str, schema_editor: Any, from_state: Any, to_state: Any
    ) -> None:
        outbox = django_apps.get_app_config(app_label).outbox
        connection = schema_editor.connection
        if connection.alias != outbox.database:
            return
        name = outbox.config.schema
        if not schema_editor.collect_sql:
            # Serializes concurrent migrations of one schema, as `outbox-di migrate` does; the
            # lock ends with the migration's transaction.
            lock = schema.Queries(name)["migrate_lock"]
            with connection.cursor() as cursor:
                cursor.execute(lock.sql, {"lock_key": f"outbox_di:{name}"})
        schema_editor.execute(schema.render_ddl(name), params=None)

    def database_backwards(
        self, app_label: str, schema_editor: Any, from_state: Any, to_state: Any
    ) -> None:
        """Nothing: see the class docstring."""

    def describe(self) -> str:
        return "Apply outbox_di's DDL to the schema of settings.OUTBOX"

    @property
    def migration_name_fragment(self) -> str:
        return "outbox_schema"

    def deconstruct(self) -> tuple[str, list[Any], dict[str, Any]]:
        return (f"{__name__}.{type(self).__qualname__}", [], {})
