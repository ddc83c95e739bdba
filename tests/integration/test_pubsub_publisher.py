"""PubSubPublisher + PublisherTask end to end, through the real google-cloud-pubsub client.

Tests taking ``pubsub_emulator`` run against Google's emulator and the in-process one; fault
injection (failed and slow publishes) exists only in the in-process one. Messages are read with
the async subscriber's unary pull and acknowledged; every wait is bounded.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from typing import Any

import pytest
from google.pubsub_v1.types import ReceivedMessage

from outbox_di import config, errors, models, repository
from outbox_di.brokers.pubsub import PubSubPublisher
from outbox_di.publishing.task import PublisherTask
from outbox_di.testing import pubsub as pubsub_testing
from outbox_di.testing.publisher_suite import pull_until, wait_until
from outbox_di.testing.pubsub import EmulatorEndpoint

pytestmark = pytest.mark.integration

PROJECT = "outbox-di-publisher"


def _name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def _config(
    schema: str, dsn: str, host: str, topic: str | None, **publisher: Any
) -> config.OutboxConfig:
    settings: dict[str, Any] = {
        "tick_interval": "50ms",
        "lock_ttl": "30s",
        "publish_timeout": "5s",
        "shutdown_timeout": "2s",
        "workers": 1,
        "backoff": {"initial": "10ms", "max": "50ms", "jitter": 0.1},
    }
    if topic is not None:
        settings["topic"] = topic
    settings.update(publisher)
    return config.OutboxConfig.from_mapping(
        {
            "schema": schema,
            "dsn": dsn,
            "pubsub": {"project": PROJECT, "emulator_host": host},
            "publisher": settings,
        }
    )


class _Topics:
    """Creates topics, each with one subscription named like it; deletes them all at the end."""

    def __init__(self, host: str) -> None:
        self.host = host
        self.made: list[tuple[str, str]] = []

    async def make(self, prefix: str = "topic", *, ordered: bool = False) -> tuple[str, str]:
        """``(topic name, subscription path)``."""
        name = _name(prefix)
        topic = f"projects/{PROJECT}/topics/{name}"
        subscription = f"projects/{PROJECT}/subscriptions/{name}"
        async with pubsub_testing.async_publisher_client(self.host) as publisher:
            await publisher.create_topic(name=topic)
        async with pubsub_testing.async_subscriber_client(self.host) as subscriber:
            await subscriber.create_subscription(
                request={"name": subscription, "topic": topic, "enable_message_ordering": ordered}
            )
        self.made.append((topic, subscription))
        return name, subscription

    async def pull(self, subscription: str, count: int, within: float = 15.0) -> list[Any]:
        """Messages (acknowledged) until ``count`` distinct message ids came or ``within``
        seconds passed; extras that came in the same pulls are included."""
        async with pubsub_testing.async_subscriber_client(self.host) as subscriber:
            received = await pull_until(
                subscriber, subscription, lambda got: _distinct(got) >= count, within
            )
        return [item.message for item in received]

    async def close(self) -> None:
        async with pubsub_testing.async_subscriber_client(self.host) as subscriber:
            for _, subscription in self.made:
                await subscriber.delete_subscription(subscription=subscription)
        async with pubsub_testing.async_publisher_client(self.host) as publisher:
            for topic, _ in self.made:
                await publisher.delete_topic(topic=topic)


def _distinct(received: Sequence[ReceivedMessage]) -> int:
    return len({item.message.message_id for item in received})


@pytest.fixture
async def topics(pubsub_emulator: EmulatorEndpoint) -> AsyncIterator[_Topics]:
    made = _Topics(pubsub_emulator.host)
    try:
        yield made
    finally:
        await made.close()


async def _enqueue(
    pool: Any, repo: repository.OutboxRepository, messages: Sequence[models.Message]
) -> list[uuid.UUID]:
    async with pool.acquire() as conn, conn.cursor() as cursor, cursor.begin():
        return await repo.enqueue_many(cursor, messages)


async def _settled(repo: repository.OutboxRepository, timeout: float = 15.0) -> None:
    async def nothing_pending() -> bool:
        return await repo.count_pending() == 0

    await wait_until(nothing_pending, timeout, "every row published or dead")


async def _stored(repo: repository.OutboxRepository, event_id: uuid.UUID) -> models.OutboxEvent:
    stored = await repo.get(event_id)
    assert stored is not None
    return stored


async def test_rows_reach_the_topic_with_exact_payload_and_attributes(
    pubsub_emulator: EmulatorEndpoint,
    topics: _Topics,
    outbox_pool: Any,
    outbox_repository: repository.OutboxRepository,
    outbox_dsn: str,
) -> None:
    topic, subscription = await topics.make("exact")
    messages = [
        models.Message("item", "bytes-1", "item.raw", b"\x00\xff\xfe raw bytes", {"h": "1"}),
        models.Message("item", "json-2", "item.created", {"name": "lamp", "n": 2}),
        models.Message("order", uuid.uuid4(), "order.paid", "caf\u00e9", {"x-a": "b", "y": ""}),
    ]
    ids = await _enqueue(outbox_pool, outbox_repository, messages)
    settings = _config(outbox_repository.schema, outbox_dsn, pubsub_emulator.host, topic)
    publisher = PubSubPublisher(settings)
    async with PublisherTask(settings, outbox_repository, publisher) as task:
        await _settled(outbox_repository)
    await publisher.close()
    assert task.stats.published == 3 and task.stats.failed == 0
    received = await topics.pull(subscription, 3)
    by_id = {m.attributes["event_id"]: m for m in received}
    assert sorted(by_id) == sorted(str(event_id) for event_id in ids)
    assert len(received) == 3
    for message, event_id in zip(messages, ids, strict=True):
        pulled = by_id[str(event_id)]
        assert pulled.data == message.payload_bytes()
        assert dict(pulled.attributes) == {
            **message.headers,
            "event_id": str(event_id),
            "event_type": message.event_type,
            "aggregate_type": message.aggregate_type,
            "aggregate_id": str(message.aggregate_id),
        }
        assert pulled.ordering_key == ""  # ordering is off
        stored = await _stored(outbox_repository, event_id)
        assert stored.status is models.OutboxStatus.PUBLISHED
        assert stored.delivery_attempts == 1 and stored.last_error is None


async def test_topic_routing_by_event_type_then_aggregate_type(
    pubsub_emulator: EmulatorEndpoint,
    topics: _Topics,
    outbox_pool: Any,
    outbox_repository: repository.OutboxRepository,
    outbox_dsn: str,
) -> None:
    default, default_sub = await topics.make("default")
    paid, paid_sub = await topics.make("paid")
    customers, customers_sub = await topics.make("customers")
    messages = {
        "paid": models.Message("order", "o1", "order.paid", {}),
        # The event type wins over the aggregate type.
        "paid-by-customer": models.Message("customer", "c0", "order.paid", {}),
        "customer": models.Message("customer", "c1", "customer.created", {}),
        "other": models.Message("item", "i1", "item.created", {}),
    }
    enqueued = await _enqueue(outbox_pool, outbox_repository, list(messages.values()))
    ids = dict(zip(messages, enqueued, strict=True))
    settings = _config(
        outbox_repository.schema,
        outbox_dsn,
        pubsub_emulator.host,
        default,
        topics={"order.paid": paid, "customer": f"projects/{PROJECT}/topics/{customers}"},
    )
    publisher = PubSubPublisher(settings)
    async with PublisherTask(settings, outbox_repository, publisher):
        await _settled(outbox_repository)
    await publisher.close()

    def event_ids(received: list[Any]) -> list[str]:
        return sorted(m.attributes["event_id"] for m in received)

    assert event_ids(await topics.pull(paid_sub, 2)) == sorted(
        [str(ids["paid"]), str(ids["paid-by-customer"])]
    )
    assert event_ids(await topics.pull(customers_sub, 1)) == [str(ids["customer"])]
    assert event_ids(await topics.pull(default_sub, 1)) == [str(ids["other"])]


async def test_a_missing_topic_is_a_config_error_naming_its_key(
    pubsub_emulator: EmulatorEndpoint, topics: _Topics, outbox_schema: str, outbox_dsn: str
) -> None:
    existing, _ = await topics.make("exists")
    missing = _name("missing")
    cases = {
        "publisher.topics.order.paid": _config(
            outbox_schema,
            outbox_dsn,
            pubsub_emulator.host,
            existing,
            topics={"order.paid": missing},
        ),
        "publisher.topic": _config(outbox_schema, outbox_dsn, pubsub_emulator.host, missing),
    }
    for key, settings in cases.items():
        publisher = PubSubPublisher(settings)
        try:
            with pytest.raises(errors.ConfigError) as info:
                await publisher.start()
        finally:
            await publisher.close()
        message = str(info.value)
        assert f"{key}:" in message
        assert missing in message and "does not exist" in message


def _closed_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


@pytest.mark.parametrize("source", ["pubsub.emulator_host", "PUBSUB_EMULATOR_HOST"])
async def test_no_pubsub_answering_fails_the_start_within_connect_timeout(
    source: str,
    outbox_schema: str,
    outbox_dsn: str,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    host = f"127.0.0.1:{_closed_port()}"
    pubsub: dict[str, Any] = {"project": PROJECT, "connect_timeout": "1500ms"}
    if source == "PUBSUB_EMULATOR_HOST":
        monkeypatch.setenv("PUBSUB_EMULATOR_HOST", host)
    else:
        monkeypatch.delenv("PUBSUB_EMULATOR_HOST", raising=False)
        pubsub["emulator_host"] = host
    settings = config.OutboxConfig.from_mapping(
        {
            "schema": outbox_schema,
            "dsn": outbox_dsn,
            "pubsub": pubsub,
            "publisher": {"topic": "orders"},
        }
    )
    publisher = PubSubPublisher(settings)
    started = time.monotonic()
    with (
        caplog.at_level(logging.INFO, logger="outbox_di"),
        pytest.raises(errors.PubSubUnavailableError) as info,
    ):
        await publisher.start()
    elapsed = time.monotonic() - started
    message = str(info.value)
    assert message.startswith(
        f"Pub/Sub did not answer at {host} (the emulator of {source}) within "
        "pubsub.connect_timeout (1.5s) while checking that topic "
        f"'projects/{PROJECT}/topics/orders' exists ("
    ), message
    assert f"start the Pub/Sub emulator at {host}, or point {source} at the one that runs" in (
        message
    )
    assert info.value.endpoint == host and info.value.timeout == 1.5
    assert elapsed < 1.5 + 5, elapsed
    assert f"checking topics on {host} (the emulator of {source})" in caplog.text
    assert publisher._client is None  # the failed start closed the client it made


async def test_the_google_endpoint_is_named_when_no_emulator_is_configured(
    outbox_schema: str, outbox_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without an emulator the message names pubsub.googleapis.com and the network fix (the
    call itself fails here, no matter how: a stand-in client that is never answered)."""
    monkeypatch.delenv("PUBSUB_EMULATOR_HOST", raising=False)
    settings = config.OutboxConfig.from_mapping(
        {
            "schema": outbox_schema,
            "dsn": outbox_dsn,
            "pubsub": {"project": PROJECT, "connect_timeout": "200ms"},
            "publisher": {"topic": "orders"},
        }
    )

    class _Silent:
        async def get_topic(self, **kwargs: Any) -> None:
            await asyncio.sleep(3600)

    publisher = PubSubPublisher(settings, client=_Silent())
    started = time.monotonic()
    with pytest.raises(errors.PubSubUnavailableError) as info:
        await publisher.start()
    assert time.monotonic() - started < 0.2 + 5
    message = str(info.value)
    assert "at pubsub.googleapis.com (Google Cloud) within pubsub.connect_timeout (0.2s)" in message
    assert "check that this host reaches pubsub.googleapis.com:443" in message
    assert "set pubsub.emulator_host (or PUBSUB_EMULATOR_HOST)" in message


async def test_messages_pubsub_would_refuse_are_dead_at_once_and_the_batch_goes_on(
    pubsub_emulator: EmulatorEndpoint,
    topics: _Topics,
    outbox_pool: Any,
    outbox_repository: repository.OutboxRepository,
    outbox_dsn: str,
) -> None:
    """Invariant 4: a bad row is dead-lettered with a clear reason; the rest of its batch is
    published."""
    topic, subscription = await topics.make("limits")
    messages = {
        "good-1": models.Message("item", "g1", "item.created", {"n": 1}),
        "too-big": models.Message("item", "big", "item.created", b"x" * 10_000_001),
        "long-attribute": models.Message("item", "long", "item.created", {}, {"x": "v" * 1025}),
        "goog-header": models.Message("item", "goog", "item.created", {}, {"googlish": "1"}),
        "good-2": models.Message("item", "g2", "item.created", {"n": 2}),
    }
    enqueued = await _enqueue(outbox_pool, outbox_repository, list(messages.values()))
    ids = dict(zip(messages, enqueued, strict=True))
    settings = _config(
        outbox_repository.schema, outbox_dsn, pubsub_emulator.host, topic, batch_size=100
    )
    publisher = PubSubPublisher(settings)
    async with PublisherTask(settings, outbox_repository, publisher) as task:
        await _settled(outbox_repository)
    await publisher.close()
    assert task.stats.batches == 1, "everything was decided in one claimed batch"
    expected_errors = {
        "too-big": "over Pub/Sub's limit of 10000000 bytes",
        "long-attribute": "attribute 'x' is over 1024 bytes",
        "goog-header": "uses the prefix 'goog', reserved by Pub/Sub",
    }
    for name, reason in expected_errors.items():
        stored = await _stored(outbox_repository, ids[name])
        assert stored.status is models.OutboxStatus.DEAD, name
        assert stored.delivery_attempts == 1, name
        assert stored.last_error is not None and reason in stored.last_error, stored.last_error
        assert "dead after permanent error" in stored.last_error
    for name in ("good-1", "good-2"):
        stored = await _stored(outbox_repository, ids[name])
        assert stored.status is models.OutboxStatus.PUBLISHED, name
        assert stored.last_error is None
    received = await topics.pull(subscription, 2)
    assert sorted(m.attributes["event_id"] for m in received) == sorted(
        [str(ids["good-1"]), str(ids["good-2"])]
    )


async def test_failed_publishes_are_retried_then_published(
    pubsub_emulator: EmulatorEndpoint,
    topics: _Topics,
    outbox_pool: Any,
    outbox_repository: repository.OutboxRepository,
    outbox_dsn: str,
) -> None:
    emulator = pubsub_emulator.emulator
    if emulator is None:
        pytest.skip("fault injection needs the in-process emulator")
    topic, subscription = await topics.make("flaky")
    ids = await _enqueue(
        outbox_pool,
        outbox_repository,
        [models.Message("item", f"f{n}", "item.created", {"n": n}) for n in range(5)],
    )
    settings = _config(outbox_repository.schema, outbox_dsn, pubsub_emulator.host, topic)
    publisher = PubSubPublisher(settings)
    emulator.fail_next_publishes(2)
    try:
        async with PublisherTask(settings, outbox_repository, publisher) as task:
            await _settled(outbox_repository)
    finally:
        emulator.reset_faults()
        await publisher.close()
    assert task.stats.failed == 10 and task.stats.published == 5
    for event_id in ids:
        stored = await _stored(outbox_repository, event_id)
        assert stored.status is models.OutboxStatus.PUBLISHED
        assert stored.delivery_attempts == 3
        assert stored.last_error is not None
        assert stored.last_error.startswith("ServiceUnavailable:")
        assert "injected failure" in stored.last_error
    received = await topics.pull(subscription, 5)
    assert sorted(m.attributes["event_id"] for m in received) == sorted(map(str, ids))


async def test_a_publish_slower_than_publish_timeout_is_retried(
    pubsub_emulator: EmulatorEndpoint,
    topics: _Topics,
    outbox_pool: Any,
    outbox_repository: repository.OutboxRepository,
    outbox_dsn: str,
) -> None:
    emulator = pubsub_emulator.emulator
    if emulator is None:
        pytest.skip("fault injection needs the in-process emulator")
    topic, subscription = await topics.make("slow")
    [event_id] = await _enqueue(
        outbox_pool, outbox_repository, [models.Message("item", "slow", "item.created", {})]
    )
    settings = _config(
        outbox_repository.schema, outbox_dsn, pubsub_emulator.host, topic, publish_timeout="300ms"
    )
    publisher = PubSubPublisher(settings)

    async def attempted() -> bool:
        stored = await _stored(outbox_repository, event_id)
        return stored.last_error is not None

    emulator.set_publish_delay(1.0)
    try:
        async with PublisherTask(settings, outbox_repository, publisher) as task:
            await wait_until(attempted, 10.0, "a timed-out attempt recorded")
            emulator.reset_faults()
            await _settled(outbox_repository)
    finally:
        emulator.reset_faults()
        await publisher.close()
    stored = await _stored(outbox_repository, event_id)
    assert stored.status is models.OutboxStatus.PUBLISHED
    assert stored.delivery_attempts >= 2
    assert task.stats.failed >= 1
    assert stored.last_error is not None
    assert "DeadlineExceeded" in stored.last_error or "timed out" in stored.last_error, (
        stored.last_error
    )
    # The slow publishes may still have landed after their deadline: at least once.
    received = await topics.pull(subscription, 1)
    assert {m.attributes["event_id"] for m in received} == {str(event_id)}


async def test_with_ordering_one_key_arrives_in_seq_order(
    pubsub_emulator: EmulatorEndpoint,
    topics: _Topics,
    outbox_pool: Any,
    outbox_schema: str,
    outbox_dsn: str,
) -> None:
    """Small on purpose: Google's emulator delivers an ordered subscription slowly."""
    topic, subscription = await topics.make("ordered", ordered=True)
    repo = repository.OutboxRepository(outbox_pool, outbox_schema, ordering=True)
    per_key = 6
    keys = ["alpha", "beta"]
    for n in range(per_key):  # one transaction per step, both keys interleaved
        await _enqueue(
            outbox_pool,
            repo,
            [models.Message("account", key, "account.changed", {"n": n}) for key in keys],
        )
    settings = _config(
        outbox_schema, outbox_dsn, pubsub_emulator.host, topic, ordering=True, workers=2
    )
    publisher = PubSubPublisher(settings)
    async with PublisherTask(settings, repo, publisher):
        await _settled(repo)
    await publisher.close()
    received = await topics.pull(subscription, per_key * len(keys), within=30.0)
    order: dict[str, list[int]] = {}
    for message in received:
        assert message.ordering_key == message.attributes["aggregate_id"]
        order.setdefault(message.ordering_key, []).append(int(json.loads(message.data)["n"]))
    assert order == {key: list(range(per_key)) for key in keys}
