"""FastAPI: start the outbox with the application and enqueue from routes.

```python
from fastapi import Depends, FastAPI
from outbox_di.integrations.fastapi import get_outbox, lifespan

app = FastAPI(lifespan=lifespan)

@app.post("/items")
async def create_item(outbox: Outbox = Depends(get_outbox)) -> None:
    await outbox.enqueue(Message("item", "1", "item.created", {}))
```

The container lives on ``app.state.outbox_container`` (DESIGN §9): set one there before startup
to use it (tests override its publisher that way), or let the lifespan build it from
``settings.toml`` / ``OUTBOX_*``. Shutdown drains the publisher task within
``publisher.shutdown_timeout`` and closes the pool.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

from fastapi import FastAPI, Request

from outbox_di import errors, integrations, outbox

__all__ = ["STATE_ATTRIBUTE", "get_container", "get_outbox", "lifespan", "make_lifespan"]

STATE_ATTRIBUTE = "outbox_container"
"""The attribute of ``app.state`` that holds the container."""

Lifespan = Callable[[FastAPI], contextlib.AbstractAsyncContextManager[Any]]
"""What ``FastAPI(lifespan=...)`` takes: a factory of async context managers given the app,
yielding ``None`` or a state mapping (which Starlette copies into each ``request.state``)."""


def make_lifespan(
    container: Any = None,
    *,
    workers: bool | None = None,
    inner: Lifespan | None = None,
) -> Lifespan:
    """A lifespan that starts the outbox around ``inner`` (the application's own lifespan).

    The container is, in this order: ``container``; the one already on
    ``app.state.outbox_container``; a new one from ``settings.load_mapping()``. It is started
    before ``inner`` enters (so ``inner`` can enqueue) and stopped after ``inner`` exits.
    ``workers`` (default: the ``run_workers`` setting) says whether this process also runs the
    publisher task; a web-only process passes ``False``. Whatever ``inner`` yields (a state
    mapping for ``request.state``) is yielded on to Starlette.
    """

    @contextlib.asynccontextmanager
    async def outbox_lifespan(app: FastAPI) -> AsyncIterator[Mapping[str, Any] | None]:
        chosen = container
        if chosen is None:
            chosen = getattr(app.state, STATE_ATTRIBUTE, None)
        built = chosen is None
        if built:
            chosen = integrations.build_container()
        setattr(app.state, STATE_ATTRIBUTE, chosen)
        try:
            await integrations.start_container(chosen, workers=workers)
        except BaseException:
            if built:
                delattr(app.state, STATE_ATTRIBUTE)
            raise
        try:
            if inner is None:
                yield None
            else:
                async with inner(app) as state:
                    yield state
        finally:
            await integrations.stop_container(chosen)
            if built:
                # Built from the settings of this run: the next startup reads them afresh.
                delattr(app.state, STATE_ATTRIBUTE)

    return outbox_lifespan


lifespan: Lifespan = make_lifespan()
"""The drop-in lifespan: ``FastAPI(lifespan=lifespan)``."""


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
