"""What the end-to-end tests of the example services share: a service process started for real,
its environment, a second subscription that watches the topic, and the outbox's row states."""

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
import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import aiohttp
from psycopg2 import sql

from outbox_di.testing import pubsub as pubsub_testing

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "integrations"
PROJECT = "outbox-di-e2e"


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


def service_env(
    dsn: str, schema: str, host: str, topic: pubsub_testing.TopicWithSubscription
) -> dict[str, str]:
    """The example's settings as ``OUTBOX_*`` variables (they win over its settings.toml)."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("OUTBOX_")}
    env.update(
        {
            "OUTBOX_DSN": dsn,
            "OUTBOX_SCHEMA": schema,
            "OUTBOX_PUBSUB__PROJECT": topic.project,
            "OUTBOX_PUBSUB__EMULATOR_HOST": host,
            "OUTBOX_PUBLISHER__TOPIC": topic.name,
            "OUTBOX_PUBLISHER__TICK_INTERVAL": "200ms",
            "OUTBOX_PUBLISHER__SHUTDOWN_TIMEOUT": "5s",
            "OUTBOX_INBOX__SUBSCRIPTION": topic.name,
            "OUTBOX_INBOX__SHUTDOWN_TIMEOUT": "5s",
        }
    )
    return env


@dataclasses.dataclass
class Service:
    """A running example service and an HTTP client for it."""

    process: asyncio.subprocess.Process
    client: aiohttp.ClientSession
    stopped_in: float | None = None
    output: str = ""


@contextlib.asynccontextmanager
async def run_service(
    command: Sequence[str], cwd: Path, env: Mapping[str, str], port: int, startup: float = 30.0
) -> AsyncIterator[Service]:
    """Start ``command`` (which serves on ``port``), wait for ``GET /health``; SIGTERM at the end
    (killed if it has not exited 30 s later), its output kept on ``Service.output``."""
    process = await asyncio.create_subprocess_exec(
        *command,
        cwd=cwd,
        env=dict(env),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        start_new_session=True,
    )
    output = asyncio.create_task(_read_all(process))
    base_url = f"http://127.0.0.1:{port}"
    async with aiohttp.ClientSession(base_url=base_url) as client:
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
            raise AssertionError(f"the service exited during startup:\n{await output}")
        with contextlib.suppress(aiohttp.ClientError):
            async with service.client.get("/health") as response:
                if response.status == 200:
                    return
        if time.monotonic() > deadline:
            raise AssertionError(f"the service did not answer /health within {startup:g}s")
        await asyncio.sleep(0.1)


async def create_items(client: aiohttp.ClientSession, skus: Sequence[str]) -> list[dict[str, str]]:
    """``POST /items`` for each sku, a few at a time; each answer must be 201."""
    limit = asyncio.Semaphore(8)

    async def create(sku: str) -> dict[str, str]:
        async with limit, client.post("/items", json={"sku": sku, "name": f"item {sku}"}) as resp:
            body: dict[str, str] = await resp.json()
            assert resp.status == 201, (resp.status, body)
            return body

    return list(await asyncio.gather(*(create(sku) for sku in skus)))


async def received_ids(client: aiohttp.ClientSession) -> list[str]:
    async with client.get("/received") as response:
        assert response.status == 200
        body: dict[str, Any] = await response.json()
    assert body["count"] == len(body["event_ids"])
    return list(body["event_ids"])


async def wait_received(
    client: aiohttp.ClientSession, count: int, within: float = 30.0
) -> list[str]:
    """``GET /received`` until it lists ``count`` events (AssertionError after ``within``)."""
    deadline = time.monotonic() + within
    while True:
        ids = await received_ids(client)
        if len(ids) >= count or time.monotonic() > deadline:
            return ids
        await asyncio.sleep(0.1)


@contextlib.asynccontextmanager
async def watcher(host: str, topic: pubsub_testing.TopicWithSubscription) -> AsyncIterator[str]:
    """A second subscription on the topic, made before anything is published: what the
    broker really carried, independently of the service's own inbox."""
    name = f"projects/{topic.project}/subscriptions/watch-{uuid.uuid4().hex[:12]}"
    async with pubsub_testing.async_subscriber_client(host) as subscriber:
        await subscriber.create_subscription(request={"name": name, "topic": topic.topic})
    try:
        yield name
    finally:
        async with pubsub_testing.async_subscriber_client(host) as subscriber:
            await subscriber.delete_subscription(subscription=name)


async def pull_event_ids(
    host: str, subscription: str, count: int, within: float = 20.0
) -> list[str]:
    """The ``event_id`` attributes of the messages on ``subscription`` (redeliveries included),
    pulled until ``count`` distinct ones arrived or ``within`` seconds passed."""
    from outbox_di.testing.publisher_suite import pull_until

    async with pubsub_testing.async_subscriber_client(host) as subscriber:
        received = await pull_until(
            subscriber,
            subscription,
            lambda got: len({m.message.attributes["event_id"] for m in got}) >= count,
            within,
        )
    return [m.message.attributes["event_id"] for m in received]


def row_states(dsn: str, schema: str) -> dict[str, Any]:
    """How the outbox and inbox rows of ``schema`` stand: counts by status, and how many rows
    are still leased (a lock token on a row that is not finished)."""
    import psycopg2

    outbox = sql.SQL(
        "SELECT status::text, count(*), count(*) FILTER (WHERE lock_token IS NOT NULL) "
        "FROM {}.outbox_events GROUP BY status"
    ).format(sql.Identifier(schema))
    inbox = sql.SQL(
        "SELECT status::text, count(*), count(*) FILTER (WHERE lock_token IS NOT NULL) "
        "FROM {}.inbox_events GROUP BY status"
    ).format(sql.Identifier(schema))
    with psycopg2.connect(dsn) as conn, conn.cursor() as cursor:
        cursor.execute(outbox)
        outbox_rows = cursor.fetchall()
        cursor.execute(inbox)
        inbox_rows = cursor.fetchall()
    conn.close()
    return {
        "outbox": {status: count for status, count, _ in outbox_rows},
        "outbox_leased": sum(leased for status, _, leased in outbox_rows if status == "pending"),
        "inbox": {status: count for status, count, _ in inbox_rows},
        "inbox_leased": sum(leased for status, _, leased in inbox_rows if status == "pending"),
    }


async def check_catalog(
    command: Sequence[str],
    folder: Path,
    dsn: str,
    schema: str,
    host: str,
    *,
    items: int = 40,
    exit_codes: tuple[int, ...] = (0,),
    extra_env: Mapping[str, str] | None = None,
) -> Service:
    """The scenario every catalog example passes, started with ``command`` in ``folder``:

    ``items`` items created over HTTP, each ``item.created`` event carried by the topic (seen on
    a second subscription) and processed once by the service's own inbox; a duplicate sku
    answered 409 with its already-enqueued event rolled back; after SIGTERM the process exits
    with one of ``exit_codes`` within the workers' deadlines, leaving no row leased.
    """
    migrate(dsn, schema)
    async with (
        pubsub_testing.temporary_topic(host, PROJECT, prefix="catalog") as topic,
        watcher(host, topic) as watched,
    ):
        port = free_port()
        env = {**service_env(dsn, schema, host, topic), **(extra_env or {})}
        full_command = [part.replace("{port}", str(port)) for part in command]
        async with run_service(full_command, folder, env, port) as service:
            created = await create_items(service.client, [f"sku-{n}" for n in range(items)])
            # A duplicate sku: the insert fails after the event was enqueued, and the whole
            # transaction, event included, rolls back.
            async with service.client.post("/items", json={"sku": "sku-0", "name": "again"}) as r:
                assert r.status == 409
                assert "already exists" in (await r.json())["error"]
            event_ids = {item["event_id"] for item in created}
            assert len(event_ids) == items
            received = await wait_received(service.client, items)
            on_topic = await pull_event_ids(host, watched, items)
    # After SIGTERM every worker drained within its deadline (5 s each) and the process exited.
    assert service.process.returncode in exit_codes, service.output
    assert service.stopped_in is not None and service.stopped_in < 15, service.output
    assert sorted(received) == sorted(event_ids), "each event processed once by the inbox"
    assert set(on_topic) == event_ids, "each event, and only those, on the topic"
    states = row_states(dsn, schema)
    assert states["outbox"] == {"published": items}, states
    assert states["inbox"] == {"processed": items}, states
    assert states["outbox_leased"] == 0 and states["inbox_leased"] == 0, states
    assert "Traceback" not in service.output and "was destroyed" not in service.output
    return service
