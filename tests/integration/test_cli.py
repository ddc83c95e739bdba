"""The ``outbox-di`` command's render-ddl, migrate and check against a real PostgreSQL."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from outbox_di import cli, database, schema

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


def test_missing_dsn_is_a_usage_error(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("OUTBOX_DSN", raising=False)
    assert cli.main(["migrate", "--schema", "catalog"]) == 2
    assert "--dsn is required" in capsys.readouterr().err


def test_migrate_twice_then_check_in_sync(
    outbox_dsn: str, outbox_schema_name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["check", "--dsn", outbox_dsn, "--schema", outbox_schema_name]) == 1
    assert "missing table outbox_events" in capsys.readouterr().out
    for _ in range(2):
        assert cli.main(["migrate", "--dsn", outbox_dsn, "--schema", outbox_schema_name]) == 0
        assert "version 1" in capsys.readouterr().out
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

    # migrate recreates a dropped index...
    assert cli.main(["migrate", "--dsn", outbox_dsn, "--schema", outbox_schema_name]) == 0
    capsys.readouterr()
    assert cli.main(["check", "--dsn", outbox_dsn, "--schema", outbox_schema_name]) == 1
    out = capsys.readouterr().out
    assert "missing index" not in out
    # ...but never rewrites an existing table: column drift stays reported for a person to fix.
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
