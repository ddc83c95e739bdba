"""``outbox-di demo`` (``make demo``): a short end-to-end run of the core on a real PostgreSQL.

It finds a server the way the test kit does (``OUTBOX_TEST_DSN``, the local server, or an
embedded one), migrates a demo schema, enqueues events from concurrent writers inside their
own transactions (rolling some back), relays them with two claiming workers to an in-memory
sink, and shows that a worker whose lease expired cannot mark anything.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time
import uuid
from typing import Any

from outbox_di import database, models, repository, schema
from outbox_di.testing import postgres

SCHEMA = "outbox_demo"
WRITERS = 4
TRANSACTIONS_PER_WRITER = 250
EVENTS_PER_TRANSACTION = 4
LOCK_TTL = dt.timedelta(seconds=30)


async def _write(pool: Any, repo: repository.OutboxRepository, writer: int) -> tuple[int, int]:
    committed = rolled_back = 0
    for n in range(TRANSACTIONS_PER_WRITER):
        messages = [
            models.Message(
                aggregate_type="item",
                aggregate_id=f"item-{writer}-{n}",
                event_type="item.created",
                payload={"writer": writer, "n": n, "i": i},
            )
            for i in range(EVENTS_PER_TRANSACTION)
        ]
        async with pool.acquire() as conn, conn.cursor() as cursor:
            transaction = await cursor.begin()
            await repo.enqueue_many(cursor, messages)
            if n % 10 == 9:  # the business change failed: the events must vanish with it
                await transaction.rollback()
                rolled_back += len(messages)
            else:
                await transaction.commit()
                committed += len(messages)
    return committed, rolled_back


async def _relay(
    repo: repository.OutboxRepository, sink: list[uuid.UUID], stop: asyncio.Event
) -> int:
    batches = 0
    while True:
        now = models.utcnow()
        token = uuid.uuid4()
        events = await repo.claim_pending(now, now - LOCK_TTL, 100, token)
        if not events:
            if stop.is_set():
                return batches
            await asyncio.sleep(0.01)
            continue
        sink.extend(event.event_id for event in events)
        await repo.mark_published([e.event_id for e in events], token, models.utcnow())
        batches += 1


async def _fencing(repo: repository.OutboxRepository, pool: Any) -> tuple[int, int]:
    async with pool.acquire() as conn, conn.cursor() as cursor, cursor.begin():
        await repo.enqueue(cursor, models.Message("item", "fenced", "item.created", {"x": 1}))
    t0 = models.utcnow()
    stale = uuid.uuid4()
    [event] = await repo.claim_pending(t0, t0 - LOCK_TTL, 1, stale)
    later = t0 + LOCK_TTL + dt.timedelta(seconds=1)
    fresh = uuid.uuid4()
    await repo.claim_pending(later, later - LOCK_TTL, 1, fresh)
    late_mark = await repo.mark_published([event.event_id], stale, later)
    good_mark = await repo.mark_published([event.event_id], fresh, later)
    return late_mark, good_mark


async def _run(dsn: str) -> None:
    with database.connect(dsn) as conn:
        with conn, conn.cursor() as cursor:
            cursor.execute(schema.Queries(SCHEMA)["drop_schema"].sql)
        database.migrate(conn, SCHEMA)
        print(f"migrated schema {SCHEMA!r} (version {database.schema_version(conn, SCHEMA)})")
    async with database.open_pool(dsn, max_size=WRITERS + 3) as pool:
        repo = repository.OutboxRepository(pool, SCHEMA)
        sink: list[uuid.UUID] = []
        stop = asyncio.Event()
        started = time.perf_counter()
        relays = [asyncio.create_task(_relay(repo, sink, stop)) for _ in range(2)]
        results = await asyncio.gather(*(_write(pool, repo, w) for w in range(WRITERS)))
        stop.set()
        batches = sum(await asyncio.gather(*relays))
        elapsed = time.perf_counter() - started
        committed = sum(r[0] for r in results)
        rolled_back = sum(r[1] for r in results)
        pending = await repo.count_pending()
        late_mark, good_mark = await _fencing(repo, pool)
    print(f"writers:        {WRITERS} concurrent, {committed + rolled_back} events enqueued")
    print(f"committed:      {committed} events")
    print(f"rolled back:    {rolled_back} events (none may be stored)")
    print(
        f"relayed:        {len(sink)} events in {batches} batches by 2 claiming workers "
        f"({len(sink) / elapsed:,.0f} events/s, writers included)"
    )
    print(f"duplicates:     {len(sink) - len(set(sink))}")
    print(f"still pending:  {pending}")
    print(
        f"fencing:        stale worker's mark changed {late_mark} row(s), "
        f"new owner's mark changed {good_mark}"
    )
    ok = len(sink) == committed and len(set(sink)) == committed and pending == 0
    ok = ok and (late_mark, good_mark) == (0, 1)
    print("result:         OK, every committed event relayed once" if ok else "result: FAILED")
    if not ok:
        raise SystemExit(1)


def main() -> int:
    with postgres.postgres_server() as server:
        print(f"PostgreSQL: {server.source}")
        asyncio.run(_run(server.dsn))
    return 0
