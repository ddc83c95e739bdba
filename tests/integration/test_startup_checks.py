"""What a process finds out when it starts: the schema's version (every process, with the pool)
and whether Pub/Sub answers (worker processes, within ``pubsub.connect_timeout``)."""

from __future__ import annotations

import logging
import socket
import time
from typing import Any

import pytest
from psycopg2 import sql

from outbox_di import containers, database, errors, schema
from outbox_di.containers import OutboxContainer
from outbox_di.publishing import base

pytestmark = pytest.mark.integration

# Only used in the message: the pool connects with the fixtures' DSN.
SECRET_DSN = "postgresql://catalog:hunter2@db.internal:5432/catalog"


def _execute(dsn: str, statement: sql.Composable) -> None:
    with database.connect(dsn) as conn, conn, conn.cursor() as cursor:
        cursor.execute(statement)


def _closed_port() -> int:
    """A local port nothing listens on (bound, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


async def test_a_migrated_schema_is_ready(outbox_pool: Any, outbox_schema: str) -> None:
    version = await database.require_schema(outbox_pool, outbox_schema, SECRET_DSN)
    assert version == schema.SCHEMA_VERSION


async def test_a_missing_schema_names_the_migrate_command_without_the_password(
    outbox_pool: Any, outbox_schema_name: str
) -> None:
    with pytest.raises(errors.SchemaNotReadyError) as caught:
        await database.require_schema(outbox_pool, outbox_schema_name, SECRET_DSN)
    message = str(caught.value)
    assert message.startswith(f"schema {outbox_schema_name!r} is not ready: the schema does not")
    assert f"outbox_di needs version {schema.SCHEMA_VERSION}" in message
    assert (
        "outbox-di migrate --dsn 'postgresql://catalog:***@db.internal:5432/catalog' "
        f"--schema {outbox_schema_name}"
    ) in message
    assert "hunter2" not in message
    assert caught.value.version is None
    assert caught.value.missing == database.TABLES


async def test_a_schema_without_its_tables_names_them(
    outbox_pool: Any, outbox_dsn: str, outbox_schema_name: str
) -> None:
    _execute(outbox_dsn, sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(outbox_schema_name)))
    with pytest.raises(errors.SchemaNotReadyError) as caught:
        await database.require_schema(outbox_pool, outbox_schema_name, "host=db password=hunter2")
    message = str(caught.value)
    assert "missing table(s) outbox_schema_version, outbox_events, inbox_events" in message
    assert "--dsn 'host=db password=***'" in message
    assert "hunter2" not in message


async def test_a_dropped_table_is_named(
    outbox_pool: Any, outbox_dsn: str, outbox_schema: str
) -> None:
    _execute(
        outbox_dsn,
        sql.SQL("DROP TABLE {}.inbox_events").format(sql.Identifier(outbox_schema)),
    )
    with pytest.raises(errors.SchemaNotReadyError, match="missing table\\(s\\) inbox_events;"):
        await database.require_schema(outbox_pool, outbox_schema, SECRET_DSN)


async def test_an_older_version_is_refused(
    outbox_pool: Any, outbox_dsn: str, outbox_schema: str
) -> None:
    _execute(
        outbox_dsn,
        sql.SQL("DELETE FROM {}.outbox_schema_version").format(sql.Identifier(outbox_schema)),
    )
    with pytest.raises(errors.SchemaNotReadyError) as caught:
        await database.require_schema(outbox_pool, outbox_schema, SECRET_DSN)
    assert (
        f"its version is 0, this outbox_di needs version {schema.SCHEMA_VERSION}; run "
        f"`outbox-di migrate --dsn 'postgresql://catalog:***@db.internal:5432/catalog' "
        f"--schema {outbox_schema}`"
    ) in str(caught.value)
    assert caught.value.version == 0
    assert caught.value.required == schema.SCHEMA_VERSION


async def test_a_newer_version_is_allowed_with_a_warning(
    outbox_pool: Any, outbox_dsn: str, outbox_schema: str, caplog: pytest.LogCaptureFixture
) -> None:
    newer = schema.SCHEMA_VERSION + 1
    _execute(
        outbox_dsn,
        sql.SQL("INSERT INTO {}.outbox_schema_version (version) VALUES ({})").format(
            sql.Identifier(outbox_schema), sql.Literal(newer)
        ),
    )
    with caplog.at_level(logging.WARNING, logger="outbox_di"):
        assert await database.require_schema(outbox_pool, outbox_schema, SECRET_DSN) == newer
    assert any(
        f"schema {outbox_schema!r} is at version {newer}, newer than this outbox_di knows"
        in record.getMessage()
        for record in caplog.records
    ), caplog.text


def _config(schema_name: str, dsn: str, **pubsub: Any) -> dict[str, Any]:
    return {
        "schema": schema_name,
        "dsn": dsn,
        "pool": {"max_size": 2},
        "pubsub": {"project": "startup-test", **pubsub},
        "publisher": {"topic": "events"},
    }


async def test_a_web_process_does_not_start_on_an_unmigrated_schema(
    outbox_dsn: str, outbox_schema_name: str
) -> None:
    container = OutboxContainer(config=_config(outbox_schema_name, outbox_dsn))
    with pytest.raises(errors.SchemaNotReadyError, match="outbox-di migrate --dsn"):
        await containers.start(container, workers=False)
    assert container.pool.initialized is False


async def test_a_worker_does_not_start_on_an_unmigrated_schema(
    outbox_dsn: str, outbox_schema_name: str
) -> None:
    container = OutboxContainer(config=_config(outbox_schema_name, outbox_dsn))
    fake = base.InMemoryPublisher()
    container.publisher.override(fake)
    try:
        with pytest.raises(errors.SchemaNotReadyError, match=f"--schema {outbox_schema_name}"):
            await containers.start(container)
        assert container.pool.initialized is False
        assert container.publisher_task.initialized is False
    finally:
        container.publisher.reset_override()


async def test_a_worker_with_no_pubsub_answering_fails_within_the_connect_timeout(
    outbox_dsn: str, outbox_schema: str
) -> None:
    host = f"127.0.0.1:{_closed_port()}"
    container = OutboxContainer(
        config=_config(outbox_schema, outbox_dsn, emulator_host=host, connect_timeout="1s")
    )
    started = time.monotonic()
    with pytest.raises(errors.PubSubUnavailableError) as caught:
        await containers.start(container)
    elapsed = time.monotonic() - started
    message = str(caught.value)
    assert f"Pub/Sub did not answer at {host} (the emulator of pubsub.emulator_host)" in message
    assert "within pubsub.connect_timeout (1s)" in message
    assert f"start the Pub/Sub emulator at {host}" in message
    assert caught.value.endpoint == host
    assert elapsed < 1 + 5, elapsed
    assert container.pool.initialized is False
