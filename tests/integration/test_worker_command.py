"""``outbox-di worker``: runs the publisher alone from settings, drains on SIGTERM."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from psycopg2 import sql

from outbox_di import models, repository
from outbox_di.testing.pubsub import EmulatorEndpoint, async_publisher_client, temporary_topic

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


HANDLERS_MODULE = """
from outbox_di import InboxHandlers, OutboxContainer

handlers = InboxHandlers()


@handlers.on("item.created", transactional=True)
async def remember(event, session):
    await session.execute(
        "INSERT INTO {schema}.seen (event_id) VALUES (%s)", (event.event_id,)
    )


def make_handlers(container):
    # A factory: the handler closes over the worker's own container.
    assert isinstance(container, OutboxContainer)
    made = InboxHandlers()

    @made.on("item.created", transactional=True)
    async def remember_with_the_container(event, session):
        name = container.settings().schema
        await session.execute(
            f"INSERT INTO {name}.seen (event_id) VALUES (%s)", (event.event_id,)
        )

    return made
"""


@pytest.mark.parametrize("reference", ["service_inbox:handlers", "service_inbox:make_handlers"])
async def test_worker_runs_the_inbox_with_handlers_from_a_module(
    reference: str,
    outbox_pool: Any,
    outbox_repository: repository.OutboxRepository,
    outbox_dsn: str,
    pubsub_inprocess_emulator: EmulatorEndpoint,
    tmp_path: Path,
) -> None:
    """The worker relays its outbox to a topic whose subscription feeds its own inbox; the
    transactional handler named by ``--handlers`` (the handlers, or a factory given the
    worker's container) records each event once."""
    schema = outbox_repository.schema
    host = pubsub_inprocess_emulator.host
    async with outbox_pool.acquire() as conn, conn.cursor() as cursor:
        await cursor.execute(
            sql.SQL("CREATE TABLE {}.seen (event_id text PRIMARY KEY)").format(
                sql.Identifier(schema)
            )
        )
    (tmp_path / "service_inbox.py").write_text(HANDLERS_MODULE.replace("{schema}", schema))
    async with temporary_topic(host, PROJECT, prefix="worker") as made:
        env = {
            **os.environ,
            "PYTHONPATH": str(tmp_path),
            "OUTBOX_SCHEMA": schema,
            "OUTBOX_DSN": outbox_dsn,
            "OUTBOX_PUBLISHER__TOPIC": made.name,
            "OUTBOX_PUBLISHER__TICK_INTERVAL": "100ms",
            "OUTBOX_PUBSUB__PROJECT": PROJECT,
            "OUTBOX_PUBSUB__EMULATOR_HOST": host,
            "OUTBOX_INBOX__ENABLED": "true",
            "OUTBOX_INBOX__SUBSCRIPTION": made.name,
        }
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "outbox_di.cli",
            "worker",
            "--handlers",
            reference,
            cwd=tmp_path,
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        try:
            messages = [models.Message("item", str(n), "item.created", {"n": n}) for n in range(20)]
            async with outbox_pool.acquire() as conn, conn.cursor() as cursor, cursor.begin():
                ids = await outbox_repository.enqueue_many(cursor, messages)
            seen: list[str] = []
            deadline = time.monotonic() + 30
            while len(seen) < len(ids) and time.monotonic() < deadline:
                assert process.returncode is None, await process.communicate()
                await asyncio.sleep(0.1)
                async with outbox_pool.acquire() as conn, conn.cursor() as cursor:
                    await cursor.execute(
                        sql.SQL("SELECT event_id FROM {}.seen").format(sql.Identifier(schema))
                    )
                    seen = [row[0] for row in await cursor.fetchall()]
            process.send_signal(signal.SIGTERM)
            out_bytes, err_bytes = await asyncio.wait_for(process.communicate(), 20)
        finally:
            if process.returncode is None:
                process.kill()
                await process.communicate()
    assert process.returncode == 0, err_bytes.decode()
    assert "inbox of consumer" in out_bytes.decode()
    assert sorted(seen) == sorted(str(event_id) for event_id in ids)


def test_worker_with_unknown_handlers_module_names_the_flag(tmp_path: Path) -> None:
    (tmp_path / "settings.toml").write_text('[outbox]\nschema = "ok"\ndsn = "postgresql://x/y"\n')
    env = {k: v for k, v in os.environ.items() if not k.startswith("OUTBOX_")}
    result = subprocess.run(
        [sys.executable, "-m", "outbox_di.cli", "worker", "--handlers", "no_such_module:h"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "--handlers: cannot import 'no_such_module'" in result.stderr


def test_the_worker_command_finds_a_handlers_module_in_the_current_directory(
    tmp_path: Path,
) -> None:
    """The ``outbox-di`` console script (not ``python -m``) imports ``--handlers`` from where
    it runs, with no PYTHONPATH: the module is found, and its missing attribute is what the
    error names."""
    (tmp_path / "settings.toml").write_text('[outbox]\nschema = "ok"\ndsn = "postgresql://x/y"\n')
    (tmp_path / "billing_handlers.py").write_text("handlers = None\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("OUTBOX_")}
    env.pop("PYTHONPATH", None)
    script = Path(sys.executable).parent / "outbox-di"
    result = subprocess.run(
        [str(script), "worker", "--handlers", "billing_handlers:handlerz"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "module 'billing_handlers' has no attribute 'handlerz'" in result.stderr


def test_worker_with_a_missing_topic_exits_cleanly_naming_it(
    outbox_schema: str, outbox_dsn: str, pubsub_inprocess_emulator: EmulatorEndpoint, tmp_path: Path
) -> None:
    """A start that fails half-way (the pools open, the topic check fails) closes what it
    opened: one clear error, no traceback from a pool left to the garbage collector."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("OUTBOX_")}
    env.update(
        {
            "OUTBOX_SCHEMA": outbox_schema,
            "OUTBOX_DSN": outbox_dsn,
            "OUTBOX_PUBLISHER__TOPIC": "no-such-topic",
            "OUTBOX_PUBSUB__PROJECT": PROJECT,
            "OUTBOX_PUBSUB__EMULATOR_HOST": pubsub_inprocess_emulator.host,
        }
    )
    result = subprocess.run(
        [sys.executable, "-W", "error::ResourceWarning", "-m", "outbox_di.cli", "worker"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2, result.stderr
    assert f"projects/{PROJECT}/topics/no-such-topic' does not exist" in result.stderr
    assert "Traceback" not in result.stderr and "athrow" not in result.stderr, result.stderr


def _closed_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


async def test_worker_stops_on_sigterm_while_its_start_waits_for_pubsub(
    outbox_schema: str, outbox_dsn: str, tmp_path: Path
) -> None:
    """No Pub/Sub answers and connect_timeout is long: SIGTERM during the start ends it at
    once, closing what it had opened, instead of after the timeout."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("OUTBOX_")}
    env.update(
        {
            "OUTBOX_SCHEMA": outbox_schema,
            "OUTBOX_DSN": outbox_dsn,
            "OUTBOX_PUBLISHER__TOPIC": "events",
            "OUTBOX_PUBSUB__PROJECT": PROJECT,
            "OUTBOX_PUBSUB__EMULATOR_HOST": f"127.0.0.1:{_closed_port()}",
            "OUTBOX_PUBSUB__CONNECT_TIMEOUT": "60s",
        }
    )
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-W",
        "error::ResourceWarning",
        "-m",
        "outbox_di.cli",
        "worker",
        cwd=tmp_path,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert process.stdout is not None
        # The start-up line comes before the start: the signal handlers are in place by then.
        first = await asyncio.wait_for(process.stdout.readline(), 30)
        assert b"outbox-di worker: schema" in first, first
        await asyncio.sleep(1.0)
        assert process.returncode is None
        process.send_signal(signal.SIGTERM)
        started = time.monotonic()
        out_bytes, err_bytes = await asyncio.wait_for(process.communicate(), 20)
        elapsed = time.monotonic() - started
    finally:
        if process.returncode is None:
            process.kill()
            await process.communicate()
    err = err_bytes.decode()
    assert process.returncode == 0, err
    assert elapsed < 5, elapsed
    assert "stopped" in out_bytes.decode()
    assert "Traceback" not in err, err


def test_worker_handlers_factory_that_returns_nothing_useful_names_the_flag(
    tmp_path: Path,
) -> None:
    (tmp_path / "bad_inbox.py").write_text("def make(container):\n    return 42\n")
    (tmp_path / "settings.toml").write_text(
        '[outbox]\nschema = "ok"\ndsn = "postgresql://x/y"\n[outbox.publisher]\ntopic = "events"\n'
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("OUTBOX_")}
    env["PYTHONPATH"] = str(tmp_path)
    result = subprocess.run(
        [sys.executable, "-m", "outbox_di.cli", "worker", "--handlers", "bad_inbox:make"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "--handlers: bad_inbox:make(container): must be an InboxHandlers" in result.stderr
