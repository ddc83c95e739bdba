"""The FastAPI catalog example, started for real: uvicorn in a subprocess, a real HTTP client,
PostgreSQL and a Pub/Sub emulator (both, where Google's is installed)."""

from __future__ import annotations

import signal
import sys

import pytest

from outbox_di.testing.pubsub import EmulatorEndpoint
from tests.e2e import support

pytestmark = pytest.mark.e2e


@pytest.mark.timeout(180)
async def test_catalog_fastapi(
    outbox_dsn: str, outbox_schema_name: str, pubsub_emulator: EmulatorEndpoint
) -> None:
    service = await support.check_catalog(
        [sys.executable, "-m", "uvicorn", "fastapi_catalog:app", "--port", "{port}"],
        support.EXAMPLES / "catalog_fastapi",
        outbox_dsn,
        outbox_schema_name,
        pubsub_emulator.host,
        # uvicorn re-raises the signal once its graceful shutdown is complete.
        exit_codes=(0, -signal.SIGTERM),
    )
    assert "Application shutdown complete" in service.output
