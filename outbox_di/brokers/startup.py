"""Start-up checks that give up when a stop is requested.

``outbox-di worker`` starts its container inside :func:`stop_startup_on`, so SIGTERM ends a start
that waits for a broker. (A context variable, not a cancellation: dependency-injector
initializes resources in tasks of its own, which a cancelled start does not reach.)
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
from collections.abc import Awaitable, Iterator
from typing import TypeVar

from outbox_di import errors

__all__ = ["abortable", "stop_startup_on"]

_T = TypeVar("_T")

_startup_stop: contextvars.ContextVar[asyncio.Event | None] = contextvars.ContextVar(
    "outbox_di_startup_stop", default=None
)


@contextlib.contextmanager
def stop_startup_on(stop: asyncio.Event) -> Iterator[None]:
    """For the block (and the tasks it creates), a start-up check gives up as soon as ``stop``
    is set, raising :class:`~outbox_di.errors.StartAborted`.

    """
    token = _startup_stop.set(stop)
    try:
        yield
    finally:
        _startup_stop.reset(token)


async def abortable(call: Awaitable[_T], what: str) -> _T:
    """Await ``call``; inside :func:`stop_startup_on`, a stop cancels it and raises
    :class:`~outbox_di.errors.StartAborted` at once."""
    calling = asyncio.ensure_future(call)
    stop = _startup_stop.get()
    if stop is None:
        return await calling
    stopping = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({calling, stopping}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopping.cancel()
        if not calling.done():
            calling.cancel()
    if not calling.done() or calling.cancelled():
        with contextlib.suppress(asyncio.CancelledError):
            await calling
        raise errors.StartAborted(f"start-up stopped while {what}: a stop was requested")
    return calling.result()
