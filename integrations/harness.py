"""Starting an example service for real: its environment, its process, its health.

Shared by ``make demo`` (``integrations/demo.py``) and the end-to-end tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from pathlib import Path

import aiohttp

from outbox_di.testing import pubsub as pubsub_testing

EXAMPLES = Path(__file__).resolve().parent


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def migrate(dsn: str, schema: str) -> None:
    """``outbox-di migrate``, as a deployment runs it before starting the service."""
    subprocess.run(
        [sys.executable, "-m", "outbox_di.cli", "migrate", "--dsn", dsn, "--schema", schema],
        check=True,
        capture_output=True,
        timeout=60,
    )


def pubsub_env(host: str, topic: pubsub_testing.TopicWithSubscription) -> dict[str, str]:
    """The Pub/Sub part of :func:`service_env`: the emulator at ``host`` and ``topic``."""
    return {
        "OUTBOX_BROKER": "pubsub",
        "OUTBOX_PUBSUB__PROJECT": topic.project,
        "OUTBOX_PUBSUB__EMULATOR_HOST": host,
        "OUTBOX_PUBLISHER__TOPIC": topic.name,
        "OUTBOX_INBOX__SUBSCRIPTION": topic.name,
    }


def broker_env(broker: str, sections: Mapping[str, Mapping[str, str]]) -> dict[str, str]:
    """``broker`` and its settings (``{"pubsub": {"project": ...}}``) as ``OUTBOX_*``
    variables."""
    env = {"OUTBOX_BROKER": broker}
    for section, values in sections.items():
        for key, value in values.items():
            env[f"OUTBOX_{section.upper()}__{key.upper()}"] = value
    return env


def service_env(dsn: str, schema: str, broker: Mapping[str, str]) -> dict[str, str]:
    """The example's settings as ``OUTBOX_*`` variables (they win over its settings.toml):
    ``broker`` (from :func:`pubsub_env` or :func:`broker_env`, with the topic its outbox
    relays to and the subscription its inbox reads) and short deadlines."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("OUTBOX_")}
    env.update(
        {
            "OUTBOX_DSN": dsn,
            "OUTBOX_SCHEMA": schema,
            "OUTBOX_PUBLISHER__TICK_INTERVAL": "200ms",
            "OUTBOX_PUBLISHER__SHUTDOWN_TIMEOUT": "5s",
            "OUTBOX_INBOX__SHUTDOWN_TIMEOUT": "5s",
            **broker,
        }
    )
    return env


@dataclasses.dataclass
class Service:
    """A running example service and an HTTP client for it; after the ``with`` block,
    ``stopped_in`` (seconds from SIGTERM to exit) and ``output`` (its stdout and stderr)."""

    process: asyncio.subprocess.Process
    client: aiohttp.ClientSession
    stopped_in: float | None = None
    output: str = ""


@contextlib.asynccontextmanager
async def run_service(
    command: Sequence[str], cwd: Path, env: Mapping[str, str], port: int, startup: float = 30.0
) -> AsyncIterator[Service]:
    """Start ``command`` (which serves on ``port``) and wait for ``GET /health``; at the end
    SIGTERM, then SIGKILL to its process group if it has not exited 30 s later."""
    process = await asyncio.create_subprocess_exec(
        *command,
        cwd=cwd,
        env=dict(env),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        start_new_session=True,
    )
    output = asyncio.create_task(_read_all(process))
    # The client keeps a few connections open, like a load balancer in front of the service.
    connector = aiohttp.TCPConnector(limit=32)
    async with aiohttp.ClientSession(
        base_url=f"http://127.0.0.1:{port}", connector=connector
    ) as client:
        service = Service(process, client)
        try:
            await _wait_healthy(service, output, startup)
            yield service
        finally:
            if process.returncode is None:
                started = time.monotonic()
                process.send_signal(signal.SIGTERM)
                try:
                    await asyncio.wait_for(process.wait(), 30)
                except asyncio.TimeoutError:
                    os.killpg(process.pid, signal.SIGKILL)
                    await process.wait()
                service.stopped_in = time.monotonic() - started
            service.output = await output


async def _read_all(process: asyncio.subprocess.Process) -> str:
    assert process.stdout is not None
    return (await process.stdout.read()).decode(errors="replace")


async def _wait_healthy(service: Service, output: asyncio.Task[str], startup: float) -> None:
    deadline = time.monotonic() + startup
    while True:
        if service.process.returncode is not None:
            raise RuntimeError(f"the service exited during startup:\n{await output}")
        with contextlib.suppress(aiohttp.ClientError):
            async with service.client.get("/health") as response:
                if response.status == 200:
                    return
        if time.monotonic() > deadline:
            raise RuntimeError(f"the service did not answer /health within {startup:g}s")
        await asyncio.sleep(0.1)
