"""Django: ``INSTALLED_APPS += ["outbox_di.integrations.django"]`` and ``settings.OUTBOX``.

```python
from django.db import transaction
from outbox_di import Message
from outbox_di.integrations import django as outbox_django

with transaction.atomic():
    item = Item.objects.create(sku=sku, name=name)
    outbox_django.enqueue(Message("item", item.id, "item.created", {"sku": sku}))
```

``ready()`` reads ``settings.OUTBOX`` (see :mod:`.conf`), builds the ``OutboxContainer`` and
wires the modules named by ``OUTBOX["wire"]``. In a process that serves (a WSGI or ASGI
server, ``runserver``; see :mod:`.autostart`) the workers start in a background thread when
``OUTBOX["autostart"]`` (default: ``run_workers``) is on; ``manage.py outbox_worker`` runs them
in the foreground instead. The migration ``outbox_di.0001_initial`` applies the outbox DDL to
the configured schema. Under ASGI, serve :func:`.asgi.get_asgi_application` so that the
server's lifespan shutdown drains the workers.
"""

from __future__ import annotations

import typing
import uuid
from collections.abc import Iterable
from typing import Any

from django.apps import apps as django_apps  # type: ignore[import-untyped]
from django.core.exceptions import ImproperlyConfigured  # type: ignore[import-untyped]
from django.db import connections  # type: ignore[import-untyped]

from outbox_di import config, models
from outbox_di.integrations.django import apps

__all__ = [
    "app_config",
    "enqueue",
    "enqueue_many",
    "get_container",
    "get_settings",
    "start_workers",
    "stop_workers",
]


def app_config() -> apps.OutboxAppConfig:
    """The ready application config (Django's ``AppRegistryNotReady`` before ``setup()``)."""
    try:
        found = django_apps.get_app_config(apps.LABEL)
    except LookupError as exc:
        raise ImproperlyConfigured(
            "outbox_di is not installed: add 'outbox_di.integrations.django' to INSTALLED_APPS"
        ) from exc
    return typing.cast(apps.OutboxAppConfig, found)


def get_container() -> Any:
    """The project's ``OutboxContainer``, built from ``settings.OUTBOX`` by ``ready()``."""
    return app_config().container


def get_settings() -> config.OutboxConfig:
    """The validated library configuration: ``settings.OUTBOX`` with the ``OUTBOX_*``
    variables on top (and a test's ``get_container().override_config(...)``)."""
    settings: config.OutboxConfig = get_container().settings()
    return settings


def enqueue(message: models.Message, *, using: str | None = None) -> uuid.UUID:
    """Store ``message`` through Django's connection, inside the caller's ``atomic()`` block.

    ``using`` is a database alias (default: ``OUTBOX["database"]``, ``"default"``). Outside
    ``transaction.atomic()`` it raises :class:`~outbox_di.errors.NotInTransactionError`: the
    event would otherwise commit apart from the change it announces.
    """
    config_ = app_config()
    connection = connections[using or config_.outbox.database]
    return config_.repository.enqueue_sync(connection, message)


def enqueue_many(
    messages: Iterable[models.Message], *, using: str | None = None
) -> list[uuid.UUID]:
    """:func:`enqueue` for several messages, in one statement."""
    config_ = app_config()
    connection = connections[using or config_.outbox.database]
    return config_.repository.enqueue_many_sync(connection, messages)


def start_workers() -> None:
    """Start the workers in a background thread of this process, if they are not running.

    For processes the autostart leaves alone on purpose: say, a gunicorn ``post_fork`` hook
    when the application is preloaded in the master.
    """
    app_config().start_workers()


def stop_workers(timeout: float | None = None) -> bool:
    """Drain and stop the background workers; whether they ended within ``timeout`` (default:
    the shutdown timeouts of the publisher and the inbox, plus a margin)."""
    return app_config().stop_workers(timeout)
