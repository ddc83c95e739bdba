"""Session adapters without a database: refusals, the command-tag parser, driver-free import.

Only objects that really are what they claim are used here: plain Python objects, a sqlite3
connection, and SQLAlchemy sessions (constructible without a server). Driver connections that
need a server are covered by tests/integration/test_sessions.py.
"""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from collections.abc import Iterator

import pytest
from sqlalchemy import orm
from sqlalchemy.ext import asyncio as sa_asyncio

from outbox_di import errors, models, repository, schema, sessions

DRIVER_NAMES = ("aiopg", "asyncpg", "psycopg", "SQLAlchemy", "Django")


@pytest.fixture
def sqlite_connection() -> Iterator[sqlite3.Connection]:
    conn = sqlite3.connect(":memory:")
    try:
        yield conn
    finally:
        conn.close()


@pytest.fixture
def query() -> schema.Query:
    return schema.Queries("svc")["outbox_insert"]


@pytest.fixture
def repo() -> repository.OutboxRepository:
    return repository.OutboxRepository(None, "svc")


def _unsupported(request: pytest.FixtureRequest, name: str) -> object:
    if name == "sqlite3":
        return request.getfixturevalue("sqlite_connection")
    return {"object": object(), "dict": {}, "str": "postgresql://", "none": None}[name]


UNSUPPORTED = ["object", "dict", "str", "none", "sqlite3"]


@pytest.mark.parametrize("name", UNSUPPORTED)
def test_an_unsupported_object_is_a_type_error_naming_every_supported_driver(
    request: pytest.FixtureRequest, name: str
) -> None:
    session = _unsupported(request, name)
    with pytest.raises(errors.UnsupportedSessionError) as info:
        sessions.kind_of(session)
    assert isinstance(info.value, TypeError)
    assert isinstance(info.value, errors.OutboxError)
    message = str(info.value)
    for driver in DRIVER_NAMES:
        assert driver in message
    assert type(session).__qualname__ in message
    assert "enqueue()" in message and "enqueue_sync()" in message


@pytest.mark.parametrize("name", UNSUPPORTED)
async def test_execute_refuses_an_unsupported_object(
    request: pytest.FixtureRequest, name: str, query: schema.Query
) -> None:
    session = _unsupported(request, name)
    with pytest.raises(TypeError, match="asyncpg"):
        await sessions.execute(session, query, {})
    with pytest.raises(TypeError, match="Django"):
        sessions.execute_sync(session, query, {})


@pytest.mark.parametrize("name", UNSUPPORTED)
async def test_enqueue_refuses_an_unsupported_object(
    request: pytest.FixtureRequest, name: str, repo: repository.OutboxRepository
) -> None:
    session = _unsupported(request, name)
    message = models.Message("order", "o1", "order.placed", {"n": 1})
    with pytest.raises(errors.UnsupportedSessionError):
        await repo.enqueue(session, message)
    with pytest.raises(errors.UnsupportedSessionError):
        await repo.enqueue_many(session, [message])
    with pytest.raises(errors.UnsupportedSessionError):
        repo.enqueue_sync(session, message)
    with pytest.raises(errors.UnsupportedSessionError):
        repo.enqueue_many_sync(session, [message])


def test_sqlalchemy_sessions_are_recognised_without_a_server() -> None:
    assert sessions.kind_of(orm.Session()) is sessions.Kind.SQLALCHEMY_SESSION
    assert sessions.kind_of(sa_asyncio.AsyncSession()) is sessions.Kind.SQLALCHEMY_ASYNC_SESSION


def test_a_subclass_of_a_supported_class_is_recognised() -> None:
    class ProjectSession(orm.Session):
        pass

    assert sessions.kind_of(ProjectSession()) is sessions.Kind.SQLALCHEMY_SESSION


async def test_enqueue_with_a_sync_session_says_to_use_enqueue_sync(
    repo: repository.OutboxRepository,
) -> None:
    message = models.Message("order", "o1", "order.placed")
    with pytest.raises(errors.UnsupportedSessionError, match=r"call enqueue_sync\(\)"):
        await repo.enqueue(orm.Session(), message)


def test_enqueue_sync_with_an_async_session_says_to_await_enqueue(
    repo: repository.OutboxRepository,
) -> None:
    message = models.Message("order", "o1", "order.placed")
    with pytest.raises(errors.UnsupportedSessionError, match=r"await enqueue\(\)"):
        repo.enqueue_sync(sa_asyncio.AsyncSession(), message)


def test_every_kind_is_either_async_or_sync_as_its_driver_is() -> None:
    async_kinds = {kind for kind in sessions.Kind if kind.is_async}
    assert async_kinds == {
        sessions.Kind.AIOPG_CONNECTION,
        sessions.Kind.AIOPG_CURSOR,
        sessions.Kind.ASYNCPG,
        sessions.Kind.PSYCOPG_ASYNC_CONNECTION,
        sessions.Kind.PSYCOPG_ASYNC_CURSOR,
        sessions.Kind.SQLALCHEMY_ASYNC_CONNECTION,
        sessions.Kind.SQLALCHEMY_ASYNC_SESSION,
    }


@pytest.mark.parametrize(
    ("status", "rows"),
    [
        ("INSERT 0 3", 3),
        ("INSERT 0 1", 1),
        ("INSERT 0 0", 0),
        ("UPDATE 1", 1),
        ("UPDATE 0", 0),
        ("DELETE 12", 12),
        ("SELECT 2", 2),
        ("BEGIN", 0),
        ("", 0),
    ],
)
def test_rowcount_from_an_asyncpg_command_tag(status: str, rows: int) -> None:
    assert sessions._rowcount_from_status(status) == rows


def test_importing_sessions_imports_no_optional_driver() -> None:
    # A fresh interpreter: this test process has the drivers loaded already.
    code = (
        "import sys, outbox_di.sessions; "
        "print(sorted(m for m in ('asyncpg', 'psycopg', 'sqlalchemy', 'django') "
        "if m in sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert result.stdout.strip() == "[]"
