"""The catalog service on aiohttp, with asyncpg for its own tables.

Run it from this folder, after ``outbox-di migrate`` has created the outbox tables::

    outbox-di migrate --dsn "$OUTBOX_DSN" --schema catalog
    python aiohttp_catalog.py --port 8080

``POST /items`` writes the item and its ``item.created`` event in one asyncpg transaction; the
publisher task relays the event to Pub/Sub; this service's own inbox receives it back and the
transactional handler records it in ``received_events``.
"""

from __future__ import annotations

import argparse
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg  # type: ignore[import-untyped]
from aiohttp import web
from psycopg2 import sql

from outbox_di import InboxEvent, InboxHandlers, Message, OutboxContainer, load_settings
from outbox_di.integrations import aiohttp as outbox_aiohttp

settings = load_settings()  # settings.toml [outbox] + OUTBOX_* variables, validated
handlers = InboxHandlers()
container = OutboxContainer(config=settings, inbox_handlers=handlers)

DB_POOL = web.AppKey("db_pool", asyncpg.Pool)

# The service's own statements run with search_path set to the service's schema (see
# database() below), so they name their tables without it.
CREATE_TABLES = """
CREATE TABLE IF NOT EXISTS items (
    id uuid PRIMARY KEY,
    sku text NOT NULL UNIQUE,
    name text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS received_events (
    event_id text PRIMARY KEY,
    event_type text NOT NULL,
    aggregate_id text NOT NULL,
    received_at timestamptz NOT NULL DEFAULT now()
);
"""
INSERT_ITEM = "INSERT INTO items (id, sku, name) VALUES ($1, $2, $3)"
LIST_RECEIVED = "SELECT event_id FROM received_events ORDER BY received_at"

# The inbox handler's session is the library's own (aiopg) cursor. No ON CONFLICT: running
# twice would fail loudly.
RECORD_RECEIVED = sql.SQL(
    "INSERT INTO {}.received_events (event_id, event_type, aggregate_id) VALUES (%s, %s, %s)"
).format(sql.Identifier(settings.schema))


@handlers.on("item.created", transactional=True)
async def record_received(event: InboxEvent, session: Any) -> None:
    """Transactional: commits together with the event's processed_at."""
    await session.execute(RECORD_RECEIVED, (event.event_id, event.event_type, event.aggregate_id))


async def database(app: web.Application) -> AsyncIterator[None]:
    """The service's own asyncpg pool and tables (a ``cleanup_ctx`` entry)."""
    async with asyncpg.create_pool(
        settings.dsn, min_size=1, max_size=10, server_settings={"search_path": settings.schema}
    ) as pool:
        await pool.execute(CREATE_TABLES)
        app[DB_POOL] = pool
        yield


async def create_item(request: web.Request) -> web.Response:
    body = await request.json()
    sku, name = str(body["sku"]), str(body["name"])
    item_id = uuid.uuid4()
    outbox = await outbox_aiohttp.get_outbox(request)
    async with request.app[DB_POOL].acquire() as conn:
        try:
            async with conn.transaction():
                # The event first, on purpose: a refused insert takes it back with the
                # transaction.
                event_id = await outbox.enqueue(
                    conn,
                    Message(
                        aggregate_type="item",
                        aggregate_id=item_id,
                        event_type="item.created",
                        payload={"id": str(item_id), "sku": sku, "name": name},
                    ),
                )
                await conn.execute(INSERT_ITEM, item_id, sku, name)
        except asyncpg.UniqueViolationError:
            return web.json_response({"error": f"sku {sku!r} already exists"}, status=409)
    return web.json_response({"id": str(item_id), "event_id": str(event_id)}, status=201)


async def list_received(request: web.Request) -> web.Response:
    rows = await request.app[DB_POOL].fetch(LIST_RECEIVED)
    event_ids = [row["event_id"] for row in rows]
    return web.json_response({"count": len(event_ids), "event_ids": event_ids})


async def health(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


def make_app() -> web.Application:
    app = web.Application()
    outbox_aiohttp.setup(app, container)  # starts the outbox (and its workers) with the app
    app.cleanup_ctx.append(database)
    app.router.add_post("/items", create_item)
    app.router.add_get("/received", list_received)
    app.router.add_get("/health", health)
    return app


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    arguments = parser.parse_args()
    web.run_app(make_app(), host=arguments.host, port=arguments.port)
