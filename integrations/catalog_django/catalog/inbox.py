"""The catalog's inbox handler: record every ``item.created`` event it receives.

The handler is transactional (it takes the session): it runs inside the inbox worker's
transaction, on the library's own (aiopg) connection, and its INSERT commits together with the
inbox row's ``processed_at``. So it runs exactly once, and a plain INSERT (no ``ON CONFLICT``)
would fail loudly on a second run rather than hide a bug. It is asyncio code on the workers'
event loop, so it writes through the session it is given rather than Django's ORM; that
connection does not have Django's ``search_path``, so the table is named with its schema.
"""

from __future__ import annotations

import functools
from typing import Any

from psycopg2 import sql

from outbox_di import InboxEvent, InboxHandlers
from outbox_di.integrations import django as outbox_django

handlers = InboxHandlers()


@functools.cache
def _record_received() -> sql.Composed:
    return sql.SQL(
        "INSERT INTO {}.received_events (event_id, event_type, aggregate_id) VALUES (%s, %s, %s)"
    ).format(sql.Identifier(outbox_django.get_settings().schema))


@handlers.on("item.created", transactional=True)
async def record_item_created(event: InboxEvent, session: Any) -> None:
    await session.execute(
        _record_received(), (event.event_id, event.event_type, event.aggregate_id)
    )
