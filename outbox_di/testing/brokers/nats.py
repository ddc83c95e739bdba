"""The test kit on NATS JetStream: a fresh stream and durable pull consumer for one test.

:func:`temporary_channel` adds a stream ``<PREFIX>_<HEX>`` capturing one subject
``<prefix>.<hex>`` (stream names cannot hold '.'), and a durable pull consumer ``inbox`` on it
with explicit acknowledgement and an ``ack_wait`` of :data:`ACK_WAIT` seconds, so a test that
leaves a message unacknowledged sees it again soon. Deleting the stream on exit deletes the
consumer and the messages with it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import re
import time
import uuid
from collections.abc import AsyncIterator, Callable, Mapping, Sequence

import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.js import JetStreamContext, api

from outbox_di import config as config_module
from outbox_di.brokers import nats as nats_broker
from outbox_di.testing.brokers import Channel, Probed

__all__ = ["ACK_WAIT", "DURABLE", "NatsChannel", "temporary_channel", "unavailable"]

ACK_WAIT = 5.0
"""Seconds the temporary consumer waits for an acknowledgement before redelivering."""
DURABLE = "inbox"
"""The durable consumer's name: a channel's subscription is ``<stream>/inbox``."""
_PROBE_TIMEOUT = 2.0
_REQUEST_TIMEOUT = 10.0


class NatsChannel:
    """A stream, its subject and a durable pull consumer on it (a :class:`Channel`)."""

    def __init__(self, client: Client, stream: str, subject: str) -> None:
        self.client = client
        self.js: JetStreamContext = client.jetstream(timeout=_REQUEST_TIMEOUT)
        self.stream = stream
        self.subject = subject
        self._pulling: JetStreamContext.PullSubscription | None = None

    @property
    def topic(self) -> str:
        return self.subject

    @property
    def subscription(self) -> str:
        return f"{self.stream}/{DURABLE}"

    async def publish(self, messages: Sequence[tuple[bytes, Mapping[str, str]]]) -> None:
        """Publish each message with its attributes as headers, waiting for each PubAck.

        Raises ``ValueError`` for a message NATS cannot carry as it is (a header name outside
        the header-name characters, a value with a line break or leading or trailing spaces,
        which the client would rewrite, or one over the server's ``max_payload``), rather than
        let a test pass on what was silently changed."""
        for payload, attributes in messages:
            headers = dict(attributes)
            problem = nats_broker.message_problem(headers, payload, self.client.max_payload)
            if problem is not None:
                raise ValueError(f"NATS cannot carry this message as it is: {problem}")
            await self.js.publish(
                self.subject, payload, timeout=_REQUEST_TIMEOUT, headers=headers or None
            )

    @contextlib.asynccontextmanager
    async def subscribe(self, prefix: str = "extra") -> AsyncIterator[str]:
        """Another durable pull consumer (``<prefix>_<hex>``) on the stream, deleted on exit: a
        second subscription. It delivers only what is published after it was made."""
        durable = f"{_token(prefix)}_{uuid.uuid4().hex[:12]}"
        await self.js.add_consumer(
            self.stream,
            api.ConsumerConfig(
                durable_name=durable,
                ack_policy=api.AckPolicy.EXPLICIT,
                ack_wait=ACK_WAIT,
                deliver_policy=api.DeliverPolicy.NEW,
            ),
        )
        try:
            yield f"{self.stream}/{durable}"
        finally:
            with contextlib.suppress(Exception):
                await self.js.delete_consumer(self.stream, durable)

    async def pull(
        self, done: Callable[[Sequence[Probed]], bool], within: float = 15.0
    ) -> list[Probed]:
        """Fetch from the consumer (acknowledging each message) until ``done`` or ``within``
        seconds; attributes are the headers without the ``Nats-…`` ones NATS uses."""
        if self._pulling is None:
            self._pulling = await self.js.pull_subscribe_bind(DURABLE, self.stream)
        received: list[Probed] = []
        deadline = time.monotonic() + within
        while not done(received):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            try:
                messages = await self._pulling.fetch(batch=100, timeout=min(1.0, remaining))
            except asyncio.TimeoutError:  # nats-py raises its own subclass, or asyncio's
                continue
            for message in messages:
                await message.ack()
                received.append(
                    Probed(
                        payload=message.data,
                        attributes=nats_broker.broker_headers(message.headers),
                        message_id=f"{self.stream}:{message.metadata.sequence.stream}",
                    )
                )
        await self.client.flush()
        return received


def _token(prefix: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]+", "_", prefix).strip("_") or "test"


@contextlib.asynccontextmanager
async def temporary_channel(
    settings: config_module.OutboxConfig, prefix: str = "test"
) -> AsyncIterator[Channel]:
    """A fresh stream and consumer on the servers of ``settings.nats``, deleted on exit."""
    client = await nats_broker.connect(settings, "test kit")
    try:
        js = client.jetstream(timeout=_REQUEST_TIMEOUT)
        unique = uuid.uuid4().hex[:12]
        stream = f"{_token(prefix).upper()}_{unique.upper()}"
        subject = f"{_token(prefix).lower()}.{unique}"
        await js.add_stream(name=stream, subjects=[subject])
        try:
            await js.add_consumer(
                stream,
                api.ConsumerConfig(
                    durable_name=DURABLE, ack_policy=api.AckPolicy.EXPLICIT, ack_wait=ACK_WAIT
                ),
            )
            yield NatsChannel(client, stream, subject)
        finally:
            with contextlib.suppress(Exception):
                await js.delete_stream(stream)
    finally:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(client.close(), _PROBE_TIMEOUT)


async def _probe(settings: config_module.OutboxConfig) -> str | None:
    client = Client()
    seen: list[BaseException] = []

    async def on_error(exc: Exception) -> None:
        seen[:] = [exc]

    try:
        await asyncio.wait_for(
            client.connect(
                servers=nats_broker.server_list(settings),
                allow_reconnect=False,
                max_reconnect_attempts=0,
                error_cb=on_error,
            ),
            _PROBE_TIMEOUT,
        )
        await client.jetstream(timeout=_PROBE_TIMEOUT).account_info()
    except nats.js.errors.ServiceUnavailableError:
        return (
            f"NATS at {nats_broker.describe_servers(settings)} answers but JetStream is not "
            "enabled (start nats-server with -js)"
        )
    except (asyncio.TimeoutError, OSError, nats.errors.Error) as caught:
        exc = seen[0] if seen else caught
        reason = type(exc).__name__ if not str(exc) else f"{type(exc).__name__}: {exc}"
        reason = nats_broker.redact(reason, settings)
        return (
            f"NATS JetStream does not answer at {nats_broker.describe_servers(settings)} "
            f"within {_PROBE_TIMEOUT:g}s ({reason})"
        )
    finally:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(client.close(), _PROBE_TIMEOUT)
    return None


def unavailable(settings: config_module.OutboxConfig) -> str | None:
    """Why NATS JetStream at ``nats.servers`` cannot be used for tests (it does not answer
    within 2 s, or JetStream is off), or None when it can. Runs its own event loop in a
    thread, so it may be called from inside a running loop (a test's fixture)."""
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, _probe(settings)).result()
