"""Bad and hostile messages enqueued on a real PostgreSQL: each is refused with a
``MessageError`` before anything reaches the server (the caller's transaction goes on), or it is
stored byte for byte; SQL metacharacters in any field are data, never SQL."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from typing import Any

import psycopg2
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from outbox_di import errors, models
from outbox_di.repository import OutboxRepository

pytestmark = pytest.mark.integration

HOSTILE = [
    "'; DROP TABLE outbox_events; --",
    "$$; SELECT pg_sleep(10); $$",
    "{{schema}}",
    '"public".outbox_events',
    "%(event_id)s %s $1 ?",
    "\\'\\\\",
    "\x00",
    "\ud800",
    "é\u202e",
]
texts = st.lists(st.sampled_from(HOSTILE) | st.text(max_size=5), min_size=1, max_size=3).map(
    "".join
)


@pytest.fixture
def connection(outbox_dsn: str, outbox_schema: str) -> Iterator[Any]:
    conn = psycopg2.connect(outbox_dsn)
    try:
        yield conn
    finally:
        conn.rollback()
        conn.close()


def _read(conn: Any, schema: str, event_id: str) -> tuple[Any, ...]:
    with conn.cursor() as cursor:
        cursor.execute(
            f"SELECT aggregate_type, aggregate_id, event_type, payload, headers, ordering_key, "  # noqa: S608
            f'available_at FROM "{schema}".outbox_events WHERE event_id = %s',
            (event_id,),
        )
        row = cursor.fetchone()
    assert row is not None
    return tuple(bytes(v) if isinstance(v, memoryview) else v for v in row)


@settings(
    max_examples=100,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    aggregate_type=texts,
    aggregate_id=texts,
    event_type=texts,
    ordering_key=st.none() | texts,
    headers=st.dictionaries(texts, texts, max_size=3),
    payload=st.binary(max_size=16) | st.sampled_from([b"", b"\x00\xff'$$;"]),
)
def test_a_message_is_refused_before_the_server_or_stored_byte_for_byte(
    connection: Any,
    outbox_schema: str,
    aggregate_type: str,
    aggregate_id: str,
    event_type: str,
    ordering_key: str | None,
    headers: dict[str, str],
    payload: bytes,
) -> None:
    repo = OutboxRepository(None, outbox_schema)
    at = dt.datetime(2030, 1, 1, 12, tzinfo=dt.timezone(dt.timedelta(hours=5)))
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT count(*) FROM pg_catalog.pg_tables")
            tables_before = cursor.fetchone()[0]
        try:
            message = models.Message(
                aggregate_type, aggregate_id, event_type, payload, headers,
                available_at=at, ordering_key=ordering_key,
            )  # fmt: skip
            repo.enqueue_sync(connection, message)
        except errors.MessageError as exc:
            # Refused by name, before the server: the caller's transaction is still usable.
            assert " of event " in str(exc), exc
            with connection.cursor() as cursor:
                cursor.execute("SELECT 1")
            return
        stored = _read(connection, outbox_schema, str(message.event_id))
        assert stored == (
            aggregate_type, aggregate_id, event_type, payload, headers, ordering_key, at,
        )  # fmt: skip
        with connection.cursor() as cursor:
            cursor.execute("SELECT count(*) FROM pg_catalog.pg_tables")
            assert cursor.fetchone()[0] == tables_before
    finally:
        connection.rollback()


@pytest.mark.parametrize(
    ("field", "value", "reason"),
    [
        ("event_type", "paid\x00", "NUL character"),
        ("aggregate_id", "o-\udc80", "lone surrogate"),
        ("ordering_key", "k\x00", "NUL character"),
        ("headers", {"tenant": "a\x00b"}, "NUL character"),
        ("headers", {"event_type": "x"}, "is reserved"),
    ],
)
def test_what_used_to_reach_the_driver_or_abort_the_transaction_is_refused_first(
    connection: Any, outbox_schema: str, field: str, value: Any, reason: str
) -> None:
    # A NUL in a header used to reach PostgreSQL as jsonb "\u0000" and abort the caller's
    # transaction; a NUL or a surrogate elsewhere raised the driver's own ValueError or
    # UnicodeEncodeError; a reserved header was overwritten by the relay without a word.
    fields: dict[str, Any] = {"aggregate_type": "order", "aggregate_id": "o-1"}
    fields["event_type"] = "order.paid"
    fields[field] = value
    with pytest.raises(errors.MessageError, match=reason):
        message = models.Message(**fields)
        OutboxRepository(None, outbox_schema).enqueue_sync(connection, message)
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")  # the transaction goes on
        assert cursor.fetchone() == (1,)
