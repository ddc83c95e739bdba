"""InboxReceiver against a real PostgreSQL and both Pub/Sub emulators.

Messages are published with the async publisher client, the way ``PubSubPublisher`` sends them
(event_id, event_type, aggregate_type, aggregate_id and headers as attributes). Every wait is
bounded.
"""

from __future__ import annotations

import asyncio
import socket
import time
import uuid
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from typing import Any

import pytest
from google.pubsub_v1.types import PubsubMessage
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from outbox_di import config, database, errors, models, observability, repository
from outbox_di.inbox.receiver import InboxReceiver
from outbox_di.inbox.worker import InboxWorker
from outbox_di.testing import pubsub as pubsub_testing
from outbox_di.testing.publisher_suite import metric_points, pull_until
from outbox_di.testing.pubsub import EmulatorEndpoint

pytestmark = pytest.mark.integration

PROJECT = "outbox-di-inbox"
CONSUMER = "billing"


def _config(
    schema: str, dsn: str, host: str, subscription: str, **inbox: Any
) -> config.OutboxConfig:
    settings: dict[str, Any] = {
        "enabled": True,
        "consumer": CONSUMER,
        "subscription": subscription,
        "retry_delay": "10ms",
    }
    settings.update(inbox)
    return config.OutboxConfig.from_mapping(
        {
            "schema": schema,
            "dsn": dsn,
            "pubsub": {"project": PROJECT, "emulator_host": host},
            "publisher": {"enabled": False},
            "inbox": settings,
        }
    )


class _Subscription:
    """A fresh topic with one subscription (bare name ``name``); deleted at the end."""

    def __init__(self, host: str) -> None:
        self.host = host
        self.name = f"inbox-{uuid.uuid4().hex[:12]}"
        self.topic = f"projects/{PROJECT}/topics/{self.name}"
        self.path = f"projects/{PROJECT}/subscriptions/{self.name}"

    async def create(self) -> None:
        async with pubsub_testing.async_publisher_client(self.host) as publisher:
            await publisher.create_topic(name=self.topic)
        async with pubsub_testing.async_subscriber_client(self.host) as subscriber:
            await subscriber.create_subscription(
                request={"name": self.path, "topic": self.topic, "ack_deadline_seconds": 10}
            )

    async def delete(self) -> None:
        async with pubsub_testing.async_subscriber_client(self.host) as subscriber:
            await subscriber.delete_subscription(subscription=self.path)
        async with pubsub_testing.async_publisher_client(self.host) as publisher:
            await publisher.delete_topic(topic=self.topic)

    async def publish(self, messages: Sequence[tuple[bytes, Mapping[str, str]]]) -> list[str]:
        async with pubsub_testing.async_publisher_client(self.host) as publisher:
            response = await publisher.publish(
                topic=self.topic,
                messages=[
                    PubsubMessage(data=data, attributes=dict(attrs)) for data, attrs in messages
                ],
                timeout=10.0,
            )
        return list(response.message_ids)


@pytest.fixture
async def subscription(pubsub_emulator: EmulatorEndpoint) -> AsyncIterator[_Subscription]:
    made = _Subscription(pubsub_emulator.host)
    await made.create()
    try:
        yield made
    finally:
        await made.delete()


def _attributes(event_id: str, **extra: str) -> dict[str, str]:
    return {
        "event_id": event_id,
        "event_type": "invoice.issued",
        "aggregate_type": "invoice",
        "aggregate_id": "inv-7",
        **extra,
    }


async def _until(predicate: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.01)


async def _nothing_left(host: str, path: str) -> bool:
    async with pubsub_testing.async_subscriber_client(host) as subscriber:
        left = await pull_until(subscriber, path, lambda got: bool(got), within=1.5)
    return not left


async def test_received_messages_become_inbox_rows_and_are_acked(
    subscription: _Subscription,
    inbox_repository: repository.InboxRepository,
    outbox_dsn: str,
    pubsub_emulator: EmulatorEndpoint,
) -> None:
    event_id = str(uuid.uuid4())
    traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    [_, bare_id] = await subscription.publish(
        [
            (b'{"total": 12}', _attributes(event_id, traceparent=traceparent, tenant="t1")),
            (b"raw", {}),
        ]
    )
    # A bare subscription name is resolved with pubsub.project.
    cfg = _config(inbox_repository.schema, outbox_dsn, pubsub_emulator.host, subscription.name)
    async with InboxReceiver(cfg, inbox_repository) as receiver:
        await _until(lambda: receiver.stats.acked == 2)
    assert receiver.stats.recorded == 2 and receiver.stats.duplicates == 0

    stored = await inbox_repository.get(CONSUMER, event_id)
    assert stored is not None
    assert stored.event_type == "invoice.issued"
    assert stored.aggregate_type == "invoice" and stored.aggregate_id == "inv-7"
    assert stored.payload == b'{"total": 12}'
    assert stored.headers == {"traceparent": traceparent, "tenant": "t1"}
    assert stored.message_id is not None and stored.message_id != event_id
    assert stored.status is models.InboxStatus.PENDING

    # No event_id attribute: Pub/Sub's message id; no event_type: "unknown".
    bare = await inbox_repository.get(CONSUMER, bare_id)
    assert bare is not None
    assert bare.event_type == "unknown" and bare.message_id == bare_id
    assert bare.payload == b"raw" and bare.headers == {}
    assert await _nothing_left(pubsub_emulator.host, subscription.path)


async def test_duplicate_delivery_is_recorded_once_and_handled_once(
    subscription: _Subscription,
    inbox_repository: repository.InboxRepository,
    outbox_dsn: str,
    pubsub_emulator: EmulatorEndpoint,
) -> None:
    event_id = str(uuid.uuid4())
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    cfg = _config(inbox_repository.schema, outbox_dsn, pubsub_emulator.host, subscription.path)
    await subscription.publish([(b"1", _attributes(event_id))])
    async with InboxReceiver(cfg, inbox_repository, meter=provider.get_meter("t")) as receiver:
        await _until(lambda: receiver.stats.acked == 1)
        await subscription.publish([(b"1", _attributes(event_id))])  # the same event again
        await _until(lambda: receiver.stats.acked == 2)
    assert receiver.stats.recorded == 1 and receiver.stats.duplicates == 1
    points = metric_points(reader)[observability.INBOX_DUPLICATE]
    assert [p.value for p in points] == [1]
    assert dict(points[0].attributes) == {
        "schema": inbox_repository.schema,
        "consumer": CONSUMER,
        "event_type": "invoice.issued",
    }
    provider.shutdown()

    calls: list[str] = []

    async def handle(event: models.InboxEvent) -> None:
        calls.append(event.event_id)

    worker = InboxWorker(cfg, inbox_repository, {"invoice.issued": handle}, poll_interval=0.05)
    async with worker:
        await _until(lambda: worker.stats.processed == 1)
        await asyncio.sleep(0.2)
    assert calls == [event_id]
    assert await _nothing_left(pubsub_emulator.host, subscription.path)


async def test_nothing_is_acked_while_the_database_is_unavailable(
    subscription: _Subscription,
    inbox_repository: repository.InboxRepository,
    outbox_dsn: str,
    pubsub_emulator: EmulatorEndpoint,
) -> None:
    ids = [str(uuid.uuid4()) for _ in range(5)]
    await subscription.publish([(b"x", _attributes(event_id)) for event_id in ids])
    cfg = _config(inbox_repository.schema, outbox_dsn, pubsub_emulator.host, subscription.path)

    async with database.open_pool(outbox_dsn, min_size=0, max_size=1) as closed_pool:
        pass  # closed on exit: every acquire fails
    broken = repository.InboxRepository(closed_pool, inbox_repository.schema)
    failing = InboxReceiver(cfg, broken, pullers=1)
    async with failing:
        await _until(lambda: failing.stats.outages >= 1 and failing.stats.received >= 5)
    assert failing.stats.acked == 0 and failing.stats.recorded == 0

    # A second receiver on a working database gets every message: none was acked.
    async with InboxReceiver(cfg, inbox_repository) as receiver:
        await _until(lambda: receiver.stats.recorded == 5)
        await _until(lambda: receiver.stats.acked >= 5)
    assert await inbox_repository.count_pending(CONSUMER) == 5
    assert await _nothing_left(pubsub_emulator.host, subscription.path)


async def test_a_missing_subscription_is_a_configuration_error(
    inbox_repository: repository.InboxRepository,
    outbox_dsn: str,
    pubsub_emulator: EmulatorEndpoint,
) -> None:
    cfg = _config(inbox_repository.schema, outbox_dsn, pubsub_emulator.host, "no-such-sub")
    receiver = InboxReceiver(cfg, inbox_repository)
    with pytest.raises(errors.ConfigError, match=r"inbox\.subscription"):
        await receiver.start()
    await receiver.stop()


async def test_no_pubsub_answering_fails_the_start_within_connect_timeout(
    inbox_repository: repository.InboxRepository, outbox_dsn: str
) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        host = f"127.0.0.1:{sock.getsockname()[1]}"
    cfg = config.OutboxConfig.from_mapping(
        {
            **_config(inbox_repository.schema, outbox_dsn, host, "orders").to_dict(),
            "pubsub": {"project": PROJECT, "emulator_host": host, "connect_timeout": "1s"},
        }
    )
    receiver = InboxReceiver(cfg, inbox_repository)
    started = time.monotonic()
    with pytest.raises(errors.PubSubUnavailableError) as info:
        await receiver.start()
    elapsed = time.monotonic() - started
    message = str(info.value)
    assert (
        f"Pub/Sub did not answer at {host} (the emulator of pubsub.emulator_host) within "
        f"pubsub.connect_timeout (1s) while checking that subscription "
        f"'projects/{PROJECT}/subscriptions/orders' exists"
    ) in message
    assert f"start the Pub/Sub emulator at {host}" in message
    assert elapsed < 1 + 5, elapsed
    assert not receiver.running
    await receiver.stop()


async def test_a_message_postgresql_cannot_store_is_kept_dead_and_does_not_block_its_batch(
    subscription: _Subscription,
    inbox_repository: repository.InboxRepository,
    outbox_dsn: str,
    pubsub_emulator: EmulatorEndpoint,
) -> None:
    good = [str(uuid.uuid4()) for _ in range(3)]
    poison = str(uuid.uuid4())
    await subscription.publish(
        [(b"ok", _attributes(good[0])), (b"\x00bad", _attributes(poison, tenant="a\x00b"))]
        + [(b"ok", _attributes(event_id)) for event_id in good[1:]]
    )
    cfg = _config(inbox_repository.schema, outbox_dsn, pubsub_emulator.host, subscription.path)
    async with InboxReceiver(cfg, inbox_repository) as receiver:
        await _until(lambda: receiver.stats.acked == 4)
    assert receiver.stats.refused == 1 and receiver.stats.outages == 0
    for event_id in good:
        stored = await inbox_repository.get(CONSUMER, event_id)
        assert stored is not None and stored.status is models.InboxStatus.PENDING
    dead = await inbox_repository.get(CONSUMER, poison)
    assert dead is not None and dead.status is models.InboxStatus.DEAD
    assert dead.headers == {"tenant": "a\ufffdb"}
    assert dead.payload == b"\x00bad"
    assert dead.last_error == (
        "message refused by the receiver: attribute 'tenant' contains a NUL character, which "
        "PostgreSQL jsonb cannot store (stored with U+FFFD in its place)"
    )
    assert await inbox_repository.count_dead(CONSUMER) == 1
    assert await inbox_repository.count_pending(CONSUMER) == 3
    assert await _nothing_left(pubsub_emulator.host, subscription.path)
