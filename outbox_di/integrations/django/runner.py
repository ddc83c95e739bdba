"""``WorkerThread``: the outbox workers of a Django process, on an event loop of their own.

Django serves requests synchronously (or on the server's loop, under ASGI), while the workers
(publisher task, inbox receiver and worker) are asyncio code whose pool and gRPC clients belong
to the loop that made them. So they get a thread with its own loop.

The thread is not a daemon: the interpreter would kill a daemon thread in the middle of a
drain. A non-daemon thread is waited for *before* ``atexit`` handlers run, so ``atexit`` cannot
stop it; instead a small daemon helper waits for the main thread to finish (which is what
happens first when a server exits normally) and asks the workers to stop. They then drain
within ``publisher.shutdown_timeout`` / ``inbox.shutdown_timeout`` and the thread ends, letting
the interpreter exit. Servers that end the process in other ways are covered by the callers:
a ``SIGTERM`` handler when nobody handles that signal, and the ASGI lifespan.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from typing import Any

from outbox_di import config as config_module
from outbox_di import errors, integrations, observability

__all__ = ["WorkerThread", "stop_deadline"]

_STOP_MARGIN = 5.0


def stop_deadline(settings: config_module.OutboxConfig) -> float:
    """Seconds a full stop may take: each stage's ``shutdown_timeout``, plus closing clients."""
    return settings.publisher.shutdown_timeout + 2 * settings.inbox.shutdown_timeout + _STOP_MARGIN


def start_deadline(settings: config_module.OutboxConfig) -> float:
    """Seconds a start may take: the pool's connection, then a topic and subscription check."""
    return settings.pool.connect_timeout + 2 * settings.publisher.publish_timeout + _STOP_MARGIN


class WorkerThread:
    """Runs ``containers.start(container, workers=True)`` in a thread until :meth:`stop`."""

    def __init__(
        self,
        container: Any,
        *,
        name: str = "outbox-di-workers",
        logger: logging.Logger | None = None,
    ) -> None:
        self.container = container
        self.settings: config_module.OutboxConfig = container.settings()
        self.logger = logger or observability.logger
        self._thread = threading.Thread(target=self._run, name=name, daemon=False)
        self._started = threading.Event()
        self._lock = threading.Lock()
        self._stop_requested = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop_event: asyncio.Event | None = None
        self._error: BaseException | None = None

    @property
    def name(self) -> str:
        return self._thread.name

    def is_alive(self) -> bool:
        """Whether the thread still runs (started and not yet drained)."""
        return self._thread.is_alive()

    def start(self, timeout: float | None = None) -> None:
        """Start the thread and wait until the workers run; re-raise what stopped them starting.

        ``timeout`` defaults to :func:`start_deadline`; past it the start is abandoned (stop is
        requested) and :class:`~outbox_di.errors.OutboxError` is raised.
        """
        limit = start_deadline(self.settings) if timeout is None else timeout
        self._thread.start()
        if not self._started.wait(limit):
            self.request_stop()
            raise errors.OutboxError(f"the outbox workers did not start within {limit:g}s")
        if self._error is not None:
            self._thread.join(limit)
            raise self._error
        watcher = threading.Thread(
            target=self._stop_after_main_thread, name=f"{self.name}-exit", daemon=True
        )
        watcher.start()

    def request_stop(self) -> None:
        """Ask the workers to drain and the thread to end; returns at once (any thread)."""
        with self._lock:
            self._stop_requested = True
            if self._loop is not None and self._stop_event is not None:
                with contextlib.suppress(RuntimeError):  # the loop has already closed
                    self._loop.call_soon_threadsafe(self._stop_event.set)

    def stop(self, timeout: float | None = None) -> bool:
        """Request a stop and wait for the drain (default: :func:`stop_deadline`).

        Returns whether the thread ended in time.
        """
        self.request_stop()
        if self._thread.ident is None:
            return True
        limit = stop_deadline(self.settings) if timeout is None else timeout
        self._thread.join(limit)
        stopped = not self._thread.is_alive()
        if not stopped:
            self.logger.warning("outbox workers: still draining after %gs", limit)
        return stopped

    def _stop_after_main_thread(self) -> None:
        threading.main_thread().join()
        self.request_stop()

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:  # reported to start(), or logged: never a thread traceback
            if not self._started.is_set():
                self._error = exc
                self._started.set()
            else:
                self.logger.exception("outbox workers: stopped on an error")

    async def _main(self) -> None:
        stop_event = asyncio.Event()
        with self._lock:
            self._loop = asyncio.get_running_loop()
            self._stop_event = stop_event
            if self._stop_requested:
                stop_event.set()
        try:
            await integrations.start_container(self.container, workers=True)
        except BaseException as exc:
            self._error = exc
            self._started.set()
            return
        self.logger.info(
            "outbox workers: running in thread %r for schema %r", self.name, self.settings.schema
        )
        self._started.set()
        try:
            await stop_event.wait()
        finally:
            await integrations.stop_container(self.container)
            self.logger.info("outbox workers: stopped")
