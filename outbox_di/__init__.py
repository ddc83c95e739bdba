"""outbox_di: one transactional outbox and inbox on PostgreSQL for every service."""

from __future__ import annotations

from typing import Any

from outbox_di.config import OutboxConfig
from outbox_di.containers import OutboxContainer
from outbox_di.errors import (
    ConfigError,
    DatabaseError,
    MessageError,
    NotInTransactionError,
    OutboxError,
    SchemaDriftError,
    SchemaNameError,
    UnsupportedSessionError,
)
from outbox_di.inbox.handlers import InboxHandlers
from outbox_di.inbox.receiver import InboxReceiver
from outbox_di.inbox.worker import InboxWorker
from outbox_di.models import (
    InboxEvent,
    InboxStatus,
    Message,
    OutboxEvent,
    OutboxStatus,
    ReceivedMessage,
)
from outbox_di.outbox import Outbox
from outbox_di.publishing.base import InMemoryPublisher, Publisher, PublishOutcome
from outbox_di.publishing.pubsub import PubSubPublisher
from outbox_di.publishing.task import PublisherTask
from outbox_di.repository import InboxRepository, OutboxRepository
from outbox_di.schema import render_ddl, validate_schema_name

__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    # dynaconf imports Django's settings machinery whenever Django is installed: load it only
    # for the services that read their settings through it.
    if name == "load_settings":
        from outbox_di.settings import load_settings

        return load_settings
    raise AttributeError(f"module 'outbox_di' has no attribute {name!r}")


__all__ = [
    "ConfigError",
    "DatabaseError",
    "InMemoryPublisher",
    "InboxEvent",
    "InboxHandlers",
    "InboxReceiver",
    "InboxRepository",
    "InboxStatus",
    "InboxWorker",
    "Message",
    "MessageError",
    "NotInTransactionError",
    "Outbox",
    "OutboxConfig",
    "OutboxContainer",
    "OutboxError",
    "OutboxEvent",
    "OutboxRepository",
    "OutboxStatus",
    "PubSubPublisher",
    "PublishOutcome",
    "Publisher",
    "PublisherTask",
    "ReceivedMessage",
    "SchemaDriftError",
    "SchemaNameError",
    "UnsupportedSessionError",
    "__version__",
    "load_settings",
    "render_ddl",
    "validate_schema_name",
]
