"""One relay process for many service schemas: ``outbox-di worker --schema a,b,c``.

A :class:`FleetRelay` serves the outboxes of several schemas from one process, on one connection
pool and one LISTEN connection (every schema's channel on it), with ``publisher.workers``
loops shared by all schemas and one more loop kept for newly notified schemas:

- a schema becomes *ready* when a NOTIFY of its channel arrives, on every ``tick_interval``
  (the poll that covers a lost notification), and as soon as a claim of it came back full
  (more rows may be due: the next loop claims them while the first batch is published);
- a ready schema waits in one of two first-in, first-out queues, at most once: *fresh*
  (notified, or polled) and *backlog* (its last claim was full; a notification of such a
  schema adds nothing, it is served from the backlog queue until a claim comes back short);
- a free shared loop takes the head of the fresh queue, but the head of the backlog queue when
  it took a fresh schema last time and a schema waits there; the fresh lane, the extra loop,
  takes fresh schemas only. Each runs one claim → publish → mark cycle of the schema it took
  (the same :meth:`PublisherTask.run_once` a single-schema relay runs).

A schema working through a large backlog therefore keeps every shared loop busy, yet a quiet
schema's new event does not wait for any of those batches: the fresh lane is free for it (and
when the lane is busy with another quiet schema, the shared loops take fresh schemas before
their next backlog batch). Several such processes (on several machines) share the same schemas
through the row leases; nothing else coordinates them.

Each schema keeps its own :class:`PublisherTask` (its metrics carry the ``schema`` attribute, its
log records the ``schema`` field), its own publisher (``{schema}`` in a topic name stands for the
schema) and its own retention. A schema whose statements fail (a dropped schema, an outage)
backs off alone; the other schemas keep their loops. With ``schemas = "*"`` (``--all-schemas``)
the schemas holding an outbox are looked up again every ``rescan_interval``.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import logging
import random
import time
from collections.abc import Callable, Sequence
from typing import Any

from opentelemetry.metrics import Meter

from outbox_di import config as config_module
from outbox_di import database, errors, observability, runtime, schema
from outbox_di.publishing import base
from outbox_di.publishing.task import PublisherTask
from outbox_di.repository import InboxRepository, OutboxRepository
from outbox_di.retention import Retention

RESCAN_INTERVAL = 60.0
"""Seconds between two look-ups of the outbox schemas when serving ``"*"``."""

PublisherFactory = Callable[[config_module.OutboxConfig], base.Publisher]
"""Makes the publisher of one schema from that schema's configuration."""


@dataclasses.dataclass
class FleetStats:
    """Counters since start, for tests, benchmarks and the demo."""

    batches: int = 0
    outages: int = 0
    rescans: int = 0


@dataclasses.dataclass
class _Member:
    """One schema served by the fleet."""

    name: str
    config: config_module.OutboxConfig
    task: PublisherTask
    retention: Retention | None
    outages: int = 0
    resume_at: float = 0.0  # monotonic time before which a failing schema is not taken
    backlogged: bool = False  # its last claim was full


def schema_config(base_config: config_module.OutboxConfig, name: str) -> config_module.OutboxConfig:
    """The configuration of one schema of a fleet: the shared one with ``schema`` set."""
    return dataclasses.replace(base_config, schema=name, schemas=())


class FleetRelay(runtime.Supervised):
    """Relays the outboxes of several schemas from one process (see the module docstring)."""

    def __init__(
        self,
        config: config_module.OutboxConfig,
        pool: Any,
        publisher_for: PublisherFactory,
        logger: logging.Logger | None = None,
        meter: Meter | None = None,
        *,
        rescan_interval: float = RESCAN_INTERVAL,
        rng: random.Random | None = None,
    ) -> None:
        if not config.schemas:
            raise errors.ConfigError(
                ["schemas: a fleet relay needs the schemas it serves (a list, or '*')"]
            )
        if config.inbox.enabled:
            raise errors.ConfigError(
                [
                    "inbox.enabled: a relay of several schemas runs no inbox (each service's "
                    "handlers run in its own worker); set inbox.enabled = false here"
                ]
            )
        self.config = config
        self.settings = config.publisher
        self.pool = pool
        self.publisher_for = publisher_for
        self.logger = logger or observability.logger
        self.meter = meter
        self.rescan_interval = rescan_interval
        self.all_schemas = config.schemas == (config_module.ALL_SCHEMAS,)
        self.stats = FleetStats()
        self._rng = rng or random.Random()
        self._members: dict[str, _Member] = {}
        self._published_before = 0  # by schemas no longer served
        self._fresh: collections.deque[str] = collections.deque()
        self._again: collections.deque[str] = collections.deque()
        self._took_fresh = False
        self._queued: set[str] = set()
        self._has_work = asyncio.Event()
        self._runtime = runtime.Runtime(
            "FleetRelay", self.logger, self._rng, wake=self._has_work.set, release=self._close_all
        )
        self._listener: asyncio.Task[None] | None = None

    # -- what is served ----------------------------------------------------------------------

    @property
    def schemas(self) -> list[str]:
        """The schemas served now, by name."""
        return sorted(self._members)

    def task(self, name: str) -> PublisherTask:
        """The :class:`PublisherTask` of one served schema (its stats and metrics)."""
        return self._members[name].task

    async def _wanted(self) -> list[str]:
        if not self.all_schemas:
            return list(self.config.schemas)
        sql = schema.Queries("public")["outbox_schemas"].sql
        try:
            async with self.pool.acquire() as conn, conn.cursor() as cursor:
                await cursor.execute(sql)
                rows = await cursor.fetchall()
        except Exception as exc:
            raise errors.DatabaseError(f"outbox_schemas failed: {exc}".strip()) from exc
        return [row[0] for row in rows if not schema.schema_name_problems(row[0])]

    async def _add(self, name: str) -> None:
        """Serve ``name``: check its version, start its publisher and retention."""
        await database.require_schema(self.pool, name, self.config.dsn, logger=self.logger)
        member_config = schema_config(self.config, name)
        publisher = self.publisher_for(member_config)
        await publisher.start()
        repository = OutboxRepository(self.pool, name, ordering=self.settings.ordering)
        task = PublisherTask(member_config, repository, publisher, self.logger, self.meter)
        retention: Retention | None = None
        if member_config.retention.enabled:
            retention = Retention(
                member_config, repository, InboxRepository(self.pool, name), self.logger
            )
            await retention.start()
        self._members[name] = _Member(name, member_config, task, retention)
        self._ready(name)

    async def _remove(self, name: str) -> None:
        member = self._members.pop(name)
        await self._close_member(member)

    @property
    def published(self) -> int:
        """Events published since start, by every schema served now or before."""
        return self._published_before + sum(m.task.stats.published for m in self._members.values())

    async def _close_member(self, member: _Member) -> None:
        self._published_before += member.task.stats.published
        if member.retention is not None:
            await member.retention.stop()
        await member.task.release_claims()
        with contextlib.suppress(Exception):
            await member.task.publisher.close()

    async def _rescan(self) -> bool:
        """Serve the schemas that appeared, stop serving those that went; whether any changed.
        With ``"*"`` a schema that is not ready yet (being migrated) is tried again later."""
        wanted = await self._wanted()
        changed = False
        for name in sorted(set(self._members) - set(wanted)):
            self.logger.info("outbox relay: schema %s is gone; no longer served", name)
            await self._remove(name)
            changed = True
        for name in wanted:
            if name in self._members:
                continue
            try:
                await self._add(name)
            except (errors.SchemaNotReadyError, errors.ConfigError) as exc:
                # A schema being migrated, or whose topic is not made yet: with "*" the others
                # are served and this one is tried again at the next look-up.
                if not self.all_schemas:
                    raise
                self.logger.warning("outbox relay: schema %s skipped for now: %s", name, exc)
                continue
            changed = True
        return changed

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Look up and check the schemas, start their publishers, then the loops; returns once
        they run. A start that fails closes what it had started."""
        self._runtime.begin()
        try:
            await self._rescan()
        except BaseException:
            await self._close_all()
            raise
        self.logger.info(
            "outbox relay serving %d schema(s): %s", len(self._members), ", ".join(self.schemas)
        )
        every = self._runtime.spawn_every
        self._listener = self._runtime.spawn_helper(self._listen(), "outbox-fleet-listen")
        every(self.settings.tick_interval, self._tick, "outbox-fleet-tick", at_once=False)
        if self.settings.metrics_enabled:
            every(runtime.STATS_INTERVAL, self._report, "outbox-fleet-stats", at_once=False)
        if self.all_schemas:
            every(self.rescan_interval, self._rescan_round, "outbox-fleet-scan", at_once=False)
        self._runtime.spawn_loops(self.settings.workers, self._run, "outbox-fleet")
        lane = self.settings.workers
        self._runtime.spawn_loop(self._run(lane, fresh_only=True), "outbox-fleet-fresh")

    async def stop(self, timeout: float | None = None) -> None:
        """Finish the batches in flight within ``timeout`` (``shutdown_timeout``), cancel what
        is left, give its leases back and close every schema's publisher and retention."""
        await self._runtime.stop(timeout, default=self.settings.shutdown_timeout)

    async def _close_all(self) -> None:
        members = list(self._members.values())
        self._members.clear()
        for member in members:
            await self._close_member(member)

    # -- the ready queue ---------------------------------------------------------------------

    def _ready(self, name: str, *, again: bool = False) -> None:
        """Queue ``name`` at the back of the fresh queue (a NOTIFY, the tick) or, ``again`` or
        when its last claim was full, of the backlog queue; unless it is queued already."""
        member = self._members.get(name)
        if name in self._queued or member is None:
            return
        self._queued.add(name)
        (self._again if again or member.backlogged else self._fresh).append(name)
        self._has_work.set()

    def _pop(self, *, fresh_only: bool = False) -> str | None:
        """The next schema: fresh ones first, but never twice in a row while a schema of the
        backlog queue waits (so a busy fleet cannot starve a backlog either); ``fresh_only``
        for the fresh lane."""
        if fresh_only:
            take_fresh = True
        else:
            take_fresh = bool(self._fresh) and not (self._again and self._took_fresh)
            self._took_fresh = take_fresh
        queue = self._fresh if take_fresh else self._again
        if not queue:
            return None
        name = queue.popleft()
        self._queued.discard(name)
        return name

    async def _take(self, *, fresh_only: bool = False) -> _Member | None:
        """The next schema to serve; waits while none is ready. None on stop."""
        while not self._runtime.stopping:
            while (name := self._pop(fresh_only=fresh_only)) is not None:
                member = self._members.get(name)
                # A schema backing off is queued again when its delay is over.
                if member is not None and member.resume_at <= time.monotonic():
                    return member
            if fresh_only or not (self._fresh or self._again):
                self._has_work.clear()
            await self._has_work.wait()
        return None

    # -- the loops ---------------------------------------------------------------------------

    async def _run(self, number: int, *, fresh_only: bool = False) -> None:
        while not self._runtime.stopping:
            member = await self._take(fresh_only=fresh_only)
            if member is None:
                return

            def claimed(count: int, member: _Member = member) -> None:
                member.backlogged = count >= self.settings.batch_size
                if member.backlogged:
                    self._ready(member.name, again=True)  # the next loop claims the rest

            try:
                await member.task.run_once(number, claimed)
            except Exception as exc:  # this schema's statements failed: it backs off alone
                self._failed(member, exc)
                continue
            self.stats.batches += 1
            member.outages = 0

    def _failed(self, member: _Member, exc: Exception) -> None:
        member.outages += 1
        self.stats.outages += 1
        member.task.stats.outages += 1
        delay = runtime.outage_delay(
            member.outages, initial=min(self.settings.tick_interval, 1.0), rng=self._rng
        )
        member.resume_at = time.monotonic() + delay
        self.logger.warning(
            "outbox relay, schema %s: %s (%s); trying it again in %.1fs",
            member.name,
            "database unavailable" if isinstance(exc, errors.DatabaseError) else "unexpected error",
            exc,
            delay,
            exc_info=not isinstance(exc, errors.DatabaseError),
            extra=observability.log_extra(schema=member.name),
        )
        asyncio.get_running_loop().call_later(delay, self._ready, member.name)

    async def _tick(self) -> None:
        """The poll: every ``tick_interval`` each schema not backing off is ready once more."""
        now = time.monotonic()
        for member in list(self._members.values()):
            if member.resume_at <= now:
                self._ready(member.name)

    async def _rescan_round(self) -> None:
        """One look-up of the outbox schemas (with ``"*"``, every ``rescan_interval``)."""
        try:
            changed = await self._rescan()
        except Exception as exc:
            self.logger.warning("outbox relay: looking up the outbox schemas failed: %s", exc)
            return
        self.stats.rescans += 1
        if changed:
            self.logger.info("outbox relay now serving: %s", ", ".join(self.schemas))
            self._restart_listener()

    def _restart_listener(self) -> None:
        self._listener = self._runtime.replace_helper(
            self._listener, self._listen(), "outbox-fleet-listen"
        )

    async def _listen(self) -> None:
        """One connection LISTENing on every served schema's channel; a notification makes its
        schema ready."""
        channels: dict[str, str] = {}

        def statements() -> list[str]:
            channels.clear()
            channels.update({schema.channel_name(name, "outbox"): name for name in self._members})
            return [schema.Queries(name)["listen_outbox"].sql for name in channels.values()]

        def listening() -> None:
            # Rows committed while nobody listened are found by this round.
            for name in channels.values():
                self._ready(name)

        def notified(notification: Any) -> None:
            name = channels.get(notification.channel)
            if name is not None:
                self._ready(name)

        await self._runtime.listen(
            lambda: self.pool,
            statements,
            listening=listening,
            notified=notified,
            lost="outbox relay LISTEN connection lost (%s); retrying in %.1fs",
        )

    async def _report(self) -> None:
        """The backlog gauges of every schema, every 5 s (the schema is their attribute)."""
        for member in list(self._members.values()):
            await member.task.report_backlog_once()


def describe(names: Sequence[str], config: config_module.OutboxConfig) -> str:
    """What a fleet worker process runs, for its start-up line."""
    shown = "every outbox schema" if names == [config_module.ALL_SCHEMAS] else ", ".join(names)
    return f"relay of {shown}, {config.publisher.workers} loop(s) shared, no inbox"
