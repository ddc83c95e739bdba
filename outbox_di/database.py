"""The library's own database access: the aiopg pool, migrations and the drift check."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import secrets
import shlex
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from typing import Any

import aiopg
import psycopg2
import psycopg2.errors

from outbox_di import errors, observability, redaction, schema

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
    # JIT compiles a plan whose estimated cost passes jit_above_cost, which the ordered claim's
    # recursive part can when the statistics show no keyed rows: 52 ms of compiling for a claim
    # that runs in 7.5 ms. No relay statement runs long enough to repay it.
    "jit": "off",
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
        raise _connect_error(dsn, exc) from exc
    try:
        yield pool
    finally:
        pool.close()
        await pool.wait_closed()


def _connect_error(dsn: str, exc: Exception) -> errors.DatabaseError:
    """The error of a failed connect: the DSN without its password, and the driver's reason
    with any part of the password it quotes (a string libpq could not parse) masked too."""
    reason = redaction.redact_text(str(exc).strip(), dsn)
    shown = redaction.redact_dsn(dsn)
    return errors.DatabaseError(f"cannot connect to PostgreSQL ({shown}): {reason}")


@contextlib.contextmanager
def connect(dsn: str, *, connect_timeout: float = 10.0) -> Iterator[Any]:
    """A plain psycopg2 connection for one-off work (migrate, check, operator commands)."""
    try:
        conn = psycopg2.connect(
            dsn, connect_timeout=max(1, round(connect_timeout)), application_name="outbox_di"
        )
    except psycopg2.Error as exc:
        raise _connect_error(dsn, exc) from exc
    try:
        yield conn
    finally:
        conn.close()


_LOCK_SQL = "SELECT pg_advisory_xact_lock(hashtext(CAST(%(lock_key)s AS text)))"

# Whether the schema, its version table and the table's checksum column exist, and which of the
# NOTIFY triggers are there: catalog only, so it runs whatever state the schema is in.
_VERSION_STATE_SQL = """
SELECT
    EXISTS (SELECT 1 FROM pg_catalog.pg_namespace WHERE nspname = %(schema)s),
    EXISTS (
        SELECT 1
        FROM pg_catalog.pg_class AS c
        JOIN pg_catalog.pg_namespace AS n ON n.oid = c.relnamespace
        WHERE n.nspname = %(schema)s AND c.relname = 'outbox_schema_version'
          AND c.relkind IN ('r', 'p')
    ),
    EXISTS (
        SELECT 1
        FROM pg_catalog.pg_attribute AS a
        JOIN pg_catalog.pg_class AS c ON c.oid = a.attrelid
        JOIN pg_catalog.pg_namespace AS n ON n.oid = c.relnamespace
        WHERE n.nspname = %(schema)s AND c.relname = 'outbox_schema_version'
          AND a.attname = 'checksum' AND NOT a.attisdropped
    ),
    ARRAY(
        SELECT t.tgname::text
        FROM pg_catalog.pg_trigger AS t
        JOIN pg_catalog.pg_class AS c ON c.oid = t.tgrelid
        JOIN pg_catalog.pg_namespace AS n ON n.oid = c.relnamespace
        WHERE n.nspname = %(schema)s AND NOT t.tgisinternal
          AND t.tgname IN ('outbox_events_notify', 'inbox_events_notify')
    )
"""

_NOTIFY_TRIGGERS = frozenset({"outbox_events_notify", "inbox_events_notify"})


@dataclasses.dataclass(frozen=True)
class VersionState:
    """What a schema's version table says: which versions are applied, with which checksum."""

    schema_exists: bool
    table_exists: bool
    has_checksum_column: bool
    applied: Mapping[int, str | None]
    """Applied version to its recorded checksum (``None``: recorded by outbox_di 0.1.0)."""
    notify_triggers: frozenset[str] = frozenset()

    @property
    def version(self) -> int | None:
        """The highest applied version; 0 when the table is empty, ``None`` without a table."""
        if not self.table_exists:
            return None
        return max(self.applied, default=0)

    @property
    def needs_version_table(self) -> bool:
        """Whether ``sql/schema_version.sql`` must run (a missing table or checksum column)."""
        return not (self.table_exists and self.has_checksum_column)


def read_versions(cursor: Any, schema_name: str) -> VersionState:
    """The :class:`VersionState` of ``schema_name``, read with a DB-API cursor (psycopg2, or
    Django's) inside the caller's transaction."""
    schema.validate_schema_name(schema_name)
    cursor.execute(_VERSION_STATE_SQL, {"schema": schema_name})
    schema_exists, table_exists, has_checksum, triggers = cursor.fetchone()
    applied: dict[int, str | None] = {}
    if table_exists:
        name = "applied_versions" if has_checksum else "applied_versions_without_checksum"
        cursor.execute(schema.version_sql(name, schema_name))
        applied = {int(version): digest for version, digest in cursor.fetchall()}
    return VersionState(
        bool(schema_exists), bool(table_exists), bool(has_checksum), applied, frozenset(triggers)
    )


def lock_schema(cursor: Any, schema_name: str) -> None:
    """Take the schema's migration lock until the end of the current transaction.

    One advisory lock per schema (keyed on its name, as outbox_di 0.1.0 keyed it), so every
    ``outbox-di migrate``, Django migration and test fixture migrating one schema waits for the
    others, whichever release of the library runs them.
    """
    cursor.execute(_LOCK_SQL, {"lock_key": f"outbox_di:{schema.validate_schema_name(schema_name)}"})


def apply_version(
    cursor: Any,
    schema_name: str,
    migration: schema.Migration,
    *,
    notify: bool = True,
) -> bool:
    """Apply one migration inside the caller's transaction, unless it is already applied.

    Takes the schema's migration lock, reads the applied versions under it, creates (or brings
    up to date) the version table when needed, runs the migration and records it with its
    checksum (an applied version recorded without one, by outbox_di 0.1.0, gets it). Returns
    whether it ran. ``cursor`` is any DB-API cursor taking ``%(name)s``
    parameters (psycopg2's, Django's); the caller commits.
    """
    lock_schema(cursor, schema_name)
    state = read_versions(cursor, schema_name)
    if migration.version in state.applied:
        if state.applied[migration.version] is None:  # recorded by outbox_di 0.1.0
            if not state.has_checksum_column:
                cursor.execute(schema.render_version_table(schema_name))
            cursor.execute(
                schema.version_sql("fill_checksum", schema_name),
                {"version": migration.version, "checksum": migration.checksum},
            )
        return False
    earlier = [v for v in range(1, migration.version) if v not in state.applied]
    if earlier:
        raise errors.OutboxError(
            f"cannot apply version {migration.version} to schema {schema_name!r}: version(s) "
            f"{', '.join(map(str, earlier))} not applied yet; run `outbox-di migrate`, which "
            "applies them in order"
        )
    if state.needs_version_table:
        cursor.execute(schema.render_version_table(schema_name))
    cursor.execute(migration.render(schema_name, notify=notify))
    cursor.execute(schema.record_version_sql(schema_name, migration))
    return True


@dataclasses.dataclass(frozen=True)
class MigrateResult:
    """What :func:`migrate` did: the versions it applied (empty when there was nothing to do)."""

    schema: str
    applied: tuple[int, ...]
    version: int
    """The schema's version afterwards."""
    statements: tuple[str, ...] = ()
    """The SQL run (or, for a dry run, that would run), one entry per transaction."""


def _upkeep_sql(
    schema_name: str,
    state: VersionState,
    chosen: Sequence[schema.Migration],
    *,
    notify: bool,
    pending: bool,
) -> list[tuple[str, Mapping[str, Any] | None]]:
    """What brings an already-applied schema in line: the checksum column and the checksums
    outbox_di 0.1.0 did not record, and the NOTIFY triggers when they differ from ``notify``."""
    if not state.table_exists:
        return []
    steps: list[tuple[str, Mapping[str, Any] | None]] = []
    if not state.has_checksum_column:
        steps.append((schema.render_version_table(schema_name), None))
    known = {m.version: m for m in chosen}
    for version, digest in sorted(state.applied.items()):
        if digest is None and version in known:
            steps.append(
                (
                    schema.version_sql("fill_checksum", schema_name),
                    {"version": version, "checksum": known[version].checksum},
                )
            )
    wrong = state.notify_triggers != _NOTIFY_TRIGGERS if notify else bool(state.notify_triggers)
    if state.applied and not pending and wrong:
        # The migrations' notify (or no-notify) sections are idempotent: replayed in order
        # they switch a schema between the two modes.
        text = "".join(
            m.render_notify(schema_name, notify=notify)
            for m in chosen
            if m.version in state.applied
        )
        if text.strip():
            steps.append((text, None))
    return steps


def _display(sql: str, params: Mapping[str, Any] | None) -> str:
    if not params:
        return sql.strip()
    shown = sql
    for key, value in params.items():
        shown = shown.replace(f"%({key})s", repr(value) if isinstance(value, str) else str(value))
    return shown.strip() + ";"


def migrate(
    conn: Any,
    schema_name: str,
    *,
    notify: bool = True,
    to: int | None = None,
    dry_run: bool = False,
    found: Sequence[schema.Migration] | None = None,
) -> MigrateResult:
    """Bring ``schema_name`` to version ``to`` (default: the latest this library ships).

    Each pending migration runs in its own transaction, in order, under the schema's advisory
    lock (:func:`lock_schema`), which also re-reads the applied versions: several processes
    migrating one schema at once wait for each other and none applies a version twice. Running
    it again changes nothing. A schema made by outbox_di 0.1.0 is at version 1; its version
    table gets the checksum column and version 1's checksum. The NOTIFY triggers follow
    ``notify`` (``--no-notify`` drops them, a later ``migrate`` without it puts them back).

    ``dry_run`` runs nothing: the result's ``statements`` are what would run. ``found``
    replaces the library's migrations (tests). ``conn`` is a psycopg2 connection (see
    :func:`connect`).
    """
    chosen = schema.select_migrations(None, to, found)
    done: list[int] = []
    statements: list[str] = []
    current: schema.Migration | None = None
    try:
        with conn, conn.cursor() as cursor:
            if not dry_run:
                lock_schema(cursor, schema_name)
            state = read_versions(cursor, schema_name)
            _warn_drift(schema_name, state, chosen)
            pending = [m for m in chosen if m.version not in state.applied]
            upkeep = _upkeep_sql(schema_name, state, chosen, notify=notify, pending=bool(pending))
            if upkeep:
                shown = "\n".join(_display(sql, params) for sql, params in upkeep)
                statements.append(f"-- the version table's checksums, the NOTIFY triggers\n{shown}")
                if not dry_run:
                    for sql, params in upkeep:
                        cursor.execute(sql, params)
            if dry_run:
                conn.rollback()
        for migration in pending:
            label = f"-- outbox_di version {migration.version}: {migration.filename}\n"
            if dry_run:
                text = migration.render(schema_name, notify=notify).rstrip("\n") + "\n\n"
                if not state.table_exists and not done:
                    text = schema.render_version_table(schema_name) + "\n" + text
                record = schema.record_version_sql(schema_name, migration)
                statements.append(label + text + record)
                done.append(migration.version)
                continue
            current = migration
            with conn, conn.cursor() as cursor:
                if apply_version(cursor, schema_name, migration, notify=notify):
                    done.append(migration.version)
                    statements.append(label + migration.render(schema_name, notify=notify))
        current = None
        if pending and not dry_run:
            # The triggers of a schema that was at another notify mode than asked.
            with conn, conn.cursor() as cursor:
                lock_schema(cursor, schema_name)
                state = read_versions(cursor, schema_name)
                for sql, params in _upkeep_sql(
                    schema_name, state, chosen, notify=notify, pending=False
                ):
                    cursor.execute(sql, params)
    except psycopg2.Error as exc:
        where = ""
        if current is not None:
            before = ", ".join(map(str, done)) or "none"
            where = (
                f"\n  at version {current.version} ({current.filename}): rolled back; the versions "
                f"applied before it stay applied (this run: {before})"
            )
        raise errors.DatabaseError(
            f"migrating schema {schema_name!r} failed: {str(exc).strip()}{where}"
        ) from exc
    version = max([*state.applied, *done], default=0)
    return MigrateResult(schema_name, tuple(done), version, tuple(statements))


def _warn_drift(schema_name: str, state: VersionState, chosen: Sequence[schema.Migration]) -> None:
    for line in _checksum_drift(state, chosen):
        observability.logger.warning("schema %r: %s", schema_name, line)


def _checksum_drift(state: VersionState, known: Sequence[schema.Migration]) -> list[str]:
    by_version = {m.version: m for m in known}
    found: list[str] = []
    for version, digest in sorted(state.applied.items()):
        migration = by_version.get(version)
        if migration is None or digest is None or digest == migration.checksum:
            continue
        found.append(
            f"checksum of version {version} ({migration.filename}) differs: applied "
            f"{digest[:12]}, this outbox_di's file {migration.checksum[:12]} (the migration "
            "changed after it was applied; compare it with `outbox-di render-ddl`)"
        )
    return found


def schema_version(conn: Any, schema_name: str) -> int | None:
    """The version recorded in the schema (the highest applied), ``None`` when it was never
    migrated."""
    try:
        with conn, conn.cursor() as cursor:
            return read_versions(cursor, schema_name).version
    except psycopg2.Error as exc:
        raise errors.DatabaseError(
            f"reading the version of schema {schema_name!r} failed: {exc}"
        ) from exc


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
    values = {"schema": schema_name, "tables": list(TABLES)}
    version: int | None = None
    try:
        async with pool.acquire() as conn, conn.cursor() as cursor:
            try:
                # The version subquery fails at once when the schema or the table is missing.
                current = schema.version_sql("current_version", schema_name).strip().rstrip(";")
                await cursor.execute(f"{_PRESENT_SQL},\n    ({current})", values)
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
    shown = shlex.quote(redaction.redact_dsn(dsn))
    return f"outbox-di migrate --dsn {shown} --schema {schema_name}"


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
            problems.append(f"function {name}() differs from the migrations")
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


@dataclasses.dataclass(frozen=True)
class SchemaReport:
    """What :func:`inspect` found: the schema's version against the library's, and drift."""

    schema: str
    version: int | None
    """The highest applied version (0: none recorded; ``None``: no version table)."""
    latest: int
    """The version this library ships (:data:`schema.SCHEMA_VERSION`)."""
    drift: tuple[str, ...]
    """Differences from the expected state, and applied versions whose checksum differs."""
    extras: tuple[str, ...]
    """Objects the migrations do not have (a service's own additions): allowed."""
    notes: tuple[str, ...] = ()
    """Remarks that fail nothing (a version recorded without a checksum, a newer schema)."""

    @property
    def behind(self) -> bool:
        return self.version is not None and self.version < self.latest

    @property
    def differences(self) -> list[str]:
        """``behind: ...`` first when it is, then the drift: empty when the schema is clean."""
        head = (
            [f"behind: at version {self.version}, library expects {self.latest}"]
            if self.behind
            else []
        )
        return head + list(self.drift)

    @property
    def clean(self) -> bool:
        return not self.differences


def inspect(
    conn: Any,
    schema_name: str,
    *,
    notify: bool = True,
    found: Sequence[schema.Migration] | None = None,
) -> SchemaReport:
    """Compare the live ``schema_name`` with what the migrations build.

    The migrations up to the schema's own version (all of them when it has none, or is newer)
    are applied to a scratch schema inside a transaction that is rolled back, and both are read
    from the catalog: tables, columns (type, nullability, default, identity), indexes,
    constraints, triggers and trigger functions. So a schema behind the library reports
    ``behind`` alone, and drift is what ``migrate`` would not fix. The checksum recorded for
    each applied version is compared with the library's file.
    """
    schema.validate_schema_name(schema_name)
    chosen = tuple(found or schema.migrations())
    latest = chosen[-1].version
    scratch = f"outbox_di_check_{secrets.token_hex(6)}"
    try:
        with conn.cursor() as cursor:
            try:
                state = read_versions(cursor, schema_name)
                live = _snapshot(cursor, schema_name)
                version = state.version
                upto = version if version is not None and 1 <= version <= latest else latest
                cursor.execute(schema.render_ddl(scratch, notify=notify, to=upto, found=chosen))
                expected = _snapshot(cursor, scratch)
            finally:
                conn.rollback()
    except psycopg2.Error as exc:
        raise errors.DatabaseError(f"checking schema {schema_name!r} failed: {exc}") from exc
    drift = _compare(expected, live) + _checksum_drift(state, chosen)
    notes: list[str] = []
    unrecorded = [v for v, digest in sorted(state.applied.items()) if digest is None]
    if unrecorded:
        notes.append(
            f"version(s) {', '.join(map(str, unrecorded))} recorded without a checksum (by "
            "outbox_di 0.1.0); the next `outbox-di migrate` records it"
        )
    if version is not None and version > latest:
        notes.append(
            f"ahead: at version {version}, this outbox_di knows versions up to {latest} (a "
            "later release migrated it); upgrade outbox_di in this service"
        )
    return SchemaReport(
        schema_name, version, latest, tuple(drift), tuple(_extras(expected, live)), tuple(notes)
    )


def check(
    conn: Any,
    schema_name: str,
    *,
    notify: bool = True,
    found: Sequence[schema.Migration] | None = None,
) -> tuple[list[str], list[str]]:
    """``(differences, extras)`` of :func:`inspect`: differences are ``behind: ...`` and drift
    (missing or different tables, columns, indexes, constraints, triggers, functions, changed
    checksums); extras are objects the migrations do not have, reported but allowed."""
    report = inspect(conn, schema_name, notify=notify, found=found)
    return report.differences, list(report.extras)


def assert_in_sync(conn: Any, schema_name: str, *, notify: bool = True) -> None:
    """Raise :class:`~outbox_di.errors.SchemaDriftError` naming each difference, if any."""
    differences, _ = check(conn, schema_name, notify=notify)
    if differences:
        raise errors.SchemaDriftError(schema_name, differences)
