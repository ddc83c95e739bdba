"""Django's ASGI application, plus the ASGI lifespan that stops the outbox workers.

```python
# mysite/asgi.py
import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "mysite.settings")

from outbox_di.integrations.django.asgi import get_asgi_application

application = get_asgi_application()
```

Django's own ASGI handler refuses the ``lifespan`` scope, so a server that speaks it (uvicorn,
hypercorn) cannot tell the application it is stopping. uvicorn then restores the default
``SIGTERM`` handler and raises the signal again, which ends the process before any worker could
drain. This wrapper answers the lifespan: at startup it makes sure the workers run (when
``OUTBOX["autostart"]`` is on), at shutdown it drains them within their deadline. Every other
scope goes to Django unchanged; a server without lifespan support just never sends one.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from django.core.asgi import get_asgi_application as django_asgi_application  # type: ignore[import-untyped]

from outbox_di import observability
from outbox_di.integrations import django as outbox_django

__all__ = ["OutboxLifespan", "get_asgi_application"]

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class OutboxLifespan:
    """An ASGI application: ``lifespan`` handled here, everything else passed to ``app``."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "lifespan":
            await self.app(scope, receive, send)
            return
        loop = asyncio.get_running_loop()
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    # Starting waits for the pool and the topic check: not on the server's loop.
                    await loop.run_in_executor(None, _start_if_autostart)
                except Exception as exc:
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                stopped = await loop.run_in_executor(None, outbox_django.stop_workers)
                if stopped:
                    await send({"type": "lifespan.shutdown.complete"})
                else:
                    await send(
                        {
                            "type": "lifespan.shutdown.failed",
                            "message": "the outbox workers did not drain within their deadline",
                        }
                    )
                return


def _start_if_autostart() -> None:
    config = outbox_django.app_config()
    if config.outbox.autostart and config.outbox.has_workers:
        config.start_workers()
    else:
        observability.logger.debug("outbox workers: autostart is off (ASGI lifespan startup)")


def get_asgi_application() -> OutboxLifespan:
    """``django.core.asgi.get_asgi_application()`` wrapped in :class:`OutboxLifespan`."""
    return OutboxLifespan(django_asgi_application())
