"""Broker adapters behind two ports (:mod:`outbox_di.brokers.ports`): Pub/Sub, RabbitMQ, NATS
JetStream and Redis Streams.

``broker`` in the configuration picks one; :func:`make_publisher` and :func:`make_subscriber`
import its module only then, so a process loads the client library of the broker it uses and
no other (a process that only enqueues loads none).
"""

from __future__ import annotations

import importlib
from typing import Any

from outbox_di import config as config_module
from outbox_di import errors
from outbox_di.brokers.ports import Delivery, Publisher, PublishOutcome, Subscriber

__all__ = [
    "Delivery",
    "PublishOutcome",
    "Publisher",
    "Subscriber",
    "make_publisher",
    "make_subscriber",
    "subscription_of",
]

# broker -> (module, publisher class, subscriber class, the extra that installs its client)
_ADAPTERS = {
    "pubsub": (
        "outbox_di.brokers.pubsub",
        "PubSubPublisher",
        "PubSubSubscriber",
        None,
    ),
    "rabbitmq": (
        "outbox_di.brokers.rabbitmq",
        "RabbitMQPublisher",
        "RabbitMQSubscriber",
        "rabbitmq",
    ),
    "nats": ("outbox_di.brokers.nats", "NatsPublisher", "NatsSubscriber", "nats"),
    "redis": ("outbox_di.brokers.redis", "RedisPublisher", "RedisSubscriber", "redis"),
}


def _adapter(settings: config_module.OutboxConfig, which: int) -> Any:
    module_name, *classes, extra = _ADAPTERS[settings.broker]
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        if extra is None or (exc.name or "").startswith("outbox_di"):
            raise
        raise errors.ConfigError(
            [
                f"broker: {settings.broker!r} needs its client library, which is not installed "
                f"({exc.msg}); install it with pip install 'outbox_di[{extra}]'"
            ]
        ) from exc
    return getattr(module, classes[which])


def make_publisher(settings: config_module.OutboxConfig) -> Publisher:
    """The publisher of ``settings.broker``, not started."""
    publisher: Publisher = _adapter(settings, 0)(settings)
    return publisher


def make_subscriber(settings: config_module.OutboxConfig) -> Subscriber:
    """The subscriber of ``settings.broker`` for ``inbox.subscription``, not started."""
    subscriber: Subscriber = _adapter(settings, 1)(settings)
    return subscriber


def subscription_of(settings: config_module.OutboxConfig) -> str:
    """``inbox.subscription``; a clear error when it is not set (nothing to receive from)."""
    subscription = settings.inbox.subscription
    if not subscription:
        raise errors.ConfigError(["inbox.subscription: required to receive messages"])
    return subscription
