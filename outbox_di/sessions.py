"""Adapters that let ``enqueue`` join the caller's own transaction, whatever the driver.

This is the only module that knows driver types, and it imports none of them: an adapter is
chosen from the session's class (top-level package and class name, walking the MRO so that
subclasses match), so a service that uses asyncpg never imports psycopg and vice versa.

Supported sessions:

* aiopg ``Connection`` or ``Cursor`` (inside an explicit ``BEGIN``: aiopg is always autocommit);
* asyncpg ``Connection`` or pool connection (inside ``conn.transaction()``);
* psycopg 3 ``AsyncConnection`` / ``AsyncCursor`` (client-side or raw; and the sync twins, for
  ``enqueue_sync``); server-side (named) cursors are refused, they only run a SELECT;
* SQLAlchemy ``AsyncConnection`` / ``AsyncSession`` (and sync ``Connection`` / ``Session``);
* Django's connection (``django.db.connection`` or ``connections[alias]``), sync, inside
  ``transaction.atomic()``;
* psycopg2 ``connection`` / ``cursor`` (sync).

A session with no open transaction is refused (:class:`~outbox_di.errors.NotInTransactionError`)
rather than silently committing the event on its own, apart from the change it announces.
"""

from __future__ import annotations

import enum
import functools
from collections.abc import Mapping
from typing import Any

from outbox_di import errors, schema

SUPPORTED_ASYNC = (
    "aiopg Connection/Cursor, asyncpg Connection (or pool connection), psycopg "
    "AsyncConnection/AsyncCursor, SQLAlchemy AsyncConnection/AsyncSession"
)
SUPPORTED_SYNC = (
    "Django connection (inside transaction.atomic()), psycopg Connection/Cursor, psycopg2 "
    "connection/cursor, SQLAlchemy Connection/Session"
)


class Kind(enum.Enum):
    """How a session executes a query."""

    AIOPG_CONNECTION = "aiopg Connection"
    AIOPG_CURSOR = "aiopg Cursor"
    ASYNCPG = "asyncpg Connection"
    PSYCOPG_ASYNC_CONNECTION = "psycopg AsyncConnection"
    PSYCOPG_ASYNC_CURSOR = "psycopg AsyncCursor"
    SQLALCHEMY_ASYNC_CONNECTION = "SQLAlchemy AsyncConnection"
    SQLALCHEMY_ASYNC_SESSION = "SQLAlchemy AsyncSession"
    DJANGO = "Django connection"
    PSYCOPG_CONNECTION = "psycopg Connection"
    PSYCOPG_CURSOR = "psycopg Cursor"
    PSYCOPG2_CONNECTION = "psycopg2 connection"
    PSYCOPG2_CURSOR = "psycopg2 cursor"
    SQLALCHEMY_CONNECTION = "SQLAlchemy Connection"
    SQLALCHEMY_SESSION = "SQLAlchemy Session"

    @property
    def is_async(self) -> bool:
        """Whether the session is awaited (``enqueue``) rather than called (``enqueue_sync``)."""
        return self in _ASYNC_KINDS


_ASYNC_KINDS = frozenset(
    {
        Kind.AIOPG_CONNECTION,
        Kind.AIOPG_CURSOR,
        Kind.ASYNCPG,
        Kind.PSYCOPG_ASYNC_CONNECTION,
        Kind.PSYCOPG_ASYNC_CURSOR,
        Kind.SQLALCHEMY_ASYNC_CONNECTION,
        Kind.SQLALCHEMY_ASYNC_SESSION,
    }
)

# (top-level package, class name) -> kind. Matching on names keeps drivers unimported.
_BY_NAME: Mapping[tuple[str, str], Kind] = {
    ("aiopg", "Connection"): Kind.AIOPG_CONNECTION,
    ("aiopg", "Cursor"): Kind.AIOPG_CURSOR,
    ("asyncpg", "Connection"): Kind.ASYNCPG,
    ("asyncpg", "PoolConnectionProxy"): Kind.ASYNCPG,
    ("psycopg", "AsyncConnection"): Kind.PSYCOPG_ASYNC_CONNECTION,
    ("psycopg", "AsyncCursor"): Kind.PSYCOPG_ASYNC_CURSOR,
    ("psycopg", "AsyncClientCursor"): Kind.PSYCOPG_ASYNC_CURSOR,
    ("psycopg", "AsyncRawCursor"): Kind.PSYCOPG_ASYNC_CURSOR,
    ("sqlalchemy", "AsyncConnection"): Kind.SQLALCHEMY_ASYNC_CONNECTION,
    ("sqlalchemy", "AsyncSession"): Kind.SQLALCHEMY_ASYNC_SESSION,
    ("django", "DatabaseWrapper"): Kind.DJANGO,
    ("django", "ConnectionProxy"): Kind.DJANGO,
    ("psycopg", "Connection"): Kind.PSYCOPG_CONNECTION,
    ("psycopg", "Cursor"): Kind.PSYCOPG_CURSOR,
    ("psycopg", "ClientCursor"): Kind.PSYCOPG_CURSOR,
    ("psycopg", "RawCursor"): Kind.PSYCOPG_CURSOR,
    ("psycopg2", "connection"): Kind.PSYCOPG2_CONNECTION,
    ("psycopg2", "cursor"): Kind.PSYCOPG2_CURSOR,
    ("sqlalchemy", "Connection"): Kind.SQLALCHEMY_CONNECTION,
    ("sqlalchemy", "Session"): Kind.SQLALCHEMY_SESSION,
}


# Classes that derive from a supported one but cannot run an INSERT. They come before their
# supported base in the MRO, so the walk meets them first.
_REFUSED_BY_NAME: Mapping[tuple[str, str], str] = {
    ("psycopg", "ServerCursorMixin"): (
        "a psycopg server-side (named) cursor can only run one SELECT; pass its connection or a "
        "client-side cursor"
    ),
}

_RAW_CURSOR = ("psycopg", "RawCursorMixin")
"""psycopg's raw cursors take ``$1`` placeholders and a sequence, never ``%(name)s``."""


def _class_names(cls: type[Any]) -> list[tuple[str, str]]:
    # (top-level package, class name) for every class of the MRO, most derived first.
    return [(klass.__module__.partition(".")[0], klass.__name__) for klass in cls.__mro__]


def _kind_of_class(cls: type[Any]) -> Kind | None:
    # Walk the MRO so subclasses (custom cursor classes, a project's Session subclass) match.
    # The exact class is the first entry, so the common case is one dictionary lookup.
    for name in _class_names(cls):
        refused = _REFUSED_BY_NAME.get(name)
        if refused is not None:
            raise errors.UnsupportedSessionError(refused)
        kind = _BY_NAME.get(name)
        if kind is not None:
            return kind
    return None


def kind_of(session: object) -> Kind:
    """The kind of ``session``; ``UnsupportedSessionError`` naming the supported types if none."""
    kind = _kind_of_class(type(session))
    if kind is None:
        raise errors.UnsupportedSessionError(
            f"cannot enqueue through a {type(session).__module__}.{type(session).__qualname__}; "
            f"enqueue() takes one of: {SUPPORTED_ASYNC}; enqueue_sync() takes one of: "
            f"{SUPPORTED_SYNC}"
        )
    return kind


def _not_in_transaction(kind: Kind, how: str) -> errors.NotInTransactionError:
    return errors.NotInTransactionError(
        f"the {kind.value} passed to enqueue has no open transaction, so the event would be "
        f"committed apart from your change; {how}"
    )


# libpq / psycopg transaction status codes (PQTransactionStatus).
_TRANSACTION_IDLE = 0


def _check_psycopg2(raw_connection: Any, kind: Kind) -> None:
    # An autocommit psycopg2 connection (aiopg's always is) commits each statement unless the
    # caller has sent BEGIN; without autocommit psycopg2 opens a transaction by itself.
    if raw_connection.autocommit and raw_connection.info.transaction_status == _TRANSACTION_IDLE:
        raise _not_in_transaction(kind, "run it between BEGIN and COMMIT")


def _check_psycopg3(connection: Any, kind: Kind) -> None:
    # Without autocommit psycopg 3 opens a transaction on the first statement, which the caller
    # then commits or rolls back: that joins the caller's unit of work. With autocommit it
    # would commit the insert on its own.
    if connection.autocommit and connection.info.transaction_status == _TRANSACTION_IDLE:
        how = (
            "run it inside 'async with conn.transaction():'"
            if kind.is_async
            else "run it inside 'with conn.transaction():'"
        )
        raise _not_in_transaction(kind, f"{how} or use a connection with autocommit=False")


def _psycopg_statement(
    cursor: Any, query: schema.Query, values: Mapping[str, object]
) -> tuple[str, Any]:
    # The statement and parameters in the style this psycopg 3 cursor takes.
    if _RAW_CURSOR in _class_names(type(cursor)):
        return query.numeric_sql, query.positional(values)
    return query.sql, values


def _check_psycopg2_cursor(cursor: Any, kind: Kind) -> None:
    if cursor.name is not None:
        raise errors.UnsupportedSessionError(
            f"a named (server-side) {kind.value} can only run one SELECT; pass its connection "
            "or an unnamed cursor"
        )
    _check_psycopg2(cursor.connection, kind)


def _check_sqlalchemy(connection: Any, kind: Kind) -> None:
    # SQLAlchemy begins a transaction by itself on the first statement ("autobegin"), which the
    # caller commits or rolls back, except with isolation_level="AUTOCOMMIT" (on the engine or
    # the connection): then the DBAPI connection commits every statement on its own, even
    # inside begin(). psycopg2, psycopg and SQLAlchemy's asyncpg and psycopg async adapters all
    # expose that state as ``autocommit``, however it was set; a DBAPI without the attribute is
    # trusted.
    dbapi_connection = connection.connection.dbapi_connection
    if getattr(dbapi_connection, "autocommit", False):
        raise _not_in_transaction(
            kind,
            "its isolation_level is AUTOCOMMIT, which commits every statement on its own; use "
            "a connection or session without AUTOCOMMIT",
        )


async def execute(session: object, query: schema.Query, values: Mapping[str, object]) -> int:
    """Run ``query`` on ``session`` inside the caller's transaction (async sessions).

    Returns the number of rows the statement changed.
    """
    kind = kind_of(session)
    s: Any = session
    if kind is Kind.AIOPG_CONNECTION:
        _check_psycopg2(s.raw, kind)
        async with s.cursor() as cursor:
            await cursor.execute(query.sql, values)
            return int(cursor.rowcount)
    if kind is Kind.AIOPG_CURSOR:
        _check_psycopg2(s.connection.raw, kind)
        await s.execute(query.sql, values)
        return int(s.rowcount)
    if kind is Kind.ASYNCPG:
        if not s.is_in_transaction():
            raise _not_in_transaction(kind, "run it inside 'async with conn.transaction():'")
        # asyncpg returns the command tag, not a cursor: "INSERT 0 1", "UPDATE 3".
        status = await s.execute(query.numeric_sql, *query.positional(values))
        return _rowcount_from_status(status)
    if kind is Kind.PSYCOPG_ASYNC_CONNECTION:
        _check_psycopg3(s, kind)
        # The connection's cursor_factory decides the cursor class (possibly a raw cursor).
        async with s.cursor() as cursor:
            await cursor.execute(*_psycopg_statement(cursor, query, values))
            return int(cursor.rowcount)
    if kind is Kind.PSYCOPG_ASYNC_CURSOR:
        _check_psycopg3(s.connection, kind)
        await s.execute(*_psycopg_statement(s, query, values))
        return int(s.rowcount)
    if kind is Kind.SQLALCHEMY_ASYNC_CONNECTION:
        # An AsyncConnection that was never started has no sync_connection: its execute()
        # raises SQLAlchemy's own clear error, so leave that case to it.
        if s.sync_connection is not None:
            _check_sqlalchemy(s.sync_connection, kind)
        return _sqlalchemy_rowcount(await s.execute(_text(query), values))
    if kind is Kind.SQLALCHEMY_ASYNC_SESSION:
        connection = await s.connection()
        _check_sqlalchemy(connection.sync_connection, kind)
        return _sqlalchemy_rowcount(await s.execute(_text(query), values))
    raise errors.UnsupportedSessionError(
        f"a {kind.value} is synchronous: call enqueue_sync() with it (enqueue() takes "
        f"{SUPPORTED_ASYNC})"
    )


def execute_sync(session: object, query: schema.Query, values: Mapping[str, object]) -> int:
    """Run ``query`` on ``session`` inside the caller's transaction (sync sessions).

    Returns the number of rows the statement changed.
    """
    kind = kind_of(session)
    s: Any = session
    if kind is Kind.DJANGO:
        if getattr(s, "vendor", None) != "postgresql":
            raise errors.UnsupportedSessionError(
                f"Django database {getattr(s, 'alias', '?')!r} uses "
                f"{getattr(s, 'vendor', '?')!r}; outbox_di needs PostgreSQL"
            )
        # Django runs in autocommit mode outside atomic(); inside it, or after
        # set_autocommit(False), a transaction is open and Django commits or rolls it back.
        if s.get_autocommit() and not s.in_atomic_block:
            raise _not_in_transaction(kind, "wrap the change in 'with transaction.atomic():'")
        with s.cursor() as cursor:
            cursor.execute(query.sql, values)
            return int(cursor.rowcount)
    if kind is Kind.PSYCOPG_CONNECTION:
        _check_psycopg3(s, kind)
        with s.cursor() as cursor:
            cursor.execute(*_psycopg_statement(cursor, query, values))
            return int(cursor.rowcount)
    if kind is Kind.PSYCOPG_CURSOR:
        _check_psycopg3(s.connection, kind)
        s.execute(*_psycopg_statement(s, query, values))
        return int(s.rowcount)
    if kind is Kind.PSYCOPG2_CONNECTION:
        _check_psycopg2(s, kind)
        with s.cursor() as cursor:
            cursor.execute(query.sql, values)
            return int(cursor.rowcount)
    if kind is Kind.PSYCOPG2_CURSOR:
        _check_psycopg2_cursor(s, kind)
        s.execute(query.sql, values)
        return int(s.rowcount)
    if kind is Kind.SQLALCHEMY_CONNECTION:
        _check_sqlalchemy(s, kind)
        return _sqlalchemy_rowcount(s.execute(_text(query), values))
    if kind is Kind.SQLALCHEMY_SESSION:
        _check_sqlalchemy(s.connection(), kind)
        return _sqlalchemy_rowcount(s.execute(_text(query), values))
    raise errors.UnsupportedSessionError(
        f"a {kind.value} is asynchronous: await enqueue() with it (enqueue_sync() takes "
        f"{SUPPORTED_SYNC})"
    )


def _rowcount_from_status(status: str) -> int:
    # asyncpg returns the command tag, e.g. "INSERT 0 100" or "UPDATE 3".
    last = status.rpartition(" ")[2]
    return int(last) if last.isdigit() else 0


def _sqlalchemy_rowcount(result: Any) -> int:
    # Read the count, then close the result so rows a RETURNING clause produced do not linger
    # on the caller's connection.
    rowcount = int(result.rowcount)
    result.close()
    return rowcount


@functools.lru_cache(maxsize=128)
def _text(query: schema.Query) -> Any:
    # One TextClause per query, so SQLAlchemy's compiled cache hits on every later call.
    import sqlalchemy

    return sqlalchemy.text(query.named_sql)
