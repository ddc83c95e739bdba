"""The ``outbox-di`` command against a real PostgreSQL: render-ddl, migrate and check, where the
DSN and schema come from (flags, ``OUTBOX_*``, settings.toml), ``status --inbox`` and the dead
list's columns."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from psycopg2 import sql

from outbox_di import cli, database, models, repository, schema

pytestmark = pytest.mark.integration


def _alter(dsn: str, sql: str) -> None:
    with database.connect(dsn) as conn, conn, conn.cursor() as cursor:
        cursor.execute(sql)


def test_render_ddl_prints_the_template(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["render-ddl", "--schema", "catalog"]) == 0
    out = capsys.readouterr().out
    assert out == schema.render_ddl("catalog")


def test_render_ddl_refuses_a_bad_schema_name(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["render-ddl", "--schema", "catalog; drop table x"]) == 2
    err = capsys.readouterr().err
    assert "invalid schema name 'catalog; drop table x'" in err


@pytest.fixture
def no_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty working directory and no ``OUTBOX_*`` variables: only the flags count."""
    for name in list(os.environ):
        if name.startswith("OUTBOX_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_missing_dsn_names_the_flag_the_variable_and_the_settings_file(
    no_settings: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["migrate", "--schema", "catalog"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("outbox-di migrate: error: --dsn is required: give --dsn, ")
    assert "set OUTBOX_DSN" in err
    assert "set dsn in the [outbox] table of settings.toml (settings files read: none found" in err
    assert cli.main(["render-ddl"]) == 2
    err = capsys.readouterr().err
    assert "--schema is required: give --schema, set OUTBOX_SCHEMA, or set schema" in err
    assert cli.main(["check", "--schema", "catalog"]) == 2
    assert "give --dsn (or --file)" in capsys.readouterr().err


def test_flags_win_over_variables_which_win_over_settings_toml(
    no_settings: Path,
    outbox_dsn: str,
    outbox_schema_name: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    unreachable = "postgresql://nobody@127.0.0.1:1/nothing?connect_timeout=1"
    (no_settings / "settings.toml").write_text(
        f'[outbox]\nschema = "{outbox_schema_name}"\ndsn = "{outbox_dsn}"\n'
    )
    # settings.toml alone: every command finds both values there.
    assert cli.main(["migrate"]) == 0
    assert f"schema {outbox_schema_name!r} migrated" in capsys.readouterr().out
    assert cli.main(["status"]) == 0
    assert f"schema {outbox_schema_name!r}: nothing pending" in capsys.readouterr().out
    assert cli.main(["render-ddl"]) == 0
    assert capsys.readouterr().out == schema.render_ddl(outbox_schema_name)

    # OUTBOX_* over settings.toml...
    monkeypatch.setenv("OUTBOX_SCHEMA", "from_env")
    monkeypatch.setenv("OUTBOX_DSN", unreachable)
    assert cli.main(["render-ddl"]) == 0
    assert capsys.readouterr().out == schema.render_ddl("from_env")
    assert cli.main(["check", "--schema", outbox_schema_name]) == 2
    assert "nobody" in capsys.readouterr().err
    # ...and the flags over both.
    assert cli.main(["render-ddl", "--schema", "from_flag"]) == 0
    assert capsys.readouterr().out == schema.render_ddl("from_flag")
    assert cli.main(["check", "--schema", outbox_schema_name, "--dsn", outbox_dsn]) == 0
    assert "in sync" in capsys.readouterr().out


def test_settings_flag_and_outbox_settings_files_name_other_files(
    no_settings: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    (no_settings / "settings.toml").write_text('[outbox]\nschema = "from_cwd"\n')
    (no_settings / "other.toml").write_text('[outbox]\nschema = "from_other"\n')
    assert cli.main(["render-ddl", "--settings", "other.toml"]) == 0
    assert capsys.readouterr().out == schema.render_ddl("from_other")
    monkeypatch.setenv("OUTBOX_SETTINGS_FILES", "other.toml")
    assert cli.main(["render-ddl"]) == 0  # settings.toml, then other.toml on top
    assert capsys.readouterr().out == schema.render_ddl("from_other")
    assert cli.main(["render-ddl", "--settings", "missing.toml"]) == 2
    assert "settings_files: no such file: 'missing.toml'" in capsys.readouterr().err


def test_a_broken_settings_file_breaks_neither_help_nor_flags(
    no_settings: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (no_settings / "settings.toml").write_text("[outbox\nschema = 1\n")
    for command in (["status"], ["dead", "list"], ["purge"], ["migrate"], ["render-ddl"]):
        with pytest.raises(SystemExit) as exited:
            cli.main([*command, "--help"])
        assert exited.value.code == 0
        assert "$OUTBOX_DSN" in capsys.readouterr().out or command == ["render-ddl"]
    # Both values given as flags: the settings files are not read at all.
    assert cli.main(["render-ddl", "--schema", "catalog"]) == 0
    capsys.readouterr()
    assert cli.main(["render-ddl"]) == 2
    err = capsys.readouterr().err
    assert "cannot read the settings files (settings.toml): " in err
    assert "give the values as flags (--dsn, --schema)" in err


def test_a_setting_of_the_wrong_type_is_named(
    no_settings: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (no_settings / "settings.toml").write_text("[outbox]\nschema = 7\n")
    assert cli.main(["render-ddl"]) == 2
    err = capsys.readouterr().err
    assert "schema in the outbox settings must be a non-empty string, got 7" in err
    assert "give --schema" in err


def test_migrate_twice_then_check_in_sync(
    outbox_dsn: str, outbox_schema_name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["check", "--dsn", outbox_dsn, "--schema", outbox_schema_name]) == 1
    assert "missing table outbox_events" in capsys.readouterr().out
    for _ in range(2):
        assert cli.main(["migrate", "--dsn", outbox_dsn, "--schema", outbox_schema_name]) == 0
        assert f"version {schema.SCHEMA_VERSION}" in capsys.readouterr().out
    assert cli.main(["check", "--dsn", outbox_dsn, "--schema", outbox_schema_name]) == 0
    assert "in sync" in capsys.readouterr().out


def test_check_names_each_drifted_column_and_index(
    outbox_dsn: str, outbox_schema_name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["migrate", "--dsn", outbox_dsn, "--schema", outbox_schema_name]) == 0
    q = f'"{outbox_schema_name}"'
    _alter(
        outbox_dsn,
        f"ALTER TABLE {q}.outbox_events DROP COLUMN last_error;"
        f"ALTER TABLE {q}.inbox_events ALTER COLUMN payload TYPE text;"
        f"DROP INDEX {q}.outbox_events_due_idx;"
        f"ALTER TABLE {q}.outbox_events ADD COLUMN tenant text;",
    )
    capsys.readouterr()
    assert cli.main(["check", "--dsn", outbox_dsn, "--schema", outbox_schema_name]) == 1
    out = capsys.readouterr().out
    assert "missing column outbox_events.last_error" in out
    assert "column inbox_events.payload differs" in out and "found: text" in out
    assert "missing index outbox_events.outbox_events_due_idx" in out
    assert "extra column outbox_events.tenant" in out
    assert "3 difference(s)" in out

    assert cli.main(["check", "--dsn", outbox_dsn, "--schema", outbox_schema_name, "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["in_sync"] is False
    assert len(report["differences"]) == 3
    assert report["extras"] == ["extra column outbox_events.tenant"]

    # migrate applies each version once: it repairs nothing, and check keeps naming the drift.
    assert cli.main(["migrate", "--dsn", outbox_dsn, "--schema", outbox_schema_name]) == 0
    assert "nothing to apply" in capsys.readouterr().out
    assert cli.main(["check", "--dsn", outbox_dsn, "--schema", outbox_schema_name]) == 1
    out = capsys.readouterr().out
    assert "missing index outbox_events.outbox_events_due_idx" in out
    assert "column inbox_events.payload differs" in out
    assert "missing column outbox_events.last_error" in out


def test_check_trigger_drift_and_no_notify(
    outbox_dsn: str, outbox_schema_name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert (
        cli.main(["migrate", "--dsn", outbox_dsn, "--schema", outbox_schema_name, "--no-notify"])
        == 0
    )
    capsys.readouterr()
    assert cli.main(["check", "--dsn", outbox_dsn, "--schema", outbox_schema_name]) == 1
    assert "missing trigger outbox_events.outbox_events_notify" in capsys.readouterr().out
    assert (
        cli.main(["check", "--dsn", outbox_dsn, "--schema", outbox_schema_name, "--no-notify"]) == 0
    )


def test_check_file_compares_a_migration_without_a_database(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    good = tmp_path / "0001_outbox.sql"
    good.write_text(schema.render_ddl("catalog"))
    assert cli.main(["check", "--schema", "catalog", "--file", str(good)]) == 0
    assert "in sync" in capsys.readouterr().out
    edited = tmp_path / "0002_outbox.sql"
    edited.write_text(
        schema.render_ddl("catalog").replace("    last_error text,\n", "", 1) + "\nSELECT 1;\n"
    )
    assert cli.main(["check", "--schema", "catalog", "--file", str(edited)]) == 1
    out = capsys.readouterr().out
    assert 'missing statement: CREATE TABLE IF NOT EXISTS "catalog".outbox_events' in out
    assert "extra statement: SELECT 1" in out


def test_split_statements_keeps_function_bodies_whole() -> None:
    statements = cli.split_statements(schema.render_ddl("catalog"))
    bodies = [s for s in statements if "pg_notify" in s]
    assert len(bodies) == 2
    assert all(s.startswith("CREATE OR REPLACE FUNCTION") for s in bodies)


def test_console_script_runs(outbox_dsn: str, outbox_schema_name: str) -> None:
    env = {**os.environ, "OUTBOX_DSN": outbox_dsn, "OUTBOX_SCHEMA": outbox_schema_name}
    command = [sys.executable, "-m", "outbox_di.cli"]
    migrated = subprocess.run([*command, "migrate"], env=env, capture_output=True, text=True)
    assert migrated.returncode == 0, migrated.stderr
    checked = subprocess.run([*command, "check"], env=env, capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    bad = subprocess.run(
        [*command, "check", "--schema", "Bad"], env=env, capture_output=True, text=True
    )
    assert bad.returncode == 2
    assert "upper-case" in bad.stderr


async def test_status_inbox_shows_only_the_inbox_and_dead_list_dashes_a_missing_aggregate(
    outbox_pool: Any,
    outbox_repository: repository.OutboxRepository,
    inbox_repository: repository.InboxRepository,
    outbox_dsn: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    async with outbox_pool.acquire() as conn, conn.cursor() as cursor, cursor.begin():
        await outbox_repository.enqueue(cursor, models.Message("item", "i1", "item.created", {}))
    # Received without aggregate attributes: the inbox row's aggregate type and id are empty.
    received = models.ReceivedMessage("e1", "order.paid", b"{}")
    assert await inbox_repository.record_dead("billing", received, "no handler registered")
    base = ["--dsn", outbox_dsn, "--schema", outbox_repository.schema]

    assert cli.main(["status", *base, "--json"]) == 0
    tables = {row["table"] for row in json.loads(capsys.readouterr().out)}
    assert tables == {"outbox", "inbox"}
    assert cli.main(["status", *base, "--inbox", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [(r["table"], r["consumer"], r["event_type"], r["dead"]) for r in rows] == [
        ("inbox", "billing", "order.paid", 1)
    ]
    assert cli.main(["status", *base, "--inbox"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == [
        *("table", "consumer", "event", "type", "pending", "in", "flight"),
        *("failing", "dead", "oldest", "pending"),
    ]
    assert [line.split()[:3] for line in lines[1:]] == [["inbox", "billing", "order.paid"]]

    assert cli.main(["dead", "list", *base, "--inbox"]) == 0
    header, row = capsys.readouterr().out.splitlines()
    aggregate = header.index("aggregate")
    assert row[aggregate:].split()[0] == "-"
    assert "no handler registered" in row


async def test_status_inbox_with_an_empty_inbox(
    outbox_schema: str, outbox_dsn: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["status", "--dsn", outbox_dsn, "--schema", outbox_schema, "--inbox"]) == 0
    out = capsys.readouterr().out
    assert out == f"schema {outbox_schema!r}: nothing pending, nothing dead in the inbox\n"


def test_a_missing_schema_among_several_stops_the_command_before_it_acts(
    outbox_dsn: str, outbox_schema: str, no_settings: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # A published row older than the cut-off: a purge of this schema would delete it.
    table = sql.Identifier(outbox_schema, "outbox_events")
    with database.connect(outbox_dsn) as conn, conn, conn.cursor() as cursor:
        cursor.execute(
            sql.SQL(
                "INSERT INTO {} (event_id, aggregate_type, aggregate_id, event_type, payload, "
                "status, published_at) VALUES (gen_random_uuid(), 'item', 'i1', 'item.created', "
                "'{{}}', 'published', now() - interval '30 days')"
            ).format(table)
        )
    code = cli.main(
        [
            "purge",
            "--dsn",
            outbox_dsn,
            "--schema",
            f"{outbox_schema},not_migrated_here",
            "--older-than",
            "7d",
        ]
    )
    assert code == 2
    err = capsys.readouterr().err
    assert "--schema: 'not_migrated_here' holds no outbox in this database" in err
    assert "outbox-di migrate --schema not_migrated_here" in err
    with database.connect(outbox_dsn) as conn, conn.cursor() as cursor:
        cursor.execute(sql.SQL("SELECT count(*) FROM {}").format(table))
        assert cursor.fetchone()[0] == 1  # the first schema was not purged
