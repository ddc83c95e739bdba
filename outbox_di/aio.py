"""Timeouts that never lose a cancellation, and stops that keep their deadline.

Before Python 3.12, ``asyncio.wait_for`` can swallow the cancellation of the task awaiting it
when the awaited thing completes at the same moment: a worker told to stop then runs on, and
whoever waits for it to finish waits forever. The relay and the inbox wait with these instead.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Awaitable, Collection
from typing import Any, TypeVar

T = TypeVar("T")

__all__ = ["CANCEL_GRACE", "cancel_and_wait", "wait_event", "within"]


if sys.version_info >= (3, 11):

    async def within(timeout: float, awaitable: Awaitable[T]) -> T:
        """``await awaitable``; ``asyncio.TimeoutError`` after ``timeout`` seconds. No extra
        task on Python 3.11+ (``asyncio.timeout`` counts cancellations correctly)."""
        async with asyncio.timeout(timeout):
            return await awaitable

else:  # pragma: no cover - Python 3.10

    async def within(timeout: float, awaitable: Awaitable[T]) -> T:
        """``await awaitable``; ``asyncio.TimeoutError`` after ``timeout`` seconds."""
        task = asyncio.ensure_future(awaitable)
        try:
            done, _ = await asyncio.wait({task}, timeout=timeout)
        except asyncio.CancelledError:
            task.cancel()
            await asyncio.wait({task})
            raise
        if not done:
            task.cancel()
            await asyncio.wait({task})
            if task.cancelled():
                raise asyncio.TimeoutError
        return task.result()


async def wait_event(event: asyncio.Event, timeout: float) -> bool:
    """Wait until ``event`` is set or ``timeout`` seconds passed; whether it was set."""
    if event.is_set():
        return True
    try:
        await within(timeout, event.wait())
    except asyncio.TimeoutError:
        return event.is_set()
    return True


CANCEL_GRACE = 5.0
"""How long a stop waits for cancelled tasks to unwind before it goes on without them."""


async def cancel_and_wait(
    tasks: Collection[asyncio.Task[Any]], logger: logging.Logger, grace: float = CANCEL_GRACE
) -> None:
    """Cancel ``tasks`` and wait for them to unwind, at most ``grace`` seconds: code that
    ignores a cancellation (a handler catching ``BaseException``) must not hold a stop past its
    deadline. What it does afterwards is fenced by the lease it no longer holds."""
    for task in tasks:
        task.cancel()
    if not tasks:
        return
    _, stuck = await asyncio.wait(tasks, timeout=grace)
    for task in stuck:
        logger.warning(
            "%s ignored its cancellation for %.0fs; stopping without it", task.get_name(), grace
        )
