"""The project's own use of the inbox contract suite, against both emulators.

This is what a service writes (see docs/inbox-suite.md): the two fixtures and a subclass.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from outbox_di.containers import OutboxContainer
from outbox_di.testing import pubsub as pubsub_testing
from outbox_di.testing.inbox_suite import InboxContract, InboxTopic
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
def inbox_container(
    outbox_schema: str,
    outbox_dsn: str,
    pubsub_emulator: EmulatorEndpoint,
    contract_topic: TopicWithSubscription,
) -> Iterator[Any]:
    yield OutboxContainer(
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
        }
    )


class TestOutboxDiInbox(InboxContract):
    """The contract, run on the library's default container."""
