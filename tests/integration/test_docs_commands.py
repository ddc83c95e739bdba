"""Every command of README.md and docs/*.md that can run here runs, as written, against a real
PostgreSQL, and exits as documented (0, or the code in :data:`EXIT_CODES`); where a page shows a
``$ `` command's output, that output is what the command prints.

The pages name their schemas (``catalog``, ``orders``), so each page runs in a scratch *database*
of its own on the test server (dropped afterwards); the only thing substituted is the DSN: in
``OUTBOX_DSN``, ``DATABASE_URL`` and ``DSN``, and for the literal in :data:`DSN_LITERALS`.
Which commands run and which cannot (and why) is in ``tests/doc_commands.py``;
``tests/unit/test_docs.py`` fails on a command that is neither.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import os
import secrets
import shlex
import shutil
import subprocess
import sys
import urllib.parse
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg2
import psycopg2.extensions
import pytest
from psycopg2 import sql

from outbox_di import database, models, repository, schema
from outbox_di.testing import postgres
from tests import doc_commands
from tests.doc_commands import Command

pytestmark = pytest.mark.integration

BIN = Path(sys.executable).parent
DSN_LITERALS = ("postgresql://postgres@127.0.0.1:5432/postgres",)
"""DSNs written out in a page (not as a variable): replaced by the scratch database's."""

EXIT_CODES = {
    "outbox-di render-ddl --schema 'catalog; drop table x'": 2,
    "outbox-di migrate --schema orders": 2,
    "outbox-di status --schema catalog --json": 2,
}
"""Commands documented to fail (their documented output is the error); every other exits 0."""

WITHOUT_DSN = {"outbox-di status --schema catalog --json"}
"""Commands shown run with no DSN anywhere (no flag, no variable, no settings file)."""

HEADER_ONLY = {
    "outbox-di status --schema catalog": "the counts and ages depend on the rows",
    "outbox-di status --schema catalog --inbox": "the counts and ages depend on the rows",
    "outbox-di status --schema catalog --lock-ttl 30s": "the counts and ages depend on the rows",
}
"""Commands whose documented output is an example: only its first line (a header) must match."""

PAGE_DIRECTORY = {"docs/django.md": doc_commands.DJANGO_EXAMPLE}
"""Where a page's commands run until a ``cd`` (default: an empty temporary directory)."""

LOCK_TTL = dt.timedelta(seconds=30)


def _uri(dsn: str, dbname: str) -> str:
    """``dsn`` (a URI or key=value string) as a URI to database ``dbname``."""
    parts = psycopg2.extensions.parse_dsn(dsn)
    user = urllib.parse.quote(parts.pop("user", ""), safe="")
    password = parts.pop("password", None)
    auth = f"{user}:{urllib.parse.quote(password, safe='')}@" if password else f"{user}@"
    host = parts.pop("host", "")
    port = parts.pop("port", "")
    parts.pop("dbname", None)
    query = f"?{urllib.parse.urlencode(parts)}" if parts else ""
    return f"postgresql://{auth if user else ''}{host}{':' + port if port else ''}/{dbname}{query}"


@contextlib.contextmanager
def _scratch_database(dsn: str) -> Iterator[str]:
    name = f"docs_{secrets.token_hex(6)}"
    admin = psycopg2.connect(dsn)
    admin.autocommit = True
    try:
        with admin.cursor() as cursor:
            # template0: CREATE DATABASE from template1 fails while anyone is connected to it.
            cursor.execute(
                sql.SQL("CREATE DATABASE {} TEMPLATE template0").format(sql.Identifier(name))
            )
        try:
            yield _uri(dsn, name)
        finally:
            with admin.cursor() as cursor:
                cursor.execute(
                    sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
                )
    finally:
        admin.close()


def _execute(dsn: str, statements: str) -> None:
    with database.connect(dsn) as conn, conn, conn.cursor() as cursor:
        cursor.execute(statements)


async def _seed_catalog(dsn: str) -> None:
    """Schema ``catalog`` with dead, published and pending outbox rows and a dead inbox row."""
    with database.connect(dsn) as conn:
        database.migrate(conn, "catalog")
        database.migrate(conn, "billing")  # the examples of several schemas
    async with database.open_pool(dsn, min_size=1, max_size=2) as pool:
        outbox = repository.OutboxRepository(pool, "catalog")
        inbox = repository.InboxRepository(pool, "catalog")
        messages = [
            models.Message("item", f"i{n}", ("item.deleted", "item.created")[n % 2], {"n": n})
            for n in range(5)
        ]
        async with pool.acquire() as conn, conn.cursor() as cursor, cursor.begin():
            ids = await outbox.enqueue_many(cursor, messages)
        now = models.utcnow()
        token = uuid.uuid4()
        assert len(await outbox.claim_pending(now, now - LOCK_TTL, 5, token)) == 5
        await outbox.mark_published(ids[:1], token, now - dt.timedelta(days=10))
        for event_id in ids[1:4]:
            await outbox.mark_dead(event_id, token, "no topic")
        await outbox.release(ids[4:], token)
        received = models.ReceivedMessage("e1", "order.paid", b"{}")
        assert await inbox.record_dead("billing", received, "no handler registered")


def _operations_setup(dsn: str, work: Path) -> None:
    asyncio.run(_seed_catalog(dsn))


def _schema_setup(dsn: str, work: Path) -> None:
    (work / "migrations").mkdir()
    (work / "migrations/0007_outbox.sql").write_text(schema.render_ddl("catalog"))


def _migration_setup(dsn: str, work: Path) -> None:
    (work / "migrations").mkdir()


def _django_setup(dsn: str, work: Path) -> None:
    # The page's first `manage.py migrate` comes after `outbox-di migrate` made the schema
    # (Django creates django_migrations in the first schema of its search_path that exists).
    with database.connect(dsn) as conn:
        database.migrate(conn, "catalog")


PAGE_SETUP: dict[str, Callable[[str, Path], None]] = {
    "docs/operations.md": _operations_setup,
    "docs/runbook.md": _operations_setup,
    "docs/fleet.md": _operations_setup,
    "docs/schema.md": _schema_setup,
    "docs/migration.md": _migration_setup,
    "docs/django.md": _django_setup,
}
"""What a page assumes exists before its first command (rows to list, files to read)."""


def _legacy_orders(dsn: str) -> None:
    postgres.drop_schema(dsn, "orders")
    _execute(
        dsn,
        "CREATE SCHEMA orders;"
        "CREATE TABLE orders.outbox_events (id bigserial PRIMARY KEY, payload jsonb)",
    )


def _orders_with_extras(dsn: str) -> None:
    postgres.drop_schema(dsn, "orders")
    with database.connect(dsn) as conn:
        database.migrate(conn, "orders")
    _execute(
        dsn,
        "ALTER TABLE orders.outbox_events ADD COLUMN tenant_id text;"
        "CREATE INDEX outbox_events_tenant_idx ON orders.outbox_events (tenant_id);"
        "CREATE FUNCTION orders.outbox_events_tenant() RETURNS trigger LANGUAGE plpgsql AS "
        "$$ BEGIN RETURN NEW; END $$;"
        "CREATE TRIGGER outbox_events_tenant BEFORE INSERT ON orders.outbox_events "
        "FOR EACH ROW EXECUTE FUNCTION orders.outbox_events_tenant()",
    )


PREPARE: dict[str, Callable[[str], None]] = {
    "outbox-di migrate --schema orders": _legacy_orders,
    "outbox-di check --schema orders": _orders_with_extras,
}
"""The state a command's documented example starts from, made just before it runs."""

LOAD_SETTINGS = (
    "import json, outbox_di.settings as s; print(json.dumps(s.load_mapping(), default=str))"
)


def _pages() -> list[str]:
    return [
        page
        for page in doc_commands.PAGES
        if any(doc_commands.is_run(command) for command in doc_commands.commands(page))
    ]


def _environment(dsn: str, *, with_dsn: bool = True) -> dict[str, str]:
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith("OUTBOX_") and name not in {"DATABASE_URL", "DSN"}
    }
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    if with_dsn:
        env.update(OUTBOX_DSN=dsn, DATABASE_URL=dsn, DSN=dsn)
    return env


def _shell(script: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", "-c", script],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def _normal(lines: list[str] | tuple[str, ...]) -> list[str]:
    return [" ".join(line.split()) for line in lines if line.strip() not in {"", "...", "…"}]


def _check_output(command: Command, printed: str) -> None:
    documented = _normal(command.output)
    if not documented:
        return
    actual = _normal(printed.splitlines())
    if command.key in HEADER_ONLY:
        assert actual[:1] == documented[:1], f"{command}: printed {printed!r}"
        return
    remaining = iter(actual)
    missing = [line for line in documented if not any(line == seen for seen in remaining)]
    assert not missing, f"{command}: documented {missing!r} is not in what it printed:\n{printed}"


def _psql_or_stand_in(command: Command, text: str, cwd: Path, dsn: str) -> str:
    """The psql line as written when psql is installed; else its file, applied the same way."""
    if shutil.which("psql"):
        return text
    words = shlex.split(command.key)
    with database.connect(dsn) as conn, conn, conn.cursor() as cursor:
        cursor.execute((cwd / words[words.index("-f") + 1]).read_text())
    return "true"


@pytest.mark.parametrize("page", _pages())
def test_the_commands_of_a_page_run_as_documented(
    page: str, outbox_dsn: str, tmp_path: Path
) -> None:
    with _scratch_database(outbox_dsn) as dsn:
        if page in PAGE_SETUP:
            PAGE_SETUP[page](dsn, tmp_path)
        cwd = doc_commands.ROOT / PAGE_DIRECTORY[page] if page in PAGE_DIRECTORY else tmp_path
        block = -1
        exports: list[str] = []
        ran = 0
        for command in doc_commands.commands(page):
            if command.block != block:
                block, exports = command.block, []
            if not doc_commands.is_run(command):
                continue
            ran += 1
            text = command.text
            for literal in DSN_LITERALS:
                text = text.replace(literal, shlex.quote(dsn))
            if command.program == "cd":
                cwd = doc_commands.ROOT / command.key.split(maxsplit=1)[1]
                assert cwd.is_dir(), f"{command}: no such directory"
                continue
            if command.program == "export":
                # The variables so far in this block, read the way a service reads them.
                exports.append(text)
                text = "\n".join([*exports, f"python -c {shlex.quote(LOAD_SETTINGS)}"])
            if command.program == "psql":
                text = _psql_or_stand_in(command, text, cwd, dsn)
            if command.key in PREPARE:
                PREPARE[command.key](dsn)
            env = _environment(dsn, with_dsn=command.key not in WITHOUT_DSN)
            done = _shell(text, cwd if command.program != "export" else tmp_path, env)
            printed = done.stdout + done.stderr
            expected = EXIT_CODES.get(command.key, 0)
            assert done.returncode == expected, f"{command}: exit {done.returncode}\n{printed}"
            documented_error = any(" error: " in line for line in command.output)
            assert documented_error == (expected == 2), (
                f"{command}: error shown but exit {expected}"
            )
            _check_output(command, printed)
        assert ran, f"{page}: no command ran"


def test_the_tables_name_documented_commands() -> None:
    keys = {command.key for command in doc_commands.all_commands()}
    for table in (EXIT_CODES, WITHOUT_DSN, HEADER_ONLY, PREPARE):
        stale = sorted(set(table) - keys)
        assert not stale, f"no page has these commands any more: {stale}"
    assert set(PAGE_SETUP) | set(PAGE_DIRECTORY) <= set(doc_commands.PAGES)
