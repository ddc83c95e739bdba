"""Framework integrations: ``outbox_di.integrations.fastapi``, ``.aiohttp`` and ``.django`` (a
Django app: settings, migration, ``outbox_worker`` command, ASGI lifespan).

This package module imports no framework; it holds the lifecycle both integrations share: build
the container from the settings when the application brings none, start it for this process,
and stop it so that it can be started again (a test client may run an application twice).
"""

from __future__ import annotations

import inspect
import typing
from typing import Any

from outbox_di import containers, outbox, settings

__all__ = ["build_container", "resolve_outbox", "start_container", "stop_container"]


def build_container() -> Any:
    """An ``OutboxContainer`` from ``settings.toml`` ``[outbox]`` and ``OUTBOX_*`` variables."""
    return containers.OutboxContainer(config=settings.load_mapping())


async def start_container(container: Any, *, workers: bool | None = None) -> None:
    """Start the pool and (``workers``, default ``run_workers``) the workers.

    A failure half-way (the pool opened, the publisher's topic check failed) closes what was
    opened before re-raising (see :func:`containers.start`), since the framework runs no
    shutdown for a failed startup.
    """
    await containers.start(container, workers=workers)


async def stop_container(container: Any) -> None:
    """Drain the workers, close the pool, reset the singletons: see :func:`containers.stop`."""
    await containers.stop(container)


async def resolve_outbox(container: Any) -> outbox.Outbox:
    """The container's ``Outbox`` facade (an asynchronous provider, since it needs the pool)."""
    provided: Any = container.outbox()
    if inspect.isawaitable(provided):
        provided = await provided
    return typing.cast(outbox.Outbox, provided)
