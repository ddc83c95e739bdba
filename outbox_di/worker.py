"""``outbox-di worker``: the workers of a service that deploys them apart from its web process."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import Iterator, Sequence
from typing import Any

from outbox_di import config as config_module
from outbox_di import containers, errors, observability, settings
from outbox_di.inbox import handlers as handlers_module


async def serve(container: containers.OutboxContainer, stop: asyncio.Event) -> None:
    """Start the pool and the workers, wait for ``stop``, then drain and close everything
    (also what a failed start had already opened)."""
    try:
        await containers.start(container, workers=True)
        await stop.wait()
    finally:
        await containers.stop(container)


@contextlib.contextmanager
def stop_on_signals() -> Iterator[asyncio.Event]:
    """An event that SIGINT or SIGTERM sets, for the block (in the running loop)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(signum, stop.set)
    try:
        yield stop
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError):
                loop.remove_signal_handler(signum)


def describe(config: config_module.OutboxConfig) -> str:
    """What a worker process runs, for its start-up line."""
    loops = config.publisher.workers if config.publisher.enabled else 0
    inbox = (
        f"inbox of consumer {config.inbox_consumer!r} from {config.inbox.subscription!r}"
        if config.inbox.enabled
        else "no inbox"
    )
    return f"schema {config.schema!r}, {loops} publisher loop(s), {inbox}"


def load_handlers(reference: str) -> handlers_module.InboxHandlers:
    """The handlers named by ``"package.module:attribute"`` (an ``InboxHandlers`` or a mapping
    of event type to handler)."""
    try:
        return handlers_module.resolve(reference)
    except ValueError as exc:
        raise errors.ConfigError([f"--handlers: {exc}"]) from exc


def run(
    settings_files: Sequence[str | os.PathLike[str]] | None = None,
    *,
    handlers: str | None = None,
) -> int:
    """Run until SIGINT or SIGTERM; the in-flight batches drain within ``shutdown_timeout``."""
    mapping = settings.load_mapping(settings_files)
    overrides: dict[str, Any] = {}
    if handlers is not None:
        overrides["inbox_handlers"] = load_handlers(handlers)
    container = containers.OutboxContainer(config=mapping, **overrides)
    config = container.settings()

    async def main() -> None:
        with stop_on_signals() as stop:
            observability.logger.info("outbox-di worker started for schema %r", config.schema)
            print(f"outbox-di worker: {describe(config)}; stop with Ctrl-C or SIGTERM", flush=True)
            await serve(container, stop)
        print("outbox-di worker: stopped", flush=True)

    asyncio.run(main())
    return 0
