"""OutboxContainer as services use it: config forms, validation, wiring, override, lifecycle."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Any

import pytest
from dependency_injector.wiring import Provide, inject

from outbox_di import config, errors, models, settings
from outbox_di.containers import OutboxContainer, start, stop
from outbox_di.inbox.handlers import InboxHandlers
from outbox_di.inbox.receiver import InboxReceiver
from outbox_di.inbox.worker import InboxWorker
from outbox_di.outbox import Outbox
from outbox_di.publishing import base
from outbox_di.publishing.task import PublisherTask
from outbox_di.testing import pubsub as pubsub_testing
from outbox_di.testing.pubsub import EmulatorEndpoint

pytestmark = pytest.mark.integration


def _mapping(schema: str, dsn: str, **publisher: Any) -> dict[str, Any]:
    return {
        "schema": schema,
        "dsn": dsn,
        "pool": {"max_size": 4},
        "publisher": {"topic": "events", "tick_interval": "50ms", **publisher},
    }


def test_bad_config_fails_at_construction_with_key_paths() -> None:
    with pytest.raises(errors.ConfigError) as info:
        OutboxContainer(
            config={"schema": "Bad Name", "dsn": "x", "publisher": {"batch_size": 5000}}
        )
    message = str(info.value)
    assert "schema:" in message
    assert "publisher.batch_size:" in message
    assert "publisher.topic:" in message


def test_unknown_key_names_the_closest_one() -> None:
    with pytest.raises(errors.ConfigError, match="did you mean 'batch_size'"):
        OutboxContainer(config={"schema": "s", "dsn": "x", "publisher": {"batchsize": 5}})


def test_container_from_dict_and_from_dynaconf_section(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from dynaconf import Dynaconf

    from_dict = OutboxContainer(config=_mapping("catalog", "postgresql://x/y"))
    assert isinstance(from_dict, OutboxContainer)
    assert from_dict.settings().publisher.topic == "events"

    toml = tmp_path / "settings.toml"
    toml.write_text(
        '[outbox]\nschema = "catalog"\ndsn = "postgresql://x/y"\n'
        '[outbox.publisher]\ntopic = "events"\nbatch_size = 250\n'
    )
    dyn = Dynaconf(settings_files=[str(toml)], environments=False)
    from_dynaconf = OutboxContainer(config=dyn.outbox)
    resolved = from_dynaconf.settings()
    assert isinstance(resolved, config.OutboxConfig)
    assert resolved.publisher.batch_size == 250
    assert resolved.schema == "catalog"

    monkeypatch.chdir(tmp_path)
    from_loader = OutboxContainer(config=settings.load_mapping())
    assert from_loader.settings() == resolved


async def test_wire_and_provide_the_outbox_facade(outbox_schema: str, outbox_dsn: str) -> None:
    container = OutboxContainer(config=_mapping(outbox_schema, outbox_dsn))
    container.wire(modules=[sys.modules[__name__]])
    try:
        await start(container, workers=False)
        event_id = await _create_item("lamp")
        repo = await container.outbox_repository()
        stored = await repo.get(event_id)
        assert stored is not None and stored.json() == {"name": "lamp"}
        # The facade joins a caller's transaction too: rollback leaves nothing.
        outbox: Outbox = await container.outbox()
        pool = await container.pool()
        async with pool.acquire() as conn, conn.cursor() as cursor:
            transaction = await cursor.begin()
            rolled = await outbox.enqueue(cursor, models.Message("item", "2", "item.created", {}))
            await transaction.rollback()
        assert await repo.get(rolled) is None
        # A web process started only the pool: no publisher task is running.
        assert container.publisher_task.initialized is False
    finally:
        await stop(container)
        container.unwire()


@inject
async def _create_item(name: str, outbox: Outbox = Provide[OutboxContainer.outbox]) -> Any:
    return await outbox.enqueue(models.Message("item", name, "item.created", {"name": name}))


async def test_override_publisher_and_run_the_workers(outbox_schema: str, outbox_dsn: str) -> None:
    container = OutboxContainer(config=_mapping(outbox_schema, outbox_dsn))
    fake = base.InMemoryPublisher()
    container.publisher.override(fake)
    try:
        await start(container)
        relay = await container.publisher_task()
        assert isinstance(relay, PublisherTask) and relay.running
        outbox = await container.outbox()
        ids = await outbox.enqueue_many(
            [models.Message("item", str(n), "item.created", {"n": n}) for n in range(20)]
        )
        for _ in range(500):
            if len(fake.published) == 20:
                break
            await asyncio.sleep(0.01)
        assert sorted(e.event_id for e in fake.published) == sorted(ids)
    finally:
        await stop(container)
        container.publisher.reset_override()
    assert not relay.running


async def test_publisher_disabled_starts_no_task(outbox_schema: str, outbox_dsn: str) -> None:
    container = OutboxContainer(config=_mapping(outbox_schema, outbox_dsn, enabled=False))
    container.publisher.override(base.InMemoryPublisher())
    try:
        await start(container)
        assert await container.publisher_task() is None
    finally:
        await stop(container)


async def test_inbox_enabled_without_handlers_fails_at_start(
    outbox_schema: str, outbox_dsn: str
) -> None:
    mapping = _mapping(outbox_schema, outbox_dsn, enabled=False)
    mapping["inbox"] = {"enabled": True, "subscription": "projects/proj/subscriptions/orders"}
    container = OutboxContainer(config=mapping)
    try:
        with pytest.raises(errors.ConfigError, match="no handler is registered"):
            await container.inbox_worker.init()
    finally:
        await stop(container)


async def test_round_trip_through_the_container(
    outbox_schema: str, outbox_dsn: str, pubsub_emulator: EmulatorEndpoint
) -> None:
    """One container relays its outbox to a topic and receives that topic's subscription into
    its own inbox, where the registered handlers run: every provider of a worker process."""
    seen: list[models.InboxEvent] = []
    handlers = InboxHandlers()

    @handlers.on("item.created")
    async def record(event: models.InboxEvent) -> None:
        seen.append(event)

    async with pubsub_testing.temporary_topic(
        pubsub_emulator.host, "outbox-di-container", prefix="container"
    ) as made:
        mapping = _mapping(outbox_schema, outbox_dsn, topic=made.name)
        mapping["pubsub"] = {"project": made.project, "emulator_host": pubsub_emulator.host}
        mapping["inbox"] = {"enabled": True, "subscription": made.name, "consumer": "catalog"}
        container = OutboxContainer(config=mapping, inbox_handlers=handlers)
        try:
            await start(container)
            assert isinstance(await container.inbox_receiver(), InboxReceiver)
            worker = await container.inbox_worker()
            assert isinstance(worker, InboxWorker) and worker.running
            outbox: Outbox = await container.outbox()
            ids = await outbox.enqueue_many(
                [models.Message("item", str(n), "item.created", {"n": n}) for n in range(10)]
            )
            for _ in range(1000):
                if len(seen) >= 10:
                    break
                await asyncio.sleep(0.01)
        finally:
            await stop(container)
        assert not worker.running
    assert sorted(event.event_id for event in seen) == sorted(str(i) for i in ids)
    assert all(event.consumer == "catalog" for event in seen)
