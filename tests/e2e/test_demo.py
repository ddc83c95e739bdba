"""``make demo`` (``python -m integrations.demo``), smaller, on each emulator in turn."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from integrations import harness
from outbox_di.testing.pubsub import EmulatorEndpoint

pytestmark = pytest.mark.e2e


@pytest.mark.timeout(240)
def test_demo_publishes_and_processes_every_event_once(
    outbox_dsn: str, pubsub_emulator: EmulatorEndpoint
) -> None:
    env = {key: value for key, value in os.environ.items() if not key.startswith("OUTBOX_")}
    env.update({"OUTBOX_TEST_DSN": outbox_dsn, "PUBSUB_EMULATOR_HOST": pubsub_emulator.host})
    result = subprocess.run(
        [sys.executable, "-m", "integrations.demo", "--requests", "300", "--concurrency", "8"],
        cwd=harness.EXAMPLES.parent,
        env=env,
        capture_output=True,
        text=True,
        timeout=200,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "Every event was published and processed exactly once." in out
    # 300 requests, every 100th a duplicate sku: 297 items, 3 refused.
    assert "297 created, 3 refused (duplicate sku), 0 failed" in out
    assert "297 billed by 'billing', 297 received back" in out
    assert f"configured emulator at {pubsub_emulator.host}" in out
