"""The project's own use of the inbox contract suite, against both emulators.

This is what a service writes (see docs/inbox-suite.md): the two fixtures and a subclass.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from outbox_di import models
from outbox_di.containers import OutboxContainer
from outbox_di.inbox.handlers import InboxHandlers
from outbox_di.testing import pubsub as pubsub_testing
from outbox_di.testing.inbox_suite import InboxContract, InboxSample, InboxTopic
from outbox_di.testing.pubsub import EmulatorEndpoint, TopicWithSubscription

pytestmark = pytest.mark.integration

PROJECT = "outbox-di-contract"


@pytest.fixture
async def contract_topic(
    pubsub_emulator: EmulatorEndpoint,
) -> AsyncIterator[TopicWithSubscription]:
    async with pubsub_testing.temporary_topic(
        pubsub_emulator.host, PROJECT, prefix="inbox-contract", ack_deadline=10
    ) as made:
        yield made


@pytest.fixture
def inbox_topic(
    pubsub_emulator: EmulatorEndpoint, contract_topic: TopicWithSubscription
) -> InboxTopic:
    return InboxTopic(pubsub_emulator.host, contract_topic.topic, pubsub_emulator.emulator)


@pytest.fixture
def received_skus() -> list[str]:
    return []


@pytest.fixture
def inbox_samples() -> list[InboxSample]:
    """Events the handler below accepts (a service lists a few of each type it handles)."""
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
    pubsub_emulator: EmulatorEndpoint,
    contract_topic: TopicWithSubscription,
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
            "pool": {"max_size": 8},
            "pubsub": {"project": PROJECT, "emulator_host": pubsub_emulator.host},
            "publisher": {"enabled": False},
            "inbox": {
                "enabled": True,
                "consumer": "contract",
                "subscription": contract_topic.name,
                "lock_ttl": "1s",
                "handler_timeout": "500ms",
                "max_attempts": 3,
                "retry_delay": "10ms",
                "shutdown_timeout": "2s",
            },
        },
    )


class TestOutboxDiInbox(InboxContract):
    """The contract, run on the library's default container."""
