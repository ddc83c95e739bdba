"""``RedisPublisher`` and ``RedisSubscriber``: the two broker ports on Redis Streams.

A topic is a stream key and the inbox's subscription is a consumer group on one stream, written
``<stream key>/<group>`` (split at the last ``/``, since a key may itself hold one). Every entry
carries two fields: ``payload``, the event's bytes as they are, and ``attributes``, a JSON object
of strings (:func:`~outbox_di.brokers.ports.event_attributes`). Keeping the attributes in a field
of their own means a header can never collide with the payload's field name.

The publisher sends each claimed batch as one pipeline of ``XADD`` on one connection (no
``MULTI``): the entries land in the order of the batch, and each reply is that event's outcome,
so an error reply fails its event alone. An entry id in the reply means Redis has appended it:
that is the only word the outcome waits for. A value longer than the server's
``proto-max-bulk-len`` (512 MB unless raised) would not get an error reply: Redis drops the
whole connection, failing every event of the batch, so such an event is refused before sending,
permanently.

The subscriber reads with ``XREADGROUP`` under a consumer name of its own (host, process,
random), so two instances never share one's pending entries. What a delivery leaves in the
group's pending list until ``XACK`` is what makes nothing get lost: entries handed back with
:meth:`RedisSubscriber.nack` are claimed again by this instance on its next ``receive``; entries
a dead instance left behind are taken over with ``XAUTOCLAIM`` once idle ``redis.claim_idle``;
and entries a cancelled or failed ``receive`` had already moved to this consumer are found again
by re-reading its own pending list.

Both classes create their client in ``start()``, inside the running event loop, and check what
the configuration names within ``redis.connect_timeout``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import secrets
import socket
from collections.abc import Awaitable, Mapping, Sequence
from typing import Any, TypeVar

import redis.asyncio as aioredis
from redis import exceptions as redis_exceptions

from outbox_di import brokers, errors, models, observability, redaction
from outbox_di import config as config_module
from outbox_di.brokers import routing, startup
from outbox_di.brokers.ports import Delivery, PublishOutcome, event_attributes, received_message

__all__ = [
    "ATTRIBUTES_FIELD",
    "DEFAULT_MAX_VALUE_BYTES",
    "PAYLOAD_FIELD",
    "RedisPublisher",
    "RedisSubscriber",
    "connect",
    "decode_attributes",
    "encode_attributes",
    "endpoint",
    "entry_attributes",
    "entry_fields",
    "entry_message",
    "group_create_command",
    "split_subscription",
    "stream_entries",
]

PAYLOAD_FIELD = "payload"
"""The entry field that holds the event's payload, as bytes."""
ATTRIBUTES_FIELD = "attributes"
"""The entry field that holds the event's attributes, as a JSON object of strings."""
DEFAULT_MAX_VALUE_BYTES = 512 * 1024 * 1024
"""Redis's default ``proto-max-bulk-len``: the longest value one command argument may be. The
publisher reads the server's own setting at start and keeps this when it cannot."""

_PAYLOAD_KEY = PAYLOAD_FIELD.encode()
_ATTRIBUTES_KEY = ATTRIBUTES_FIELD.encode()
_STREAM_TYPES = {"stream", "none"}  # "none": the key does not exist yet, XADD creates it
_NO_MORE = "0-0"  # the cursor XAUTOCLAIM returns when it has scanned the whole pending list

_T = TypeVar("_T")


# --- what both sides share ---------------------------------------------------------------


def endpoint(settings: config_module.OutboxConfig) -> str:
    """``redis.url`` without its password, for messages and logs."""
    return redaction.redact_dsn(settings.redis.url)


def connect(settings: config_module.OutboxConfig) -> aioredis.Redis:
    """A client for ``redis.url``; it connects on first use, within ``redis.connect_timeout``.

    Responses stay bytes (``decode_responses=False``): a payload is carried as it is, and
    entry ids and field names are decoded where they are read.
    """
    try:
        client: aioredis.Redis = aioredis.from_url(
            settings.redis.url,
            socket_connect_timeout=settings.redis.connect_timeout,
            decode_responses=False,
        )
    except ValueError as exc:  # a port that is not a number, an unknown query option
        reason = redaction.redact_text(str(exc), settings.redis.url)
        raise errors.ConfigError(
            [
                f"redis.url: not a Redis URL the client accepts ({reason}), "
                f"got {endpoint(settings)!r}"
            ]
        ) from exc
    return client


def _reason(exc: BaseException, settings: config_module.OutboxConfig) -> str:
    text = str(exc) or type(exc).__name__
    return redaction.redact_text(text, settings.redis.url)


async def _startup_call(settings: config_module.OutboxConfig, call: Awaitable[_T], what: str) -> _T:
    """``call`` bounded by ``redis.connect_timeout``; a Redis that does not answer (or refuses
    the connection) becomes :class:`~outbox_di.errors.BrokerUnavailableError` naming the
    endpoint, refused credentials a :class:`~outbox_di.errors.ConfigError` naming
    ``redis.url``. Any other error (a :class:`~outbox_di.errors.ConfigError` of a check) passes
    through."""
    timeout = settings.redis.connect_timeout
    where = endpoint(settings)
    try:
        # A stop requested meanwhile (outbox-di worker got SIGTERM) ends the wait at once.
        return await startup.abortable(asyncio.wait_for(call, timeout), what)
    except redis_exceptions.AuthenticationError as exc:
        raise errors.ConfigError(
            [
                f"redis.url: Redis at {where} refused the credentials while {what} "
                f"({_reason(exc, settings)}); give the right user and password in redis.url "
                "(redis://user:password@host:6379/0)"
            ]
        ) from exc
    except (
        redis_exceptions.ConnectionError,
        redis_exceptions.TimeoutError,
        asyncio.TimeoutError,
        OSError,
    ) as exc:
        reason = _reason(exc, settings) if not isinstance(exc, asyncio.TimeoutError) else "no reply"
        raise errors.BrokerUnavailableError(
            where,
            timeout,
            f"Redis did not answer at {where} within redis.connect_timeout ({timeout:g}s) while "
            f"{what} ({reason}); start Redis there, or point redis.url at the one that runs; "
            "raise redis.connect_timeout if it is only slow to answer",
        ) from exc


def _text(value: bytes | str) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


def encode_attributes(attributes: Mapping[str, str]) -> bytes:
    """``attributes`` as the entry's ``attributes`` field: compact UTF-8 JSON.

    Non-ASCII text is written as it is, so the entry reads well in ``redis-cli``; a string that
    UTF-8 cannot carry (a lone surrogate) is written with ``\\u`` escapes instead, so encoding
    never fails.
    """
    try:
        return json.dumps(attributes, ensure_ascii=False, separators=(",", ":")).encode()
    except UnicodeEncodeError:
        return json.dumps(attributes, separators=(",", ":")).encode()


def entry_fields(payload: bytes, attributes: Mapping[str, str]) -> dict[Any, Any]:
    """The two fields of the entry that carries ``payload`` and ``attributes``."""
    return {PAYLOAD_FIELD: payload, ATTRIBUTES_FIELD: encode_attributes(attributes)}


def decode_attributes(raw: bytes, entry_id: str = "") -> dict[str, str]:
    """The ``attributes`` field read back, tolerantly.

    A service may ``XADD`` by hand, so a field that is not a JSON object of strings is not an
    error: string values are kept, other JSON values are kept as their JSON text, and a field
    that is not a JSON object gives no attributes (with a warning). The message is delivered in
    every case; the inbox decides what to do with an event that has no type.
    """
    try:
        value = json.loads(raw.decode("utf-8", "replace"))
    except ValueError:
        observability.logger.warning(
            "redis entry %s: its attributes field is not JSON; delivering it without attributes",
            entry_id,
        )
        return {}
    if not isinstance(value, dict):
        observability.logger.warning(
            "redis entry %s: its attributes field is not a JSON object (%s); delivering it "
            "without attributes",
            entry_id,
            type(value).__name__,
        )
        return {}
    return {
        key: item if isinstance(item, str) else json.dumps(item, separators=(",", ":"))
        for key, item in value.items()
    }


def entry_attributes(entry_id: str, fields: Mapping[bytes, bytes]) -> dict[str, str]:
    """The attributes one stream entry carries: its ``attributes`` field, or, for an entry
    without one (written by hand, ``XADD s * event_type x payload y``), its other fields."""
    raw = fields.get(_ATTRIBUTES_KEY)
    if raw is not None:
        return decode_attributes(raw, entry_id)
    return {_text(key): _text(value) for key, value in fields.items() if key != _PAYLOAD_KEY}


def entry_message(entry_id: str, fields: Mapping[bytes, bytes]) -> models.ReceivedMessage:
    """The :class:`~outbox_di.models.ReceivedMessage` of one stream entry: the ``payload``
    field (empty when there is none) and :func:`entry_attributes`. The entry id is the message
    id, and the event id when the attributes carry none."""
    payload = fields.get(_PAYLOAD_KEY, b"")
    return received_message(entry_attributes(entry_id, fields), payload, entry_id)


def split_subscription(subscription: str) -> tuple[str, str]:
    """``(stream key, group)`` of ``<stream key>/<group>``, split at the last ``/``."""
    stream, _, group = subscription.rpartition("/")
    if not stream or not group:
        raise errors.ConfigError(
            [
                f"inbox.subscription: must be '<stream key>/<group>' for broker 'redis', "
                f"got {subscription!r}"
            ]
        )
    return stream, group


def group_create_command(stream: str, group: str) -> str:
    """The ``redis-cli`` command that creates ``group`` on ``stream`` (and the stream)."""
    return f"XGROUP CREATE {stream} {group} $ MKSTREAM"


# --- the publisher -------------------------------------------------------------------------


async def _value_limit(client: aioredis.Redis, logger: logging.Logger) -> int:
    """The server's ``proto-max-bulk-len``, or the default when ``CONFIG GET`` is refused (a
    managed Redis often renames or forbids it)."""
    try:
        reply: Any = await client.config_get("proto-max-bulk-len")
        return int(_text(reply["proto-max-bulk-len"]))
    except (redis_exceptions.ResponseError, KeyError, TypeError, ValueError) as exc:
        logger.info(
            "cannot read proto-max-bulk-len from Redis (%s); assuming its default, %d bytes",
            exc,
            DEFAULT_MAX_VALUE_BYTES,
        )
        return DEFAULT_MAX_VALUE_BYTES


class RedisPublisher:
    """Publishes outbox events to Redis streams (see the module docstring).

    ``publisher.ordering`` needs nothing more here: a batch is one pipeline on one connection,
    which Redis executes in order. ``redis.max_length`` trims each stream to about that many
    entries on every ``XADD`` (``MAXLEN ~``, cheap); unset, streams keep every entry.
    """

    def __init__(
        self,
        settings: config_module.OutboxConfig,
        client: aioredis.Redis | None = None,
        logger: logging.Logger | None = None,
    ) -> None:
        self.settings = settings
        self.router = routing.TopicRouter(settings)
        self.timeout = settings.publisher.publish_timeout
        self.max_length = settings.redis.max_length
        self.max_value_bytes = DEFAULT_MAX_VALUE_BYTES
        """The longest payload (or attributes field) sent; read from the server at start."""
        self.logger = logger or observability.logger
        self._client = client
        self._owns_client = client is None
        self._started = False

    @property
    def client(self) -> aioredis.Redis:
        if self._client is None:
            raise errors.OutboxError("RedisPublisher.start() must run before publishing")
        return self._client

    async def start(self) -> None:
        """Create the client (in this event loop) and check the configured streams.

        Within ``redis.connect_timeout``: Redis answers a ``PING`` (else
        :class:`~outbox_di.errors.BrokerUnavailableError`), and no configured key holds
        something other than a stream (else :class:`~outbox_di.errors.ConfigError` naming the
        key). A stream that does not exist yet is fine: the first ``XADD`` creates it. A start
        that fails (or is cancelled) closes the client it created. Idempotent.
        """
        if self._started:
            return
        if self._client is None:
            self._client = connect(self.settings)
        try:
            await _startup_call(self.settings, self._check(), "checking the publisher's streams")
        except BaseException:
            await self.close()
            raise
        self._started = True

    async def _check(self) -> None:
        client = self.client
        topics = self.router.configured()
        self.logger.info(
            "checking streams on %s (within %gs): %s",
            endpoint(self.settings),
            self.settings.redis.connect_timeout,
            ", ".join(sorted(set(topics.values()))) or "(none)",
        )
        await client.ping()
        self.max_value_bytes = await _value_limit(client, self.logger)
        problems: list[str] = []
        for key, stream in topics.items():
            try:
                kind = _text(await client.type(stream))
            except redis_exceptions.NoPermissionError:
                # A user allowed XADD alone may not run TYPE: publishing will tell.
                self.logger.warning(
                    "cannot check that %s is a stream (no permission); continuing", stream
                )
                continue
            if kind not in _STREAM_TYPES:
                problems.append(
                    f"{key}: Redis key {stream!r} holds a {kind}, not a stream; name another "
                    "key, or delete this one if it is left over"
                )
            elif kind == "none":
                self.logger.info("stream %s does not exist yet: the first XADD creates it", stream)
        if problems:
            raise errors.ConfigError(problems)

    async def close(self) -> None:
        if self._client is not None and self._owns_client:
            await self._client.aclose()
            self._client = None
        self._started = False

    def _size_problem(self, event: models.OutboxEvent, attributes: bytes) -> str | None:
        limit = self.max_value_bytes
        for what, size in (("payload", len(event.payload)), ("attributes", len(attributes))):
            if size > limit:
                return (
                    f"the {what} is {size} bytes, over the {limit} bytes Redis takes in one "
                    "value (proto-max-bulk-len); Redis would drop the connection, so the event "
                    "is not sent"
                )
        return None

    async def publish(self, events: Sequence[models.OutboxEvent]) -> Sequence[PublishOutcome]:
        """One ``XADD`` per event, all in one pipeline; one outcome per event, in order.

        Never raises for a broker problem: a lost connection or no reply within
        ``publisher.publish_timeout`` fails every event sent (some may have been appended:
        the retry then publishes them again, and the inbox drops the duplicates by event id).
        """
        outcomes: list[PublishOutcome | None] = [None] * len(events)
        sent: list[int] = []
        pipeline = self.client.pipeline(transaction=False)
        max_length = self.max_length
        for index, event in enumerate(events):
            stream = self.router.topic_for(event)
            if stream is None:
                outcomes[index] = routing.unrouted(event)
                continue
            attributes = encode_attributes(event_attributes(event))
            problem = self._size_problem(event, attributes)
            if problem is not None:
                outcomes[index] = PublishOutcome(error=problem, permanent=True)
                continue
            fields: dict[Any, Any] = {
                PAYLOAD_FIELD: event.payload,
                ATTRIBUTES_FIELD: attributes,
            }
            pipeline.xadd(stream, fields, maxlen=max_length, approximate=True)
            sent.append(index)
        if sent:
            await self._send(pipeline, sent, outcomes)
        return [
            outcome if outcome is not None else PublishOutcome(error="not published")
            for outcome in outcomes
        ]

    async def _send(
        self, pipeline: Any, sent: Sequence[int], outcomes: list[PublishOutcome | None]
    ) -> None:
        try:
            replies = await asyncio.wait_for(pipeline.execute(raise_on_error=False), self.timeout)
        except asyncio.TimeoutError:
            error = f"no reply from Redis within publisher.publish_timeout ({self.timeout:g}s)"
            for index in sent:
                outcomes[index] = PublishOutcome(error=error)
            return
        except Exception as exc:  # a lost connection, a refused command
            error = f"{type(exc).__name__}: {_reason(exc, self.settings)}"
            for index in sent:
                outcomes[index] = PublishOutcome(error=error)
            return
        for index, reply in zip(sent, replies, strict=True):
            if isinstance(reply, Exception):
                # OOM, WRONGTYPE (the key was replaced), NOPERM, READONLY: retried later.
                outcomes[index] = PublishOutcome(error=f"Redis refused the entry: {reply}")
            else:
                outcomes[index] = PublishOutcome(message_id=_text(reply))


# --- the subscriber ------------------------------------------------------------------------


def stream_entries(reply: Any) -> list[Any]:
    """The ``(id, fields)`` entries of the one stream an ``XREADGROUP`` read, whichever shape
    the client gives its reply (a list of ``[stream, entries]`` under RESP2, a mapping of
    stream to entries under RESP3, ``protocol=3`` in the URL)."""
    if not reply:
        return []
    if isinstance(reply, Mapping):
        entries: Any = next(iter(reply.values()), [])
        if entries and isinstance(entries[0], list):  # some versions wrap the list once more
            entries = entries[0]
        return list(entries)
    return list(reply[0][1])


def _consumer_name() -> str:
    """A consumer name no other instance has: host, process id and a random part."""
    return f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(4)}"


class RedisSubscriber:
    """Receives one consumer group of one stream (see the module docstring).

    Calls to :meth:`receive` are serialized (one reads at a time): what each has taken from
    Redis must be known before another looks for entries this consumer holds but never handed
    out. Settling (:meth:`ack`, :meth:`nack`) does not wait for a read.
    """

    def __init__(
        self,
        settings: config_module.OutboxConfig,
        client: aioredis.Redis | None = None,
        logger: logging.Logger | None = None,
    ) -> None:
        subscription = brokers.subscription_of(settings)
        self.settings = settings
        self.subscription = subscription
        self.stream, self.group = split_subscription(subscription)
        self.consumer = _consumer_name()
        self.claim_idle = settings.redis.claim_idle
        self.call_timeout = settings.redis.connect_timeout
        self.logger = logger or observability.logger
        self.ack_failures = 0
        """Deliveries whose ``XACK`` failed since start (each is redelivered)."""
        self._client = client
        self._owns_client = client is None
        self._lock = asyncio.Lock()
        # Entry ids handed out and not settled yet: never handed out again meanwhile.
        self._outstanding: set[str] = set()
        # Entry ids handed back by nack(), in order: claimed again first by the next receive.
        self._nacked: dict[str, None] = {}
        # Where to resume re-reading this consumer's own pending list; None: nothing to look for.
        self._recover_from: str | None = None
        self._claim_cursor = _NO_MORE
        self._next_claim = 0.0
        self._started = False

    @property
    def name(self) -> str:
        return self.subscription

    @property
    def client(self) -> aioredis.Redis:
        if self._client is None:
            raise errors.OutboxError("RedisSubscriber.start() must run before receiving")
        return self._client

    async def start(self) -> None:
        """Create the client (in this event loop) and check that the group exists on its
        stream, within ``redis.connect_timeout``. A missing stream or group is a
        :class:`~outbox_di.errors.ConfigError` naming ``inbox.subscription`` and giving the
        command that creates it. A start that fails (or is cancelled) closes the client.
        Idempotent."""
        if self._started:
            return
        if self._client is None:
            self._client = connect(self.settings)
        try:
            await _startup_call(
                self.settings,
                self._check(),
                f"checking that consumer group {self.subscription!r} exists",
            )
        except BaseException:
            await self._close_client()
            raise
        self._started = True
        self.logger.info(
            "receiving %s on %s as consumer %s",
            self.subscription,
            endpoint(self.settings),
            self.consumer,
        )

    async def _check(self) -> None:
        client = self.client
        await client.ping()
        create = group_create_command(self.stream, self.group)
        try:
            groups = await client.xinfo_groups(self.stream)
        except redis_exceptions.NoPermissionError:
            self.logger.warning(
                "cannot check that group %s exists (no permission); continuing", self.subscription
            )
            return
        except redis_exceptions.ResponseError as exc:
            text = str(exc)
            if "no such key" in text.lower():
                problem = (
                    f"stream {self.stream!r} does not exist, so neither does group "
                    f"{self.group!r}; create both with: {create}"
                )
            elif text.startswith("WRONGTYPE"):
                problem = f"Redis key {self.stream!r} is not a stream ({text})"
            else:
                raise
            raise errors.ConfigError([f"inbox.subscription: {problem}"]) from exc
        names = {_text(group.get("name") or b"") for group in groups}
        if self.group not in names:
            raise errors.ConfigError(
                [
                    f"inbox.subscription: stream {self.stream!r} has no consumer group "
                    f"{self.group!r}; create it with: {create} (or with 0 instead of $ to "
                    "deliver the entries already in the stream)"
                ]
            )

    async def receive(self, max_messages: int, timeout: float) -> Sequence[Delivery]:
        """Up to ``max_messages`` deliveries, in this order: entries this instance handed
        back, entries it holds but never handed out (a cancelled call's), entries idle
        ``redis.claim_idle`` in a dead consumer (``XAUTOCLAIM``, looked for at most every
        ``claim_idle / 2`` while none are found), then new entries (``XREADGROUP >``),
        waiting up to ``timeout`` for them only when nothing else was found.

        Raises :class:`~outbox_di.errors.BrokerError` on a broker failure. Cancelled or
        failed, it loses nothing: whatever it had moved to this consumer is found again by
        the next call.
        """
        if max_messages < 1:
            return []
        async with self._lock:
            found: list[Delivery] = []
            try:
                await self._call(self._collect(found, max_messages, timeout), timeout)
            except BaseException:
                # What was taken but is not returned is in this consumer's pending list.
                self._recover_from = "0"
                raise
            for delivery in found:
                self._outstanding.add(delivery.token)
                self._nacked.pop(delivery.token, None)
            return found

    async def _call(self, call: Awaitable[None], timeout: float) -> None:
        try:
            await asyncio.wait_for(call, timeout + self.call_timeout)
        except asyncio.TimeoutError as exc:
            raise errors.BrokerError(
                f"Redis did not answer {self.subscription!r} within "
                f"{timeout + self.call_timeout:g}s (the receive timeout plus "
                "redis.connect_timeout)"
            ) from exc
        except redis_exceptions.RedisError as exc:
            text = _reason(exc, self.settings)
            if text.startswith("NOGROUP"):
                text += f"; create it again with: {group_create_command(self.stream, self.group)}"
            raise errors.BrokerError(
                f"reading {self.subscription!r} failed ({type(exc).__name__}: {text})"
            ) from exc

    async def _collect(self, found: list[Delivery], room: int, timeout: float) -> None:
        seen: set[str] = set()
        deleted: list[str] = []
        if self._nacked:
            await self._claim_nacked(found, seen, deleted, room)
        if self._recover_from is not None and len(found) < room:
            await self._recover(found, seen, deleted, room)
        if len(found) < room and asyncio.get_running_loop().time() >= self._next_claim:
            await self._autoclaim(found, seen, deleted, room)
        if len(found) < room:
            block = None if found else max(1, round(timeout * 1000))
            reply = await self.client.xreadgroup(
                self.group,
                self.consumer,
                {self.stream: ">"},
                count=room - len(found),
                block=block,
            )
            self._add(stream_entries(reply), found, seen, deleted, room)
        if deleted:
            # Placeholders of entries deleted from the stream while pending: settle them.
            await self.client.xack(self.stream, self.group, *deleted)

    def _add(
        self,
        entries: Sequence[Any],
        found: list[Delivery],
        seen: set[str],
        deleted: list[str],
        room: int,
    ) -> None:
        for raw_id, fields in entries:
            if raw_id is None:
                continue
            entry_id = _text(raw_id)
            if entry_id in self._outstanding or entry_id in seen:
                continue  # still with the receiver, or already in this batch
            if not fields:
                deleted.append(entry_id)  # every entry has a field; none: deleted while pending
                self._nacked.pop(entry_id, None)
                continue
            if len(found) >= room:
                self._recover_from = "0"  # still pending with this consumer: found again later
                continue
            seen.add(entry_id)
            message = entry_message(entry_id, fields)
            found.append(Delivery(message=message, size=len(message.payload), token=entry_id))

    async def _claim_nacked(
        self, found: list[Delivery], seen: set[str], deleted: list[str], room: int
    ) -> None:
        ids: list[Any] = list(self._nacked)[:room]
        # XCLAIM to this same consumer: returns the entries still pending and existing; Redis
        # drops the ids of deleted entries from the pending list itself.
        claimed = await self.client.xclaim(self.stream, self.group, self.consumer, 0, ids)
        for entry_id in ids:
            self._nacked.pop(entry_id, None)
        self._add(claimed, found, seen, deleted, room)

    async def _recover(
        self, found: list[Delivery], seen: set[str], deleted: list[str], room: int
    ) -> None:
        """Re-read this consumer's own pending list (``XREADGROUP`` from an id) for entries
        taken from Redis but never handed out, skipping those with the receiver."""
        cursor = self._recover_from or "0"
        page = max(room, 100)
        while len(found) < room:
            reply = await self.client.xreadgroup(
                self.group, self.consumer, {self.stream: cursor}, count=page
            )
            entries = stream_entries(reply)
            if not entries:
                self._recover_from = None
                return
            for raw_id, fields in entries:
                if len(found) >= room:
                    break
                self._add([(raw_id, fields)], found, seen, deleted, room)
                cursor = _text(raw_id)
            self._recover_from = cursor

    async def _autoclaim(
        self, found: list[Delivery], seen: set[str], deleted: list[str], room: int
    ) -> None:
        reply: Any = await self.client.xautoclaim(
            self.stream,
            self.group,
            self.consumer,
            max(1, round(self.claim_idle * 1000)),
            start_id=self._claim_cursor,
            count=room - len(found),
        )
        cursor = _text(reply[0])
        self._claim_cursor = cursor
        if cursor == _NO_MORE:
            # The whole pending list was scanned: look again in half the idle time.
            self._next_claim = asyncio.get_running_loop().time() + self.claim_idle / 2
        claimed = reply[1]
        if claimed:
            self.logger.info(
                "%s: took over %d entries idle for %gs in another consumer",
                self.subscription,
                len(claimed),
                self.claim_idle,
            )
        self._add(claimed, found, seen, deleted, room)

    async def ack(self, deliveries: Sequence[Delivery]) -> int:
        """One ``XACK`` for every delivery; how many failed (on a broker failure, all).

        An entry no longer pending (another consumer took it over and acknowledged it) is
        settled already: it is not counted as a failure. A failed one is looked for again by
        the next ``receive``, so it comes back soon and the inbox counts it as a duplicate.
        """
        ids = [delivery.token for delivery in deliveries]
        if not ids:
            return 0
        for entry_id in ids:
            self._outstanding.discard(entry_id)
        try:
            await asyncio.wait_for(
                self.client.xack(self.stream, self.group, *ids), self.call_timeout
            )
        except Exception as exc:  # a lost connection, no reply, a closed client
            self.ack_failures += len(ids)
            self._recover_from = "0"
            self.logger.warning(
                "%s: acknowledging %d entries failed (%s); they will be redelivered and "
                "counted as duplicates",
                self.subscription,
                len(ids),
                _reason(exc, self.settings) if str(exc) else type(exc).__name__,
            )
            return len(ids)
        return 0

    async def nack(self, deliveries: Sequence[Delivery]) -> None:
        """Keep ``deliveries`` for the next ``receive``, which claims them again first.

        Nothing is sent to Redis (so nothing can fail): the entries are still pending with
        this consumer. If this instance stops instead, another takes them over after
        ``redis.claim_idle``.
        """
        for delivery in deliveries:
            entry_id: str = delivery.token
            self._outstanding.discard(entry_id)
            self._nacked[entry_id] = None

    async def close(self) -> None:
        """Close the client. Deliveries not acknowledged stay pending in the group and are
        taken over by another consumer after ``redis.claim_idle``. A consumer left with
        nothing pending is removed from the group, so instances do not pile up in it."""
        if self._client is not None and self._owns_client and not self._lock.locked():
            try:
                await asyncio.wait_for(self._forget_consumer(), self.call_timeout)
            except Exception as exc:  # best effort: an empty consumer costs nothing
                self.logger.debug("could not remove consumer %s: %s", self.consumer, exc)
        await self._close_client()

    async def _forget_consumer(self) -> None:
        client = self.client
        pending = await client.xpending_range(
            self.stream, self.group, "-", "+", 1, consumername=self.consumer
        )
        if not pending:
            # Nothing pending: removing it loses nothing (it reads no more).
            await client.xgroup_delconsumer(self.stream, self.group, self.consumer)

    async def _close_client(self) -> None:
        if self._client is not None and self._owns_client:
            await self._client.aclose()
            self._client = None
        self._started = False
