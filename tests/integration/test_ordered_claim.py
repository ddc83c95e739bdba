"""The ordered claim (``publisher.ordering``) against a real PostgreSQL: only the head of each
key is claimable, whatever is queued behind it, and every key's head is reached in turn."""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid
from typing import Any

import pytest

from outbox_di import database, models, operations, repository, schema

pytestmark = pytest.mark.integration

SECOND = dt.timedelta(seconds=1)
TTL = dt.timedelta(seconds=30)


def _message(key: str | None, n: int = 0) -> models.Message:
    return models.Message(
        aggregate_type="item",
        aggregate_id=f"item-{n}",
        event_type="item.changed",
        payload={"n": n},
        ordering_key=key,
    )


async def _enqueue(pool: Any, repo: repository.OutboxRepository, *messages: models.Message) -> None:
    async with pool.acquire() as conn, conn.cursor() as cursor, cursor.begin():
        await repo.enqueue_many(cursor, messages)


async def _claim(
    repo: repository.OutboxRepository, limit: int = 100, now: dt.datetime | None = None
) -> tuple[uuid.UUID, list[models.OutboxEvent]]:
    now = now or models.utcnow()
    token = uuid.uuid4()
    return token, await repo.claim_pending(now, now - TTL, limit, token)


def _ids(events: list[models.OutboxEvent]) -> list[uuid.UUID]:
    return [event.event_id for event in events]


@pytest.fixture
def ordered(outbox_pool: Any, outbox_schema: str) -> repository.OutboxRepository:
    return repository.OutboxRepository(outbox_pool, outbox_schema, ordering=True)


async def test_a_stale_lease_on_a_head_makes_it_claimable_again_and_still_blocks_its_key(
    outbox_pool: Any, ordered: repository.OutboxRepository
) -> None:
    a = [_message("a", n) for n in range(3)]
    await _enqueue(outbox_pool, ordered, *a)
    start = models.utcnow()
    old_token, [head] = await _claim(ordered, now=start)
    assert head.event_id == a[0].event_id
    assert (await _claim(ordered, now=start + SECOND))[1] == []
    # The worker holding the head went away: once its lease is stale the head, and only the
    # head, is claimed again; the old worker's mark is fenced off.
    later = start + TTL + SECOND
    new_token, again = await _claim(ordered, now=later)
    assert _ids(again) == [a[0].event_id]
    assert again[0].delivery_attempts == 2
    assert await ordered.mark_published([a[0].event_id], old_token, later) == 0
    assert (await _claim(ordered, now=later))[1] == []
    assert await ordered.mark_published([a[0].event_id], new_token, later) == 1
    assert _ids((await _claim(ordered, now=later))[1]) == [a[1].event_id]


async def test_a_dead_head_lets_its_key_move_on_and_a_retried_one_blocks_it_again(
    outbox_pool: Any, outbox_dsn: str, outbox_schema: str, ordered: repository.OutboxRepository
) -> None:
    a = [_message("a", n) for n in range(3)]
    await _enqueue(outbox_pool, ordered, *a)
    token, [head] = await _claim(ordered)
    assert await ordered.mark_dead(head.event_id, token, "poison") == 1
    # Dead is not pending: the next event of the key is its head now (as before this claim).
    token2, [second] = await _claim(ordered)
    assert second.event_id == a[1].event_id
    assert await ordered.release([second.event_id], token2) == 1
    # `outbox-di dead retry` makes the dead row pending again: as the oldest pending row of its
    # key it is the head once more, and the key waits for it.
    with database.connect(outbox_dsn) as conn:
        assert operations.dead_retry(conn, outbox_schema, event_ids=[str(a[0].event_id)]) == 1
    _, [retried] = await _claim(ordered)
    assert retried.event_id == a[0].event_id


async def test_a_rescheduled_head_holds_back_its_key_until_it_is_due(
    outbox_pool: Any, ordered: repository.OutboxRepository
) -> None:
    a = [_message("a", n) for n in range(2)]
    b = [_message("b", n) for n in range(2)]
    await _enqueue(outbox_pool, ordered, a[0], b[0], a[1], b[1])
    token, first = await _claim(ordered)
    assert _ids(first) == [a[0].event_id, b[0].event_id]
    retry_at = models.utcnow() + dt.timedelta(minutes=5)
    assert await ordered.reschedule(a[0].event_id, token, retry_at, "broker down") == 1
    assert await ordered.mark_published([b[0].event_id], token, models.utcnow()) == 1
    # Not leased but not due either: the head still blocks "a"; "b" moves on.
    token2, second = await _claim(ordered)
    assert _ids(second) == [b[1].event_id]
    assert await ordered.mark_published([b[1].event_id], token2, models.utcnow()) == 1
    _, third = await _claim(ordered, now=retry_at + SECOND)
    assert _ids(third) == [a[0].event_id]


async def test_rows_without_a_key_are_claimed_beside_blocked_keys(
    outbox_pool: Any, outbox_schema: str, ordered: repository.OutboxRepository
) -> None:
    # Keyless rows come from a repository without ordering (or from before it was turned on).
    plain = repository.OutboxRepository(outbox_pool, outbox_schema)
    await _enqueue(outbox_pool, ordered, *(_message("a", n) for n in range(5)))
    free = [_message(None, n) for n in range(3)]
    await _enqueue(outbox_pool, plain, *free)
    _, first = await _claim(ordered)
    assert len(first) == 4
    assert first[0].ordering_key == "a"
    assert _ids(first[1:]) == [message.event_id for message in free]


async def test_every_key_is_reached_when_more_keys_wait_than_a_claim_takes(
    outbox_pool: Any, ordered: repository.OutboxRepository
) -> None:
    # A stuck key's backlog fills the oldest rows: the heads of the other keys are found by the
    # walk over the keys, which resumes where the previous claim stopped.
    stuck = [_message("a-stuck", n) for n in range(40)]
    await _enqueue(outbox_pool, ordered, *stuck)
    _, [head] = await _claim(ordered, limit=1)
    assert head.event_id == stuck[0].event_id
    others = {f"k{n:02d}": [_message(f"k{n:02d}", m) for m in range(3)] for n in range(12)}
    await _enqueue(outbox_pool, ordered, *(m for batch in others.values() for m in batch))
    seen: list[str] = []
    for _ in range(5):
        _, events = await _claim(ordered, limit=5)
        assert all(event.ordering_key != "a-stuck" for event in events)
        seen.extend(str(event.ordering_key) for event in events)
    # Each key's head once (heads stay leased), every key reached within a few claims.
    assert sorted(seen) == sorted(others)


async def test_a_key_with_a_deep_backlog_behind_a_leased_head_does_not_hide_other_keys(
    outbox_pool: Any, outbox_dsn: str, outbox_schema: str, ordered: repository.OutboxRepository
) -> None:
    quoted = schema.quote_ident(outbox_schema)
    with database.connect(outbox_dsn) as conn, conn, conn.cursor() as cursor:
        cursor.execute(
            # the schema name is validated and quoted by schema.quote_ident
            f"INSERT INTO {quoted}.outbox_events (event_id, aggregate_type, aggregate_id,"  # noqa: S608
            " event_type, payload, ordering_key, available_at)"
            " SELECT gen_random_uuid(), 'item', 'x', 'item.changed', '\\x00', 'deep',"
            " now() - interval '1 hour' + g * interval '1 ms' FROM generate_series(1, 5000) g"
        )
    _, [head] = await _claim(ordered, limit=1)
    assert head.ordering_key == "deep"
    fresh = [_message(f"k{n}", n) for n in range(20)]
    await _enqueue(outbox_pool, ordered, *fresh)
    _, events = await _claim(ordered, limit=500)
    assert sorted(_ids(events)) == sorted(message.event_id for message in fresh)


async def test_concurrent_ordered_claimers_keep_each_key_in_order_one_event_at_a_time(
    outbox_pool: Any, ordered: repository.OutboxRepository
) -> None:
    keys = [f"key-{n}" for n in range(15)]
    messages = [_message(key, n) for n in range(12) for key in keys]
    await _enqueue(outbox_pool, ordered, *messages)
    seq_of: dict[uuid.UUID, int] = {}
    in_flight: set[str] = set()
    published: dict[str, list[int]] = {key: [] for key in keys}
    problems: list[str] = []

    async def worker() -> None:
        idle = 0
        while idle < 20:
            token, events = await _claim(ordered, limit=4)
            if not events:
                idle += 1
                await asyncio.sleep(0.005)
                continue
            idle = 0
            for event in events:
                key = str(event.ordering_key)
                if key in in_flight:
                    problems.append(f"two events of {key} in flight")
                in_flight.add(key)
                seq_of[event.event_id] = event.seq
            await asyncio.sleep(0)
            for event in events:
                published[str(event.ordering_key)].append(event.seq)
                in_flight.discard(str(event.ordering_key))
            changed = await ordered.mark_published(_ids(events), token, models.utcnow())
            assert changed == len(events)

    await asyncio.gather(*(worker() for _ in range(4)))
    assert problems == []
    assert len(seq_of) == len(messages)
    for key in keys:
        assert published[key] == sorted(published[key])
        assert len(published[key]) == 12
    assert await ordered.count_pending() == 0


def _rows_read(node: dict[str, Any]) -> int:
    """Rows returned by the index scans of a JSON plan, summed over their loops."""
    own = 0
    if node["Node Type"] in ("Index Scan", "Index Only Scan"):
        own = int(node["Actual Rows"]) * int(node["Actual Loops"])
    return own + sum(_rows_read(child) for child in node.get("Plans", []))


def test_the_ordered_claim_reads_no_more_rows_with_a_deeper_backlog(
    outbox_dsn: str, outbox_schema: str
) -> None:
    """The rows the claim's index scans return do not grow with the rows behind a stuck head."""
    quoted = schema.quote_ident(outbox_schema)
    claim = schema.Queries(outbox_schema)["outbox_claim_ordered"].sql
    now = models.utcnow()
    values = {
        "now": now,
        "stale_before": now - TTL,
        "limit": 50,
        "lock_token": str(uuid.uuid4()),
        "after_key": None,
    }
    read: list[int] = []
    with database.connect(outbox_dsn) as conn:
        for behind in (100, 5000):
            with conn, conn.cursor() as cursor:
                cursor.execute(f"TRUNCATE {quoted}.outbox_events")
                for key, rows in (("'a-stuck'", behind), ("'k' || (g % 20)", 200)):
                    cursor.execute(
                        # the schema name is validated and quoted by schema.quote_ident
                        f"INSERT INTO {quoted}.outbox_events (event_id, aggregate_type,"  # noqa: S608
                        " aggregate_id, event_type, payload, ordering_key, available_at)"
                        f" SELECT gen_random_uuid(), 'item', 'x', 'item.changed', '\\x00', {key},"
                        " now() - interval '1 hour' + g * interval '1 ms'"
                        f" FROM generate_series(1, {int(rows)}) g"
                    )
                cursor.execute(
                    f"UPDATE {quoted}.outbox_events SET locked_at = now(),"  # noqa: S608
                    " lock_token = gen_random_uuid()"
                    f" WHERE seq = (SELECT min(seq) FROM {quoted}.outbox_events)"
                )
            with conn, conn.cursor() as cursor:
                cursor.execute(f"ANALYZE {quoted}.outbox_events")
            with conn.cursor() as cursor:
                cursor.execute("SET enable_seqscan = off; SET enable_bitmapscan = off")
                cursor.execute("EXPLAIN (ANALYZE, FORMAT JSON) " + claim, values)
                plan = cursor.fetchone()[0][0]["Plan"]
            conn.rollback()  # EXPLAIN ANALYZE ran the update
            read.append(_rows_read(plan))
    assert read[1] <= read[0] + 5, read


async def test_the_relay_sessions_never_compile_the_claim_with_jit(
    outbox_dsn: str, outbox_pool: Any, outbox_repository: repository.OutboxRepository
) -> None:
    """With JIT on and its threshold at 0, a plain session compiles the ordered claim; the
    relay's own sessions (``database.RELAY_SETTINGS``) do not."""
    await _enqueue(outbox_pool, outbox_repository, *(_message(None, n) for n in range(50)))
    claim = schema.Queries(outbox_repository.schema)["outbox_claim_ordered"].sql
    now = models.utcnow()
    values = {
        "now": now,
        "stale_before": now - TTL,
        "limit": 10,
        "lock_token": str(uuid.uuid4()),
        "after_key": None,
    }

    async def jit_of(pool: Any) -> Any:
        async with pool.acquire() as conn, conn.cursor() as cursor:
            await cursor.execute("SET jit_above_cost = 0")
            await cursor.execute("BEGIN")
            try:
                await cursor.execute("EXPLAIN (ANALYZE, FORMAT JSON) " + claim, values)
                [[plan]] = await cursor.fetchall()
            finally:
                await cursor.execute("ROLLBACK")
                await cursor.execute("RESET jit_above_cost")
            return plan[0].get("JIT")

    async with outbox_pool.acquire() as conn, conn.cursor() as cursor:
        # False where the server has no JIT provider (or a default of jit = off).
        await cursor.execute("SELECT pg_jit_available()")
        [[available]] = await cursor.fetchall()
    if not available:
        pytest.skip("this PostgreSQL has no JIT to turn off")
    assert await jit_of(outbox_pool) is not None
    async with database.open_pool(
        outbox_dsn, min_size=1, max_size=1, settings=database.RELAY_SETTINGS
    ) as relay_pool:
        assert await jit_of(relay_pool) is None
