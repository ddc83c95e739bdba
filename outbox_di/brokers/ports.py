"""The two broker ports: what the relay needs to publish and what the inbox needs to receive.

A broker adapter is a pair of classes built from the whole :class:`~outbox_di.config.OutboxConfig`
(``Adapter(settings)``), each creating its client in ``start()``, inside the running event loop:

- a :class:`Publisher` gets a claimed batch and returns one :class:`PublishOutcome` per event,
  in order. It never raises for a broker problem: a failed event gets an outcome with
  ``error`` set, and ``permanent=True`` when retrying cannot help (a message over the broker's
  size limit, no topic for the event type), which dead-letters the row at once. An outcome
  is ``ok`` only once the broker has taken the message for good (a publisher confirm, a
  stream's acknowledgement): the row is marked published on that word alone.
- a :class:`Subscriber` hands out :class:`Delivery` items and settles them. The receiver
  acknowledges a delivery only after its row committed, and hands it back (``nack``) when the
  database failed, so a message is never dropped between the broker and the inbox.

Both check at ``start()`` what the configuration names (the topics, the subscription) and fail
fast: :class:`~outbox_di.errors.ConfigError` naming the key when it does not exist,
:class:`~outbox_di.errors.BrokerUnavailableError` naming the endpoint when the broker does not
answer within its section's ``connect_timeout``.

Every broker carries an event the same way: the payload as the message body, and the
attributes of :func:`event_attributes` (the event's headers, then ``event_id``,
``event_type``, ``aggregate_type`` and ``aggregate_id``) as the broker's headers;
:func:`received_message` turns them back into a :class:`~outbox_di.models.ReceivedMessage`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

from outbox_di import models

__all__ = [
    "COLUMN_ATTRIBUTES",
    "UNKNOWN_EVENT_TYPE",
    "Delivery",
    "PublishOutcome",
    "Publisher",
    "Subscriber",
    "event_attributes",
    "received_message",
]

COLUMN_ATTRIBUTES = frozenset({"event_id", "event_type", "aggregate_type", "aggregate_id"})
"""Attributes the publisher sets that the inbox stores as columns rather than headers."""
UNKNOWN_EVENT_TYPE = "unknown"
"""The event type recorded for a message that carries none (a default handler may take it)."""


@dataclasses.dataclass(frozen=True, slots=True)
class PublishOutcome:
    """What happened to one event of a batch."""

    message_id: str | None = None
    error: str | None = None
    permanent: bool = False

    @property
    def ok(self) -> bool:
        return self.error is None


@runtime_checkable
class Publisher(Protocol):
    """What the relay needs from a broker client."""

    async def start(self) -> None:
        """Check the configuration against the broker (topics exist); fail fast if not."""

    async def publish(self, events: Sequence[models.OutboxEvent]) -> Sequence[PublishOutcome]:
        """Publish ``events``; one outcome per event, in the same order."""

    async def close(self) -> None:
        """Release the broker client."""


@dataclasses.dataclass(frozen=True, slots=True)
class Delivery:
    """One message handed out by a :class:`Subscriber`.

    ``size`` is the payload's length in bytes (the receiver bounds what it holds unsettled by
    it); ``token`` is the subscriber's own handle for settling it (an ack id, a delivery tag, a
    stream entry id) and means nothing to anyone else.
    """

    message: models.ReceivedMessage
    size: int
    token: Any


@runtime_checkable
class Subscriber(Protocol):
    """What the inbox receiver needs from a broker client."""

    @property
    def name(self) -> str:
        """The subscription as the broker knows it, for log lines."""

    async def start(self) -> None:
        """Create the client and check the subscription exists; fail fast if not."""

    async def receive(self, max_messages: int, timeout: float) -> Sequence[Delivery]:
        """Up to ``max_messages`` deliveries, waiting at most about ``timeout`` seconds for the
        first; an empty sequence when none came. Raises on a broker failure (the receiver
        backs off and calls again). Cancelling it loses nothing: a message not returned is
        redelivered by the broker."""

    async def ack(self, deliveries: Sequence[Delivery]) -> int:
        """Settle ``deliveries`` for good; returns how many could not be acknowledged (the
        broker redelivers those, and the inbox counts them as duplicates). Never raises for a
        broker failure."""

    async def nack(self, deliveries: Sequence[Delivery]) -> None:
        """Hand ``deliveries`` back for redelivery as soon as the broker can, best effort
        (what is not handed back is redelivered after the broker's own deadline). Never
        raises for a broker failure."""

    async def close(self) -> None:
        """Release the broker client; deliveries not acknowledged are redelivered."""


def event_attributes(event: models.OutboxEvent) -> dict[str, str]:
    """The attributes every broker sends with ``event``: its headers, then the four fixed
    ones (which win over a header of the same name)."""
    attributes = dict(event.headers)
    attributes["event_id"] = str(event.event_id)
    attributes["event_type"] = event.event_type
    attributes["aggregate_type"] = event.aggregate_type
    attributes["aggregate_id"] = event.aggregate_id
    return attributes


def received_message(
    attributes: Mapping[str, str],
    payload: bytes,
    message_id: str | None,
    ordering_key: str | None = None,
) -> models.ReceivedMessage:
    """A :class:`~outbox_di.models.ReceivedMessage` from what a broker delivered.

    ``event_id`` falls back to the broker's message id; a missing ``event_type`` is recorded
    as :data:`UNKNOWN_EVENT_TYPE` (the worker parks it unless a default handler takes it).
    """
    headers = {key: value for key, value in attributes.items() if key not in COLUMN_ATTRIBUTES}
    return models.ReceivedMessage(
        event_id=attributes.get("event_id") or message_id or "",
        event_type=attributes.get("event_type") or UNKNOWN_EVENT_TYPE,
        payload=payload,
        headers=headers,
        message_id=message_id or None,
        aggregate_type=attributes.get("aggregate_type", ""),
        aggregate_id=attributes.get("aggregate_id", ""),
        ordering_key=ordering_key or None,
    )
