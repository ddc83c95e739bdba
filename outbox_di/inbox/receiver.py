"""``InboxReceiver``: Pub/Sub subscription → inbox rows, acknowledged only after they commit.

It pulls with the GAPIC ``SubscriberAsyncClient`` (unary ``Pull`` of up to 1,000 messages, one
batched ``Acknowledge``), not the high-level streaming-pull ``SubscriberClient``: measured on
Google's emulator the unary pull path received ~15k msg/s against ~1.5-2k msg/s for streaming
pull (docs/inbox.md). Each loop:

1. pulls a batch (bounded by ``inbox.max_messages`` / ``inbox.max_bytes`` outstanding);
2. records it with one ``INSERT … ON CONFLICT DO NOTHING`` (autocommitted), which tells the
   new rows from the duplicates;
3. acknowledges the whole batch, duplicates included, once the inserts committed.

A message PostgreSQL cannot store as received (a NUL character in an attribute: ``text`` and
``jsonb`` cannot hold one) would fail its whole batch on every redelivery; it is recorded
instead as a dead row, scrubbed, with the reason in ``last_error``, and acknowledged.

When the database fails nothing is acknowledged: the batch is handed back to Pub/Sub at once
(ack deadline 0, best effort; else it is redelivered after its deadline) and the loop backs
off. The client is created in ``start()``, inside the running event loop.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import hashlib
import logging
import os
import random
from collections.abc import Sequence
from typing import Any

from google.api_core import exceptions as google_exceptions
from google.pubsub_v1.types import (
    AcknowledgeRequest,
    ModifyAckDeadlineRequest,
    PullRequest,
    PullResponse,
)
from opentelemetry.metrics import Meter

from outbox_di import aio, errors, models, observability
from outbox_di import config as config_module
from outbox_di.publishing import backoff, pubsub
from outbox_di.repository import InboxRepository

MAX_PULL_MESSAGES = 1000
# Acknowledge requests are limited to 512 KiB; an ack id is ~100-200 bytes.
MAX_ACK_IDS_PER_REQUEST = 1000
# Attributes the publisher sets that become columns rather than headers.
_COLUMN_ATTRIBUTES = frozenset({"event_id", "event_type", "aggregate_type", "aggregate_id"})
UNKNOWN_EVENT_TYPE = "unknown"

_PB_PULL_REQUEST: Any = PullRequest.pb()
_PB_ACK_REQUEST: Any = AcknowledgeRequest.pb()
_PB_MODIFY_REQUEST: Any = ModifyAckDeadlineRequest.pb()


def resolve_subscription(name: str, project: str | None) -> str:
    """``projects/P/subscriptions/S`` from a full name, or from a bare name and the project."""
    if name.startswith("projects/"):
        return name
    if not project:
        raise errors.ConfigError(
            [
                f"inbox.subscription: {name!r} is a bare name but no project is known; set "
                "pubsub.project (or GOOGLE_CLOUD_PROJECT), or give projects/P/subscriptions/S"
            ]
        )
    return f"projects/{project}/subscriptions/{name}"


def _project(settings: config_module.OutboxConfig) -> str | None:
    return (
        settings.pubsub.project
        or os.environ.get("GOOGLE_CLOUD_PROJECT")
        or os.environ.get("GCLOUD_PROJECT")
    )


def make_subscriber_client(settings: config_module.OutboxConfig) -> Any:
    """A ``SubscriberAsyncClient``: on an insecure channel to the emulator when configured
    (``pubsub.emulator_host`` or ``PUBSUB_EMULATOR_HOST``), else Google Cloud with application
    default credentials. Call it inside the running event loop."""
    from google.pubsub_v1.services.subscriber import SubscriberAsyncClient
    from google.pubsub_v1.services.subscriber.transports import SubscriberGrpcAsyncIOTransport

    host = settings.pubsub.emulator_host or os.environ.get("PUBSUB_EMULATOR_HOST")
    if host:
        import grpc

        channel = grpc.aio.insecure_channel(
            host,
            options=[
                ("grpc.max_send_message_length", -1),
                ("grpc.max_receive_message_length", -1),
                *pubsub.RECONNECT_OPTIONS,
            ],
        )
        return SubscriberAsyncClient(transport=SubscriberGrpcAsyncIOTransport(channel=channel))
    return SubscriberAsyncClient(
        transport=pubsub.reconnecting_transport(SubscriberGrpcAsyncIOTransport)
    )


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


def to_received(pb_message: Any) -> models.ReceivedMessage:
    """A ``ReceivedMessage`` from a raw ``PubsubMessage`` protobuf.

    ``event_id`` falls back to Pub/Sub's message id; a missing ``event_type`` is recorded as
    ``"unknown"`` (the worker parks it unless a default handler takes it).
    """
    attributes = pb_message.attributes
    message_id: str = pb_message.message_id
    headers = {key: value for key, value in attributes.items() if key not in _COLUMN_ATTRIBUTES}
    return models.ReceivedMessage(
        event_id=attributes.get("event_id") or message_id,
        event_type=attributes.get("event_type") or UNKNOWN_EVENT_TYPE,
        payload=pb_message.data,
        headers=headers,
        message_id=message_id or None,
        aggregate_type=attributes.get("aggregate_type", ""),
        aggregate_id=attributes.get("aggregate_id", ""),
        ordering_key=pb_message.ordering_key or None,
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
            return min(MAX_PULL_MESSAGES, self.max_messages - self.messages)

    def take(self, messages: int, size: int) -> None:
        self.messages += messages
        self.bytes += size

    async def give_back(self, messages: int, size: int) -> None:
        async with self._changed:
            self.messages -= messages
            self.bytes -= size
            self._changed.notify_all()


class InboxReceiver:
    """Receives one subscription into the inbox of one consumer (see the module docstring)."""

    def __init__(
        self,
        config: config_module.OutboxConfig,
        repository: InboxRepository,
        client: Any = None,
        logger: logging.Logger | None = None,
        meter: Meter | None = None,
        *,
        pullers: int = 2,
        pull_timeout: float = 10.0,
        rng: random.Random | None = None,
    ) -> None:
        settings = config.inbox
        if not settings.subscription:
            raise errors.ConfigError(["inbox.subscription: required to receive messages"])
        if pullers < 1:
            raise ValueError("pullers must be at least 1")
        self.config = config
        self.settings = settings
        self.repository = repository
        self.consumer = config.inbox_consumer
        self.subscription = resolve_subscription(settings.subscription, _project(config))
        self.logger = logger or observability.logger
        self.metrics = observability.InboxMetrics(
            meter, config.schema, self.consumer, enabled=settings.metrics_enabled
        )
        self.stats = ReceiverStats()
        self.pullers = pullers
        self.pull_timeout = pull_timeout
        self._rng = rng or random.Random()
        self._client = client
        self._owns_client = client is None
        self._flow: _FlowControl | None = None
        self._stop_requested = asyncio.Event()
        self._stopping = False
        self._loops: list[asyncio.Task[None]] = []
        self._pulls: dict[int, asyncio.Task[Any]] = {}
        self._started = False

    @property
    def client(self) -> Any:
        if self._client is None:
            raise errors.OutboxError("InboxReceiver.start() must run before receiving")
        return self._client

    @property
    def running(self) -> bool:
        return self._started and any(not task.done() for task in self._loops)

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """Create the client, check the subscription exists, start the pull loops.

        The check is bounded by ``pubsub.connect_timeout``: a Pub/Sub that does not answer
        raises :class:`~outbox_di.errors.PubSubUnavailableError` naming the endpoint. A start
        that fails (or is cancelled) closes the client it created.
        """
        if self._started:
            raise errors.OutboxError("this InboxReceiver was already started")
        self._started = True
        if self._client is None:
            self._client = make_subscriber_client(self.config)
        try:
            await self._check_subscription()
        except BaseException:
            await self._close_client()
            raise
        self._flow = _FlowControl(self.settings.max_messages, self.settings.max_bytes)
        self._loops = [
            asyncio.create_task(self._run(number), name=f"inbox-receiver-{number}")
            for number in range(self.pullers)
        ]

    async def _check_subscription(self) -> None:
        timeout = self.config.pubsub.connect_timeout
        self.logger.info(
            "checking subscription %s on %s (within %gs)",
            self.subscription,
            pubsub.describe_endpoint(self.config),
            timeout,
        )
        try:
            await pubsub.startup_call(
                self.config,
                self.client.get_subscription,
                f"checking that subscription {self.subscription!r} exists",
                deadline=asyncio.get_running_loop().time() + timeout,
                subscription=self.subscription,
            )
        except google_exceptions.NotFound as exc:
            raise errors.ConfigError(
                [
                    f"inbox.subscription: {self.subscription!r} does not exist ({exc.message}); "
                    "create it first"
                ]
            ) from exc
        except google_exceptions.PermissionDenied:
            self.logger.warning(
                "cannot check that subscription %s exists (permission denied); continuing",
                self.subscription,
            )

    async def stop(self, timeout: float = 10.0) -> None:
        """Stop pulling; batches being recorded finish (and are acked) within ``timeout``."""
        self._stopping = True
        self._stop_requested.set()
        for pull in list(self._pulls.values()):
            pull.cancel()
        if self._loops:
            _, pending = await asyncio.wait(self._loops, timeout=timeout)
            await aio.cancel_and_wait(pending, self.logger)
        await self._close_client()

    async def _close_client(self) -> None:
        if self._client is not None and self._owns_client:
            await self._client.transport.close()
            self._client = None

    async def __aenter__(self) -> InboxReceiver:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    # -- the loop --------------------------------------------------------------------------

    async def _run(self, number: int) -> None:
        outages = 0
        while not self._stopping:
            try:
                recorded = await self.receive_once(number)
            except Exception as exc:  # an outage, or a bug of ours: receiving goes on
                outages += 1
                self.stats.outages += 1
                delay = self._outage_delay(outages)
                self._log_outage(number, exc, delay)
                await self._sleep(delay)
                continue
            if recorded is not None:
                outages = 0

    def _log_outage(self, number: int, exc: Exception, delay: float) -> None:
        if isinstance(exc, errors.DatabaseError):
            self.logger.warning(
                "inbox receiver %d: database unavailable (%s); nothing acked, retrying in %.1fs",
                number,
                exc,
                delay,
            )
        elif isinstance(exc, google_exceptions.GoogleAPICallError):
            self.logger.warning(
                "inbox receiver %d: Pub/Sub call failed (%s); retrying in %.1fs",
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

    def _outage_delay(self, outages: int) -> float:
        return backoff.retry_delay(
            outages,
            initial=0.5,
            maximum=backoff.MAX_OUTAGE_DELAY,
            multiplier=2.0,
            jitter=0.2,
            rng=self._rng,
        )

    async def _sleep(self, seconds: float) -> None:
        """Sleep, but not past stop()."""
        await aio.wait_event(self._stop_requested, seconds)

    async def _pull(self, number: int, max_messages: int) -> list[Any]:
        request = PullRequest.wrap(
            _PB_PULL_REQUEST(subscription=self.subscription, max_messages=max_messages)
        )
        pull = asyncio.ensure_future(
            self.client.pull(request=request, timeout=self.pull_timeout, retry=None)
        )
        self._pulls[number] = pull
        try:
            response = await pull
        except asyncio.CancelledError:
            if self._stopping:
                return []
            raise
        except google_exceptions.DeadlineExceeded:
            return []  # nothing arrived within pull_timeout
        finally:
            self._pulls.pop(number, None)
        return list(PullResponse.pb(response).received_messages)

    async def receive_once(self, number: int = 0) -> int | None:
        """One pull → record → ack cycle; how many messages were recorded as new (``None``
        when nothing was pulled).

        Raises :class:`errors.DatabaseError` (after handing the batch back) when the inserts
        failed; nothing of the batch is acknowledged then.
        """
        assert self._flow is not None, "start() first"
        flow = self._flow
        room = await flow.room()
        if self._stopping:
            return None
        received = await self._pull(number, room)
        if not received:
            return None
        size = sum(len(item.message.data) for item in received)
        flow.take(len(received), size)
        try:
            return await self._settle(received)
        finally:
            await flow.give_back(len(received), size)

    async def _settle(self, received: Sequence[Any]) -> int:
        ack_ids = [item.ack_id for item in received]
        messages: list[models.ReceivedMessage] = []
        refused: list[tuple[models.ReceivedMessage, str]] = []
        for item in received:
            message = to_received(item.message)
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
            await self._hand_back(ack_ids)
            raise
        except errors.MessageError as exc:
            # Not a database outage, and not fixed by retrying at once: left unacknowledged
            # (not handed back), so it comes back only after the ack deadline and a dead-letter
            # policy on the subscription can take it.
            self.logger.error("inbox receiver: batch refused (%s); not acknowledged", exc)
            return 0
        except Exception as exc:  # a closed pool, a lost connection outside psycopg2
            await self._hand_back(ack_ids)
            raise errors.DatabaseError(f"recording the batch failed: {exc!r}") from exc
        await self._acknowledge(ack_ids)
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

    async def _acknowledge(self, ack_ids: Sequence[str]) -> None:
        for start in range(0, len(ack_ids), MAX_ACK_IDS_PER_REQUEST):
            chunk = ack_ids[start : start + MAX_ACK_IDS_PER_REQUEST]
            request = AcknowledgeRequest.wrap(
                _PB_ACK_REQUEST(subscription=self.subscription, ack_ids=chunk)
            )
            try:
                await self.client.acknowledge(request=request, timeout=self.pull_timeout)
            except google_exceptions.GoogleAPICallError as exc:
                # The rows are committed: a redelivery is recorded as a duplicate and acked.
                self.stats.ack_failures += len(chunk)
                self.logger.warning(
                    "inbox receiver: acknowledging %d messages failed (%s); they will be "
                    "redelivered and counted as duplicates",
                    len(chunk),
                    exc,
                )
                continue
            self.stats.acked += len(chunk)

    async def _hand_back(self, ack_ids: Sequence[str]) -> None:
        """Negative acknowledgement (deadline 0), best effort: redelivered at once."""
        for start in range(0, len(ack_ids), MAX_ACK_IDS_PER_REQUEST):
            chunk = ack_ids[start : start + MAX_ACK_IDS_PER_REQUEST]
            request = ModifyAckDeadlineRequest.wrap(
                _PB_MODIFY_REQUEST(
                    subscription=self.subscription, ack_ids=chunk, ack_deadline_seconds=0
                )
            )
            try:
                await self.client.modify_ack_deadline(request=request, timeout=self.pull_timeout)
            except google_exceptions.GoogleAPICallError as exc:
                self.logger.debug("inbox receiver: could not hand back messages: %s", exc)
