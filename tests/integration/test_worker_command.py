"""``outbox-di worker``: runs the publisher alone from settings, drains on SIGTERM."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from outbox_di import models, repository
from outbox_di.testing.pubsub import EmulatorEndpoint, async_publisher_client

pytestmark = pytest.mark.integration

PROJECT = "worker-test"


async def test_worker_relays_and_stops_on_sigterm(
    outbox_pool: Any,
    outbox_repository: repository.OutboxRepository,
    outbox_dsn: str,
    pubsub_inprocess_emulator: EmulatorEndpoint,
    tmp_path: Path,
) -> None:
    host = pubsub_inprocess_emulator.host
    topic = f"worker-{outbox_repository.schema}"
    async with async_publisher_client(host) as client:
        await client.create_topic(name=f"projects/{PROJECT}/topics/{topic}")
    (tmp_path / "settings.toml").write_text(
        "[outbox]\n"
        f'schema = "{outbox_repository.schema}"\n'
        "[outbox.publisher]\n"
        'tick_interval = "100ms"\n'
        'shutdown_timeout = "2s"\n'
    )
    env = {
        **os.environ,
        "OUTBOX_DSN": outbox_dsn,
        "OUTBOX_PUBLISHER__TOPIC": topic,
        "OUTBOX_PUBSUB__PROJECT": PROJECT,
        "OUTBOX_PUBSUB__EMULATOR_HOST": host,
    }
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "outbox_di.cli",
        "worker",
        cwd=tmp_path,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        messages = [models.Message("item", str(n), "item.created", {"n": n}) for n in range(25)]
        async with outbox_pool.acquire() as conn, conn.cursor() as cursor, cursor.begin():
            await outbox_repository.enqueue_many(cursor, messages)
        deadline = time.monotonic() + 30
        while await outbox_repository.count_pending() and time.monotonic() < deadline:
            assert process.returncode is None, await process.communicate()
            await asyncio.sleep(0.1)
        assert await outbox_repository.count_pending() == 0
        emulator = pubsub_inprocess_emulator.emulator
        assert emulator is not None
        assert emulator.published_count >= 25
        process.send_signal(signal.SIGTERM)
        started = time.monotonic()
        out_bytes, err_bytes = await asyncio.wait_for(process.communicate(), 10)
        assert time.monotonic() - started < 5
    finally:
        if process.returncode is None:
            process.kill()
            await process.communicate()
    out, err = out_bytes.decode(), err_bytes.decode()
    assert process.returncode == 0, err
    assert f"schema {outbox_repository.schema!r}" in out
    assert "stopped" in out


def test_worker_with_bad_settings_exits_with_the_key_path(tmp_path: Path) -> None:
    (tmp_path / "settings.toml").write_text(
        '[outbox]\nschema = "ok"\ndsn = "postgresql://x/y"\n[outbox.publisher]\nbatchsize = 3\n'
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("OUTBOX_")}
    result = subprocess.run(
        [sys.executable, "-m", "outbox_di.cli", "worker"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "publisher.batchsize" in result.stderr
    assert "did you mean 'batch_size'" in result.stderr
