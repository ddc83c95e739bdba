"""InboxWorker against a real PostgreSQL: handlers, retries, parking, leases, transactions."""

from __future__ import annotations

import asyncio
import datetime as dt
import gc
import logging
import time
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from psycopg2 import sql

from outbox_di import config, models, observability, repository
from outbox_di.inbox.handlers import transactional
from outbox_di.inbox.worker import InboxWorker
from outbox_di.testing.publisher_suite import metric_points
from tests.integration import support

pytestmark = pytest.mark.integration

CONSUMER = "orders"


def _config(schema: str, dsn: str, **inbox: Any) -> config.OutboxConfig:
    settings: dict[str, Any] = {
        "consumer": CONSUMER,
        "lock_ttl": "30s",
        "retry_delay": "10ms",
        "handler_timeout": "5s",
        "workers": 2,
    }
    settings.update(inbox)
    return config.OutboxConfig.from_mapping(
        {"schema": schema, "dsn": dsn, "publisher": {"enabled": False}, "inbox": settings}
    )


def _message(event_type: str = "order.placed", **fields: Any) -> models.ReceivedMessage:
    values: dict[str, Any] = {
        "event_id": str(uuid.uuid4()),
        "event_type": event_type,
        "payload": b'{"n": 1}',
        "aggregate_type": "order",
        "aggregate_id": "o-1",
    }
    values.update(fields)
    return models.ReceivedMessage(**values)


async def _record(repo: repository.InboxRepository, *messages: models.ReceivedMessage) -> list[str]:
    await repo.record_received_many(CONSUMER, messages)
    return [message.event_id for message in messages]


async def _until(predicate: Callable[[], bool], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.01)


async def _stored(repo: repository.InboxRepository, event_id: str) -> models.InboxEvent:
    event = await repo.get(CONSUMER, event_id)
    assert event is not None
    return event


def _worker(
    repo: repository.InboxRepository, dsn: str, handlers: Any, **kwargs: Any
) -> InboxWorker:
    inbox = {key: kwargs.pop(key) for key in list(kwargs) if key in _INBOX_KEYS}
    kwargs.setdefault("poll_interval", 0.05)
    return InboxWorker(_config(repo.schema, dsn, **inbox), repo, handlers, **kwargs)


_INBOX_KEYS = {
    "lock_ttl",
    "max_attempts",
    "retry_delay",
    "handler_timeout",
    "workers",
    "batch_size",
    "retention",
}


async def test_plain_handler_runs_once_per_event_and_marks_processed(
    inbox_repository: repository.InboxRepository, outbox_dsn: str
) -> None:
    ids = await _record(inbox_repository, *(_message() for _ in range(250)))
    seen: list[str] = []

    async def handle(event: models.InboxEvent) -> None:
        seen.append(event.event_id)

    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    worker = _worker(
        inbox_repository,
        outbox_dsn,
        {"order.placed": handle},
        batch_size=100,
        meter=provider.get_meter("test"),
    )
    async with worker:
        await _until(lambda: worker.stats.processed == 250)
    assert sorted(seen) == sorted(ids)
    assert await inbox_repository.count_pending(CONSUMER) == 0
    stored = await _stored(inbox_repository, ids[0])
    assert stored.status is models.InboxStatus.PROCESSED
    assert stored.processed_at is not None
    points = metric_points(reader)
    success = points[observability.INBOX_SUCCESS]
    assert sum(p.value for p in success) == 250
    assert dict(success[0].attributes) == {
        "schema": inbox_repository.schema,
        "consumer": CONSUMER,
        "event_type": "order.placed",
    }
    assert points[observability.INBOX_LATENCY]
    provider.shutdown()


async def test_failure_is_retried_then_dead(
    inbox_repository: repository.InboxRepository, outbox_dsn: str
) -> None:
    [flaky, doomed] = await _record(
        inbox_repository, _message(aggregate_id="flaky"), _message(aggregate_id="doomed")
    )
    calls: dict[str, int] = {}

    async def handle(event: models.InboxEvent) -> None:
        calls[event.aggregate_id] = calls.get(event.aggregate_id, 0) + 1
        if event.aggregate_id == "doomed" or calls[event.aggregate_id] < 2:
            raise RuntimeError(f"boom {calls[event.aggregate_id]}")

    worker = _worker(inbox_repository, outbox_dsn, {"order.placed": handle}, max_attempts=3)
    async with worker:
        await _until(lambda: worker.stats.dead == 1 and worker.stats.processed == 1)
    assert calls == {"flaky": 2, "doomed": 3}
    ok = await _stored(inbox_repository, flaky)
    assert ok.status is models.InboxStatus.PROCESSED
    assert ok.delivery_attempts == 2
    assert ok.last_error == "RuntimeError: boom 1"
    dead = await _stored(inbox_repository, doomed)
    assert dead.status is models.InboxStatus.DEAD
    assert dead.last_error == "RuntimeError: boom 3 (dead after 3 attempts)"
    assert worker.stats.failed == 4


async def test_handler_timeout_counts_as_failure(
    inbox_repository: repository.InboxRepository, outbox_dsn: str
) -> None:
    [event_id] = await _record(inbox_repository, _message())

    async def slow(event: models.InboxEvent) -> None:
        await asyncio.sleep(30)

    worker = _worker(
        inbox_repository,
        outbox_dsn,
        {"order.placed": slow},
        handler_timeout="100ms",
        max_attempts=2,
    )
    async with worker:
        await _until(lambda: worker.stats.dead == 1)
    stored = await _stored(inbox_repository, event_id)
    assert stored.status is models.InboxStatus.DEAD
    assert stored.last_error == "handler timed out after 0.1s (dead after 2 attempts)"
    assert worker.stats.failed == 2


async def test_unknown_event_type_is_parked_and_the_default_handler_takes_the_rest(
    inbox_repository: repository.InboxRepository, outbox_dsn: str
) -> None:
    [unknown] = await _record(inbox_repository, _message("order.cancelled"))
    worker = _worker(inbox_repository, outbox_dsn, {"order.placed": _noop})
    async with worker:
        await _until(lambda: worker.stats.parked == 1)
    stored = await _stored(inbox_repository, unknown)
    assert stored.status is models.InboxStatus.DEAD
    assert stored.last_error == "no handler registered for event type 'order.cancelled'"
    assert stored.delivery_attempts == 1

    [other] = await _record(inbox_repository, _message("order.shipped"))
    seen: list[str] = []

    async def fallback(event: models.InboxEvent) -> None:
        seen.append(event.event_type)

    worker = _worker(inbox_repository, outbox_dsn, {"*": fallback})
    async with worker:
        await _until(lambda: worker.stats.processed == 1)
    assert seen == ["order.shipped"]
    assert (await _stored(inbox_repository, other)).status is models.InboxStatus.PROCESSED


async def _noop(event: models.InboxEvent) -> None:
    return None


async def test_a_dead_workers_lease_expires_and_another_worker_processes_it(
    inbox_repository: repository.InboxRepository, outbox_dsn: str
) -> None:
    [event_id] = await _record(inbox_repository, _message())
    now = models.utcnow()
    dead_token = uuid.uuid4()
    claimed = await inbox_repository.claim(CONSUMER, now, now, 10, dead_token)
    assert [e.event_id for e in claimed] == [event_id]

    seen: list[str] = []

    async def handle(event: models.InboxEvent) -> None:
        seen.append(event.event_id)

    started = time.monotonic()
    worker = _worker(
        inbox_repository,
        outbox_dsn,
        {"order.placed": handle},
        lock_ttl="500ms",
        handler_timeout="400ms",
    )
    async with worker:
        await _until(lambda: worker.stats.processed == 1)
    assert time.monotonic() - started >= 0.4
    assert seen == [event_id]
    # The dead worker's fenced mark changes nothing.
    assert await inbox_repository.mark_processed(CONSUMER, [event_id], dead_token, now) == 0
    assert (await _stored(inbox_repository, event_id)).delivery_attempts == 2


def _in_schema(statement: str, schema: str) -> sql.Composed:
    """The test's own SQL, with the test schema quoted as an identifier."""
    return sql.SQL(statement).format(sql.Identifier(schema))


async def _create_effects(pool: Any, schema: str) -> None:
    async with pool.acquire() as conn, conn.cursor() as cursor:
        await cursor.execute(
            _in_schema(
                "CREATE TABLE {}.effects (event_id text PRIMARY KEY, note text NOT NULL)", schema
            )
        )


async def _effects(pool: Any, schema: str) -> list[str]:
    async with pool.acquire() as conn, conn.cursor() as cursor:
        await cursor.execute(
            _in_schema("SELECT event_id FROM {}.effects ORDER BY event_id", schema)
        )
        return [row[0] for row in await cursor.fetchall()]


async def test_transactional_handler_commits_with_processed_at(
    outbox_pool: Any, inbox_repository: repository.InboxRepository, outbox_dsn: str
) -> None:
    schema = inbox_repository.schema
    await _create_effects(outbox_pool, schema)
    [good, bad] = await _record(
        inbox_repository, _message(aggregate_id="good"), _message(aggregate_id="bad")
    )

    @transactional
    async def handle(event: models.InboxEvent, session: Any) -> None:
        await session.execute(
            _in_schema("INSERT INTO {}.effects (event_id, note) VALUES (%s, %s)", schema),
            (event.event_id, event.aggregate_id),
        )
        if event.aggregate_id == "bad":
            raise ValueError("refused after writing")

    worker = _worker(inbox_repository, outbox_dsn, {"order.placed": handle}, max_attempts=2)
    async with worker:
        await _until(lambda: worker.stats.processed == 1 and worker.stats.dead == 1)
    assert await _effects(outbox_pool, schema) == [good]
    processed = await _stored(inbox_repository, good)
    assert processed.status is models.InboxStatus.PROCESSED
    assert processed.processed_at is not None
    failed = await _stored(inbox_repository, bad)
    assert failed.status is models.InboxStatus.DEAD
    assert failed.last_error == "ValueError: refused after writing (dead after 2 attempts)"


async def test_transactional_handler_rolls_back_when_its_lease_was_lost(
    outbox_pool: Any, inbox_repository: repository.InboxRepository, outbox_dsn: str
) -> None:
    schema = inbox_repository.schema
    await _create_effects(outbox_pool, schema)
    [event_id] = await _record(inbox_repository, _message())
    thief = uuid.uuid4()

    @transactional
    async def handle(event: models.InboxEvent, session: Any) -> None:
        await session.execute(
            _in_schema("INSERT INTO {}.effects (event_id, note) VALUES (%s, %s)", schema),
            (event.event_id, "x"),
        )
        # Another worker takes the lease meanwhile (as after lock_ttl).
        async with outbox_pool.acquire() as conn, conn.cursor() as cursor:
            await cursor.execute(
                _in_schema(
                    "UPDATE {}.inbox_events SET lock_token = %s WHERE event_id = %s", schema
                ),
                (str(thief), event.event_id),
            )

    worker = _worker(inbox_repository, outbox_dsn, {"order.placed": handle}, workers=1)
    async with worker:
        await _until(lambda: worker.stats.lease_lost == 1)
    assert await _effects(outbox_pool, schema) == []
    stored = await _stored(inbox_repository, event_id)
    assert stored.status is models.InboxStatus.PENDING
    assert stored.lock_token == thief


async def test_partial_lease_loss_counts_exactly_the_events_marked(
    outbox_pool: Any, inbox_repository: repository.InboxRepository, outbox_dsn: str
) -> None:
    """Two plain handlers of one batch; another worker takes one lease meanwhile: one event
    is marked processed, and the success metric counts that one (not zero, not two)."""
    schema = inbox_repository.schema
    kept, stolen = await _record(inbox_repository, _message(), _message())
    arrived: list[str] = []
    both_running = asyncio.Event()

    async def handle(event: models.InboxEvent) -> None:
        # Both claimed in one batch, both handled concurrently.
        arrived.append(event.event_id)
        if len(arrived) == 2:
            both_running.set()
        await asyncio.wait_for(both_running.wait(), 10)
        if event.event_id == stolen:
            async with outbox_pool.acquire() as conn, conn.cursor() as cursor:
                await cursor.execute(
                    _in_schema(
                        "UPDATE {}.inbox_events SET lock_token = %s WHERE event_id = %s", schema
                    ),
                    (str(uuid.uuid4()), stolen),
                )

    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    worker = _worker(
        inbox_repository, outbox_dsn, {"order.placed": handle}, meter=provider.get_meter("t")
    )
    async with worker:
        await _until(lambda: worker.stats.lease_lost == 1)
    assert worker.stats.processed == 1
    assert (await _stored(inbox_repository, kept)).status is models.InboxStatus.PROCESSED
    assert (await _stored(inbox_repository, stolen)).status is models.InboxStatus.PENDING
    success = metric_points(reader)[observability.INBOX_SUCCESS]
    assert sum(point.value for point in success) == 1
    provider.shutdown()


async def test_stop_drains_in_flight_handlers(
    inbox_repository: repository.InboxRepository, outbox_dsn: str
) -> None:
    [event_id] = await _record(inbox_repository, _message())
    started = asyncio.Event()

    async def handle(event: models.InboxEvent) -> None:
        started.set()
        await asyncio.sleep(0.3)

    worker = _worker(inbox_repository, outbox_dsn, {"order.placed": handle})
    await worker.start()
    await asyncio.wait_for(started.wait(), 10)
    await worker.stop(timeout=10)
    assert worker.stats.processed == 1
    assert (await _stored(inbox_repository, event_id)).status is models.InboxStatus.PROCESSED


async def test_stop_releases_leases_of_handlers_it_had_to_cancel(
    inbox_repository: repository.InboxRepository, outbox_dsn: str
) -> None:
    ids = await _record(inbox_repository, _message(), _message())
    started = asyncio.Event()

    async def stuck(event: models.InboxEvent) -> None:
        started.set()
        await asyncio.sleep(60)

    worker = _worker(inbox_repository, outbox_dsn, {"order.placed": stuck}, workers=1)
    await worker.start()
    await asyncio.wait_for(started.wait(), 10)
    await worker.stop(timeout=0.2)
    for event_id in ids:
        stored = await _stored(inbox_repository, event_id)
        assert stored.status is models.InboxStatus.PENDING
        assert stored.lock_token is None and stored.locked_at is None
        assert stored.delivery_attempts == 0
    assert await inbox_repository.count_pending(CONSUMER) == 2


async def test_notify_wakes_an_idle_worker_long_before_the_poll(
    inbox_repository: repository.InboxRepository, outbox_dsn: str
) -> None:
    seen: list[str] = []

    async def handle(event: models.InboxEvent) -> None:
        seen.append(event.event_id)

    worker = _worker(inbox_repository, outbox_dsn, {"order.placed": handle}, poll_interval=30.0)
    async with worker:
        await asyncio.sleep(0.3)  # idle now, waiting up to 30 s
        begun = time.monotonic()
        [event_id] = await _record(inbox_repository, _message())
        await _until(lambda: seen == [event_id], timeout=5)
        assert time.monotonic() - begun < 2.0


async def test_same_ordering_key_runs_in_order_and_the_handler_span_continues_the_trace(
    inbox_repository: repository.InboxRepository, outbox_dsn: str
) -> None:
    traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    ids = await _record(
        inbox_repository,
        *(
            _message(ordering_key="k", headers={"traceparent": traceparent, "n": str(n)})
            for n in range(20)
        ),
    )
    seen: list[str] = []

    async def handle(event: models.InboxEvent) -> None:
        await asyncio.sleep(0.001 * (20 - int(event.headers["n"])))
        seen.append(event.event_id)

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    worker = _worker(
        inbox_repository,
        outbox_dsn,
        {"order.placed": handle},
        workers=1,
        tracer=provider.get_tracer("test"),
    )
    async with worker:
        await _until(lambda: worker.stats.processed == 20)
    assert seen == ids
    spans = exporter.get_finished_spans()
    assert len(spans) == 20
    span = spans[0]
    assert span.name == observability.SPAN_HANDLE
    assert span.kind is trace.SpanKind.CONSUMER
    assert span.parent is not None
    assert span.parent.trace_id == 0x0AF7651916CD43DD8448EB211C80319C
    assert span.parent.span_id == 0xB7AD6B7169203331
    provider.shutdown()


async def test_transactional_handler_timeout_rolls_back_and_the_pool_stays_usable(
    outbox_pool: Any, inbox_repository: repository.InboxRepository, outbox_dsn: str
) -> None:
    schema = inbox_repository.schema
    await _create_effects(outbox_pool, schema)
    [event_id] = await _record(inbox_repository, _message())

    @transactional
    async def slow(event: models.InboxEvent, session: Any) -> None:
        await session.execute(
            _in_schema("INSERT INTO {}.effects (event_id, note) VALUES (%s, %s)", schema),
            (event.event_id, "x"),
        )
        await session.execute("SELECT pg_sleep(1)")

    worker = _worker(
        inbox_repository,
        outbox_dsn,
        {"order.placed": slow},
        handler_timeout="200ms",
        max_attempts=1,
    )
    async with worker:
        await _until(lambda: worker.stats.dead == 1)
    assert await _effects(outbox_pool, schema) == []
    stored = await _stored(inbox_repository, event_id)
    assert stored.status is models.InboxStatus.DEAD
    assert stored.last_error == "handler timed out after 0.2s (dead after 1 attempts)"


async def test_processed_rows_older_than_retention_are_purged_in_batches(
    inbox_repository: repository.InboxRepository, outbox_dsn: str
) -> None:
    old = models.utcnow() - dt.timedelta(hours=2)
    recent = models.utcnow() - dt.timedelta(minutes=10)
    expired = await _record(inbox_repository, *(_message() for _ in range(7)))
    kept = await _record(inbox_repository, *(_message() for _ in range(3)))
    [pending] = await _record(inbox_repository, _message())
    [dead] = await _record(inbox_repository, _message())
    other = models.ReceivedMessage(event_id=str(uuid.uuid4()), event_type="x", payload=b"")
    await inbox_repository.record_received_many("someone-else", [other])

    token = uuid.uuid4()
    now = models.utcnow()
    claimed = await inbox_repository.claim(CONSUMER, now, now, 100, token)
    assert len(claimed) == 12
    assert await inbox_repository.mark_processed(CONSUMER, expired, token, old) == 7
    assert await inbox_repository.mark_processed(CONSUMER, kept, token, recent) == 3
    assert await inbox_repository.mark_dead(CONSUMER, dead, token, "parked") == 1
    assert await inbox_repository.release(CONSUMER, [pending], token) == 1
    other_token = uuid.uuid4()
    await inbox_repository.claim("someone-else", now, now, 10, other_token)
    await inbox_repository.mark_processed("someone-else", [other.event_id], other_token, old)
    assert await inbox_repository.count_dead(CONSUMER) == 1
    assert await inbox_repository.count_pending(CONSUMER) == 1

    # The pending row has no handler here: it is parked, which shows the worker ran.
    worker = _worker(
        inbox_repository,
        outbox_dsn,
        {"order.other": _noop},
        retention="1h",
        purge_batch_size=3,
        purge_interval=0.05,
    )
    async with worker:
        await _until(lambda: worker.stats.purged == 7 and worker.stats.parked == 1)
    for event_id in expired:
        assert await inbox_repository.get(CONSUMER, event_id) is None
    for event_id in kept:
        assert (await _stored(inbox_repository, event_id)).status is models.InboxStatus.PROCESSED
    assert (await _stored(inbox_repository, dead)).status is models.InboxStatus.DEAD
    # Another consumer's rows are its own worker's business.
    assert await inbox_repository.get("someone-else", other.event_id) is not None
    assert await inbox_repository.count_dead(CONSUMER) == 2
    assert await inbox_repository.count_pending(CONSUMER) == 0
    # Purging again finds nothing: 7 rows took three statements of at most 3.
    assert await worker.purge_once() == 0
    assert worker.stats.purged == 7


async def test_a_transactional_handler_cancelled_during_its_commit_stays_atomic(
    outbox_pool: Any, inbox_repository: repository.InboxRepository, outbox_dsn: str
) -> None:
    """stop() cancels a handler whose COMMIT is running (a deferred trigger makes it last 1 s):
    aiopg closes the connection; no transaction object is left open (that would warn), and
    the effect and processed_at are both there or both not."""
    schema = inbox_repository.schema
    await support.create_slow_commit_table(outbox_pool, schema, "slow", "event_id")
    [event_id] = await _record(inbox_repository, _message())
    handled = asyncio.Event()

    @transactional
    async def handle(event: models.InboxEvent, session: Any) -> None:
        await session.execute(
            _in_schema("INSERT INTO {}.slow (event_id) VALUES (%s)", schema), (event.event_id,)
        )
        handled.set()

    worker = _worker(inbox_repository, outbox_dsn, {"order.placed": handle}, workers=1)
    await worker.start()
    await asyncio.wait_for(handled.wait(), 10)
    await asyncio.sleep(0.3)  # inside the COMMIT's second
    await worker.stop(timeout=0)
    del worker, handle  # what references the cancelled frames
    gc.collect()  # an open aiopg Transaction left behind would warn now, inside this test
    async with outbox_pool.acquire() as conn, conn.cursor() as cursor:
        # Blocks until the cancelled COMMIT has ended on the server, one way or the other.
        await cursor.execute(
            _in_schema("SELECT status FROM {}.inbox_events WHERE event_id = %s FOR UPDATE", schema),
            (event_id,),
        )
        [(status,)] = await cursor.fetchall()
        await cursor.execute(_in_schema("SELECT count(*) FROM {}.slow", schema))
        [(effects,)] = await cursor.fetchall()
    assert (status, effects) in {("processed", 1), ("pending", 0)}


async def test_timeouts_of_first_and_later_handlers_of_a_batch(
    inbox_repository: repository.InboxRepository, outbox_dsn: str
) -> None:
    """A batch's first handlers share one timer; later ones of an ordering key have their own.
    Either way a slow handler times out alone, and the rest of the batch is processed."""
    [fast_head, slow_tail, slow_alone, fast_alone] = await _record(
        inbox_repository,
        _message(ordering_key="k", aggregate_id="fast"),
        _message(ordering_key="k", aggregate_id="slow"),
        _message(aggregate_id="slow"),
        _message(aggregate_id="fast"),
    )

    async def handle(event: models.InboxEvent) -> None:
        if event.aggregate_id == "slow":
            await asyncio.sleep(30)

    worker = _worker(
        inbox_repository,
        outbox_dsn,
        {"order.placed": handle},
        workers=1,
        handler_timeout="200ms",
        max_attempts=1,
    )
    async with worker:
        await _until(lambda: worker.stats.processed == 2 and worker.stats.dead == 2)
    for event_id in (fast_head, fast_alone):
        assert (await _stored(inbox_repository, event_id)).status is models.InboxStatus.PROCESSED
    for event_id in (slow_tail, slow_alone):
        stored = await _stored(inbox_repository, event_id)
        assert stored.status is models.InboxStatus.DEAD
        assert stored.last_error == "handler timed out after 0.2s (dead after 1 attempts)"


class _ClaimFailsOnce(repository.InboxRepository):
    """A repository whose first claim fails with an error that is not a database outage."""

    failed = False

    async def claim(self, *args: Any, **kwargs: Any) -> list[models.InboxEvent]:
        if not self.failed:
            self.failed = True
            raise RuntimeError("unexpected")
        return await super().claim(*args, **kwargs)


async def test_a_worker_loop_outlives_an_unexpected_error(
    outbox_pool: Any, inbox_repository: repository.InboxRepository, outbox_dsn: str
) -> None:
    flaky = _ClaimFailsOnce(outbox_pool, inbox_repository.schema)
    [event_id] = await _record(flaky, _message())
    worker = _worker(flaky, outbox_dsn, {"order.placed": _noop}, workers=1)
    async with worker:
        await _until(lambda: worker.stats.processed == 1)
    assert flaky.failed and worker.stats.outages == 1
    assert (await _stored(flaky, event_id)).status is models.InboxStatus.PROCESSED


def _field(record: logging.LogRecord, name: str) -> Any:
    """A structured field of a log record (what ``extra=`` set)."""
    return record.__dict__[name]


def _records_of(caplog: pytest.LogCaptureFixture, event_id: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.__dict__.get("event_id") == event_id]


async def test_handled_retried_dead_and_parked_events_are_logged_with_their_fields(
    inbox_repository: repository.InboxRepository,
    outbox_dsn: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="outbox_di")
    [flaky, doomed, unknown] = await _record(
        inbox_repository,
        _message(aggregate_id="flaky"),
        _message(aggregate_id="doomed"),
        _message("order.unknown", aggregate_id="lost"),
    )
    calls: dict[str, int] = {}

    async def handle(event: models.InboxEvent) -> None:
        calls[event.aggregate_id] = calls.get(event.aggregate_id, 0) + 1
        await asyncio.sleep(0.005)
        if event.aggregate_id == "doomed" or calls[event.aggregate_id] < 2:
            raise RuntimeError(f"boom {calls[event.aggregate_id]}")

    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    worker = _worker(
        inbox_repository,
        outbox_dsn,
        {"order.placed": handle},
        max_attempts=2,
        meter=provider.get_meter("test"),
    )
    async with worker:
        await _until(lambda: worker.stats.processed == 1 and worker.stats.dead == 2)

    def common(record: logging.LogRecord, aggregate_id: str, attempt: int) -> None:
        assert _field(record, "consumer") == CONSUMER
        assert _field(record, "aggregate_id") == aggregate_id
        assert _field(record, "attempt") == attempt

    failure, success = _records_of(caplog, flaky)
    assert (failure.levelno, success.levelno) == (logging.WARNING, logging.DEBUG)
    for record, attempt in ((failure, 1), (success, 2)):
        common(record, "flaky", attempt)
        assert _field(record, "event_type") == "order.placed"
        latency_ms, lag_ms = _field(record, "latency_ms"), _field(record, "lag_ms")
        assert isinstance(latency_ms, float) and 5.0 <= latency_ms < 5_000.0
        assert isinstance(lag_ms, float) and latency_ms <= lag_ms < 60_000.0
    assert _field(failure, "error") == "RuntimeError: boom 1"
    assert _field(success, "lag_ms") > _field(failure, "lag_ms")
    assert "handled in" in success.getMessage()

    retried, dead = _records_of(caplog, doomed)
    assert (retried.levelno, dead.levelno) == (logging.WARNING, logging.ERROR)
    common(retried, "doomed", 1)
    common(dead, "doomed", 2)
    assert _field(dead, "error") == "RuntimeError: boom 2"
    assert f"inbox event {doomed} dead after 2 attempts" in dead.getMessage()

    [parked] = _records_of(caplog, unknown)
    assert parked.levelno == logging.ERROR
    common(parked, "lost", 1)
    assert _field(parked, "event_type") == "order.unknown"
    assert _field(parked, "error") == "no handler registered for event type 'order.unknown'"

    dead_points = metric_points(reader)[observability.INBOX_DEAD]
    by_type = {dict(p.attributes)["event_type"]: p.value for p in dead_points}
    assert by_type == {"order.placed": 1, "order.unknown": 1}
    assert worker.stats.lease_lost == 0
    provider.shutdown()


@pytest.mark.parametrize(
    ("max_attempts", "what"), [(3, "rescheduled"), (1, "parked as dead")], ids=["retry", "dead"]
)
async def test_a_lost_lease_on_record_error_or_dead_is_logged_and_counted(
    outbox_pool: Any,
    inbox_repository: repository.InboxRepository,
    outbox_dsn: str,
    caplog: pytest.LogCaptureFixture,
    max_attempts: int,
    what: str,
) -> None:
    caplog.set_level(logging.INFO, logger="outbox_di")
    schema = inbox_repository.schema
    [event_id] = await _record(inbox_repository, _message())
    thief = uuid.uuid4()

    async def handle(event: models.InboxEvent) -> None:
        # Another worker takes the lease meanwhile (as after lock_ttl), then the handler fails.
        async with outbox_pool.acquire() as conn, conn.cursor() as cursor:
            await cursor.execute(
                _in_schema(
                    "UPDATE {}.inbox_events SET lock_token = %s WHERE event_id = %s", schema
                ),
                (str(thief), event.event_id),
            )
        raise ValueError("refused")

    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    worker = _worker(
        inbox_repository,
        outbox_dsn,
        {"order.placed": handle},
        workers=1,
        max_attempts=max_attempts,
        meter=provider.get_meter("t"),
    )
    async with worker:
        await _until(lambda: worker.stats.lease_lost == 1)
    assert worker.stats.failed == 1 and worker.stats.dead == 0
    [warning] = _records_of(caplog, event_id)
    assert warning.levelno == logging.WARNING
    assert _field(warning, "consumer") == CONSUMER
    assert _field(warning, "attempt") == 1
    assert _field(warning, "error") == "ValueError: refused"
    token = _field(warning, "lock_token")
    assert token != str(thief) and str(token) in warning.getMessage()
    assert f"lease lost (lock token {token}" in warning.getMessage()
    assert f"not {what} by this worker" in warning.getMessage()
    assert observability.INBOX_DEAD not in metric_points(reader)
    stored = await _stored(inbox_repository, event_id)
    assert stored.status is models.InboxStatus.PENDING
    assert stored.lock_token == thief and stored.last_error is None
    provider.shutdown()
