"""aiohttp: start the outbox with the application and enqueue from handlers.

```python
from aiohttp import web
from outbox_di.integrations import aiohttp as outbox_aiohttp

app = web.Application()
outbox_aiohttp.setup(app)                    # or setup(app, container, workers=False)

async def create_item(request: web.Request) -> web.Response:
    outbox = await outbox_aiohttp.get_outbox(request)
    await outbox.enqueue(Message("item", "1", "item.created", {}))
    return web.json_response({}, status=201)
```

The container lives under ``app[OUTBOX_CONTAINER]``. Cleanup drains the publisher task within
``publisher.shutdown_timeout`` and closes the pool.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

from aiohttp import web

from outbox_di import containers, errors, integrations, outbox

__all__ = ["OUTBOX_CONTAINER", "get_container", "get_outbox", "on_cleanup", "on_startup", "setup"]

OUTBOX_CONTAINER = web.AppKey("outbox_container", containers.OutboxContainer)
"""The application key of the container: ``app[OUTBOX_CONTAINER]``."""


def setup(app: web.Application, container: Any = None, *, workers: bool | None = None) -> None:
    """Start the outbox with ``app`` (a ``cleanup_ctx`` entry) and stop it at cleanup.

    The container is ``container``, else one already under ``app[OUTBOX_CONTAINER]``, else the
    ``OutboxContainer`` the service ``wire()``-d, else one built at startup from
    ``settings.load_mapping()``. A container without inbox handlers gets the module-level
    ``InboxHandlers`` of the modules it is wired to. To run the application on a test database,
    override the service's container before startup: ``with
    container.override_config(schema=..., dsn=...):``. ``workers`` (default: the ``run_workers``
    setting) says whether this process also runs the publisher task.
    """
    if container is not None:
        app[OUTBOX_CONTAINER] = container
    app.cleanup_ctx.append(_make_context(workers))


def _make_context(
    workers: bool | None,
) -> Callable[[web.Application], AsyncIterator[None]]:
    async def outbox_context(app: web.Application) -> AsyncIterator[None]:
        container = _container_or_build(app)
        lent = integrations.lend_handlers(container, None)
        try:
            await integrations.start_container(container, workers=workers)
            try:
                yield
            finally:
                await integrations.stop_container(container)
        finally:
            if lent:
                container.inbox_handlers.reset_last_overriding()

    return outbox_context


async def on_startup(app: web.Application) -> None:
    """For ``app.on_startup``: start the container (workers follow ``run_workers``)."""
    await integrations.start_container(_container_or_build(app))


async def on_cleanup(app: web.Application) -> None:
    """For ``app.on_cleanup``: drain the publisher task and close the pool."""
    container = app.get(OUTBOX_CONTAINER)
    if container is not None:
        await integrations.stop_container(container)


def _container_or_build(app: web.Application) -> Any:
    container = app.get(OUTBOX_CONTAINER)
    if container is None:
        # Startup runs before aiohttp freezes the application, so the key can still be set.
        container = integrations.wired_container() or integrations.build_container()
        app[OUTBOX_CONTAINER] = container
    return container


def get_container(request: web.Request) -> Any:
    """The container of the request's application (or of an application it is mounted in)."""
    container = request.config_dict.get(OUTBOX_CONTAINER)
    if container is None:
        raise errors.OutboxError(
            "no outbox container under app[OUTBOX_CONTAINER]: call "
            "outbox_di.integrations.aiohttp.setup(app) before running the application"
        )
    return container


async def get_outbox(request: web.Request) -> outbox.Outbox:
    """The ``Outbox`` facade for a handler: ``outbox = await get_outbox(request)``."""
    return await integrations.resolve_outbox(get_container(request))
