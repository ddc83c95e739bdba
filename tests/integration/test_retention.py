"""Retention in a worker process: old published and processed rows go, young and dead ones stay,
while the relay runs beside it."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import psycopg2
import pytest
from psycopg2 import sql

from outbox_di import config, models, retention
from outbox_di.containers import OutboxContainer, start, stop
from outbox_di.publishing import base

pytestmark = pytest.mark.integration


def _seed(dsn: str, schema: str) -> None:
    """Outbox: 7 rows published 2 h ago, 2 published 10 min ago, 2 dead for 2 h. Inbox: 4 rows
    processed 2 h ago (two consumers), 1 processed just now, 1 dead for 2 h."""
    outbox = sql.Identifier(schema, "outbox_events")
    inbox = sql.Identifier(schema, "inbox_events")
    statements = [
        (
            "INSERT INTO {} (event_id, aggregate_type, aggregate_id, event_type, payload, status,"
            " created_at, published_at) SELECT gen_random_uuid(), 'item', 'old', 'item.old', "
            "'\\x00', 'published', now() - interval '3 hours', now() - interval '2 hours' "
            "FROM generate_series(1, 7)",
            outbox,
        ),
        (
            "INSERT INTO {} (event_id, aggregate_type, aggregate_id, event_type, payload, status,"
            " created_at, published_at) SELECT gen_random_uuid(), 'item', 'young', 'item.young', "
            "'\\x00', 'published', now() - interval '11 minutes', now() - interval '10 minutes' "
            "FROM generate_series(1, 2)",
            outbox,
        ),
        (
            "INSERT INTO {} (event_id, aggregate_type, aggregate_id, event_type, payload, status,"
            " created_at, last_error) SELECT gen_random_uuid(), 'item', 'dead', 'item.dead', "
            "'\\x00', 'dead', now() - interval '2 hours', 'no topic' FROM generate_series(1, 2)",
            outbox,
        ),
        (
            "INSERT INTO {} (consumer, event_id, event_type, payload, status, created_at, "
            "processed_at) SELECT 'c' || (n % 2), 'old-' || n, 'item.old', '\\x00', 'processed', "
            "now() - interval '3 hours', now() - interval '2 hours' FROM generate_series(1, 4) n",
            inbox,
        ),
        (
            "INSERT INTO {} (consumer, event_id, event_type, payload, status, processed_at) "
            "VALUES ('c0', 'young', 'item.young', '\\x00', 'processed', now())",
            inbox,
        ),
        (
            "INSERT INTO {} (consumer, event_id, event_type, payload, status, created_at, "
            "last_error) VALUES ('c0', 'dead', 'item.dead', '\\x00', 'dead', "
            "now() - interval '2 hours', 'handler failed')",
            inbox,
        ),
    ]
    with psycopg2.connect(dsn) as conn, conn.cursor() as cursor:
        for text, table in statements:
            cursor.execute(sql.SQL(text).format(table))
    conn.close()


def _counts(dsn: str, schema: str) -> dict[tuple[str, str, str], int]:
    """``(table, status, event_type) -> rows``."""
    found: dict[tuple[str, str, str], int] = {}
    with psycopg2.connect(dsn) as conn, conn.cursor() as cursor:
        for name in ("outbox_events", "inbox_events"):
            cursor.execute(
                sql.SQL("SELECT status, event_type, count(*) FROM {} GROUP BY 1, 2").format(
                    sql.Identifier(schema, name)
                )
            )
            for status, event_type, count in cursor.fetchall():
                found[(name.split("_")[0], status, event_type)] = count
    conn.close()
    return found


@pytest.fixture
def mapping(outbox_schema: str, outbox_dsn: str) -> Iterator[dict[str, Any]]:
    yield {
        "schema": outbox_schema,
        "dsn": outbox_dsn,
        "pool": {"max_size": 4},
        "publisher": {"topic": "events", "tick_interval": "50ms"},
        "retention": {
            "published": "1h",
            "processed": "1h",
            "batch_size": 3,
            "interval": "100ms",
        },
    }


async def test_old_rows_go_young_and_dead_stay_with_the_relay_running(
    mapping: dict[str, Any], outbox_schema: str, outbox_dsn: str
) -> None:
    _seed(outbox_dsn, outbox_schema)
    container = OutboxContainer(config=mapping)
    fake = base.InMemoryPublisher()
    container.publisher.override(fake)
    try:
        await start(container)
        runner = await container.retention()
        assert isinstance(runner, retention.Retention)
        outbox = await container.outbox()
        ids = await outbox.enqueue_many(
            [models.Message("item", str(n), "item.new", {"n": n}) for n in range(20)]
        )
        for _ in range(500):
            if len(fake.published) == 20 and runner.stats.passes >= 2:
                break
            await asyncio.sleep(0.02)
        assert sorted(e.event_id for e in fake.published) == sorted(ids)
        counts = _counts(outbox_dsn, outbox_schema)
    finally:
        await stop(container)
        container.publisher.reset_override()
    # Batches of 3: the 7 old published rows took three statements, the 4 old processed two.
    assert runner.stats.published_deleted == 7
    assert runner.stats.processed_deleted == 4
    assert counts == {
        ("outbox", "published", "item.young"): 2,
        ("outbox", "published", "item.new"): 20,
        ("outbox", "dead", "item.dead"): 2,
        ("inbox", "processed", "item.young"): 1,
        ("inbox", "dead", "item.dead"): 1,
    }


async def test_processed_retention_falls_back_to_inbox_retention(
    mapping: dict[str, Any],
) -> None:
    del mapping["retention"]["processed"]
    mapping["inbox"] = {"retention": "2d"}
    assert config.OutboxConfig.from_mapping(mapping).processed_retention == 2 * 86400.0
    mapping["retention"]["processed"] = "3h"
    assert config.OutboxConfig.from_mapping(mapping).processed_retention == 3 * 3600.0


async def test_retention_disabled_deletes_nothing(
    mapping: dict[str, Any], outbox_schema: str, outbox_dsn: str
) -> None:
    _seed(outbox_dsn, outbox_schema)
    mapping["retention"]["enabled"] = False
    container = OutboxContainer(config=mapping)
    container.publisher.override(base.InMemoryPublisher())
    try:
        await start(container)
        assert await container.retention() is None
        await asyncio.sleep(0.3)  # three intervals
        counts = _counts(outbox_dsn, outbox_schema)
    finally:
        await stop(container)
        container.publisher.reset_override()
    assert counts[("outbox", "published", "item.old")] == 7
    assert counts[("inbox", "processed", "item.old")] == 4


def test_bad_retention_values_name_their_keys(mapping: dict[str, Any]) -> None:
    mapping["retention"] = {"published": "a week", "batch_size": 0, "intervall": "1m"}
    with pytest.raises(Exception) as raised:
        config.OutboxConfig.from_mapping(mapping)
    text = str(raised.value)
    assert "retention.published: must be a duration" in text
    assert "retention.batch_size:" in text
    assert "retention.intervall: unknown key; did you mean 'interval'?" in text
