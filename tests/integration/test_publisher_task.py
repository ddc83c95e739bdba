"""PublisherTask against a real PostgreSQL, with the in-memory publisher."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from psycopg2 import sql

from outbox_di import config, database, models, observability, repository, schema
from outbox_di.publishing import base
from outbox_di.publishing.task import PublisherTask
from outbox_di.testing.publisher_suite import metric_points

pytestmark = pytest.mark.integration


def _config(schema: str, dsn: str, **publisher: Any) -> config.OutboxConfig:
    settings: dict[str, Any] = {
        "topic": "events",
        "tick_interval": "50ms",
        "lock_ttl": "30s",
        "publish_timeout": "5s",
        "backoff": {"initial": "10ms", "max": "50ms", "jitter": 0.1},
    }
    settings.update(publisher)
    return config.OutboxConfig.from_mapping({"schema": schema, "dsn": dsn, "publisher": settings})


async def _enqueue(
    pool: Any, repo: repository.OutboxRepository, count: int, key: str = "a"
) -> list[uuid.UUID]:
    messages = [
        models.Message("item", f"{key}-{n}", "item.created", {"n": n}) for n in range(count)
    ]
    async with pool.acquire() as conn, conn.cursor() as cursor, cursor.begin():
        return await repo.enqueue_many(cursor, messages)


async def _until(predicate: Callable[[], bool], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.01)


async def test_relays_every_event_once(
    outbox_pool: Any, outbox_repository: repository.OutboxRepository, outbox_dsn: str
) -> None:
    ids = await _enqueue(outbox_pool, outbox_repository, 1200)
    sink = base.InMemoryPublisher()
    cfg = _config(outbox_repository.schema, outbox_dsn, batch_size=100, workers=3)
    async with PublisherTask(cfg, outbox_repository, sink) as task:
        await _until(lambda: len(sink.published) >= 1200)
        await _until(lambda: task.stats.published >= 1200)
    assert sorted(e.event_id for e in sink.published) == sorted(ids)
    assert await outbox_repository.count_pending() == 0
    stored = await outbox_repository.get(ids[0])
    assert stored is not None and stored.status is models.OutboxStatus.PUBLISHED


async def test_notify_wakes_an_idle_worker_long_before_the_poll(
    outbox_pool: Any, outbox_repository: repository.OutboxRepository, outbox_dsn: str
) -> None:
    sink = base.InMemoryPublisher()
    cfg = _config(outbox_repository.schema, outbox_dsn, tick_interval="30s", workers=1)
    async with PublisherTask(cfg, outbox_repository, sink):
        await asyncio.sleep(0.3)  # the worker is now idle, waiting up to 30 s
        started = time.monotonic()
        await _enqueue(outbox_pool, outbox_repository, 1)
        await _until(lambda: len(sink.published) == 1, timeout=5)
        assert time.monotonic() - started < 2.0


class _CountingRepository(repository.OutboxRepository):
    """Counts claims, and how many found nothing."""

    claims = 0
    empty_claims = 0

    async def claim_pending(self, *args: Any, **kwargs: Any) -> list[models.OutboxEvent]:
        events = await super().claim_pending(*args, **kwargs)
        self.claims += 1
        self.empty_claims += not events
        return events


class _ConcurrencyProbe(base.InMemoryPublisher):
    """A slow publisher that notes how many batches were in flight at once."""

    def __init__(self, delay: float) -> None:
        super().__init__()
        self.set_delay(delay)
        self.in_flight = 0
        self.most_in_flight = 0

    async def publish(self, events: Any) -> Any:
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            return await super().publish(events)
        finally:
            self.in_flight -= 1


async def test_a_notify_wakes_one_idle_worker_and_a_full_batch_wakes_another(
    outbox_pool: Any, outbox_repository: repository.OutboxRepository, outbox_dsn: str
) -> None:
    repo = _CountingRepository(outbox_pool, outbox_repository.schema)
    sink = _ConcurrencyProbe(delay=0.2)
    cfg = _config(repo.schema, outbox_dsn, tick_interval="30s", workers=3, batch_size=10)
    async with PublisherTask(cfg, repo, sink):
        await asyncio.sleep(0.3)  # every worker has claimed nothing and is idle for 30 s
        repo.claims = repo.empty_claims = 0
        await _enqueue(outbox_pool, repo, 1)
        await _until(lambda: len(sink.published) == 1, timeout=5)
        await asyncio.sleep(0.1)
        # One row, one NOTIFY: one worker claimed it (then found nothing more), the others slept.
        assert repo.claims - repo.empty_claims == 1
        assert repo.empty_claims <= 1
        # 25 rows in one transaction are one NOTIFY: the woken worker's full batch wakes a
        # second, whose full batch wakes the third; all long before the 30 s poll.
        started = time.monotonic()
        await _enqueue(outbox_pool, repo, 25, key="b")
        await _until(lambda: len(sink.published) == 26, timeout=5)
        assert time.monotonic() - started < 2.0
        assert sink.most_in_flight >= 2


async def test_a_notify_while_every_worker_is_busy_is_not_lost(
    outbox_pool: Any, outbox_repository: repository.OutboxRepository, outbox_dsn: str
) -> None:
    sink = _ConcurrencyProbe(delay=0.3)
    cfg = _config(outbox_repository.schema, outbox_dsn, tick_interval="30s", workers=1)
    async with PublisherTask(cfg, outbox_repository, sink):
        await asyncio.sleep(0.3)
        await _enqueue(outbox_pool, outbox_repository, 1)
        await _until(lambda: sink.in_flight == 1, timeout=5)
        # Committed while the only worker is publishing: its NOTIFY finds no idle worker, so
        # the worker claims again as soon as it is done instead of sleeping 30 s.
        await _enqueue(outbox_pool, outbox_repository, 1, key="b")
        await _until(lambda: len(sink.published) == 2, timeout=5)


async def test_poll_finds_rows_without_notify(
    outbox_pool: Any, outbox_repository: repository.OutboxRepository, outbox_dsn: str
) -> None:
    sink = base.InMemoryPublisher()
    cfg = _config(outbox_repository.schema, outbox_dsn, notify=False, tick_interval="100ms")
    async with PublisherTask(cfg, outbox_repository, sink):
        await asyncio.sleep(0.2)
        await _enqueue(outbox_pool, outbox_repository, 3)
        await _until(lambda: len(sink.published) == 3, timeout=5)


async def test_failures_are_retried_with_error_and_attempts_recorded(
    outbox_pool: Any, outbox_repository: repository.OutboxRepository, outbox_dsn: str
) -> None:
    [event_id] = await _enqueue(outbox_pool, outbox_repository, 1)
    sink = base.InMemoryPublisher()
    sink.fail_next(2, "broker said no")
    cfg = _config(outbox_repository.schema, outbox_dsn, workers=1)
    async with PublisherTask(cfg, outbox_repository, sink) as task:
        await _until(lambda: len(sink.published) == 1)
        await _until(lambda: task.stats.published == 1)
    stored = await outbox_repository.get(event_id)
    assert stored is not None
    assert stored.status is models.OutboxStatus.PUBLISHED
    assert stored.delivery_attempts == 3
    assert stored.last_error == "broker said no"
    assert task.stats.failed == 2


async def test_dead_letter_after_max_attempts_and_at_once_when_permanent(
    outbox_pool: Any, outbox_repository: repository.OutboxRepository, outbox_dsn: str
) -> None:
    [retried] = await _enqueue(outbox_pool, outbox_repository, 1)
    sink = base.InMemoryPublisher()
    sink.fail_next(1000, "unavailable")
    cfg = _config(outbox_repository.schema, outbox_dsn, workers=1, max_attempts=3)
    async with PublisherTask(cfg, outbox_repository, sink) as task:
        await _until(lambda: task.stats.dead == 1)
        sink.fail_next(1, "message too large", permanent=True)
        [permanent] = await _enqueue(outbox_pool, outbox_repository, 1, key="p")
        await _until(lambda: task.stats.dead == 2)
    dead = await outbox_repository.get(retried)
    assert dead is not None and dead.status is models.OutboxStatus.DEAD
    assert dead.delivery_attempts == 3
    assert dead.last_error is not None and "unavailable" in dead.last_error
    assert "3 attempts" in dead.last_error
    at_once = await outbox_repository.get(permanent)
    assert at_once is not None and at_once.status is models.OutboxStatus.DEAD
    assert at_once.delivery_attempts == 1
    assert at_once.last_error is not None and "message too large" in at_once.last_error
    assert await outbox_repository.count_pending() == 0


async def test_stop_releases_in_flight_claims_within_the_deadline(
    outbox_pool: Any, outbox_repository: repository.OutboxRepository, outbox_dsn: str
) -> None:
    ids = await _enqueue(outbox_pool, outbox_repository, 10)
    sink = base.InMemoryPublisher()
    sink.set_delay(4.0)  # a broker that hangs
    cfg = _config(outbox_repository.schema, outbox_dsn, workers=1, shutdown_timeout="300ms")
    task = PublisherTask(cfg, outbox_repository, sink)
    await task.start()
    await asyncio.sleep(0.3)
    started = time.monotonic()
    await task.stop()
    assert time.monotonic() - started < 1.5
    assert not task.running
    for event_id in ids:
        stored = await outbox_repository.get(event_id)
        assert stored is not None
        assert stored.lock_token is None, "a released row must be due again at once"
        assert stored.delivery_attempts == 0
    # ...so a new worker gets them at once, without waiting for lock_ttl.
    now = models.utcnow()
    claimed = await outbox_repository.claim_pending(now, now, 100, uuid.uuid4())
    assert len(claimed) == 10


async def test_a_killed_worker_s_rows_are_published_by_another_after_lock_ttl(
    outbox_pool: Any, outbox_repository: repository.OutboxRepository, outbox_dsn: str
) -> None:
    ids = await _enqueue(outbox_pool, outbox_repository, 50)
    hanging = base.InMemoryPublisher()
    hanging.set_delay(60)
    cfg = _config(
        outbox_repository.schema, outbox_dsn, workers=1, lock_ttl="1s", publish_timeout="500ms"
    )
    doomed = PublisherTask(cfg, outbox_repository, hanging)
    await doomed.start()
    await _until(lambda: hanging.batches == 0 and bool(doomed._claims))
    for worker in doomed._workers + doomed._helpers:
        worker.cancel()  # killed: no cleanup, the lease stays behind
    await asyncio.gather(*doomed._workers, *doomed._helpers, return_exceptions=True)
    sink = base.InMemoryPublisher()
    async with PublisherTask(cfg, outbox_repository, sink):
        await _until(lambda: len(sink.published) == 50)
    assert sorted(e.event_id for e in sink.published) == sorted(ids)
    assert all(e.delivery_attempts == 2 for e in sink.published)


async def test_recovers_after_database_connections_are_killed(
    outbox_pool: Any, outbox_schema: str, outbox_dsn: str
) -> None:
    sink = base.InMemoryPublisher()
    cfg = _config(outbox_schema, outbox_dsn, workers=2)
    victim = "outbox_di_outage_test"
    async with database.open_pool(outbox_dsn, application_name=victim) as relay_pool:
        repo = repository.OutboxRepository(relay_pool, outbox_schema)
        async with PublisherTask(cfg, repo, sink) as task:
            await _enqueue(outbox_pool, repo, 10)
            await _until(lambda: len(sink.published) == 10)
            async with outbox_pool.acquire() as conn, conn.cursor() as cursor:
                await cursor.execute(
                    schema.Queries(repo.schema, files=schema.TEST_KIT_FILES)[
                        "test_terminate_backends"
                    ].sql,
                    {"application_name": victim},
                )
                assert cursor.rowcount >= 1
            await _enqueue(outbox_pool, repo, 10, key="b")
            await _until(lambda: len(sink.published) >= 20)
            assert task.running
        assert await repo.count_pending() == 0


async def test_metrics_have_the_contract_names_and_can_be_turned_off(
    outbox_pool: Any, outbox_repository: repository.OutboxRepository, outbox_dsn: str
) -> None:
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    meter = provider.get_meter("test")
    await _enqueue(outbox_pool, outbox_repository, 5)
    sink = base.InMemoryPublisher()
    sink.fail_next(1)
    cfg = _config(outbox_repository.schema, outbox_dsn, workers=1)
    async with PublisherTask(cfg, outbox_repository, sink, meter=meter) as task:
        await _until(lambda: task.stats.published == 5)
    points = metric_points(reader)
    success = points["outbox_publish_success_total"]
    assert sum(p.value for p in success) == 5
    assert dict(success[0].attributes) == {
        "schema": outbox_repository.schema,
        "event_type": "item.created",
    }
    assert sum(p.value for p in points["outbox_publish_failure_total"]) == 1
    assert sum(p.count for p in points["outbox_publish_latency_ms"]) >= 1
    assert sum(p.count for p in points["outbox_publish_lag_ms"]) == 5
    assert "outbox_pending_gauge" in points
    assert "outbox_oldest_pending_age_ms" in points

    quiet_reader = InMemoryMetricReader()
    quiet = MeterProvider(metric_readers=[quiet_reader])
    await _enqueue(outbox_pool, outbox_repository, 2, key="q")
    off = _config(outbox_repository.schema, outbox_dsn, workers=1, metrics_enabled=False)
    async with PublisherTask(off, outbox_repository, sink, meter=quiet.get_meter("t")) as task:
        await _until(lambda: task.stats.published == 2)
    assert metric_points(quiet_reader) == {}
    provider.shutdown()
    quiet.shutdown()


async def test_enqueue_captures_the_trace_and_publish_spans_link_to_it(
    outbox_pool: Any, outbox_repository: repository.OutboxRepository, outbox_dsn: str
) -> None:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("test")
    with tracer.start_as_current_span("create item") as request_span:
        [traced] = await _enqueue(outbox_pool, outbox_repository, 1)
    [untraced] = await _enqueue(outbox_pool, outbox_repository, 1, key="plain")
    context = request_span.get_span_context()
    stored = await outbox_repository.get(traced)
    assert stored is not None
    assert stored.headers["traceparent"] == (
        f"00-{context.trace_id:032x}-{context.span_id:016x}-{int(context.trace_flags):02x}"
    )
    plain = await outbox_repository.get(untraced)
    assert plain is not None and "traceparent" not in plain.headers

    sink = base.InMemoryPublisher()
    cfg = _config(outbox_repository.schema, outbox_dsn, workers=1)
    async with PublisherTask(cfg, outbox_repository, sink, tracer=tracer) as task:
        await _until(lambda: task.stats.published == 2)
    spans = [s for s in exporter.get_finished_spans() if s.name == "outbox publish"]
    assert len(spans) == 2
    by_event = {s.attributes["outbox.event_id"]: s for s in spans if s.attributes}
    linked = by_event[str(traced)]
    assert [link.context.trace_id for link in linked.links] == [context.trace_id]
    assert list(by_event[str(untraced)].links) == []
    provider.shutdown()


def _field(record: logging.LogRecord, name: str) -> Any:
    """A structured field of a log record (what ``extra=`` set)."""
    return record.__dict__[name]


def _records_of(caplog: pytest.LogCaptureFixture, event_id: uuid.UUID) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.__dict__.get("event_id") == str(event_id)]


def _assert_timings(record: logging.LogRecord) -> None:
    latency_ms: Any = _field(record, "latency_ms")
    lag_ms: Any = _field(record, "lag_ms")
    assert isinstance(latency_ms, float) and 0.0 <= latency_ms < 5_000.0
    assert isinstance(lag_ms, float) and 0.0 <= lag_ms < 60_000.0


async def test_published_retried_and_dead_events_are_logged_with_their_fields(
    outbox_pool: Any,
    outbox_repository: repository.OutboxRepository,
    outbox_dsn: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="outbox_di")
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    sink = base.InMemoryPublisher()
    cfg = _config(outbox_repository.schema, outbox_dsn, workers=1, max_attempts=2)
    async with PublisherTask(
        cfg, outbox_repository, sink, meter=provider.get_meter("test")
    ) as task:
        sink.fail_next(1, "broker said no")
        [retried] = await _enqueue(outbox_pool, outbox_repository, 1, key="r")
        await _until(lambda: task.stats.published == 1)
        sink.fail_next(2, "unavailable")
        [doomed] = await _enqueue(outbox_pool, outbox_repository, 1, key="d")
        await _until(lambda: task.stats.dead == 1)
        sink.fail_next(1, "message too large", permanent=True)
        [refused] = await _enqueue(outbox_pool, outbox_repository, 1, key="p")
        await _until(lambda: task.stats.dead == 2)

    # A failure, then the publish: WARNING with the error, then DEBUG with the timings.
    failure, success = _records_of(caplog, retried)
    assert (failure.levelno, success.levelno) == (logging.WARNING, logging.DEBUG)
    for record, attempt in ((failure, 1), (success, 2)):
        assert _field(record, "aggregate_id") == "r-0"
        assert _field(record, "event_type") == "item.created"
        assert _field(record, "attempt") == attempt
        _assert_timings(record)
    assert _field(failure, "error") == "broker said no"
    assert _field(success, "lag_ms") >= _field(failure, "lag_ms")
    assert f"outbox event {retried} published (attempt 2)" in success.getMessage()

    # Retried once, then dead after max_attempts: WARNING, then ERROR, both with the error.
    first, last = _records_of(caplog, doomed)
    assert (first.levelno, last.levelno) == (logging.WARNING, logging.ERROR)
    assert [_field(first, "attempt"), _field(last, "attempt")] == [1, 2]
    assert _field(first, "error") == _field(last, "error") == "unavailable"
    assert f"outbox event {doomed} dead-lettered after 2 attempts" in last.getMessage()
    _assert_timings(last)

    # A permanent error: dead at once, on its first attempt.
    [at_once] = _records_of(caplog, refused)
    assert at_once.levelno == logging.ERROR
    assert _field(at_once, "attempt") == 1
    assert _field(at_once, "aggregate_id") == "p-0"
    assert _field(at_once, "error") == "message too large"

    dead = metric_points(reader)[observability.OUTBOX_DEAD]
    assert sum(point.value for point in dead) == 2
    assert {tuple(sorted(point.attributes.items())) for point in dead} == {
        (("event_type", "item.created"), ("schema", outbox_repository.schema))
    }
    assert task.stats.lease_lost == 0
    provider.shutdown()


class _DebugProbe(logging.Logger):
    """A logger that counts how often it is asked whether DEBUG is enabled."""

    debug_checks = 0

    def isEnabledFor(self, level: int) -> bool:
        if level == logging.DEBUG:
            self.debug_checks += 1
        return super().isEnabledFor(level)


async def test_with_debug_off_the_per_event_log_costs_one_check_per_batch(
    outbox_pool: Any,
    outbox_repository: repository.OutboxRepository,
    outbox_dsn: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    probe = _DebugProbe("outbox_di.test_probe", level=logging.INFO)
    probe.addHandler(caplog.handler)
    await _enqueue(outbox_pool, outbox_repository, 300)
    sink = base.InMemoryPublisher()
    cfg = _config(outbox_repository.schema, outbox_dsn, workers=1, batch_size=50)
    async with PublisherTask(cfg, outbox_repository, sink, logger=probe) as task:
        await _until(lambda: task.stats.published == 300)
    assert task.stats.batches == 6
    assert probe.debug_checks == task.stats.batches
    assert not [r for r in caplog.records if r.name == probe.name]


class _LeaseThief(base.InMemoryPublisher):
    """On its first call, another worker takes the lease of the events ``steal`` picks (as
    after lock_ttl) while the publish fails for the whole batch; later calls publish."""

    def __init__(
        self, pool: Any, schema: str, steal: Callable[[models.OutboxEvent], bool], **fail: Any
    ) -> None:
        super().__init__()
        self.pool = pool
        self.schema = schema
        self.steal = steal
        self.fail = fail
        self.thief = uuid.uuid4()
        self.stolen: list[uuid.UUID] = []
        self.calls = 0

    async def publish(self, events: Any) -> Any:
        self.calls += 1
        if self.calls > 1:
            return await super().publish(events)
        self.stolen = [e.event_id for e in events if self.steal(e)]
        statement = sql.SQL(
            "UPDATE {}.outbox_events SET lock_token = %s WHERE event_id = ANY(%s::uuid[])"
        ).format(sql.Identifier(self.schema))
        async with self.pool.acquire() as conn, conn.cursor() as cursor:
            await cursor.execute(statement, (str(self.thief), [str(i) for i in self.stolen]))
        return [base.PublishOutcome(**self.fail) for _ in events]


def _lease_warnings(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [
        r
        for r in caplog.records
        if r.levelno == logging.WARNING and hasattr(r, "lock_token") and "lease lost" in r.msg
    ]


async def test_a_lost_lease_on_reschedule_is_logged_with_the_event_and_counted(
    outbox_pool: Any,
    outbox_repository: repository.OutboxRepository,
    outbox_dsn: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="outbox_di")
    ids = await _enqueue(outbox_pool, outbox_repository, 3)
    thief = _LeaseThief(
        outbox_pool,
        outbox_repository.schema,
        lambda event: event.aggregate_id == "a-1",
        error="broker said no",
    )
    cfg = _config(outbox_repository.schema, outbox_dsn, workers=1)
    async with PublisherTask(cfg, outbox_repository, thief) as task:
        # The two rows still leased to the task are rescheduled and then published.
        await _until(lambda: task.stats.published == 2)
    [stolen] = thief.stolen
    assert stolen == ids[1]
    assert task.stats.lease_lost == 1
    [warning] = _lease_warnings(caplog)
    assert _field(warning, "event_id") == str(stolen)
    lock_token: Any = _field(warning, "lock_token")
    assert str(lock_token) in warning.getMessage()
    assert lock_token != str(thief.thief)
    assert "not rescheduled by this worker: broker said no" in warning.getMessage()
    row = await outbox_repository.get(stolen)
    assert row is not None and row.lock_token == thief.thief and row.last_error is None


async def test_a_lost_lease_on_dead_letter_is_logged_and_counted_not_dead(
    outbox_pool: Any,
    outbox_repository: repository.OutboxRepository,
    outbox_dsn: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="outbox_di")
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    [event_id] = await _enqueue(outbox_pool, outbox_repository, 1)
    thief = _LeaseThief(
        outbox_pool,
        outbox_repository.schema,
        lambda event: True,
        error="message too large",
        permanent=True,
    )
    cfg = _config(outbox_repository.schema, outbox_dsn, workers=1)
    async with PublisherTask(cfg, outbox_repository, thief, meter=provider.get_meter("t")) as task:
        await _until(lambda: task.stats.lease_lost == 1)
    assert task.stats.dead == 0 and task.stats.failed == 1
    [warning] = _lease_warnings(caplog)
    assert _field(warning, "event_id") == str(event_id)
    assert _field(warning, "attempt") == 1
    assert _field(warning, "error") == "message too large"
    assert str(_field(warning, "lock_token")) in warning.getMessage()
    assert "not dead-lettered by this worker" in warning.getMessage()
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert observability.OUTBOX_DEAD not in metric_points(reader)
    row = await outbox_repository.get(event_id)
    assert row is not None and row.status is models.OutboxStatus.PENDING
    provider.shutdown()
