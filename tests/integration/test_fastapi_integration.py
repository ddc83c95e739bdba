"""The FastAPI integration against real PostgreSQL: lifespan, dependency, shutdown.

The application runs under a real uvicorn server started as a task in the test's own event loop
(the aiopg pool is bound to the loop that made it), and is called with an aiohttp client.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import uuid
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Annotated, Any

import aiohttp
import pytest
import uvicorn
from fastapi import Depends, FastAPI, HTTPException, Request

from outbox_di import errors, integrations, models
from outbox_di.containers import OutboxContainer
from outbox_di.inbox.handlers import InboxHandlers
from outbox_di.integrations import fastapi as outbox_fastapi
from outbox_di.outbox import Outbox
from outbox_di.publishing import base
from outbox_di.repository import OutboxRepository

pytestmark = pytest.mark.integration

OutboxDep = Annotated[Outbox, Depends(outbox_fastapi.get_outbox)]


def _mapping(schema: str, dsn: str, **top: Any) -> dict[str, Any]:
    return {
        "schema": schema,
        "dsn": dsn,
        "pool": {"max_size": 4},
        "publisher": {"topic": "events", "tick_interval": "50ms"},
        **top,
    }


def _make_app(lifespan: outbox_fastapi.Lifespan) -> tuple[FastAPI, list[uuid.UUID]]:
    """An application with three routes; the list collects ids enqueued by the failing one."""
    app = FastAPI(lifespan=lifespan)
    attempted: list[uuid.UUID] = []

    @app.post("/items/{name}", status_code=201)
    async def create_item(name: str, outbox: OutboxDep) -> dict[str, str]:
        async with outbox.transaction() as cursor:
            event_id = await outbox.enqueue(
                cursor, models.Message("item", name, "item.created", {"name": name})
            )
        return {"event_id": str(event_id)}

    @app.post("/items/{name}/refused")
    async def refuse_item(name: str, outbox: OutboxDep) -> None:
        async with outbox.transaction() as cursor:
            attempted.append(
                await outbox.enqueue(cursor, models.Message("item", name, "item.created", {}))
            )
            raise HTTPException(status_code=409, detail="refused after enqueue")

    @app.post("/events", status_code=201)
    async def announce(request: Request, outbox: OutboxDep) -> dict[str, Any]:
        event_id = await outbox.enqueue(models.Message("shop", "1", "shop.opened", {}))
        return {"event_id": str(event_id), "greeting": getattr(request.state, "greeting", None)}

    return app, attempted


@contextlib.asynccontextmanager
async def _serve(app: FastAPI) -> AsyncIterator[aiohttp.ClientSession]:
    """uvicorn on a free port in this loop (lifespan included), and a client for it."""
    config = uvicorn.Config(
        app, host="127.0.0.1", port=0, lifespan="on", http="h11", ws="none", log_config=None
    )
    server = uvicorn.Server(config)
    serving = asyncio.create_task(server.serve())
    try:
        while not server.started:
            if serving.done():
                await serving
                raise AssertionError("uvicorn stopped during startup")
            await asyncio.sleep(0.01)
        port = server.servers[0].sockets[0].getsockname()[1]
        async with aiohttp.ClientSession(base_url=f"http://127.0.0.1:{port}") as client:
            yield client
    finally:
        server.should_exit = True
        await asyncio.wait_for(serving, timeout=30)


async def _wait_published(fake: base.InMemoryPublisher, event_id: uuid.UUID) -> None:
    deadline = asyncio.get_running_loop().time() + 10.0
    while event_id not in {event.event_id for event in fake.published}:
        assert asyncio.get_running_loop().time() < deadline, f"{event_id} not published in time"
        await asyncio.sleep(0.02)


async def test_enqueue_publish_rollback_and_shutdown_on_a_real_server(
    outbox_schema: str, outbox_dsn: str
) -> None:
    container = OutboxContainer(config=_mapping(outbox_schema, outbox_dsn))
    fake = base.InMemoryPublisher()
    container.publisher.override(fake)
    app, attempted = _make_app(outbox_fastapi.lifespan)
    app.state.outbox_container = container  # a pre-set container is used, not rebuilt
    try:
        async with _serve(app) as client:
            assert app.state.outbox_container is container
            relay = await container.publisher_task()
            pool = await container.pool()
            assert relay.running

            async with client.post("/items/lamp") as response:
                assert response.status == 201
                created = uuid.UUID((await response.json())["event_id"])
            await _wait_published(fake, created)

            async with client.post("/items/chair/refused") as response:
                assert response.status == 409
            repo = await container.outbox_repository()
            assert len(attempted) == 1
            assert await repo.get(attempted[0]) is None  # rolled back with the request

            async with client.post("/events") as response:
                assert response.status == 201
                announced = uuid.UUID((await response.json())["event_id"])
            stored = await repo.get(announced)
            assert stored is not None and stored.event_type == "shop.opened"
        # Shutdown drained the publisher task and closed the pool; the container stays.
        assert not relay.running
        assert pool.closed
        assert app.state.outbox_container is container
        assert container.pool.initialized is False
    finally:
        container.publisher.reset_override()


async def test_make_lifespan_composes_with_the_app_lifespan_in_web_only_mode(
    outbox_schema: str, outbox_dsn: str
) -> None:
    container = OutboxContainer(config=_mapping(outbox_schema, outbox_dsn, run_workers=True))
    container.publisher.override(base.InMemoryPublisher())
    steps: list[str] = []

    @contextlib.asynccontextmanager
    async def app_lifespan(app: FastAPI) -> AsyncIterator[Mapping[str, Any]]:
        # The outbox is started before the app's own startup, and stopped after its shutdown.
        assert container.pool.initialized
        outbox = await integrations.resolve_outbox(container)
        await outbox.enqueue(models.Message("app", "1", "app.started", {}))
        steps.append("app startup")
        yield {"greeting": "hello"}
        steps.append("app shutdown")
        assert container.pool.initialized

    lifespan = outbox_fastapi.make_lifespan(container, workers=False, inner=app_lifespan)
    app, _ = _make_app(lifespan)
    try:
        async with _serve(app) as client:
            assert steps == ["app startup"]
            assert app.state.outbox_container is container
            # workers=False wins over run_workers=True: no publisher task in a web process.
            assert container.publisher_task.initialized is False
            async with client.post("/events") as response:
                assert response.status == 201
                body = await response.json()
            assert body["greeting"] == "hello"  # the app lifespan's state reached the request
            repo = await container.outbox_repository()
            assert await repo.get(uuid.UUID(body["event_id"])) is not None
        assert steps == ["app startup", "app shutdown"]
        assert container.pool.initialized is False
        assert container.publisher_task.initialized is False
    finally:
        container.publisher.reset_override()


async def test_container_from_the_environment_when_none_is_given(
    outbox_schema: str,
    outbox_dsn: str,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    monkeypatch.chdir(tmp_path)  # no settings.toml here: the variables alone
    for name in [name for name in os.environ if name.startswith("OUTBOX_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("OUTBOX_SCHEMA", outbox_schema)
    monkeypatch.setenv("OUTBOX_DSN", outbox_dsn)
    monkeypatch.setenv("OUTBOX_RUN_WORKERS", "false")
    monkeypatch.setenv("OUTBOX_PUBLISHER__TOPIC", "events")
    app, _ = _make_app(outbox_fastapi.lifespan)
    async with _serve(app) as client:
        container: Any = app.state.outbox_container
        assert isinstance(app.state.outbox_container, OutboxContainer)
        assert container.settings().schema == outbox_schema
        assert container.publisher_task.initialized is False  # run_workers = false
        async with client.post("/items/desk") as response:
            assert response.status == 201
            event_id = uuid.UUID((await response.json())["event_id"])
        repo = await container.outbox_repository()
        assert await repo.get(event_id) is not None
    # The container built from this run's settings is gone with it.
    assert not hasattr(app.state, "outbox_container")
    assert container.pool.initialized is False


async def test_same_container_restarts_cleanly(outbox_schema: str, outbox_dsn: str) -> None:
    container = OutboxContainer(config=_mapping(outbox_schema, outbox_dsn))
    fake = base.InMemoryPublisher()
    container.publisher.override(fake)
    app, _ = _make_app(outbox_fastapi.make_lifespan(container))
    try:
        for run in range(2):
            async with app.router.lifespan_context(app):
                outbox = await integrations.resolve_outbox(container)
                event_id = await outbox.enqueue(models.Message("run", str(run), "run.done", {}))
                await _wait_published(fake, event_id)
                relay = await container.publisher_task()
            assert not relay.running
            assert outbox.pool.closed
    finally:
        container.publisher.reset_override()


async def test_failed_startup_closes_what_it_opened(outbox_schema: str, outbox_dsn: str) -> None:
    container = OutboxContainer(config=_mapping(outbox_schema, outbox_dsn))

    class RefusingPublisher(base.InMemoryPublisher):
        async def start(self) -> None:
            raise errors.ConfigError(["publisher.topic: no such topic"])

    container.publisher.override(RefusingPublisher())
    app, _ = _make_app(outbox_fastapi.make_lifespan(container))
    try:
        with pytest.raises(errors.ConfigError, match="no such topic"):
            async with app.router.lifespan_context(app):
                raise AssertionError("startup should have failed")
        assert container.pool.initialized is False  # the pool opened first was closed again
    finally:
        container.publisher.reset_override()


def test_dependency_without_a_container_says_how_to_fix_it() -> None:
    request = Request({"type": "http", "app": FastAPI()})
    with pytest.raises(errors.OutboxError, match="lifespan"):
        outbox_fastapi.get_container(request)


async def test_shutdown_drains_an_in_flight_batch_on_an_open_pool(
    outbox_schema: str, outbox_dsn: str, outbox_repository: OutboxRepository
) -> None:
    # The publisher task reaches the pool only through the repository; the pool must still be
    # open while the task finishes its batch, or the batch's marks fail and it is sent twice.
    container = OutboxContainer(config=_mapping(outbox_schema, outbox_dsn))
    fake = base.InMemoryPublisher()
    fake.set_delay(0.3)
    container.publisher.override(fake)
    app, _ = _make_app(outbox_fastapi.make_lifespan(container))
    try:
        async with app.router.lifespan_context(app):
            outbox = await integrations.resolve_outbox(container)
            event_id = await outbox.enqueue(models.Message("item", "1", "item.created", {}))
            deadline = asyncio.get_running_loop().time() + 10.0
            while (await outbox_repository.get(event_id)).lock_token is None:  # type: ignore[union-attr]
                assert asyncio.get_running_loop().time() < deadline, "never claimed"
                await asyncio.sleep(0.01)
        stored = await outbox_repository.get(event_id)
        assert stored is not None and stored.published_at is not None
        assert [event.event_id for event in fake.published] == [event_id]
    finally:
        container.publisher.reset_override()


async def test_a_container_set_on_app_state_wins_over_the_one_given_to_make_lifespan(
    outbox_schema: str, outbox_dsn: str
) -> None:
    # The way the README builds the app: make_lifespan(the production container).
    production = OutboxContainer(config=_mapping("production_schema", "postgresql://prod/db"))
    app, _ = _make_app(outbox_fastapi.make_lifespan(production, workers=False))
    under_test = OutboxContainer(config=_mapping(outbox_schema, outbox_dsn))
    app.state.outbox_container = under_test
    async with _serve(app) as client:
        async with client.post("/events") as response:
            assert response.status == 201
            event_id = uuid.UUID((await response.json())["event_id"])
        repo = await under_test.outbox_repository()
        assert await repo.get(event_id) is not None
        assert production.pool.initialized is False  # never started
    assert app.state.outbox_container is under_test


async def test_the_drop_in_lifespan_starts_the_wired_container(
    outbox_schema: str, outbox_dsn: str
) -> None:
    container = OutboxContainer(config=_mapping(outbox_schema, outbox_dsn, run_workers=False))
    container.wire(modules=[sys.modules[__name__]])
    app, _ = _make_app(outbox_fastapi.lifespan)
    try:
        async with app.router.lifespan_context(app):
            assert app.state.outbox_container is container
            assert container.pool.initialized
        assert not hasattr(app.state, "outbox_container")
        assert container.pool.initialized is False
    finally:
        container.unwire()


async def test_two_wired_containers_are_refused_with_the_way_out(
    outbox_schema: str, outbox_dsn: str
) -> None:
    first = OutboxContainer(config=_mapping(outbox_schema, outbox_dsn))
    second = OutboxContainer(config=_mapping("other_schema", outbox_dsn))
    first.wire(modules=[sys.modules[__name__]])
    second.wire(modules=[sys.modules[__name__]])
    app, _ = _make_app(outbox_fastapi.lifespan)
    try:
        with pytest.raises(
            errors.OutboxError, match=r"2 OutboxContainers are wired.*make_lifespan"
        ):
            async with app.router.lifespan_context(app):
                raise AssertionError("startup should have failed")
        assert first.pool.initialized is False and second.pool.initialized is False
    finally:
        first.unwire()
        second.unwire()


def test_with_handlers_lends_handlers_for_one_run_and_leaves_the_drop_in_alone() -> None:
    handlers = InboxHandlers()

    @handlers.on("payment.captured")
    async def on_payment(event: models.InboxEvent) -> None:
        return None

    refined = outbox_fastapi.lifespan.with_handlers(handlers).with_workers(False)
    assert outbox_fastapi.lifespan.handlers is None and outbox_fastapi.lifespan.workers is None
    assert refined.handlers is not None and "payment.captured" in refined.handlers
    assert refined.workers is False

    container = OutboxContainer(config=_mapping("orders", "postgresql://x/y"))
    assert integrations.lend_handlers(container, refined.handlers)
    assert dict(container.inbox_handlers()) == {"payment.captured": on_payment}
    with pytest.raises(errors.OutboxError, match="give them in one place only"):
        integrations.lend_handlers(container, handlers)
    container.inbox_handlers.reset_last_overriding()
    assert dict(container.inbox_handlers()) == {}


inbox_handlers_of_this_module = InboxHandlers()


@inbox_handlers_of_this_module.on("module.level")
async def _module_level_handler(event: models.InboxEvent) -> None:
    return None


def test_module_level_handlers_of_the_wired_modules_are_found() -> None:
    container = OutboxContainer(config=_mapping("orders", "postgresql://x/y"))
    container.wire(modules=[sys.modules[__name__]])
    try:
        assert integrations.lend_handlers(container, None)
        assert dict(container.inbox_handlers()) == {"module.level": _module_level_handler}
    finally:
        container.inbox_handlers.reset_last_overriding()
        container.unwire()
