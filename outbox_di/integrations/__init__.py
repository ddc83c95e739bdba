"""Framework integrations: ``outbox_di.integrations.fastapi``, ``.aiohttp`` and ``.django`` (a
Django app: settings, migration, ``outbox_worker`` command, ASGI lifespan).

This package module imports no framework; it holds the lifecycle both integrations share: build
the container from the settings when the application brings none, start it for this process,
and stop it so that it can be started again (a test client may run an application twice).
"""

from __future__ import annotations

import inspect
import typing
from collections.abc import Mapping
from typing import Any

from dependency_injector import providers

from outbox_di import containers, errors, outbox, settings
from outbox_di.inbox import handlers as handlers_module

__all__ = [
    "build_container",
    "lend_handlers",
    "resolve_outbox",
    "start_container",
    "stop_container",
    "wired_container",
]


def build_container() -> Any:
    """An ``OutboxContainer`` from ``settings.toml`` ``[outbox]`` and ``OUTBOX_*`` variables."""
    return containers.OutboxContainer(config=settings.load_mapping())


def wired_container() -> Any:
    """The one ``OutboxContainer`` of this process that was ``wire()``-d, or ``None``.

    That is the container the service built for its routes (``container.wire(modules=[...])``),
    so the drop-in lifespan starts the very object the routes' ``Provide[...]`` resolve from.
    Several wired containers are ambiguous: the error says how to choose.
    """
    wired = containers.wired_containers()
    if len(wired) > 1:
        described = "; ".join(
            f"schema {c.settings().schema!r} wired to "
            + ", ".join(sorted(m.__name__ for m in c.wired_to_modules))
            for c in wired
        )
        raise errors.OutboxError(
            f"{len(wired)} OutboxContainers are wired ({described}): pass the one to start, "
            "make_lifespan(container) or setup(app, container), or unwire() the others"
        )
    return wired[0] if wired else None


def lend_handlers(container: Any, handlers: Mapping[str, handlers_module.Handler] | None) -> bool:
    """Give ``container`` inbox handlers for one run, when it has none of its own: ``handlers``
    when given, else the module-level ``InboxHandlers`` of the modules it is wired to. Whether
    it overrode ``container.inbox_handlers`` (undo with ``reset_last_overriding()``)."""
    own = container.inbox_handlers()
    if own:
        if handlers:
            raise errors.OutboxError(
                "the container already has inbox handlers "
                f"({', '.join(sorted(own))}); give them in one place only"
            )
        return False
    lent = handlers_module.InboxHandlers(handlers) if handlers else _module_handlers(container)
    if not lent:
        return False
    container.inbox_handlers.override(providers.Object(lent))
    return True


def _module_handlers(container: Any) -> handlers_module.InboxHandlers | None:
    found = [
        value
        for module in container.wired_to_modules
        for value in vars(module).values()
        if isinstance(value, handlers_module.InboxHandlers) and value
    ]
    unique = list({id(value): value for value in found}.values())
    if not unique:
        return None
    merged = handlers_module.InboxHandlers()
    for table in unique:
        for event_type in table:
            merged.register(event_type, table[event_type], table.is_transactional(event_type))
    return merged


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
