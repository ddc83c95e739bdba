"""The broker pages' recipes for creating topics and subscriptions, run as a reader would.

Each page (docs/broker-*.md) shows how to create what its configuration names: a Python block,
and for Redis a ``redis-cli`` command. Each is run here in a process of its own against the
server this machine runs; then the adapter's own start-up checks, built from the page's names,
must pass, where before the recipe they refused to start. What a recipe made is deleted after.
A broker that does not answer is skipped with the reason; a name the server already holds skips
the test rather than touching what someone else made.
"""

from __future__ import annotations

import contextlib
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from outbox_di import config, errors
from outbox_di.brokers import make_publisher, make_subscriber
from outbox_di.testing import brokers as brokers_testing

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
FENCE = re.compile(r"^```(?P<lang>\w*)\n(?P<body>.*?)^```", re.MULTILINE | re.DOTALL)


def _blocks(page: str, lang: str) -> list[str]:
    text = (ROOT / "docs" / page).read_text(encoding="utf-8")
    return [m["body"] for m in FENCE.finditer(text) if m["lang"] == lang]


def _recipe(page: str, marker: str) -> str:
    """The page's Python block that contains ``marker``."""
    found = [block for block in _blocks(page, "python") if marker in block]
    assert len(found) == 1, f"{page}: expected one python block with {marker!r}"
    return found[0]


def _settings(broker: str, topic: str, subscription: str) -> config.OutboxConfig:
    return config.OutboxConfig.from_mapping(
        {
            "schema": "orders",
            "dsn": "postgresql://postgres@127.0.0.1/postgres",
            "broker": broker,
            broker: {"connect_timeout": "3s"},
            "publisher": {"topic": topic},
            "inbox": {"enabled": True, "subscription": subscription},
        }
    )


def _skip_unless_up(settings: config.OutboxConfig) -> None:
    reason = brokers_testing.unavailable(settings)
    if reason:
        pytest.skip(f"{settings.broker}: {reason}")


async def _starts(settings: config.OutboxConfig, *, publisher: bool = True) -> None:
    """The publisher's and the subscriber's start-up checks pass on ``settings``."""
    made: list[Any] = [make_subscriber(settings)]
    if publisher:
        made.append(make_publisher(settings))
    for adapter in made:
        try:
            await adapter.start()
        finally:
            await adapter.close()


async def _refuses(settings: config.OutboxConfig, *, publisher: bool = True) -> None:
    """Before the recipe ran, the start-up checks name the missing topic or subscription."""
    with pytest.raises(errors.ConfigError) as refused:
        await _starts(settings, publisher=publisher)
    assert any("inbox.subscription" in p or "publisher.topic" in p for p in refused.value.problems)


def _run_python(code: str) -> None:
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr


async def _check_recipe(
    settings: config.OutboxConfig,
    run: Callable[[], None],
    cleanup: Callable[[], Awaitable[None]],
    *,
    publisher: bool = True,
) -> None:
    await _refuses(settings, publisher=publisher)
    try:
        run()
        await _starts(settings, publisher=publisher)
    finally:
        await cleanup()


async def test_the_rabbitmq_recipe_declares_what_the_config_names() -> None:
    import aio_pika

    settings = _settings("rabbitmq", "orders.events", "billing.orders")
    _skip_unless_up(settings)

    async def exists(kind: str, name: str) -> bool:
        connection = await aio_pika.connect(settings.rabbitmq.url)
        async with connection:
            channel = await connection.channel()
            try:
                if kind == "exchange":
                    await channel.get_exchange(name, ensure=True)
                else:
                    await channel.get_queue(name, ensure=True)
            except aio_pika.exceptions.ChannelClosed:
                return False
            return True

    if await exists("exchange", "orders.events") or await exists("queue", "billing.orders"):
        pytest.skip("the page's exchange or queue already exists on this server")

    async def cleanup() -> None:
        connection = await aio_pika.connect(settings.rabbitmq.url)
        async with connection:
            channel = await connection.channel()
            await channel.queue_delete("billing.orders")
            await channel.exchange_delete("orders.events")

    recipe = _recipe("broker-rabbitmq.md", "declare_exchange")
    await _check_recipe(settings, lambda: _run_python(recipe), cleanup)


async def test_the_nats_recipe_creates_what_the_config_names() -> None:
    import nats
    import nats.js.errors

    settings = _settings("nats", "orders.events", "ORDERS/billing")
    _skip_unless_up(settings)
    client = await nats.connect(settings.nats.servers)
    try:
        js = client.jetstream()
        try:
            await js.stream_info("ORDERS")
        except nats.js.errors.NotFoundError:
            pass
        else:
            pytest.skip("the page's stream ORDERS already exists on this server")

        async def cleanup() -> None:
            with contextlib.suppress(nats.js.errors.NotFoundError):
                await js.delete_stream("ORDERS")

        recipe = _recipe("broker-nats.md", "add_stream")
        await _check_recipe(settings, lambda: _run_python(recipe), cleanup)
    finally:
        await client.close()


def _redis_recipe_settings() -> config.OutboxConfig:
    settings = _settings("redis", "orders:events", "payments:events/orders")
    _skip_unless_up(settings)
    return settings


async def _redis_cleanup_for(settings: config.OutboxConfig) -> Callable[[], Awaitable[None]]:
    import redis.asyncio as aioredis

    client = aioredis.Redis.from_url(settings.redis.url)
    if await client.exists("payments:events"):
        await client.aclose()
        pytest.skip("the page's stream payments:events already exists on this server")

    async def cleanup() -> None:
        await client.delete("payments:events")
        await client.aclose()

    return cleanup


async def test_the_redis_python_recipe_creates_the_group() -> None:
    settings = _redis_recipe_settings()
    cleanup = await _redis_cleanup_for(settings)
    recipe = _recipe("broker-redis.md", "xgroup_create")
    # The relay's side needs nothing created (XADD makes the stream): only the group is checked.
    await _check_recipe(settings, lambda: _run_python(recipe), cleanup, publisher=False)


async def test_the_redis_cli_recipe_creates_the_group() -> None:
    settings = _redis_recipe_settings()
    [command] = [
        line
        for block in _blocks("broker-redis.md", "sh")
        for line in block.splitlines()
        if "XGROUP CREATE" in line
    ]
    if shutil.which("redis-cli") is None:
        pytest.skip("redis-cli is not installed")
    cleanup = await _redis_cleanup_for(settings)

    def run() -> None:
        done = subprocess.run(
            shlex.split(command), capture_output=True, text=True, timeout=30, check=False
        )
        assert done.returncode == 0 and done.stdout.strip() == "OK", done.stdout + done.stderr

    await _check_recipe(settings, run, cleanup, publisher=False)
