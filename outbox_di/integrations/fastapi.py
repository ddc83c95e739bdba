"""FastAPI: start the outbox with the application and enqueue from routes.

```python
from fastapi import Depends, FastAPI
from outbox_di.integrations.fastapi import get_outbox, lifespan

app = FastAPI(lifespan=lifespan)          # or lifespan.with_handlers(handlers), make_lifespan(...)

@app.post("/items")
async def create_item(outbox: Outbox = Depends(get_outbox)) -> None:
    await outbox.enqueue(Message("item", "1", "item.created", {}))
```

At startup the lifespan takes, in this order: the container on ``app.state.outbox_container``
(set there before startup); the one given to :func:`make_lifespan`; the ``OutboxContainer``
the service ``wire()``-d; else one built from ``settings.toml`` / ``OUTBOX_*``. The inbox's
handlers are the container's, else those given with :meth:`OutboxLifespan.with_handlers`, else
the module-level ``InboxHandlers`` of the wired modules. Shutdown drains the publisher task
within ``publisher.shutdown_timeout`` and closes the pool.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

from fastapi import FastAPI, Request

from outbox_di import errors, integrations, outbox
from outbox_di.inbox import handlers as handlers_module

__all__ = [
    "STATE_ATTRIBUTE",
    "OutboxLifespan",
    "get_container",
    "get_outbox",
    "lifespan",
    "make_lifespan",
]

STATE_ATTRIBUTE = "outbox_container"
"""The attribute of ``app.state`` that holds the container."""

Lifespan = Callable[[FastAPI], contextlib.AbstractAsyncContextManager[Any]]
"""What ``FastAPI(lifespan=...)`` takes: a factory of async context managers given the app,
yielding ``None`` or a state mapping (which Starlette copies into each ``request.state``)."""


class OutboxLifespan:
    """A FastAPI lifespan that starts the outbox around the application's own (``inner``).

    Immutable: :meth:`with_handlers`, :meth:`with_inner` and :meth:`with_workers` return a new
    one, so the drop-in :data:`lifespan` is never changed by a service that refines it.
    """

    def __init__(
        self,
        container: Any = None,
        *,
        workers: bool | None = None,
        inner: Lifespan | None = None,
        handlers: Mapping[str, handlers_module.Handler] | None = None,
    ) -> None:
        self.container = container
        self.workers = workers
        self.inner = inner
        self.handlers = None if handlers is None else handlers_module.InboxHandlers(handlers)

    def _copy(self, **changes: Any) -> OutboxLifespan:
        values = {
            "container": self.container,
            "workers": self.workers,
            "inner": self.inner,
            "handlers": self.handlers,
            **changes,
        }
        return OutboxLifespan(**values)

    def with_handlers(self, handlers: Mapping[str, handlers_module.Handler]) -> OutboxLifespan:
        """The inbox's handlers, for a container that has none of its own."""
        return self._copy(handlers=handlers)

    def with_inner(self, inner: Lifespan) -> OutboxLifespan:
        """The application's own lifespan (its database pool, clients): entered after the
        outbox starts, so it can enqueue; left before the outbox stops."""
        return self._copy(inner=inner)

    def with_workers(self, workers: bool) -> OutboxLifespan:
        """Whether this process runs the publisher task and the inbox (default: the
        ``run_workers`` setting); a web-only replica passes ``False``."""
        return self._copy(workers=workers)

    def __call__(self, app: FastAPI) -> contextlib.AbstractAsyncContextManager[Any]:
        return self._run(app)

    @contextlib.asynccontextmanager
    async def _run(self, app: FastAPI) -> AsyncIterator[Mapping[str, Any] | None]:
        chosen = getattr(app.state, STATE_ATTRIBUTE, None)
        placed = chosen is None
        if chosen is None:
            chosen = self.container
        if chosen is None:
            chosen = integrations.wired_container()
        if chosen is None:
            chosen = integrations.build_container()
        handed = integrations.lend_handlers(chosen, self.handlers)
        if placed:
            setattr(app.state, STATE_ATTRIBUTE, chosen)
        try:
            try:
                await integrations.start_container(chosen, workers=self.workers)
            except BaseException:
                if placed:
                    delattr(app.state, STATE_ATTRIBUTE)
                raise
            try:
                if self.inner is None:
                    yield None
                else:
                    async with self.inner(app) as state:
                        yield state
            finally:
                await integrations.stop_container(chosen)
                if placed:
                    # Chosen for this run: the next startup chooses again (a test may set one).
                    delattr(app.state, STATE_ATTRIBUTE)
        finally:
            if handed:
                chosen.inbox_handlers.reset_last_overriding()


def make_lifespan(
    container: Any = None,
    *,
    workers: bool | None = None,
    inner: Lifespan | None = None,
    handlers: Mapping[str, handlers_module.Handler] | None = None,
) -> OutboxLifespan:
    """A lifespan that starts the outbox around ``inner`` (the application's own lifespan).

    A container set on ``app.state.outbox_container`` before startup wins over ``container``
    (that is how a test runs the application on a container of its own); without either, the
    wired ``OutboxContainer``, else one built from the settings. It is started before
    ``inner`` enters (so ``inner`` can enqueue) and stopped after ``inner`` exits. ``workers``
    (default: the ``run_workers`` setting) says whether this process also runs the publisher
    task and the inbox. Whatever ``inner`` yields (a state mapping for ``request.state``) is
    yielded on to Starlette.
    """
    return OutboxLifespan(container, workers=workers, inner=inner, handlers=handlers)


lifespan = OutboxLifespan()
"""The drop-in lifespan: ``FastAPI(lifespan=lifespan)``; refine it with
``lifespan.with_handlers(handlers)``, ``.with_inner(service_lifespan)`` or
``.with_workers(False)``."""


def get_container(request: Request) -> Any:
    """The application's ``OutboxContainer`` (a dependency: ``Depends(get_container)``)."""
    container = getattr(request.app.state, STATE_ATTRIBUTE, None)
    if container is None:
        raise errors.OutboxError(
            "no outbox container on app.state.outbox_container: create the application with "
            "FastAPI(lifespan=outbox_di.integrations.fastapi.lifespan) or make_lifespan(...)"
        )
    return container


async def get_outbox(request: Request) -> outbox.Outbox:
    """The ``Outbox`` facade for a route: ``outbox: Outbox = Depends(get_outbox)``."""
    return await integrations.resolve_outbox(get_container(request))
