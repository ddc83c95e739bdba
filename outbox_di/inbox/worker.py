"""``InboxWorker``: claim due inbox rows, run the handler registered for each, mark the result.

``InboxWorker`` runs ``inbox.workers`` loops on one event loop. Each loop:

1. claims up to ``inbox.batch_size`` due rows of its consumer with a fresh lock token (a lease
   of ``inbox.lock_ttl``: a row leased by a dead worker is due again after it);
2. runs the handlers, events of different ordering keys concurrently and events of the same
   key one after the other, each within ``inbox.handler_timeout``;
3. marks the successes of plain handlers processed in one statement, fenced by the token;
4. records a failure (exception or timeout) with capped exponential backoff from
   ``inbox.retry_delay``, and parks the row as dead after ``inbox.max_attempts``; an event type
   with no handler (and no ``"*"`` default) is parked at once.

A handler declared *transactional* (``@handlers.on("x", transactional=True)``) runs inside a
transaction on the pool, gets the aiopg cursor as ``session``, and ``processed_at`` is written in
that same transaction, so its own writes happen exactly once.

An idle loop sleeps until a NOTIFY from the inbox insert trigger arrives, a retry this worker
scheduled comes due, or ``poll_interval`` passes. ``stop()`` lets in-flight batches finish
within its timeout, then cancels them and gives the leases back.

Retention: every ``purge_interval`` the worker deletes its consumer's rows processed more than
``inbox.retention`` ago, ``purge_batch_size`` rows per statement (each its own short
transaction, ``SKIP LOCKED``), so the table stays small without a long lock or an operator job.
``OutboxContainer`` passes ``purge_interval=None``: its ``retention`` resource
(:mod:`outbox_di.retention`) does that for every consumer, and for the outbox.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import datetime as dt
import heapq
import logging
import random
import sys
import time
import uuid
from collections.abc import Awaitable, Mapping, Sequence
from typing import Any

from opentelemetry import trace
from opentelemetry.metrics import Meter
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from outbox_di import aio, errors, models, observability, runtime
from outbox_di import config as config_module
from outbox_di.inbox import handlers as handlers_module
from outbox_di.publishing import backoff
from outbox_di.repository import InboxRepository

Handler = handlers_module.Handler
DEFAULT_HANDLER = handlers_module.DEFAULT_HANDLER
_MAX_RETRY_DELAY = 300.0
_PURGE_PAUSE = 0.01  # between two purge batches: let claims and inserts in
_PROPAGATOR = TraceContextTextMapPropagator()
_NO_SPAN = contextlib.nullcontext()


class _LeaseLost(Exception):
    """The fenced mark changed nothing: roll the handler's transaction back."""


def is_transactional(handler: Handler) -> bool:
    """Whether ``handler`` is declared transactional (see
    :func:`outbox_di.inbox.handlers.is_transactional`)."""
    return handlers_module.is_transactional(handler)


@dataclasses.dataclass(frozen=True)
class _Registration:
    handler: Handler
    transactional: bool


@dataclasses.dataclass
class _Claim:
    token: uuid.UUID
    event_ids: set[str]


@dataclasses.dataclass
class _Group:
    """The events of a batch that run one after the other (one ordering key, or one event).

    Every group's first handler starts with the batch, so one timer (``asyncio.wait`` with
    ``handler_timeout`` in ``run_once``) times them all out, instead of one timer per handler;
    the group's later handlers, which start later, get their own (``aio.within``).
    """

    events: list[models.InboxEvent]
    started: bool = False  # a handler of this group has run (the next ones time themselves)
    in_first: bool = False  # the first handler is running, under the batch's timer
    timed_out: bool = False  # the batch's timer cancelled it


@dataclasses.dataclass
class _Outcome:
    """What one event's run came to; ``done`` means already settled in the database."""

    event: models.InboxEvent
    ok: bool = False
    done: bool = False
    error: str | None = None


@dataclasses.dataclass
class InboxWorkerStats:
    """Counters since start, for tests, benchmarks and the demo."""

    processed: int = 0
    failed: int = 0
    dead: int = 0
    parked: int = 0
    lease_lost: int = 0
    batches: int = 0
    outages: int = 0
    purged: int = 0


class InboxWorker(runtime.Supervised):
    """Runs handlers on the inbox of one consumer (see the module docstring)."""

    def __init__(
        self,
        config: config_module.OutboxConfig,
        repository: InboxRepository,
        handlers: Mapping[str, Handler],
        logger: logging.Logger | None = None,
        meter: Meter | None = None,
        *,
        tracer: trace.Tracer | None = None,
        poll_interval: float = 1.0,
        shutdown_timeout: float = 10.0,
        purge_interval: float | None = 60.0,
        purge_batch_size: int = 1000,
        rng: random.Random | None = None,
    ) -> None:
        if (purge_interval is not None and purge_interval <= 0) or purge_batch_size < 1:
            raise ValueError(
                "purge_interval must be positive (or None: no purge) and purge_batch_size at "
                "least 1"
            )
        self.config = config
        self.settings = config.inbox
        self.repository = repository
        self.consumer = config.inbox_consumer
        # The same rules as registration: a plain mapping's handlers are checked here.
        registered = handlers_module.InboxHandlers(handlers)
        self.handlers = {
            event_type: _Registration(
                registered[event_type], registered.is_transactional(event_type)
            )
            for event_type in registered
        }
        for event_type, registration in self.handlers.items():
            if not callable(registration.handler):
                raise TypeError(f"the handler for {event_type!r} is not callable")
        self.logger = logger or observability.logger
        self.metrics = observability.InboxMetrics(
            meter, config.schema, self.consumer, enabled=self.settings.metrics_enabled
        )
        self.stats = InboxWorkerStats()
        self._tracer = tracer or (
            observability.get_tracer() if observability.tracing_configured() else None
        )
        self.poll_interval = poll_interval
        self.shutdown_timeout = shutdown_timeout
        self.purge_interval = purge_interval
        self.purge_batch_size = purge_batch_size
        self._rng = rng or random.Random()
        self._lock_ttl = dt.timedelta(seconds=self.settings.lock_ttl)
        # Every idle loop waits on this event; a wake sets it and puts a fresh one in its place.
        self._wake = asyncio.Event()
        self._claims: dict[int, _Claim] = {}
        self._runtime = runtime.Runtime(
            "InboxWorker",
            self.logger,
            self._rng,
            wake=self._notify,
            release=self._release_leftovers,
        )
        # When the retries this worker scheduled come due (time.monotonic()), earliest first.
        self._retries_due: list[float] = []

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """Start the loops (and the NOTIFY listener); returns at once."""
        self._runtime.begin()
        self._runtime.spawn_helper(self._listen(), "inbox-listen")
        if self.purge_interval is not None:
            self._runtime.spawn_every(self.purge_interval, self._purge_step, "inbox-purge")
        if self.metrics.enabled:
            self._runtime.spawn_every(
                runtime.STATS_INTERVAL, self._report_backlog_once, "inbox-stats"
            )
        self._runtime.spawn_loops(self.settings.workers, self._run, "inbox-worker")

    async def stop(self, timeout: float | None = None) -> None:
        """Drain: finish in-flight batches within ``timeout`` (``shutdown_timeout``), then
        cancel what is left and release its leases."""
        await self._runtime.stop(timeout, default=self.shutdown_timeout)

    async def _release_leftovers(self) -> None:
        """Give back the leases of the rows left unsettled (after their loops were stopped)."""

        async def release(claim: _Claim) -> None:
            await self.repository.release(self.consumer, claim.event_ids, claim.token)

        await runtime.release_leftovers(
            self._claims,
            release,
            lost="could not release %d leased inbox rows on stop; they are due again after "
            "lock_ttl (%.0fs)",
            lock_ttl=self.settings.lock_ttl,
            logger=self.logger,
        )

    # -- the loop --------------------------------------------------------------------------

    async def _run(self, number: int) -> None:
        async def step() -> tuple[int, asyncio.Event]:
            # The event of this round: a NOTIFY during the batch makes the idle wait end at once.
            wake = self._wake
            return await self.run_once(number), wake

        async def after(result: tuple[int, asyncio.Event]) -> None:
            claimed, wake = result
            if claimed < self.settings.batch_size:
                await self._idle(wake)

        def outage(exc: Exception, delay: float) -> None:
            self.stats.outages += 1
            if isinstance(exc, errors.DatabaseError):
                self.logger.warning(
                    "inbox worker %d: database unavailable (%s); retrying in %.1fs",
                    number,
                    exc,
                    delay,
                )
            else:
                self.logger.error(
                    "inbox worker %d: unexpected error; its claim is due again after "
                    "lock_ttl; retrying in %.1fs",
                    number,
                    delay,
                    exc_info=exc,
                )

        await self._runtime.loop(
            step, outage=outage, initial=min(self.poll_interval, 1.0), after=after
        )

    async def _idle(self, wake: asyncio.Event) -> None:
        """Wait for ``wake``, ``poll_interval``, or the first retry this worker scheduled."""
        if self._runtime.stopping:
            return
        timeout = self.poll_interval
        now = time.monotonic()
        while self._retries_due and self._retries_due[0] <= now:
            heapq.heappop(self._retries_due)
        if self._retries_due:
            timeout = min(timeout, self._retries_due[0] - now + 0.001)
        await aio.wait_event(wake, timeout)

    def _notify(self) -> None:
        """Wake every idle loop; the next waiters get a fresh event."""
        wake, self._wake = self._wake, asyncio.Event()
        wake.set()

    async def run_once(self, number: int = 0) -> int:
        """One claim → handle → mark cycle; returns how many rows were claimed."""
        token = uuid.uuid4()
        now = models.utcnow()
        events = await self.repository.claim(
            self.consumer, now, now - self._lock_ttl, self.settings.batch_size, token
        )
        if not events:
            return 0
        claim = _Claim(token, {event.event_id for event in events})
        self._claims[number] = claim
        self.stats.batches += 1

        # Same ordering key: one after the other, in claim (seq) order; the rest concurrently.
        groups: list[_Group] = []
        by_key: dict[str, _Group] = {}
        for event in events:
            if not event.ordering_key:
                groups.append(_Group([event]))
            elif event.ordering_key in by_key:
                by_key[event.ordering_key].events.append(event)
            else:
                by_key[event.ordering_key] = group = _Group([event])
                groups.append(group)
        loop = asyncio.get_running_loop()
        # Once per batch: with DEBUG off, per-event logging costs nothing more than this.
        debug = self.logger.isEnabledFor(logging.DEBUG)
        tasks = [loop.create_task(self._run_group(token, group, debug)) for group in groups]
        try:
            _, pending = await asyncio.wait(tasks, timeout=self.settings.handler_timeout)
            if pending:
                for task, group in zip(tasks, groups, strict=True):
                    if group.in_first and not task.done():
                        group.timed_out = True
                        task.cancel()
                await asyncio.wait(tasks)
        except BaseException:  # cancelled (stop(), a dying worker): the handlers go first
            for task in tasks:
                task.cancel()
            await asyncio.wait(tasks)
            raise
        outcomes: list[_Outcome] = []
        failure: BaseException | None = None
        for task in tasks:
            if task.cancelled():
                failure = failure or errors.OutboxError("an inbox handler run was cancelled")
            elif (exc := task.exception()) is not None:
                failure = failure or exc
            else:
                outcomes.extend(task.result())

        succeeded = [o.event for o in outcomes if o.ok and not o.done]
        if succeeded:
            marked = await self.repository.mark_processed_ids(
                self.consumer, [e.event_id for e in succeeded], token, models.utcnow()
            )
            self._count_processed(number, succeeded, marked)
        for outcome in outcomes:
            claim.event_ids.discard(outcome.event.event_id)
        if failure is not None:
            # Settling failed (the database, most likely): what is left is due again after
            # lock_ttl, or released by stop().
            raise failure
        self._claims.pop(number, None)
        return len(events)

    def _count_processed(
        self, number: int, events: Sequence[models.InboxEvent], marked: set[str]
    ) -> None:
        self.stats.processed += len(marked)
        if len(marked) < len(events):
            lost = len(events) - len(marked)
            self.stats.lease_lost += lost
            self.logger.warning(
                "inbox worker %d: lease lost on %d of %d handled events (another worker took "
                "them after lock_ttl); their handlers may run again",
                number,
                lost,
                len(events),
                extra=observability.log_extra(consumer=self.consumer),
            )
        if self.metrics.enabled:
            counts = collections.Counter(e.event_type for e in events if e.event_id in marked)
            for event_type, count in counts.items():
                self.metrics.processed(event_type, count)

    async def _run_group(self, token: uuid.UUID, group: _Group, debug: bool) -> list[_Outcome]:
        outcomes = []
        for event in group.events:
            outcomes.append(await self._handle(token, event, group, debug))
            group.started = True
        return outcomes

    async def _call(self, group: _Group, awaitable: Awaitable[None]) -> None:
        """Await a handler within ``handler_timeout``; ``asyncio.TimeoutError`` past it."""
        if group.started:
            await aio.within(self.settings.handler_timeout, awaitable)
            return
        group.in_first = True
        try:
            await awaitable
        except asyncio.CancelledError:
            if not group.timed_out:
                raise
            group.timed_out = False
            if sys.version_info >= (3, 11):
                task = asyncio.current_task()
                if task is not None and task.uncancel() > 0:
                    raise  # cancelled from outside too (stop)
            raise asyncio.TimeoutError from None
        finally:
            group.in_first = False

    def _registration(self, event_type: str) -> _Registration | None:
        return self.handlers.get(event_type) or self.handlers.get(DEFAULT_HANDLER)

    async def _handle(
        self, token: uuid.UUID, event: models.InboxEvent, group: _Group, debug: bool
    ) -> _Outcome:
        registration = self._registration(event.event_type)
        if registration is None:
            await self._park(token, event)
            return _Outcome(event, done=True)
        started = time.perf_counter()
        outcome = _Outcome(event)
        span = self._start_span(event)
        try:
            with _NO_SPAN if span is None else trace.use_span(span, end_on_exit=True):
                try:
                    if registration.transactional:
                        await self._run_transactional(registration.handler, token, event, group)
                        outcome.done = True
                    else:
                        await self._call(group, registration.handler(event))
                    outcome.ok = True
                except _LeaseLost:
                    outcome.done = True
                    if span is not None:
                        span.set_attribute("outbox.lease_lost", True)
                except asyncio.TimeoutError:
                    outcome.error = f"handler timed out after {self.settings.handler_timeout:g}s"
                    if span is not None:
                        span.set_status(trace.Status(trace.StatusCode.ERROR, outcome.error))
                except Exception as exc:  # a failing handler must not stop the loop
                    outcome.error = f"{type(exc).__name__}: {exc}"
                    if span is not None:
                        span.record_exception(exc)
                        span.set_status(trace.Status(trace.StatusCode.ERROR, outcome.error))
        finally:
            latency_ms = (time.perf_counter() - started) * 1000.0
            self.metrics.record_latency(latency_ms, event.event_type)
        if outcome.error is not None:
            await self._handle_failure(token, event, outcome.error, latency_ms)
            outcome.done = True
        elif outcome.ok and debug:
            lag_ms = (models.utcnow() - event.created_at).total_seconds() * 1000.0
            self.logger.debug(
                "inbox event %s handled in %.1f ms, %.1f ms after it was recorded",
                event.event_id,
                latency_ms,
                lag_ms,
                extra=self._extra(event, latency_ms=latency_ms, lag_ms=lag_ms),
            )
        return outcome

    async def _run_transactional(
        self, handler: Handler, token: uuid.UUID, event: models.InboxEvent, group: _Group
    ) -> None:
        """Run ``handler(event, cursor)`` and mark the row processed in one transaction.

        The transaction is driven by hand rather than with aiopg's ``cursor.begin()``: a task
        cancelled inside BEGIN, COMMIT or ROLLBACK (a stop deadline, a killed worker) makes
        aiopg close the connection, which rolls back on the server, but leaves its
        ``Transaction`` object open, and that warns (ResourceWarning) when collected.
        """
        pool: Any = self.repository.pool
        queries = self.repository.queries
        try:
            async with pool.acquire() as conn, conn.cursor() as cursor:
                await cursor.execute(queries["transaction_begin"].sql)
                try:
                    await self._call(group, handler(event, cursor))
                    changed = await self.repository.mark_processed(
                        self.consumer, [event.event_id], token, models.utcnow(), session=cursor
                    )
                    if changed == 0:
                        raise _LeaseLost
                except BaseException:
                    if not conn.closed:  # aiopg closes it when a statement is cancelled
                        await cursor.execute(queries["transaction_rollback"].sql)
                    raise
                await cursor.execute(queries["transaction_commit"].sql)
        except _LeaseLost:
            self.stats.lease_lost += 1
            self.logger.warning(
                "inbox event %s: lease lost (lock token %s; another worker took it after "
                "lock_ttl); the handler's transaction was rolled back",
                event.event_id,
                token,
                extra=self._extra(event, lock_token=str(token)),
            )
            raise
        self.stats.processed += 1
        self.metrics.processed(event.event_type)

    async def _park(self, token: uuid.UUID, event: models.InboxEvent) -> None:
        error = f"no handler registered for event type {event.event_type!r}"
        changed = await self.repository.mark_dead(self.consumer, event.event_id, token, error)
        extra = self._extra(event, error=error)
        if not changed:
            self._lease_lost(token, event, "parked", error, extra)
            return
        self.stats.parked += 1
        self.stats.dead += 1
        self.metrics.dead_lettered(event.event_type)
        self.logger.error("inbox event %s parked: %s", event.event_id, error, extra=extra)

    def _extra(self, event: models.InboxEvent, **fields: Any) -> dict[str, Any]:
        """The log fields of a record about ``event`` (plus ``fields``)."""
        return observability.log_extra(
            event_id=event.event_id,
            aggregate_id=event.aggregate_id,
            event_type=event.event_type,
            consumer=self.consumer,
            attempt=event.delivery_attempts,
            **fields,
        )

    def _lease_lost(
        self,
        token: uuid.UUID,
        event: models.InboxEvent,
        what: str,
        error: str,
        extra: dict[str, Any],
    ) -> None:
        """A fenced statement about one event changed nothing: count it and say so."""
        self.stats.lease_lost += 1
        self.logger.warning(
            "inbox event %s: lease lost (lock token %s; another worker took it after "
            "lock_ttl), so it was not %s by this worker: %s",
            event.event_id,
            token,
            what,
            error,
            extra={**extra, "lock_token": str(token)},
        )

    def retry_delay(self, attempt: int) -> float:
        """Seconds before attempt ``attempt + 1``: ``retry_delay`` doubled per attempt, capped."""
        initial = self.settings.retry_delay
        return backoff.retry_delay(
            attempt,
            initial=initial,
            maximum=max(initial, _MAX_RETRY_DELAY),
            multiplier=2.0,
            jitter=0.1,
            rng=self._rng,
        )

    async def _handle_failure(
        self, token: uuid.UUID, event: models.InboxEvent, error: str, latency_ms: float
    ) -> None:
        attempt = event.delivery_attempts
        self.stats.failed += 1
        self.metrics.failed(event.event_type)
        extra = self._extra(
            event,
            latency_ms=latency_ms,
            lag_ms=(models.utcnow() - event.created_at).total_seconds() * 1000.0,
            error=error,
        )
        if attempt >= self.settings.max_attempts:
            changed = await self.repository.mark_dead(
                self.consumer, event.event_id, token, f"{error} (dead after {attempt} attempts)"
            )
            if not changed:
                self._lease_lost(token, event, "parked as dead", error, extra)
                return
            self.stats.dead += 1
            self.metrics.dead_lettered(event.event_type)
            self.logger.error(
                "inbox event %s dead after %d attempts: %s",
                event.event_id,
                attempt,
                error,
                extra=extra,
            )
            return
        delay = self.retry_delay(attempt)
        changed = await self.repository.record_error(
            self.consumer,
            event.event_id,
            token,
            models.utcnow() + dt.timedelta(seconds=delay),
            error,
        )
        if not changed:
            self._lease_lost(token, event, "rescheduled", error, extra)
            return
        heapq.heappush(self._retries_due, time.monotonic() + delay)
        self.logger.warning(
            "inbox event %s failed (attempt %d), retrying in %.1fs: %s",
            event.event_id,
            attempt,
            delay,
            error,
            extra=extra,
        )

    def _start_span(self, event: models.InboxEvent) -> trace.Span | None:
        """A CONSUMER span whose parent is the trace active at enqueue (``traceparent``)."""
        if self._tracer is None:
            return None
        parent = _PROPAGATOR.extract(carrier=event.headers)
        return self._tracer.start_span(
            observability.SPAN_HANDLE,
            context=parent,
            kind=trace.SpanKind.CONSUMER,
            attributes={
                "messaging.system": "gcp_pubsub",
                "messaging.message.id": event.message_id or "",
                "outbox.event_id": event.event_id,
                "outbox.event_type": event.event_type,
                "outbox.schema": self.config.schema,
                "outbox.consumer": self.consumer,
                "outbox.attempt": event.delivery_attempts,
            },
        )

    # -- helpers ---------------------------------------------------------------------------

    async def _listen(self) -> None:
        """Hold a LISTEN connection; every notification wakes the idle loops."""
        sql = self.repository.queries["listen_inbox"].sql
        await self._runtime.listen(
            lambda: self.repository.pool,
            lambda: [sql],
            listening=self._notify,
            notified=lambda _: self._notify(),
            lost="inbox LISTEN connection lost (%s); retrying in %.1fs",
        )

    async def pending_stats(self) -> tuple[int, dt.datetime | None]:
        """Pending rows of this consumer and the oldest one's ``created_at``."""
        return await self.repository.pending_stats(self.consumer)

    async def purge_once(self) -> int:
        """Delete this consumer's rows processed more than ``inbox.retention`` ago, in
        batches of ``purge_batch_size``; returns how many. Stops early when the worker stops."""
        before = models.utcnow() - dt.timedelta(seconds=self.settings.retention)
        total = 0
        while True:
            deleted = await self.repository.purge_processed(
                self.consumer, before, self.purge_batch_size
            )
            total += deleted
            self.stats.purged += deleted
            if deleted < self.purge_batch_size or self._runtime.stopping:
                return total
            await asyncio.sleep(_PURGE_PAUSE)

    async def _purge_step(self) -> None:
        """One round of the purge helper: a failed purge is tried again at the next round."""
        try:
            purged = await self.purge_once()
        except errors.DatabaseError as exc:
            self.logger.warning("inbox purge failed (%s); trying again later", exc)
            return
        if purged:
            self.logger.info(
                "inbox purge: %d rows of consumer %s processed more than %gs ago deleted",
                purged,
                self.consumer,
                self.settings.retention,
            )

    async def _report_backlog_once(self) -> None:
        """Set the pending and oldest-age gauges from one read (a failed read is skipped)."""

        def failed(exc: errors.DatabaseError) -> None:
            self.logger.debug("inbox backlog gauge not updated: %s", exc)

        await runtime.report_backlog(self.pending_stats, self.metrics.set_backlog, failed)
