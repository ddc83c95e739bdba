"""outbox_di: one transactional outbox and inbox on PostgreSQL for every service.

``__all__`` holds what a service writes: the container, the enqueue facade and its message,
the configuration, the inbox's handler registry and the events handlers get, and the errors
worth catching. Everything else (repositories, the relay task, broker adapters, the test kit)
lives in its own module; the older top-level names of those still resolve, loaded on first
use, so a process loads a broker's client only when it uses one.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from outbox_di.config import OutboxConfig
from outbox_di.containers import OutboxContainer
from outbox_di.errors import ConfigError, DatabaseError, NotInTransactionError, OutboxError
from outbox_di.inbox.handlers import InboxHandlers
from outbox_di.models import InboxEvent, Message
from outbox_di.outbox import Outbox

if TYPE_CHECKING:
    from outbox_di.brokers.ports import Publisher as Publisher
    from outbox_di.brokers.ports import PublishOutcome as PublishOutcome
    from outbox_di.brokers.ports import Subscriber as Subscriber
    from outbox_di.brokers.pubsub import PubSubPublisher as PubSubPublisher
    from outbox_di.brokers.pubsub import PubSubSubscriber as PubSubSubscriber
    from outbox_di.errors import MessageError as MessageError
    from outbox_di.errors import SchemaDriftError as SchemaDriftError
    from outbox_di.errors import SchemaNameError as SchemaNameError
    from outbox_di.errors import UnsupportedSessionError as UnsupportedSessionError
    from outbox_di.inbox.receiver import InboxReceiver as InboxReceiver
    from outbox_di.inbox.worker import InboxWorker as InboxWorker
    from outbox_di.models import InboxStatus as InboxStatus
    from outbox_di.models import OutboxEvent as OutboxEvent
    from outbox_di.models import OutboxStatus as OutboxStatus
    from outbox_di.models import ReceivedMessage as ReceivedMessage
    from outbox_di.publishing.base import InMemoryPublisher as InMemoryPublisher
    from outbox_di.publishing.task import PublisherTask as PublisherTask
    from outbox_di.repository import InboxRepository as InboxRepository
    from outbox_di.repository import OutboxRepository as OutboxRepository
    from outbox_di.schema import render_ddl as render_ddl
    from outbox_di.schema import validate_schema_name as validate_schema_name

__version__ = "0.1.0"

# Names kept at the top level for code written against 0.1.0, each loaded from its module on
# first use (the Pub/Sub ones bring grpc: 0.8 s and about 500 modules of a start-up).
_LAZY = {
    "InMemoryPublisher": "outbox_di.publishing.base",
    "InboxReceiver": "outbox_di.inbox.receiver",
    "InboxRepository": "outbox_di.repository",
    "InboxStatus": "outbox_di.models",
    "InboxWorker": "outbox_di.inbox.worker",
    "MessageError": "outbox_di.errors",
    "OutboxEvent": "outbox_di.models",
    "OutboxRepository": "outbox_di.repository",
    "OutboxStatus": "outbox_di.models",
    "PubSubPublisher": "outbox_di.brokers.pubsub",
    "PubSubSubscriber": "outbox_di.brokers.pubsub",
    "PublishOutcome": "outbox_di.brokers.ports",
    "Publisher": "outbox_di.brokers.ports",
    "PublisherTask": "outbox_di.publishing.task",
    "ReceivedMessage": "outbox_di.models",
    "SchemaDriftError": "outbox_di.errors",
    "SchemaNameError": "outbox_di.errors",
    "Subscriber": "outbox_di.brokers.ports",
    "UnsupportedSessionError": "outbox_di.errors",
    "render_ddl": "outbox_di.schema",
    "validate_schema_name": "outbox_di.schema",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'outbox_di' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})


def load_settings(
    settings_files: Sequence[str | os.PathLike[str]] | None = None,
    *,
    section: str = "outbox",
    env_prefix: str = "OUTBOX",
) -> OutboxConfig:
    """The checked configuration from ``settings.toml`` ``[outbox]`` and ``OUTBOX_*`` variables
    (see :func:`outbox_di.settings.load_settings`)."""
    # dynaconf imports Django's settings machinery whenever Django is installed: load it only
    # for the services that read their settings through it.
    from outbox_di import settings

    return settings.load_settings(settings_files, section=section, env_prefix=env_prefix)


__all__ = [
    "ConfigError",
    "DatabaseError",
    "InboxEvent",
    "InboxHandlers",
    "Message",
    "NotInTransactionError",
    "Outbox",
    "OutboxConfig",
    "OutboxContainer",
    "OutboxError",
    "__version__",
    "load_settings",
]
