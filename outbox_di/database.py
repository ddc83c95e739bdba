"""The library's own database access: the aiopg pool, migrations and the drift check."""

from __future__ import annotations

import contextlib
import logging
import secrets
import shlex
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from typing import Any

import aiopg
import psycopg2
import psycopg2.errors

from outbox_di import errors, observability, schema

TABLES = ("outbox_schema_version", "outbox_events", "inbox_events")

RELAY_SETTINGS: Mapping[str, str] = {
    # A lost claim or mark only means a lease that expires or an event published again, which
    # at-least-once delivery allows: the relay need not wait for its commits to be flushed.
    # Never for a pool that services enqueue through.
    "synchronous_commit": "off",
    # Every relay statement is bounded by its batch: the claim an ordered scan of the due index
    # that stops after `limit` rows, the marks primary-key lookups. With statistics from a
    # nearly empty table (a burst after a quiet period) the planner prefers a bitmap scan of
    # every due row plus a sort, or a sequential scan: costs that grow with the backlog.
    "enable_bitmapscan": "off",
    "enable_seqscan": "off",
}
"""Session settings of the relay's own connections (``OutboxContainer.relay_pool``)."""


@contextlib.asynccontextmanager
async def open_pool(
    dsn: str,
    *,
    min_size: int = 1,
    max_size: int = 10,
    connect_timeout: float = 10.0,
    application_name: str = "outbox_di",
    settings: Mapping[str, str] | None = None,
) -> AsyncIterator[Any]:
    """An aiopg pool, closed (and waited for) on exit.

    ``settings`` are session parameters applied to every connection (``-c name=value``); the
    relay passes ``synchronous_commit=off`` here, never a pool that services enqueue through.
    """
    options = " ".join(f"-c {name}={value}" for name, value in (settings or {}).items())
    kwargs: dict[str, Any] = {
        "connect_timeout": max(1, round(connect_timeout)),
        "application_name": application_name,
    }
    if options:
        kwargs["options"] = options
    try:
        pool = await aiopg.create_pool(
            dsn,
            minsize=min_size,
            maxsize=max_size,
            enable_hstore=False,
            enable_uuid=False,
            **kwargs,
        )
    except psycopg2.Error as exc:
        raise errors.DatabaseError(
            f"cannot connect to PostgreSQL ({_redact(dsn)}): {exc}".strip()
        ) from exc
    try:
        yield pool
    finally:
        pool.close()
        await pool.wait_closed()


def _redact(dsn: str) -> str:
    """The DSN without its password, for error messages."""
    if "://" in dsn and "@" in dsn:
        head, _, tail = dsn.partition("://")
        credentials, _, host = tail.rpartition("@")
        user = credentials.partition(":")[0]
        return f"{head}://{user}:***@{host}" if ":" in credentials else dsn
    return " ".join(
        "password=***" if part.startswith("password=") else part for part in dsn.split()
    )


@contextlib.contextmanager
def connect(dsn: str, *, connect_timeout: float = 10.0) -> Iterator[Any]:
    """A plain psycopg2 connection for one-off work (migrate, check, operator commands)."""
    try:
        conn = psycopg2.connect(
            dsn, connect_timeout=max(1, round(connect_timeout)), application_name="outbox_di"
        )
    except psycopg2.Error as exc:
        raise errors.DatabaseError(
            f"cannot connect to PostgreSQL ({_redact(dsn)}): {exc}".strip()
        ) from exc
    try:
        yield conn
    finally:
        conn.close()


def migrate(conn: Any, schema_name: str, *, notify: bool = True) -> None:
    """Apply the DDL for ``schema_name`` in one transaction; running it again changes nothing.

    ``conn`` is a psycopg2 connection (see :func:`connect`). Concurrent migrations of the same
    schema are serialized by an advisory lock.
    """
    ddl = schema.render_ddl(schema_name, notify=notify)
    queries = schema.Queries(schema_name)
    try:
        with conn, conn.cursor() as cursor:
            cursor.execute(queries["migrate_lock"].sql, {"lock_key": f"outbox_di:{schema_name}"})
            cursor.execute(ddl)
    except psycopg2.Error as exc:
        raise errors.DatabaseError(f"migrating schema {schema_name!r} failed: {exc}") from exc


def schema_version(conn: Any, schema_name: str) -> int | None:
    """The version recorded in the schema, or ``None`` when it was never migrated."""
    with conn, conn.cursor() as cursor:
        return _snapshot(cursor, schema_name).version


# Which of the outbox tables exist in a schema (and whether the schema does): catalog only, so it
# runs whatever state the schema is in.
_PRESENT_SQL = """
SELECT
    EXISTS (SELECT 1 FROM pg_catalog.pg_namespace WHERE nspname = %(schema)s),
    ARRAY(
        SELECT c.relname::text
        FROM pg_catalog.pg_class AS c
        JOIN pg_catalog.pg_namespace AS n ON n.oid = c.relnamespace
        WHERE n.nspname = %(schema)s AND c.relname = ANY(%(tables)s) AND c.relkind IN ('r', 'p')
    )
"""


async def require_schema(
    pool: Any, schema_name: str, dsn: str, *, logger: logging.Logger | None = None
) -> int:
    """Check that ``schema_name`` was migrated to the version this library needs; its version.

    One query on the aiopg ``pool`` when the schema is ready (the version and which tables
    exist). Raises :class:`~outbox_di.errors.SchemaNotReadyError` when the schema or one of its
    tables is missing or its version is older than :data:`schema.SCHEMA_VERSION`, with the
    ``outbox-di migrate`` command that fixes it (``dsn`` only appears there, its password
    redacted). A newer version is allowed with a warning: during a rolling deploy the schema is
    migrated first and processes of the previous release keep running on it.
    """
    queries = schema.Queries(schema_name)
    values = {"schema": schema_name, "tables": list(TABLES)}
    version: int | None = None
    try:
        async with pool.acquire() as conn, conn.cursor() as cursor:
            try:
                # The version subquery fails at once when the schema or the table is missing.
                await cursor.execute(
                    f"{_PRESENT_SQL},\n    ({queries['schema_version'].sql})", values
                )
                _, present, version = await cursor.fetchone()
                version = version or 0
            except (psycopg2.errors.UndefinedTable, psycopg2.errors.InvalidSchemaName):
                await cursor.execute(_PRESENT_SQL, values)
                exists, present = await cursor.fetchone()
                if not exists:
                    found = "the schema does not exist"
                    raise _not_ready(schema_name, dsn, found, TABLES) from None
    except psycopg2.Error as exc:
        raise errors.DatabaseError(
            f"checking the version of schema {schema_name!r} failed: {exc}".strip()
        ) from exc
    missing = [table for table in TABLES if table not in present]
    if missing:
        raise _not_ready(
            schema_name, dsn, f"missing table(s) {', '.join(missing)}", missing, version=version
        )
    assert version is not None
    if version < schema.SCHEMA_VERSION:
        raise _not_ready(
            schema_name,
            dsn,
            f"its version is {version}, this outbox_di needs version {schema.SCHEMA_VERSION}",
            version=version,
        )
    if version > schema.SCHEMA_VERSION:
        (logger or observability.logger).warning(
            "schema %r is at version %d, newer than this outbox_di knows (%d): it was migrated "
            "by a later release; upgrade outbox_di in this service",
            schema_name,
            version,
            schema.SCHEMA_VERSION,
        )
    return version


def migrate_command(dsn: str, schema_name: str) -> str:
    """The ``outbox-di migrate`` command line for ``schema_name``, the password redacted."""
    return f"outbox-di migrate --dsn {shlex.quote(_redact(dsn))} --schema {schema_name}"


def _not_ready(
    schema_name: str,
    dsn: str,
    found: str,
    missing: Sequence[str] = (),
    *,
    version: int | None = None,
) -> errors.SchemaNotReadyError:
    if version is None and missing:
        found += f" (outbox_di needs version {schema.SCHEMA_VERSION})"
    fix = (
        f"run `{migrate_command(dsn, schema_name)}` (or apply the DDL of `outbox-di render-ddl "
        f"--schema {schema_name}` with your own migrations) before starting the service"
    )
    return errors.SchemaNotReadyError(
        schema_name,
        found,
        fix,
        version=version,
        required=schema.SCHEMA_VERSION,
        missing=missing,
    )


class _Snapshot:
    """What the catalog says about one schema's outbox objects, with the schema name abstracted."""

    def __init__(self) -> None:
        self.tables: set[str] = set()
        self.columns: dict[tuple[str, str], str] = {}
        self.indexes: dict[tuple[str, str], str] = {}
        self.constraints: dict[tuple[str, str], str] = {}
        self.triggers: dict[tuple[str, str], str] = {}
        self.functions: dict[str, str] = {}
        self.version: int | None = None


def _snapshot(cursor: Any, schema_name: str) -> _Snapshot:
    queries = schema.Queries(schema_name)
    values = {"schema": schema_name}
    snap = _Snapshot()

    def abstract(text: str) -> str:
        for form in (f'"{schema_name}".', f"{schema_name}."):
            text = text.replace(form, "<schema>.")
        for table in ("outbox", "inbox"):
            text = text.replace(schema.channel_name(schema_name, table), f"<{table}_channel>")
        return text

    def rows(name: str) -> list[Any]:
        cursor.execute(queries[name].sql, values)
        return list(cursor.fetchall())

    for table, column, data_type, nullable, default, identity in rows("catalog_columns"):
        snap.tables.add(table)
        described = f"{data_type} {'NULL' if nullable == 'YES' else 'NOT NULL'}"
        if identity == "YES":
            described += " identity"
        if default is not None:
            described += f" default {abstract(default)}"
        snap.columns[(table, column)] = described
    for table, name, definition in rows("catalog_indexes"):
        snap.indexes[(table, name)] = abstract(definition)
    for table, name, definition in rows("catalog_constraints"):
        snap.constraints[(table, name)] = abstract(definition)
    for table, name, definition in rows("catalog_triggers"):
        snap.triggers[(table, name)] = abstract(definition)
    for name, source in rows("catalog_functions"):
        snap.functions[name] = abstract(source)
    if "outbox_schema_version" in snap.tables:
        cursor.execute(queries["schema_version"].sql)
        snap.version = cursor.fetchone()[0] or 0
    return snap


def _compare(expected: _Snapshot, live: _Snapshot) -> list[str]:
    problems: list[str] = []
    for table in TABLES:
        if table not in live.tables:
            problems.append(f"missing table {table}")
    groups: list[tuple[str, Mapping[Any, str], Mapping[Any, str]]] = [
        ("column", expected.columns, live.columns),
        ("index", expected.indexes, live.indexes),
        ("constraint", expected.constraints, live.constraints),
        ("trigger", expected.triggers, live.triggers),
    ]
    for kind, want, have in groups:
        for key, definition in want.items():
            table, name = key
            if table not in live.tables:
                continue  # already reported as a missing table
            label = f"{kind} {table}.{name}"
            if key not in have:
                problems.append(f"missing {label} (expected: {definition})")
            elif have[key] != definition:
                problems.append(f"{label} differs (expected: {definition}; found: {have[key]})")
    for name, source in expected.functions.items():
        if name not in live.functions:
            problems.append(f"missing function {name}()")
        elif live.functions[name] != source:
            problems.append(f"function {name}() differs from the template")
    if "outbox_schema_version" in live.tables and live.version != expected.version:
        problems.append(
            f"schema version is {live.version}, expected {expected.version} "
            "(run `outbox-di migrate`)"
        )
    return problems


def _extras(expected: _Snapshot, live: _Snapshot) -> list[str]:
    found: list[str] = []
    for kind, want, have in (
        ("column", expected.columns, live.columns),
        ("index", expected.indexes, live.indexes),
        ("trigger", expected.triggers, live.triggers),
    ):
        found.extend(
            f"extra {kind} {table}.{name}" for table, name in have if (table, name) not in want
        )
    return found


def check(conn: Any, schema_name: str, *, notify: bool = True) -> tuple[list[str], list[str]]:
    """Compare the live ``schema_name`` with a fresh render of the template.

    The template is applied to a scratch schema inside a transaction that is rolled back, and
    both are read from the catalog. Returns ``(differences, extras)``: differences are drift
    (missing or different tables, columns, indexes, constraints, triggers, functions, version);
    extras are objects the template does not have (a service's own additions), reported but
    allowed.
    """
    schema.validate_schema_name(schema_name)
    scratch = f"outbox_di_check_{secrets.token_hex(6)}"
    try:
        with conn.cursor() as cursor:
            try:
                live = _snapshot(cursor, schema_name)
                cursor.execute(schema.render_ddl(scratch, notify=notify))
                expected = _snapshot(cursor, scratch)
            finally:
                conn.rollback()
    except psycopg2.Error as exc:
        raise errors.DatabaseError(f"checking schema {schema_name!r} failed: {exc}") from exc
    return _compare(expected, live), _extras(expected, live)


def assert_in_sync(conn: Any, schema_name: str, *, notify: bool = True) -> None:
    """Raise :class:`~outbox_di.errors.SchemaDriftError` naming each difference, if any."""
    differences, _ = check(conn, schema_name, notify=notify)
    if differences:
        raise errors.SchemaDriftError(schema_name, differences)
