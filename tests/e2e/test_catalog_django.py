"""The Django catalog example, started for real: uvicorn (ASGI, with outbox_di's lifespan) or
``manage.py runserver --noreload`` (WSGI) in a subprocess, a real HTTP client, PostgreSQL and a
Pub/Sub emulator (both, where Google's is installed).

The example keeps its tables in the outbox's schema through Django's ``search_path``: the test
creates the empty schema, and ``manage.py migrate`` applies the outbox DDL (the migration of
``outbox_di.integrations.django``) and the catalog's tables in it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import psycopg2
import pytest
from psycopg2 import sql

from outbox_di.testing.pubsub import EmulatorEndpoint
from tests.e2e import support

pytestmark = pytest.mark.e2e

FOLDER = support.EXAMPLES / "catalog_django"
SETTINGS = {"DJANGO_SETTINGS_MODULE": "catalog_site.settings"}

SERVERS = {
    # uvicorn re-raises the signal once its graceful shutdown (the lifespan's too) is complete.
    "asgi": (
        [sys.executable, "-m", "uvicorn", "catalog_site.asgi:application", "--port", "{port}"],
        (0, -signal.SIGTERM),
    ),
    # outbox_di turns SIGTERM into a normal exit when nothing else handles it.
    "wsgi": ([sys.executable, "manage.py", "runserver", "--noreload", "{port}"], (0,)),
}


def _manage_migrate(dsn: str, schema: str) -> str:
    env = {key: value for key, value in os.environ.items() if not key.startswith("OUTBOX_")}
    env.update({"OUTBOX_DSN": dsn, "OUTBOX_SCHEMA": schema, **SETTINGS})
    result = subprocess.run(
        [sys.executable, "manage.py", "migrate"],
        cwd=FOLDER,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout + result.stderr


@pytest.mark.timeout(180)
@pytest.mark.parametrize("server", sorted(SERVERS))
async def test_catalog_django(
    server: str, outbox_dsn: str, outbox_schema_name: str, pubsub_emulator: EmulatorEndpoint
) -> None:
    with psycopg2.connect(outbox_dsn) as conn, conn.cursor() as cursor:
        cursor.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(outbox_schema_name)))
    conn.close()
    migrated = _manage_migrate(outbox_dsn, outbox_schema_name)
    assert "Applying outbox_di.0001_initial... OK" in migrated
    assert "Applying catalog.0001_initial... OK" in migrated
    assert "outbox workers" not in migrated  # a management command never starts them

    command, exit_codes = SERVERS[server]
    service = await support.check_catalog(
        command,
        FOLDER,
        outbox_dsn,
        outbox_schema_name,
        pubsub_emulator.host,
        exit_codes=exit_codes,
        extra_env=SETTINGS,
    )
    assert "outbox workers: running in thread" in service.output
    assert "outbox workers: stopped" in service.output
