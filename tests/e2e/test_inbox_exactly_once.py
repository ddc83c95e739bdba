"""Exactly once, end to end: service A's outbox → relay → Pub/Sub → service B's inbox → a
transactional handler writing B's own table.

Service A (its own schema) enqueues 5,000 events from concurrent writers, each in a transaction
that also writes A's own row (some transactions roll back: their events must never arrive); a
real ``PublisherTask`` + ``PubSubPublisher`` relays them. Service B (another schema, another
consumer) receives them with ``InboxReceiver`` on the real gRPC client, except that the first
acknowledgements are swallowed, so the emulator redelivers those messages after their ack
deadline; B's first ``InboxWorker`` is killed mid-batch (its tasks cancelled, no cleanup, its
leases left behind) and a second one takes over after ``lock_ttl``. B's handler writes with a
plain INSERT into a table keyed by event id, so a second effect of one event would fail loudly.
Every wait has a deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import psycopg2.errors
import pytest
from google.pubsub_v1.types import PullResponse
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from psycopg2 import sql

from outbox_di import config, database, models, observability, repository
from outbox_di.brokers.pubsub import PubSubPublisher, PubSubSubscriber
from outbox_di.inbox.handlers import transactional
from outbox_di.inbox.receiver import InboxReceiver
from outbox_di.inbox.worker import InboxWorker
from outbox_di.publishing.task import PublisherTask
from outbox_di.testing import postgres
from outbox_di.testing import pubsub as pubsub_testing
from outbox_di.testing.pubsub import EmulatorEndpoint, TopicWithSubscription

pytestmark = pytest.mark.integration

PROJECT = "outbox-di-e2e-inbox"
CONSUMER_B = "service-b"
EVENTS = 5_000
WRITERS = 8
ROLLBACK_EVERY = 7  # every 7th transaction of a writer rolls back
DROP_ACKS_OF = 1_500  # messages whose acknowledgement is swallowed (whole pulls)
KILL_AT = 1_500  # the handler run during which B's first worker is killed
ACK_DEADLINE = 10  # seconds, the least Pub/Sub allows
WAIT = 45.0  # seconds any one wait may take


def _in(statement: str, schema_name: str) -> sql.Composed:
    """The test's own SQL, with a schema quoted as an identifier."""
    return sql.SQL(statement).format(sql.Identifier(schema_name))


@pytest.fixture
def schema_b(outbox_dsn: str) -> Iterator[str]:
    """Service B's schema (``outbox_schema`` is service A's), migrated and dropped afterwards."""
    with postgres.migrated_schema(outbox_dsn, "test_b") as name:
        yield name


@pytest.fixture
async def topic(pubsub_emulator: EmulatorEndpoint) -> AsyncIterator[TopicWithSubscription]:
    async with pubsub_testing.temporary_topic(
        pubsub_emulator.host, PROJECT, prefix="e2e-inbox", ack_deadline=ACK_DEADLINE
    ) as made:
        yield made


def _config_a(schema_name: str, dsn: str, host: str, topic: str) -> config.OutboxConfig:
    return config.OutboxConfig.from_mapping(
        {
            "schema": schema_name,
            "dsn": dsn,
            "pubsub": {"project": PROJECT, "emulator_host": host},
            "publisher": {"topic": topic, "tick_interval": "50ms", "shutdown_timeout": "5s"},
        }
    )


def _config_b(schema_name: str, dsn: str, host: str, subscription: str) -> config.OutboxConfig:
    return config.OutboxConfig.from_mapping(
        {
            "schema": schema_name,
            "dsn": dsn,
            "pubsub": {"project": PROJECT, "emulator_host": host},
            "publisher": {"enabled": False},
            "inbox": {
                "enabled": True,
                "consumer": CONSUMER_B,
                "subscription": subscription,
                "lock_ttl": "2s",
                "handler_timeout": "1s",
                "retry_delay": "10ms",
                "max_attempts": 10,
            },
        }
    )


class SwallowingAcks:
    """The real ``SubscriberAsyncClient``, except that ``acknowledge`` does nothing for the
    first ``count`` messages pulled (whole pulls): Pub/Sub then redelivers them after their ack
    deadline, as it would after a lost acknowledgement."""

    def __init__(self, inner: Any, count: int) -> None:
        self.inner = inner
        self.count = count
        self.swallowed: set[str] = set()  # message ids
        self._message_ids: dict[str, str] = {}  # ack id -> message id, while swallowing

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def pull(self, *args: Any, **kwargs: Any) -> Any:
        response = await self.inner.pull(*args, **kwargs)
        if len(self.swallowed) + len(self._message_ids) < self.count:
            for item in PullResponse.pb(response).received_messages:
                self._message_ids[item.ack_id] = item.message.message_id
        return response

    async def acknowledge(self, *, request: Any, **kwargs: Any) -> None:
        forwarded: list[str] = []
        for ack_id in request.ack_ids:
            message_id = self._message_ids.pop(ack_id, None)
            if message_id is None:
                forwarded.append(ack_id)
            else:
                self.swallowed.add(message_id)
        if forwarded:
            await self.inner.acknowledge(
                request={"subscription": request.subscription, "ack_ids": forwarded}, **kwargs
            )


async def _until(predicate: Callable[[], Awaitable[bool]], what: str, within: float = WAIT) -> None:
    deadline = time.monotonic() + within
    while not await predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not reached within {within:g}s")
        await asyncio.sleep(0.05)


async def _kill(worker: InboxWorker) -> None:
    """Cancel the worker's tasks as a crash would end them: no stop(), no lease given back."""
    tasks: list[asyncio.Task[None]] = [*worker._workers, *worker._helpers]
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


async def _write_events(
    pool: Any, repo: repository.OutboxRepository, schema_a: str
) -> tuple[set[str], set[str]]:
    """Service A's writers: each transaction writes an order row and 1-20 events; every
    ROLLBACK_EVERY-th transaction of a writer rolls back. Returns (committed, rolled back) ids."""
    committed: set[str] = set()
    rolled_back: set[str] = set()
    remaining = EVENTS
    insert_order = _in("INSERT INTO {}.orders (order_id, events) VALUES (%s, %s)", schema_a)

    class Rollback(Exception):
        pass

    async def writer(number: int) -> None:
        nonlocal remaining
        rng = random.Random(number)
        transactions = 0
        while remaining > 0:
            transactions += 1
            rollback = transactions % ROLLBACK_EVERY == 0
            size = rng.randint(1, 20) if rollback else min(rng.randint(1, 20), remaining)
            if not rollback:
                remaining -= size
            order_id = f"w{number}-{transactions}"
            messages = [
                models.Message("order", order_id, "order.placed", {"order": order_id, "n": n})
                for n in range(size)
            ]
            ids = {str(message.event_id) for message in messages}
            try:
                async with pool.acquire() as conn, conn.cursor() as cursor, cursor.begin():
                    await cursor.execute(insert_order, (order_id, size))
                    await repo.enqueue_many(cursor, messages)
                    if rollback:
                        raise Rollback
            except Rollback:
                rolled_back.update(ids)
            else:
                committed.update(ids)

    await asyncio.gather(*(writer(number) for number in range(WRITERS)))
    return committed, rolled_back


async def test_each_event_takes_effect_exactly_once_through_redeliveries_and_a_killed_worker(
    outbox_schema: str,
    schema_b: str,
    outbox_dsn: str,
    pubsub_emulator: EmulatorEndpoint,
    topic: TopicWithSubscription,
) -> None:
    schema_a, host = outbox_schema, pubsub_emulator.host
    cfg_a = _config_a(schema_a, outbox_dsn, host, topic.name)
    cfg_b = _config_b(schema_b, outbox_dsn, host, topic.name)
    insert_effect = _in("INSERT INTO {}.effects (event_id, n) VALUES (%s, %s)", schema_b)
    handler_runs = 0
    second_effects: list[str] = []  # event ids whose effect was attempted a second time
    killed = asyncio.Event()

    @transactional
    async def take_effect(event: models.InboxEvent, session: Any) -> None:
        """B's transactional handler: a plain INSERT, so a second effect fails loudly."""
        nonlocal handler_runs
        try:
            await session.execute(insert_effect, (event.event_id, event.json()["n"]))
        except psycopg2.errors.UniqueViolation:
            second_effects.append(event.event_id)
            raise
        handler_runs += 1
        if handler_runs == KILL_AT and not killed.is_set():
            killed.set()
            await asyncio.Event().wait()  # the worker dies here, its transaction open

    async with (
        database.open_pool(outbox_dsn, max_size=10) as pool_a,
        database.open_pool(outbox_dsn, max_size=12) as pool_b,
    ):
        async with pool_a.acquire() as conn, conn.cursor() as cursor:
            await cursor.execute(
                _in("CREATE TABLE {}.orders (order_id text PRIMARY KEY, events int)", schema_a)
            )
        async with pool_b.acquire() as conn, conn.cursor() as cursor:
            await cursor.execute(
                _in("CREATE TABLE {}.effects (event_id text PRIMARY KEY, n int NOT NULL)", schema_b)
            )
        repo_a = repository.OutboxRepository(pool_a, schema_a)
        repo_b = repository.InboxRepository(pool_b, schema_b)
        client = SwallowingAcks(pubsub_testing.async_subscriber_client(host), DROP_ACKS_OF)
        receiver = InboxReceiver(cfg_b, repo_b, PubSubSubscriber(cfg_b, client))
        publisher = PubSubPublisher(cfg_a)
        relay = PublisherTask(cfg_a, repo_a, publisher)
        handlers = {"order.placed": take_effect}
        # B's first worker has a pool of its own, closed when it "dies".
        doomed = contextlib.AsyncExitStack()
        doomed_pool = await doomed.enter_async_context(
            database.open_pool(outbox_dsn, max_size=12, application_name="doomed")
        )
        first = InboxWorker(
            cfg_b, repository.InboxRepository(doomed_pool, schema_b), handlers, poll_interval=0.2
        )
        second = InboxWorker(cfg_b, repo_b, handlers, poll_interval=0.2)

        async def crash_and_replace() -> None:
            await asyncio.wait_for(killed.wait(), WAIT)
            await _kill(first)
            await doomed.aclose()
            await second.start()

        async def all_effects() -> bool:
            return await _count(pool_b, "SELECT count(*) FROM {}.effects", schema_b) == EVENTS

        async def redeliveries_seen() -> bool:
            return receiver.stats.duplicates >= len(client.swallowed)

        try:
            await receiver.start()
            await first.start()
            await relay.start()
            (committed, rolled_back), _ = await asyncio.gather(
                _write_events(pool_a, repo_a, schema_a), crash_and_replace()
            )
            await _until(all_effects, "every event's effect")
            await _until(redeliveries_seen, "every swallowed acknowledgement redelivered")
        finally:
            await second.stop()
            await receiver.stop()
            await relay.stop()
            await publisher.close()
            await client.inner.transport.close()
            await doomed.aclose()

        effects = await _rows(pool_b, "SELECT event_id FROM {}.effects", schema_b)
        inbox_ids = await _rows(pool_b, "SELECT event_id FROM {}.inbox_events", schema_b)
        retaken = await _count(
            pool_b,
            "SELECT count(*) FROM {}.inbox_events WHERE delivery_attempts > 1",
            schema_b,
        )
        pending_b = await repo_b.count_pending(CONSUMER_B)
        dead_b = await repo_b.count_dead(CONSUMER_B)
        pending_a = await repo_a.count_pending()

    print(
        f"\n[{pubsub_emulator.kind}] {len(committed)} events committed by A "
        f"({len(rolled_back)} rolled back); acknowledgements swallowed for "
        f"{len(client.swallowed)} messages; B's receiver counted {receiver.stats.duplicates} "
        f"duplicates of {receiver.stats.received} deliveries; {retaken} rows taken over from the "
        f"killed worker (lease expired); handler runs {handler_runs}; handler failures "
        f"(timeouts on a loaded machine, retried) {first.stats.failed + second.stats.failed}"
    )
    assert len(committed) == EVENTS and rolled_back
    assert sorted(effects) == sorted(committed), "each committed event's effect exactly once"
    assert not rolled_back & set(inbox_ids), "a rolled-back enqueue must never be delivered"
    assert len(inbox_ids) == EVENTS
    assert pending_a == 0 and pending_b == 0 and dead_b == 0
    # A second effect of an event fails its INSERT: none was ever attempted. (A handler that
    # timed out on a busy machine was rolled back and retried; that is not a second effect.)
    assert second_effects == [], "an event's effect was attempted twice"
    assert first.stats.processed > 0 and second.stats.processed > 0
    assert retaken > 0, "the killed worker left leased rows behind"
    assert len(client.swallowed) >= DROP_ACKS_OF
    assert receiver.stats.duplicates >= len(client.swallowed)


async def test_the_handler_span_continues_the_trace_active_at_enqueue(
    outbox_schema: str,
    schema_b: str,
    outbox_dsn: str,
    pubsub_emulator: EmulatorEndpoint,
    topic: TopicWithSubscription,
) -> None:
    schema_a, host = outbox_schema, pubsub_emulator.host
    cfg_a = _config_a(schema_a, outbox_dsn, host, topic.name)
    cfg_b = _config_b(schema_b, outbox_dsn, host, topic.name)
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("service-a")
    enqueued: dict[str, trace.SpanContext] = {}
    handled: list[str] = []

    async def handle(event: models.InboxEvent) -> None:
        handled.append(event.event_id)

    async with (
        database.open_pool(outbox_dsn, max_size=4) as pool_a,
        database.open_pool(outbox_dsn, max_size=4) as pool_b,
    ):
        repo_a = repository.OutboxRepository(pool_a, schema_a)
        repo_b = repository.InboxRepository(pool_b, schema_b)
        for n in range(3):
            with tracer.start_as_current_span(f"create order {n}") as span:
                message = models.Message("order", f"o{n}", "order.placed", {"n": n})
                async with pool_a.acquire() as conn, conn.cursor() as cursor, cursor.begin():
                    await repo_a.enqueue(cursor, message)
                enqueued[str(message.event_id)] = span.get_span_context()
        publisher = PubSubPublisher(cfg_a)
        worker = InboxWorker(
            cfg_b, repo_b, {"order.placed": handle}, tracer=tracer, poll_interval=0.2
        )
        try:
            async with (
                PublisherTask(cfg_a, repo_a, publisher),
                InboxReceiver(cfg_b, repo_b),
                worker,
            ):

                async def all_handled() -> bool:
                    return len(handled) >= 3

                await _until(all_handled, "the three events handled", within=20.0)
        finally:
            await publisher.close()
    spans = [s for s in exporter.get_finished_spans() if s.name == observability.SPAN_HANDLE]
    provider.shutdown()
    assert sorted(handled) == sorted(enqueued)
    assert len(spans) == 3
    for handled_span in spans:
        assert handled_span.kind is trace.SpanKind.CONSUMER
        assert handled_span.attributes is not None
        origin = enqueued[str(handled_span.attributes["outbox.event_id"])]
        parent = handled_span.parent
        assert parent is not None
        assert (parent.trace_id, parent.span_id) == (origin.trace_id, origin.span_id)


async def _count(pool: Any, statement: str, schema_name: str) -> int:
    async with pool.acquire() as conn, conn.cursor() as cursor:
        await cursor.execute(_in(statement, schema_name))
        row = await cursor.fetchone()
    return int(row[0])


async def _rows(pool: Any, statement: str, schema_name: str) -> list[str]:
    async with pool.acquire() as conn, conn.cursor() as cursor:
        await cursor.execute(_in(statement, schema_name))
        return [row[0] for row in await cursor.fetchall()]
