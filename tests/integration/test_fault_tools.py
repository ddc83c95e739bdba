"""The test kit's fault tools against real servers: FaultProxy (cut, hold, restore) in front of
PostgreSQL, and a PrivateCluster crashed with ``pg_ctl stop -m immediate`` and started again."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator

import psycopg2
import pytest

from outbox_di.testing.cluster import PrivateCluster
from outbox_di.testing.proxy import FaultProxy

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def cluster() -> Iterator[PrivateCluster]:
    with PrivateCluster(settings={"max_connections": "20"}) as private:
        yield private


def _dsn(port: int) -> str:
    return f"postgresql://postgres@127.0.0.1:{port}/postgres"


def _one(conn: object, statement: str) -> object:
    with conn.cursor() as cursor:  # type: ignore[attr-defined]
        cursor.execute(statement)
        return cursor.fetchone()[0]


def test_a_proxy_forwards_holds_and_cuts(cluster: PrivateCluster) -> None:
    with FaultProxy("127.0.0.1", cluster.port) as proxy:
        conn = psycopg2.connect(_dsn(proxy.port), connect_timeout=3)
        conn.autocommit = True
        assert _one(conn, "SELECT 1") == 1

        proxy.hold()
        started = time.monotonic()
        with pytest.raises(psycopg2.OperationalError, match="timeout"):
            psycopg2.connect(_dsn(proxy.port), connect_timeout=2)  # accepted, never answered
        assert time.monotonic() - started >= 1.5
        proxy.restore()
        assert _one(conn, "SELECT 2") == 2  # a connection held open carries on

        proxy.cut()
        with pytest.raises(psycopg2.OperationalError):
            _one(conn, "SELECT 3")
        with pytest.raises(psycopg2.OperationalError):
            psycopg2.connect(_dsn(proxy.port), connect_timeout=2)
        proxy.restore()
        with contextlib.closing(psycopg2.connect(_dsn(proxy.port), connect_timeout=3)) as again:
            assert _one(again, "SELECT 4") == 4
        assert proxy.connections == 3  # the refused one is not counted


def test_bytes_sent_during_a_hold_arrive_after_it(cluster: PrivateCluster) -> None:
    with FaultProxy("127.0.0.1", cluster.port) as proxy:
        conn = psycopg2.connect(_dsn(proxy.port), connect_timeout=3)
        conn.autocommit = True
        proxy.hold()
        released = time.monotonic() + 1.0

        def restore_later() -> None:
            time.sleep(1.0)
            proxy.restore()

        threading.Thread(target=restore_later).start()
        assert _one(conn, "SELECT 5") == 5  # waits out the hold, then answers
        assert time.monotonic() >= released - 0.05
        conn.close()


def test_a_crashed_cluster_recovers_what_was_committed(cluster: PrivateCluster) -> None:
    with contextlib.closing(psycopg2.connect(cluster.dsn)) as conn, conn.cursor() as cursor:
        conn.autocommit = True
        cursor.execute("CREATE TABLE crash_probe (n int)")
        cursor.execute("INSERT INTO crash_probe VALUES (1)")
    cluster.crash()
    assert not cluster.running()
    with pytest.raises(psycopg2.OperationalError):
        psycopg2.connect(cluster.dsn, connect_timeout=2)
    cluster.start()
    with contextlib.closing(psycopg2.connect(cluster.dsn)) as conn:
        assert _one(conn, "SELECT count(*) FROM crash_probe") == 1
    with open(cluster.log, encoding="utf-8") as log:
        assert "not properly shut down; automatic recovery in progress" in log.read()
