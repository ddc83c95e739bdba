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
        """An aiopg cursor inside a transaction on the library's pool; commits on success,
        rolls back on an exception (a request cancelled by its server included)."""
        queries = self.repository.queries
        try:
            async with self.pool.acquire() as conn, conn.cursor() as cursor:
                await cursor.execute(queries["transaction_begin"].sql)
                try:
                    yield cursor
                except BaseException:
                    # aiopg closes the connection when a statement is cancelled; a failed
                    # rollback must not hide the error that caused it.
                    if not conn.closed:
                        with contextlib.suppress(psycopg2.Error):
                            await cursor.execute(queries["transaction_rollback"].sql)
                    raise
                await cursor.execute(queries["transaction_commit"].sql)
        except psycopg2.Error as exc:
            raise errors.DatabaseError(f"outbox transaction failed: {exc}") from exc
