"""Pub/Sub channels for tests: a fresh topic and subscription on the configured emulator."""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator

from outbox_di import config as config_module
from outbox_di.brokers.pubsub import names
from outbox_di.testing import pubsub as pubsub_testing
from outbox_di.testing.publisher_suite import OutboxSubscription

__all__ = ["temporary_channel", "unavailable"]


def _host(settings: config_module.OutboxConfig) -> str | None:
    return settings.pubsub.emulator_host or os.environ.get(pubsub_testing.ENV_HOST)


def unavailable(settings: config_module.OutboxConfig) -> str | None:
    host = _host(settings)
    if host is None:
        return "no Pub/Sub emulator configured (pubsub.emulator_host or PUBSUB_EMULATOR_HOST)"
    if not pubsub_testing.wait_until_answers(host, 2.0):
        return f"the Pub/Sub emulator at {host} does not answer"
    return None


@contextlib.asynccontextmanager
async def temporary_channel(
    settings: config_module.OutboxConfig, prefix: str = "test"
) -> AsyncIterator[OutboxSubscription]:
    """A fresh topic ``<prefix>-<hex>`` in ``pubsub.project`` (``outbox-di-test`` when unset)
    with one subscription, on the emulator of ``settings``; both deleted on exit."""
    host = _host(settings)
    if host is None:
        raise RuntimeError(unavailable(settings))
    project = names.project(settings) or "outbox-di-test"
    async with pubsub_testing.temporary_topic(host, project, prefix=prefix) as made:
        yield OutboxSubscription(host, made.subscription, topic=made.topic)
