"""OutboxRepository and InboxRepository against a real PostgreSQL."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import uuid
from typing import Any

import pytest

from outbox_di import errors, models, repository, schema

pytestmark = pytest.mark.integration

SECOND = dt.timedelta(seconds=1)
TTL = dt.timedelta(seconds=30)


def _message(n: int = 0, **overrides: Any) -> models.Message:
    fields: dict[str, Any] = {
        "aggregate_type": "item",
        "aggregate_id": f"item-{n}",
        "event_type": "item.created",
        "payload": {"n": n},
        "headers": {"source": "test"},
    }
    fields.update(overrides)
    return models.Message(**fields)


async def _enqueue(pool: Any, repo: repository.OutboxRepository, *messages: models.Message) -> None:
    async with pool.acquire() as conn, conn.cursor() as cursor, cursor.begin():
        await repo.enqueue_many(cursor, messages)


async def _claim(
    repo: repository.OutboxRepository, limit: int = 100, now: dt.datetime | None = None
) -> tuple[uuid.UUID, list[models.OutboxEvent]]:
    now = now or models.utcnow()
    token = uuid.uuid4()
    return token, await repo.claim_pending(now, now - TTL, limit, token)


async def test_enqueue_then_claim_returns_the_stored_event(
    outbox_pool: Any, outbox_repository: repository.OutboxRepository
) -> None:
    message = _message(7, ordering_key="k1")
    async with outbox_pool.acquire() as conn, conn.cursor() as cursor, cursor.begin():
        returned = await outbox_repository.enqueue(cursor, message)
    assert returned == message.event_id
    token, events = await _claim(outbox_repository)
    assert len(events) == 1
    event = events[0]
    assert event.event_id == message.event_id
    assert (event.aggregate_type, event.aggregate_id, event.event_type) == (
        "item",
        "item-7",
        "item.created",
    )
    assert event.json() == {"n": 7}
    assert event.payload == b'{"n":7}'
    assert event.headers == {"source": "test"}
    assert event.ordering_key == "k1"
    assert event.status is models.OutboxStatus.PENDING
    assert event.lock_token == token
    assert event.delivery_attempts == 1
    assert event.published_at is None


async def test_bytes_payload_is_stored_exactly(
    outbox_pool: Any, outbox_repository: repository.OutboxRepository
) -> None:
    raw = bytes(range(256))
    await _enqueue(outbox_pool, outbox_repository, _message(payload=raw))
    _, events = await _claim(outbox_repository)
    assert events[0].payload == raw


async def test_enqueue_many_keeps_order_and_claim_is_oldest_first(
    outbox_pool: Any, outbox_repository: repository.OutboxRepository
) -> None:
    messages = [_message(n) for n in range(50)]
    await _enqueue(outbox_pool, outbox_repository, *messages)
    _, first = await _claim(outbox_repository, limit=20)
    _, second = await _claim(outbox_repository, limit=100)
    assert [e.event_id for e in first + second] == [m.event_id for m in messages]
    _, third = await _claim(outbox_repository)
    assert third == []


async def test_claim_skips_rows_not_yet_available(
    outbox_pool: Any, outbox_repository: repository.OutboxRepository
) -> None:
    later = models.utcnow() + dt.timedelta(hours=1)
    await _enqueue(outbox_pool, outbox_repository, _message(1, available_at=later), _message(2))
    token, events = await _claim(outbox_repository)
    assert [e.aggregate_id for e in events] == ["item-2"]
    await outbox_repository.mark_published([events[0].event_id], token, models.utcnow())
    _, events = await _claim(outbox_repository, now=later + SECOND)
    assert [e.aggregate_id for e in events] == ["item-1"]


async def test_mark_published_is_one_statement_for_the_batch_and_fenced(
    outbox_pool: Any, outbox_repository: repository.OutboxRepository
) -> None:
    await _enqueue(outbox_pool, outbox_repository, *[_message(n) for n in range(10)])
    token, events = await _claim(outbox_repository)
    ids = [e.event_id for e in events]
    assert await outbox_repository.mark_published(ids, uuid.uuid4(), models.utcnow()) == 0
    published_at = models.utcnow()
    assert await outbox_repository.mark_published(ids, token, published_at) == 10
    assert await outbox_repository.mark_published(ids, token, published_at) == 0
    assert await outbox_repository.count_pending() == 0
    stored = await outbox_repository.get(ids[0])
    assert stored is not None
    assert stored.status is models.OutboxStatus.PUBLISHED
    assert stored.published_at == published_at
    assert await outbox_repository.mark_published([], token, published_at) == 0


async def test_reschedule_records_error_and_delays(
    outbox_pool: Any, outbox_repository: repository.OutboxRepository
) -> None:
    await _enqueue(outbox_pool, outbox_repository, _message())
    token, [event] = await _claim(outbox_repository)
    next_at = models.utcnow() + dt.timedelta(minutes=5)
    assert await outbox_repository.reschedule(event.event_id, uuid.uuid4(), next_at, "x") == 0
    assert await outbox_repository.reschedule(event.event_id, token, next_at, "boom") == 1
    stored = await outbox_repository.get(event.event_id)
    assert stored is not None
    assert stored.last_error == "boom"
    assert stored.available_at == next_at
    assert stored.lock_token is None and stored.locked_at is None
    assert stored.status is models.OutboxStatus.PENDING
    _, now_due = await _claim(outbox_repository)
    assert now_due == []
    token2, [again] = await _claim(outbox_repository, now=next_at + SECOND)
    assert again.delivery_attempts == 2
    assert again.last_error == "boom"
    # The first token no longer fences anything.
    assert await outbox_repository.reschedule(event.event_id, token, next_at, "late") == 0
    assert await outbox_repository.mark_published([event.event_id], token2, models.utcnow()) == 1


async def test_mark_dead_keeps_the_row_and_stops_claims(
    outbox_pool: Any, outbox_repository: repository.OutboxRepository
) -> None:
    await _enqueue(outbox_pool, outbox_repository, _message())
    token, [event] = await _claim(outbox_repository)
    assert await outbox_repository.mark_dead(event.event_id, uuid.uuid4(), "no") == 0
    assert await outbox_repository.mark_dead(event.event_id, token, "payload too large") == 1
    stored = await outbox_repository.get(event.event_id)
    assert stored is not None
    assert stored.status is models.OutboxStatus.DEAD
    assert stored.last_error == "payload too large"
    assert await outbox_repository.count_pending() == 0
    far = models.utcnow() + dt.timedelta(days=1)
    _, events = await _claim(outbox_repository, now=far)
    assert events == []


async def test_release_makes_rows_due_at_once_without_counting_an_attempt(
    outbox_pool: Any, outbox_repository: repository.OutboxRepository
) -> None:
    await _enqueue(outbox_pool, outbox_repository, _message(1), _message(2))
    token, events = await _claim(outbox_repository)
    ids = [e.event_id for e in events]
    assert await outbox_repository.release(ids, uuid.uuid4()) == 0
    assert await outbox_repository.release(ids, token) == 2
    _, again = await _claim(outbox_repository)
    assert [e.event_id for e in again] == ids
    assert all(e.delivery_attempts == 1 for e in again)


async def test_count_pending_includes_in_flight_rows(
    outbox_pool: Any, outbox_repository: repository.OutboxRepository
) -> None:
    assert await outbox_repository.count_pending() == 0
    await _enqueue(outbox_pool, outbox_repository, *[_message(n) for n in range(5)])
    assert await outbox_repository.count_pending() == 5
    token, events = await _claim(outbox_repository, limit=2)
    assert await outbox_repository.count_pending() == 5
    await outbox_repository.mark_published([e.event_id for e in events], token, models.utcnow())
    assert await outbox_repository.count_pending() == 3


async def test_stale_worker_mark_changes_nothing_after_lease_expiry(
    outbox_pool: Any, outbox_repository: repository.OutboxRepository
) -> None:
    """Fencing: worker A's lease expires, B claims the row; A's late mark changes 0 rows."""
    await _enqueue(outbox_pool, outbox_repository, _message())
    t0 = models.utcnow()
    token_a, [event_a] = await _claim(outbox_repository, now=t0)
    # Within the lease nobody else gets the row.
    _, none = await _claim(outbox_repository, now=t0 + TTL - SECOND)
    assert none == []
    # After lock_ttl the lease is presumed dead and the row is claimed again.
    later = t0 + TTL + SECOND
    token_b, [event_b] = await _claim(outbox_repository, now=later)
    assert event_b.event_id == event_a.event_id
    assert event_b.lock_token == token_b
    assert event_b.delivery_attempts == 2
    assert await outbox_repository.mark_published([event_a.event_id], token_a, later) == 0
    assert await outbox_repository.reschedule(event_a.event_id, token_a, later, "late") == 0
    assert await outbox_repository.mark_dead(event_a.event_id, token_a, "late") == 0
    assert await outbox_repository.mark_published([event_b.event_id], token_b, later) == 1


async def test_concurrent_claimers_never_take_the_same_row(
    outbox_pool: Any, outbox_repository: repository.OutboxRepository
) -> None:
    total = 3000
    for start in range(0, total, 500):
        await _enqueue(
            outbox_pool, outbox_repository, *[_message(n) for n in range(start, start + 500)]
        )
    taken: dict[uuid.UUID, uuid.UUID] = {}
    duplicates: list[uuid.UUID] = []
    per_worker: dict[int, int] = {}

    async def worker(number: int) -> None:
        per_worker[number] = 0
        while True:
            token, events = await _claim(outbox_repository, limit=37)
            if not events:
                return
            for event in events:
                if event.event_id in taken:
                    duplicates.append(event.event_id)
                taken[event.event_id] = token
            per_worker[number] += len(events)
            marked = await outbox_repository.mark_published(
                [e.event_id for e in events], token, models.utcnow()
            )
            assert marked == len(events)
            await asyncio.sleep(0)

    await asyncio.gather(*(worker(n) for n in range(6)))
    assert duplicates == []
    assert len(taken) == total
    assert sum(per_worker.values()) == total
    assert await outbox_repository.count_pending() == 0


@pytest.mark.parametrize(
    ("stored", "expected"),
    [
        ('{"a": "b"}', {"a": "b"}),
        ('{"a": 1, "b": {"c": true}, "d": null}', {"a": "1", "b": '{"c":true}', "d": "null"}),
        ('["not", "an", "object"]', {}),
        ('"{\\"x\\": \\"y\\"}"', {"x": "y"}),
        ('"not json at all"', {}),
        ("42", {}),
        ("null", {}),
    ],
)
async def test_headers_that_are_not_a_json_object_of_strings_never_crash_a_claim(
    outbox_pool: Any,
    outbox_repository: repository.OutboxRepository,
    stored: str,
    expected: dict[str, str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    message = _message()
    await _enqueue(outbox_pool, outbox_repository, message)
    test_kit = schema.Queries(outbox_repository.schema, files=schema.TEST_KIT_FILES)
    sql = test_kit["test_set_headers"].sql
    async with outbox_pool.acquire() as conn, conn.cursor() as cursor:
        await cursor.execute(sql, {"event_id": str(message.event_id), "headers": stored})
    _, [event] = await _claim(outbox_repository)
    assert event.headers == expected
    # JSON null reads as "no headers", like the empty object (the claim returns both as NULL).
    if stored != "null" and expected != json.loads(stored):
        assert any("headers of event" in record.getMessage() for record in caplog.records)


async def test_bad_messages_are_refused_before_storage(
    outbox_pool: Any, outbox_repository: repository.OutboxRepository
) -> None:
    bad = [
        _message(event_type=""),
        _message(aggregate_type=None),
        _message(aggregate_id=""),
        _message(payload={"x": object()}),
        _message(headers={"n": 1}),
    ]
    for message in bad:
        async with outbox_pool.acquire() as conn, conn.cursor() as cursor, cursor.begin():
            with pytest.raises(errors.MessageError):
                await outbox_repository.enqueue(cursor, message)
    assert await outbox_repository.count_pending() == 0


async def test_ordering_key_defaults_to_the_aggregate_id_when_ordering_is_on(
    outbox_pool: Any, outbox_schema: str
) -> None:
    repo = repository.OutboxRepository(outbox_pool, outbox_schema, ordering=True)
    await _enqueue(outbox_pool, repo, _message(3), _message(4, ordering_key="explicit"))
    _, events = await _claim(repo)
    assert [e.ordering_key for e in events] == ["item-3", "explicit"]


async def test_pool_methods_need_a_pool(outbox_schema: str) -> None:
    repo = repository.OutboxRepository(None, outbox_schema)
    with pytest.raises(errors.OutboxError, match="without a pool"):
        await repo.count_pending()


async def test_database_errors_are_translated(outbox_pool: Any, outbox_schema: str) -> None:
    repo = repository.OutboxRepository(outbox_pool, "no_such_schema_here")
    with pytest.raises(errors.DatabaseError, match="outbox_count_pending") as info:
        await repo.count_pending()
    assert info.value.__cause__ is not None


# -- inbox ---------------------------------------------------------------------------------


def _received(event_id: str, **overrides: Any) -> models.ReceivedMessage:
    fields: dict[str, Any] = {
        "event_id": event_id,
        "event_type": "item.created",
        "payload": b'{"x":1}',
        "headers": {"traceparent": "00-abc-def-01"},
        "message_id": f"m-{event_id}",
        "aggregate_type": "item",
        "aggregate_id": "i1",
    }
    fields.update(overrides)
    return models.ReceivedMessage(**fields)


async def test_inbox_records_each_event_once_per_consumer(
    inbox_repository: repository.InboxRepository,
) -> None:
    assert await inbox_repository.record_received("svc-b", _received("e1")) is True
    assert await inbox_repository.record_received("svc-b", _received("e1")) is False
    assert await inbox_repository.record_received("svc-c", _received("e1")) is True
    batch = [_received("e1"), _received("e2"), _received("e3"), _received("e2")]
    assert await inbox_repository.record_received_many("svc-b", batch) == 2
    assert await inbox_repository.record_received_many("svc-b", []) == 0
    assert await inbox_repository.count_pending("svc-b") == 3
    assert await inbox_repository.count_pending("svc-c") == 1
    stored = await inbox_repository.get("svc-b", "e1")
    assert stored is not None
    assert stored.message_id == "m-e1"
    assert stored.headers == {"traceparent": "00-abc-def-01"}
    assert stored.payload == b'{"x":1}'


async def test_inbox_record_received_joins_a_session_transaction(
    outbox_pool: Any, inbox_repository: repository.InboxRepository
) -> None:
    async with outbox_pool.acquire() as conn, conn.cursor() as cursor:
        transaction = await cursor.begin()
        assert await inbox_repository.record_received("b", _received("r1"), session=cursor)
        await transaction.rollback()
    assert await inbox_repository.get("b", "r1") is None


async def test_inbox_claim_process_error_dead_and_fencing(
    outbox_pool: Any, inbox_repository: repository.InboxRepository
) -> None:
    await inbox_repository.record_received_many("b", [_received(f"e{n}") for n in range(4)])
    await inbox_repository.record_received("other", _received("x"))
    now = models.utcnow()
    token = uuid.uuid4()
    events = await inbox_repository.claim("b", now, now - TTL, 10, token)
    assert [e.event_id for e in events] == ["e0", "e1", "e2", "e3"]
    assert all(e.consumer == "b" and e.lock_token == token for e in events)
    assert await inbox_repository.claim("b", now, now - TTL, 10, uuid.uuid4()) == []

    stranger = uuid.uuid4()
    assert await inbox_repository.mark_processed("b", ["e0"], stranger, now) == 0
    assert await inbox_repository.mark_processed("b", ["e0", "e1"], token, now) == 2
    retry_at = now + dt.timedelta(minutes=1)
    assert await inbox_repository.record_error("b", "e2", stranger, retry_at, "x") == 0
    assert await inbox_repository.record_error("b", "e2", token, retry_at, "handler failed") == 1
    assert await inbox_repository.mark_dead("b", "e3", stranger, "x") == 0
    assert await inbox_repository.mark_dead("b", "e3", token, "no handler") == 1

    e0 = await inbox_repository.get("b", "e0")
    e2 = await inbox_repository.get("b", "e2")
    e3 = await inbox_repository.get("b", "e3")
    assert e0 is not None and e0.status is models.InboxStatus.PROCESSED
    assert e0.processed_at == now
    assert e2 is not None and e2.last_error == "handler failed" and e2.lock_token is None
    assert e3 is not None and e3.status is models.InboxStatus.DEAD
    assert await inbox_repository.count_pending("b") == 1

    token2 = uuid.uuid4()
    later = retry_at + SECOND
    [again] = await inbox_repository.claim("b", later, later - TTL, 10, token2)
    assert again.event_id == "e2" and again.delivery_attempts == 2
    assert await inbox_repository.release("b", ["e2"], token2) == 1
    assert await inbox_repository.count_pending("other") == 1


async def test_inbox_lease_expiry_and_stale_worker(
    inbox_repository: repository.InboxRepository,
) -> None:
    await inbox_repository.record_received("b", _received("e1"))
    t0 = models.utcnow()
    token_a = uuid.uuid4()
    [a] = await inbox_repository.claim("b", t0, t0 - TTL, 10, token_a)
    later = t0 + TTL + SECOND
    token_b = uuid.uuid4()
    [b] = await inbox_repository.claim("b", later, later - TTL, 10, token_b)
    assert a.event_id == b.event_id == "e1"
    assert await inbox_repository.mark_processed("b", ["e1"], token_a, later) == 0
    assert await inbox_repository.mark_processed("b", ["e1"], token_b, later) == 1


async def test_inbox_mark_processed_in_the_handlers_transaction(
    outbox_pool: Any, inbox_repository: repository.InboxRepository
) -> None:
    await inbox_repository.record_received("b", _received("e1"))
    now = models.utcnow()
    token = uuid.uuid4()
    await inbox_repository.claim("b", now, now - TTL, 10, token)
    async with outbox_pool.acquire() as conn, conn.cursor() as cursor:
        transaction = await cursor.begin()
        assert await inbox_repository.mark_processed("b", ["e1"], token, now, session=cursor) == 1
        await transaction.rollback()
    assert await inbox_repository.count_pending("b") == 1
    async with outbox_pool.acquire() as conn, conn.cursor() as cursor, cursor.begin():
        assert await inbox_repository.mark_processed("b", ["e1"], token, now, session=cursor) == 1
    assert await inbox_repository.count_pending("b") == 0


async def test_concurrent_inbox_claimers_never_take_the_same_row(
    inbox_repository: repository.InboxRepository,
) -> None:
    await inbox_repository.record_received_many("b", [_received(f"e{n}") for n in range(1000)])
    seen: list[str] = []

    async def worker() -> None:
        while True:
            now = models.utcnow()
            token = uuid.uuid4()
            events = await inbox_repository.claim("b", now, now - TTL, 25, token)
            if not events:
                return
            seen.extend(e.event_id for e in events)
            assert await inbox_repository.mark_processed(
                "b", [e.event_id for e in events], token, now
            ) == len(events)

    await asyncio.gather(*(worker() for _ in range(4)))
    assert len(seen) == 1000
    assert len(set(seen)) == 1000


async def test_ordered_claim_takes_only_the_head_of_each_key(
    outbox_pool: Any, outbox_schema: str
) -> None:
    repo = repository.OutboxRepository(outbox_pool, outbox_schema, ordering=True)
    a = [_message(n, aggregate_id="a") for n in range(3)]
    b = [_message(n, aggregate_id="b") for n in range(2)]
    await _enqueue(outbox_pool, repo, a[0], b[0], a[1], b[1], a[2])
    token, first = await _claim(repo)
    assert [e.event_id for e in first] == [a[0].event_id, b[0].event_id]
    # While the heads are in flight, nobody else gets the next events of those keys.
    _, blocked = await _claim(repo)
    assert blocked == []
    # A failing head holds back only its own key.
    retry_at = models.utcnow() + dt.timedelta(minutes=5)
    assert await repo.reschedule(a[0].event_id, token, retry_at, "broker down") == 1
    assert await repo.mark_published([b[0].event_id], token, models.utcnow()) == 1
    token2, second = await _claim(repo)
    assert [e.event_id for e in second] == [b[1].event_id]
    await repo.mark_published([b[1].event_id], token2, models.utcnow())
    assert (await _claim(repo))[1] == []
    # Once the head is dead-lettered, the key moves on in order.
    token3, [head] = await _claim(repo, now=retry_at + SECOND)
    assert head.event_id == a[0].event_id
    assert await repo.mark_dead(head.event_id, token3, "gave up") == 1
    _, [nxt] = await _claim(repo, now=retry_at + SECOND)
    assert nxt.event_id == a[1].event_id
