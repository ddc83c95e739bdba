"""Timeouts that never lose a cancellation, and stops that keep their deadline."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from outbox_di import aio


async def _cancel_as_it_completes(wait: Callable[[asyncio.Future[int]], Awaitable[Any]]) -> Any:
    """Cancel a task in the very loop iteration in which what it awaits completes."""
    future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    task = asyncio.ensure_future(wait(future))
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    future.set_result(1)
    task.cancel()
    return await task


async def test_within_keeps_a_cancel_that_races_completion() -> None:
    with pytest.raises(asyncio.CancelledError):
        await _cancel_as_it_completes(lambda future: aio.within(10, future))


async def test_wait_event_keeps_a_cancel_that_races_the_event() -> None:
    event = asyncio.Event()

    async def wait(future: asyncio.Future[int]) -> bool:
        future.add_done_callback(lambda _: event.set())
        return await aio.wait_event(event, 10)

    with pytest.raises(asyncio.CancelledError):
        await _cancel_as_it_completes(wait)


async def test_within_times_out_and_returns_results() -> None:
    assert await aio.within(1, asyncio.sleep(0, result="done")) == "done"
    with pytest.raises(asyncio.TimeoutError):
        await aio.within(0.01, asyncio.sleep(5))
    event = asyncio.Event()
    assert await aio.wait_event(event, 0.01) is False
    event.set()
    assert await aio.wait_event(event, 0.01) is True


async def test_cancel_and_wait_gives_up_on_a_task_that_ignores_its_cancel(
    caplog: pytest.LogCaptureFixture,
) -> None:
    release = asyncio.Event()

    async def stubborn() -> None:
        while not release.is_set():
            try:
                await asyncio.sleep(10)
            except asyncio.CancelledError:
                continue

    task = asyncio.create_task(stubborn(), name="stubborn-handler")
    polite = asyncio.create_task(asyncio.sleep(10))
    await asyncio.sleep(0)
    with caplog.at_level(logging.WARNING):
        await aio.cancel_and_wait([task, polite], logging.getLogger("test"), grace=0.05)
    assert polite.cancelled() and not task.done()
    assert "stubborn-handler ignored its cancellation" in caplog.text
    release.set()
    task.cancel()
    await asyncio.wait({task})
