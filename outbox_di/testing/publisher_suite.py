"""A contract suite for a service's publisher: run it against your own ``OutboxContainer``.

Subclass :class:`PublisherContract` in a test module of your service (pytest collects it when
the subclass name starts with ``Test``) and provide two fixtures::

    from outbox_di.testing.publisher_suite import PublisherContract

    class TestCatalogPublisher(PublisherContract):
        pass

Fixtures the service provides (function-scoped; sync or async):

``outbox_container``
    An :class:`~outbox_di.containers.OutboxContainer` **not started**, configured for a fresh
    schema (the DDL applied, no other rows: ``outbox_schema`` gives one) and for Pub/Sub (an
    emulator, through ``pubsub.emulator_host``). The suite starts it (``containers.start``) and
    shuts its resources down itself, and resets the overrides it makes (``publisher``,
    ``meter``). Requirements: ``publisher.enabled`` true; ``publisher.lock_ttl`` at most 2 s
    (the lease test waits for it; ``publish_timeout`` must then be below it, e.g. ``500ms``); the
    events the suite enqueues (``aggregate_type``/``event_type`` below, class attributes you may
    change) must route to the topic of ``outbox_subscription``. Short ``tick_interval`` and
    ``backoff`` (``50ms``, ``{initial: 10ms, max: 100ms}``) keep the suite fast.

``outbox_subscription``
    Where the suite reads what the container published: any
    :class:`~outbox_di.testing.brokers.Channel` (``temporary_channel(settings)`` of
    :mod:`outbox_di.testing.brokers` makes one on every broker), or, on Pub/Sub, an
    :class:`OutboxSubscription`: ``host`` (``"127.0.0.1:PORT"`` of the emulator), ``path``
    (``projects/P/subscriptions/S``, **created before the test**, attached to the topic the
    container publishes the suite's events to, unordered, not shared with other consumers),
    and optionally ``emulator`` (the in-process emulator of ``pubsub_emulator``, or None).
    Messages other than the suite's own may arrive there: the suite acknowledges and ignores them.

What it checks: a row is published with its payload and attributes and counted in
``outbox_publish_success_total``; failed publishes are retried with ``last_error`` and
``delivery_attempts`` recorded; a row leased by a dead worker is published after ``lock_ttl``;
rows whose stored headers are not a JSON object of strings are still published.

The failure test replaces the container's ``publisher`` with a :class:`FaultyPublisher` around a
fresh publisher of the configured broker, built from ``container.settings()``.
Helpers here (:func:`pull_until`, :func:`wait_until`, :class:`FaultyPublisher`) are public for
the service's own tests. See ``docs/publisher-suite.md``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import json
import random
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from outbox_di import brokers, containers, models, repository
from outbox_di import config as config_module
from outbox_di import schema as schema_module
from outbox_di.publishing import base
from outbox_di.testing import brokers as brokers_testing
from outbox_di.testing import emulator as emulator_module
from outbox_di.testing import pubsub as pubsub_testing
from outbox_di.testing.brokers import Probed

if TYPE_CHECKING:
    from google.pubsub_v1.services.subscriber import SubscriberAsyncClient
    from google.pubsub_v1.types import ReceivedMessage

__all__ = [
    "FaultyPublisher",
    "OutboxSubscription",
    "PublisherContract",
    "metric_points",
    "pull_until",
    "wait_until",
]

# The lease test waits lock_ttl; a longer lease would make the suite slow for nothing.
MAX_CONTRACT_LOCK_TTL = 2.0


@dataclasses.dataclass(frozen=True)
class OutboxSubscription:
    """A Pub/Sub subscription the suite pulls what the container published from (see the
    module docstring); it reads like a :class:`~outbox_di.testing.brokers.Channel`."""

    host: str
    path: str
    emulator: emulator_module.InProcessEmulator | None = None
    topic: str = ""
    """The topic the subscription is attached to (``projects/P/topics/T``), for :meth:`publish`."""

    @property
    def subscription(self) -> str:
        return self.path

    async def publish(self, messages: Sequence[tuple[bytes, Mapping[str, str]]]) -> None:
        """Publish ``(payload, attributes)`` pairs to :attr:`topic` in one request."""
        await pubsub_testing.publish(self.host, self.topic, messages)

    @contextlib.asynccontextmanager
    async def subscribe(self, prefix: str = "extra") -> AsyncIterator[str]:
        """Another subscription to :attr:`topic`, deleted on exit."""
        project = self.topic.split("/")[1]
        name = f"projects/{project}/subscriptions/{prefix}-{uuid.uuid4().hex[:12]}"
        async with pubsub_testing.async_subscriber_client(self.host) as subscriber:
            await subscriber.create_subscription(request={"name": name, "topic": self.topic})
        try:
            yield name
        finally:
            async with pubsub_testing.async_subscriber_client(self.host) as subscriber:
                await subscriber.delete_subscription(subscription=name)

    async def pull(
        self, done: Callable[[Sequence[Probed]], bool], within: float = 15.0
    ) -> list[Probed]:
        """Pull (acknowledging) until ``done(received)`` or ``within`` seconds."""
        received: list[Probed] = []

        def finished(batch: Sequence[Any]) -> bool:
            received[:] = [pubsub_testing.probed(item) for item in batch]
            return done(received)

        async with pubsub_testing.async_subscriber_client(self.host) as subscriber:
            await pull_until(subscriber, self.path, finished, within)
        return received


async def wait_until(
    predicate: Callable[[], Awaitable[bool]], timeout: float = 15.0, what: str = "condition"
) -> None:
    """Poll ``predicate`` every 20 ms until it is true; ``AssertionError`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not await predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached within {timeout:g}s")
        await asyncio.sleep(0.02)


async def pull_until(
    subscriber: SubscriberAsyncClient,
    subscription: str,
    done: Callable[[Sequence[ReceivedMessage]], bool],
    within: float = 15.0,
    *,
    ack: bool = True,
) -> list[ReceivedMessage]:
    """Unary pulls (acknowledging each batch) until ``done(received)`` or ``within`` seconds.

    Both emulators hold an empty pull until about a second before its deadline, so each call
    gets a deadline of 1.5-3 s and returns as soon as something is there. Returns everything
    received (redeliveries included); the caller asserts on it.
    """
    received: list[ReceivedMessage] = []
    deadline = time.monotonic() + within
    while not done(received) and time.monotonic() < deadline:
        timeout = max(1.5, min(3.0, deadline - time.monotonic()))
        response = await subscriber.pull(
            request={"subscription": subscription, "max_messages": 1000}, timeout=timeout
        )
        batch = list(response.received_messages)
        if batch and ack:
            await subscriber.acknowledge(
                request={"subscription": subscription, "ack_ids": [m.ack_id for m in batch]},
                timeout=10.0,
            )
        received.extend(batch)
    return received


def metric_points(reader: InMemoryMetricReader) -> dict[str, list[Any]]:
    """Data points by metric name, from an SDK ``InMemoryMetricReader``."""
    found: dict[str, list[Any]] = {}
    data = reader.get_metrics_data()
    if data is None:
        return found
    for resource in data.resource_metrics:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                found.setdefault(metric.name, []).extend(getattr(metric.data, "data_points", []))
    return found


class FaultyPublisher:
    """A :class:`~outbox_di.publishing.base.Publisher` around another, failing on purpose.

    The first ``fail_first`` publish calls fail (every event of the batch, retryable), then each
    call fails with probability ``failure_rate`` (drawn from ``rng``). A failed call never
    reaches the inner publisher, so it cannot publish anything. ``interrupted`` collects the ids
    of events whose call was cancelled while the inner publisher had them (a publish timeout or
    a killed worker): those, and only those, may have reached the broker without being marked.
    ``in_flight`` holds the ids the inner publisher has right now.
    """

    def __init__(
        self,
        inner: base.Publisher,
        *,
        fail_first: int = 0,
        failure_rate: float = 0.0,
        rng: random.Random | None = None,
        error: str = "injected publish failure",
    ) -> None:
        self.inner = inner
        self.fail_first = fail_first
        self.failure_rate = failure_rate
        self.rng = rng or random.Random(0)
        self.error = error
        self.calls = 0
        self.failed_calls = 0
        self.failed_events = 0
        self.interrupted: set[uuid.UUID] = set()
        self.in_flight: set[uuid.UUID] = set()

    async def start(self) -> None:
        await self.inner.start()

    async def close(self) -> None:
        await self.inner.close()

    async def publish(self, events: Sequence[models.OutboxEvent]) -> Sequence[base.PublishOutcome]:
        self.calls += 1
        if self.calls <= self.fail_first or (
            self.failure_rate and self.rng.random() < self.failure_rate
        ):
            self.failed_calls += 1
            self.failed_events += len(events)
            return [base.PublishOutcome(error=self.error)] * len(events)
        ids = [event.event_id for event in events]
        self.in_flight.update(ids)
        try:
            return await self.inner.publish(events)
        except asyncio.CancelledError:
            self.interrupted.update(ids)
            raise
        finally:
            self.in_flight.difference_update(ids)


def _by_event_id(received: Sequence[Probed], wanted: set[str]) -> dict[str, Probed]:
    found: dict[str, Probed] = {}
    for item in received:
        event_id = item.attributes.get("event_id", "")
        if event_id in wanted:
            found.setdefault(event_id, item)
    return found


class PublisherContract:
    """The contract tests; subclass as ``Test...`` and provide the two fixtures above."""

    #: The aggregate and event types of the events the suite enqueues (route them to the topic
    #: of ``outbox_subscription``).
    aggregate_type = "outbox_contract"
    event_type = "outbox_contract.checked"
    #: Seconds any one wait (publish, pull) may take.
    wait_timeout = 15.0

    # -- helpers ---------------------------------------------------------------------------

    def _message(self, n: int, **fields: Any) -> models.Message:
        return models.Message(
            self.aggregate_type,
            f"contract-{uuid.uuid4().hex[:8]}-{n}",
            self.event_type,
            fields.pop("payload", {"n": n}),
            **fields,
        )

    async def _status(
        self, repo: repository.OutboxRepository, event_id: uuid.UUID
    ) -> models.OutboxEvent:
        stored = await repo.get(event_id)
        assert stored is not None, f"event {event_id} is not in the outbox"
        return stored

    async def _published(
        self, repo: repository.OutboxRepository, event_ids: Sequence[uuid.UUID]
    ) -> list[models.OutboxEvent]:
        async def all_published() -> bool:
            for event_id in event_ids:
                stored = await self._status(repo, event_id)
                assert stored.status is not models.OutboxStatus.DEAD, (
                    f"event {event_id} was dead-lettered: {stored.last_error}"
                )
                if stored.status is not models.OutboxStatus.PUBLISHED:
                    return False
            return True

        await wait_until(all_published, self.wait_timeout, "every contract event published")
        return [await self._status(repo, event_id) for event_id in event_ids]

    async def _pull(
        self, subscription: brokers_testing.Channel, event_ids: Sequence[uuid.UUID]
    ) -> dict[str, Probed]:
        wanted = {str(event_id) for event_id in event_ids}
        received = await subscription.pull(
            lambda got: len(_by_event_id(got, wanted)) == len(wanted), self.wait_timeout
        )
        found = _by_event_id(received, wanted)
        missing = wanted - set(found)
        assert not missing, f"never arrived on {subscription.subscription}: {sorted(missing)}"
        return found

    @staticmethod
    def _settings(container: Any) -> config_module.OutboxConfig:
        settings: config_module.OutboxConfig = container.settings()
        assert settings.publisher.enabled, "the contract suite needs publisher.enabled: true"
        return settings

    @staticmethod
    async def _start_workers(container: Any) -> None:
        relay = await container.publisher_task()
        assert relay is not None and relay.running, "the container's publisher task is not running"

    # -- the contract ----------------------------------------------------------------------

    async def test_event_is_published_with_attributes_and_counted(
        self, outbox_container: Any, outbox_subscription: brokers_testing.Channel
    ) -> None:
        settings = self._settings(outbox_container)
        reader = InMemoryMetricReader()
        provider = MeterProvider(metric_readers=[reader])
        outbox_container.meter.override(provider.get_meter("outbox_di.contract"))
        try:
            await containers.start(outbox_container, workers=False)
            outbox = await outbox_container.outbox()
            message = self._message(1, payload=b"\x00contract\xff", headers={"x-contract": "yes"})
            event_id = await outbox.enqueue(message)
            await self._start_workers(outbox_container)
            repo = await outbox_container.outbox_repository()
            [stored] = await self._published(repo, [event_id])
            assert stored.delivery_attempts == 1
            pulled = (await self._pull(outbox_subscription, [event_id]))[str(event_id)]
        finally:
            await containers.stop(outbox_container)
            outbox_container.meter.reset_override()
        assert pulled.payload == b"\x00contract\xff"
        attributes = pulled.attributes
        expected = {
            "x-contract": "yes",
            "event_id": str(event_id),
            "event_type": self.event_type,
            "aggregate_type": self.aggregate_type,
            "aggregate_id": message.aggregate_id,
        }
        # A service may add headers (a traceparent, say): the contract ones must be exact.
        assert {key: attributes.get(key) for key in expected} == expected
        points = metric_points(reader)
        provider.shutdown()
        success = [
            point
            for point in points.get("outbox_publish_success_total", [])
            if dict(point.attributes).get("event_type") == self.event_type
        ]
        assert sum(point.value for point in success) == 1
        assert dict(success[0].attributes) == {
            "schema": settings.schema,
            "event_type": self.event_type,
        }

    async def test_failed_publishes_are_retried_and_recorded(
        self, outbox_container: Any, outbox_subscription: brokers_testing.Channel
    ) -> None:
        settings = self._settings(outbox_container)
        assert settings.publisher.max_attempts > 2, "the suite needs publisher.max_attempts >= 3"
        faulty = FaultyPublisher(
            brokers.make_publisher(settings), fail_first=2, error="contract: broker unavailable"
        )
        outbox_container.publisher.override(faulty)
        try:
            await containers.start(outbox_container, workers=False)
            outbox = await outbox_container.outbox()
            event_id = await outbox.enqueue(self._message(2))
            await self._start_workers(outbox_container)
            repo = await outbox_container.outbox_repository()
            [stored] = await self._published(repo, [event_id])
            pulled = await self._pull(outbox_subscription, [event_id])
        finally:
            await containers.stop(outbox_container)
            outbox_container.publisher.reset_override()
            await faulty.close()
        assert faulty.failed_calls == 2
        assert stored.delivery_attempts == 3
        assert stored.last_error == "contract: broker unavailable"
        assert str(event_id) in pulled

    async def test_row_leased_by_a_dead_worker_is_published_after_lock_ttl(
        self, outbox_container: Any, outbox_subscription: brokers_testing.Channel
    ) -> None:
        settings = self._settings(outbox_container)
        lock_ttl = settings.publisher.lock_ttl
        assert lock_ttl <= MAX_CONTRACT_LOCK_TTL, (
            f"the contract suite needs publisher.lock_ttl <= {MAX_CONTRACT_LOCK_TTL:g}s "
            f"(got {lock_ttl:g}s): it waits for a dead worker's lease to expire"
        )
        try:
            await containers.start(outbox_container, workers=False)
            outbox = await outbox_container.outbox()
            repo = await outbox_container.outbox_repository()
            event_id = await outbox.enqueue(self._message(3))
            # A "dead worker": it claims the row and never marks it.
            dead_token = uuid.uuid4()
            now = models.utcnow()
            claimed = await repo.claim_pending(
                now, now - dt.timedelta(seconds=lock_ttl), 1000, dead_token
            )
            assert [event.event_id for event in claimed] == [event_id], (
                "the contract suite needs a fresh schema (other rows were due)"
            )
            await self._start_workers(outbox_container)
            [stored] = await self._published(repo, [event_id])
            pulled = await self._pull(outbox_subscription, [event_id])
        finally:
            await containers.stop(outbox_container)
        assert str(event_id) in pulled
        assert stored.delivery_attempts == 2, "the dead worker's claim counts as an attempt"
        assert stored.published_at is not None and stored.locked_at is not None
        # Not before the lease ran out (the live worker's claim stamped a newer locked_at).
        assert stored.published_at - now >= dt.timedelta(seconds=lock_ttl)

    async def test_headers_that_are_not_a_json_object_of_strings_are_tolerated(
        self, outbox_container: Any, outbox_subscription: brokers_testing.Channel
    ) -> None:
        self._settings(outbox_container)
        stored_headers = {
            "string": json.dumps(json.dumps({"x-from-string": "kept"})),
            "not-json-object": json.dumps("just text"),
            "array": json.dumps(["a", "b"]),
            "numbers": json.dumps({"x-number": 7, "x-text": "kept"}),
            "null": "null",
        }
        try:
            await containers.start(outbox_container, workers=False)
            outbox = await outbox_container.outbox()
            repo = await outbox_container.outbox_repository()
            ids: dict[str, uuid.UUID] = {}
            for n, name in enumerate(stored_headers):
                ids[name] = await outbox.enqueue(self._message(10 + n))
            pool = await outbox_container.pool()
            test_kit = schema_module.Queries(repo.schema, files=schema_module.TEST_KIT_FILES)
            sql = test_kit["test_set_headers"].sql
            async with pool.acquire() as conn, conn.cursor() as cursor:
                for name, text in stored_headers.items():
                    await cursor.execute(sql, {"event_id": str(ids[name]), "headers": text})
            await self._start_workers(outbox_container)
            await self._published(repo, list(ids.values()))
            pulled = await self._pull(outbox_subscription, list(ids.values()))
        finally:
            await containers.stop(outbox_container)
        for name, event_id in ids.items():
            attributes = pulled[str(event_id)].attributes
            assert attributes["event_id"] == str(event_id), name
            assert attributes["event_type"] == self.event_type, name
        from_string = pulled[str(ids["string"])].attributes
        assert from_string.get("x-from-string") == "kept"
        numbers = pulled[str(ids["numbers"])].attributes
        assert numbers.get("x-text") == "kept"
        assert numbers.get("x-number") == "7"
