"""The test kit's RabbitMQ: a fresh exchange and queue per test, and the check that skips.

:func:`temporary_channel` declares a ``topic`` exchange and a queue, both named
``<prefix>-<random hex>``, the queue bound to the exchange with ``#`` (every routing key), and
deletes both on exit: the exchange is what ``publisher.topic`` names, the queue what
``inbox.subscription`` names. Its ``publish`` sends as another service would (routing key the
``event_type`` attribute, the attributes as AMQP headers), its ``pull`` reads what the relay
published.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import threading
import uuid
from collections.abc import AsyncIterator, Callable, Mapping, Sequence

import aio_pika
import aio_pika.abc

from outbox_di import config as config_module
from outbox_di import redaction
from outbox_di.brokers import rabbitmq as adapter
from outbox_di.testing.brokers import Channel, Probed

__all__ = ["RabbitMQChannel", "temporary_channel", "unavailable"]

PROBE_TIMEOUT = 2.0
"""How long :func:`unavailable` waits for RabbitMQ to accept a connection."""
DEFAULT_ROUTING_KEY = "message"
"""The routing key of a message published without an ``event_type`` attribute (``#`` takes
it like any other)."""


@dataclasses.dataclass
class RabbitMQChannel:
    """An exchange and a queue bound to it with ``#``, made for one test (a :class:`Channel`)."""

    connection: aio_pika.abc.AbstractRobustConnection
    exchange: str
    queue: str

    @property
    def topic(self) -> str:
        return self.exchange

    @property
    def subscription(self) -> str:
        return self.queue

    async def publish(self, messages: Sequence[tuple[bytes, Mapping[str, str]]]) -> None:
        """Publish ``(payload, attributes)`` pairs to the exchange, in order, each confirmed."""
        async with self.connection.channel(publisher_confirms=True) as channel:
            exchange = await channel.get_exchange(self.exchange, ensure=False)
            for payload, attributes in messages:
                message = aio_pika.Message(
                    payload,
                    headers=dict(attributes),
                    content_type=adapter.CONTENT_TYPE,
                    delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                )
                routing_key = attributes.get("event_type") or DEFAULT_ROUTING_KEY
                await exchange.publish(message, routing_key, mandatory=False, timeout=10.0)

    @contextlib.asynccontextmanager
    async def subscribe(self, prefix: str = "extra") -> AsyncIterator[str]:
        """Another queue (``<prefix>-<hex>``) bound to the exchange with ``#``, deleted on exit:
        a second consumer. It gets what is published after it was bound."""
        name = f"{prefix}-{uuid.uuid4().hex[:12]}"
        async with self.connection.channel() as channel:
            queue = await channel.declare_queue(name, durable=False, robust=False)
            await queue.bind(self.exchange, "#", robust=False)
        try:
            yield name
        finally:
            async with self.connection.channel() as channel:
                await channel.queue_delete(name)

    async def pull(
        self, done: Callable[[Sequence[Probed]], bool], within: float = 15.0
    ) -> list[Probed]:
        """Consume the queue, acknowledging each message, until ``done(received)`` or
        ``within`` seconds. What was delivered but not taken goes back to the queue when the
        channel closes."""
        received: list[Probed] = []
        arrived = asyncio.Event()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within

        async def take(message: aio_pika.abc.AbstractIncomingMessage) -> None:
            if done(received):
                return  # not acknowledged: requeued when the channel closes
            await message.ack()
            received.append(
                Probed(message.body, adapter.attributes_of(message.headers), message.message_id)
            )
            arrived.set()

        async with self.connection.channel(publisher_confirms=False) as channel:
            await channel.set_qos(prefetch_count=100)
            queue = await channel.declare_queue(self.queue, passive=True, robust=False)
            tag = await queue.consume(take, no_ack=False)
            try:
                while not done(received):
                    remaining = deadline - loop.time()
                    if remaining <= 0:
                        break
                    arrived.clear()
                    with contextlib.suppress(asyncio.TimeoutError):
                        await asyncio.wait_for(arrived.wait(), remaining)
            finally:
                with contextlib.suppress(Exception):
                    await queue.cancel(tag)
        return received


@contextlib.asynccontextmanager
async def temporary_channel(
    settings: config_module.OutboxConfig, prefix: str = "test"
) -> AsyncIterator[Channel]:
    """A fresh exchange and queue (``<prefix>-<hex>``) on ``rabbitmq.url``, deleted on exit."""
    name = f"{prefix}-{uuid.uuid4().hex[:12]}"
    connection = await adapter.connect(settings, "making a test exchange and queue")
    try:
        async with connection.channel() as channel:
            exchange = await channel.declare_exchange(
                name, aio_pika.ExchangeType.TOPIC, durable=False, robust=False
            )
            queue = await channel.declare_queue(name, durable=False, robust=False)
            await queue.bind(exchange, "#", robust=False)
        try:
            yield RabbitMQChannel(connection, name, name)
        finally:
            async with connection.channel() as channel:
                await channel.queue_delete(name)
                await channel.exchange_delete(name)
    finally:
        await connection.close()


def unavailable(settings: config_module.OutboxConfig) -> str | None:
    """Why RabbitMQ at ``rabbitmq.url`` cannot be used (it accepts no connection within 2
    seconds), or None when it can.

    Runs its own event loop in a thread, so it answers the same inside or outside a running
    loop (a synchronous skip check in an async fixture).
    """
    where = redaction.redact_dsn(settings.rabbitmq.url)
    outcome: list[str | None] = []

    async def probe() -> str | None:
        try:
            connection = await asyncio.wait_for(
                aio_pika.connect(settings.rabbitmq.url, timeout=PROBE_TIMEOUT),
                PROBE_TIMEOUT,
            )
        except (asyncio.TimeoutError, Exception) as exc:
            reason = redaction.redact_text(str(exc) or type(exc).__name__, settings.rabbitmq.url)
            return f"RabbitMQ does not answer at {where} ({reason})"
        await connection.close()
        return None

    def run() -> None:
        outcome.append(asyncio.run(probe()))

    thread = threading.Thread(target=run, name="outbox-di-rabbitmq-probe", daemon=True)
    thread.start()
    thread.join(PROBE_TIMEOUT + 2.0)
    if not outcome:
        return f"RabbitMQ does not answer at {where} (no answer within {PROBE_TIMEOUT:g}s)"
    return outcome[0]
