"""``InboxReceiver``: a broker subscription → inbox rows, acknowledged only after they commit.

The broker is behind the :class:`~outbox_di.brokers.ports.Subscriber` port (Pub/Sub, RabbitMQ,
NATS JetStream or Redis Streams, by ``broker``). Each loop:

1. takes a batch of deliveries (bounded by ``inbox.max_messages`` / ``inbox.max_bytes``
   outstanding across the loops);
2. records it with one ``INSERT … ON CONFLICT DO NOTHING`` (autocommitted), which tells the
   new rows from the duplicates;
3. acknowledges the whole batch, duplicates included, once the inserts committed.

A message PostgreSQL cannot store as received (a NUL character in an attribute: ``text`` and
``jsonb`` cannot hold one) would fail its whole batch on every redelivery; it is recorded
instead as a dead row, scrubbed, with the reason in ``last_error``, and acknowledged.

When the database fails nothing is acknowledged: the batch is handed back to the broker at
once (best effort; else it is redelivered after the broker's own deadline) and the loop backs
off. The subscriber's client is created in ``start()``, inside the running event loop.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import hashlib
import logging
import random
from collections.abc import Sequence
from typing import Any

from opentelemetry.metrics import Meter

from outbox_di import brokers, errors, models, observability, runtime
from outbox_di import config as config_module
from outbox_di.brokers import ports
from outbox_di.repository import InboxRepository

MAX_RECEIVE_MESSAGES = 1000
"""The most deliveries one loop asks its subscriber for at a time."""
UNKNOWN_EVENT_TYPE = ports.UNKNOWN_EVENT_TYPE


MAX_EVENT_ID_BYTES = 1024
"""Longest ``event_id`` the inbox stores as it is: Pub/Sub's limit for an attribute value, well
within what the primary key ``(consumer, event_id)`` can index (a btree entry holds 2704 bytes)."""


def refusal(message: models.ReceivedMessage) -> str | None:
    """Why PostgreSQL cannot store ``message`` as received, or None when it can."""
    size = len(message.event_id)
    if size * 4 > MAX_EVENT_ID_BYTES and len(message.event_id.encode()) > MAX_EVENT_ID_BYTES:
        return (
            f"event_id is {len(message.event_id.encode())} bytes, over the "
            f"{MAX_EVENT_ID_BYTES} bytes the inbox's primary key takes (Pub/Sub's own limit "
            "for an attribute)"
        )
    for field, value in (
        ("event_id", message.event_id),
        ("event_type", message.event_type),
        ("aggregate_type", message.aggregate_type),
        ("aggregate_id", message.aggregate_id),
        ("ordering_key", message.ordering_key or ""),
    ):
        if "\x00" in value:
            return f"{field} contains a NUL character, which PostgreSQL text cannot store"
    for key, value in message.headers.items():
        if "\x00" in key or "\x00" in value:
            return (
                f"attribute {_scrub(key)!r} contains a NUL character, which PostgreSQL jsonb "
                "cannot store"
            )
    return None


def _scrub(text: str) -> str:
    return text.replace("\x00", "\ufffd")


def _storable_id(event_id: str) -> str:
    """``event_id`` if the primary key takes it, else ``sha256:<hex>`` of it: the same for
    every redelivery, so a redelivered message is still a duplicate."""
    if len(event_id) * 4 <= MAX_EVENT_ID_BYTES or len(event_id.encode()) <= MAX_EVENT_ID_BYTES:
        return _scrub(event_id)
    return "sha256:" + hashlib.sha256(event_id.encode()).hexdigest()


def scrubbed(message: models.ReceivedMessage) -> models.ReceivedMessage:
    """``message`` with every NUL character of its strings replaced by U+FFFD (the payload,
    stored as bytes, is kept as it is), and an ``event_id`` too long for the primary key
    replaced by its SHA-256 (``sha256:<hex>``)."""
    return dataclasses.replace(
        message,
        event_id=_storable_id(message.event_id),
        event_type=_scrub(message.event_type),
        aggregate_type=_scrub(message.aggregate_type),
        aggregate_id=_scrub(message.aggregate_id),
        ordering_key=None if message.ordering_key is None else _scrub(message.ordering_key),
        headers={_scrub(key): _scrub(value) for key, value in message.headers.items()},
    )


@dataclasses.dataclass
class ReceiverStats:
    """Counters since start, for tests, benchmarks and the demo."""

    received: int = 0
    recorded: int = 0
    duplicates: int = 0
    acked: int = 0
    batches: int = 0
    outages: int = 0
    ack_failures: int = 0
    refused: int = 0


class _FlowControl:
    """Bounds the messages and bytes pulled but not yet settled, across every pull loop."""

    def __init__(self, max_messages: int, max_bytes: int) -> None:
        self.max_messages = max_messages
        self.max_bytes = max_bytes
        self.messages = 0
        self.bytes = 0
        self._changed = asyncio.Condition()

    async def room(self) -> int:
        """Wait until there is room; how many messages the next pull may ask for."""
        async with self._changed:
            await self._changed.wait_for(
                lambda: self.messages < self.max_messages and self.bytes < self.max_bytes
            )
            return min(MAX_RECEIVE_MESSAGES, self.max_messages - self.messages)

    def take(self, messages: int, size: int) -> None:
        self.messages += messages
        self.bytes += size

    async def give_back(self, messages: int, size: int) -> None:
        async with self._changed:
            self.messages -= messages
            self.bytes -= size
            self._changed.notify_all()


class InboxReceiver(runtime.Supervised):
    """Receives one subscription into the inbox of one consumer (see the module docstring)."""

    def __init__(
        self,
        config: config_module.OutboxConfig,
        repository: InboxRepository,
        subscriber: ports.Subscriber | None = None,
        logger: logging.Logger | None = None,
        meter: Meter | None = None,
        *,
        pullers: int = 2,
        pull_timeout: float = 10.0,
        rng: random.Random | None = None,
    ) -> None:
        settings = config.inbox
        brokers.subscription_of(config)
        if pullers < 1:
            raise ValueError("pullers must be at least 1")
        self.config = config
        self.settings = settings
        self.repository = repository
        self.consumer = config.inbox_consumer
        self.subscriber = subscriber or brokers.make_subscriber(config)
        self.logger = logger or observability.logger
        self.metrics = observability.InboxMetrics(
            meter, config.schema, self.consumer, enabled=settings.metrics_enabled
        )
        self.stats = ReceiverStats()
        self.pullers = pullers
        self.pull_timeout = pull_timeout
        self._rng = rng or random.Random()
        self._flow: _FlowControl | None = None
        self._pulls: dict[int, asyncio.Task[Any]] = {}
        self._runtime = runtime.Runtime(
            "InboxReceiver",
            self.logger,
            self._rng,
            wake=self._cancel_pulls,
            release=self.subscriber.close,
        )

    @property
    def subscription(self) -> str:
        """The subscription as the broker knows it."""
        return self.subscriber.name

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """Start the subscriber (it checks the subscription exists), then the pull loops.

        The check is bounded by the broker's ``connect_timeout``: a broker that does not answer
        raises :class:`~outbox_di.errors.BrokerUnavailableError` naming the endpoint. A start
        that fails (or is cancelled) leaves no client open.
        """
        self._runtime.begin()
        await self.subscriber.start()
        self._flow = _FlowControl(self.settings.max_messages, self.settings.max_bytes)
        self._runtime.spawn_loops(self.pullers, self._run, "inbox-receiver")

    async def stop(self, timeout: float = 10.0) -> None:
        """Stop pulling; batches being recorded finish (and are acked) within ``timeout``."""
        await self._runtime.stop(timeout)

    def _cancel_pulls(self) -> None:
        """End the pulls waiting on the broker: a stop does not wait for ``pull_timeout``."""
        for pull in list(self._pulls.values()):
            pull.cancel()

    # -- the loop --------------------------------------------------------------------------

    async def _run(self, number: int) -> None:
        def outage(exc: Exception, delay: float) -> None:
            self.stats.outages += 1
            self._log_outage(number, exc, delay)

        # An empty pull says nothing of the broker's health: only a recorded batch ends a run
        # of outages.
        await self._runtime.loop(
            lambda: self.receive_once(number),
            outage=outage,
            initial=0.5,
            healthy=lambda recorded: recorded is not None,
        )

    def _log_outage(self, number: int, exc: Exception, delay: float) -> None:
        if isinstance(exc, errors.DatabaseError):
            self.logger.warning(
                "inbox receiver %d: database unavailable (%s); nothing acked, retrying in %.1fs",
                number,
                exc,
                delay,
            )
        elif isinstance(exc, errors.BrokerError):
            self.logger.warning(
                "inbox receiver %d: %s; retrying in %.1fs",
                number,
                exc,
                delay,
            )
        else:
            self.logger.error(
                "inbox receiver %d: unexpected error; the batch is redelivered after its "
                "ack deadline; retrying in %.1fs",
                number,
                delay,
                exc_info=exc,
            )

    async def _pull(self, number: int, max_messages: int) -> Sequence[ports.Delivery]:
        pull = asyncio.ensure_future(self.subscriber.receive(max_messages, self.pull_timeout))
        self._pulls[number] = pull
        try:
            return await pull
        except asyncio.CancelledError:
            if self._runtime.stopping:
                return []
            raise
        finally:
            self._pulls.pop(number, None)

    async def receive_once(self, number: int = 0) -> int | None:
        """One receive → record → ack cycle; how many messages were recorded as new (``None``
        when nothing came).

        Raises :class:`errors.DatabaseError` (after handing the batch back) when the inserts
        failed; nothing of the batch is acknowledged then.
        """
        assert self._flow is not None, "start() first"
        flow = self._flow
        room = await flow.room()
        if self._runtime.stopping:
            return None
        received = await self._pull(number, room)
        if not received:
            return None
        size = sum(delivery.size for delivery in received)
        flow.take(len(received), size)
        try:
            return await self._settle(received)
        finally:
            await flow.give_back(len(received), size)

    async def _settle(self, received: Sequence[ports.Delivery]) -> int:
        messages: list[models.ReceivedMessage] = []
        refused: list[tuple[models.ReceivedMessage, str]] = []
        for delivery in received:
            message = delivery.message
            problem = refusal(message)
            if problem is None:
                messages.append(message)
            else:
                kept = scrubbed(message)
                how = (
                    f"stored under event_id {kept.event_id!r}"
                    if kept.event_id != _scrub(message.event_id)
                    else "stored with U+FFFD in its place"
                )
                refused.append((kept, f"{problem} ({how})"))
        self.stats.received += len(received)
        self.stats.batches += 1
        try:
            new_by_type = await self.repository.record_received_by_type(self.consumer, messages)
            new_total = sum(new_by_type.values())
            self.stats.recorded += new_total
            if new_total < len(messages):
                self._count_duplicates(messages, new_by_type)
            for message, problem in refused:
                new_total += await self._record_refused(message, problem)
        except errors.DatabaseError:
            await self.subscriber.nack(received)
            raise
        except errors.MessageError as exc:
            # Not a database outage, and not fixed by retrying at once: left unacknowledged
            # (not handed back), so it comes back only after the ack deadline and a dead-letter
            # policy on the subscription can take it.
            self.logger.error("inbox receiver: batch refused (%s); not acknowledged", exc)
            return 0
        except Exception as exc:  # a closed pool, a lost connection outside psycopg2
            await self.subscriber.nack(received)
            raise errors.DatabaseError(f"recording the batch failed: {exc!r}") from exc
        await self._acknowledge(received)
        return new_total

    def _count_duplicates(
        self, messages: Sequence[models.ReceivedMessage], new_by_type: dict[str, int]
    ) -> None:
        received_by_type = collections.Counter(message.event_type for message in messages)
        for event_type, count in received_by_type.items():
            duplicates = count - new_by_type.get(event_type, 0)
            if duplicates:
                self.stats.duplicates += duplicates
                self.metrics.duplicates(event_type, duplicates)

    async def _record_refused(self, message: models.ReceivedMessage, problem: str) -> int:
        """Keep a message that cannot be stored as received as a dead row; 1 if it was new."""
        error = f"message refused by the receiver: {problem}"
        if not await self.repository.record_dead(self.consumer, message, error):
            self.stats.duplicates += 1
            self.metrics.duplicates(message.event_type, 1)
            return 0
        self.stats.refused += 1
        self.stats.recorded += 1
        self.metrics.dead_lettered(message.event_type)
        self.logger.error(
            "inbox message %s (Pub/Sub id %s) recorded as dead: %s",
            message.event_id,
            message.message_id,
            problem,
            extra=observability.log_extra(
                event_id=message.event_id, aggregate_id=message.aggregate_id
            ),
        )
        return 1

    async def _acknowledge(self, received: Sequence[ports.Delivery]) -> None:
        failed = await self.subscriber.ack(received)
        self.stats.acked += len(received) - failed
        if failed:
            # The rows are committed: a redelivery is recorded as a duplicate and acked.
            self.stats.ack_failures += failed
            self.logger.warning(
                "inbox receiver: acknowledging %d messages failed; they will be redelivered "
                "and counted as duplicates",
                failed,
            )
