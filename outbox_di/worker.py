"""``outbox-di worker``: the workers of a service that deploys them apart from its web process."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import Sequence

from outbox_di import containers, observability, settings


async def serve(container: containers.OutboxContainer, stop: asyncio.Event) -> None:
    """Start the pool and the workers, wait for ``stop``, then drain and close everything."""
    await containers.start(container, workers=True)
    try:
        await stop.wait()
    finally:
        await containers.stop(container)


def run(settings_files: Sequence[str | os.PathLike[str]] | None = None) -> int:
    """Run until SIGINT or SIGTERM; the in-flight batches drain within ``shutdown_timeout``."""
    mapping = settings.load_mapping(settings_files)
    container = containers.OutboxContainer(config=mapping)
    config = container.settings()

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError):
                loop.add_signal_handler(signum, stop.set)
        observability.logger.info("outbox-di worker started for schema %r", config.schema)
        print(
            f"outbox-di worker: schema {config.schema!r}, "
            f"{config.publisher.workers if config.publisher.enabled else 0} publisher loop(s); "
            "stop with Ctrl-C or SIGTERM",
            flush=True,
        )
        await serve(container, stop)
        print("outbox-di worker: stopped", flush=True)

    asyncio.run(main())
    return 0
