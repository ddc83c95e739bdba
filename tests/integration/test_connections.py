"""How many connections each kind of process holds: an idle web process at most
``pool.min_size`` of the library's, and none for the relay unless it runs the workers."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import psycopg2
import pytest

from outbox_di import models
from outbox_di.containers import OutboxContainer, start, stop
from outbox_di.publishing import base

pytestmark = pytest.mark.integration


def _connections(dsn: str) -> dict[str, int]:
    """The library's open connections on the server, by application name."""
    query = (
        "SELECT application_name, count(*) FROM pg_stat_activity "
        "WHERE application_name LIKE 'outbox_di%' GROUP BY 1"
    )
    with contextlib.closing(psycopg2.connect(dsn)) as conn, conn.cursor() as cursor:
        cursor.execute(query)
        return {name: count for name, count in cursor.fetchall()}


async def _burst(container: Any, n: int) -> None:
    outbox = await container.outbox()
    await asyncio.gather(
        *(outbox.enqueue(models.Message("item", str(i), "item.created", {})) for i in range(n))
    )


async def test_an_idle_web_process_gives_back_what_a_burst_opened(
    outbox_schema: str, outbox_dsn: str
) -> None:
    container = OutboxContainer(
        config={
            "schema": outbox_schema,
            "dsn": outbox_dsn,
            "pool": {"min_size": 1, "max_size": 6, "idle_timeout": "200ms"},
            "publisher": {"topic": "events"},
        }
    )
    before = _connections(outbox_dsn).get("outbox_di", 0)
    await start(container, workers=False)
    try:
        pool = await container.pool()
        await _burst(container, 30)
        assert pool.size > 1  # the burst grew the pool
        deadline = asyncio.get_running_loop().time() + 10
        while pool.size > 1:
            assert asyncio.get_running_loop().time() < deadline, f"still {pool.size} open"
            await asyncio.sleep(0.05)
        # The count is server-wide: a process of an earlier test still closing its pool (a
        # worker draining after SIGTERM) may hold connections for a moment; ours stay at one.
        held = _connections(outbox_dsn)
        while held.get("outbox_di", 0) - before > 1:
            assert asyncio.get_running_loop().time() < deadline + 10, f"still {held}"
            await asyncio.sleep(0.1)
            held = _connections(outbox_dsn)
        assert held.get("outbox_di", 0) - before <= 1
        assert "outbox_di relay" not in held  # no relay pool in a web process
        # The pool still serves: the next enqueue opens a connection again.
        await _burst(container, 1)
    finally:
        await stop(container)


async def test_a_worker_process_opens_the_relay_pool(outbox_schema: str, outbox_dsn: str) -> None:
    container = OutboxContainer(
        config={"schema": outbox_schema, "dsn": outbox_dsn, "publisher": {"topic": "events"}}
    )
    container.publisher.override(base.InMemoryPublisher())
    await start(container, workers=True)
    try:
        relay_pool = await container.relay_pool()
        assert relay_pool.size >= 1
    finally:
        await stop(container)
        container.publisher.reset_override()
