"""The dashboard as a plain ASGI app, for ``app.mount("/outbox", asgi.app(dashboard))`` in
FastAPI or Starlette (no dependency on either)."""

from __future__ import annotations

import urllib.parse
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from outbox_di.dashboard.core import Dashboard, Request

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
MAX_BODY = 64 * 1024


def _relative(scope: Scope) -> str:
    """The path under the mount point: Starlette keeps the full ``path`` and sets ``root_path``."""
    path: str = scope.get("path", "")
    root: str = scope.get("root_path", "")
    if root and path.startswith(root):
        return path[len(root) :]
    return path


def app(dashboard: Dashboard) -> ASGIApp:
    """An ASGI app answering every request with ``dashboard``."""

    async def asgi(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        relative = _relative(scope)
        if relative == "":
            # The page uses relative URLs: it must be served at the mount point with a slash.
            location = scope.get("root_path", "") + "/"
            await send(
                {
                    "type": "http.response.start",
                    "status": 307,
                    "headers": [(b"location", location.encode())],
                }
            )
            await send({"type": "http.response.body", "body": b""})
            return
        body = b""
        more = True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > MAX_BODY:
                break
        query = dict(urllib.parse.parse_qsl(scope.get("query_string", b"").decode("latin-1")))
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        response = await dashboard.handle(
            Request(scope["method"], relative, query, headers, body[:MAX_BODY])
        )
        await send(
            {
                "type": "http.response.start",
                "status": response.status,
                "headers": [(b"content-type", response.content_type.encode())]
                + [(k.lower().encode(), v.encode()) for k, v in response.headers],
            }
        )
        await send(
            {
                "type": "http.response.body",
                "body": b"" if scope["method"] == "HEAD" else response.body,
            }
        )

    return asgi
