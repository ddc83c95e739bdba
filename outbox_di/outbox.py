"""``Outbox``: the enqueue facade that services get from the container.

With a session (your connection, cursor or ORM session inside your transaction) the event joins
your transaction. Without one, the facade opens a short transaction of its own on the library's
pool, which suits events that announce nothing written in the same database.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator, Iterable
from typing import Any

import psycopg2

from outbox_di import errors, models, repository


class Outbox:
    """Enqueue events: ``await outbox.enqueue(message, session=conn)``."""

    def __init__(self, outbox_repository: repository.OutboxRepository, pool: Any) -> None:
        self.repository = outbox_repository
        self.pool = pool

    async def enqueue(self, message: models.Message, session: object = None) -> uuid.UUID:
        """Store ``message``; in ``session``'s transaction when given, else in one of our own."""
        if session is not None:
            return await self.repository.enqueue(session, message)
        async with self.transaction() as cursor:
            return await self.repository.enqueue(cursor, message)

    async def enqueue_many(
        self, messages: Iterable[models.Message], session: object = None
    ) -> list[uuid.UUID]:
        """Store all ``messages`` in one statement (and one transaction)."""
        if session is not None:
            return await self.repository.enqueue_many(session, messages)
        async with self.transaction() as cursor:
            return await self.repository.enqueue_many(cursor, messages)

    def enqueue_sync(self, session: object, message: models.Message) -> uuid.UUID:
        """For synchronous sessions (Django inside ``transaction.atomic()``, psycopg, ...)."""
        return self.repository.enqueue_sync(session, message)

    def enqueue_many_sync(
        self, session: object, messages: Iterable[models.Message]
    ) -> list[uuid.UUID]:
        """``enqueue_many`` for synchronous sessions."""
        return self.repository.enqueue_many_sync(session, messages)

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[Any]:
        """An aiopg cursor inside a transaction on the library's pool; commits on success."""
        try:
            async with self.pool.acquire() as conn, conn.cursor() as cursor, cursor.begin():
                yield cursor
        except psycopg2.Error as exc:
            raise errors.DatabaseError(f"outbox transaction failed: {exc}") from exc
