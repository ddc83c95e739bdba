"""Give back the connections a burst opened: an idle process holds at most ``pool.min_size``.

aiopg's pool grows up to ``max_size`` under concurrency and keeps every connection it opened
until it closes. :func:`trim_idle` checks every ``interval`` seconds and, when no connection is
in use and more than ``keep`` are open, closes the free ones (``Pool.clear()``); the next
acquire opens ``min_size`` again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

from outbox_di import observability


async def trim_idle(pool: Any, *, keep: int, interval: float) -> None:
    """Close the free connections of ``pool`` at each check that finds it idle with more than
    ``keep`` open; runs until cancelled or the pool closes."""
    logger: logging.Logger = observability.logger
    while not pool.closed:
        await asyncio.sleep(interval)
        if pool.closed:
            return
        free = pool.freesize
        if pool.size - free == 0 and free > keep:
            await pool.clear()
            logger.debug("closed %d idle pool connections (keeping at most %d)", free, keep)


@contextlib.asynccontextmanager
async def trimming(pool: Any, *, keep: int, interval: float) -> AsyncIterator[None]:
    """Run :func:`trim_idle` for the ``with`` block."""
    task = asyncio.create_task(trim_idle(pool, keep=keep, interval=interval))
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
