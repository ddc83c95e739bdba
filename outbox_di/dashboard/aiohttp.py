"""The dashboard as an aiohttp application, for ``app.add_subapp("/outbox/", ...)`` or the
standalone ``outbox-di dashboard`` server (the ``aiohttp`` extra)."""

from __future__ import annotations

from aiohttp import web

from outbox_di.dashboard.core import Dashboard, Request

MAX_BODY = 64 * 1024


def application(dashboard: Dashboard) -> web.Application:
    """An aiohttp app answering every path with ``dashboard``."""

    async def handler(request: web.Request) -> web.StreamResponse:
        tail = request.match_info.get("tail", "")
        if tail == "" and not request.path.endswith("/"):
            # The page uses relative URLs: it must be served at the mount point with a slash.
            raise web.HTTPTemporaryRedirect(request.path + "/")
        body = await request.content.read(MAX_BODY) if request.can_read_body else b""
        response = await dashboard.handle(
            Request(
                request.method,
                tail,
                dict(request.query),
                {name.lower(): value for name, value in request.headers.items()},
                body,
            )
        )
        answer = web.Response(status=response.status, body=response.body)
        answer.headers["Content-Type"] = response.content_type
        for name, value in response.headers:
            answer.headers[name] = value
        return answer

    app = web.Application(client_max_size=MAX_BODY)
    app.router.add_route("*", "/{tail:.*}", handler)
    return app


def serve(dashboard: Dashboard, host: str, port: int) -> None:
    """Run the dashboard alone at ``http://host:port/`` until interrupted."""
    web.run_app(application(dashboard), host=host, port=port, print=None)
