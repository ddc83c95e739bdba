"""The orders service under tests/services/orders, a service of its own built from the README
and docs alone, passes its own test suite: run as its own pytest session, with its own
pytest.ini (no asyncio_mode), its own settings.toml and Dynaconf object."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

SERVICE = Path(__file__).resolve().parents[1] / "services" / "orders"


def test_the_orders_service_suite_passes(outbox_dsn: str) -> None:
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("OUTBOX_", "PYTEST_"))
    }
    env["OUTBOX_TEST_DSN"] = outbox_dsn
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rA"],
        cwd=SERVICE,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    report = result.stdout + result.stderr
    assert result.returncode == 0, report
    # Each test of the service ran (the Pub/Sub ones once per emulator) and none was skipped.
    assert "skipped" not in report.splitlines()[-1], report
    assert report.count("PASSED") >= 4, report
