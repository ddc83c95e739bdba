"""What an operator does without writing SQL: look at the backlog, retry or discard dead
events, purge old rows. The ``outbox-di`` commands ``status``, ``dead`` and ``purge`` call these
on a psycopg2 connection (:func:`outbox_di.database.connect`), for the outbox or the inbox.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Callable, Sequence
from typing import Any, Literal

import psycopg2

from outbox_di import errors, models, schema

Table = Literal["outbox", "inbox"]


@dataclasses.dataclass(frozen=True)
class StatusRow:
    """The backlog of one event type (and consumer, for the inbox)."""

    table: Table
    consumer: str | None
    event_type: str
    pending: int
    in_flight: int
    failing: int
    dead: int
    oldest_pending_age_s: float | None


@dataclasses.dataclass(frozen=True)
class DeadRow:
    """One dead-lettered event."""

    table: Table
    consumer: str | None
    event_id: str
    event_type: str
    aggregate_type: str
    aggregate_id: str
    delivery_attempts: int
    last_error: str | None
    created_at: dt.datetime


def _run(conn: Any, schema_name: str, name: str, values: dict[str, object]) -> Any:
    queries = schema.Queries(schema_name)
    try:
        with conn, conn.cursor() as cursor:
            cursor.execute(queries[name].sql, values)
            if cursor.description is None:
                return int(cursor.rowcount)
            return list(cursor.fetchall())
    except psycopg2.Error as exc:
        raise errors.DatabaseError(f"{name} failed: {exc}".strip()) from exc


def schemas(conn: Any) -> list[str]:
    """Every schema of the database holding an outbox (an ``outbox_schema_version`` table), by
    name; names ``migrate`` would refuse are left out."""
    # outbox_schemas names no schema: "public" only renders the (unused) placeholder.
    names = [row[0] for row in _run(conn, "public", "outbox_schemas", {})]
    return [name for name in names if not schema.schema_name_problems(name)]


def status(conn: Any, schema_name: str, *, lock_ttl: float = 30.0) -> list[StatusRow]:
    """Pending, in flight (leased within ``lock_ttl``), failing, dead and the oldest pending
    age, per event type, for the outbox and the inbox."""
    now = models.utcnow()
    values: dict[str, object] = {"stale_before": now - dt.timedelta(seconds=lock_ttl)}
    rows: list[StatusRow] = []
    table: Table
    for table in ("outbox", "inbox"):
        for consumer, event_type, pending, in_flight, failing, dead, oldest in _run(
            conn, schema_name, f"{table}_status", values
        ):
            age = (now - oldest).total_seconds() if oldest is not None else None
            rows.append(
                StatusRow(table, consumer, event_type, pending, in_flight, failing, dead, age)
            )
    return rows


def dead_list(
    conn: Any,
    schema_name: str,
    table: Table = "outbox",
    *,
    event_type: str | None = None,
    limit: int = 100,
) -> list[DeadRow]:
    """Dead events, oldest first."""
    if limit < 0:
        raise errors.OutboxError(f"limit must be 0 or more, got {limit}")
    found = _run(
        conn, schema_name, f"{table}_dead_list", {"event_type": event_type, "limit": limit}
    )
    return [DeadRow(table, *row) for row in found]


def _selection(
    select_all: bool, event_type: str | None, event_ids: Sequence[str]
) -> dict[str, object]:
    if not (select_all or event_type or event_ids):
        raise errors.OutboxError("choose the dead events: --all, --event-type TYPE or --id ID")
    return {"all": select_all, "event_type": event_type, "event_ids": list(event_ids)}


def dead_retry(
    conn: Any,
    schema_name: str,
    table: Table = "outbox",
    *,
    select_all: bool = False,
    event_type: str | None = None,
    event_ids: Sequence[str] = (),
) -> int:
    """Make the chosen dead events pending again (attempts reset); returns how many."""
    values = _selection(select_all, event_type, event_ids)
    return int(_run(conn, schema_name, f"{table}_dead_retry", values))


def dead_discard(
    conn: Any,
    schema_name: str,
    table: Table = "outbox",
    *,
    select_all: bool = False,
    event_type: str | None = None,
    event_ids: Sequence[str] = (),
) -> int:
    """Delete the chosen dead events; returns how many."""
    values = _selection(select_all, event_type, event_ids)
    return int(_run(conn, schema_name, f"{table}_dead_discard", values))


def purge(
    conn: Any,
    schema_name: str,
    table: Table = "outbox",
    *,
    older_than: float,
    batch_size: int = 1000,
    progress: Callable[[int], None] | None = None,
) -> int:
    """Delete published (outbox) or processed (inbox) rows older than ``older_than`` seconds,
    in batches of ``batch_size``, each its own short transaction (no long locks). Returns the
    number deleted; ``progress`` is called with the running total after each batch."""
    if older_than <= 0:
        raise errors.OutboxError("--older-than must be a positive duration, like 7d or 12h")
    if batch_size < 1:
        # LIMIT 0 deletes nothing, which would never end the loop below.
        raise errors.OutboxError(f"--batch-size must be at least 1, got {batch_size}")
    before = models.utcnow() - dt.timedelta(seconds=older_than)
    total = 0
    while True:
        deleted = int(
            _run(conn, schema_name, f"{table}_purge_batch", {"before": before, "limit": batch_size})
        )
        total += deleted
        if progress is not None:
            progress(total)
        if deleted < batch_size:
            return total
