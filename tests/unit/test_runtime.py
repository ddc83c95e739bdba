"""The loop skeleton on its own: wakes, outage backoff, stop within a deadline, helpers."""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable

import pytest

from outbox_di import errors, runtime
from outbox_di.publishing import backoff

_LOGGER = logging.getLogger("test-runtime")


def _runtime(
    wake: Callable[[], None] | None = None, release: Callable[[], Awaitable[None]] | None = None
) -> runtime.Runtime:
    return runtime.Runtime("Thing", _LOGGER, random.Random(1), wake=wake, release=release)


async def test_a_second_start_is_refused() -> None:
    rt = _runtime()
    rt.begin()
    with pytest.raises(errors.OutboxError, match="this Thing was already started"):
        rt.begin()


async def test_a_wake_reaches_one_idle_loop_and_a_missed_one_is_remembered() -> None:
    wakes = runtime.Wakes()
    for number in (0, 1):
        wakes.add(number)
    idle = [asyncio.create_task(wakes.idle(number, 10.0)) for number in (0, 1)]
    await asyncio.sleep(0.01)
    wakes.wake_one()
    await asyncio.sleep(0.01)
    assert [task.done() for task in idle] == [True, False]  # the longest idle, only
    wakes.wake_one()
    await asyncio.wait_for(idle[1], 1.0)
    wakes.wake_one(remember=False)  # nobody idle, not remembered
    wakes.wake_one()  # nobody idle, remembered: the next idle wait returns at once
    started = time.monotonic()
    await wakes.idle(0, 10.0)
    assert time.monotonic() - started < 1.0
    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(wakes.idle(0, 10.0), 0.05)  # remembered once, not twice


async def test_outages_back_off_and_a_healthy_step_ends_the_count() -> None:
    rt = _runtime()
    results: list[object] = [OSError("down"), OSError("down"), 1, OSError("down")]
    delays: list[float] = []

    async def step() -> int:
        if not results:
            rt.stopping = True
            return 0
        result = results.pop(0)
        if isinstance(result, Exception):
            raise result
        assert isinstance(result, int)
        return result

    def outage(exc: Exception, delay: float) -> None:
        assert isinstance(exc, OSError)
        delays.append(delay)

    await asyncio.wait_for(rt.loop(step, outage=outage, initial=0.01), 5.0)
    assert len(delays) == 3
    assert 0.008 <= delays[0] <= 0.012 and 0.016 <= delays[1] <= 0.024  # doubled
    assert 0.008 <= delays[2] <= 0.012  # counted from one again after a healthy step
    assert all(delay <= backoff.MAX_OUTAGE_DELAY for delay in delays)


async def test_an_outage_sleep_ends_at_stop() -> None:
    rt = _runtime()

    async def step() -> None:
        raise OSError("down")

    loop = asyncio.create_task(rt.loop(step, outage=lambda exc, delay: None, initial=60.0))
    await asyncio.sleep(0.01)
    rt.stopping = True
    rt.stop_requested.set()
    await asyncio.wait_for(loop, 1.0)


async def test_stop_drains_then_cancels_then_releases_within_its_deadline() -> None:
    order: list[str] = []

    async def release() -> None:
        assert all(task.done() for task in rt.loops + rt.helpers)
        order.append("release")

    rt = _runtime(wake=lambda: order.append("wake"), release=release)
    finished = asyncio.Event()

    async def quick() -> None:
        await rt.stop_requested.wait()
        finished.set()

    async def stuck() -> None:
        await asyncio.sleep(60)

    async def gauge() -> None:
        order.append("gauge")

    rt.spawn_loop(quick(), "quick")
    slow = rt.spawn_loop(stuck(), "stuck")
    helper = rt.spawn_every(60.0, gauge, "helper")
    await asyncio.sleep(0.01)
    assert rt.running is False  # begin() was not called
    started = time.monotonic()
    await rt.stop(0.2)
    assert time.monotonic() - started < 2.0
    assert finished.is_set() and slow.cancelled() and helper.done()
    assert order == ["gauge", "wake", "release"]


async def test_every_runs_at_once_or_after_the_interval_until_stop() -> None:
    rt = _runtime()
    runs: list[float] = []

    async def action() -> None:
        runs.append(time.monotonic())

    first = asyncio.create_task(rt.every(0.05, action))
    later = asyncio.create_task(rt.every(10.0, action, at_once=False))
    await asyncio.sleep(0.12)
    rt.stopping = True
    rt.stop_requested.set()
    await asyncio.wait_for(asyncio.gather(first, later), 1.0)
    assert 2 <= len(runs) <= 4  # the at-once helper only; the other never reached its first


async def test_report_backlog_sets_the_gauges_or_tells_the_failure() -> None:
    gauges: list[tuple[int, float]] = []
    failures: list[errors.DatabaseError] = []

    async def empty() -> tuple[int, None]:
        return 0, None

    async def failing() -> tuple[int, None]:
        raise errors.DatabaseError("down")

    await runtime.report_backlog(empty, lambda p, a: gauges.append((p, a)), failures.append)
    await runtime.report_backlog(failing, lambda p, a: gauges.append((p, a)), failures.append)
    assert gauges == [(0, 0.0)] and len(failures) == 1
