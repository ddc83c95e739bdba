"""Settings of the Django catalog service.

The outbox settings come from the library's own loading: ``settings.toml`` next to
``manage.py`` (the ``[outbox]`` table) with ``OUTBOX_*`` environment variables on top. Django's
database is the outbox's ``dsn``, and its ``search_path`` is the outbox's schema, so the
service's tables (and Django's ``django_migrations``) live in the same database and schema as
its outbox. Create the schema before the first ``manage.py migrate`` (``outbox-di migrate``
does, with the outbox tables): Django puts its first table in the first schema of the
``search_path`` that exists.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from psycopg2.extensions import parse_dsn

from outbox_di.settings import load_mapping

BASE_DIR = Path(__file__).resolve().parent.parent

OUTBOX: dict[str, Any] = {
    **load_mapping([BASE_DIR / "settings.toml"]),
    # Read by the Django integration only: the service's inbox handlers.
    "inbox_handlers": "catalog.inbox.handlers",
}

_connection = parse_dsn(OUTBOX["dsn"])
DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": _connection.get("dbname", ""),
        "USER": _connection.get("user", ""),
        "PASSWORD": _connection.get("password", ""),
        "HOST": _connection.get("host", ""),
        "PORT": _connection.get("port", ""),
        "OPTIONS": {"options": f"-c search_path={OUTBOX['schema']}"},
    }
}

INSTALLED_APPS = [
    "outbox_di.integrations.django",
    "catalog",
]

MIDDLEWARE: list[str] = []
ROOT_URLCONF = "catalog_site.urls"
ASGI_APPLICATION = "catalog_site.asgi.application"
WSGI_APPLICATION = "catalog_site.wsgi.application"

SECRET_KEY = os.environ.get("CATALOG_SECRET_KEY", "catalog-example-not-a-secret")
DEBUG = os.environ.get("CATALOG_DEBUG") == "1"
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]
USE_TZ = True

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "loggers": {"outbox_di": {"handlers": ["console"], "level": "INFO"}},
}
