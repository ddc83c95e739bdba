"""The aiohttp integration against real PostgreSQL: setup, startup/cleanup callables, shutdown.

Applications run under ``aiohttp.test_utils.TestServer`` in the test's own event loop.
"""

from __future__ import annotations

import asyncio
import os
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from outbox_di import errors, models
from outbox_di.containers import OutboxContainer
from outbox_di.integrations import aiohttp as outbox_aiohttp
from outbox_di.publishing import base

pytestmark = pytest.mark.integration

ATTEMPTED = web.AppKey("attempted", list)


def _mapping(schema: str, dsn: str, **top: Any) -> dict[str, Any]:
    return {
        "schema": schema,
        "dsn": dsn,
        "pool": {"max_size": 4},
        "publisher": {"topic": "events", "tick_interval": "50ms"},
        **top,
    }


async def create_item(request: web.Request) -> web.Response:
    outbox = await outbox_aiohttp.get_outbox(request)
    name = request.match_info["name"]
    async with outbox.transaction() as cursor:
        event_id = await outbox.enqueue(
            cursor, models.Message("item", name, "item.created", {"name": name})
        )
    return web.json_response({"event_id": str(event_id)}, status=201)


async def refuse_item(request: web.Request) -> web.Response:
    outbox = await outbox_aiohttp.get_outbox(request)
    async with outbox.transaction() as cursor:
        request.app[ATTEMPTED].append(
            await outbox.enqueue(cursor, models.Message("item", "x", "item.created", {}))
        )
        raise web.HTTPConflict(text="refused after enqueue")


async def announce(request: web.Request) -> web.Response:
    outbox = await outbox_aiohttp.get_outbox(request)
    event_id = await outbox.enqueue(models.Message("shop", "1", "shop.opened", {}))
    return web.json_response({"event_id": str(event_id)}, status=201)


def _make_app() -> web.Application:
    app = web.Application()
    app[ATTEMPTED] = []
    app.router.add_post("/items/{name}", create_item)
    app.router.add_post("/refused", refuse_item)
    app.router.add_post("/events", announce)
    return app


async def _wait_published(fake: base.InMemoryPublisher, event_id: uuid.UUID) -> None:
    deadline = asyncio.get_running_loop().time() + 10.0
    while event_id not in {event.event_id for event in fake.published}:
        assert asyncio.get_running_loop().time() < deadline, f"{event_id} not published in time"
        await asyncio.sleep(0.02)


async def test_setup_enqueue_publish_rollback_and_cleanup(
    outbox_schema: str, outbox_dsn: str
) -> None:
    container: Any = OutboxContainer(config=_mapping(outbox_schema, outbox_dsn))
    fake = base.InMemoryPublisher()
    container.publisher.override(fake)
    app = _make_app()
    outbox_aiohttp.setup(app, container)
    try:
        async with TestClient(TestServer(app)) as client:
            held: Any = app[outbox_aiohttp.OUTBOX_CONTAINER]
            assert held is container
            relay = await container.publisher_task()
            pool = await container.pool()
            assert relay.running

            response = await client.post("/items/lamp")
            assert response.status == 201
            created = uuid.UUID((await response.json())["event_id"])
            await _wait_published(fake, created)

            response = await client.post("/refused")
            assert response.status == 409
            repo = await container.outbox_repository()
            assert len(app[ATTEMPTED]) == 1
            assert await repo.get(app[ATTEMPTED][0]) is None  # rolled back with the request

            response = await client.post("/events")
            assert response.status == 201
            stored = await repo.get(uuid.UUID((await response.json())["event_id"]))
            assert stored is not None and stored.event_type == "shop.opened"
        assert not relay.running
        assert pool.closed
        assert container.pool.initialized is False
    finally:
        container.publisher.reset_override()


async def test_setup_web_only_in_a_mounted_subapp(outbox_schema: str, outbox_dsn: str) -> None:
    container = OutboxContainer(config=_mapping(outbox_schema, outbox_dsn, run_workers=True))
    container.publisher.override(base.InMemoryPublisher())
    app = web.Application()
    outbox_aiohttp.setup(app, container, workers=False)
    app.add_subapp("/api", _make_app())  # handlers find the container through config_dict
    try:
        async with TestClient(TestServer(app)) as client:
            assert container.pool.initialized
            assert container.publisher_task.initialized is False  # workers=False wins
            response = await client.post("/api/items/desk")
            assert response.status == 201
            repo = await container.outbox_repository()
            assert await repo.get(uuid.UUID((await response.json())["event_id"])) is not None
        assert container.pool.initialized is False
    finally:
        container.publisher.reset_override()


async def test_on_startup_and_on_cleanup_callables(outbox_schema: str, outbox_dsn: str) -> None:
    container = OutboxContainer(config=_mapping(outbox_schema, outbox_dsn, run_workers=False))
    container.publisher.override(base.InMemoryPublisher())
    app = _make_app()
    app[outbox_aiohttp.OUTBOX_CONTAINER] = container
    app.on_startup.append(outbox_aiohttp.on_startup)
    app.on_cleanup.append(outbox_aiohttp.on_cleanup)
    try:
        async with TestClient(TestServer(app)) as client:
            assert app[outbox_aiohttp.OUTBOX_CONTAINER] is container  # used, not rebuilt
            assert container.publisher_task.initialized is False  # run_workers = false
            pool = await container.pool()
            response = await client.post("/events")
            assert response.status == 201
        assert pool.closed
    finally:
        container.publisher.reset_override()


async def test_setup_builds_the_container_from_the_environment(
    outbox_schema: str, outbox_dsn: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)  # no settings.toml here: the variables alone
    for name in [name for name in os.environ if name.startswith("OUTBOX_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("OUTBOX_SCHEMA", outbox_schema)
    monkeypatch.setenv("OUTBOX_DSN", outbox_dsn)
    monkeypatch.setenv("OUTBOX_RUN_WORKERS", "false")
    monkeypatch.setenv("OUTBOX_PUBLISHER__TOPIC", "events")
    app = _make_app()
    outbox_aiohttp.setup(app)
    async with TestClient(TestServer(app)) as client:
        container: Any = app[outbox_aiohttp.OUTBOX_CONTAINER]
        assert isinstance(app[outbox_aiohttp.OUTBOX_CONTAINER], OutboxContainer)
        assert container.settings().schema == outbox_schema
        assert container.publisher_task.initialized is False
        response = await client.post("/items/lamp")
        assert response.status == 201
        repo = await container.outbox_repository()
        assert await repo.get(uuid.UUID((await response.json())["event_id"])) is not None
    assert container.pool.initialized is False


async def test_failed_startup_closes_what_it_opened(outbox_schema: str, outbox_dsn: str) -> None:
    container = OutboxContainer(config=_mapping(outbox_schema, outbox_dsn))

    class RefusingPublisher(base.InMemoryPublisher):
        async def start(self) -> None:
            raise errors.ConfigError(["publisher.topic: no such topic"])

    container.publisher.override(RefusingPublisher())
    app = _make_app()
    outbox_aiohttp.setup(app, container)
    server = TestServer(app)
    try:
        with pytest.raises(errors.ConfigError, match="no such topic"):
            await server.start_server()
        assert container.pool.initialized is False
    finally:
        await server.close()
        container.publisher.reset_override()


def test_get_container_without_setup_says_how_to_fix_it() -> None:
    from aiohttp.test_utils import make_mocked_request

    request = make_mocked_request("POST", "/events", app=web.Application())
    with pytest.raises(errors.OutboxError, match="setup"):
        outbox_aiohttp.get_container(request)


async def test_a_test_overrides_the_services_container_before_startup(
    outbox_schema: str, outbox_dsn: str
) -> None:
    # The service sets its production container up at import; its test overrides it in place.
    production: Any = OutboxContainer(
        config=_mapping("production_schema", "postgresql://prod/db", run_workers=False)
    )
    app = _make_app()
    outbox_aiohttp.setup(app, production)
    with production.override_config(schema=outbox_schema, dsn=outbox_dsn):
        async with TestClient(TestServer(app)) as client:
            response = await client.post("/events")
            assert response.status == 201
            event_id = uuid.UUID((await response.json())["event_id"])
            repo = await production.outbox_repository()
            assert repo.schema == outbox_schema
            assert await repo.get(event_id) is not None
    assert production.settings().schema == "production_schema"


async def test_setup_without_a_container_starts_the_wired_one(
    outbox_schema: str, outbox_dsn: str
) -> None:
    container: Any = OutboxContainer(config=_mapping(outbox_schema, outbox_dsn, run_workers=False))
    container.wire(modules=[sys.modules[__name__]])
    app = _make_app()
    outbox_aiohttp.setup(app)
    try:
        async with TestClient(TestServer(app)) as client:
            assert app[outbox_aiohttp.OUTBOX_CONTAINER] is container
            response = await client.post("/events")
            assert response.status == 201
    finally:
        container.unwire()
