"""The orders service's test set-up (outbox_di's plugin is loaded by pytest.ini's
``-p outbox_di.testing``): the service's table, its topics and subscriptions."""

from __future__ import annotations

from collections.abc import Iterator

import psycopg2
import pytest
from broker import Broker

from outbox_di.testing.pubsub import EmulatorEndpoint, emulator_env


@pytest.fixture
def orders_schema(outbox_dsn: str, outbox_schema: str) -> str:
    """The outbox schema of the test, with the service's own table in it."""
    with psycopg2.connect(outbox_dsn) as conn, conn.cursor() as cursor:
        cursor.execute(
            f'CREATE TABLE "{outbox_schema}".orders '
            "(id text PRIMARY KEY, amount integer NOT NULL, status text NOT NULL)"
        )
    conn.close()
    return outbox_schema


@pytest.fixture
def broker(pubsub_emulator: EmulatorEndpoint) -> Iterator[Broker]:
    with emulator_env(pubsub_emulator.host):
        made = Broker(pubsub_emulator)
        made.create()
        try:
            yield made
        finally:
            made.delete()
