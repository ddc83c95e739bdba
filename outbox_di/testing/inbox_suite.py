"""A contract suite for a service's inbox: run it against your own ``OutboxContainer``.

Subclass :class:`InboxContract` in a test module of your service (pytest collects it when the
subclass name starts with ``Test``) and provide two fixtures::

    from outbox_di.testing.inbox_suite import InboxContract

    class TestBillingInbox(InboxContract):
        pass

Fixtures the service provides (function-scoped; sync or async):

``inbox_container``
    An :class:`~outbox_di.containers.OutboxContainer` **not started**, configured for a fresh
    schema (the DDL applied, no other rows: ``outbox_schema`` gives one) and for Pub/Sub (an
    emulator, through ``pubsub.emulator_host``), with ``inbox.enabled`` true and
    ``inbox.subscription`` attached to the topic of ``inbox_topic``. Requirements:
    ``inbox.lock_ttl`` at most 2 s (the lease test waits for it), ``inbox.max_attempts`` of at
    least 3, and retry delays that add up to at most 5 s over ``max_attempts`` (e.g.
    ``retry_delay: 10ms``, ``max_attempts: 3``). The suite starts the container's pool, inbox
    receiver and inbox worker itself (never the publisher task), stops it, and resets the
    overrides it makes (``meter``, ``inbox_handlers``).

``inbox_topic``
    Where the suite publishes what the container receives: any
    :class:`~outbox_di.testing.brokers.Channel` whose ``subscription`` is the container's
    ``inbox.subscription`` (``temporary_channel(settings)`` of :mod:`outbox_di.testing.brokers`
    makes one on every broker), or, on Pub/Sub, an :class:`InboxTopic`: ``host``
    (``"127.0.0.1:PORT"`` of the emulator), ``topic`` (``projects/P/topics/T``, **created
    before the test**, the topic the container's subscription is attached to), and optionally
    ``emulator``.

``inbox_samples`` (optional)
    A sequence of :class:`InboxSample`: events the service's own handlers accept. The suite
    delivers each twice and checks that its handler ran once and succeeded at the first
    attempt. Without this fixture that test is skipped.

The suite's handlers take the event types starting with ``inbox_contract.``; the service's own
handlers are kept for every other type (messages that are not the suite's are handled by them).
Its transactional handler writes into ``<schema>.inbox_contract_effects``, a table the suite
creates and drops. What it checks: duplicate deliveries run the handler once; a failing handler
is retried with backoff and then dead; a dead worker's lease expires after ``lock_ttl``; a
poison message is parked without holding back the messages around it; an event type without
a handler is parked; a transactional handler that fails leaves no partial effect.

Helpers here (:func:`publish`, :class:`HandlerCalls`) are public for the service's own tests.
See ``docs/inbox-suite.md``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from outbox_di import config as config_module
from outbox_di import containers, database, models, observability, repository
from outbox_di import schema as schema_module
from outbox_di.inbox import handlers as handlers_module
from outbox_di.inbox import receiver as receiver_module
from outbox_di.inbox import worker as worker_module
from outbox_di.testing import brokers as brokers_testing
from outbox_di.testing import emulator as emulator_module
from outbox_di.testing import pubsub as pubsub_testing
from outbox_di.testing.publisher_suite import metric_points, wait_until

__all__ = ["HandlerCalls", "InboxContract", "InboxSample", "InboxTopic", "publish"]

# The lease test waits lock_ttl, the retry test every retry delay: longer would make the suite
# slow for nothing.
MAX_CONTRACT_LOCK_TTL = 2.0
MAX_CONTRACT_RETRY_WAIT = 5.0
_MAX_RETRY_DELAY = 300.0  # the worker's cap on one delay


@dataclasses.dataclass(frozen=True)
class InboxTopic:
    """Where the suite publishes what the container receives (see the module docstring)."""

    host: str
    topic: str
    emulator: emulator_module.InProcessEmulator | None = None

    async def publish(self, messages: Sequence[tuple[bytes, Mapping[str, str]]]) -> None:
        """Publish ``(payload, attributes)`` pairs to :attr:`topic` in one request."""
        await publish(self.host, self.topic, messages)


async def publish(
    host: str, topic: str, messages: Sequence[tuple[bytes, Mapping[str, str]]]
) -> list[str]:
    """Publish ``(data, attributes)`` pairs in one request; returns Pub/Sub's message ids."""
    return await pubsub_testing.publish(host, topic, messages)


class HandlerCalls:
    """How many times a handler ran, by event id."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}

    def note(self, event: models.InboxEvent) -> int:
        """Count a run of ``event``; returns which run this is (1 for the first)."""
        count = self.counts.get(event.event_id, 0) + 1
        self.counts[event.event_id] = count
        return count

    def __getitem__(self, event_id: str) -> int:
        return self.counts.get(event_id, 0)


@dataclasses.dataclass(frozen=True)
class InboxSample:
    """An event the service's own handlers accept (``inbox_samples``): the suite delivers each
    twice and expects its handler to run once. ``event_id`` and ``event_type`` attributes are
    set by the suite; ``attributes`` adds the others (``aggregate_type``, ``aggregate_id``,
    headers)."""

    event_type: str
    payload: bytes
    attributes: Mapping[str, str] = dataclasses.field(default_factory=dict)


def _counting(
    handler: handlers_module.Handler, calls: HandlerCalls, transactional: bool
) -> handlers_module.Handler:
    """``handler``, noting each run in ``calls``; transactional stays transactional."""
    if transactional:

        @handlers_module.transactional
        async def counted_transactional(event: models.InboxEvent, session: Any) -> None:
            calls.note(event)
            await handler(event, session)

        return counted_transactional

    async def counted(event: models.InboxEvent) -> None:
        calls.note(event)
        await handler(event)

    return counted


class ContractFailure(RuntimeError):
    """What the suite's failing handlers raise."""


@dataclasses.dataclass
class _Run:
    """What a running contract test works with."""

    settings: config_module.OutboxConfig
    consumer: str
    repository: repository.InboxRepository
    pool: Any
    receiver: receiver_module.InboxReceiver
    reader: InMemoryMetricReader


class InboxContract:
    """The contract tests; subclass as ``Test...`` and provide the two fixtures above."""

    #: The prefix of the event types the suite's handlers take.
    event_type_prefix = "inbox_contract."
    aggregate_type = "inbox_contract"
    #: Seconds any one wait may take.
    wait_timeout = 20.0

    # -- the suite's handlers --------------------------------------------------------------

    def _type(self, name: str) -> str:
        return f"{self.event_type_prefix}{name}"

    def _suite_handlers(self) -> dict[str, handlers_module.Handler]:
        self.calls = HandlerCalls()
        calls = self.calls

        @handlers_module.transactional
        async def record(event: models.InboxEvent, session: Any) -> None:
            """Transactional: one effect row per event, plus a note of the run."""
            calls.note(event)
            await session.execute(self._effects_sql("insert"), self._effect(event, "done"))

        async def flaky(event: models.InboxEvent) -> None:
            """Fails the first ``fail`` runs (from the payload), then succeeds."""
            run = calls.note(event)
            if run <= int(event.json()["fail"]):
                raise ContractFailure(f"contract failure {run}")

        async def strict(event: models.InboxEvent) -> None:
            """Needs a JSON object with ``n``: a payload without one can never succeed."""
            calls.note(event)
            int(event.json()["n"])

        @handlers_module.transactional
        async def partial(event: models.InboxEvent, session: Any) -> None:
            """Transactional: writes two effect rows, then fails the first ``fail`` runs."""
            run = calls.note(event)
            await session.execute(self._effects_sql("insert"), self._effect(event, "first"))
            await session.execute(self._effects_sql("insert"), self._effect(event, "second"))
            if run <= int(event.json()["fail"]):
                raise ContractFailure(f"contract failure {run} after writing")

        return {
            self._type("recorded"): record,
            self._type("flaky"): flaky,
            self._type("strict"): strict,
            self._type("partial"): partial,
        }

    def _effects_sql(self, what: str) -> str:
        return self._queries[f"inbox_contract_effects_{what}"].sql

    def _effect(self, event: models.InboxEvent, note: str) -> dict[str, str]:
        return {"event_id": event.event_id, "note": note, "consumer": event.consumer}

    # -- helpers ---------------------------------------------------------------------------

    @staticmethod
    def _settings(container: Any) -> config_module.OutboxConfig:
        settings: config_module.OutboxConfig = container.settings()
        inbox = settings.inbox
        assert inbox.enabled, "the inbox contract suite needs inbox.enabled: true"
        assert inbox.lock_ttl <= MAX_CONTRACT_LOCK_TTL, (
            f"the inbox contract suite needs inbox.lock_ttl <= {MAX_CONTRACT_LOCK_TTL:g}s "
            f"(got {inbox.lock_ttl:g}s): it waits for a dead worker's lease to expire"
        )
        assert inbox.max_attempts >= 3, "the inbox contract suite needs inbox.max_attempts >= 3"
        retry_wait = sum(
            min(inbox.retry_delay * 2 ** (attempt - 1), max(inbox.retry_delay, _MAX_RETRY_DELAY))
            for attempt in range(1, inbox.max_attempts)
        )
        assert retry_wait <= MAX_CONTRACT_RETRY_WAIT, (
            f"inbox.retry_delay {inbox.retry_delay:g}s doubled over {inbox.max_attempts} "
            f"attempts waits {retry_wait:g}s in all; the suite needs at most "
            f"{MAX_CONTRACT_RETRY_WAIT:g}s (e.g. retry_delay: 10ms)"
        )
        return settings

    def _attributes(self, event_type: str, event_id: str, **extra: str) -> dict[str, str]:
        return {
            "event_id": event_id,
            "event_type": self._type(event_type),
            "aggregate_type": self.aggregate_type,
            "aggregate_id": f"contract-{event_id[:8]}",
            **extra,
        }

    @contextlib.asynccontextmanager
    async def _running(self, container: Any, *, worker: bool = True) -> AsyncIterator[_Run]:
        """The container with the suite's handlers and an SDK meter: pool and receiver
        started (and the worker, unless ``worker=False``); stopped and reset afterwards."""
        settings = self._settings(container)
        self._queries = schema_module.Queries(settings.schema, files=schema_module.TEST_KIT_FILES)
        service_handlers = handlers_module.InboxHandlers(container.inbox_handlers())
        self.service_handlers = dict(service_handlers)
        self.service_calls = HandlerCalls()
        counted = {
            event_type: _counting(
                handler, self.service_calls, service_handlers.is_transactional(event_type)
            )
            for event_type, handler in service_handlers.items()
        }
        handlers = handlers_module.InboxHandlers({**counted, **self._suite_handlers()})
        reader = InMemoryMetricReader()
        provider = MeterProvider(metric_readers=[reader])
        container.meter.override(provider.get_meter("outbox_di.inbox_contract"))
        container.inbox_handlers.override(handlers)
        try:
            await containers.start(container, workers=False)
            pool = await container.pool()
            async with pool.acquire() as conn, conn.cursor() as cursor:
                await cursor.execute(self._effects_sql("create"))
            receiver = await container.inbox_receiver()
            assert receiver is not None and receiver.running, "the inbox receiver is not running"
            run = _Run(
                settings,
                settings.inbox_consumer,
                await container.inbox_repository(),
                pool,
                receiver,
                reader,
            )
            if worker:
                await self._start_worker(container)
            yield run
        finally:
            try:
                await containers.stop(container)
            finally:
                container.meter.reset_override()
                container.inbox_handlers.reset_override()
                provider.shutdown()
                async with (
                    database.open_pool(settings.dsn, min_size=0, max_size=1) as own_pool,
                    own_pool.acquire() as conn,
                    conn.cursor() as cursor,
                ):
                    await cursor.execute(self._effects_sql("drop"))

    @staticmethod
    async def _start_worker(container: Any) -> worker_module.InboxWorker:
        inbox_worker: worker_module.InboxWorker | None = await container.inbox_worker()
        assert inbox_worker is not None and inbox_worker.running, "the inbox worker is not running"
        return inbox_worker

    async def _stored(self, run: _Run, event_id: str) -> models.InboxEvent:
        stored = await run.repository.get(run.consumer, event_id)
        assert stored is not None, f"event {event_id} is not in the inbox of {run.consumer}"
        return stored

    async def _settled(
        self, run: _Run, event_ids: Sequence[str], status: models.InboxStatus, what: str
    ) -> list[models.InboxEvent]:
        """Wait until every event is in the inbox with ``status``; returns them."""

        async def reached() -> bool:
            for event_id in event_ids:
                stored = await run.repository.get(run.consumer, event_id)
                if stored is None or stored.status is not status:
                    return False
            return True

        await wait_until(reached, self.wait_timeout, what)
        return [await self._stored(run, event_id) for event_id in event_ids]

    async def _one_recovers_one_dies(
        self, run: _Run, inbox_topic: brokers_testing.Channel, event_type: str, *, failures: int
    ) -> tuple[models.InboxEvent, models.InboxEvent]:
        """Publish two events of ``event_type``: one whose handler fails ``failures`` times and
        then succeeds, one whose handler always fails; returns them processed and dead."""
        recovers, doomed = str(uuid.uuid4()), str(uuid.uuid4())
        await inbox_topic.publish(
            [
                (b'{"fail": %d}' % failures, self._attributes(event_type, recovers)),
                (b'{"fail": 1000000}', self._attributes(event_type, doomed)),
            ],
        )
        [ok] = await self._settled(
            run, [recovers], models.InboxStatus.PROCESSED, f"the {event_type} event processed"
        )
        [dead] = await self._settled(
            run, [doomed], models.InboxStatus.DEAD, f"the failing {event_type} event dead"
        )
        return ok, dead

    async def _effects(self, run: _Run) -> list[tuple[str, str]]:
        async with run.pool.acquire() as conn, conn.cursor() as cursor:
            await cursor.execute(self._effects_sql("list"), {"consumer": run.consumer})
            return [(row[0], row[1]) for row in await cursor.fetchall()]

    def _metric(self, run: _Run, name: str, event_type: str) -> list[Any]:
        wanted = self._type(event_type)
        return [
            point
            for point in metric_points(run.reader).get(name, [])
            if dict(point.attributes).get("event_type") == wanted
        ]

    # -- the contract ----------------------------------------------------------------------

    async def test_duplicate_delivery_runs_the_handler_once(
        self, inbox_container: Any, inbox_topic: brokers_testing.Channel
    ) -> None:
        event_id = str(uuid.uuid4())
        attributes = self._attributes("recorded", event_id)
        async with self._running(inbox_container) as run:
            # Twice in one request, then once more after it was processed.
            await inbox_topic.publish([(b"{}", attributes)] * 2)
            [stored] = await self._settled(
                run, [event_id], models.InboxStatus.PROCESSED, "the event processed"
            )
            await inbox_topic.publish([(b"{}", attributes)])

            async def both_duplicates_counted() -> bool:
                return bool(sum(p.value for p in self._metric(run, _DUPLICATE, "recorded")) >= 2)

            await wait_until(both_duplicates_counted, self.wait_timeout, "2 duplicates counted")
            effects = await self._effects(run)
            assert await run.repository.count_pending(run.consumer) == 0
        assert effects == [(event_id, "done")]
        assert self.calls[event_id] == 1
        assert stored.delivery_attempts == 1 and stored.processed_at is not None
        [duplicates] = self._metric(run, _DUPLICATE, "recorded")
        assert duplicates.value == 2
        assert dict(duplicates.attributes) == {
            "schema": run.settings.schema,
            "consumer": run.consumer,
            "event_type": self._type("recorded"),
        }
        assert sum(p.value for p in self._metric(run, _SUCCESS, "recorded")) == 1
        assert self._metric(run, _LATENCY, "recorded")

    async def test_failing_handler_is_retried_then_dead(
        self, inbox_container: Any, inbox_topic: brokers_testing.Channel
    ) -> None:
        async with self._running(inbox_container) as run:
            max_attempts = run.settings.inbox.max_attempts
            ok, dead = await self._one_recovers_one_dies(run, inbox_topic, "flaky", failures=2)
            recovers, doomed = ok.event_id, dead.event_id
            dead_count = await run.repository.count_dead(run.consumer)
        assert self.calls[recovers] == 3
        assert ok.delivery_attempts == 3
        assert ok.last_error == "ContractFailure: contract failure 2"
        # Backoff: each retry waited at least retry_delay after the failure before it.
        assert ok.processed_at is not None
        assert ok.processed_at - ok.created_at >= dt.timedelta(
            seconds=run.settings.inbox.retry_delay * 0.9 * 3
        )
        assert self.calls[doomed] == max_attempts
        assert dead.delivery_attempts == max_attempts
        assert dead.last_error == (
            f"ContractFailure: contract failure {max_attempts} (dead after {max_attempts} attempts)"
        )
        assert dead_count == 1
        failures = sum(p.value for p in self._metric(run, _FAILURE, "flaky"))
        assert failures == 2 + max_attempts
        assert sum(p.value for p in self._metric(run, _DEAD, "flaky")) == 1
        assert sum(p.value for p in self._metric(run, _SUCCESS, "flaky")) == 1

    async def test_lease_of_a_dead_worker_expires_after_lock_ttl(
        self, inbox_container: Any, inbox_topic: brokers_testing.Channel
    ) -> None:
        event_id = str(uuid.uuid4())
        async with self._running(inbox_container, worker=False) as run:
            lock_ttl = run.settings.inbox.lock_ttl
            await inbox_topic.publish(
                [(b"{}", self._attributes("recorded", event_id))],
            )
            await self._settled(run, [event_id], models.InboxStatus.PENDING, "the event recorded")
            # A "dead worker": it claims the row and never marks it.
            dead_token = uuid.uuid4()
            claimed_at = models.utcnow()
            claimed = await run.repository.claim(
                run.consumer,
                claimed_at,
                claimed_at - dt.timedelta(seconds=lock_ttl),
                1000,
                dead_token,
            )
            assert [event.event_id for event in claimed] == [event_id], (
                "the inbox contract suite needs a fresh schema (other rows were due)"
            )
            await self._start_worker(inbox_container)
            [stored] = await self._settled(
                run, [event_id], models.InboxStatus.PROCESSED, "the event processed"
            )
            late_mark = await run.repository.mark_processed(
                run.consumer, [event_id], dead_token, models.utcnow()
            )
            effects = await self._effects(run)
        assert self.calls[event_id] == 1
        assert effects == [(event_id, "done")]
        assert stored.delivery_attempts == 2, "the dead worker's claim counts as an attempt"
        assert stored.processed_at is not None
        assert stored.processed_at - claimed_at >= dt.timedelta(seconds=lock_ttl)
        assert late_mark == 0, "the dead worker's fenced mark must change nothing"

    async def test_poison_message_is_parked_and_does_not_hold_back_the_others(
        self, inbox_container: Any, inbox_topic: brokers_testing.Channel
    ) -> None:
        undecodable, unstorable = str(uuid.uuid4()), str(uuid.uuid4())
        good = [str(uuid.uuid4()) for _ in range(5)]
        async with self._running(inbox_container) as run:
            max_attempts = run.settings.inbox.max_attempts
            await inbox_topic.publish(
                [
                    (b"not json", self._attributes("strict", undecodable)),
                    # PostgreSQL text and jsonb cannot hold a NUL character.
                    (b'{"n": 0}', self._attributes("strict", unstorable, tenant="a\x00b")),
                ]
                + [
                    (f'{{"n": {n}}}'.encode(), self._attributes("strict", event_id))
                    for n, event_id in enumerate(good)
                ],
            )
            processed = await self._settled(
                run, good, models.InboxStatus.PROCESSED, "the good events processed"
            )
            [undecodable_row, unstorable_row] = await self._settled(
                run, [undecodable, unstorable], models.InboxStatus.DEAD, "the poison parked"
            )
            assert await run.repository.count_dead(run.consumer) == 2
        assert all(stored.delivery_attempts == 1 for stored in processed)
        assert undecodable_row.delivery_attempts == max_attempts
        assert self.calls[undecodable] == max_attempts
        assert undecodable_row.last_error is not None
        assert undecodable_row.last_error.startswith("JSONDecodeError: ")
        assert undecodable_row.last_error.endswith(f"(dead after {max_attempts} attempts)")
        # Refused by the receiver: kept, scrubbed, never handed to a handler.
        assert self.calls[unstorable] == 0
        assert unstorable_row.delivery_attempts == 0
        assert unstorable_row.headers == {"tenant": "a\ufffdb"}
        assert unstorable_row.last_error is not None
        assert "contains a NUL character" in unstorable_row.last_error
        assert sum(p.value for p in self._metric(run, _DEAD, "strict")) == 2

    async def test_event_type_without_a_handler_is_parked(
        self, inbox_container: Any, inbox_topic: brokers_testing.Channel
    ) -> None:
        event_id = str(uuid.uuid4())
        async with self._running(inbox_container) as run:
            if handlers_module.DEFAULT_HANDLER in self.service_handlers:
                pytest.skip('the service registers a default handler ("*"): nothing is parked')
            await inbox_topic.publish(
                [(b"{}", self._attributes("unhandled", event_id))],
            )
            [parked] = await self._settled(
                run, [event_id], models.InboxStatus.DEAD, "the event parked"
            )
        assert parked.delivery_attempts == 1, "parked at once, not retried"
        assert parked.last_error == (
            f"no handler registered for event type {self._type('unhandled')!r}"
        )

    async def test_transactional_handler_rollback_leaves_no_partial_effect(
        self, inbox_container: Any, inbox_topic: brokers_testing.Channel
    ) -> None:
        async with self._running(inbox_container) as run:
            max_attempts = run.settings.inbox.max_attempts
            ok, dead = await self._one_recovers_one_dies(run, inbox_topic, "partial", failures=1)
            recovers, doomed = ok.event_id, dead.event_id
            effects = await self._effects(run)
        # Each failed run wrote its two rows and was rolled back: one set, from the run that
        # succeeded, and none of the event that never did.
        assert sorted(effects) == [(recovers, "first"), (recovers, "second")]
        assert self.calls[recovers] == 2 and ok.delivery_attempts == 2
        assert ok.last_error == "ContractFailure: contract failure 1 after writing"
        assert self.calls[doomed] == max_attempts
        assert dead.delivery_attempts == max_attempts

    async def test_service_handlers_run_once_per_sample_event(
        self,
        inbox_container: Any,
        inbox_topic: brokers_testing.Channel,
        request: pytest.FixtureRequest,
    ) -> None:
        try:
            samples: Sequence[InboxSample] = request.getfixturevalue("inbox_samples")
        except pytest.FixtureLookupError:
            pytest.skip("no inbox_samples fixture: the service's own handlers are not exercised")
        assert samples, "inbox_samples is empty"
        ids = [str(uuid.uuid4()) for _ in samples]
        messages = [
            (
                sample.payload,
                {**sample.attributes, "event_id": event_id, "event_type": sample.event_type},
            )
            for sample, event_id in zip(samples, ids, strict=True)
        ]
        async with self._running(inbox_container) as run:
            # Each sample twice: in one request, the second copy a duplicate of the first.
            await inbox_topic.publish(messages + messages)

            async def settled() -> bool:
                for event_id in ids:
                    stored = await run.repository.get(run.consumer, event_id)
                    if stored is not None and stored.status is models.InboxStatus.DEAD:
                        raise AssertionError(
                            f"sample {stored.event_type} ({event_id}) is dead: {stored.last_error}"
                        )
                    if stored is None or stored.status is not models.InboxStatus.PROCESSED:
                        return False
                return run.receiver.stats.duplicates >= len(ids)

            await wait_until(settled, self.wait_timeout, "every sample processed, duplicates seen")
            stored = [await self._stored(run, event_id) for event_id in ids]
        for sample, event_id, row in zip(samples, ids, stored, strict=True):
            assert self.service_calls[event_id] == 1, (
                f"the handler of {sample.event_type} ran {self.service_calls[event_id]} times"
            )
            assert row.delivery_attempts == 1, f"{sample.event_type} needed a retry"


_SUCCESS = observability.INBOX_SUCCESS
_FAILURE = observability.INBOX_FAILURE
_LATENCY = observability.INBOX_LATENCY
_DUPLICATE = observability.INBOX_DUPLICATE
_DEAD = observability.INBOX_DEAD
