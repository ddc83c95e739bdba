"""outbox_di: one transactional outbox and inbox on PostgreSQL for every service."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

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
from outbox_di.publishing.task import PublisherTask
from outbox_di.repository import InboxRepository, OutboxRepository
from outbox_di.schema import render_ddl, validate_schema_name

if TYPE_CHECKING:
    from outbox_di.inbox.receiver import InboxReceiver
    from outbox_di.publishing.pubsub import PubSubPublisher

__version__ = "0.1.0"

# Loaded on first use: they bring grpc and Pub/Sub's client, which a process that only
# enqueues does not need (0.8 s and about 500 modules of its start-up).
_LAZY = {
    "InboxReceiver": "outbox_di.inbox.receiver",
    "PubSubPublisher": "outbox_di.publishing.pubsub",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'outbox_di' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


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
