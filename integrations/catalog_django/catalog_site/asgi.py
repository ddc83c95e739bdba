"""ASGI entry point: ``uvicorn catalog_site.asgi:application``.

outbox_di's ``get_asgi_application`` is Django's, plus the ASGI lifespan: the server's shutdown
drains the outbox workers.
"""

from __future__ import annotations

import os

from outbox_di.integrations.django.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "catalog_site.settings")

application = get_asgi_application()
