"""``ApplyOutboxVersion``: the migration operation that applies one version of the library's
schema.

Each Django migration of this application is a thin file running one numbered migration of the
library (``outbox_di/sql/migrations/NNNN_<name>.sql``) through :func:`outbox_di.database.
apply_version`, rendered for ``OUTBOX["schema"]``: under the same advisory lock as
``outbox-di migrate``, recorded in the same ``outbox_schema_version`` table with the same
checksum, and skipped when already applied, so ``outbox-di migrate`` and ``manage.py migrate``
can be mixed. ``manage.py sqlmigrate outbox_di 0002`` shows the version's SQL.
"""

from __future__ import annotations

from typing import Any

from django.apps import apps as django_apps  # type: ignore[import-untyped]
from django.db.migrations.operations.base import Operation  # type: ignore[import-untyped]

from outbox_di import database, errors, schema

__all__ = ["ApplyOutboxSchema", "ApplyOutboxVersion"]


class ApplyOutboxVersion(Operation):  # type: ignore[misc]
    """Apply version ``version`` of the outbox schema to the configured schema.

    It runs only on the database alias of ``OUTBOX["database"]`` (where ``enqueue`` writes);
    migrating another alias skips it. Reversing it drops nothing: the schema may hold the
    service's own tables and the events not yet published.
    """

    reduces_to_sql = True
    reversible = True

    def __init__(self, version: int) -> None:
        self.version = int(version)

    def _migration(self) -> schema.Migration:
        known = schema.migrations()
        if not 1 <= self.version <= len(known):
            raise errors.OutboxError(
                f"outbox_di's Django migration asks for schema version {self.version}, but the "
                f"library ships versions 1 to {len(known)}; reinstall outbox_di"
            )
        return known[self.version - 1]

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
        migration = self._migration()
        if schema_editor.collect_sql:
            # sqlmigrate: the version's SQL as a script (the version table first, for 0001).
            text = migration.render(name) + schema.record_version_sql(name, migration)
            if self.version == 1:
                text = schema.render_version_table(name) + text
            schema_editor.execute(text, params=None)
            return
        # Inside the Django migration's transaction: the lock ends with it.
        with connection.cursor() as cursor:
            database.apply_version(cursor, name, migration)

    def database_backwards(
        self, app_label: str, schema_editor: Any, from_state: Any, to_state: Any
    ) -> None:
        """Nothing: see the class docstring."""

    def describe(self) -> str:
        return f"Apply version {self.version} of outbox_di's schema to the schema of OUTBOX"

    @property
    def migration_name_fragment(self) -> str:
        return f"outbox_schema_v{self.version}"

    def deconstruct(self) -> tuple[str, list[Any], dict[str, Any]]:
        return (f"{__name__}.{type(self).__qualname__}", [self.version], {})


class ApplyOutboxSchema(ApplyOutboxVersion):
    """Version 1 (the name outbox_di 0.1.0's ``0001_initial`` used)."""

    def __init__(self, version: int = 1) -> None:
        super().__init__(version)
