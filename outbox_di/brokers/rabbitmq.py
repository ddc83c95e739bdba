"""The RabbitMQ adapter (``broker = "rabbitmq"``): ``RabbitMQPublisher`` and ``RabbitMQSubscriber``.

A topic is an exchange (of type ``topic``, declared by whoever runs the broker): the relay
publishes each event to it with the event type as the routing key, so a consuming service binds
its queue by event type (``#`` for every event). The inbox's subscription is a queue.

Both classes hold one robust connection (aio-pika reconnects it, reopens its channels and
restores the consumer after a broker restart or a network cut) and check at ``start()``, on a
throwaway channel, that what the configuration names exists: a failed passive declare closes
the channel it ran on, so the checks must not run on the channel that publishes or consumes.

The publisher sends a whole claimed batch at once on one channel with publisher confirms and
waits for every confirm: an outcome is ok only once RabbitMQ acknowledged that message. A
message the broker would refuse is refused here, alone and for good, before it is sent, because
RabbitMQ does not refuse such a message on its own: it closes the channel (a body over its
``max_message_size``) or the whole connection (a header frame over ``frame_max``), failing
every other message in flight with it.

The subscriber consumes with a prefetch of ``inbox.max_messages`` into a local buffer that
``receive`` drains; a delivery is settled by its delivery tag on the channel that delivered it,
so nothing delivered before a reconnect is settled by mistake on the new channel (the broker
redelivers those by itself).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import datetime as dt
import json
import re
from collections.abc import Mapping, Sequence
from typing import Any, cast

import aio_pika
import aiormq
import aiormq.abc
from aio_pika.abc import AbstractIncomingMessage, AbstractRobustChannel, AbstractRobustConnection
from pamqp import commands as spec
from pamqp.common import FieldTable

from outbox_di import brokers, errors, models, observability, redaction
from outbox_di import config as config_module
from outbox_di.brokers import routing, startup
from outbox_di.brokers.ports import Delivery, PublishOutcome, event_attributes, received_message

__all__ = [
    "CONTENT_TYPE",
    "MAX_HEADER_KEY_BYTES",
    "MAX_MESSAGE_BYTES",
    "MAX_PREFETCH",
    "MAX_ROUTING_KEY_BYTES",
    "RabbitMQPublisher",
    "RabbitMQSubscriber",
    "attributes_of",
    "connect",
    "endpoint",
    "header_frame_size",
]

MAX_MESSAGE_BYTES = 128 * 1024 * 1024
"""RabbitMQ's default ``max_message_size`` (128 MiB): a body one byte longer is refused by
closing the channel. A broker configured lower says so when it refuses one, and the publisher
then keeps to the limit it was told."""
MAX_ROUTING_KEY_BYTES = 255
"""A routing key (the event type) is an AMQP short string: 255 bytes of UTF-8 at most."""
MAX_HEADER_KEY_BYTES = 128
"""The longest header name the client sends as it is: a longer one would be cut short."""
MAX_PREFETCH = 65535
"""The largest ``prefetch_count`` AMQP can carry (an unsigned 16-bit number)."""
CONTENT_TYPE = "application/octet-stream"
_PERSISTENT = 2  # delivery_mode: written to disk by a durable queue
# How much longer than rabbitmq.connect_timeout the whole start-up check may take before it is
# cancelled (the client's own connect timeout should have ended it already).
_STARTUP_GRACE = 1.0
# What RabbitMQ says when it refuses a body over its max_message_size.
_SIZE_REFUSAL_RE = re.compile(r"message size (\d+) is larger than configured max size (\d+)")
# The bytes of a content header frame besides its properties: frame type, channel and size (7),
# class id, weight, body size and property flags (14), the frame end octet (1).
_HEADER_FRAME_OVERHEAD = 22


def endpoint(settings: config_module.OutboxConfig) -> str:
    """``rabbitmq.url`` without its password, for messages and logs."""
    return redaction.redact_dsn(settings.rabbitmq.url)


def _reason(settings: config_module.OutboxConfig, exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return redaction.redact_text(text, settings.rabbitmq.url)


def _unavailable(
    settings: config_module.OutboxConfig, what: str, exc: BaseException
) -> errors.BrokerUnavailableError:
    """The error of a start-up check RabbitMQ did not answer, naming the endpoint and the fix."""
    where = endpoint(settings)
    timeout = settings.rabbitmq.connect_timeout
    reason = "no answer" if isinstance(exc, asyncio.TimeoutError) else _reason(settings, exc)
    return errors.BrokerUnavailableError(
        where,
        timeout,
        f"RabbitMQ did not answer at {where} within rabbitmq.connect_timeout ({timeout:g}s) "
        f"while {what} ({reason}); start RabbitMQ there or point rabbitmq.url at the one that "
        "runs, and raise rabbitmq.connect_timeout if it is only slow to answer",
    )


async def connect(settings: config_module.OutboxConfig, what: str) -> AbstractRobustConnection:
    """A robust connection to ``rabbitmq.url``, within ``rabbitmq.connect_timeout``.

    Raises :class:`~outbox_di.errors.BrokerUnavailableError` when RabbitMQ does not answer,
    :class:`~outbox_di.errors.ConfigError` naming ``rabbitmq.url`` when it refuses the login.
    """
    timeout = settings.rabbitmq.connect_timeout
    try:
        connection = await asyncio.wait_for(
            aio_pika.connect_robust(settings.rabbitmq.url, timeout=timeout),
            timeout + _STARTUP_GRACE,
        )
    except aiormq.exceptions.ProbableAuthenticationError as exc:
        raise errors.ConfigError(
            [
                f"rabbitmq.url: RabbitMQ at {endpoint(settings)} refused the login "
                f"({_reason(settings, exc)}); check the user and password in rabbitmq.url "
                "and that this user may use its virtual host"
            ]
        ) from exc
    except (asyncio.TimeoutError, OSError, aiormq.exceptions.AMQPError) as exc:
        raise _unavailable(settings, what, exc) from exc
    return connection


def _deadline(settings: config_module.OutboxConfig) -> float:
    """When a start-up check (connecting included) must have ended, on the loop's clock."""
    timeout = settings.rabbitmq.connect_timeout + _STARTUP_GRACE
    return asyncio.get_running_loop().time() + timeout


def _left(deadline: float) -> float:
    # A little time even past the deadline: the connection is open, the checks are quick.
    return max(deadline - asyncio.get_running_loop().time(), 0.5)


def _underlay(connection: AbstractRobustConnection) -> aiormq.abc.AbstractConnection:
    transport = connection.transport
    if transport is None:
        raise errors.BrokerError("the RabbitMQ connection is not open")
    return transport.connection


async def _check_exists(
    settings: config_module.OutboxConfig,
    connection: AbstractRobustConnection,
    names: Mapping[str, str],
    *,
    queues: bool,
) -> None:
    """Check passively that each exchange (or queue) of ``names`` (key -> name) exists.

    Each check runs on a plain channel of its own: RabbitMQ answers a passive declare of a
    missing name by closing the channel, and a robust channel would then reopen itself. Every
    missing name is reported at once, each under the key that names it.
    """
    kind = "queue" if queues else "exchange"
    problems: list[str] = []
    underlay = _underlay(connection)
    for key, name in names.items():
        channel = await underlay.channel(publisher_confirms=False)
        try:
            if queues:
                await channel.queue_declare(name, passive=True)
            else:
                await channel.exchange_declare(name, passive=True)
        except aiormq.exceptions.ChannelNotFoundEntity:
            problems.append(_missing(settings, key, kind, name))
        except aiormq.exceptions.ChannelAccessRefused as exc:
            problems.append(
                f"{key}: the RabbitMQ user of rabbitmq.url may not use {kind} {name!r} "
                f"({_reason(settings, exc)}); grant it permissions on the virtual host"
            )
        except aiormq.exceptions.ChannelLockedResource as exc:
            problems.append(
                f"{key}: {kind} {name!r} is exclusive to another connection "
                f"({_reason(settings, exc)}); declare a queue that is not exclusive"
            )
        finally:
            if not channel.is_closed:
                await channel.close()
    if problems:
        raise errors.ConfigError(problems)


def _missing(settings: config_module.OutboxConfig, key: str, kind: str, name: str) -> str:
    where = endpoint(settings)
    if kind == "exchange":
        return (
            f"{key}: exchange {name!r} does not exist on RabbitMQ at {where}; declare it first "
            f"(rabbitmqadmin declare exchange name={name} type=topic durable=true, or "
            f"channel.declare_exchange({name!r}, 'topic', durable=True) with aio-pika)"
        )
    return (
        f"{key}: queue {name!r} does not exist on RabbitMQ at {where}; declare it and bind it "
        f"to the exchange first (rabbitmqadmin declare queue name={name} durable=true, then "
        f"rabbitmqadmin declare binding source=<exchange> destination={name} "
        "routing_key='#')"
    )


async def _close(
    channel: AbstractRobustChannel | None,
    connection: AbstractRobustConnection | None,
    what: str,
) -> None:
    """Close ``channel`` then ``connection``; a broken one has nothing more to release."""
    try:
        if channel is not None and not channel.is_closed:
            await channel.close()
    except Exception as exc:
        observability.logger.debug("closing the RabbitMQ %s channel failed: %s", what, exc)
    try:
        if connection is not None:
            await connection.close()
    except Exception as exc:
        observability.logger.debug("closing the RabbitMQ %s connection failed: %s", what, exc)


def _routing_problem(event_type: str) -> str | None:
    # A str of n characters is at most 4n bytes of UTF-8: encode only the long ones.
    if len(event_type) * 4 > MAX_ROUTING_KEY_BYTES:
        size = len(event_type.encode("utf-8", "surrogatepass"))
        if size > MAX_ROUTING_KEY_BYTES:
            return (
                f"event_type is {size} bytes of UTF-8, over the {MAX_ROUTING_KEY_BYTES} bytes "
                "of an AMQP routing key (RabbitMQ routes by event type)"
            )
    return None


def _utf8_size(text: str) -> int:
    return len(text) if text.isascii() else len(text.encode("utf-8", "surrogatepass"))


def header_frame_size(event_type: str, message_id: str, attributes: Mapping[str, str]) -> int:
    """The size in bytes of the AMQP content header frame the publisher sends for a message
    with these attributes: RabbitMQ closes the connection on one over its ``frame_max``."""
    size = _HEADER_FRAME_OVERHEAD
    size += 1 + len(CONTENT_TYPE)  # content_type
    size += 4  # headers: the table's length
    for key, value in attributes.items():
        # a short string key, the type octet 'S', a long string value
        size += 1 + _utf8_size(key) + 1 + 4 + _utf8_size(value)
    size += 1  # delivery_mode
    size += 1 + _utf8_size(message_id)  # message_id
    if event_type:  # type (an empty one is left out)
        size += 1 + _utf8_size(event_type)
    return size


def _header_problem(
    event: models.OutboxEvent, message_id: str, attributes: Mapping[str, str], frame_max: int
) -> str | None:
    """Why the headers cannot be sent as they are, or None. One pass over the attributes."""
    # The event type was checked already: at most 255 bytes.
    bound = _HEADER_FRAME_OVERHEAD + 1 + len(CONTENT_TYPE) + 4 + 1 + 1 + 36 + 1 + 255
    for key, value in attributes.items():
        key_length = len(key)
        if key_length * 4 > MAX_HEADER_KEY_BYTES and _utf8_size(key) > MAX_HEADER_KEY_BYTES:
            return (
                f"header key {key[:40]!r} is {_utf8_size(key)} bytes of UTF-8, over the "
                f"{MAX_HEADER_KEY_BYTES} bytes an AMQP header name may have"
            )
        bound += 6 + 4 * (key_length + len(value))
    if frame_max and bound > frame_max:
        size = header_frame_size(event.event_type, message_id, attributes)
        if size > frame_max:
            return (
                f"the headers make an AMQP header frame of {size} bytes, over the {frame_max} "
                "bytes of the connection's frame_max (RabbitMQ's frame_max setting); make the "
                "headers smaller or move the data into the payload"
            )
    return None


@dataclasses.dataclass(frozen=True)
class _Outgoing:
    """One message of a batch, checked and ready to send."""

    index: int
    exchange: str
    routing_key: str
    body: bytes
    properties: spec.Basic.Properties
    message_id: str


class RabbitMQPublisher:
    """The relay's publisher on RabbitMQ (see the module docstring).

    ``max_message_bytes`` is the largest body sent: RabbitMQ's default limit, lowered to what
    the broker says when it refuses a message as too large.
    """

    def __init__(self, settings: config_module.OutboxConfig) -> None:
        self.settings = settings
        self.router = routing.TopicRouter(settings)
        self.timeout = settings.publisher.publish_timeout
        self.logger = observability.logger
        self.max_message_bytes = MAX_MESSAGE_BYTES
        self._connection: AbstractRobustConnection | None = None
        self._channel: AbstractRobustChannel | None = None
        self._frame_max = 0

    async def start(self) -> None:
        """Connect, check every configured exchange exists and open the publishing channel.

        Bounded by ``rabbitmq.connect_timeout``: a RabbitMQ that does not answer raises
        :class:`~outbox_di.errors.BrokerUnavailableError`; a missing exchange raises
        :class:`~outbox_di.errors.ConfigError` naming its key. A start that fails (or is
        cancelled) closes what it opened. Idempotent.
        """
        if self._channel is not None:
            return
        exchanges = self.router.configured()
        self.logger.info(
            "checking exchanges on RabbitMQ at %s (within %gs): %s",
            endpoint(self.settings),
            self.settings.rabbitmq.connect_timeout,
            ", ".join(sorted(set(exchanges.values()))),
        )
        try:
            await startup.abortable(self._start(exchanges), "checking the exchanges on RabbitMQ")
        except BaseException:
            await self.close()
            raise

    async def _start(self, exchanges: dict[str, str]) -> None:
        deadline = _deadline(self.settings)
        self._connection = await connect(self.settings, "connecting the publisher")
        try:
            await asyncio.wait_for(self._open(self._connection, exchanges), _left(deadline))
        except (asyncio.TimeoutError, OSError, aiormq.exceptions.AMQPError) as exc:
            raise _unavailable(self.settings, "checking the exchanges", exc) from exc

    async def _open(self, connection: AbstractRobustConnection, exchanges: dict[str, str]) -> None:
        await _check_exists(self.settings, connection, exchanges, queues=False)
        channel = await connection.channel(publisher_confirms=True)
        self._frame_max = _underlay(connection).connection_tune.frame_max
        self._channel = channel

    async def close(self) -> None:
        """Close the channel and the connection (what is unconfirmed stays not published)."""
        channel, connection = self._channel, self._connection
        self._channel = self._connection = None
        await _close(channel, connection, "publisher")

    def _prepare(self, index: int, event: models.OutboxEvent) -> _Outgoing | PublishOutcome:
        """The message for ``event``, or the permanent failure that keeps it from being sent."""
        exchange = self.router.topic_for(event)
        if exchange is None:
            return routing.unrouted(event, "exchange")
        payload = event.payload
        if len(payload) > self.max_message_bytes:
            return PublishOutcome(
                error=(
                    f"payload of {len(payload)} bytes is over RabbitMQ's limit of "
                    f"{self.max_message_bytes} bytes per message (max_message_size)"
                ),
                permanent=True,
            )
        problem = _routing_problem(event.event_type)
        if problem is not None:
            return PublishOutcome(error=problem, permanent=True)
        message_id = str(event.event_id)
        attributes = event_attributes(event)
        problem = _header_problem(event, message_id, attributes, self._frame_max)
        if problem is not None:
            return PublishOutcome(error=problem, permanent=True)
        properties = spec.Basic.Properties(
            content_type=CONTENT_TYPE,
            headers=cast(FieldTable, attributes),  # str values: a FieldTable as it is
            delivery_mode=_PERSISTENT,
            message_id=message_id,
            message_type=event.event_type,
        )
        return _Outgoing(index, exchange, event.event_type, payload, properties, message_id)

    async def publish(self, events: Sequence[models.OutboxEvent]) -> Sequence[PublishOutcome]:
        """Publish ``events`` concurrently on one channel and wait for every confirm.

        The messages are written in the batch's order (the channel sends one publish at a
        time, in the order they were asked for), so a queue bound to one exchange receives
        them in that order. Never raises for a broker failure: each event gets an outcome.
        """
        if self._channel is None:
            raise errors.OutboxError("RabbitMQPublisher.start() must run before publishing")
        outcomes: list[PublishOutcome | None] = [None] * len(events)
        outgoing: list[_Outgoing] = []
        for index, event in enumerate(events):
            prepared = self._prepare(index, event)
            if isinstance(prepared, PublishOutcome):
                outcomes[index] = prepared
            else:
                outgoing.append(prepared)
        if outgoing:
            try:
                channel = await asyncio.wait_for(_open_channel(self._channel), self.timeout)
            except Exception as exc:  # reconnecting, or the connection was closed
                error = f"RabbitMQ channel not available ({type(exc).__name__}: {exc})"
                for item in outgoing:
                    outcomes[item.index] = PublishOutcome(error=error)
            else:
                results = await asyncio.gather(*(self._send(channel, item) for item in outgoing))
                for item, outcome in zip(outgoing, results, strict=True):
                    outcomes[item.index] = outcome
        return [
            outcome if outcome is not None else PublishOutcome(error="not published")
            for outcome in outcomes
        ]

    async def _send(self, channel: aiormq.abc.AbstractChannel, item: _Outgoing) -> PublishOutcome:
        try:
            confirmation = await channel.basic_publish(
                item.body,
                exchange=item.exchange,
                routing_key=item.routing_key,
                properties=item.properties,
                mandatory=False,
                timeout=self.timeout,
            )
        except asyncio.TimeoutError:
            return PublishOutcome(
                error=(
                    f"no confirm from RabbitMQ within publisher.publish_timeout ({self.timeout:g}s)"
                )
            )
        except aiormq.exceptions.ChannelPreconditionFailed as exc:
            self._learn_size_limit(exc)
            return PublishOutcome(error=f"RabbitMQ closed the channel: {exc}")
        except Exception as exc:  # a lost connection, a closed channel, a refused publish
            return PublishOutcome(error=f"{type(exc).__name__}: {exc}")
        if isinstance(confirmation, spec.Basic.Ack):
            return PublishOutcome(message_id=item.message_id)
        if isinstance(confirmation, spec.Basic.Nack):
            return PublishOutcome(error="RabbitMQ refused the message (basic.nack)")
        return PublishOutcome(error=f"unexpected answer from RabbitMQ: {confirmation!r}")

    def _learn_size_limit(self, exc: BaseException) -> None:
        """Keep to the broker's own ``max_message_size`` once it refused a message over it, so
        the retried batch sends the others and fails that one alone, permanently."""
        match = _SIZE_REFUSAL_RE.search(str(exc))
        if match is None:
            return
        limit = int(match.group(2))
        if limit < self.max_message_bytes:
            self.logger.warning(
                "RabbitMQ at %s refuses messages over %d bytes (its max_message_size); "
                "larger events now fail at once, permanently",
                endpoint(self.settings),
                limit,
            )
            self.max_message_bytes = limit


# How often a closed channel is looked at again, should its reopening go unannounced.
_REOPEN_POLL = 0.05


async def _open_channel(channel: AbstractRobustChannel) -> aiormq.abc.AbstractChannel:
    """The channel under ``channel`` once it is open: after a refusal closed it, or while the
    connection is restored, aio-pika reopens it in the background a moment later."""
    if channel.is_closed:
        reopened = asyncio.Event()

        def announce(_: AbstractRobustChannel | None) -> None:
            reopened.set()

        channel.reopen_callbacks.add(announce)
        try:
            while channel.is_closed:
                reopened.clear()
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(reopened.wait(), _REOPEN_POLL)
        finally:
            channel.reopen_callbacks.discard(announce)
    return await channel.get_underlay_channel()


def _text(value: object) -> str:
    """An AMQP header value as the inbox stores it: text as it is, anything else as text."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).decode("utf-8", errors="replace")
    if isinstance(value, (dt.datetime, dt.date)):
        return value.isoformat()
    if isinstance(value, (dict, list, tuple)):
        return json.dumps(value, default=_text, ensure_ascii=False, separators=(",", ":"))
    return str(value)


def attributes_of(headers: Mapping[str, Any] | None) -> dict[str, str]:
    """A message's AMQP headers as attributes (text values), as the other brokers carry them.

    The relay sends text only; a message published by another tool may carry numbers, flags,
    nested tables (``x-death``), which are kept as text rather than dropped.
    """
    if not headers:
        return {}
    return {str(key): _text(value) for key, value in headers.items()}


@dataclasses.dataclass(frozen=True, slots=True)
class _Token:
    """Settles one delivery: its tag on the channel that delivered it."""

    channel: aiormq.abc.AbstractChannel
    tag: int


class RabbitMQSubscriber:
    """The inbox's subscriber on a RabbitMQ queue (see the module docstring)."""

    def __init__(self, settings: config_module.OutboxConfig) -> None:
        self.settings = settings
        self.queue_name = brokers.subscription_of(settings)
        self.prefetch = min(settings.inbox.max_messages, MAX_PREFETCH)
        self.logger = observability.logger
        self._connection: AbstractRobustConnection | None = None
        self._channel: AbstractRobustChannel | None = None
        self._buffer: collections.deque[tuple[AbstractIncomingMessage, _Token]] = (
            collections.deque()
        )
        self._arrived = asyncio.Event()
        # The delivery tags handed out and not yet settled, per channel (id -> channel, tags).
        self._unsettled: dict[int, tuple[aiormq.abc.AbstractChannel, set[int]]] = {}

    @property
    def name(self) -> str:
        return self.queue_name

    async def start(self) -> None:
        """Connect, check the queue exists and start consuming it with a prefetch of
        ``inbox.max_messages`` (at most 65535).

        Bounded by ``rabbitmq.connect_timeout``: :class:`~outbox_di.errors.ConfigError` naming
        ``inbox.subscription`` when the queue does not exist,
        :class:`~outbox_di.errors.BrokerUnavailableError` when RabbitMQ does not answer.
        Idempotent.
        """
        if self._channel is not None:
            return
        self.logger.info(
            "checking queue %s on RabbitMQ at %s (within %gs)",
            self.queue_name,
            endpoint(self.settings),
            self.settings.rabbitmq.connect_timeout,
        )
        try:
            await startup.abortable(self._start(), "checking the queue on RabbitMQ")
        except BaseException:
            await self.close()
            raise

    async def _start(self) -> None:
        deadline = _deadline(self.settings)
        self._connection = await connect(self.settings, "connecting the subscriber")
        try:
            await asyncio.wait_for(self._open(self._connection), _left(deadline))
        except (asyncio.TimeoutError, OSError, aiormq.exceptions.AMQPError) as exc:
            raise _unavailable(self.settings, "checking the queue", exc) from exc

    async def _open(self, connection: AbstractRobustConnection) -> None:
        names = {"inbox.subscription": self.queue_name}
        await _check_exists(self.settings, connection, names, queues=True)
        channel = await connection.channel(publisher_confirms=False)
        self._channel = channel
        await channel.set_qos(prefetch_count=self.prefetch)
        # Passive, so that restoring it after a reconnect never declares a queue of its own.
        queue = await channel.declare_queue(self.queue_name, passive=True, robust=True)
        await queue.consume(self._on_message, no_ack=False)

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        # No await here: messages enter the buffer in the order they were delivered.
        tag = message.delivery_tag
        try:
            channel = message.channel
        except aiormq.exceptions.ChannelInvalidStateError:
            return  # its channel closed already: the broker redelivers it
        if tag is None:
            return
        self._buffer.append((message, _Token(channel, tag)))
        self._arrived.set()

    async def receive(self, max_messages: int, timeout: float) -> Sequence[Delivery]:
        """What is buffered, up to ``max_messages``, waiting up to ``timeout`` for the first.

        Raises :class:`~outbox_di.errors.BrokerError` while the channel is closed (RabbitMQ is
        being reconnected to). Cancelling it loses nothing: a message leaves the buffer only
        in the step that returns it.
        """
        channel = self._channel
        if channel is None:
            raise errors.OutboxError("RabbitMQSubscriber.start() must run before receiving")
        if channel.is_closed:
            raise errors.BrokerError(
                f"the RabbitMQ channel of queue {self.queue_name!r} is closed (reconnecting to "
                f"{endpoint(self.settings)})"
            )
        if not self._buffer:
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), timeout)
            except asyncio.TimeoutError:
                return []
            await asyncio.sleep(0)  # let the deliveries read with the first join the buffer
        return self._take(max_messages)

    def _take(self, max_messages: int) -> list[Delivery]:
        deliveries: list[Delivery] = []
        buffer = self._buffer
        while buffer and len(deliveries) < max_messages:
            message, token = buffer.popleft()
            if token.channel.is_closed:
                continue  # delivered before a reconnect: the broker redelivers it
            entry = self._unsettled.get(id(token.channel))
            if entry is None or entry[0] is not token.channel:
                self._forget_closed()
                entry = self._unsettled[id(token.channel)] = (token.channel, set())
            entry[1].add(token.tag)
            payload = message.body
            deliveries.append(
                Delivery(
                    message=received_message(
                        attributes_of(message.headers), payload, message.message_id
                    ),
                    size=len(payload),
                    token=token,
                )
            )
        return deliveries

    def _forget_closed(self) -> None:
        for key, (channel, _) in list(self._unsettled.items()):
            if channel.is_closed:
                del self._unsettled[key]

    async def ack(self, deliveries: Sequence[Delivery]) -> int:
        """Acknowledge ``deliveries``; how many could not be (their channel closed: the broker
        redelivers those). One ``basic.ack`` with ``multiple`` when they are every delivery
        still unsettled up to the highest tag, else one per delivery."""
        return await self._settle(deliveries, ack=True)

    async def nack(self, deliveries: Sequence[Delivery]) -> None:
        """Hand ``deliveries`` back (``basic.nack`` with ``requeue``): RabbitMQ puts them back
        in the queue and delivers them again at once. Best effort, never raises."""
        await self._settle(deliveries, ack=False)

    async def _settle(self, deliveries: Sequence[Delivery], *, ack: bool) -> int:
        by_channel: dict[int, tuple[aiormq.abc.AbstractChannel, list[int]]] = {}
        for delivery in deliveries:
            token = delivery.token
            if not isinstance(token, _Token):
                continue
            by_channel.setdefault(id(token.channel), (token.channel, []))[1].append(token.tag)
        failed = 0
        for key, (channel, tags) in by_channel.items():
            if channel.is_closed:
                # The broker requeued them when the channel closed: it redelivers them.
                failed += len(set(tags))
                self._unsettled.pop(key, None)
                continue
            entry = self._unsettled.get(key)
            unsettled = entry[1] if entry is not None and entry[0] is channel else set()
            # A tag settled twice would make RabbitMQ close the channel: a tag settled
            # already is skipped.
            pending = sorted(set(tags) & unsettled)
            failed += await self._send_settlement(channel, pending, unsettled, ack=ack)
        return failed

    async def _send_settlement(
        self,
        channel: aiormq.abc.AbstractChannel,
        tags: list[int],
        unsettled: set[int],
        *,
        ack: bool,
    ) -> int:
        """Settle ``tags`` (sorted) on ``channel``; how many could not be settled."""
        if not tags:
            return 0
        highest = tags[-1]
        # multiple=True settles every unsettled tag up to `highest`: only when those are ours.
        whole_run = len(tags) > 1 and sum(1 for tag in unsettled if tag <= highest) == len(tags)
        sent = 0
        try:
            if whole_run:
                await self._frame(channel, highest, multiple=True, ack=ack, wait=True)
                sent = len(tags)
            else:
                for position, tag in enumerate(tags):
                    last = position == len(tags) - 1
                    await self._frame(channel, tag, multiple=False, ack=ack, wait=last)
                    sent += 1
        except Exception as exc:  # the channel closed: the broker redelivers the rest
            self.logger.warning(
                "could not %s %d message(s) of queue %s: %s",
                "acknowledge" if ack else "hand back",
                len(tags) - sent,
                self.queue_name,
                exc,
            )
        unsettled.difference_update(tags)
        return len(tags) - sent

    @staticmethod
    async def _frame(
        channel: aiormq.abc.AbstractChannel, tag: int, *, multiple: bool, ack: bool, wait: bool
    ) -> None:
        if ack:
            await channel.basic_ack(tag, multiple=multiple, wait=wait)
        else:
            await channel.basic_nack(tag, multiple=multiple, requeue=True, wait=wait)

    async def close(self) -> None:
        """Close the channel and the connection; RabbitMQ requeues what was not acknowledged."""
        channel, connection = self._channel, self._connection
        self._channel = self._connection = None
        self._buffer.clear()
        self._unsettled.clear()
        await _close(channel, connection, "subscriber")
