"""Retention: worker processes delete old published and processed rows on their own.

Every ``retention.interval`` (and once shortly after start) a :class:`Retention` deletes outbox
rows published more than ``retention.published`` ago and inbox rows (of every consumer) processed
more than ``retention.processed`` ago, ``retention.batch_size`` rows per statement. Each batch is
its own short autocommitted statement that locks only the published or processed rows it
deletes (``SKIP LOCKED``), never the pending rows a claim needs, so the relay and the inbox keep
running beside it. Dead rows are never deleted: they stay until an operator retries or discards
them. Several worker processes of one service may run it at once; they skip each other's rows.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import logging
from collections.abc import Awaitable, Callable

from outbox_di import aio, errors, models, observability
from outbox_di import config as config_module
from outbox_di.repository import InboxRepository, OutboxRepository

FIRST_PASS_DELAY = 5.0
"""Seconds after start before the first pass (at most ``retention.interval``): a process that
starts is busy enough already."""

_Purge = Callable[[dt.datetime, int], Awaitable[int]]
"""A repository's purge method: delete up to ``limit`` rows older than ``before``."""

BATCH_PAUSE = 0.01
"""Seconds between two batches of one pass, so claims and inserts get the server in between."""


@dataclasses.dataclass
class RetentionStats:
    """Rows deleted since start, and the passes run, for tests and the demo."""

    published_deleted: int = 0
    processed_deleted: int = 0
    passes: int = 0
    failures: int = 0


class Retention:
    """Deletes the old published and processed rows of one schema, in bounded batches."""

    def __init__(
        self,
        config: config_module.OutboxConfig,
        outbox_repository: OutboxRepository,
        inbox_repository: InboxRepository,
        logger: logging.Logger | None = None,
        *,
        first_pass_delay: float = FIRST_PASS_DELAY,
    ) -> None:
        self.config = config
        self.settings = config.retention
        self.outbox_repository = outbox_repository
        self.inbox_repository = inbox_repository
        self.logger = logger or observability.logger
        self.stats = RetentionStats()
        self.first_pass_delay = first_pass_delay
        self._stop_requested = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Start the periodic passes; returns at once."""
        if self._task is not None:
            raise errors.OutboxError("this Retention was already started")
        self._task = asyncio.create_task(self._run(), name="outbox-retention")

    async def stop(self) -> None:
        """Stop after the batch in flight (one short statement)."""
        self._stop_requested.set()
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def run_once(self) -> tuple[int, int]:
        """One pass: ``(published rows deleted, processed rows deleted)``."""
        now = models.utcnow()
        published = await self._drain(
            self.outbox_repository.purge_published,
            now - dt.timedelta(seconds=self.settings.published),
        )
        processed = await self._drain(
            self.inbox_repository.purge_processed_all,
            now - dt.timedelta(seconds=self.config.processed_retention),
        )
        self.stats.published_deleted += published
        self.stats.processed_deleted += processed
        self.stats.passes += 1
        return published, processed

    async def _drain(self, purge: _Purge, before: dt.datetime) -> int:
        """Batches until one comes back short (or stop() was asked)."""
        size = self.settings.batch_size
        total = 0
        while True:
            deleted = await purge(before, size)
            total += deleted
            if deleted < size or self._stop_requested.is_set():
                return total
            await asyncio.sleep(BATCH_PAUSE)

    async def _run(self) -> None:
        delay = min(self.first_pass_delay, self.settings.interval)
        while not await aio.wait_event(self._stop_requested, delay):
            delay = self.settings.interval
            try:
                published, processed = await self.run_once()
            except errors.DatabaseError as exc:
                self.stats.failures += 1
                self.logger.warning(
                    "retention in schema %s failed (%s); trying again in %gs",
                    self.config.schema,
                    exc,
                    self.settings.interval,
                )
                continue
            if published or processed:
                self.logger.info(
                    "retention in schema %s: %d published outbox row(s) older than %gs and %d "
                    "processed inbox row(s) older than %gs deleted",
                    self.config.schema,
                    published,
                    self.settings.published,
                    processed,
                    self.config.processed_retention,
                )
