"""The ``Outbox`` facade's own transaction: commit, rollback, and a cancel during COMMIT."""

from __future__ import annotations

import asyncio
import gc
from typing import Any

import pytest
from psycopg2 import sql

from outbox_di import errors, models, repository
from outbox_di.outbox import Outbox
from tests.integration import support

pytestmark = pytest.mark.integration


def _in_schema(statement: str, schema: str) -> sql.Composed:
    return sql.SQL(statement).format(*[sql.Identifier(schema)] * statement.count("{}"))


async def test_commit_and_rollback(
    outbox_pool: Any, outbox_repository: repository.OutboxRepository
) -> None:
    outbox = Outbox(outbox_repository, outbox_pool)
    committed = await outbox.enqueue(models.Message("item", "1", "item.created", {}))
    with pytest.raises(RuntimeError, match="refused"):
        async with outbox.transaction() as cursor:
            rolled = await outbox.enqueue(cursor, models.Message("item", "2", "item.created", {}))
            raise RuntimeError("refused")
    assert await outbox_repository.get(committed) is not None
    assert await outbox_repository.get(rolled) is None
    # A failing statement inside is a DatabaseError, and the transaction is rolled back.
    with pytest.raises(errors.DatabaseError, match="outbox transaction failed"):
        async with outbox.transaction() as cursor:
            await outbox.enqueue(cursor, models.Message("item", "3", "item.created", {}))
            await cursor.execute("SELECT 1/0")
    assert await outbox_repository.count_pending() == 1


async def test_a_request_cancelled_during_commit_stays_atomic(
    outbox_pool: Any, outbox_repository: repository.OutboxRepository
) -> None:
    """A server cancels a request whose COMMIT is running (a deferred trigger makes it last
    1 s): no aiopg transaction object is left open (that would warn when collected), and the
    item and its event are both stored or both not."""
    schema = outbox_repository.schema
    await support.create_slow_commit_table(outbox_pool, schema, "items", "name")
    outbox = Outbox(outbox_repository, outbox_pool)
    written = asyncio.Event()

    async def request() -> None:
        async with outbox.transaction() as cursor:
            await cursor.execute(_in_schema("INSERT INTO {}.items VALUES ('lamp')", schema))
            await outbox.enqueue(cursor, models.Message("item", "lamp", "item.created", {}))
            written.set()

    task = asyncio.create_task(request())
    await asyncio.wait_for(written.wait(), 10)
    await asyncio.sleep(0.3)  # inside the COMMIT's second
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    del task, request
    gc.collect()  # an open aiopg Transaction left behind would warn now, inside this test
    async with outbox_pool.acquire() as conn, conn.cursor() as cursor:
        await cursor.execute("BEGIN")
        # Waits until the cancelled COMMIT has ended on the server, one way or the other.
        await cursor.execute(_in_schema("LOCK TABLE {}.items IN SHARE MODE", schema))
        await cursor.execute(
            _in_schema(
                "SELECT (SELECT count(*) FROM {}.items), (SELECT count(*) FROM {}.outbox_events)",
                schema,
            )
        )
        [(items, events)] = await cursor.fetchall()
        await cursor.execute("COMMIT")
    assert (items, events) in {(1, 1), (0, 0)}
