"""The exceptions outbox_di raises.

Everything the library raises on purpose derives from :class:`OutboxError`; driver errors are
translated into :class:`DatabaseError` at the repository boundary so callers need not know which
driver is underneath.
"""

from __future__ import annotations

from collections.abc import Sequence


class OutboxError(Exception):
    """Base class of every error raised by outbox_di."""


class SchemaNameError(OutboxError, ValueError):
    """A schema name that cannot be used as a PostgreSQL identifier."""


class ConfigError(OutboxError, ValueError):
    """The configuration is invalid; ``problems`` lists every problem with its key path."""

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems: tuple[str, ...] = tuple(problems)
        listing = "\n".join(f"  - {problem}" for problem in self.problems)
        super().__init__(
            f"invalid outbox configuration ({len(self.problems)} problem(s)):\n{listing}"
        )


class UnsupportedSessionError(OutboxError, TypeError):
    """``enqueue`` was given an object that is not a supported connection, cursor or session."""


class NotInTransactionError(OutboxError):
    """``enqueue`` was given a session with no open transaction.

    Enqueueing outside a transaction would commit the event on its own, apart from the business
    change it announces, which is exactly what an outbox exists to prevent.
    """


class MessageError(OutboxError, ValueError):
    """A message that cannot be stored (for example a payload that is not JSON-serializable)."""


class DatabaseError(OutboxError):
    """A database operation failed; the driver's exception is the ``__cause__``."""


class SchemaDriftError(OutboxError):
    """A live schema differs from the rendered template; ``differences`` names each one."""

    def __init__(self, schema: str, differences: Sequence[str]) -> None:
        self.schema = schema
        self.differences: tuple[str, ...] = tuple(differences)
        listing = "\n".join(f"  - {item}" for item in self.differences)
        super().__init__(f"schema {schema!r} differs from outbox_di's template:\n{listing}")


class SchemaNotReadyError(OutboxError):
    """The service schema is missing, or older than this version of outbox_di needs.

    Raised when the container's pool starts (web and worker processes alike), before anything
    reads or writes an event. ``version`` is what the schema records (``None`` when its tables
    are missing), ``required`` what the library needs; the message gives the command that fixes
    it.
    """

    def __init__(
        self,
        schema: str,
        found: str,
        fix: str,
        *,
        version: int | None = None,
        required: int,
        missing: Sequence[str] = (),
    ) -> None:
        self.schema = schema
        self.version = version
        self.required = required
        self.missing: tuple[str, ...] = tuple(missing)
        super().__init__(f"schema {schema!r} is not ready: {found}; {fix}")


class BrokerUnavailableError(OutboxError):
    """The broker did not answer the start-up check (topics, subscription) within its
    section's ``connect_timeout`` (``pubsub.connect_timeout``, ``rabbitmq.connect_timeout``,
    ...); ``endpoint`` is where it was looked for, without any password."""

    def __init__(self, endpoint: str, timeout: float, message: str) -> None:
        self.endpoint = endpoint
        self.timeout = timeout
        super().__init__(message)


class PubSubUnavailableError(BrokerUnavailableError):
    """Pub/Sub did not answer the start-up check within ``pubsub.connect_timeout``."""


class BrokerError(OutboxError):
    """A broker call failed while running (a lost connection, a refused request); the
    broker client's exception is the ``__cause__``. The loops back off and try again."""


class StartAborted(OutboxError):
    """A start was given up because a stop was requested while it waited (``outbox-di worker``
    received SIGTERM during its Pub/Sub check, say); what it had opened is closed."""
