"""The chaos run's inbox handler: one effect row per event, in the inbox's own transaction.

``outbox-di worker --handlers tests.chaos.handlers:build`` calls :func:`build` with the
worker's container. The effects table has no unique constraint on purpose: an effect that
happened twice shows up as two rows, which the run counts as a double effect.
"""

from __future__ import annotations

from typing import Any

from outbox_di import models, schema
from outbox_di.inbox.handlers import InboxHandlers

EVENT_TYPE = "order.placed"


def build(container: Any) -> InboxHandlers:
    """The handlers of a worker whose container serves one of the run's schemas."""
    name = container.settings().schema
    # The schema name is the worker's validated setting, quoted; the event id is a parameter.
    table = f"{schema.quote_ident(name)}.chaos_effects"
    statement = f"INSERT INTO {table} (event_id) VALUES (%s)"  # noqa: S608
    handlers = InboxHandlers()

    @handlers.on(EVENT_TYPE, transactional=True)
    async def record_effect(event: models.InboxEvent, session: Any) -> None:
        await session.execute(statement, (event.event_id,))

    return handlers
