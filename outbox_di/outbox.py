"""``Outbox``: the enqueue facade that services get from the container.

``await outbox.enqueue(session, message)``: with a session (your connection, cursor or ORM
session inside your transaction) first, the event joins your transaction. With the message
alone, the facade opens a short transaction of its own on the library's pool, which suits events
that announce nothing written in the same database.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator, Iterable, Mapping
from typing import Any, overload

import psycopg2

from outbox_di import errors, models, repository

_NO_MESSAGE: Any = object()


def _refuse_keywords(method: str, argument: str, keywords: Mapping[str, object]) -> None:
    """Any keyword is a mistake: ``session=`` is the old form, the rest are typos."""
    if not keywords:
        return
    if "session" in keywords:
        raise TypeError(
            f"{method}({argument}): the session is the first argument now, not session=: "
            f"write {method}(session, {argument})"
        )
    names = ", ".join(sorted(keywords))
    raise TypeError(
        f"{method}() got unexpected keyword argument(s) {names}: call "
        f"{method}(session, {argument}) or {method}({argument})"
    )


class Outbox:
    """Enqueue events: ``await outbox.enqueue(session, message)`` inside your transaction, or
    ``await outbox.enqueue(message)`` in a transaction of the library's own."""

    def __init__(self, outbox_repository: repository.OutboxRepository, pool: Any) -> None:
        self.repository = outbox_repository
        self.pool = pool

    @overload
    async def enqueue(self, message: models.Message, /) -> uuid.UUID: ...

    @overload
    async def enqueue(self, session: object, message: models.Message, /) -> uuid.UUID: ...

    async def enqueue(
        self, first: object, message: Any = _NO_MESSAGE, /, **unexpected: object
    ) -> uuid.UUID:
        """Store one message: in ``session``'s open transaction when given, else in a short
        transaction of the library's own. Wrong arguments raise ``TypeError`` before anything
        is written."""
        _refuse_keywords("enqueue", "message", unexpected)
        if message is _NO_MESSAGE:
            single = models.require_message(first, "enqueue(message)")
            async with self.transaction() as cursor:
                return await self.repository.enqueue(cursor, single)
        models.require_message(message, "enqueue(session, message)")
        return await self.repository.enqueue(first, message)

    @overload
    async def enqueue_many(self, messages: Iterable[models.Message], /) -> list[uuid.UUID]: ...

    @overload
    async def enqueue_many(
        self, session: object, messages: Iterable[models.Message], /
    ) -> list[uuid.UUID]: ...

    async def enqueue_many(
        self, first: object, messages: Any = _NO_MESSAGE, /, **unexpected: object
    ) -> list[uuid.UUID]:
        """Store all messages in one statement: in ``session``'s transaction when given, else
        in one of the library's own."""
        _refuse_keywords("enqueue_many", "messages", unexpected)
        if messages is _NO_MESSAGE:
            batch = models.require_messages(first, "enqueue_many(messages)")
            async with self.transaction() as cursor:
                return await self.repository.enqueue_many(cursor, batch)
        batch = models.require_messages(messages, "enqueue_many(session, messages)")
        return await self.repository.enqueue_many(first, batch)

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
