"""enqueue joins the caller's own transaction, for every supported driver, on a real PostgreSQL.

Each driver gets an "opener": a context manager written the way a service would write its own
unit of work (open a connection, begin a transaction in that driver's idiom, commit on a clean
exit, roll back when an exception escapes). The same tests then run through every opener:
rollback leaves no row, commit leaves exactly the rows enqueued, with every field intact.

Django's ORM refuses to run while an event loop runs in its thread, so the synchronous drivers
(Django among them) are tested from plain ``def`` tests, which read the outcome back through an
:class:`OutboxRepository` on a short-lived pool of their own.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from typing import Any

import aiopg
import asyncpg  # type: ignore[import-untyped]
import psycopg
import psycopg2
import psycopg2.extensions
import pytest
import sqlalchemy
from django.conf import settings  # type: ignore[import-untyped]
from django.db import connection as django_connection  # type: ignore[import-untyped]
from django.db import connections as django_connections
from django.db import transaction as django_transaction
from sqlalchemy import orm
from sqlalchemy.ext import asyncio as sa_asyncio

from outbox_di import database, errors, models, repository, sessions
from tests.integration import support

pytestmark = pytest.mark.integration

TTL = dt.timedelta(seconds=30)

AsyncOpener = Callable[[str], contextlib.AbstractAsyncContextManager[Any]]
SyncOpener = Callable[[str], contextlib.AbstractContextManager[Any]]


class _Rollback(Exception):
    """Raised inside a unit of work to make the caller's own transaction roll back."""


# -- connection parameters -------------------------------------------------------------------
# The fixture's DSN is a URI ("postgresql://user@host:port/db"), possibly with a socket
# directory as "?host=/dir" (embedded server), or a libpq key=value string (OUTBOX_TEST_DSN):
# libpq parses all of them, and the drivers that do not use libpq get the parsed parts.


_dsn_parts = support.dsn_parts


def _asyncpg_kwargs(dsn: str) -> dict[str, Any]:
    parts = _dsn_parts(dsn)
    kwargs: dict[str, Any] = {
        "user": parts.get("user"),
        "password": parts.get("password") or None,
        "database": parts.get("dbname"),
        "host": parts.get("host"),
    }
    if "port" in parts:
        kwargs["port"] = int(parts["port"])
    return kwargs


def _sqlalchemy_url(dsn: str, driver: str) -> sqlalchemy.URL:
    parts = _dsn_parts(dsn)
    host = parts.get("host")
    socket_dir = host is not None and host.startswith("/")
    return sqlalchemy.URL.create(
        f"postgresql+{driver}",
        username=parts.get("user"),
        password=parts.get("password") or None,
        host=None if socket_dir else host,
        port=int(parts["port"]) if "port" in parts else None,
        database=parts.get("dbname"),
        query={"host": host} if socket_dir and host is not None else {},
    )


_configure_django = support.configure_django


# -- async openers: one per driver, each the unit of work a service would write --------------


@contextlib.asynccontextmanager
async def _aiopg_connection(dsn: str) -> AsyncIterator[Any]:
    # aiopg is always autocommit: the transaction is an explicit BEGIN on a cursor of the same
    # connection; enqueue then runs on the connection, inside that transaction.
    async with aiopg.connect(dsn) as conn, conn.cursor() as cursor:
        await cursor.execute("BEGIN")
        try:
            yield conn
        except BaseException:
            await cursor.execute("ROLLBACK")
            raise
        await cursor.execute("COMMIT")


@contextlib.asynccontextmanager
async def _aiopg_cursor(dsn: str) -> AsyncIterator[Any]:
    async with aiopg.connect(dsn) as conn, conn.cursor() as cursor, cursor.begin():
        yield cursor


@contextlib.asynccontextmanager
async def _asyncpg_connection(dsn: str) -> AsyncIterator[Any]:
    conn = await asyncpg.connect(**_asyncpg_kwargs(dsn))
    try:
        async with conn.transaction():
            yield conn
    finally:
        await conn.close()


@contextlib.asynccontextmanager
async def _asyncpg_pool_connection(dsn: str) -> AsyncIterator[Any]:
    kwargs = _asyncpg_kwargs(dsn)
    async with (
        asyncpg.create_pool(min_size=1, max_size=2, **kwargs) as pool,
        pool.acquire() as conn,
        conn.transaction(),
    ):
        yield conn


@contextlib.asynccontextmanager
async def _psycopg_async_connection(dsn: str) -> AsyncIterator[Any]:
    # autocommit=False (the default): the first statement opens a transaction; leaving the
    # block commits it, an exception rolls it back.
    async with await psycopg.AsyncConnection.connect(dsn) as conn:
        yield conn


@contextlib.asynccontextmanager
async def _psycopg_async_autocommit_transaction(dsn: str) -> AsyncIterator[Any]:
    async with (
        await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn,
        conn.transaction(),
    ):
        yield conn


@contextlib.asynccontextmanager
async def _psycopg_async_cursor(dsn: str) -> AsyncIterator[Any]:
    async with await psycopg.AsyncConnection.connect(dsn) as conn, conn.cursor() as cursor:
        yield cursor


@contextlib.asynccontextmanager
async def _psycopg_async_raw_cursor(dsn: str) -> AsyncIterator[Any]:
    # Raw cursors take $1 placeholders, not %(name)s.
    async with (
        await psycopg.AsyncConnection.connect(dsn) as conn,
        psycopg.AsyncRawCursor(conn) as cursor,
    ):
        yield cursor


@contextlib.asynccontextmanager
async def _psycopg_async_connection_raw_factory(dsn: str) -> AsyncIterator[Any]:
    async with await psycopg.AsyncConnection.connect(
        dsn, cursor_factory=psycopg.AsyncRawCursor
    ) as conn:
        yield conn


def _sqlalchemy_async_connection(driver: str) -> AsyncOpener:
    @contextlib.asynccontextmanager
    async def opener(dsn: str) -> AsyncIterator[Any]:
        engine = sa_asyncio.create_async_engine(_sqlalchemy_url(dsn, driver))
        try:
            async with engine.begin() as conn:
                yield conn
        finally:
            await engine.dispose()

    return opener


def _sqlalchemy_async_session(driver: str) -> AsyncOpener:
    @contextlib.asynccontextmanager
    async def opener(dsn: str) -> AsyncIterator[Any]:
        engine = sa_asyncio.create_async_engine(_sqlalchemy_url(dsn, driver))
        try:
            async with sa_asyncio.AsyncSession(engine) as session, session.begin():
                yield session
        finally:
            await engine.dispose()

    return opener


ASYNC_OPENERS: dict[str, tuple[AsyncOpener, sessions.Kind]] = {
    "aiopg-connection": (_aiopg_connection, sessions.Kind.AIOPG_CONNECTION),
    "aiopg-cursor": (_aiopg_cursor, sessions.Kind.AIOPG_CURSOR),
    "asyncpg-connection": (_asyncpg_connection, sessions.Kind.ASYNCPG),
    "asyncpg-pool-connection": (_asyncpg_pool_connection, sessions.Kind.ASYNCPG),
    "psycopg-async-connection": (
        _psycopg_async_connection,
        sessions.Kind.PSYCOPG_ASYNC_CONNECTION,
    ),
    "psycopg-async-autocommit-transaction": (
        _psycopg_async_autocommit_transaction,
        sessions.Kind.PSYCOPG_ASYNC_CONNECTION,
    ),
    "psycopg-async-cursor": (_psycopg_async_cursor, sessions.Kind.PSYCOPG_ASYNC_CURSOR),
    "psycopg-async-raw-cursor": (_psycopg_async_raw_cursor, sessions.Kind.PSYCOPG_ASYNC_CURSOR),
    "psycopg-async-connection-raw-cursor-factory": (
        _psycopg_async_connection_raw_factory,
        sessions.Kind.PSYCOPG_ASYNC_CONNECTION,
    ),
    "sqlalchemy-asyncpg-connection": (
        _sqlalchemy_async_connection("asyncpg"),
        sessions.Kind.SQLALCHEMY_ASYNC_CONNECTION,
    ),
    "sqlalchemy-psycopg-connection": (
        _sqlalchemy_async_connection("psycopg"),
        sessions.Kind.SQLALCHEMY_ASYNC_CONNECTION,
    ),
    "sqlalchemy-asyncpg-session": (
        _sqlalchemy_async_session("asyncpg"),
        sessions.Kind.SQLALCHEMY_ASYNC_SESSION,
    ),
    "sqlalchemy-psycopg-session": (
        _sqlalchemy_async_session("psycopg"),
        sessions.Kind.SQLALCHEMY_ASYNC_SESSION,
    ),
}


# -- sync openers -----------------------------------------------------------------------------


@contextlib.contextmanager
def _psycopg_connection(dsn: str) -> Iterator[Any]:
    with psycopg.connect(dsn) as conn:
        yield conn


@contextlib.contextmanager
def _psycopg_cursor(dsn: str) -> Iterator[Any]:
    with psycopg.connect(dsn) as conn, conn.cursor() as cursor:
        yield cursor


@contextlib.contextmanager
def _psycopg_raw_cursor(dsn: str) -> Iterator[Any]:
    with psycopg.connect(dsn) as conn, psycopg.RawCursor(conn) as cursor:
        yield cursor


@contextlib.contextmanager
def _psycopg2_connection(dsn: str) -> Iterator[Any]:
    # psycopg2's "with conn" commits or rolls back but does not close.
    conn = psycopg2.connect(dsn)
    try:
        with conn:
            yield conn
    finally:
        conn.close()


@contextlib.contextmanager
def _psycopg2_cursor(dsn: str) -> Iterator[Any]:
    conn = psycopg2.connect(dsn)
    try:
        with conn, conn.cursor() as cursor:
            yield cursor
    finally:
        conn.close()


@contextlib.contextmanager
def _sqlalchemy_session(dsn: str) -> Iterator[Any]:
    engine = sqlalchemy.create_engine(_sqlalchemy_url(dsn, "psycopg2"))
    try:
        with orm.Session(engine) as session, session.begin():
            yield session
    finally:
        engine.dispose()


@contextlib.contextmanager
def _sqlalchemy_connection(dsn: str) -> Iterator[Any]:
    engine = sqlalchemy.create_engine(_sqlalchemy_url(dsn, "psycopg2"))
    try:
        with engine.begin() as conn:
            yield conn
    finally:
        engine.dispose()


@contextlib.contextmanager
def _django_connection(dsn: str) -> Iterator[Any]:
    _configure_django(dsn)
    try:
        with django_transaction.atomic():
            yield django_connection
    finally:
        django_connection.close()


@contextlib.contextmanager
def _django_connections_default(dsn: str) -> Iterator[Any]:
    _configure_django(dsn)
    try:
        with django_transaction.atomic(using="default"):
            yield django_connections["default"]
    finally:
        django_connections["default"].close()


SYNC_OPENERS: dict[str, tuple[SyncOpener, sessions.Kind]] = {
    "psycopg-connection": (_psycopg_connection, sessions.Kind.PSYCOPG_CONNECTION),
    "psycopg-cursor": (_psycopg_cursor, sessions.Kind.PSYCOPG_CURSOR),
    "psycopg-raw-cursor": (_psycopg_raw_cursor, sessions.Kind.PSYCOPG_CURSOR),
    "psycopg2-connection": (_psycopg2_connection, sessions.Kind.PSYCOPG2_CONNECTION),
    "psycopg2-cursor": (_psycopg2_cursor, sessions.Kind.PSYCOPG2_CURSOR),
    "sqlalchemy-psycopg2-session": (_sqlalchemy_session, sessions.Kind.SQLALCHEMY_SESSION),
    "sqlalchemy-psycopg2-connection": (
        _sqlalchemy_connection,
        sessions.Kind.SQLALCHEMY_CONNECTION,
    ),
    "django-connection": (_django_connection, sessions.Kind.DJANGO),
    "django-connections-default": (_django_connections_default, sessions.Kind.DJANGO),
}

async_openers = pytest.mark.parametrize(
    ("opener", "kind"), list(ASYNC_OPENERS.values()), ids=list(ASYNC_OPENERS)
)
sync_openers = pytest.mark.parametrize(
    ("opener", "kind"), list(SYNC_OPENERS.values()), ids=list(SYNC_OPENERS)
)


# -- messages and checks ----------------------------------------------------------------------


def _message(n: int = 0, **overrides: Any) -> models.Message:
    fields: dict[str, Any] = {
        "aggregate_type": "order",
        "aggregate_id": f"order-{n}",
        "event_type": "order.placed",
        "payload": {"n": n, "note": "déjà vu ✓"},
        "headers": {"source": "test", "traceparent": f"00-{n:032x}-{n:016x}-01"},
    }
    fields.update(overrides)
    return models.Message(**fields)


def _mixed_messages() -> list[models.Message]:
    """Messages whose optional columns mix values and NULLs inside one batch."""
    at = dt.datetime(2030, 1, 2, 3, 4, 5, 678901, tzinfo=dt.timezone.utc)
    return [
        _message(0),
        _message(1, payload=bytes(range(256)), ordering_key="key-1", headers={}),
        _message(2, aggregate_id=uuid.UUID(int=2), available_at=at),
        _message(3, aggregate_id=3, ordering_key="key-3", available_at=at),
    ]


def _check_stored(
    messages: Sequence[models.Message],
    pending: int,
    stored: Sequence[models.OutboxEvent | None],
) -> None:
    """Exactly ``messages`` are pending, every field as enqueued, in enqueue order."""
    assert pending == len(messages)
    events: list[models.OutboxEvent] = []
    for message, event in zip(messages, stored, strict=True):
        assert event is not None, f"event {message.event_id} was not stored"
        assert event.event_id == message.event_id
        assert event.aggregate_type == message.aggregate_type
        assert event.aggregate_id == str(message.aggregate_id)
        assert event.event_type == message.event_type
        assert event.payload == message.payload_bytes()
        assert event.headers == dict(message.headers)
        assert event.ordering_key == message.ordering_key
        assert event.status is models.OutboxStatus.PENDING
        assert event.delivery_attempts == 0
        if message.available_at is not None:
            assert event.available_at == message.available_at
        events.append(event)
    seqs = [event.seq for event in events]
    assert seqs == sorted(seqs)


def _check_nothing(
    messages: Sequence[models.Message],
    pending: int,
    stored: Sequence[models.OutboxEvent | None],
) -> None:
    assert pending == 0
    assert list(stored) == [None] * len(messages)


async def _read(
    repo: repository.OutboxRepository, messages: Sequence[models.Message]
) -> tuple[int, list[models.OutboxEvent | None]]:
    return await repo.count_pending(), [await repo.get(m.event_id) for m in messages]


def _read_sync(
    dsn: str, schema_name: str, messages: Sequence[models.Message]
) -> tuple[int, list[models.OutboxEvent | None]]:
    """``_read`` from a sync test, on a pool of its own (Django must not see a running loop)."""

    async def read() -> tuple[int, list[models.OutboxEvent | None]]:
        async with database.open_pool(dsn, min_size=1, max_size=1) as pool:
            return await _read(repository.OutboxRepository(pool, schema_name), messages)

    return asyncio.run(read())


# -- async drivers ----------------------------------------------------------------------------


@async_openers
async def test_each_async_opener_yields_the_session_kind_it_names(
    opener: AsyncOpener, kind: sessions.Kind, outbox_dsn: str
) -> None:
    async with opener(outbox_dsn) as session:
        assert sessions.kind_of(session) is kind
        assert kind.is_async


async def test_an_asyncpg_pool_hands_out_a_proxy_that_is_accepted(outbox_dsn: str) -> None:
    async with _asyncpg_pool_connection(outbox_dsn) as conn:
        # Not a Connection subclass (isinstance is faked): recognised by its own class name.
        assert type(conn).__name__ == "PoolConnectionProxy"
        assert asyncpg.Connection not in type(conn).__mro__
        assert sessions.kind_of(conn) is sessions.Kind.ASYNCPG


@async_openers
async def test_enqueue_commit_leaves_exactly_one_row(
    opener: AsyncOpener,
    kind: sessions.Kind,
    outbox_dsn: str,
    outbox_repository: repository.OutboxRepository,
) -> None:
    message = _message(1)
    async with opener(outbox_dsn) as session:
        assert await outbox_repository.enqueue(session, message) == message.event_id
    _check_stored([message], *await _read(outbox_repository, [message]))


@async_openers
async def test_enqueue_rollback_leaves_no_row(
    opener: AsyncOpener,
    kind: sessions.Kind,
    outbox_dsn: str,
    outbox_repository: repository.OutboxRepository,
) -> None:
    message = _message(1)
    with pytest.raises(_Rollback):
        async with opener(outbox_dsn) as session:
            await outbox_repository.enqueue(session, message)
            raise _Rollback
    _check_nothing([message], *await _read(outbox_repository, [message]))


@async_openers
async def test_enqueue_many_commit_leaves_every_row_in_order(
    opener: AsyncOpener,
    kind: sessions.Kind,
    outbox_dsn: str,
    outbox_repository: repository.OutboxRepository,
) -> None:
    messages = [_message(n) for n in range(3)]
    async with opener(outbox_dsn) as session:
        ids = await outbox_repository.enqueue_many(session, messages)
    assert ids == [m.event_id for m in messages]
    _check_stored(messages, *await _read(outbox_repository, messages))


@async_openers
async def test_enqueue_many_rollback_leaves_no_row(
    opener: AsyncOpener,
    kind: sessions.Kind,
    outbox_dsn: str,
    outbox_repository: repository.OutboxRepository,
) -> None:
    messages = [_message(n) for n in range(3)]
    with pytest.raises(_Rollback):
        async with opener(outbox_dsn) as session:
            await outbox_repository.enqueue_many(session, messages)
            raise _Rollback
    _check_nothing(messages, *await _read(outbox_repository, messages))


@async_openers
async def test_optional_columns_round_trip_alone_and_mixed_in_a_batch(
    opener: AsyncOpener,
    kind: sessions.Kind,
    outbox_dsn: str,
    outbox_repository: repository.OutboxRepository,
) -> None:
    single = _mixed_messages()[3]
    batch = _mixed_messages()
    async with opener(outbox_dsn) as session:
        await outbox_repository.enqueue(session, single)
        await outbox_repository.enqueue_many(session, batch)
    _check_stored([single, *batch], *await _read(outbox_repository, [single, *batch]))


@async_openers
async def test_enqueue_sync_refuses_an_async_session(
    opener: AsyncOpener,
    kind: sessions.Kind,
    outbox_dsn: str,
    outbox_repository: repository.OutboxRepository,
) -> None:
    message = _message()
    async with opener(outbox_dsn) as session:
        with pytest.raises(errors.UnsupportedSessionError, match=r"await enqueue\(\)") as info:
            outbox_repository.enqueue_sync(session, message)
        with pytest.raises(errors.UnsupportedSessionError, match=r"await enqueue\(\)"):
            outbox_repository.enqueue_many_sync(session, [message])
    assert isinstance(info.value, TypeError)
    assert await outbox_repository.count_pending() == 0


# -- sessions without an open transaction -----------------------------------------------------


@contextlib.asynccontextmanager
async def _asyncpg_outside_transaction(dsn: str) -> AsyncIterator[Any]:
    conn = await asyncpg.connect(**_asyncpg_kwargs(dsn))
    try:
        yield conn
    finally:
        await conn.close()


@contextlib.asynccontextmanager
async def _aiopg_connection_without_begin(dsn: str) -> AsyncIterator[Any]:
    async with aiopg.connect(dsn) as conn:
        yield conn


@contextlib.asynccontextmanager
async def _aiopg_cursor_without_begin(dsn: str) -> AsyncIterator[Any]:
    async with aiopg.connect(dsn) as conn, conn.cursor() as cursor:
        yield cursor


@contextlib.asynccontextmanager
async def _psycopg_async_autocommit(dsn: str) -> AsyncIterator[Any]:
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        yield conn


@contextlib.asynccontextmanager
async def _psycopg_async_autocommit_cursor(dsn: str) -> AsyncIterator[Any]:
    async with (
        await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn,
        conn.cursor() as cursor,
    ):
        yield cursor


def _sqlalchemy_async_autocommit(driver: str, *, session: bool) -> AsyncOpener:
    # isolation_level="AUTOCOMMIT" makes every statement commit on its own, even inside
    # engine.begin() / session.begin(): SQLAlchemy then emits no BEGIN at all.
    @contextlib.asynccontextmanager
    async def opener(dsn: str) -> AsyncIterator[Any]:
        engine = sa_asyncio.create_async_engine(
            _sqlalchemy_url(dsn, driver), isolation_level="AUTOCOMMIT"
        )
        try:
            if session:
                async with sa_asyncio.AsyncSession(engine) as s, s.begin():
                    yield s
            else:
                async with engine.begin() as conn:
                    yield conn
        finally:
            await engine.dispose()

    return opener


NO_TRANSACTION_ASYNC: dict[str, AsyncOpener] = {
    "asyncpg-outside-transaction": _asyncpg_outside_transaction,
    "aiopg-connection-without-begin": _aiopg_connection_without_begin,
    "aiopg-cursor-without-begin": _aiopg_cursor_without_begin,
    "psycopg-async-autocommit": _psycopg_async_autocommit,
    "psycopg-async-autocommit-cursor": _psycopg_async_autocommit_cursor,
    "sqlalchemy-asyncpg-autocommit-connection": _sqlalchemy_async_autocommit(
        "asyncpg", session=False
    ),
    "sqlalchemy-psycopg-autocommit-session": _sqlalchemy_async_autocommit("psycopg", session=True),
}


@pytest.mark.parametrize(
    "opener", list(NO_TRANSACTION_ASYNC.values()), ids=list(NO_TRANSACTION_ASYNC)
)
async def test_a_session_without_a_transaction_is_refused_and_writes_nothing(
    opener: AsyncOpener, outbox_dsn: str, outbox_repository: repository.OutboxRepository
) -> None:
    message = _message()
    async with opener(outbox_dsn) as session:
        with pytest.raises(errors.NotInTransactionError, match="no open transaction"):
            await outbox_repository.enqueue(session, message)
        with pytest.raises(errors.NotInTransactionError):
            await outbox_repository.enqueue_many(session, [_message(1), _message(2)])
    assert await outbox_repository.count_pending() == 0
    assert await outbox_repository.get(message.event_id) is None


async def test_a_psycopg_server_side_cursor_is_refused(
    outbox_dsn: str, outbox_repository: repository.OutboxRepository
) -> None:
    async with (
        await psycopg.AsyncConnection.connect(outbox_dsn) as conn,
        conn.cursor(name="named") as cursor,
    ):
        with pytest.raises(errors.UnsupportedSessionError, match="server-side"):
            await outbox_repository.enqueue(cursor, _message())
    assert await outbox_repository.count_pending() == 0


# -- inbox methods inside the caller's transaction --------------------------------------------


def _received(event_id: str) -> models.ReceivedMessage:
    return models.ReceivedMessage(
        event_id=event_id,
        event_type="order.placed",
        payload=b'{"n":1}',
        headers={"traceparent": "00-abc-def-01"},
        message_id=f"m-{event_id}",
        aggregate_type="order",
        aggregate_id="order-1",
    )


@async_openers
async def test_inbox_record_received_joins_the_session_transaction(
    opener: AsyncOpener,
    kind: sessions.Kind,
    outbox_dsn: str,
    inbox_repository: repository.InboxRepository,
) -> None:
    with pytest.raises(_Rollback):
        async with opener(outbox_dsn) as session:
            assert await inbox_repository.record_received("svc", _received("e1"), session=session)
            raise _Rollback
    assert await inbox_repository.get("svc", "e1") is None
    assert await inbox_repository.count_pending("svc") == 0

    async with opener(outbox_dsn) as session:
        assert await inbox_repository.record_received("svc", _received("e1"), session=session)
        # Same transaction, same event: the duplicate is seen and not recorded again.
        assert not await inbox_repository.record_received("svc", _received("e1"), session=session)
    stored = await inbox_repository.get("svc", "e1")
    assert stored is not None
    assert stored.message_id == "m-e1"
    assert stored.payload == b'{"n":1}'
    assert stored.headers == {"traceparent": "00-abc-def-01"}
    assert await inbox_repository.count_pending("svc") == 1
    # Committed before: a later session sees the duplicate too.
    async with opener(outbox_dsn) as session:
        assert not await inbox_repository.record_received("svc", _received("e1"), session=session)


@async_openers
async def test_inbox_mark_processed_joins_the_session_transaction(
    opener: AsyncOpener,
    kind: sessions.Kind,
    outbox_dsn: str,
    inbox_repository: repository.InboxRepository,
) -> None:
    await inbox_repository.record_received("svc", _received("e1"))
    await inbox_repository.record_received("svc", _received("e2"))
    now = models.utcnow()
    token = uuid.uuid4()
    assert len(await inbox_repository.claim("svc", now, now - TTL, 10, token)) == 2

    with pytest.raises(_Rollback):
        async with opener(outbox_dsn) as session:
            changed = await inbox_repository.mark_processed(
                "svc", ["e1"], token, now, session=session
            )
            assert changed == 1
            raise _Rollback
    assert await inbox_repository.count_pending("svc") == 2
    e1 = await inbox_repository.get("svc", "e1")
    assert e1 is not None and e1.status is models.InboxStatus.PENDING

    async with opener(outbox_dsn) as session:
        ids = ["e1", "e2"]
        stranger = uuid.uuid4()
        assert (
            await inbox_repository.mark_processed("svc", ids, stranger, now, session=session) == 0
        )
        assert await inbox_repository.mark_processed("svc", ids, token, now, session=session) == 2
    assert await inbox_repository.count_pending("svc") == 0
    e1 = await inbox_repository.get("svc", "e1")
    assert e1 is not None and e1.status is models.InboxStatus.PROCESSED
    assert e1.processed_at == now


# -- sync drivers (enqueue_sync), Django among them -------------------------------------------


@sync_openers
def test_each_sync_opener_yields_the_session_kind_it_names(
    opener: SyncOpener, kind: sessions.Kind, outbox_dsn: str
) -> None:
    with opener(outbox_dsn) as session:
        assert sessions.kind_of(session) is kind
        assert not kind.is_async


@sync_openers
def test_enqueue_sync_commit_leaves_exactly_one_row(
    opener: SyncOpener, kind: sessions.Kind, outbox_dsn: str, outbox_schema: str
) -> None:
    repo = repository.OutboxRepository(None, outbox_schema)
    message = _message(1)
    with opener(outbox_dsn) as session:
        assert repo.enqueue_sync(session, message) == message.event_id
    _check_stored([message], *_read_sync(outbox_dsn, outbox_schema, [message]))


@sync_openers
def test_enqueue_sync_rollback_leaves_no_row(
    opener: SyncOpener, kind: sessions.Kind, outbox_dsn: str, outbox_schema: str
) -> None:
    repo = repository.OutboxRepository(None, outbox_schema)
    message = _message(1)
    with pytest.raises(_Rollback), opener(outbox_dsn) as session:
        repo.enqueue_sync(session, message)
        raise _Rollback
    _check_nothing([message], *_read_sync(outbox_dsn, outbox_schema, [message]))


@sync_openers
def test_enqueue_many_sync_commit_leaves_every_row_in_order(
    opener: SyncOpener, kind: sessions.Kind, outbox_dsn: str, outbox_schema: str
) -> None:
    repo = repository.OutboxRepository(None, outbox_schema)
    messages = [_message(n) for n in range(3)]
    with opener(outbox_dsn) as session:
        assert repo.enqueue_many_sync(session, messages) == [m.event_id for m in messages]
    _check_stored(messages, *_read_sync(outbox_dsn, outbox_schema, messages))


@sync_openers
def test_enqueue_many_sync_rollback_leaves_no_row(
    opener: SyncOpener, kind: sessions.Kind, outbox_dsn: str, outbox_schema: str
) -> None:
    repo = repository.OutboxRepository(None, outbox_schema)
    messages = [_message(n) for n in range(3)]
    with pytest.raises(_Rollback), opener(outbox_dsn) as session:
        repo.enqueue_many_sync(session, messages)
        raise _Rollback
    _check_nothing(messages, *_read_sync(outbox_dsn, outbox_schema, messages))


@sync_openers
def test_optional_columns_round_trip_through_a_sync_session(
    opener: SyncOpener, kind: sessions.Kind, outbox_dsn: str, outbox_schema: str
) -> None:
    repo = repository.OutboxRepository(None, outbox_schema)
    single = _mixed_messages()[3]
    batch = _mixed_messages()
    with opener(outbox_dsn) as session:
        repo.enqueue_sync(session, single)
        repo.enqueue_many_sync(session, batch)
    _check_stored([single, *batch], *_read_sync(outbox_dsn, outbox_schema, [single, *batch]))


@sync_openers
def test_enqueue_refuses_a_sync_session(
    opener: SyncOpener, kind: sessions.Kind, outbox_dsn: str, outbox_schema: str
) -> None:
    repo = repository.OutboxRepository(None, outbox_schema)
    message = _message()
    with opener(outbox_dsn) as session:
        # The session is refused before anything runs on it (Django included: its ORM is not
        # touched from inside the event loop).
        with pytest.raises(errors.UnsupportedSessionError, match=r"enqueue_sync\(\)") as info:
            asyncio.run(repo.enqueue(session, message))
        with pytest.raises(errors.UnsupportedSessionError, match=r"enqueue_sync\(\)"):
            asyncio.run(repo.enqueue_many(session, [message]))
    assert isinstance(info.value, TypeError)
    _check_nothing([message], *_read_sync(outbox_dsn, outbox_schema, [message]))


@contextlib.contextmanager
def _psycopg_autocommit(dsn: str) -> Iterator[Any]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        yield conn


@contextlib.contextmanager
def _psycopg2_autocommit(dsn: str) -> Iterator[Any]:
    conn = psycopg2.connect(dsn)
    conn.autocommit = True
    try:
        yield conn
    finally:
        conn.close()


@contextlib.contextmanager
def _sqlalchemy_autocommit_session(dsn: str) -> Iterator[Any]:
    engine = sqlalchemy.create_engine(_sqlalchemy_url(dsn, "psycopg2"))
    try:
        autocommit = engine.execution_options(isolation_level="AUTOCOMMIT")
        with orm.Session(autocommit) as session, session.begin():
            yield session
    finally:
        engine.dispose()


@contextlib.contextmanager
def _django_outside_atomic(dsn: str) -> Iterator[Any]:
    _configure_django(dsn)
    try:
        yield django_connection
    finally:
        django_connection.close()


NO_TRANSACTION_SYNC: dict[str, SyncOpener] = {
    "psycopg-autocommit": _psycopg_autocommit,
    "psycopg2-autocommit": _psycopg2_autocommit,
    "sqlalchemy-psycopg2-autocommit-session": _sqlalchemy_autocommit_session,
    "django-outside-atomic": _django_outside_atomic,
}


@pytest.mark.parametrize(
    "opener", list(NO_TRANSACTION_SYNC.values()), ids=list(NO_TRANSACTION_SYNC)
)
def test_a_sync_session_without_a_transaction_is_refused_and_writes_nothing(
    opener: SyncOpener, outbox_dsn: str, outbox_schema: str
) -> None:
    repo = repository.OutboxRepository(None, outbox_schema)
    message = _message()
    with opener(outbox_dsn) as session:
        with pytest.raises(errors.NotInTransactionError, match="no open transaction"):
            repo.enqueue_sync(session, message)
        with pytest.raises(errors.NotInTransactionError):
            repo.enqueue_many_sync(session, [_message(1), _message(2)])
    _check_nothing([message], *_read_sync(outbox_dsn, outbox_schema, [message]))


def test_django_outside_atomic_names_the_fix(outbox_dsn: str, outbox_schema: str) -> None:
    repo = repository.OutboxRepository(None, outbox_schema)
    with (
        _django_outside_atomic(outbox_dsn) as session,
        pytest.raises(errors.NotInTransactionError, match=r"transaction\.atomic\(\)"),
    ):
        repo.enqueue_sync(session, _message())


def test_django_savepoint_rollback_drops_only_the_inner_event(
    outbox_dsn: str, outbox_schema: str
) -> None:
    repo = repository.OutboxRepository(None, outbox_schema)
    kept, dropped = _message(1), _message(2)
    with _django_connection(outbox_dsn) as session:
        repo.enqueue_sync(session, kept)
        with pytest.raises(_Rollback), django_transaction.atomic():
            repo.enqueue_sync(session, dropped)
            raise _Rollback
    count, stored = _read_sync(outbox_dsn, outbox_schema, [kept, dropped])
    assert count == 1
    assert stored[0] is not None and stored[0].event_id == kept.event_id
    assert stored[1] is None


def test_django_with_autocommit_turned_off_joins_the_manual_transaction(
    outbox_dsn: str, outbox_schema: str
) -> None:
    repo = repository.OutboxRepository(None, outbox_schema)
    rolled_back, committed = _message(1), _message(2)
    _configure_django(outbox_dsn)
    django_transaction.set_autocommit(False)
    try:
        repo.enqueue_sync(django_connection, rolled_back)
        django_transaction.rollback()
        repo.enqueue_sync(django_connection, committed)
        django_transaction.commit()
    finally:
        django_transaction.set_autocommit(True)
        django_connection.close()
    count, stored = _read_sync(outbox_dsn, outbox_schema, [rolled_back, committed])
    assert count == 1
    assert stored[0] is None
    assert stored[1] is not None


def test_a_django_database_that_is_not_postgresql_is_refused(
    outbox_dsn: str, outbox_schema: str
) -> None:
    _configure_django(outbox_dsn)
    if "sqlite" not in settings.DATABASES:
        pytest.skip("Django was configured elsewhere, without this module's sqlite alias")
    repo = repository.OutboxRepository(None, outbox_schema)
    with pytest.raises(errors.UnsupportedSessionError, match="needs PostgreSQL"):
        repo.enqueue_sync(django_connections["sqlite"], _message())


def test_sync_server_side_cursors_are_refused(outbox_dsn: str, outbox_schema: str) -> None:
    repo = repository.OutboxRepository(None, outbox_schema)
    message = _message()
    with (
        psycopg.connect(outbox_dsn) as conn,
        conn.cursor(name="named") as cursor,
        pytest.raises(errors.UnsupportedSessionError, match="server-side"),
    ):
        repo.enqueue_sync(cursor, message)
    with (
        _psycopg2_connection(outbox_dsn) as conn2,
        conn2.cursor(name="named") as cursor2,
        pytest.raises(errors.UnsupportedSessionError, match="server-side"),
    ):
        repo.enqueue_sync(cursor2, message)
    _check_nothing([message], *_read_sync(outbox_dsn, outbox_schema, [message]))
