"""outbox_di: one transactional outbox and inbox on PostgreSQL for every service."""

from __future__ import annotations

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
from outbox_di.models import (
    InboxEvent,
    InboxStatus,
    Message,
    OutboxEvent,
    OutboxStatus,
    ReceivedMessage,
)
from outbox_di.repository import InboxRepository, OutboxRepository
from outbox_di.schema import render_ddl, validate_schema_name

__version__ = "0.1.0"

__all__ = [
    "ConfigError",
    "DatabaseError",
    "InboxEvent",
    "InboxRepository",
    "InboxStatus",
    "Message",
    "MessageError",
    "NotInTransactionError",
    "OutboxError",
    "OutboxEvent",
    "OutboxRepository",
    "OutboxStatus",
    "ReceivedMessage",
    "SchemaDriftError",
    "SchemaNameError",
    "UnsupportedSessionError",
    "__version__",
    "render_ddl",
    "validate_schema_name",
]
