# mypy: disable-error-code="import-untyped"
"""WSGI entry point: ``gunicorn catalog_site.wsgi`` (``manage.py runserver`` uses it too)."""

from __future__ import annotations

import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "catalog_site.settings")

application = get_wsgi_application()
