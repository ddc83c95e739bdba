"""Bad messages arriving at the inbox, through the real receiver (the GAPIC client over gRPC)
and the real worker: each is stored, then handled, parked or dead-lettered with its reason;
nothing is acknowledged before its row is committed, and the loops never stop for one."""

from __future__ import annotations

import asyncio
import hashlib
import time
import uuid
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from typing import Any

import pytest
from google.pubsub_v1.types import PubsubMessage

from outbox_di import config, models, repository
from outbox_di.brokers.pubsub import PubSubSubscriber, connection
from outbox_di.inbox.receiver import InboxReceiver
from outbox_di.inbox.worker import InboxWorker
from outbox_di.testing import pubsub as pubsub_testing
from outbox_di.testing.pubsub import EmulatorEndpoint

pytestmark = pytest.mark.integration

PROJECT = "outbox-di-bad-input"
CONSUMER = "billing"
HOSTILE_TYPE = "order.paid'); DROP TABLE inbox_events; --"
HOSTILE_HEADER = {"$$'": "{{schema}}"}


def _config(schema: str, dsn: str, host: str, subscription: str) -> config.OutboxConfig:
    return config.OutboxConfig.from_mapping(
        {
            "schema": schema,
            "dsn": dsn,
            "pubsub": {"project": PROJECT, "emulator_host": host},
            "publisher": {"enabled": False},
            "inbox": {
                "enabled": True,
                "consumer": CONSUMER,
                "subscription": subscription,
                "retry_delay": "10ms",
                "max_attempts": 2,
            },
        }
    )


class _Subscription:
    def __init__(self, host: str) -> None:
        self.host = host
        name = f"bad-{uuid.uuid4().hex[:12]}"
        self.topic = f"projects/{PROJECT}/topics/{name}"
        self.path = f"projects/{PROJECT}/subscriptions/{name}"

    async def publish(self, messages: Sequence[tuple[bytes, Mapping[str, str]]]) -> list[str]:
        async with pubsub_testing.async_publisher_client(self.host) as publisher:
            response = await publisher.publish(
                topic=self.topic,
                messages=[PubsubMessage(data=d, attributes=dict(a)) for d, a in messages],
                timeout=10.0,
            )
        return list(response.message_ids)


async def _subscription(host: str) -> AsyncIterator[_Subscription]:
    made = _Subscription(host)
    async with pubsub_testing.async_publisher_client(host) as publisher:
        await publisher.create_topic(name=made.topic)
    async with pubsub_testing.async_subscriber_client(host) as subscriber:
        await subscriber.create_subscription(
            request={"name": made.path, "topic": made.topic, "ack_deadline_seconds": 10}
        )
    try:
        yield made
    finally:
        async with pubsub_testing.async_subscriber_client(host) as subscriber:
            await subscriber.delete_subscription(subscription=made.path)
        async with pubsub_testing.async_publisher_client(host) as publisher:
            await publisher.delete_topic(topic=made.topic)


@pytest.fixture
async def subscription(pubsub_emulator: EmulatorEndpoint) -> AsyncIterator[_Subscription]:
    async for made in _subscription(pubsub_emulator.host):
        yield made


@pytest.fixture
async def inprocess_subscription(
    pubsub_inprocess_emulator: EmulatorEndpoint,
) -> AsyncIterator[_Subscription]:
    async for made in _subscription(pubsub_inprocess_emulator.host):
        yield made


class _StoredBeforeAcked:
    """The real client, with every acknowledgement checked against the table first: each acked
    message (by Pub/Sub message id) must already have its committed row."""

    def __init__(self, client: Any, pool: Any, schema: str) -> None:
        self._client = client
        self._pool = pool
        self._schema = schema
        self._ids: dict[str, str] = {}
        self.acked: list[str] = []
        self.violations: list[str] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)

    async def pull(self, request: Any, **kwargs: Any) -> Any:
        response = await self._client.pull(request=request, **kwargs)
        for item in response.received_messages:
            self._ids[item.ack_id] = item.message.message_id
        return response

    async def acknowledge(self, request: Any, **kwargs: Any) -> Any:
        message_ids = [self._ids[ack_id] for ack_id in request.ack_ids]
        async with self._pool.acquire() as conn, conn.cursor() as cursor:
            await cursor.execute(
                f'SELECT message_id FROM "{self._schema}".inbox_events '  # noqa: S608
                "WHERE consumer = %s AND message_id = ANY(%s)",
                (CONSUMER, message_ids),
            )
            stored = {row[0] for row in await cursor.fetchall()}
        self.violations.extend(m for m in message_ids if m not in stored)
        result = await self._client.acknowledge(request=request, **kwargs)
        self.acked.extend(message_ids)
        return result


async def _until(predicate: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.01)


def _attrs(event_id: str, event_type: str = "order.paid", **extra: str) -> dict[str, str]:
    return {"event_id": event_id, "event_type": event_type, **extra}


async def test_bad_messages_are_stored_then_handled_parked_or_dead_and_acked_only_after(
    subscription: _Subscription,
    inbox_repository: repository.InboxRepository,
    outbox_pool: Any,
    outbox_dsn: str,
    pubsub_emulator: EmulatorEndpoint,
) -> None:
    ids = {name: str(uuid.uuid4()) for name in ("not_json", "empty", "nul", "hostile", "long")}
    ids["last"] = str(uuid.uuid4())
    long_value = "v" * 1024  # Pub/Sub's largest attribute value: longer than any varchar
    message_ids = await subscription.publish(
        [
            (b'{"total": 1}', {"event_type": "order.paid"}),  # no event_id
            (b'{"total": 2}', {"event_id": str(uuid.uuid4())}),  # no event_type
            (b"\xff\xfe not json \x00", _attrs(ids["not_json"])),
            (b"", _attrs(ids["empty"], "ping")),  # 0 bytes
            (b"{}", _attrs(ids["nul"], tenant="a\x00b")),
            (b"'; $$ {{schema}} \x00", _attrs(ids["hostile"], HOSTILE_TYPE, **HOSTILE_HEADER)),
            (b"{}", _attrs(ids["long"], "ping", note=long_value, **{"k" * 256: "x"})),
            (b'{"total": 3}', _attrs(ids["last"])),
        ]
    )  # fmt: skip
    cfg = _config(inbox_repository.schema, outbox_dsn, pubsub_emulator.host, subscription.path)
    client = _StoredBeforeAcked(
        connection.make_subscriber_client(cfg), outbox_pool, inbox_repository.schema
    )
    totals: list[int] = []

    async def paid(event: models.InboxEvent) -> None:
        totals.append(event.json()["total"])  # raises for a payload that is not JSON

    async def ping(event: models.InboxEvent) -> None:
        assert event.payload in (b"", b"{}")

    try:
        async with InboxReceiver(cfg, inbox_repository, PubSubSubscriber(cfg, client)) as receiver:
            await _until(lambda: len(client.acked) == 8)
    finally:
        await client.transport.close()
    assert client.violations == [], "acknowledged before the row was committed"
    assert sorted(client.acked) == sorted(message_ids)
    assert receiver.stats.outages == 0 and receiver.stats.refused == 1

    worker = InboxWorker(
        cfg, inbox_repository, {"order.paid": paid, "ping": ping}, poll_interval=0.05
    )
    async with worker:
        await _until(lambda: worker.stats.processed == 4 and worker.stats.dead == 3)
    assert worker.stats.outages == 0 and worker.stats.parked == 2  # 'unknown', HOSTILE_TYPE
    assert sorted(totals) == [1, 3]  # the loop went on past every bad one

    async def stored(event_id: str) -> models.InboxEvent:
        found = await inbox_repository.get(CONSUMER, event_id)
        assert found is not None, event_id
        return found

    no_id = await stored(message_ids[0])  # stored under Pub/Sub's message id
    assert no_id.status is models.InboxStatus.PROCESSED
    no_type = await inbox_repository.get(
        CONSUMER, next(iter(await _ids_of(outbox_pool, inbox_repository, "unknown")))
    )
    assert no_type is not None and no_type.status is models.InboxStatus.DEAD
    assert no_type.last_error == "no handler registered for event type 'unknown'"
    not_json = await stored(ids["not_json"])
    assert not_json.status is models.InboxStatus.DEAD
    assert not_json.payload == b"\xff\xfe not json \x00"
    assert not_json.last_error is not None and not_json.last_error.endswith(
        "(dead after 2 attempts)"
    )
    assert (await stored(ids["empty"])).status is models.InboxStatus.PROCESSED
    nul = await stored(ids["nul"])
    assert nul.status is models.InboxStatus.DEAD and nul.headers == {"tenant": "a\ufffdb"}
    hostile = await stored(ids["hostile"])
    assert hostile.event_type == HOSTILE_TYPE and hostile.headers == {"$$'": "{{schema}}"}
    assert hostile.payload == b"'; $$ {{schema}} \x00"
    assert hostile.last_error == f"no handler registered for event type {HOSTILE_TYPE!r}"
    long = await stored(ids["long"])
    assert long.status is models.InboxStatus.PROCESSED
    assert long.headers == {"note": long_value, "k" * 256: "x"}
    assert (await stored(ids["last"])).status is models.InboxStatus.PROCESSED


async def _ids_of(pool: Any, inbox: repository.InboxRepository, event_type: str) -> set[str]:
    async with pool.acquire() as conn, conn.cursor() as cursor:
        await cursor.execute(
            f'SELECT event_id FROM "{inbox.schema}".inbox_events WHERE event_type = %s',  # noqa: S608
            (event_type,),
        )
        return {row[0] for row in await cursor.fetchall()}


async def test_an_event_id_too_long_for_the_inbox_key_is_kept_dead_under_its_hash(
    inprocess_subscription: _Subscription,
    inbox_repository: repository.InboxRepository,
    outbox_dsn: str,
    pubsub_inprocess_emulator: EmulatorEndpoint,
) -> None:
    # Pub/Sub refuses attribute values over 1024 bytes; a broker or emulator that lets one
    # through used to fail the whole batch's insert (the primary key cannot index 4 kB) on
    # every redelivery, holding the subscription up. The in-process emulator lets it through.
    long_id = uuid.uuid4().hex * 125  # 4,000 characters
    good = str(uuid.uuid4())
    batch = [(b"{}", _attrs(long_id)), (b"{}", _attrs(good))]
    await inprocess_subscription.publish(batch)
    cfg = _config(
        inbox_repository.schema,
        outbox_dsn,
        pubsub_inprocess_emulator.host,
        inprocess_subscription.path,
    )
    async with InboxReceiver(cfg, inbox_repository) as receiver:
        await _until(lambda: receiver.stats.acked == 2)
        await inprocess_subscription.publish(batch[:1])  # redelivered: a duplicate
        await _until(lambda: receiver.stats.acked == 3)
    assert receiver.stats.outages == 0 and receiver.stats.refused == 1
    assert receiver.stats.duplicates == 1
    hashed = "sha256:" + hashlib.sha256(long_id.encode()).hexdigest()
    dead = await inbox_repository.get(CONSUMER, hashed)
    assert dead is not None and dead.status is models.InboxStatus.DEAD
    assert dead.last_error == (
        "message refused by the receiver: event_id is 4000 bytes, over the 1024 bytes the "
        "inbox's primary key takes (Pub/Sub's own limit for an attribute) (stored under "
        f"event_id {hashed!r})"
    )
    stored = await inbox_repository.get(CONSUMER, good)
    assert stored is not None and stored.status is models.InboxStatus.PENDING
