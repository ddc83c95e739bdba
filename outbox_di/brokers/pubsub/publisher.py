"""``PubSubPublisher``: the relay's publisher on Google Cloud Pub/Sub.

It sends each claimed batch with the GAPIC ``PublisherAsyncClient``, one ``Publish`` request
per topic and chunk (at most 1,000 messages and 10 MB), built from raw protobuf messages.
Measured on these machines, the thread-batching high-level ``PublisherClient`` tops out near
15-25k msg/s because every ``publish()`` call costs ~50 µs, while one request per claimed batch
on the async client reached ~40k msg/s; and a raw protobuf request, its messages built in place
(:func:`build_request`), is several times cheaper to build than proto-plus wrappers. The
client is created in ``start()``, inside the running event loop, since a gRPC asyncio channel is
bound to the loop that made it.

Failures never raise: each event gets an outcome. A message that the service would refuse
(over 10 MB, too many or too long attributes) fails alone and permanently, so it is
dead-lettered instead of poisoning its batch; a request refused as invalid is retried message
by message to find the culprit.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence
from typing import Any

from google.api_core import exceptions as google_exceptions
from google.pubsub_v1.types import PublishRequest, PublishResponse

from outbox_di import config as config_module
from outbox_di import errors, models, observability
from outbox_di.brokers import ports, routing
from outbox_di.brokers.ports import PublishOutcome
from outbox_di.brokers.pubsub import names
from outbox_di.brokers.pubsub.connection import make_client, startup_call

MAX_MESSAGES_PER_REQUEST = 1000
MAX_REQUEST_BYTES = 10_000_000
MAX_MESSAGE_BYTES = 10_000_000
MAX_ATTRIBUTES = 100
MAX_ATTRIBUTE_KEY_BYTES = 256
MAX_ATTRIBUTE_VALUE_BYTES = 1024
# Per-message framing beyond data and attributes, counted generously when splitting requests.
_MESSAGE_OVERHEAD = 64

_PB_REQUEST: Any = PublishRequest.pb()

# One message of a request: (index in the batch, event, attributes, size bound in bytes).
_Item = tuple[int, models.OutboxEvent, dict[str, str], int]


# The attributes every message carries: their keys are valid, the event id is 36 characters.
_FIXED_KEYS = len("event_id") + len("event_type") + len("aggregate_type") + len("aggregate_id")
_EVENT_ID_TEXT = 36
# A str of at most this many characters is within the value limit whatever it holds (4 bytes a
# character at most in UTF-8).
_SHORT_VALUE = MAX_ATTRIBUTE_VALUE_BYTES // 4


def _plain_message_size(event: models.OutboxEvent) -> int | None:
    """``_check_message`` for the common message, whose only attributes are the four fixed
    ones (no headers), with short values: its size bound, else ``None`` (check it in full)."""
    payload_size = len(event.payload)
    event_type, aggregate_type, aggregate_id = (
        event.event_type,
        event.aggregate_type,
        event.aggregate_id,
    )
    if (
        event.headers
        or payload_size > MAX_MESSAGE_BYTES
        or len(event_type) > _SHORT_VALUE
        or len(aggregate_type) > _SHORT_VALUE
        or len(aggregate_id) > _SHORT_VALUE
    ):
        return None
    text = (
        _FIXED_KEYS
        + _EVENT_ID_TEXT
        + len(event_type)
        + len(aggregate_type)
        + len(aggregate_id)
        + len(event.ordering_key or "")
    )
    return payload_size + 4 * text + _MESSAGE_OVERHEAD


def message_problem(event: models.OutboxEvent, attributes: Mapping[str, str]) -> str | None:
    """Why Pub/Sub would refuse this message, or ``None``."""
    checked = _check_message(event, attributes)
    return checked if isinstance(checked, str) else None


def _check_message(event: models.OutboxEvent, attributes: Mapping[str, str]) -> str | int:
    """The reason Pub/Sub would refuse the message, else its size (an upper bound, for
    splitting requests under 10 MB). One pass over the attributes: this runs per event."""
    payload_size = len(event.payload)
    if payload_size > MAX_MESSAGE_BYTES:
        return (
            f"payload of {payload_size} bytes is over Pub/Sub's limit of "
            f"{MAX_MESSAGE_BYTES} bytes per message"
        )
    if len(attributes) > MAX_ATTRIBUTES:
        return f"{len(attributes)} attributes is over Pub/Sub's limit of {MAX_ATTRIBUTES}"
    text = len(event.ordering_key or "")
    for key, value in attributes.items():
        key_length = len(key)
        value_length = len(value)
        text += key_length + value_length
        # A str of n characters is at most 4n UTF-8 bytes: encode only the long ones.
        if not key_length or (
            key_length * 4 > MAX_ATTRIBUTE_KEY_BYTES and len(key.encode()) > MAX_ATTRIBUTE_KEY_BYTES
        ):
            return f"attribute key {key[:40]!r} is empty or over {MAX_ATTRIBUTE_KEY_BYTES} bytes"
        if key.startswith("goog"):
            return f"attribute key {key[:40]!r} uses the prefix 'goog', reserved by Pub/Sub"
        if value_length * 4 > MAX_ATTRIBUTE_VALUE_BYTES and (
            len(value.encode()) > MAX_ATTRIBUTE_VALUE_BYTES
        ):
            return f"attribute {key[:40]!r} is over {MAX_ATTRIBUTE_VALUE_BYTES} bytes"
    return payload_size + 4 * text + _MESSAGE_OVERHEAD


class PubSubPublisher:
    """Publishes outbox events to Pub/Sub topics (see the module docstring)."""

    def __init__(
        self,
        settings: config_module.OutboxConfig,
        client: Any = None,
        logger: logging.Logger | None = None,
    ) -> None:
        self.settings = settings
        project = names.project(settings)
        self.router = routing.TopicRouter(
            settings, lambda name, key: names.resolve_topic(name, project, key)
        )
        self.ordering = settings.publisher.ordering
        self.timeout = settings.publisher.publish_timeout
        self.logger = logger or observability.logger
        self._client = client
        self._owns_client = client is None
        self._started = False

    @property
    def client(self) -> Any:
        if self._client is None:
            raise errors.OutboxError("PubSubPublisher.start() must run before publishing")
        return self._client

    async def start(self) -> None:
        """Create the client (in this event loop) and check every configured topic exists.

        The check is bounded by ``pubsub.connect_timeout``: a Pub/Sub that does not answer
        raises :class:`~outbox_di.errors.PubSubUnavailableError` naming the endpoint. A start
        that fails (or is cancelled) closes the client it created. Idempotent: the container
        starts the publisher and the task starts it again.
        """
        if self._started:
            return
        if self._client is None:
            self._client = make_client(self.settings)
        try:
            await self._check_topics()
        except BaseException:
            await self.close()
            raise
        self._started = True

    async def _check_topics(self) -> None:
        topics = self.router.configured()
        if not topics:
            return
        timeout = self.settings.pubsub.connect_timeout
        self.logger.info(
            "checking topics on %s (within %gs): %s",
            names.describe_endpoint(self.settings),
            timeout,
            ", ".join(sorted(set(topics.values()))),
        )
        deadline = asyncio.get_running_loop().time() + timeout
        for key, topic in topics.items():
            try:
                await startup_call(
                    self.settings,
                    self.client.get_topic,
                    f"checking that topic {topic!r} exists",
                    deadline=deadline,
                    topic=topic,
                )
            except google_exceptions.NotFound as exc:
                raise errors.ConfigError(
                    [f"{key}: topic {topic!r} does not exist ({exc.message}); create it first"]
                ) from exc
            except google_exceptions.PermissionDenied:
                # A publisher-only role may not read topic metadata: publishing will tell.
                self.logger.warning(
                    "cannot check that topic %s exists (permission denied); continuing", topic
                )

    async def close(self) -> None:
        if self._client is not None and self._owns_client:
            await self._client.transport.close()
            self._client = None
        self._started = False

    async def publish(self, events: Sequence[models.OutboxEvent]) -> Sequence[PublishOutcome]:
        outcomes: list[PublishOutcome | None] = [None] * len(events)
        by_topic: dict[str, list[_Item]] = {}
        for index, event in enumerate(events):
            topic = self.router.topic_for(event)
            if topic is None:
                outcomes[index] = routing.unrouted(event)
                continue
            attributes = ports.event_attributes(event)
            plain = _plain_message_size(event)
            checked = _check_message(event, attributes) if plain is None else plain
            if isinstance(checked, str):
                outcomes[index] = PublishOutcome(error=checked, permanent=True)
                continue
            by_topic.setdefault(topic, []).append((index, event, attributes, checked))

        requests = [(topic, chunk) for topic, items in by_topic.items() for chunk in _chunks(items)]
        if self.ordering:
            # Ordered keys must reach the service in order: one request at a time.
            for topic, chunk in requests:
                await self._send(topic, chunk, outcomes)
        else:
            await asyncio.gather(*(self._send(topic, chunk, outcomes) for topic, chunk in requests))
        return [
            outcome if outcome is not None else PublishOutcome(error="not published")
            for outcome in outcomes
        ]

    async def _send(
        self,
        topic: str,
        chunk: Sequence[_Item],
        outcomes: list[PublishOutcome | None],
    ) -> None:
        request = PublishRequest.wrap(build_request(topic, chunk))
        try:
            response = await self.client.publish(request=request, timeout=self.timeout, retry=None)
        except google_exceptions.InvalidArgument as exc:
            if len(chunk) > 1:
                # One bad message fails the whole request: find it by sending them one by one.
                for item in chunk:
                    await self._send(topic, [item], outcomes)
                return
            outcomes[chunk[0][0]] = PublishOutcome(
                error=f"Pub/Sub refused the message: {exc.message}", permanent=True
            )
            return
        except google_exceptions.GoogleAPICallError as exc:
            error = f"{type(exc).__name__}: {exc.message}"
            for item in chunk:
                outcomes[item[0]] = PublishOutcome(error=error)
            return
        except Exception as exc:  # e.g. grpc errors outside api_core's mapping, timeouts
            error = f"{type(exc).__name__}: {exc}"
            for item in chunk:
                outcomes[item[0]] = PublishOutcome(error=error)
            return
        # The raw protobuf list: proto-plus wraps each element access (~3 µs an id).
        message_ids = PublishResponse.pb(response).message_ids
        for item, message_id in zip(chunk, message_ids, strict=True):
            outcomes[item[0]] = PublishOutcome(message_id=message_id)


def build_request(topic: str, items: Sequence[_Item]) -> Any:
    """The raw protobuf ``PublishRequest`` for ``items``, each message built in place.

    Measured here (protobuf's upb backend), against ``PubsubMessage(attributes=dict)`` messages
    passed to ``PublishRequest(messages=[...])``: ``messages.add()`` does not copy each message
    into the request, and a map filled key by key is not filled by a Python-level ``update``;
    1.3 µs a message instead of 3.9 µs.
    """
    request = _PB_REQUEST(topic=topic)
    add = request.messages.add
    for _, event, attributes, _ in items:
        message = add(data=event.payload)
        if event.ordering_key:
            message.ordering_key = event.ordering_key
        target = message.attributes
        for key, value in attributes.items():
            target[key] = value
    return request


def _chunks(items: Sequence[_Item]) -> list[Sequence[_Item]]:
    """Split into requests of at most 1,000 messages and 10 MB."""
    chunks: list[Sequence[_Item]] = []
    start = 0
    size = 0
    for position, (_, _, _, message_size) in enumerate(items):
        count = position - start
        if count and (count >= MAX_MESSAGES_PER_REQUEST or size + message_size > MAX_REQUEST_BYTES):
            chunks.append(items[start:position])
            start, size = position, 0
        size += message_size
    if start < len(items):
        chunks.append(items[start:])
    return chunks
