"""The project's own use of the publisher contract suite, against both emulators.

This is what a service writes (see docs/publisher-suite.md): the two fixtures and a subclass.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from outbox_di.containers import OutboxContainer
from outbox_di.testing import pubsub as pubsub_testing
from outbox_di.testing.publisher_suite import OutboxSubscription, PublisherContract
from outbox_di.testing.pubsub import EmulatorEndpoint

pytestmark = pytest.mark.integration

PROJECT = "outbox-di-contract"


@pytest.fixture
def contract_topic() -> str:
    return f"contract-{uuid.uuid4().hex[:12]}"


@pytest.fixture
async def outbox_subscription(
    pubsub_emulator: EmulatorEndpoint, contract_topic: str
) -> AsyncIterator[OutboxSubscription]:
    topic = f"projects/{PROJECT}/topics/{contract_topic}"
    path = f"projects/{PROJECT}/subscriptions/{contract_topic}"
    async with pubsub_testing.async_publisher_client(pubsub_emulator.host) as publisher:
        await publisher.create_topic(name=topic)
    async with pubsub_testing.async_subscriber_client(pubsub_emulator.host) as subscriber:
        await subscriber.create_subscription(name=path, topic=topic)
    yield OutboxSubscription(pubsub_emulator.host, path, pubsub_emulator.emulator)
    async with pubsub_testing.async_subscriber_client(pubsub_emulator.host) as subscriber:
        await subscriber.delete_subscription(subscription=path)
    async with pubsub_testing.async_publisher_client(pubsub_emulator.host) as publisher:
        await publisher.delete_topic(topic=topic)


@pytest.fixture
def outbox_container(
    outbox_schema: str,
    outbox_dsn: str,
    pubsub_emulator: EmulatorEndpoint,
    contract_topic: str,
    outbox_subscription: OutboxSubscription,
) -> Iterator[Any]:
    container = OutboxContainer(
        config={
            "schema": outbox_schema,
            "dsn": outbox_dsn,
            "pool": {"max_size": 4},
            "pubsub": {"project": PROJECT, "emulator_host": pubsub_emulator.host},
            "publisher": {
                "topic": contract_topic,
                "tick_interval": "50ms",
                "lock_ttl": "1s",
                "publish_timeout": "500ms",
                "shutdown_timeout": "2s",
                "backoff": {"initial": "10ms", "max": "100ms"},
            },
        }
    )
    yield container


class TestOutboxDiPublisher(PublisherContract):
    """The contract, run on the library's default container."""
