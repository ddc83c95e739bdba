"""The container's configuration as services give it and tests override it: OUTBOX_* variables
win however the settings were built, and ``override_config`` revalidates and resets."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from outbox_di import config, errors, models
from outbox_di.containers import OutboxContainer, start, stop
from outbox_di.testing import postgres

pytestmark = pytest.mark.integration


def _mapping(schema: str, dsn: str) -> dict[str, Any]:
    return {
        "schema": schema,
        "dsn": dsn,
        "pool": {"min_size": 1, "max_size": 2},
        "publisher": {"topic": "events"},
    }


def _service_settings(tmp_path: Path, schema: str, dsn: str) -> Any:
    """A service's own Dynaconf object, as the service builds it (not through outbox_di)."""
    from dynaconf import Dynaconf

    toml = tmp_path / "settings.toml"
    toml.write_text(
        f'[outbox]\nschema = "{schema}"\ndsn = "{dsn}"\n'
        '[outbox.publisher]\ntopic = "events"\nbatch_size = 250\n'
    )
    return Dynaconf(settings_files=[str(toml)], environments=False)


def test_outbox_variables_win_over_a_dynaconf_section_the_service_built(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    service_settings = _service_settings(tmp_path, "orders", "postgresql://file/db")
    monkeypatch.setenv("OUTBOX_DSN", "postgresql://secret@vault/db")
    monkeypatch.setenv("OUTBOX_PUBLISHER__BATCH_SIZE", "40")
    container = OutboxContainer(config=service_settings.outbox)
    resolved = container.settings()
    assert resolved.dsn == "postgresql://secret@vault/db"
    assert resolved.publisher.batch_size == 40
    assert resolved.publisher.topic == "events"


def test_outbox_variables_win_over_a_dict_and_over_an_outbox_config(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OUTBOX_SCHEMA", "from_env")
    from_dict = OutboxContainer(config=_mapping("orders", "postgresql://x/y"))
    assert from_dict.settings().schema == "from_env"
    built = config.OutboxConfig.from_mapping(_mapping("orders", "postgresql://x/y"))
    from_object = OutboxContainer(config=built)
    assert from_object.settings().schema == "from_env"
    assert from_object.settings().publisher == built.publisher


def test_a_misspelt_variable_is_an_error_not_ignored(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OUTBOX_DNS", "postgresql://x/y")
    with pytest.raises(errors.ConfigError, match="OUTBOX_DNS: 'dns' is not an outbox setting"):
        OutboxContainer(config=_mapping("orders", "postgresql://x/y"))


def test_the_test_kits_variable_is_not_taken_for_a_setting(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OUTBOX_TEST_DSN", "postgresql://elsewhere/db")
    container = OutboxContainer(config=_mapping("orders", "postgresql://x/y"))
    assert container.settings().dsn == "postgresql://x/y"


def test_override_config_revalidates_resets_and_restores(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OUTBOX_SCHEMA", "from_env")
    container = OutboxContainer(config=_mapping("orders", "postgresql://x/y"))
    assert container.settings().schema == "from_env"

    with container.override_config(schema="orders_test", publisher={"batch_size": 10}) as inside:
        # Overrides win over the environment, and what was built on the old settings is rebuilt.
        assert inside.schema == "orders_test"
        assert container.settings().publisher.batch_size == 10
        assert container.settings().publisher.topic == "events"  # merged, not replaced

    assert container.settings().schema == "from_env"


def test_a_bad_override_fails_at_once_and_changes_nothing() -> None:
    container = OutboxContainer(config=_mapping("orders", "postgresql://x/y"))
    with (
        pytest.raises(errors.ConfigError, match=r"publisher\.batch_size"),
        container.override_config({"publisher": {"batch_size": 0}}),
    ):
        pass  # pragma: no cover - the override raises before the block
    assert container.settings().publisher.batch_size != 0
    assert container.config()["schema"] == "orders"


def test_reset_override_keeps_the_constructor_configuration() -> None:
    container = OutboxContainer(config=_mapping("orders", "postgresql://x/y"))
    container.config.override({**_mapping("other", "postgresql://x/y")})
    container.config.reset_override()
    container.settings.reset()
    assert container.settings().schema == "orders"


async def test_start_picks_up_a_plain_config_override(outbox_schema: str, outbox_dsn: str) -> None:
    container = OutboxContainer(config=_mapping("not_migrated", outbox_dsn))
    assert container.settings().schema == "not_migrated"
    # The dependency-injector idiom, without resetting anything by hand.
    container.config.override(_mapping(outbox_schema, outbox_dsn))
    await start(container, workers=False)
    try:
        outbox = await container.outbox()
        event_id = await outbox.enqueue(models.Message("order", "o-1", "order.created", {}))
        assert outbox.repository.schema == outbox_schema
        assert await outbox.repository.count_pending() == 1
        assert event_id
    finally:
        await stop(container)


async def test_override_config_rebuilds_what_was_built_on_the_old_settings(
    outbox_schema: str, outbox_dsn: str
) -> None:
    container = OutboxContainer(config=_mapping(outbox_schema, outbox_dsn))
    await start(container, workers=False)
    try:
        assert (await container.outbox()).repository.schema == outbox_schema
    finally:
        await stop(container)
    with (
        postgres.migrated_schema(outbox_dsn, "other") as other,
        container.override_config(schema=other),
    ):
        await start(container, workers=False)
        try:
            outbox = await container.outbox()
            await outbox.enqueue(models.Message("order", "o-2", "order.created", {}))
            assert outbox.repository.schema == other
            assert await outbox.repository.count_pending() == 1
        finally:
            await stop(container)


async def test_override_config_is_refused_while_running(
    outbox_schema: str, outbox_dsn: str
) -> None:
    container = OutboxContainer(config=_mapping(outbox_schema, outbox_dsn))
    await start(container, workers=False)
    try:
        with (
            pytest.raises(errors.OutboxError, match="the container is running"),
            container.override_config(schema="elsewhere"),
        ):
            pass  # pragma: no cover
    finally:
        await stop(container)
