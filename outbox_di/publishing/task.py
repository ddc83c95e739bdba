"""The relay loop: claim due outbox rows, publish them, mark the batch, retry or dead-letter.

``PublisherTask`` runs ``workers`` concurrent loops on one event loop. Each loop:

1. claims up to ``batch_size`` due rows with a fresh lock token (a lease of ``lock_ttl``);
2. hands the batch to the :class:`~outbox_di.publishing.base.Publisher`;
3. marks every acknowledged event published in one statement, fenced by the token;
4. reschedules failures with capped exponential backoff and jitter (one statement), or
   dead-letters them after ``max_attempts`` or at once for a permanent error.

An idle loop sleeps until a NOTIFY from the insert trigger arrives or ``tick_interval`` passes,
so lag is not bounded below by the poll. A NOTIFY wakes one idle loop; a loop that claimed a
full batch wakes another. A database or broker outage makes the loops back off
and recover by themselves. ``stop()`` lets in-flight batches finish within
``shutdown_timeout`` and then gives any row still leased back, so no other worker has to wait
for a lease to expire.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import logging
import random
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any

from opentelemetry import trace
from opentelemetry.metrics import Meter

from outbox_di import aio, errors, models, observability, runtime
from outbox_di import config as config_module
from outbox_di.publishing import backoff, base
from outbox_di.repository import OutboxRepository


@dataclasses.dataclass
class _Claim:
    token: uuid.UUID
    event_ids: list[uuid.UUID]


@dataclasses.dataclass
class PublisherStats:
    """Counters since start, for tests, benchmarks and the demo."""

    published: int = 0
    failed: int = 0
    dead: int = 0
    lease_lost: int = 0
    batches: int = 0
    outages: int = 0


class PublisherTask(runtime.Supervised):
    """Relays the outbox of one schema to a publisher (the seed's ``NewTask``)."""

    def __init__(
        self,
        config: config_module.OutboxConfig,
        repository: OutboxRepository,
        publisher: base.Publisher,
        logger: logging.Logger | None = None,
        meter: Meter | None = None,
        *,
        tracer: trace.Tracer | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.config = config
        self.settings = config.publisher
        self.repository = repository
        self.publisher = publisher
        self.logger = logger or observability.logger
        self.metrics = observability.OutboxMetrics(
            meter, config.schema, enabled=config.publisher.metrics_enabled
        )
        self.stats = PublisherStats()
        # Spans cost per event: only when the service traces (or hands us a tracer).
        self._tracer = tracer or (
            observability.get_tracer() if observability.tracing_configured() else None
        )
        self._rng = rng or random.Random()
        self._lock_ttl = dt.timedelta(seconds=self.settings.lock_ttl)
        self._wakes = runtime.Wakes()
        self._claims: dict[int, _Claim] = {}
        self._runtime = runtime.Runtime(
            "PublisherTask",
            self.logger,
            self._rng,
            wake=self._wakes.wake_all,
            release=self.release_claims,
        )

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """Start the loops (and the NOTIFY listener); returns at once."""
        self._runtime.begin()
        await self.publisher.start()
        if self.settings.notify:
            self._runtime.spawn_helper(self._listen(), "outbox-listen")
        if self.metrics.enabled:
            self._runtime.spawn_every(
                runtime.STATS_INTERVAL, self.report_backlog_once, "outbox-stats"
            )
        self._runtime.spawn_loops(self.settings.workers, self._run, "outbox-publisher")

    async def stop(self, timeout: float | None = None) -> None:
        """Drain: finish in-flight batches within ``timeout`` (``shutdown_timeout``), then
        cancel what is left and release its leases."""
        await self._runtime.stop(timeout, default=self.settings.shutdown_timeout)

    async def release_claims(self) -> None:
        """Give back the leases of batches left in flight (after their loops were stopped)."""

        async def release(claim: _Claim) -> None:
            await self.repository.release(claim.event_ids, claim.token)

        await runtime.release_leftovers(
            self._claims,
            release,
            lost="could not release %d leased outbox rows on stop; they are due again "
            "after lock_ttl (%.0fs)",
            lock_ttl=self.settings.lock_ttl,
            logger=self.logger,
            extra=self._extra(),
        )

    # -- the loop --------------------------------------------------------------------------

    async def _run(self, number: int) -> None:
        self._wakes.add(number)

        async def after(claimed: int) -> None:
            if claimed < self.settings.batch_size:
                await self._idle(number)
            else:
                # A full batch: more rows may be due, so an idle peer claims too.
                self._wakes.wake_one(remember=False)

        def outage(exc: Exception, delay: float) -> None:
            self.stats.outages += 1
            self.logger.warning(
                "outbox publisher %d of schema %s: %s (%s); retrying in %.1fs",
                number,
                self.config.schema,
                "database unavailable"
                if isinstance(exc, errors.DatabaseError)
                else "unexpected error",
                exc,
                delay,
                exc_info=not isinstance(exc, errors.DatabaseError),
                extra=self._extra(),
            )

        await self._runtime.loop(
            lambda: self.run_once(number),
            outage=outage,
            initial=min(self.settings.tick_interval, 1.0),
            after=after,
        )

    async def _idle(self, number: int) -> None:
        """Wait for a wake-up or ``tick_interval``; at once if one came while all were busy."""
        if self._runtime.stopping:
            return
        await self._wakes.idle(number, self.settings.tick_interval)

    async def run_once(
        self, number: int = 0, on_claimed: Callable[[int], None] | None = None
    ) -> int:
        """One claim → publish → mark cycle; returns how many rows were claimed.
        ``on_claimed`` is told that number as soon as the claim returned (before the publish):
        a full batch there lets another loop claim the next one meanwhile."""
        token = uuid.uuid4()
        now = models.utcnow()
        events = await self.repository.claim_pending(
            now, now - self._lock_ttl, self.settings.batch_size, token
        )
        if on_claimed is not None:
            on_claimed(len(events))
        if not events:
            return 0
        claim = _Claim(token, [event.event_id for event in events])
        self._claims[number] = claim
        # Once per batch: with DEBUG off, per-event logging costs nothing more than this.
        debug = self.logger.isEnabledFor(logging.DEBUG)
        started = time.perf_counter()
        outcomes = await self._publish(events)
        latency_ms = (time.perf_counter() - started) * 1000.0
        acked_at = models.utcnow()
        self.stats.batches += 1

        published = [e for e, o in zip(events, outcomes, strict=True) if o.ok]
        outcomes_by_id = (
            {e.event_id: o for e, o in zip(events, outcomes, strict=True)}
            if self._tracer is not None
            else {}
        )
        failed = [(e, o) for e, o in zip(events, outcomes, strict=True) if not o.ok]
        if published:
            changed = await self.repository.mark_published(
                [event.event_id for event in published], token, acked_at
            )
            self.stats.published += changed
            if changed < len(published):
                lost = len(published) - changed
                self.stats.lease_lost += lost
                self.logger.warning(
                    "outbox publisher %d of schema %s: lease lost on %d of %d published events "
                    "(lock token %s; another worker took them after lock_ttl); they may be "
                    "published twice",
                    number,
                    self.config.schema,
                    lost,
                    len(published),
                    token,
                    extra=self._extra(lock_token=str(token)),
                )
            self._record_success(published, latency_ms, acked_at)
            if debug:
                self._log_published(published, latency_ms, acked_at)
            if self._tracer is not None:
                self._trace(published, outcomes_by_id, latency_ms)
        if failed:
            await self._handle_failures(number, token, failed, acked_at, latency_ms)
        self._claims.pop(number, None)
        return len(events)

    async def _publish(self, events: Sequence[models.OutboxEvent]) -> Sequence[base.PublishOutcome]:
        try:
            outcomes = await aio.within(
                self.settings.publish_timeout, self.publisher.publish(events)
            )
        except asyncio.TimeoutError:
            error = f"publish timed out after {self.settings.publish_timeout:g}s"
            return [base.PublishOutcome(error=error)] * len(events)
        except Exception as exc:  # a broken publisher must not stop the relay
            error = f"{type(exc).__name__}: {exc}"
            return [base.PublishOutcome(error=error)] * len(events)
        if len(outcomes) != len(events):
            error = f"publisher returned {len(outcomes)} outcomes for {len(events)} events"
            return [base.PublishOutcome(error=error)] * len(events)
        return outcomes

    def _record_success(
        self, published: Sequence[models.OutboxEvent], latency_ms: float, acked_at: dt.datetime
    ) -> None:
        if not self.metrics.enabled:
            return
        counts: dict[str, int] = {}
        for event in published:
            counts[event.event_type] = counts.get(event.event_type, 0) + 1
            lag_ms = (acked_at - event.created_at).total_seconds() * 1000.0
            self.metrics.record_lag(lag_ms, event.event_type)
        for event_type, count in counts.items():
            self.metrics.published(event_type, count)
            self.metrics.record_latency(latency_ms, event_type)

    def _log_published(
        self, published: Sequence[models.OutboxEvent], latency_ms: float, acked_at: dt.datetime
    ) -> None:
        """One DEBUG record per published event (called only when DEBUG is enabled)."""
        for event in published:
            lag_ms = (acked_at - event.created_at).total_seconds() * 1000.0
            self.logger.debug(
                "outbox event %s published (attempt %d): publish call %.1f ms, %.1f ms after "
                "it was enqueued",
                event.event_id,
                event.delivery_attempts,
                latency_ms,
                lag_ms,
                extra=self._extra(
                    event_id=str(event.event_id),
                    aggregate_id=event.aggregate_id,
                    event_type=event.event_type,
                    attempt=event.delivery_attempts,
                    latency_ms=latency_ms,
                    lag_ms=lag_ms,
                ),
            )

    def _trace(
        self,
        published: Sequence[models.OutboxEvent],
        outcomes: dict[uuid.UUID, base.PublishOutcome],
        latency_ms: float,
    ) -> None:
        """One PRODUCER span per published event, linked to the trace active at enqueue."""
        assert self._tracer is not None
        start_ns = time.time_ns() - int(latency_ms * 1_000_000)
        for event in published:
            span = self._tracer.start_span(
                observability.SPAN_PUBLISH,
                kind=trace.SpanKind.PRODUCER,
                links=observability.link_to(event.headers.get("traceparent")),
                start_time=start_ns,
                attributes={
                    "messaging.system": "gcp_pubsub",
                    "messaging.message.id": outcomes[event.event_id].message_id or "",
                    "outbox.event_id": str(event.event_id),
                    "outbox.event_type": event.event_type,
                    "outbox.schema": self.config.schema,
                },
            )
            span.end()

    async def _handle_failures(
        self,
        number: int,
        token: uuid.UUID,
        failed: Sequence[tuple[models.OutboxEvent, base.PublishOutcome]],
        now: dt.datetime,
        latency_ms: float,
    ) -> None:
        retries: list[tuple[uuid.UUID, dt.datetime, str]] = []
        for event, outcome in failed:
            error = outcome.error or "unknown error"
            attempt = event.delivery_attempts
            self.stats.failed += 1
            self.metrics.failed(event.event_type)
            extra = self._extra(
                event_id=str(event.event_id),
                aggregate_id=event.aggregate_id,
                event_type=event.event_type,
                attempt=attempt,
                latency_ms=latency_ms,
                lag_ms=(now - event.created_at).total_seconds() * 1000.0,
                error=error,
            )
            if outcome.permanent or attempt >= self.settings.max_attempts:
                reason = "permanent error" if outcome.permanent else f"{attempt} attempts"
                changed = await self.repository.mark_dead(
                    event.event_id, token, f"{error} (dead after {reason})"
                )
                if not changed:
                    self._lease_lost(token, event.event_id, "dead-lettered", error, extra)
                    continue
                self.stats.dead += 1
                self.metrics.dead_lettered(event.event_type)
                self.logger.error(
                    "outbox event %s dead-lettered after %s: %s",
                    event.event_id,
                    reason,
                    error,
                    extra=extra,
                )
                continue
            delay = backoff.retry_delay(
                attempt,
                initial=self.settings.backoff.initial,
                maximum=self.settings.backoff.max,
                multiplier=self.settings.backoff.multiplier,
                jitter=self.settings.backoff.jitter,
                rng=self._rng,
            )
            retries.append((event.event_id, now + dt.timedelta(seconds=delay), error))
            self.logger.warning(
                "outbox event %s failed (attempt %d), retrying in %.1fs: %s",
                event.event_id,
                attempt,
                delay,
                error,
                extra=extra,
            )
        if retries:
            changed = await self.repository.reschedule_many(token, retries)
            if changed < len(retries):
                await self._reschedules_lost(number, token, retries, changed)

    def _lease_lost(
        self,
        token: uuid.UUID,
        event_id: uuid.UUID,
        what: str,
        error: str | None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        """A fenced statement about one event changed nothing: count it and say so."""
        self.stats.lease_lost += 1
        fields = dict(extra) if extra else self._extra(event_id=str(event_id))
        fields["lock_token"] = str(token)
        self.logger.warning(
            "outbox event %s: lease lost (lock token %s; another worker took it after "
            "lock_ttl), so it was not %s by this worker%s",
            event_id,
            token,
            what,
            f": {error}" if error else "",
            extra=fields,
        )

    async def _reschedules_lost(
        self,
        number: int,
        token: uuid.UUID,
        retries: Sequence[tuple[uuid.UUID, dt.datetime, str]],
        changed: int,
    ) -> None:
        """``reschedule_many`` changed fewer rows than asked: find which (a rare path, one
        read per rescheduled event) and log each. A row this worker rescheduled carries its
        ``available_at`` and ``last_error``; another worker's row does not."""
        lost = len(retries) - changed
        if len(retries) == 1:
            self._lease_lost(token, retries[0][0], "rescheduled", retries[0][2])
            return
        found: list[tuple[uuid.UUID, str]] = []
        try:
            for event_id, next_at, error in retries:
                row = await self.repository.get(event_id)
                if row is None or row.available_at != next_at or row.last_error != error:
                    found.append((event_id, error))
        except errors.DatabaseError:
            found = []
        for event_id, error in found[:lost]:
            self._lease_lost(token, event_id, "rescheduled", error)
        if len(found) < lost:  # the rest could not be told apart (or the read failed)
            self.stats.lease_lost += lost - len(found)
            self.logger.warning(
                "outbox publisher %d: lease lost on %d of %d rescheduled events (lock token "
                "%s; another worker took them after lock_ttl)",
                number,
                lost - len(found),
                len(retries),
                token,
                extra=self._extra(lock_token=str(token)),
            )

    # -- helpers ---------------------------------------------------------------------------

    def _extra(self, **fields: Any) -> dict[str, Any]:
        """Log fields of a record, with the schema (one relay process may serve several)."""
        return observability.log_extra(schema=self.config.schema, **fields)

    async def _listen(self) -> None:
        """Hold a LISTEN connection; every notification wakes an idle loop."""
        sql = self.repository.queries["listen_outbox"].sql
        await self._runtime.listen(
            lambda: self.repository.pool,
            lambda: [sql],
            listening=self._wakes.wake_one,
            notified=lambda _: self._wakes.wake_one(),
            lost="outbox LISTEN connection lost (%s); retrying in %.1fs",
            extra=self._extra(),
        )

    async def report_backlog_once(self) -> None:
        """Set the pending and oldest-age gauges from one read (a failed read is skipped)."""

        def failed(exc: errors.DatabaseError) -> None:
            self.logger.debug(
                "outbox backlog gauge of schema %s not updated: %s", self.config.schema, exc
            )

        await runtime.report_backlog(
            self.repository.pending_stats, self.metrics.set_backlog, failed
        )
