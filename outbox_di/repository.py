"""Repositories over the outbox and inbox tables.

``enqueue`` writes through the caller's own session, inside the caller's transaction (see
:mod:`outbox_di.sessions`). Everything after that (claim, mark, reschedule, count) runs on the
library's own aiopg pool, one autocommitted statement each. Every state change after a claim is
fenced by the claim's lock token and returns how many rows it changed: a worker whose lease was
taken over changes nothing and learns so from a 0.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import psycopg2

from outbox_di import errors, models, observability, schema, sessions

Row = Sequence[Any]


class _PoolRunner:
    """Runs named queries on an aiopg pool, translating driver errors at the boundary."""

    def __init__(self, pool: Any, queries: schema.Queries) -> None:
        self._pool = pool
        self.queries = queries

    def _require_pool(self) -> Any:
        if self._pool is None:
            raise errors.OutboxError(
                "this repository was built without a pool: only enqueue() and enqueue_sync() "
                "work; build it with the aiopg pool (OutboxContainer does) to claim and mark"
            )
        return self._pool

    async def fetch(self, name: str, values: Mapping[str, object]) -> list[Row]:
        pool = self._require_pool()
        try:
            async with pool.acquire() as conn, conn.cursor() as cursor:
                await cursor.execute(self.queries[name].sql, values)
                return list(await cursor.fetchall())
        except psycopg2.Error as exc:
            raise errors.DatabaseError(f"{name} failed: {exc}".strip()) from exc

    async def fetch_value(self, name: str, values: Mapping[str, object]) -> Any:
        rows = await self.fetch(name, values)
        return rows[0][0] if rows else None

    async def change(self, name: str, values: Mapping[str, object]) -> int:
        pool = self._require_pool()
        try:
            async with pool.acquire() as conn, conn.cursor() as cursor:
                await cursor.execute(self.queries[name].sql, values)
                return int(cursor.rowcount)
        except psycopg2.Error as exc:
            raise errors.DatabaseError(f"{name} failed: {exc}".strip()) from exc


def _require_text(value: object, field: str, event_id: object) -> str:
    if not isinstance(value, str) or not value:
        raise errors.MessageError(
            f"{field} of event {event_id} must be a non-empty string, got {value!r}"
        )
    return value


def _aggregate_id(value: object, event_id: object) -> str:
    if isinstance(value, str):
        text = value
    elif isinstance(value, (uuid.UUID, int)) and not isinstance(value, bool):
        text = str(value)
    else:
        raise errors.MessageError(
            f"aggregate_id of event {event_id} must be a str, UUID or int, got {value!r}"
        )
    if not text:
        raise errors.MessageError(f"aggregate_id of event {event_id} must not be empty")
    return text


_PENDING = models.OutboxStatus.PENDING


def _seq_of_row(row: Row) -> int:
    return int(row[1])


_as_uuid = models.uuid_from_db


def _as_optional_uuid(value: object) -> uuid.UUID | None:
    return None if value is None else _as_uuid(value)


class OutboxRepository:
    """The outbox table of one schema.

    ``pool`` is an aiopg pool; it may be ``None`` where only ``enqueue``/``enqueue_sync`` are
    used (a web process that writes events but never relays them).
    """

    def __init__(self, pool: Any, schema_name: str, *, ordering: bool = False) -> None:
        self.schema = schema.validate_schema_name(schema_name)
        self.queries = schema.Queries(self.schema)
        self.ordering = ordering
        self.pool = pool
        # The ordered claim's walk over the keys' heads resumes after this key (None: the first).
        self._after_key: str | None = None
        self._db = _PoolRunner(pool, self.queries)
        self._insert = self.queries["outbox_insert"]
        self._insert_many = self.queries["outbox_insert_many"]

    # -- enqueue, in the caller's transaction ---------------------------------------------

    def _row(
        self, message: models.Message, traceparent: str | None = None
    ) -> tuple[str, str, str, str, bytes, str, str | None]:
        event_id = message.event_id
        aggregate_type = message.aggregate_type
        aggregate_id = message.aggregate_id
        event_type = message.event_type
        # The common types pass inline checks; anything else takes the full validation, which
        # accepts the same values (str subclasses, UUID or int aggregate ids) and names what
        # it refuses, in the same order as ever.
        if (
            type(aggregate_id) is str
            and aggregate_id
            and type(event_id) is uuid.UUID
            and type(aggregate_type) is str
            and aggregate_type
            and type(event_type) is str
            and event_type
        ):
            text_id: str = aggregate_id
        else:
            if not isinstance(event_id, uuid.UUID):
                raise errors.MessageError(f"event_id must be a uuid.UUID, got {event_id!r}")
            text_id = _aggregate_id(aggregate_id, event_id)
            aggregate_type = _require_text(aggregate_type, "aggregate_type", event_id)
            event_type = _require_text(event_type, "event_type", event_id)
        ordering_key = message.ordering_key
        if ordering_key is None and self.ordering:
            ordering_key = text_id
        headers = message.headers
        if traceparent is not None and "traceparent" not in headers:
            # The trace active at enqueue travels with the event.
            headers = {**headers, "traceparent": traceparent}
        return (
            # 32 hex digits: PostgreSQL (and asyncpg's encoder) read a uuid without its hyphens,
            # and ``.hex`` costs a third of ``str()``. The stored value is the same.
            event_id.hex,
            aggregate_type,
            text_id,
            event_type,
            models.encode_payload(message.payload, event_id),
            models.encode_headers(headers, event_id) if headers else "{}",
            ordering_key,
        )

    def _insert_values(self, message: models.Message) -> dict[str, object]:
        event_id, aggregate_type, aggregate_id, event_type, payload, headers, key = self._row(
            message, observability.current_traceparent()
        )
        return {
            "event_id": event_id,
            "aggregate_type": aggregate_type,
            "aggregate_id": aggregate_id,
            "event_type": event_type,
            "payload": payload,
            "headers": headers,
            "ordering_key": key,
            "available_at": message.available_at,
        }

    def _insert_many_values(self, messages: Sequence[models.Message]) -> dict[str, object]:
        # Column lists filled row by row: each row tuple is freed at once, so a large batch
        # does not also hold one tuple per message (fewer live objects, less GC work).
        event_ids: list[str] = []
        aggregate_types: list[str] = []
        aggregate_ids: list[str] = []
        event_types: list[str] = []
        payloads: list[bytes] = []
        headers: list[str] = []
        keys: list[str | None] = []
        row = self._row
        traceparent = observability.current_traceparent()
        for message in messages:
            event_id, aggregate_type, aggregate_id, event_type, payload, header, key = row(
                message, traceparent
            )
            event_ids.append(event_id)
            aggregate_types.append(aggregate_type)
            aggregate_ids.append(aggregate_id)
            event_types.append(event_type)
            payloads.append(payload)
            headers.append(header)
            keys.append(key)
        return {
            "event_ids": event_ids,
            "aggregate_types": aggregate_types,
            "aggregate_ids": aggregate_ids,
            "event_types": event_types,
            "payloads": payloads,
            "headers": headers,
            "ordering_keys": keys,
            "available_ats": [message.available_at for message in messages],
        }

    async def enqueue(self, session: object, message: models.Message) -> uuid.UUID:
        """Insert ``message`` through ``session``, inside the caller's open transaction."""
        message = models.require_message(message, "enqueue(session, message)")
        await sessions.execute(session, self._insert, self._insert_values(message))
        return message.event_id

    async def enqueue_many(
        self, session: object, messages: Iterable[models.Message]
    ) -> list[uuid.UUID]:
        """Insert all ``messages`` in one statement, inside the caller's open transaction."""
        batch = models.require_messages(messages, "enqueue_many(session, messages)")
        if batch:
            await sessions.execute(session, self._insert_many, self._insert_many_values(batch))
        return [message.event_id for message in batch]

    def enqueue_sync(self, session: object, message: models.Message) -> uuid.UUID:
        """``enqueue`` for synchronous sessions (Django, psycopg, psycopg2, SQLAlchemy)."""
        message = models.require_message(message, "enqueue_sync(session, message)")
        sessions.execute_sync(session, self._insert, self._insert_values(message))
        return message.event_id

    def enqueue_many_sync(
        self, session: object, messages: Iterable[models.Message]
    ) -> list[uuid.UUID]:
        """``enqueue_many`` for synchronous sessions."""
        batch = models.require_messages(messages, "enqueue_many_sync(session, messages)")
        if batch:
            sessions.execute_sync(session, self._insert_many, self._insert_many_values(batch))
        return [message.event_id for message in batch]

    # -- relay side, on the pool ------------------------------------------------------------

    async def claim_pending(
        self,
        now: dt.datetime,
        stale_before: dt.datetime,
        limit: int,
        lock_token: uuid.UUID,
    ) -> list[models.OutboxEvent]:
        """Lease up to ``limit`` due rows to ``lock_token``, oldest first.

        Due: pending, ``available_at <= now``, and not leased or leased before
        ``stale_before`` (``now - lock_ttl``). Rows that another claimer holds are skipped.
        With ``ordering``, a row with an ordering key is due only while it is the oldest
        pending row of its key: at most one event per key is in flight. The ordered claim looks
        at the heads of at most ``limit`` keys, from where the previous claim of this repository
        stopped, and at the ``limit`` oldest due rows, so its cost does not grow with the rows
        queued behind the heads (see ``outbox_claim_ordered`` in ``sql/queries.sql``).
        """
        values: dict[str, object] = {
            "now": now,
            "stale_before": stale_before,
            "limit": limit,
            "lock_token": str(lock_token),
        }
        if self.ordering:
            values["after_key"] = self._after_key
            rows = await self._db.fetch("outbox_claim_ordered", values)
            # One row is where the walk over the keys' heads stopped, not an event.
            marker = next(i for i, row in enumerate(rows) if row[0] is None)
            self._after_key = rows.pop(marker)[12]
        else:
            rows = await self._db.fetch("outbox_claim", values)
        # RETURNING comes in no particular order; the lease is the token we just stamped.
        rows.sort(key=_seq_of_row)
        return [self._claimed(row, lock_token, now) for row in rows]

    async def mark_published(
        self, event_ids: Iterable[uuid.UUID], lock_token: uuid.UUID, published_at: dt.datetime
    ) -> int:
        """Mark a whole batch published in one statement; only rows still leased to the token."""
        # hex: a third of str()'s cost; one comma-joined parameter (see the query)
        ids = ",".join([event_id.hex for event_id in event_ids])
        if not ids:
            return 0
        return await self._db.change(
            "outbox_mark_published",
            {"event_ids": ids, "lock_token": str(lock_token), "published_at": published_at},
        )

    async def reschedule(
        self, event_id: uuid.UUID, lock_token: uuid.UUID, next_at: dt.datetime, error: str
    ) -> int:
        """Record a failed attempt and make the row due again at ``next_at``."""
        return await self._db.change(
            "outbox_reschedule",
            {
                "event_id": str(event_id),
                "lock_token": str(lock_token),
                "next_at": next_at,
                "error": error,
            },
        )

    async def reschedule_many(
        self,
        lock_token: uuid.UUID,
        retries: Sequence[tuple[uuid.UUID, dt.datetime, str]],
    ) -> int:
        """``reschedule`` for many rows in one statement: ``(event_id, next_at, error)`` each."""
        if not retries:
            return 0
        return await self._db.change(
            "outbox_reschedule_many",
            {
                "event_ids": [str(event_id) for event_id, _, _ in retries],
                "next_ats": [next_at for _, next_at, _ in retries],
                "errors": [error for _, _, error in retries],
                "lock_token": str(lock_token),
            },
        )

    async def mark_dead(self, event_id: uuid.UUID, lock_token: uuid.UUID, error: str) -> int:
        """Dead-letter the row: kept with status ``dead`` and ``last_error``, never retried."""
        return await self._db.change(
            "outbox_mark_dead",
            {"event_id": str(event_id), "lock_token": str(lock_token), "error": error},
        )

    async def release(self, event_ids: Iterable[uuid.UUID], lock_token: uuid.UUID) -> int:
        """Give leased rows back unpublished (graceful stop), so nobody waits for the lease."""
        ids = ",".join([event_id.hex for event_id in event_ids])
        if not ids:
            return 0
        return await self._db.change(
            "outbox_release", {"event_ids": ids, "lock_token": str(lock_token)}
        )

    async def count_pending(self) -> int:
        """Rows not yet published nor dead (including those in flight)."""
        return int(await self._db.fetch_value("outbox_count_pending", {}))

    async def pending_stats(self) -> tuple[int, dt.datetime | None]:
        """``(pending rows, created_at of the oldest)`` for the backlog gauges."""
        rows = await self._db.fetch("outbox_pending_stats", {})
        count, oldest = rows[0]
        return int(count), oldest

    async def purge_published(self, before: dt.datetime, limit: int) -> int:
        """Delete up to ``limit`` rows published before ``before``; returns how many. One
        short statement: call it again until it returns less than ``limit``."""
        return await self._db.change("outbox_purge_batch", {"before": before, "limit": limit})

    async def get(self, event_id: uuid.UUID) -> models.OutboxEvent | None:
        """One row by id, or ``None``."""
        rows = await self._db.fetch("outbox_get", {"event_id": str(event_id)})
        return self._event(rows[0]) if rows else None

    @staticmethod
    def _claimed(row: Row, lock_token: uuid.UUID, locked_at: dt.datetime) -> models.OutboxEvent:
        """An event from a claim's RETURNING row (the claim's own columns are known)."""
        # This runs once per claimed row: the fast builders, and no JSON for empty headers
        # (the claim returns them as NULL).
        event_id = models.uuid_from_db(row[0])
        headers = row[6]
        return models.claimed_event(
            event_id,
            row[1],  # seq
            row[2],  # aggregate_type
            row[3],  # aggregate_id
            row[4],  # event_type
            bytes(row[5]),  # payload
            {} if headers is None else models.decode_headers(headers, event_id),
            row[7],  # ordering_key
            row[8],  # created_at
            row[9],  # available_at
            row[10],  # delivery_attempts
            row[11],  # last_error
            lock_token,
            locked_at,
        )

    @staticmethod
    def _event(row: Row) -> models.OutboxEvent:
        """An event from a whole row (``outbox_get``)."""
        event_id = _as_uuid(row[0])
        return models.OutboxEvent(
            event_id,
            row[1],  # seq
            row[2],  # aggregate_type
            row[3],  # aggregate_id
            row[4],  # event_type
            bytes(row[5]),  # payload
            models.decode_headers(row[6], event_id),
            row[7],  # ordering_key
            models.OutboxStatus(row[8]),
            row[9],  # created_at
            row[10],  # available_at
            row[11],  # published_at
            row[12],  # delivery_attempts
            row[13],  # last_error
            _as_optional_uuid(row[14]),
            row[15],  # locked_at
        )


class InboxRepository:
    """The inbox table of one schema; every method is scoped to one ``consumer``."""

    def __init__(self, pool: Any, schema_name: str) -> None:
        self.schema = schema.validate_schema_name(schema_name)
        self.queries = schema.Queries(self.schema)
        self.pool = pool
        self._db = _PoolRunner(pool, self.queries)

    @staticmethod
    def _received_values(message: models.ReceivedMessage) -> dict[str, object]:
        event_id = _require_text(message.event_id, "event_id", message.message_id)
        return {
            "event_id": event_id,
            "message_id": message.message_id,
            "aggregate_type": message.aggregate_type or "",
            "aggregate_id": message.aggregate_id or "",
            "event_type": _require_text(message.event_type, "event_type", event_id),
            "payload": bytes(message.payload),
            "headers": models.encode_headers(message.headers, event_id),
            "ordering_key": message.ordering_key,
        }

    async def record_received(
        self, consumer: str, message: models.ReceivedMessage, session: object = None
    ) -> bool:
        """Record ``message`` once per consumer; ``False`` when it was already there.

        With ``session`` the insert joins the caller's transaction; without, it commits alone.
        """
        values = {"consumer": consumer, **self._received_values(message)}
        if session is not None:
            changed = await sessions.execute(session, self.queries["inbox_insert"], values)
            return changed > 0
        rows = await self._db.fetch("inbox_insert", values)
        return bool(rows)

    async def record_received_many(
        self, consumer: str, messages: Sequence[models.ReceivedMessage]
    ) -> int:
        """Record a batch in one statement; returns how many were new (the rest are duplicates)."""
        if not messages:
            return 0
        return len(await self._insert_many(consumer, messages))

    async def record_received_by_type(
        self, consumer: str, messages: Sequence[models.ReceivedMessage]
    ) -> dict[str, int]:
        """Record a batch in one statement; how many were new, by event type (the receiver
        counts duplicates per type without a statement per type)."""
        new: dict[str, int] = {}
        if messages:
            for row in await self._insert_many(consumer, messages):
                new[row[1]] = new.get(row[1], 0) + 1
        return new

    async def record_dead(self, consumer: str, message: models.ReceivedMessage, error: str) -> bool:
        """Record ``message`` as a dead row with ``last_error = error`` (it is never handled);
        ``False`` when its ``event_id`` was already there."""
        values = {"consumer": consumer, "error": error, **self._received_values(message)}
        return bool(await self._db.fetch("inbox_insert_dead", values))

    async def _insert_many(
        self, consumer: str, messages: Sequence[models.ReceivedMessage]
    ) -> list[Row]:
        rows = [self._received_values(message) for message in messages]
        values = {
            "consumer": consumer,
            "event_ids": [row["event_id"] for row in rows],
            "message_ids": [row["message_id"] for row in rows],
            "aggregate_types": [row["aggregate_type"] for row in rows],
            "aggregate_ids": [row["aggregate_id"] for row in rows],
            "event_types": [row["event_type"] for row in rows],
            "payloads": [row["payload"] for row in rows],
            "headers": [row["headers"] for row in rows],
            "ordering_keys": [row["ordering_key"] for row in rows],
        }
        return await self._db.fetch("inbox_insert_many", values)

    async def claim(
        self,
        consumer: str,
        now: dt.datetime,
        stale_before: dt.datetime,
        limit: int,
        lock_token: uuid.UUID,
    ) -> list[models.InboxEvent]:
        """Lease up to ``limit`` due inbox rows of ``consumer`` to ``lock_token``, oldest first."""
        rows = await self._db.fetch(
            "inbox_claim",
            {
                "consumer": consumer,
                "now": now,
                "stale_before": stale_before,
                "limit": limit,
                "lock_token": str(lock_token),
            },
        )
        pending = models.InboxStatus.PENDING
        events = [
            models.InboxEvent(
                consumer,
                row[0],  # event_id
                row[1],  # seq
                row[2],  # message_id
                row[3],  # aggregate_type
                row[4],  # aggregate_id
                row[5],  # event_type
                bytes(row[6]),  # payload
                models.decode_headers(row[7], row[0]),
                row[8],  # ordering_key
                pending,
                row[9],  # created_at
                row[10],  # available_at
                None,  # processed_at
                row[11],  # delivery_attempts
                row[12],  # last_error
                lock_token,
                now,  # locked_at
            )
            for row in rows
        ]
        events.sort(key=lambda event: event.seq)
        return events

    async def mark_processed(
        self,
        consumer: str,
        event_ids: Iterable[str],
        lock_token: uuid.UUID,
        processed_at: dt.datetime,
        session: object = None,
    ) -> int:
        """Mark rows processed; with ``session``, inside the handler's own transaction."""
        if session is None:
            return len(await self.mark_processed_ids(consumer, event_ids, lock_token, processed_at))
        ids = list(event_ids)
        if not ids:
            return 0
        values = self._processed_values(consumer, ids, lock_token, processed_at)
        return await sessions.execute(session, self.queries["inbox_mark_processed"], values)

    async def mark_processed_ids(
        self,
        consumer: str,
        event_ids: Iterable[str],
        lock_token: uuid.UUID,
        processed_at: dt.datetime,
    ) -> set[str]:
        """``mark_processed`` on the pool, telling which rows it changed (not only how many)."""
        ids = list(event_ids)
        if not ids:
            return set()
        values = self._processed_values(consumer, ids, lock_token, processed_at)
        return {row[0] for row in await self._db.fetch("inbox_mark_processed", values)}

    @staticmethod
    def _processed_values(
        consumer: str, ids: list[str], lock_token: uuid.UUID, processed_at: dt.datetime
    ) -> dict[str, object]:
        return {
            "consumer": consumer,
            "event_ids": ids,
            "lock_token": str(lock_token),
            "processed_at": processed_at,
        }

    async def record_error(
        self,
        consumer: str,
        event_id: str,
        lock_token: uuid.UUID,
        next_at: dt.datetime,
        error: str,
    ) -> int:
        """Record a failed handler run; the row is due again at ``next_at``."""
        return await self._db.change(
            "inbox_record_error",
            {
                "consumer": consumer,
                "event_id": event_id,
                "lock_token": str(lock_token),
                "next_at": next_at,
                "error": error,
            },
        )

    async def mark_dead(
        self, consumer: str, event_id: str, lock_token: uuid.UUID, error: str
    ) -> int:
        """Park the row as dead with ``last_error``; it is not retried."""
        return await self._db.change(
            "inbox_mark_dead",
            {
                "consumer": consumer,
                "event_id": event_id,
                "lock_token": str(lock_token),
                "error": error,
            },
        )

    async def release(self, consumer: str, event_ids: Iterable[str], lock_token: uuid.UUID) -> int:
        """Give leased rows back unprocessed (graceful stop)."""
        ids = list(event_ids)
        if not ids:
            return 0
        return await self._db.change(
            "inbox_release",
            {"consumer": consumer, "event_ids": ids, "lock_token": str(lock_token)},
        )

    async def count_pending(self, consumer: str) -> int:
        """Rows of ``consumer`` not yet processed nor dead."""
        return int(await self._db.fetch_value("inbox_count_pending", {"consumer": consumer}))

    async def pending_stats(self, consumer: str) -> tuple[int, dt.datetime | None]:
        """Pending rows of ``consumer`` and the oldest one's ``created_at`` (backlog gauges)."""
        rows = await self._db.fetch("inbox_pending_stats", {"consumer": consumer})
        return int(rows[0][0]), rows[0][1]

    async def count_dead(self, consumer: str) -> int:
        """Rows of ``consumer`` parked as dead (handler failed ``max_attempts`` times, or none
        was registered); they stay until revived or discarded by an operator."""
        return int(await self._db.fetch_value("inbox_count_dead", {"consumer": consumer}))

    async def purge_processed(self, consumer: str, before: dt.datetime, limit: int) -> int:
        """Delete up to ``limit`` rows of ``consumer`` processed before ``before``; returns how
        many. One short statement: call it again until it returns less than ``limit``."""
        return await self._db.change(
            "inbox_purge_processed", {"consumer": consumer, "before": before, "limit": limit}
        )

    async def purge_processed_all(self, before: dt.datetime, limit: int) -> int:
        """Delete up to ``limit`` rows of any consumer processed before ``before``; returns
        how many (the retention of a worker process, which serves every consumer)."""
        return await self._db.change("inbox_purge_batch", {"before": before, "limit": limit})

    async def get(self, consumer: str, event_id: str) -> models.InboxEvent | None:
        """One row, or ``None``."""
        rows = await self._db.fetch("inbox_get", {"consumer": consumer, "event_id": event_id})
        return self._event(rows[0]) if rows else None

    @staticmethod
    def _event(row: Row) -> models.InboxEvent:
        return models.InboxEvent(
            consumer=row[0],
            event_id=row[1],
            seq=row[2],
            message_id=row[3],
            aggregate_type=row[4],
            aggregate_id=row[5],
            event_type=row[6],
            payload=bytes(row[7]),
            headers=models.decode_headers(row[8], row[1]),
            ordering_key=row[9],
            status=models.InboxStatus(row[10]),
            created_at=row[11],
            available_at=row[12],
            processed_at=row[13],
            delivery_attempts=row[14],
            last_error=row[15],
            lock_token=_as_optional_uuid(row[16]),
            locked_at=row[17],
        )
