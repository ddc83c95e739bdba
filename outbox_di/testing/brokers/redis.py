"""The test kit on Redis Streams: a fresh stream with a consumer group, deleted afterwards.

:func:`temporary_channel` makes a stream key ``<prefix>:<random hex>`` and a group on it,
created from id 0 so that nothing published before a test reads it is missed. The channel's
``publish`` writes entries as the relay does (the ``payload`` and ``attributes`` fields) and its
``pull`` reads them as one more consumer of the group, acknowledging each. The inbox under test
and ``pull`` share the group, so a test uses one or the other on one channel.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import secrets
from collections.abc import AsyncIterator, Callable, Mapping, Sequence

import redis as sync_redis
import redis.asyncio as aioredis
from redis.backoff import NoBackoff
from redis.retry import Retry

from outbox_di import config as config_module
from outbox_di import redaction
from outbox_di.brokers import redis as redis_broker
from outbox_di.testing.brokers import Probed

__all__ = ["RedisChannel", "temporary_channel", "unavailable"]

_PROBE_TIMEOUT = 2.0


@dataclasses.dataclass
class RedisChannel:
    """A stream key and a consumer group on it (see the module docstring)."""

    client: aioredis.Redis
    stream: str
    group: str

    @property
    def topic(self) -> str:
        return self.stream

    @property
    def subscription(self) -> str:
        return f"{self.stream}/{self.group}"

    async def publish(self, messages: Sequence[tuple[bytes, Mapping[str, str]]]) -> None:
        """``XADD`` each ``(payload, attributes)`` pair in order, in one pipeline; raises if
        Redis refused any."""
        if not messages:
            return
        pipeline = self.client.pipeline(transaction=False)
        for payload, attributes in messages:
            pipeline.xadd(self.stream, redis_broker.entry_fields(payload, attributes))
        await pipeline.execute()

    @contextlib.asynccontextmanager
    async def subscribe(self, prefix: str = "extra") -> AsyncIterator[str]:
        """Another consumer group on the stream, from its end (``$``), as ``stream/group``;
        destroyed on exit."""
        group = f"{prefix}-{secrets.token_hex(6)}"
        await self.client.xgroup_create(self.stream, group, id="$", mkstream=True)
        try:
            yield f"{self.stream}/{group}"
        finally:
            with contextlib.suppress(aioredis.RedisError):
                await self.client.xgroup_destroy(self.stream, group)

    async def pull(
        self, done: Callable[[Sequence[Probed]], bool], within: float = 15.0
    ) -> list[Probed]:
        """Read new entries as a probe consumer of the group, acknowledging each, until
        ``done(received)`` or ``within`` seconds."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        consumer = f"probe-{secrets.token_hex(4)}"
        received: list[Probed] = []
        try:
            while not done(received):
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                reply = await self.client.xreadgroup(
                    self.group,
                    consumer,
                    {self.stream: ">"},
                    count=100,
                    block=max(1, round(min(remaining, 0.5) * 1000)),
                )
                ids = []
                for raw_id, fields in redis_broker.stream_entries(reply):
                    entry_id = raw_id.decode() if isinstance(raw_id, bytes) else str(raw_id)
                    fields = fields or {}
                    payload = fields.get(redis_broker.PAYLOAD_FIELD.encode(), b"")
                    attributes = redis_broker.entry_attributes(entry_id, fields)
                    received.append(Probed(payload, attributes, entry_id))
                    ids.append(entry_id)
                if ids:
                    await self.client.xack(self.stream, self.group, *ids)
        finally:
            with contextlib.suppress(Exception):
                await self.client.xgroup_delconsumer(self.stream, self.group, consumer)
        return received


@contextlib.asynccontextmanager
async def temporary_channel(
    settings: config_module.OutboxConfig, prefix: str = "test"
) -> AsyncIterator[RedisChannel]:
    """A fresh stream ``<prefix>:<hex>`` with a group created from id 0 (``MKSTREAM``); the
    key is deleted on exit."""
    client = redis_broker.connect(settings)
    token = secrets.token_hex(6)
    stream = f"{prefix}:{token}"
    group = f"group-{token}"
    try:
        await client.xgroup_create(stream, group, id="0", mkstream=True)
        try:
            yield RedisChannel(client, stream, group)
        finally:
            await client.delete(stream)
    finally:
        await client.aclose()


def unavailable(settings: config_module.OutboxConfig) -> str | None:
    """Why Redis at ``redis.url`` cannot be used for tests (it does not answer a ``PING``
    within 2 s), or None when it can."""
    where = redis_broker.endpoint(settings)
    try:
        client = sync_redis.Redis.from_url(
            settings.redis.url,
            socket_connect_timeout=_PROBE_TIMEOUT,
            socket_timeout=_PROBE_TIMEOUT,
            retry=Retry(NoBackoff(), 0),  # one try: the answer comes within the 2 s
        )
    except ValueError as exc:
        return f"redis.url is not a Redis URL ({exc})"
    try:
        client.ping()
    except sync_redis.RedisError as exc:
        reason = redaction.redact_text(str(exc) or type(exc).__name__, settings.redis.url)
        return f"Redis does not answer at {where}: {reason}"
    finally:
        client.close()
    return None
