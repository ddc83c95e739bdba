"""pytest plugin for services that use outbox_di: ``pytest -p outbox_di.testing``.

Fixtures:

* ``outbox_postgres`` (session): the :class:`~outbox_di.testing.postgres.PostgresServer` in use;
* ``outbox_dsn`` (session): its DSN;
* ``outbox_schema_name`` (function): a fresh, unmigrated schema name, dropped afterwards;
* ``outbox_schema`` (function): a fresh schema with the DDL applied, dropped afterwards;
* ``outbox_pool`` (function, async): an aiopg pool on ``outbox_dsn``;
* ``outbox_repository`` / ``inbox_repository`` (function): repositories on that pool and schema;
* ``pubsub_emulator`` (session, parametrized): a Pub/Sub emulator endpoint, once per available
  emulator (``PUBSUB_EMULATOR_HOST``; else Google's emulator and the in-process one);
  ``pubsub_google_emulator`` / ``pubsub_inprocess_emulator`` for one specifically.

Session fixtures are synchronous and yield plain values; pools are created per test, inside the
test's own event loop. The async fixtures are pytest-asyncio's, so they work in its default
strict mode (mark async tests ``@pytest.mark.asyncio``) and with ``asyncio_mode = "auto"``.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import pytest_asyncio

from outbox_di import database, repository
from outbox_di.testing import postgres
from outbox_di.testing.pubsub import (
    pubsub_emulator,
    pubsub_google_emulator,
    pubsub_inprocess_emulator,
)

__all__ = [
    "inbox_repository",
    "outbox_dsn",
    "outbox_pool",
    "outbox_postgres",
    "outbox_repository",
    "outbox_schema",
    "outbox_schema_name",
    "pubsub_emulator",
    "pubsub_google_emulator",
    "pubsub_inprocess_emulator",
]


@pytest.fixture(scope="session")
def outbox_postgres() -> Iterator[postgres.PostgresServer]:
    with postgres.postgres_server() as server:
        yield server


@pytest.fixture(scope="session")
def outbox_dsn(outbox_postgres: postgres.PostgresServer) -> str:
    return outbox_postgres.dsn


@pytest.fixture
def outbox_schema_name(outbox_dsn: str) -> Iterator[str]:
    """A fresh schema name, not migrated; whatever is created under it is dropped afterwards."""
    name = f"test_{secrets.token_hex(6)}"
    try:
        yield name
    finally:
        postgres.drop_schema(outbox_dsn, name)


@pytest.fixture
def outbox_schema(outbox_dsn: str, outbox_schema_name: str) -> str:
    """A fresh schema with the DDL applied (dropped afterwards)."""
    with database.connect(outbox_dsn) as conn:
        database.migrate(conn, outbox_schema_name)
    return outbox_schema_name


@pytest_asyncio.fixture
async def outbox_pool(outbox_dsn: str) -> AsyncIterator[Any]:
    async with database.open_pool(outbox_dsn, min_size=1, max_size=10) as pool:
        yield pool


@pytest.fixture
def outbox_repository(outbox_pool: Any, outbox_schema: str) -> repository.OutboxRepository:
    return repository.OutboxRepository(outbox_pool, outbox_schema)


@pytest.fixture
def inbox_repository(outbox_pool: Any, outbox_schema: str) -> repository.InboxRepository:
    return repository.InboxRepository(outbox_pool, outbox_schema)
