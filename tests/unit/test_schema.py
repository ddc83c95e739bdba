"""Schema name validation and rendering of the DDL template and named queries (no I/O)."""

from __future__ import annotations

import importlib.resources
import re
from pathlib import Path

import pytest

from outbox_di import errors, schema

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("catalog; drop table x", "characters other than"),
        ("Catalog", "upper-case"),
        ("", "empty"),
        ("a" * 64, "64 characters"),
        ("1catalog", "starts with a digit"),
        ('cat"alog', "characters other than"),
        ("pg_catalog", "reserved"),
    ],
)
def test_bad_schema_names_get_a_clear_error(name: str, reason: str) -> None:
    with pytest.raises(errors.SchemaNameError, match=reason) as info:
        schema.render_ddl(name)
    assert "for example 'catalog'" in str(info.value)
    assert isinstance(info.value, ValueError)


def test_every_problem_of_a_schema_name_is_named_at_once() -> None:
    with pytest.raises(errors.SchemaNameError) as info:
        schema.validate_schema_name("1Orders-Service")
    message = str(info.value)
    assert "upper-case" in message
    assert "'-'" in message
    assert "starts with a digit" in message


def test_non_string_schema_name() -> None:
    with pytest.raises(errors.SchemaNameError, match="must be a string"):
        schema.validate_schema_name(42)


@pytest.mark.parametrize("name", ["catalog", "_x", "a" * 63, "svc_2", "user"])
def test_good_schema_names_are_quoted_everywhere(name: str) -> None:
    ddl = schema.render_ddl(name)
    assert "{{" not in ddl
    assert f'CREATE SCHEMA IF NOT EXISTS "{name}";' in ddl
    assert f'"{name}".outbox_events' in ddl
    assert f'"{name}".inbox_events' in ddl
    assert f'"{name}".outbox_schema_version' in ddl


def test_ddl_has_the_design_columns_indexes_and_trigger() -> None:
    ddl = schema.render_ddl("catalog")
    for column in (
        "event_id uuid PRIMARY KEY",
        "aggregate_type text",
        "aggregate_id text",
        "event_type text",
        "payload bytea",
        "headers jsonb",
        "ordering_key text",
        "status text",
        "created_at timestamptz",
        "available_at timestamptz",
        "published_at timestamptz",
        "processed_at timestamptz",
        "delivery_attempts integer",
        "last_error text",
        "lock_token uuid",
        "locked_at timestamptz",
    ):
        assert column in ddl, column
    assert "PRIMARY KEY (consumer, event_id)" in ddl
    assert "WHERE status = 'pending'" in ddl
    assert "FOR EACH STATEMENT" in ddl
    assert "pg_notify('catalog_outbox', '')" in ddl
    assert "'dead'" in ddl


def test_no_notify_drops_the_triggers_instead() -> None:
    ddl = schema.render_ddl("catalog", notify=False)
    assert "CREATE OR REPLACE TRIGGER" not in ddl
    assert 'DROP TRIGGER IF EXISTS outbox_events_notify ON "catalog".outbox_events' in ddl
    with_notify = schema.render_ddl("catalog")
    assert "DROP TRIGGER" not in with_notify


def test_channel_names_fit_postgres_limit() -> None:
    assert schema.channel_name("catalog", "outbox") == "catalog_outbox"
    long = "a" * 63
    assert len(schema.channel_name(long, "outbox")) <= 63
    with pytest.raises(ValueError, match="outbox' or 'inbox"):
        schema.channel_name("catalog", "other")


def test_queries_are_rendered_once_per_schema_in_each_parameter_style() -> None:
    queries = schema.Queries("catalog")
    claim = queries["outbox_claim"]
    assert '"catalog".outbox_events' in claim.sql
    assert claim.params == ("now", "stale_before", "limit", "lock_token")
    assert "%(" not in claim.numeric_sql and "$4" in claim.numeric_sql
    assert ":lock_token" in claim.named_sql and "%(" not in claim.named_sql
    assert claim.positional({"now": 1, "stale_before": 2, "limit": 3, "lock_token": 4}) == [
        1,
        2,
        3,
        4,
    ]
    assert "FOR UPDATE SKIP LOCKED" in claim.sql
    assert "outbox_claim" in queries
    with pytest.raises(KeyError, match="no query named"):
        queries["nope"]


def test_every_query_is_parameterized_not_formatted() -> None:
    queries = schema.Queries("catalog", files=schema.TEST_KIT_FILES)
    for name in schema.query_names(schema.TEST_KIT_FILES):
        sql = queries[name].sql
        assert "{{" not in sql, name
        assert "::" not in sql, f"{name}: use CAST(... AS ...) so every style can be derived"
        assert sql.strip(), name


def test_repository_query_names_exist() -> None:
    expected = {
        "outbox_insert",
        "outbox_insert_many",
        "outbox_claim",
        "outbox_mark_published",
        "outbox_reschedule",
        "outbox_mark_dead",
        "outbox_release",
        "outbox_count_pending",
        "inbox_insert",
        "inbox_insert_many",
        "inbox_claim",
        "inbox_mark_processed",
        "inbox_record_error",
        "inbox_mark_dead",
        "inbox_release",
        "inbox_count_pending",
    }
    assert expected <= schema.query_names()


def test_the_test_kit_queries_are_not_the_library_s() -> None:
    """sql/testing.sql holds what only tests run (dropping a schema, killing connections,
    overwriting headers, the inbox suite's effects table); the library's queries do not."""
    library = schema.query_names()
    test_kit = schema.query_names(schema.TEST_KIT_FILES) - library
    assert test_kit == {
        "drop_schema",
        "test_set_headers",
        "test_terminate_backends",
        "inbox_contract_effects_create",
        "inbox_contract_effects_insert",
        "inbox_contract_effects_list",
        "inbox_contract_effects_drop",
    }
    with pytest.raises(KeyError, match=r"no query named 'drop_schema' in queries\.sql"):
        schema.Queries("catalog")["drop_schema"]
    assert "drop_schema" in schema.Queries("catalog", files=schema.TEST_KIT_FILES)


# -- numbered migrations -------------------------------------------------------------------------


def test_the_migrations_ship_as_package_data() -> None:
    """What ``importlib.resources`` finds in the installed package: the files pyproject.toml's
    package-data (``sql/migrations/*.sql``) ships, numbered from 0001 without gaps."""
    folder = importlib.resources.files("outbox_di").joinpath("sql/migrations")
    names = sorted(entry.name for entry in folder.iterdir() if entry.name.endswith(".sql"))
    assert names[0] == "0001_initial.sql"
    assert [int(name[:4]) for name in names] == list(range(1, len(names) + 1))
    assert all(re.fullmatch(r"\d{4}_[a-z0-9_]+\.sql", name) for name in names)
    assert schema.SCHEMA_VERSION == len(names) == schema.migrations()[-1].version
    assert importlib.resources.files("outbox_di").joinpath("sql/schema_version.sql").is_file()
    project = (ROOT / "pyproject.toml").read_text()
    assert '"sql/migrations/*.sql"' in project and '"sql/*.sql"' in project


def test_every_migration_renders_with_the_template_placeholders() -> None:
    for migration in schema.migrations():
        for notify in (True, False):
            text = migration.render("catalog", notify=notify)
            assert "{{" not in text, migration.filename
            assert ":begin" not in text and ":end" not in text, migration.filename


def test_render_ddl_is_every_migration_in_order_each_recorded() -> None:
    ddl = schema.render_ddl("catalog")
    assert ddl.startswith('CREATE SCHEMA IF NOT EXISTS "catalog";')
    positions = [ddl.index(f"-- outbox_di version {m.version}: ") for m in schema.migrations()]
    assert positions == sorted(positions)
    for migration in schema.migrations():
        assert f"VALUES ({migration.version}, '{migration.checksum}')" in ddl
    assert schema.render_ddl("catalog", to=1).count("-- outbox_di version") == 1
    with pytest.raises(errors.OutboxError, match="this outbox_di has versions 1 to"):
        schema.render_ddl("catalog", to=schema.SCHEMA_VERSION + 1)
    with pytest.raises(errors.OutboxError, match="--to 0"):
        schema.render_ddl("catalog", to=0)


def test_the_checksum_is_of_the_statements_not_of_the_rendering() -> None:
    text = schema.migrations()[0].text
    digest = schema.checksum(text)
    assert re.fullmatch(r"[0-9a-f]{64}", digest)
    # Comments and whitespace do not count...
    assert schema.checksum("-- reworded\n" + text.replace("    ", "  ")) == digest
    # ...a statement does, and so does moving one into or out of a notify section.
    assert schema.checksum(text.replace("last_error text,", "last_error varchar,")) != digest
    moved = text.replace("-- notify:begin\n", "").replace("-- notify:end\n", "")
    moved = moved.replace("-- no-notify:begin\n", "-- notify:begin\n-- notify:end\n")
    assert schema.checksum(moved) != digest
    assert schema.migrations()[0].checksum == digest


def _folder(tmp_path: Path, *names: str) -> Path:
    for name in names:
        (tmp_path / name).write_text("SELECT 1;\n")
    return tmp_path


@pytest.mark.parametrize(
    ("names", "message"),
    [
        (("0001_initial.sql", "0003_later.sql"), "'0003_later.sql' comes where 0002 was expected"),
        (("0001_initial.sql", "0001_again.sql"), "two migrations have number 0001"),
        (("0001_initial.sql", "2_bad.sql"), "'2_bad.sql' is misnamed"),
        (("0001_Initial.sql",), "misnamed"),
        ((), "no migrations found"),
    ],
)
def test_misnumbered_migrations_are_refused(
    tmp_path: Path, names: tuple[str, ...], message: str
) -> None:
    with pytest.raises(errors.OutboxError, match=re.escape(message)):
        schema.load_migrations(_folder(tmp_path, *names))


def test_other_files_in_the_migrations_folder_are_ignored(tmp_path: Path) -> None:
    found = schema.load_migrations(_folder(tmp_path, "0001_a.sql", "0002_b.sql", "README.md"))
    assert [(m.version, m.name) for m in found] == [(1, "0001_a"), (2, "0002_b")]
    assert schema.latest_version(found) == 2


def test_django_ships_one_thin_migration_per_version() -> None:
    """``outbox_di/integrations/django/migrations`` has one file per SQL version, in a chain,
    each applying its version through ApplyOutboxVersion (read, not imported: no Django
    settings here)."""
    folder = ROOT / "outbox_di/integrations/django/migrations"
    files = sorted(path for path in folder.glob("[0-9][0-9][0-9][0-9]_*.py"))
    assert [int(path.name[:4]) for path in files] == list(range(1, schema.SCHEMA_VERSION + 1)), (
        "add outbox_di/integrations/django/migrations/NNNN_version_N.py for each new "
        "sql/migrations/NNNN_*.sql (see 0002_version_2.py)"
    )
    previous = None
    for path in files:
        version = int(path.name[:4])
        source = path.read_text()
        assert f"operations.ApplyOutboxVersion({version})" in source, path.name
        if previous is not None:
            assert f'("outbox_di", "{previous}")' in source, path.name
        previous = path.stem
