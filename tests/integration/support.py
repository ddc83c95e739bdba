"""What several integration test modules share: Django pointed at the test server, and a
table whose COMMIT takes a second (to cancel work in the middle of one)."""

from __future__ import annotations

from typing import Any

import django  # type: ignore[import-untyped]
import psycopg2.extensions
from django.conf import settings  # type: ignore[import-untyped]
from psycopg2 import sql


def dsn_parts(dsn: str) -> dict[str, str]:
    return psycopg2.extensions.parse_dsn(dsn)


def database_entry(dsn: str) -> dict[str, Any]:
    """A Django ``DATABASES`` entry for the PostgreSQL server at ``dsn``."""
    parts = dsn_parts(dsn)
    return {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": parts.get("dbname", "postgres"),
        "USER": parts.get("user", ""),
        "PASSWORD": parts.get("password", ""),
        "HOST": parts.get("host", ""),
        "PORT": parts.get("port", ""),
    }


def configure_django(dsn: str) -> None:
    """Point Django's default database at the test server, once per process (whichever test
    module asks first)."""
    if settings.configured:
        return
    settings.configure(
        DATABASES={
            "default": database_entry(dsn),
            # Never connected to: only shows that a non-PostgreSQL database is refused.
            "sqlite": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"},
        },
        INSTALLED_APPS=[],
        USE_TZ=True,
    )
    django.setup()


async def create_slow_commit_table(pool: Any, schema: str, table: str, column: str) -> None:
    """``schema.table (column text PRIMARY KEY)`` with a deferred trigger that makes the COMMIT
    of a transaction inserting into it last one second."""
    in_schema = sql.Identifier(schema)
    async with pool.acquire() as conn, conn.cursor() as cursor:
        await cursor.execute(
            sql.SQL("CREATE TABLE {}.{} ({} text PRIMARY KEY)").format(
                in_schema, sql.Identifier(table), sql.Identifier(column)
            )
        )
        await cursor.execute(
            sql.SQL(
                "CREATE FUNCTION {}.sleep_at_commit() RETURNS trigger LANGUAGE plpgsql AS "
                "$$ BEGIN PERFORM pg_sleep(1); RETURN NULL; END $$"
            ).format(in_schema)
        )
        await cursor.execute(
            sql.SQL(
                "CREATE CONSTRAINT TRIGGER slow_commit AFTER INSERT ON {}.{} "
                "DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION {}.sleep_at_commit()"
            ).format(in_schema, sql.Identifier(table), in_schema)
        )
