"""What the end-to-end tests of the example services share: the scenario every catalog passes,
a second subscription that watches the topic, and the outbox's row states. Starting the service
itself is :mod:`integrations.harness`, which ``make demo`` uses too."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import aiohttp
from psycopg2 import sql

from integrations import harness
from outbox_di.testing import pubsub as pubsub_testing

PROJECT = "outbox-di-e2e"
EXAMPLES = harness.EXAMPLES


async def create_items(client: aiohttp.ClientSession, skus: Sequence[str]) -> list[dict[str, str]]:
    """``POST /items`` for each sku, a few at a time; each answer must be 201."""
    limit = asyncio.Semaphore(8)

    async def create(sku: str) -> dict[str, str]:
        async with limit, client.post("/items", json={"sku": sku, "name": f"item {sku}"}) as resp:
            body: dict[str, str] = await resp.json()
            assert resp.status == 201, (resp.status, body)
            return body

    return list(await asyncio.gather(*(create(sku) for sku in skus)))


async def received_ids(client: aiohttp.ClientSession) -> list[str]:
    async with client.get("/received") as response:
        assert response.status == 200
        body: dict[str, Any] = await response.json()
    assert body["count"] == len(body["event_ids"])
    return list(body["event_ids"])


async def wait_received(
    client: aiohttp.ClientSession, count: int, within: float = 30.0
) -> list[str]:
    """``GET /received`` until it lists ``count`` events (AssertionError after ``within``)."""
    deadline = time.monotonic() + within
    while True:
        ids = await received_ids(client)
        if len(ids) >= count or time.monotonic() > deadline:
            return ids
        await asyncio.sleep(0.1)


async def pull_event_ids(
    host: str, subscription: str, count: int, within: float = 20.0
) -> list[str]:
    """The ``event_id`` attributes of the messages on ``subscription`` (redeliveries included),
    pulled until ``count`` distinct ones arrived or ``within`` seconds passed."""
    from outbox_di.testing.publisher_suite import pull_until

    async with pubsub_testing.async_subscriber_client(host) as subscriber:
        received = await pull_until(
            subscriber,
            subscription,
            lambda got: len({m.message.attributes["event_id"] for m in got}) >= count,
            within,
        )
    return [m.message.attributes["event_id"] for m in received]


def row_states(dsn: str, schema: str) -> dict[str, Any]:
    """How the outbox and inbox rows of ``schema`` stand: counts by status, and how many rows
    are still leased (a lock token on a row that is not finished)."""
    import psycopg2

    outbox = sql.SQL(
        "SELECT status::text, count(*), count(*) FILTER (WHERE lock_token IS NOT NULL) "
        "FROM {}.outbox_events GROUP BY status"
    ).format(sql.Identifier(schema))
    inbox = sql.SQL(
        "SELECT status::text, count(*), count(*) FILTER (WHERE lock_token IS NOT NULL) "
        "FROM {}.inbox_events GROUP BY status"
    ).format(sql.Identifier(schema))
    with psycopg2.connect(dsn) as conn, conn.cursor() as cursor:
        cursor.execute(outbox)
        outbox_rows = cursor.fetchall()
        cursor.execute(inbox)
        inbox_rows = cursor.fetchall()
    conn.close()
    return {
        "outbox": {status: count for status, count, _ in outbox_rows},
        "outbox_leased": sum(leased for status, _, leased in outbox_rows if status == "pending"),
        "inbox": {status: count for status, count, _ in inbox_rows},
        "inbox_leased": sum(leased for status, _, leased in inbox_rows if status == "pending"),
    }


async def check_catalog(
    command: Sequence[str],
    folder: Path,
    dsn: str,
    schema: str,
    host: str,
    *,
    items: int = 40,
    exit_codes: tuple[int, ...] = (0,),
    extra_env: Mapping[str, str] | None = None,
) -> harness.Service:
    """The scenario every catalog example passes, started with ``command`` in ``folder``:

    ``items`` items created over HTTP, each ``item.created`` event carried by the topic (seen on
    a second subscription) and processed once by the service's own inbox; a duplicate sku
    answered 409 with its already-enqueued event rolled back; after SIGTERM the process exits
    with one of ``exit_codes`` within the workers' deadlines, leaving no row leased.
    """
    harness.migrate(dsn, schema)
    async with (
        pubsub_testing.temporary_topic(host, PROJECT, prefix="catalog") as topic,
        # What the broker really carried, independently of the service's own inbox.
        pubsub_testing.temporary_subscription(host, topic, prefix="watch") as watched,
    ):
        port = harness.free_port()
        env = {
            **harness.service_env(dsn, schema, harness.pubsub_env(host, topic)),
            **(extra_env or {}),
        }
        full_command = [part.replace("{port}", str(port)) for part in command]
        async with harness.run_service(full_command, folder, env, port) as service:
            created = await create_items(service.client, [f"sku-{n}" for n in range(items)])
            # A duplicate sku: the insert fails after the event was enqueued, and the whole
            # transaction, event included, rolls back.
            async with service.client.post("/items", json={"sku": "sku-0", "name": "again"}) as r:
                assert r.status == 409
                assert "already exists" in (await r.json())["error"]
            event_ids = {item["event_id"] for item in created}
            assert len(event_ids) == items
            received = await wait_received(service.client, items)
            on_topic = await pull_event_ids(host, watched, items)
    # After SIGTERM every worker drained within its deadline (5 s each) and the process exited.
    assert service.process.returncode in exit_codes, service.output
    assert service.stopped_in is not None and service.stopped_in < 15, service.output
    assert sorted(received) == sorted(event_ids), "each event processed once by the inbox"
    assert set(on_topic) == event_ids, "each event, and only those, on the topic"
    states = row_states(dsn, schema)
    assert states["outbox"] == {"published": items}, states
    assert states["inbox"] == {"processed": items}, states
    assert states["outbox_leased"] == 0 and states["inbox_leased"] == 0, states
    assert "Traceback" not in service.output and "was destroyed" not in service.output
    return service
