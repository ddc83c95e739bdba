"""The catalog service on FastAPI, with SQLAlchemy (async, asyncpg) for its own tables.

Run it from this folder, after ``outbox-di migrate`` has created the outbox tables::

    outbox-di migrate --dsn "$OUTBOX_DSN" --schema catalog
    uvicorn fastapi_catalog:app

``POST /items`` writes the item and its ``item.created`` event in one SQLAlchemy transaction;
the publisher task relays the event to Pub/Sub; this service's own inbox receives it back and
the transactional handler records it in ``received_events``.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator
from typing import Any

import sqlalchemy as sa
from dependency_injector.wiring import Provide, inject
from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse
from psycopg2 import sql
from pydantic import BaseModel
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine

from outbox_di import InboxEvent, InboxHandlers, Message, Outbox, OutboxContainer, load_settings
from outbox_di.integrations.fastapi import make_lifespan

settings = load_settings()  # settings.toml [outbox] + OUTBOX_* variables, validated
handlers = InboxHandlers()
container = OutboxContainer(config=settings, inbox_handlers=handlers)

metadata = sa.MetaData(schema=settings.schema)
items = sa.Table(
    "items",
    metadata,
    sa.Column("id", sa.Uuid, primary_key=True),
    sa.Column("sku", sa.Text, nullable=False, unique=True),
    sa.Column("name", sa.Text, nullable=False),
    sa.Column(
        "created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
    ),
)
received_events = sa.Table(
    "received_events",
    metadata,
    sa.Column("event_id", sa.Text, primary_key=True),
    sa.Column("event_type", sa.Text, nullable=False),
    sa.Column("aggregate_id", sa.Text, nullable=False),
    sa.Column(
        "received_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
    ),
)

# The inbox handler's session is the library's own (aiopg) cursor: plain SQL with the schema
# quoted as an identifier. No ON CONFLICT: running twice would fail loudly.
RECORD_RECEIVED = sql.SQL(
    "INSERT INTO {}.received_events (event_id, event_type, aggregate_id) VALUES (%s, %s, %s)"
).format(sql.Identifier(settings.schema))


@handlers.on("item.created", transactional=True)
async def record_received(event: InboxEvent, session: Any) -> None:
    """Transactional: commits together with the event's processed_at."""
    await session.execute(RECORD_RECEIVED, (event.event_id, event.event_type, event.aggregate_id))


@contextlib.asynccontextmanager
async def catalog_lifespan(app: FastAPI) -> AsyncIterator[None]:
    """The service's own engine and tables; runs inside the outbox's lifespan."""
    url = sa.make_url(settings.dsn).set(drivername="postgresql+asyncpg")
    engine = create_async_engine(url, pool_size=10)
    async with engine.begin() as conn:
        await conn.run_sync(metadata.create_all)
    app.state.sessions = async_sessionmaker(engine, expire_on_commit=False)
    try:
        yield
    finally:
        await engine.dispose()


app = FastAPI(title="catalog", lifespan=make_lifespan(container, inner=catalog_lifespan))


class NewItem(BaseModel):
    sku: str
    name: str


class _DuplicateSku(Exception):
    """Raised inside the transaction so that it rolls back, event included."""


@app.post("/items", status_code=201)
@inject
async def create_item(
    new: NewItem,
    request: Request,
    outbox: Outbox = Depends(Provide[OutboxContainer.outbox]),  # noqa: B008
) -> Any:
    item_id = uuid.uuid4()
    try:
        async with request.app.state.sessions() as session, session.begin():
            # The event first, on purpose: a refused insert takes it back with the transaction.
            event_id = await outbox.enqueue(
                session,
                Message(
                    aggregate_type="item",
                    aggregate_id=item_id,
                    event_type="item.created",
                    payload={"id": str(item_id), "sku": new.sku, "name": new.name},
                ),
            )
            try:
                await session.execute(items.insert().values(id=item_id, sku=new.sku, name=new.name))
            except IntegrityError as exc:
                raise _DuplicateSku(new.sku) from exc
    except _DuplicateSku:
        return JSONResponse({"error": f"sku {new.sku!r} already exists"}, status_code=409)
    return {"id": str(item_id), "event_id": str(event_id)}


@app.get("/received")
async def list_received(request: Request) -> dict[str, Any]:
    async with request.app.state.sessions() as session:
        rows = await session.execute(
            sa.select(received_events.c.event_id).order_by(received_events.c.received_at)
        )
        event_ids = [row.event_id for row in rows]
    return {"count": len(event_ids), "event_ids": event_ids}


@app.get("/health")
async def health() -> dict[str, str]:
    return {"status": "ok"}


container.wire(modules=[__name__])
