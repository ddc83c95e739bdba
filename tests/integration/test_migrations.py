"""Numbered migrations against a real PostgreSQL: a 0.1.0 schema is version 1, ``migrate``
applies the pending versions once each (``--to``, ``--dry-run``), two ``migrate`` processes
started together both succeed, ``check`` reports ``behind`` and checksum drift, the pool refuses
a schema behind the library, and a v1 schema full of rows is upgraded under a running relay.

Where a test needs a second version and the library ships only one, it adds a version of its
own from a temporary migrations directory (:func:`_migrations_with_extra`): a table filled from
``outbox_events`` by a backfill and an index, the kind of change a real version 2 makes.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import psycopg2
import pytest
from psycopg2 import sql

from outbox_di import cli, config, database, errors, models, repository, schema
from outbox_di.publishing import base
from outbox_di.publishing.task import PublisherTask

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
V010_TEMPLATE = Path(__file__).with_name("data") / "schema_0_1_0.sql.tmpl"

EXTRA = """-- A test's own version: a table filled by a backfill, and an index.
CREATE TABLE IF NOT EXISTS {{schema}}.outbox_test_heads (
    ordering_key text PRIMARY KEY,
    seq bigint NOT NULL
);
INSERT INTO {{schema}}.outbox_test_heads (ordering_key, seq)
SELECT ordering_key, min(seq)
FROM {{schema}}.outbox_events
WHERE status = 'pending' AND ordering_key IS NOT NULL
GROUP BY ordering_key
ON CONFLICT DO NOTHING;
CREATE INDEX IF NOT EXISTS outbox_events_test_type_idx ON {{schema}}.outbox_events (event_type);
"""


def _migrations_with_extra(folder: Path) -> tuple[schema.Migration, ...]:
    """The library's migrations plus one more version of the test's own."""
    for migration in schema.migrations():
        (folder / migration.filename).write_text(migration.text)
    (folder / f"{schema.SCHEMA_VERSION + 1:04d}_test_heads.sql").write_text(EXTRA)
    return schema.load_migrations(folder)


@pytest.fixture
def extra_version(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[schema.Migration, ...]:
    """The library made to ship one version more than it does (for the CLI and the pool)."""
    found = _migrations_with_extra(tmp_path)
    monkeypatch.setattr(schema, "migrations", lambda: found)
    monkeypatch.setattr(schema, "SCHEMA_VERSION", found[-1].version)
    return found


def _q(template: str, name: str) -> sql.Composable:
    """``template`` with ``{schema}`` as the quoted schema name."""
    return sql.SQL(template).format(schema=sql.Identifier(name))


def _fetch(dsn: str, statement: str | sql.Composable) -> list[Any]:
    with contextlib.closing(psycopg2.connect(dsn)) as conn, conn, conn.cursor() as cursor:
        cursor.execute(statement)
        return list(cursor.fetchall())


def _execute(dsn: str, statement: str | sql.Composable) -> None:
    with contextlib.closing(psycopg2.connect(dsn)) as conn, conn, conn.cursor() as cursor:
        cursor.execute(statement)


def _versions(dsn: str, name: str) -> list[tuple[int, str | None]]:
    rows = _fetch(
        dsn, _q("SELECT version, checksum FROM {schema}.outbox_schema_version ORDER BY 1", name)
    )
    return [(int(version), digest) for version, digest in rows]


def _apply_0_1_0(dsn: str, name: str) -> None:
    """What ``outbox-di migrate`` of outbox_di 0.1.0 made: its template, as it shipped."""
    text = V010_TEMPLATE.read_text()
    text = text.replace("-- notify:begin\n", "").replace("-- notify:end\n", "")
    text = text[: text.index("-- no-notify:begin")] + text[text.index("-- no-notify:end") :]
    _execute(
        dsn,
        text.replace("{{schema}}", f'"{name}"')
        .replace("{{outbox_channel}}", f"'{schema.channel_name(name, 'outbox')}'")
        .replace("{{inbox_channel}}", f"'{schema.channel_name(name, 'inbox')}'"),
    )


def test_the_0_1_0_template_is_version_1(outbox_dsn: str, outbox_schema_name: str) -> None:
    """A schema made by 0.1.0 is at version 1, with nothing to apply up to 1 but the checksum;
    structurally it is what migrate --to 1 makes."""
    _apply_0_1_0(outbox_dsn, outbox_schema_name)
    with database.connect(outbox_dsn) as conn:
        assert database.schema_version(conn, outbox_schema_name) == 1
        report = database.inspect(conn, outbox_schema_name)
        assert report.version == 1
        # Only the version table's new column is missing; version 1's objects are all there.
        assert report.drift == (
            "missing column outbox_schema_version.checksum (expected: text NULL)",
        )
        assert any("without a checksum" in note for note in report.notes)
        result = database.migrate(conn, outbox_schema_name, to=1)
        assert result.applied == ()
        assert database.check(conn, outbox_schema_name)[1] == []
    assert _versions(outbox_dsn, outbox_schema_name) == [(1, schema.migrations()[0].checksum)]
    with database.connect(outbox_dsn) as conn:
        report = database.inspect(conn, outbox_schema_name)
        assert report.drift == () and report.notes == ()
        assert report.behind == (schema.SCHEMA_VERSION > 1)


def test_migrate_to_latest_from_0_1_0_then_nothing_changes(
    outbox_dsn: str, outbox_schema_name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    _apply_0_1_0(outbox_dsn, outbox_schema_name)
    base_args = ["--dsn", outbox_dsn, "--schema", outbox_schema_name]
    assert cli.main(["migrate", *base_args]) == 0
    out = capsys.readouterr().out
    assert f"migrated: version {schema.SCHEMA_VERSION}" in out
    before = _fetch(
        outbox_dsn, _q("SELECT * FROM {schema}.outbox_schema_version", outbox_schema_name)
    )
    assert cli.main(["migrate", *base_args]) == 0
    assert "(nothing to apply)" in capsys.readouterr().out
    after = _fetch(
        outbox_dsn, _q("SELECT * FROM {schema}.outbox_schema_version", outbox_schema_name)
    )
    assert after == before
    assert cli.main(["check", *base_args]) == 0
    assert "in sync" in capsys.readouterr().out
    assert [v for v, _ in _versions(outbox_dsn, outbox_schema_name)] == list(
        range(1, schema.SCHEMA_VERSION + 1)
    )


def test_migrate_to_dry_run_and_check_behind(
    outbox_dsn: str,
    outbox_schema_name: str,
    extra_version: Sequence[schema.Migration],
    capsys: pytest.CaptureFixture[str],
) -> None:
    latest = extra_version[-1].version
    base_args = ["--dsn", outbox_dsn, "--schema", outbox_schema_name]
    assert cli.main(["migrate", *base_args, "--to", "1"]) == 0
    assert "migrated: version 1 (applied 1)" in capsys.readouterr().out

    assert cli.main(["check", *base_args]) == 1
    out = capsys.readouterr().out
    assert f"behind: at version 1, library expects {latest}" in out
    assert "DRIFT" not in out  # compared with what version 1 builds: nothing else is wrong
    assert cli.main(["check", *base_args, "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert (report["version"], report["latest"], report["behind"]) == (1, latest, True)

    # --dry-run prints the pending versions' SQL and runs none of it.
    assert cli.main(["migrate", *base_args, "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert f'CREATE TABLE IF NOT EXISTS "{outbox_schema_name}".outbox_test_heads' in out
    assert f"VALUES ({latest}, '{extra_version[-1].checksum}')" in out
    assert out.count("BEGIN;") == latest - 1
    assert [v for v, _ in _versions(outbox_dsn, outbox_schema_name)] == [1]

    assert cli.main(["migrate", *base_args]) == 0
    applied = ", ".join(map(str, range(2, latest + 1)))
    assert f"migrated: version {latest} (applied {applied})" in capsys.readouterr().out
    assert cli.main(["check", *base_args]) == 0
    assert cli.main(["migrate", *base_args, "--dry-run"]) == 0
    assert f"is at version {latest}: nothing to run" in capsys.readouterr().out.splitlines()[-1]


def test_to_outside_the_shipped_versions_is_refused(
    outbox_dsn: str, outbox_schema_name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    latest = schema.SCHEMA_VERSION
    for command in (["migrate", "--dsn", outbox_dsn], ["render-ddl"]):
        assert cli.main([*command, "--schema", outbox_schema_name, "--to", str(latest + 1)]) == 2
        assert f"this outbox_di has versions 1 to {latest}" in capsys.readouterr().err


def test_a_changed_checksum_is_drift(
    outbox_dsn: str, outbox_schema_name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with database.connect(outbox_dsn) as conn:
        database.migrate(conn, outbox_schema_name)
    _execute(
        outbox_dsn,
        _q(
            "UPDATE {schema}.outbox_schema_version SET checksum = repeat('0', 64) "
            "WHERE version = 1",
            outbox_schema_name,
        ),
    )
    assert cli.main(["check", "--dsn", outbox_dsn, "--schema", outbox_schema_name]) == 1
    out = capsys.readouterr().out
    assert (
        "DRIFT  checksum of version 1 (0001_initial.sql) differs: applied 000000000000, this "
        f"outbox_di's file {schema.migrations()[0].checksum[:12]}"
    ) in out
    # migrate does not overwrite a recorded checksum: the drift stays for a person.
    with database.connect(outbox_dsn) as conn:
        database.migrate(conn, outbox_schema_name)
        assert any(
            "checksum of version 1" in line for line in database.check(conn, outbox_schema_name)[0]
        )


def test_two_migrate_processes_started_together_both_succeed(
    outbox_dsn: str, outbox_schema_name: str
) -> None:
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("OUTBOX_")},
        "OUTBOX_DSN": outbox_dsn,
        "OUTBOX_SCHEMA": outbox_schema_name,
    }
    command = [sys.executable, "-m", "outbox_di.cli", "migrate"]
    processes = [
        subprocess.Popen(
            command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for _ in range(2)
    ]
    outputs = [process.communicate(timeout=60) for process in processes]
    for process, (out, err) in zip(processes, outputs, strict=True):
        assert process.returncode == 0, out + err
        assert f"migrated: version {schema.SCHEMA_VERSION}" in out
    applied = sorted(out for out, _ in outputs)
    assert any("(nothing to apply)" in out for out in applied) or all(
        "applied" in out for out in applied
    )
    assert [v for v, _ in _versions(outbox_dsn, outbox_schema_name)] == list(
        range(1, schema.SCHEMA_VERSION + 1)
    )
    with database.connect(outbox_dsn) as conn:
        assert database.check(conn, outbox_schema_name) == ([], [])


def test_render_ddl_applied_as_one_script_is_what_migrate_builds(
    outbox_dsn: str, outbox_schema_name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    _execute(outbox_dsn, schema.render_ddl(outbox_schema_name, to=1))
    # Applied twice (each version's statements are idempotent), then the rest of them.
    _execute(outbox_dsn, schema.render_ddl(outbox_schema_name))
    _execute(outbox_dsn, schema.render_ddl(outbox_schema_name))
    with database.connect(outbox_dsn) as conn:
        assert database.check(conn, outbox_schema_name) == ([], [])
        assert database.migrate(conn, outbox_schema_name).applied == ()
    assert [d for _, d in _versions(outbox_dsn, outbox_schema_name)] == [
        m.checksum for m in schema.migrations()
    ]
    assert cli.main(["render-ddl", "--schema", "catalog", "--from", "1", "--to", "1"]) == 0
    assert capsys.readouterr().out == schema.render_ddl("catalog", to=1)


def test_no_notify_and_back(outbox_dsn: str, outbox_schema_name: str) -> None:
    triggers = sql.SQL(
        "SELECT count(*) FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid "
        "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = {name} "
        "AND t.tgname LIKE '%%_notify'"
    ).format(name=sql.Literal(outbox_schema_name))
    with database.connect(outbox_dsn) as conn:
        database.migrate(conn, outbox_schema_name)
        assert _fetch(outbox_dsn, triggers) == [(2,)]
        database.migrate(conn, outbox_schema_name, notify=False)
        assert _fetch(outbox_dsn, triggers) == [(0,)]
        assert database.check(conn, outbox_schema_name, notify=False) == ([], [])
        database.migrate(conn, outbox_schema_name)
        assert _fetch(outbox_dsn, triggers) == [(2,)]
        assert database.check(conn, outbox_schema_name) == ([], [])


def test_a_version_is_applied_only_after_the_earlier_ones(
    outbox_dsn: str, outbox_schema_name: str, tmp_path: Path
) -> None:
    found = _migrations_with_extra(tmp_path)
    with (
        database.connect(outbox_dsn) as conn,
        pytest.raises(errors.OutboxError) as caught,
        conn,
        conn.cursor() as cursor,
    ):
        database.apply_version(cursor, outbox_schema_name, found[-1])
    assert "not applied yet; run `outbox-di migrate`" in str(caught.value)


async def test_the_pool_refuses_a_schema_behind_the_library(
    outbox_dsn: str,
    outbox_schema_name: str,
    outbox_pool: Any,
    extra_version: Sequence[schema.Migration],
) -> None:
    with database.connect(outbox_dsn) as conn:
        database.migrate(conn, outbox_schema_name, to=1)
    with pytest.raises(errors.SchemaNotReadyError) as caught:
        await database.require_schema(outbox_pool, outbox_schema_name, outbox_dsn)
    latest = extra_version[-1].version
    assert f"its version is 1, this outbox_di needs version {latest}" in str(caught.value)
    assert f"outbox-di migrate --dsn {outbox_dsn} --schema {outbox_schema_name}" in str(
        caught.value
    )
    with database.connect(outbox_dsn) as conn:
        database.migrate(conn, outbox_schema_name)
    assert await database.require_schema(outbox_pool, outbox_schema_name, outbox_dsn) == latest


# -- an upgrade under a running relay --------------------------------------------------------


def _relay_config(name: str, dsn: str) -> config.OutboxConfig:
    return config.OutboxConfig.from_mapping(
        {
            "schema": name,
            "dsn": dsn,
            "publisher": {
                "topic": "events",
                "ordering": False,
                "tick_interval": "20ms",
                "lock_ttl": "2s",
                "publish_timeout": "1s",
                "batch_size": 50,
                "workers": 2,
                "backoff": {"initial": "10ms", "max": "50ms", "jitter": 0.1},
            },
        }
    )


@contextlib.contextmanager
def _target_migrations(tmp_path: Path) -> Iterator[tuple[schema.Migration, ...]]:
    """The library's migrations, plus a test version when the library ships only version 1
    (so the upgrade always applies at least one version with a backfill)."""
    if schema.SCHEMA_VERSION > 1:
        yield schema.migrations()
    else:
        yield _migrations_with_extra(tmp_path)


async def test_upgrading_a_v1_schema_under_a_running_relay_loses_and_duplicates_nothing(
    outbox_dsn: str, outbox_schema_name: str, outbox_pool: Any, tmp_path: Path
) -> None:
    """A v1 schema (``migrate --to 1``: 0001 only) holds pending, leased, published and dead
    outbox rows and pending, processed and dead inbox rows. A relay (PublisherTask with the
    in-memory publisher) runs on it, and a writer keeps enqueueing, while ``migrate`` takes it
    to the latest version. Every pending and leased event (the lease is backdated: its worker
    died) and every one enqueued meanwhile is published exactly once; published and dead rows
    are not published again; the inbox rows are as they were.

    The relay runs with ``publisher.ordering`` off: the unordered claim works on every version
    from 1, while the ordered claim may need what a later version adds. The relay is built on
    the repository directly, as a process of the new release started before the migration
    would not be (the pool's start refuses a schema behind the library).
    """
    name = outbox_schema_name
    with _target_migrations(tmp_path) as found:
        with database.connect(outbox_dsn) as conn:
            database.migrate(conn, name, to=1, found=found)
            assert database.schema_version(conn, name) == 1
        outbox = repository.OutboxRepository(outbox_pool, name)
        inbox = repository.InboxRepository(outbox_pool, name)

        async def enqueue(prefix: str, count: int) -> list[uuid.UUID]:
            messages = [
                models.Message("item", f"{prefix}-{n % 7}", "item.created", {"n": n})
                for n in range(count)
            ]
            async with outbox_pool.acquire() as c, c.cursor() as cursor, cursor.begin():
                return await outbox.enqueue_many(cursor, messages)

        published_ids = await enqueue("published", 20)
        dead_ids = await enqueue("dead", 10)
        leased_ids = await enqueue("leased", 30)
        now = models.utcnow()
        token = uuid.uuid4()
        stale = now - dt.timedelta(seconds=30)
        claimed = await outbox.claim_pending(now, stale, 100, token)
        assert {e.event_id for e in claimed} == {*published_ids, *dead_ids, *leased_ids}
        await outbox.mark_published(published_ids, token, now)
        for event_id in dead_ids:
            await outbox.mark_dead(event_id, token, "no topic")
        # The leased rows' worker died an hour ago: their lease is long expired.
        _execute(
            outbox_dsn,
            _q(
                "UPDATE {schema}.outbox_events SET locked_at = now() - interval '1 hour' "
                "WHERE lock_token IS NOT NULL AND status = 'pending'",
                name,
            ),
        )
        pending_ids = await enqueue("pending", 200)

        received = [models.ReceivedMessage(f"in-{n}", "order.paid", b"{}") for n in range(12)]
        assert await inbox.record_received_many("billing", received) == 12
        inbox_claimed = await inbox.claim("billing", now, stale, 4, token)
        await inbox.mark_processed("billing", [e.event_id for e in inbox_claimed], token, now)
        assert await inbox.record_dead(
            "billing", models.ReceivedMessage("in-dead", "order.paid", b"{}"), "no handler"
        )
        inbox_before = _fetch(
            outbox_dsn,
            _q("SELECT event_id, status, processed_at FROM {schema}.inbox_events ORDER BY 1", name),
        )

        sink = base.InMemoryPublisher()
        enqueued_meanwhile: list[uuid.UUID] = []

        async def writer() -> None:
            for round_ in range(40):
                enqueued_meanwhile.extend(await enqueue(f"during-{round_}", 5))
                await asyncio.sleep(0.01)

        async with PublisherTask(_relay_config(name, outbox_dsn), outbox, sink) as task:
            writing = asyncio.create_task(writer())
            await asyncio.sleep(0.05)

            def upgrade() -> database.MigrateResult:
                with database.connect(outbox_dsn) as conn:
                    return database.migrate(conn, name, found=found)

            result = await asyncio.to_thread(upgrade)
            await writing
            expected = {*leased_ids, *pending_ids, *enqueued_meanwhile}
            deadline = asyncio.get_running_loop().time() + 30
            while len(sink.published) < len(expected):
                assert asyncio.get_running_loop().time() < deadline, "relay did not catch up"
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.3)  # anything published twice would show up by now
            assert task.stats.published >= len(expected)

        assert result.applied == tuple(range(2, found[-1].version + 1))
        published = [event.event_id for event in sink.published]
        assert len(published) == len(set(published)), "an event was published twice"
        assert set(published) == expected
        counts = dict(
            _fetch(
                outbox_dsn,
                _q("SELECT status, count(*) FROM {schema}.outbox_events GROUP BY 1", name),
            )
        )
        assert counts == {"published": len(expected) + len(published_ids), "dead": len(dead_ids)}
        assert (
            _fetch(
                outbox_dsn,
                _q(
                    "SELECT event_id, status, processed_at FROM {schema}.inbox_events ORDER BY 1",
                    name,
                ),
            )
            == inbox_before
        )
        with database.connect(outbox_dsn) as conn:
            report = database.inspect(conn, name, found=found)
        assert report.clean and report.version == found[-1].version


def test_a_failing_version_rolls_back_alone_and_is_named(
    outbox_dsn: str, outbox_schema_name: str, tmp_path: Path
) -> None:
    for migration in schema.migrations():
        (tmp_path / migration.filename).write_text(migration.text)
    broken = f"{schema.SCHEMA_VERSION + 1:04d}_broken.sql"
    (tmp_path / broken).write_text(
        "CREATE TABLE {{schema}}.outbox_test_half (id int);\n"
        "CREATE INDEX outbox_test_idx ON {{schema}}.outbox_events (no_such_column);\n"
    )
    found = schema.load_migrations(tmp_path)
    with database.connect(outbox_dsn) as conn:
        with pytest.raises(errors.DatabaseError) as caught:
            database.migrate(conn, outbox_schema_name, found=found)
        message = str(caught.value)
        assert message.startswith(f"migrating schema {outbox_schema_name!r} failed: column")
        assert f"at version {found[-1].version} ({broken}): rolled back" in message
        # The versions before it are applied; nothing of the broken one is.
        assert database.schema_version(conn, outbox_schema_name) == schema.SCHEMA_VERSION
    assert _fetch(
        outbox_dsn, _q("SELECT to_regclass('{schema}.outbox_test_half')", outbox_schema_name)
    ) == [(None,)]


def test_check_file_takes_one_committed_file_per_version(
    tmp_path: Path,
    extra_version: Sequence[schema.Migration],
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A service that owns its migrations commits ``render-ddl --from N --to N`` per version;
    ``check --file`` reads them in order, as one."""
    latest = extra_version[-1].version
    files = []
    for version in (1, latest):
        path = tmp_path / f"{version:04d}_outbox.sql"
        assert (
            cli.main(
                [
                    "render-ddl",
                    "--schema",
                    "orders",
                    "--from",
                    "1" if version == 1 else "2",
                    "--to",
                    str(1 if version == 1 else latest),
                ]
            )
            == 0
        )
        path.write_text(capsys.readouterr().out)
        files += ["--file", str(path)]
    assert cli.main(["check", "--schema", "orders", *files]) == 0
    assert "in sync" in capsys.readouterr().out
    assert cli.main(["check", "--schema", "orders", *files[:2]]) == 1
    assert 'missing statement: CREATE TABLE IF NOT EXISTS "orders".outbox_test_heads' in (
        capsys.readouterr().out
    )


@pytest.mark.parametrize("migration", schema.migrations(), ids=lambda m: m.filename)
def test_every_migration_is_idempotent(
    outbox_dsn: str, outbox_schema_name: str, migration: schema.Migration
) -> None:
    """Run again on a schema that has it, each version changes nothing and fails nothing: what
    lets ``render-ddl``'s text run on a schema at an earlier version, and Django's and
    ``outbox-di migrate``'s runs be mixed."""
    with database.connect(outbox_dsn) as conn:
        database.migrate(conn, outbox_schema_name, to=migration.version)
        for notify in (True, False, True):
            try:
                with conn, conn.cursor() as cursor:
                    cursor.execute(migration.render(outbox_schema_name, notify=notify))
            except psycopg2.Error as exc:
                pytest.fail(
                    f"{migration.filename} fails when run again ({exc}); write each statement "
                    "so that it can run twice (IF NOT EXISTS, CREATE OR REPLACE, ON CONFLICT DO "
                    "NOTHING)"
                )
        assert database.check(conn, outbox_schema_name) == (
            [f"behind: at version {migration.version}, library expects {schema.SCHEMA_VERSION}"]
            if migration.version < schema.SCHEMA_VERSION
            else [],
            [],
        )


def test_apply_version_records_the_checksum_of_a_0_1_0_version(
    outbox_dsn: str, outbox_schema_name: str
) -> None:
    """What Django's 0001 does on a schema 0.1.0 made: nothing to apply, the checksum noted."""
    _apply_0_1_0(outbox_dsn, outbox_schema_name)
    with database.connect(outbox_dsn) as conn, conn, conn.cursor() as cursor:
        assert not database.apply_version(cursor, outbox_schema_name, schema.migrations()[0])
    assert _versions(outbox_dsn, outbox_schema_name) == [(1, schema.migrations()[0].checksum)]
