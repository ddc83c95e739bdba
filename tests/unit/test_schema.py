"""Schema name validation and rendering of the DDL template and named queries (no I/O)."""

from __future__ import annotations

import pytest

from outbox_di import errors, schema


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
    queries = schema.Queries("catalog")
    for name in schema.query_names():
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
