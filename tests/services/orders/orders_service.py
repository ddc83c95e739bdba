"""The orders service: FastAPI and asyncpg, with outbox_di's three usages exactly as the
README shows them.

1. ``container.wire(modules=[__name__])`` and ``Provide[OutboxContainer.outbox]`` in routes;
2. ``OutboxContainer(config=settings.outbox)`` from the service's own Dynaconf object (its tests
   override it with ``container.override_config(...)``);
3. ``FastAPI(lifespan=outbox_di.integrations.fastapi.lifespan)``, with the inbox on: the
   lifespan finds the wired container and the module-level ``InboxHandlers`` below.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import asyncpg  # type: ignore[import-untyped]
from dependency_injector.wiring import Provide, inject
from dynaconf import Dynaconf
from fastapi import Depends, FastAPI, HTTPException
from pydantic import BaseModel

import outbox_di.integrations.fastapi
from outbox_di import InboxEvent, InboxHandlers, Message, OutboxConfig, OutboxContainer
from outbox_di.outbox import Outbox

settings = Dynaconf(settings_files=[str(Path(__file__).with_name("settings.toml"))])

container = OutboxContainer(config=settings.outbox)
handlers = InboxHandlers()

app = FastAPI(lifespan=outbox_di.integrations.fastapi.lifespan)


def database_url() -> str:
    """The service's own database (a dependency, so its tests can point it elsewhere)."""
    return str(settings.database.url)


DatabaseUrl = Annotated[str, Depends(database_url)]


class NewOrder(BaseModel):
    id: str
    amount: int


@app.post("/orders", status_code=201)
@inject
async def place_order(
    order: NewOrder,
    url: DatabaseUrl,
    outbox: Outbox = Depends(Provide[OutboxContainer.outbox]),  # noqa: B008
    config: OutboxConfig = Depends(Provide[OutboxContainer.settings]),  # noqa: B008
) -> dict[str, str]:
    connection = await asyncpg.connect(url)
    try:
        async with connection.transaction():
            await connection.execute(
                f'INSERT INTO "{config.schema}".orders (id, amount, status) '  # noqa: S608
                "VALUES ($1, $2, 'placed')",
                order.id,
                order.amount,
            )
            event_id = await outbox.enqueue(
                connection,
                Message(
                    "order", order.id, "order.placed", {"id": order.id, "amount": order.amount}
                ),
            )
    finally:
        await connection.close()
    return {"event_id": str(event_id)}


@app.get("/orders/{order_id}")
@inject
async def get_order(
    order_id: str,
    url: DatabaseUrl,
    config: OutboxConfig = Depends(Provide[OutboxContainer.settings]),  # noqa: B008
) -> dict[str, Any]:
    connection = await asyncpg.connect(url)
    try:
        row = await connection.fetchrow(
            f'SELECT id, amount, status FROM "{config.schema}".orders WHERE id = $1',  # noqa: S608
            order_id,
        )
    finally:
        await connection.close()
    if row is None:
        raise HTTPException(status_code=404, detail="no such order")
    return dict(row)


@handlers.on("payment.captured", transactional=True)
@inject
async def mark_paid(
    event: InboxEvent,
    session: Any,
    config: OutboxConfig = Provide[OutboxContainer.settings],
) -> None:
    """Transactional (its UPDATE commits with the event's processed_at); the schema comes from
    the container by injection."""
    await session.execute(
        f'UPDATE "{config.schema}".orders SET status = %s WHERE id = %s',  # noqa: S608
        ("paid", event.aggregate_id),
    )


container.wire(modules=[__name__])
