"""The aiohttp catalog example, started for real: ``web.run_app`` in a subprocess, a real HTTP
client, PostgreSQL and a Pub/Sub emulator (both, where Google's is installed)."""

from __future__ import annotations

import sys

import pytest

from outbox_di.testing.pubsub import EmulatorEndpoint
from tests.e2e import support

pytestmark = pytest.mark.e2e


@pytest.mark.timeout(180)
async def test_catalog_aiohttp(
    outbox_dsn: str, outbox_schema_name: str, pubsub_emulator: EmulatorEndpoint
) -> None:
    await support.check_catalog(
        [sys.executable, "aiohttp_catalog.py", "--port", "{port}"],
        support.EXAMPLES / "catalog_aiohttp",
        outbox_dsn,
        outbox_schema_name,
        pubsub_emulator.host,
    )
