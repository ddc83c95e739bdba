"""The Django application: ``INSTALLED_APPS += ["outbox_di.integrations.django"]``."""

from __future__ import annotations

import importlib
import os
import signal
import sys
import threading
from types import FrameType
from typing import Any

from django.apps import AppConfig  # type: ignore[import-untyped]
from django.conf import settings as django_settings  # type: ignore[import-untyped]

from outbox_di import config, containers, observability
from outbox_di import repository as repository_module
from outbox_di.integrations.django import autostart, conf, runner

__all__ = ["LABEL", "OutboxAppConfig"]

LABEL = "outbox_di"
"""The application label (``apps.get_app_config("outbox_di")``, migrations ``outbox_di.0001``)."""


class OutboxAppConfig(AppConfig):  # type: ignore[misc]
    """Reads ``settings.OUTBOX``, builds and wires the container, and starts the workers in the
    processes that serve (see :mod:`outbox_di.integrations.django.autostart`)."""

    name = "outbox_di.integrations.django"
    label = LABEL
    verbose_name = "Transactional outbox and inbox"

    outbox: conf.DjangoOutboxSettings
    container: Any
    workers: runner.WorkerThread | None = None

    def ready(self) -> None:
        self.outbox = conf.read_settings(
            getattr(django_settings, conf.SETTING, None), django_settings.DATABASES
        )
        overrides: dict[str, Any] = {}
        if self.outbox.inbox_handlers is not None:
            overrides["inbox_handlers"] = self.outbox.inbox_handlers
        self.container = containers.OutboxContainer(
            config=self.outbox.config.to_dict(), **overrides
        )
        self._repository: tuple[config.OutboxConfig, repository_module.OutboxRepository] | None = (
            None
        )
        self.workers = None
        self._wire()
        self._autostart()

    @property
    def repository(self) -> repository_module.OutboxRepository:
        """The repository ``enqueue()`` writes through (Django's connection, so no pool), on
        the container's current settings: ``container.override_config(...)`` in a test, and
        ``OUTBOX_*`` variables, reach it too."""
        current: config.OutboxConfig = self.container.settings()
        cached = self._repository
        if cached is None or cached[0] is not current:
            made = repository_module.OutboxRepository(
                None, current.schema, ordering=current.publisher.ordering
            )
            cached = self._repository = (current, made)
        return cached[1]

    def _wire(self) -> None:
        modules: list[Any] = []
        packages: list[Any] = []
        problems: list[str] = []
        for name in self.outbox.wire:
            try:
                module = importlib.import_module(name)
            except ImportError as exc:
                problems.append(f"{conf.SETTING}.wire: cannot import {name!r}: {exc}")
                continue
            (packages if hasattr(module, "__path__") else modules).append(module)
        if problems:
            raise conf.OutboxImproperlyConfigured(problems)
        if modules or packages:
            self.container.wire(modules=modules, packages=packages)

    def _autostart(self) -> None:
        logger = observability.logger
        if not self.outbox.autostart:
            logger.debug("outbox workers: autostart is off")
            return
        if not self.outbox.has_workers:
            logger.debug("outbox workers: publisher and inbox are both disabled")
            return
        decision = autostart.decide(sys.argv, os.environ)
        if not decision.start:
            logger.debug("outbox workers: not started in this process (%s)", decision.reason)
            return
        logger.info("outbox workers: starting (%s)", decision.reason)
        self.start_workers()

    def start_workers(self) -> runner.WorkerThread:
        """Start the workers in a background thread of this process (once; later calls return
        the running thread)."""
        if self.workers is not None and self.workers.is_alive():
            return self.workers
        workers = runner.WorkerThread(self.container)
        workers.start()
        self.workers = workers
        _exit_cleanly_on_sigterm()
        return workers

    def stop_workers(self, timeout: float | None = None) -> bool:
        """Drain and stop the background workers; whether they ended within ``timeout``."""
        workers = self.workers
        if workers is None:
            return True
        stopped = workers.stop(timeout)
        if stopped:
            self.workers = None
        return stopped


def _exit_on_sigterm(signum: int, frame: FrameType | None) -> None:
    # A normal exit runs threading's shutdown, whose end-of-main-thread the worker thread waits
    # for: the workers drain before the process ends. Django's autoreloader does the same.
    raise SystemExit(0)


def _exit_cleanly_on_sigterm() -> None:
    """Make SIGTERM a normal exit when nothing else handles it (``runserver --noreload``).

    Left alone when a server installed its own handler: it shuts down by itself, and the
    workers stop when its main thread ends (or at the ASGI lifespan's shutdown).
    """
    if threading.current_thread() is not threading.main_thread():
        return
    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _exit_on_sigterm)
