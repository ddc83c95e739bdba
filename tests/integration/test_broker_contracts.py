"""The publisher and inbox contract suites on RabbitMQ, NATS JetStream and Redis Streams.

The same subclasses a service writes (docs/publisher-suite.md, docs/inbox-suite.md), with the
fixtures built on the test kit's broker channels: each broker's run uses the server this
machine runs, and skips with the reason when that server does not answer. Pub/Sub runs the same
suites in test_publisher_suite.py and test_inbox_suite.py, on both emulators.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from outbox_di import config, models
from outbox_di.containers import OutboxContainer
from outbox_di.inbox.handlers import InboxHandlers
from outbox_di.testing import brokers as brokers_testing
from outbox_di.testing.inbox_suite import InboxContract, InboxSample
from outbox_di.testing.publisher_suite import PublisherContract

pytestmark = pytest.mark.integration

BROKERS = ["rabbitmq", "nats", "redis"]


def _broker_settings(broker: str, topic: str | None = None) -> config.OutboxConfig:
    return config.OutboxConfig.from_mapping(
        {
            "schema": "contract",
            "dsn": "postgresql://postgres@127.0.0.1/postgres",
            "broker": broker,
            "publisher": {"topic": topic or "contract"},
        }
    )


@pytest.fixture(params=BROKERS)
def broker(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    reason = brokers_testing.unavailable(_broker_settings(name))
    if reason:
        pytest.skip(f"{name}: {reason}")
    return name


@pytest.fixture
async def channel(broker: str) -> AsyncIterator[brokers_testing.Channel]:
    async with brokers_testing.temporary_channel(_broker_settings(broker), "contract") as made:
        yield made


# -- the publisher contract ------------------------------------------------------------------


@pytest.fixture
def outbox_subscription(channel: brokers_testing.Channel) -> brokers_testing.Channel:
    return channel


@pytest.fixture
def outbox_container(
    outbox_schema: str, outbox_dsn: str, broker: str, channel: brokers_testing.Channel
) -> Iterator[Any]:
    yield OutboxContainer(
        config={
            "schema": outbox_schema,
            "dsn": outbox_dsn,
            "broker": broker,
            "pool": {"max_size": 4},
            "publisher": {
                "topic": channel.topic,
                "tick_interval": "50ms",
                "lock_ttl": "1s",
                "publish_timeout": "500ms",
                "shutdown_timeout": "2s",
                "backoff": {"initial": "10ms", "max": "100ms"},
            },
        }
    )


class TestBrokerPublisher(PublisherContract):
    """The publisher contract on each broker."""


# -- the inbox contract ----------------------------------------------------------------------


@pytest.fixture
def inbox_topic(channel: brokers_testing.Channel) -> brokers_testing.Channel:
    return channel


@pytest.fixture
def received_skus() -> list[str]:
    return []


@pytest.fixture
def inbox_samples() -> list[InboxSample]:
    return [
        InboxSample(
            "catalog.item_created",
            b'{"sku": "A-1"}',
            {"aggregate_type": "item", "aggregate_id": "A-1"},
        ),
        InboxSample("catalog.item_created", b'{"sku": "B-2"}'),
    ]


@pytest.fixture
def inbox_container(
    outbox_schema: str,
    outbox_dsn: str,
    broker: str,
    channel: brokers_testing.Channel,
    received_skus: list[str],
) -> Iterator[Any]:
    handlers = InboxHandlers()

    @handlers.on("catalog.item_created")
    async def remember_item(event: models.InboxEvent) -> None:
        received_skus.append(event.json()["sku"])

    yield OutboxContainer(
        inbox_handlers=handlers,
        config={
            "schema": outbox_schema,
            "dsn": outbox_dsn,
            "broker": broker,
            "pool": {"max_size": 8},
            "publisher": {"enabled": False},
            "inbox": {
                "enabled": True,
                "consumer": "contract",
                "subscription": channel.subscription,
                "lock_ttl": "1s",
                "handler_timeout": "500ms",
                "max_attempts": 3,
                "retry_delay": "10ms",
                "shutdown_timeout": "2s",
            },
        },
    )


class TestBrokerInbox(InboxContract):
    """The inbox contract on each broker."""
