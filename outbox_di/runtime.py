"""The loop skeleton of the relay, the inbox worker, the receiver and the fleet.

Each of those runs a few loops on one event loop, and each loop is the same machine around a
different step (claim → publish → mark, claim → handle → mark, receive → record → ack):

- :class:`Runtime` starts the loops and their helpers, and stops them within a deadline: it
  lets the steps in flight finish, cancels what is left (:func:`aio.cancel_and_wait`, so a
  handler that ignores its cancellation cannot hold the stop), cancels the helpers, and then
  lets its owner give back what the cancelled steps held;
- :meth:`Runtime.loop` runs a step until stop and backs off on an outage: consecutive failures
  are counted, the wait doubles up to ``backoff.MAX_OUTAGE_DELAY`` (so the end of an outage is
  noticed within it) and never lasts past stop; the owner says what to log;
- :meth:`Runtime.listen` holds a LISTEN connection and opens it again when it is lost, after
  ``backoff.listen_retry_delay`` (the poll covers the gap);
- :meth:`Runtime.every` runs a periodic helper (the backlog gauges, the purge, the fleet's
  tick and rescan) until stop, and :func:`report_backlog` is one round of the gauges;
- :class:`Wakes` lets a NOTIFY wake one idle loop, not all of them, and remembers a wake that
  came while every loop was busy;
- :class:`Supervised` gives the owners ``running`` and ``async with``.

The owners keep their steps, their stats and their log messages: only the machinery is here.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import datetime as dt
import logging
import random
from collections.abc import Awaitable, Callable, Collection, Coroutine, Mapping, Sequence
from typing import Any, Protocol, TypeVar, cast

from outbox_di import aio, errors, models
from outbox_di.publishing import backoff

T = TypeVar("T")
S = TypeVar("S")

__all__ = [
    "STATS_INTERVAL",
    "Claim",
    "Runtime",
    "Supervised",
    "Wakes",
    "outage_delay",
    "release_leftovers",
    "report_backlog",
]

STATS_INTERVAL = 5.0
"""Seconds between two reads of the backlog gauges (pending rows, the oldest one's age)."""

Outage = Callable[[Exception, float], None]
"""Told an outage's exception and the seconds until the next try: counts and logs it."""


def outage_delay(failures: int, *, initial: float, rng: random.Random | None = None) -> float:
    """Seconds before the next try of a loop whose step failed ``failures`` times in a row:
    ``initial`` doubling up to ``backoff.MAX_OUTAGE_DELAY``, ±20 % jitter so that loops that
    failed together do not come back in lockstep."""
    return backoff.retry_delay(
        failures,
        initial=initial,
        maximum=backoff.MAX_OUTAGE_DELAY,
        multiplier=2.0,
        jitter=0.2,
        rng=rng,
    )


async def report_backlog(
    read: Callable[[], Awaitable[tuple[int, dt.datetime | None]]],
    gauge: Callable[[int, float], None],
    failed: Callable[[errors.DatabaseError], None],
) -> None:
    """Set the backlog gauges from one ``read`` (pending rows, the oldest one's
    ``created_at``): ``gauge(pending, age_ms)``. A failed read is told to ``failed`` and
    skipped: the gauges keep their value until the next read, ``STATS_INTERVAL`` later."""
    try:
        pending, oldest = await read()
    except errors.DatabaseError as exc:
        failed(exc)
        return
    age_ms = 0.0
    if oldest is not None:
        age_ms = max(0.0, (models.utcnow() - oldest).total_seconds() * 1000.0)
    gauge(pending, age_ms)


class Claim(Protocol):
    """A batch a loop holds under its lease, by the ids it has not settled yet."""

    @property
    def event_ids(self) -> Collection[Any]: ...


C = TypeVar("C", bound=Claim)


async def release_leftovers(
    claims: dict[int, C],
    release: Callable[[C], Awaitable[None]],
    *,
    lost: str,
    lock_ttl: float,
    logger: logging.Logger,
    extra: Mapping[str, Any] | None = None,
) -> None:
    """Give back the leases of the batches left in flight, by loop number in ``claims`` (the
    ``release`` hook of a stop: their loops are done, so nothing settles them any more), so
    that no other worker waits ``lock_ttl`` for them. ``claims`` is emptied first. A release
    that fails is logged with ``lost`` (``%d`` the rows, ``%.0f`` the ``lock_ttl``): those rows
    are due again after their lease."""
    leftovers = list(claims.values())
    claims.clear()
    for claim in leftovers:
        if not claim.event_ids:
            continue  # every row of it was settled
        try:
            await release(claim)
        except errors.DatabaseError:
            logger.warning(lost, len(claim.event_ids), lock_ttl, extra=extra)


def _always(_: object) -> bool:
    return True


class Runtime:
    """The loops and helper tasks of one relay, worker or receiver, and how they stop.

    ``what`` names the owner in the error of a second ``start()``. The owner creates its loops
    with :meth:`spawn_loop` (the tasks ``stop`` drains within its deadline) and its helpers
    with :meth:`spawn_helper` (LISTEN, gauges, purge: cancelled once the loops are done), and
    hands over its two stop hooks: ``wake`` (end the loops' own waits) and ``release`` (give
    back what cancelled steps held, close clients); see :meth:`stop`.
    """

    def __init__(
        self,
        what: str,
        logger: logging.Logger,
        rng: random.Random,
        *,
        wake: Callable[[], None] | None = None,
        release: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self.what = what
        self.logger = logger
        self.rng = rng
        self._wake = wake
        self._release = release
        self.stop_requested = asyncio.Event()
        self.stopping = False
        self.started = False
        self.loops: list[asyncio.Task[None]] = []
        self.helpers: list[asyncio.Task[None]] = []

    # -- lifecycle -------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        """Started, and at least one loop still runs."""
        return self.started and any(not task.done() for task in self.loops)

    def begin(self) -> None:
        """Mark the owner started; a second start is a bug of the caller's, said at once."""
        if self.started:
            raise errors.OutboxError(f"this {self.what} was already started")
        self.started = True

    def spawn_loop(self, coro: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
        """Start one of the loops that ``stop`` drains."""
        task = asyncio.create_task(coro, name=name)
        self.loops.append(task)
        return task

    def spawn_loops(
        self, count: int, run: Callable[[int], Coroutine[Any, Any, None]], prefix: str
    ) -> None:
        """Start loops ``run(0)`` to ``run(count - 1)``, named ``{prefix}-{number}``."""
        for number in range(count):
            self.spawn_loop(run(number), f"{prefix}-{number}")

    def spawn_helper(self, coro: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
        """Start a helper, cancelled by ``stop`` once the loops are done."""
        task = asyncio.create_task(coro, name=name)
        self.helpers.append(task)
        return task

    def spawn_every(
        self,
        seconds: float,
        action: Callable[[], Awaitable[None]],
        name: str,
        *,
        at_once: bool = True,
    ) -> asyncio.Task[None]:
        """Start a helper that runs ``action`` every ``seconds`` (see :meth:`every`)."""
        return self.spawn_helper(self.every(seconds, action, at_once=at_once), name)

    def replace_helper(
        self, old: asyncio.Task[None] | None, coro: Coroutine[Any, Any, None], name: str
    ) -> asyncio.Task[None]:
        """Cancel helper ``old`` (if any) and start ``coro`` in its place (the fleet's LISTEN
        connection, opened again when the schemas it serves change)."""
        if old is not None:
            old.cancel()
            with contextlib.suppress(ValueError):
                self.helpers.remove(old)
        return self.spawn_helper(coro, name)

    async def stop(self, timeout: float | None, *, default: float = 10.0) -> None:
        """Stop within ``timeout`` seconds, ``default`` (the owner's ``shutdown_timeout``) when
        it is None, plus ``aio.CANCEL_GRACE`` for a stuck task.

        The ``wake`` hook is called once the stop is requested, to end at once what the loops
        wait on that is not the stop itself (their idle events, the receiver's pulls). The
        loops' steps in flight get that long to finish; what is left is cancelled. Then the
        helpers are cancelled, and the ``release`` hook gives back what the cancelled steps
        held (leases), after every task is done, so nothing claims behind it.
        """
        deadline = default if timeout is None else timeout
        self.stopping = True
        self.stop_requested.set()
        if self._wake is not None:
            self._wake()
        if self.loops:
            _, pending = await asyncio.wait(self.loops, timeout=deadline)
            await aio.cancel_and_wait(pending, self.logger)
        helpers = list(self.helpers)
        for task in helpers:
            task.cancel()
        for task in helpers:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._release is not None:
            await self._release()

    async def sleep(self, seconds: float) -> bool:
        """Sleep ``seconds``, but not past stop; whether stop was requested."""
        return await aio.wait_event(self.stop_requested, seconds)

    # -- the loops -------------------------------------------------------------------------

    async def loop(
        self,
        step: Callable[[], Awaitable[T]],
        *,
        outage: Outage,
        initial: float,
        after: Callable[[T], Awaitable[None]] | None = None,
        healthy: Callable[[T], bool] = _always,
    ) -> None:
        """Run ``step`` until stop, then ``after`` with what it returned (an idle wait, a wake).

        A step that raises (a database or broker outage, or a bug: the loop must outlive
        both) is retried after :func:`outage_delay` of the failures in a row, ``initial``
        first; ``outage`` counts and logs it. A step whose result is ``healthy`` ends the
        count (the receiver's says so only when something came: an empty pull proves little).
        """
        failures = 0
        while not self.stopping:
            try:
                result = await step()
            except Exception as exc:  # an outage, or a bug: never let the loop die
                failures += 1
                delay = outage_delay(failures, initial=initial, rng=self.rng)
                outage(exc, delay)
                await self.sleep(delay)
                continue
            if healthy(result):
                failures = 0
            if after is not None:
                await after(result)

    async def listen(
        self,
        pool: Callable[[], Any],
        statements: Callable[[], Sequence[str]],
        *,
        listening: Callable[[], None],
        notified: Callable[[Any], None],
        lost: str,
        extra: Mapping[str, Any] | None = None,
    ) -> None:
        """Hold a LISTEN connection until stop; open it again when it is lost.

        ``statements`` are the LISTEN statements (asked again for every connection: the
        fleet's schemas change); ``listening`` is called once they ran, since rows committed
        while nobody listened are found by that wake-up; ``notified`` gets each notification.
        A lost connection is logged with ``lost`` (``%s`` the error, ``%.1f`` the delay) and
        opened again after ``backoff.listen_retry_delay``; the poll covers the gap.
        """
        failures = 0
        while not self.stopping:
            try:
                sqls = statements()
                async with pool().acquire() as conn:
                    async with conn.cursor() as cursor:
                        for sql in sqls:
                            await cursor.execute(sql)
                    failures = 0
                    listening()
                    while not self.stopping:
                        notified(await conn.notifies.get())
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # connection lost: the poll covers us meanwhile
                failures += 1
                delay = backoff.listen_retry_delay(failures)
                self.logger.warning(lost, exc, delay, extra=extra)
                await self.sleep(delay)

    async def every(
        self, seconds: float, action: Callable[[], Awaitable[None]], *, at_once: bool = True
    ) -> None:
        """Run ``action`` every ``seconds`` until stop: first at once, or ``at_once=False``
        first after ``seconds``. The action handles its own failures (a gauge not updated
        is logged and skipped, not a reason to end the helper)."""
        if not at_once and await self.sleep(seconds):
            return
        while not self.stopping:
            await action()
            await self.sleep(seconds)


class _Lifecycle(Protocol):
    async def start(self) -> None: ...

    async def stop(self) -> None: ...


class Supervised:
    """What every owner of a :class:`Runtime` (in ``_runtime``) offers the same way: whether
    it runs, its tasks (tests cancel them to play a crash, no cleanup), and ``async with``
    (``start()`` on entry, ``stop()`` with its default timeout on exit)."""

    _runtime: Runtime

    @property
    def running(self) -> bool:
        """Started, and at least one loop still runs."""
        return self._runtime.running

    @property
    def _workers(self) -> list[asyncio.Task[None]]:
        """The loops, one a worker number."""
        return self._runtime.loops

    @property
    def _helpers(self) -> list[asyncio.Task[None]]:
        """The helper tasks (LISTEN, gauges, purge, the fleet's tick and rescan)."""
        return self._runtime.helpers

    async def __aenter__(self: S) -> S:
        await cast(_Lifecycle, self).start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await cast(_Lifecycle, self).stop()


class Wakes:
    """Idle loops, each waiting on its own event: a NOTIFY wakes one of them, not all.

    Waking every loop for one row made them all claim, and all but one found nothing. A wake
    that finds no loop idle (rows were committed while every loop was busy) is remembered, when
    asked: the next loop to go idle claims again at once instead.
    """

    def __init__(self) -> None:
        self._events: dict[int, asyncio.Event] = {}
        self._idle: collections.deque[int] = collections.deque()
        self._missed = False

    def add(self, number: int) -> None:
        """Give loop ``number`` its event (before its first idle wait)."""
        self._events[number] = asyncio.Event()

    async def idle(self, number: int, timeout: float) -> None:
        """Wait for a wake-up or ``timeout``; at once if one came while all were busy."""
        if self._missed:
            self._missed = False
            return
        wake = self._events[number]
        wake.clear()
        self._idle.append(number)
        try:
            await aio.wait_event(wake, timeout)
        finally:
            with contextlib.suppress(ValueError):
                self._idle.remove(number)

    def wake_one(self, *, remember: bool = True) -> None:
        """Wake the longest-idle loop; with none idle, and ``remember``, the next loop to go
        idle does not wait."""
        if self._idle:
            self._events[self._idle.popleft()].set()
        elif remember:
            self._missed = True

    def wake_all(self) -> None:
        """Wake every idle loop (on stop)."""
        for wake in self._events.values():
            wake.set()
