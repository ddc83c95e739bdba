"""``manage.py outbox_worker``: the outbox workers in the foreground, until SIGINT or SIGTERM.

The recommended production path: web processes only enqueue (``OUTBOX["autostart"] = False``,
or ``run_workers = false``), and one or more of these processes relay the outbox and run the
inbox. The in-flight batches drain within ``publisher.shutdown_timeout`` and
``inbox.shutdown_timeout`` before the command returns.
"""

from __future__ import annotations

import asyncio
from typing import Any

from django.core.management.base import BaseCommand  # type: ignore[import-untyped]

from outbox_di import observability, worker
from outbox_di.integrations import django as outbox_django


class Command(BaseCommand):  # type: ignore[misc]
    help = (
        "Run the outbox workers (publisher task, inbox receiver and worker) of settings.OUTBOX "
        "until SIGINT or SIGTERM, then drain them."
    )

    def handle(self, *args: Any, **options: Any) -> None:
        app = outbox_django.app_config()
        if app.workers is not None and app.workers.is_alive():
            app.stop_workers()  # the process runs them in the foreground instead
        asyncio.run(self._serve(app.container))

    async def _serve(self, container: Any) -> None:
        config = container.settings()
        with worker.stop_on_signals() as stop:
            observability.logger.info("outbox_worker started for schema %r", config.schema)
            self.stdout.write(
                f"outbox_worker: {worker.describe(config)}; stop with Ctrl-C or SIGTERM"
            )
            self.stdout.flush()
            await worker.serve(container, stop)
        self.stdout.write("outbox_worker: stopped")
        self.stdout.flush()
