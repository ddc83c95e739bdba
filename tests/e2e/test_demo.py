"""``make demo`` (``python -m integrations.demo``), smaller: on each Pub/Sub emulator in turn,
on each other broker, and with the workers in a process beside the web server."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from integrations import harness
from outbox_di import config
from outbox_di.testing import brokers as brokers_testing
from outbox_di.testing.pubsub import EmulatorEndpoint

pytestmark = pytest.mark.e2e


def _demo(
    outbox_dsn: str, *arguments: str, requests: int = 200, pubsub_host: str | None = None
) -> str:
    env = {key: value for key, value in os.environ.items() if not key.startswith("OUTBOX_")}
    env.update({"OUTBOX_TEST_DSN": outbox_dsn})
    if pubsub_host is not None:
        env["PUBSUB_EMULATOR_HOST"] = pubsub_host
    command = [sys.executable, "-m", "integrations.demo", "--requests", str(requests), *arguments]
    result = subprocess.run(
        command,
        cwd=harness.EXAMPLES.parent,
        env=env,
        capture_output=True,
        text=True,
        timeout=200,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "Every event was published and processed exactly once." in out
    # Every 100th request a duplicate sku: 300 requests make 297 items and 3 refused.
    refused = requests // 100
    created = requests - refused
    assert f"{created} created, {refused} refused (duplicate sku), 0 failed" in out
    assert f"{created} billed by 'billing', {created} received back" in out
    return out


@pytest.mark.timeout(240)
@pytest.mark.parametrize("broker", ["rabbitmq", "nats", "redis"])
def test_demo_runs_on_each_broker(outbox_dsn: str, broker: str) -> None:
    """``make demo BROKER=...``: the same two services through another broker."""
    settings = config.OutboxConfig.from_mapping(
        {"schema": "demo", "dsn": outbox_dsn, "broker": broker, "publisher": {"topic": "demo"}}
    )
    reason = brokers_testing.unavailable(settings)
    if reason:
        pytest.skip(f"{broker}: {reason}")
    out = _demo(outbox_dsn, "--broker", broker)
    assert f"broker:     {broker} (" in out


@pytest.mark.timeout(240)
def test_demo_with_the_workers_in_a_process_beside_the_server(
    outbox_dsn: str, pubsub_inprocess_emulator: EmulatorEndpoint
) -> None:
    out = _demo(
        outbox_dsn,
        "--workers",
        "process",
        "--concurrency",
        "8",
        pubsub_host=pubsub_inprocess_emulator.host,
    )
    assert "its relay and inbox in an outbox-di worker process beside it" in out


@pytest.mark.timeout(240)
def test_demo_publishes_and_processes_every_event_once(
    outbox_dsn: str, pubsub_emulator: EmulatorEndpoint
) -> None:
    out = _demo(outbox_dsn, "--concurrency", "8", requests=300, pubsub_host=pubsub_emulator.host)
    assert f"configured emulator at {pubsub_emulator.host}" in out
