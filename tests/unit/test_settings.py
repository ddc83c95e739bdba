"""Unit tests of the dynaconf loader: files in a temporary directory, variables via monkeypatch."""

from __future__ import annotations

import os
import pathlib
from collections.abc import Iterator
from typing import Any

import pytest

from outbox_di import config, errors, settings

SETTINGS_TOML = """\
debug = true
dsn = "postgresql://not-ours"

[publisher]
batch_size = 1

[outbox]
schema = "app"
dsn = "postgresql://localhost/app"

[outbox.publisher]
topic = "orders"
batch_size = 200
tick_interval = "500ms"

[outbox.publisher.backoff]
initial = "2s"

[outbox.publisher.topics]
OrderCreated = "orders-created"
"""


@pytest.fixture(autouse=True)
def isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: pathlib.Path) -> Iterator[pathlib.Path]:
    """Run in an empty directory with no outbox or dynaconf variables from the outer environment."""
    for name in list(os.environ):
        if name.startswith(("OUTBOX_", "MYAPP_", "DYNACONF_")) or name.endswith("_FOR_DYNACONF"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    yield tmp_path


def write(path: pathlib.Path, text: str) -> pathlib.Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def assert_plain(value: Any) -> None:
    """Only dicts, lists and scalars: nothing of dynaconf's leaks out."""
    if isinstance(value, dict):
        for key, item in value.items():
            assert type(key) is str
            assert_plain(item)
    elif isinstance(value, list):
        for item in value:
            assert_plain(item)
    else:
        assert value is None or type(value) in {str, int, float, bool}, type(value)


# --- files -----------------------------------------------------------------------------------


def test_reads_only_the_outbox_section_of_settings_toml(isolated: pathlib.Path) -> None:
    write(isolated / "settings.toml", SETTINGS_TOML)
    data = settings.load_mapping()
    assert data == {
        "schema": "app",
        "dsn": "postgresql://localhost/app",
        "publisher": {
            "topic": "orders",
            "batch_size": 200,
            "tick_interval": "500ms",
            "backoff": {"initial": "2s"},
            "topics": {"OrderCreated": "orders-created"},
        },
    }
    assert_plain(data)


def test_secrets_file_merges_into_the_section(isolated: pathlib.Path) -> None:
    write(isolated / "settings.toml", SETTINGS_TOML)
    write(isolated / ".secrets.toml", '[outbox]\ndsn = "postgresql://user:secret@db/app"\n')
    data = settings.load_mapping()
    assert data["dsn"] == "postgresql://user:secret@db/app"
    assert data["schema"] == "app"
    assert data["publisher"]["batch_size"] == 200


def test_no_files_gives_an_empty_mapping() -> None:
    assert settings.load_mapping() == {}


def test_explicit_files_replace_the_defaults(isolated: pathlib.Path) -> None:
    write(isolated / "settings.toml", SETTINGS_TOML)
    other = write(isolated / "conf" / "outbox.toml", '[outbox]\nschema = "other"\n')
    assert settings.load_mapping([other]) == {"schema": "other"}
    assert settings.load_mapping([str(other)]) == {"schema": "other"}


def test_a_missing_explicit_file_is_an_error(isolated: pathlib.Path) -> None:
    with pytest.raises(errors.ConfigError) as caught:
        settings.load_mapping([isolated / "nope.toml"])
    (problem,) = caught.value.problems
    assert problem.startswith("settings_files: no such file:")
    assert "nope.toml" in problem


def test_files_named_by_the_environment_are_read_too(
    isolated: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write(isolated / "settings.toml", SETTINGS_TOML)
    extra = write(isolated / "deploy" / "prod.toml", "[outbox.publisher]\nworkers = 4\n")
    monkeypatch.setenv("OUTBOX_SETTINGS_FILES", f" {extra} , ")
    data = settings.load_mapping()
    assert data["publisher"]["workers"] == 4
    assert data["publisher"]["batch_size"] == 200


def test_a_missing_file_named_by_the_environment_is_an_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OUTBOX_SETTINGS_FILES", "missing.toml")
    with pytest.raises(errors.ConfigError) as caught:
        settings.load_mapping()
    assert caught.value.problems == ("OUTBOX_SETTINGS_FILES: no such file: 'missing.toml'",)


def test_a_section_that_is_not_a_table_is_an_error(isolated: pathlib.Path) -> None:
    write(isolated / "settings.toml", 'outbox = "postgresql://x"\n')
    with pytest.raises(errors.ConfigError) as caught:
        settings.load_mapping()
    assert caught.value.problems == ("outbox: must be a table in the settings files, got str",)


# --- environment variables -------------------------------------------------------------------


def test_environment_wins_over_the_file(
    isolated: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write(isolated / "settings.toml", SETTINGS_TOML)
    monkeypatch.setenv("OUTBOX_PUBLISHER__BATCH_SIZE", "100")
    monkeypatch.setenv("OUTBOX_PUBLISHER__NOTIFY", "false")
    monkeypatch.setenv("OUTBOX_PUBLISHER__BACKOFF__MAX", "10m")
    monkeypatch.setenv("OUTBOX_PUBLISHER__TOPICS__InvoiceSent", "invoices")
    monkeypatch.setenv("OUTBOX_SCHEMA", "from_env")
    data = settings.load_mapping()
    assert data["schema"] == "from_env"
    publisher = data["publisher"]
    assert publisher["batch_size"] == 100  # parsed to an int by dynaconf
    assert publisher["notify"] is False
    # Deep merge: the file's other keys in the same tables survive.
    assert publisher["tick_interval"] == "500ms"
    assert publisher["backoff"] == {"initial": "2s", "max": "10m"}
    assert publisher["topics"] == {"OrderCreated": "orders-created", "InvoiceSent": "invoices"}
    assert_plain(data)


def test_environment_alone_is_enough(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OUTBOX_SCHEMA", "app")
    monkeypatch.setenv("OUTBOX_DSN", "postgresql://user@db:5432/app?sslmode=disable")
    monkeypatch.setenv("OUTBOX_PUBLISHER", '{topic = "orders", workers = 3}')
    monkeypatch.setenv("OUTBOX_INBOX__ENABLED", "true")
    assert settings.load_mapping() == {
        "schema": "app",
        "dsn": "postgresql://user@db:5432/app?sslmode=disable",
        "publisher": {"topic": "orders", "workers": 3},
        "inbox": {"enabled": True},
    }


def test_routing_keys_keep_their_dots_and_case(
    isolated: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write(isolated / "settings.toml", '[outbox.publisher.topics]\n"item.created" = "items"\n')
    monkeypatch.setenv("OUTBOX_PUBLISHER__TOPICS", '{"Item.Deleted" = "items-gone"}')
    monkeypatch.setenv("OUTBOX_INBOX__CONSUMER", '"2024"')  # quoted: a string, not an int
    data = settings.load_mapping()
    assert data["publisher"]["topics"] == {"item.created": "items", "Item.Deleted": "items-gone"}
    assert data["inbox"]["consumer"] == "2024"


def test_unknown_variable_names_the_closest_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OUTBOX_PUBLISHR__BATCH_SIZE", "100")
    monkeypatch.setenv("OUTBOX_ZZZ", "1")
    with pytest.raises(errors.ConfigError) as caught:
        settings.load_mapping()
    assert caught.value.problems == (
        "OUTBOX_PUBLISHR__BATCH_SIZE: 'publishr' is not an outbox setting; "
        "did you mean 'publisher' (OUTBOX_PUBLISHER__BATCH_SIZE)?",
        "OUTBOX_ZZZ: 'zzz' is not an outbox setting; "
        "settings are: schema, dsn, schemas, run_workers, broker, pool, pubsub, rabbitmq, nats, "
        "redis, publisher, inbox, "
        "retention",
    )


def test_custom_section_and_prefix(isolated: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write(isolated / "settings.toml", '[messaging]\nschema = "msg"\n[outbox]\nschema = "no"\n')
    monkeypatch.setenv("MYAPP_POOL__MAX_SIZE", "3")
    monkeypatch.setenv("OUTBOX_NOT_OURS_NOW", "1")  # another prefix: ignored
    data = settings.load_mapping(section="messaging", env_prefix="MYAPP")
    assert data == {"schema": "msg", "pool": {"max_size": 3}}


# --- dynaconf's own switches -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("SETTINGS_FILE_FOR_DYNACONF", "elsewhere.toml"),
        ("ENVIRONMENTS_FOR_DYNACONF", "true"),
        ("ENVVAR_PREFIX_FOR_DYNACONF", "OTHER"),
        ("MERGE_ENABLED_FOR_DYNACONF", "false"),
        ("INCLUDES_FOR_DYNACONF", "elsewhere.toml"),
        ("IGNORE_UNKNOWN_ENVVARS_FOR_DYNACONF", "true"),
    ],
)
def test_a_dynaconf_switch_that_overrides_our_options_is_an_error(
    isolated: pathlib.Path, monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    write(isolated / "settings.toml", SETTINGS_TOML)
    write(isolated / "elsewhere.toml", '[outbox]\nschema = "hijacked"\n')
    monkeypatch.setenv(name, value)
    with pytest.raises(errors.ConfigError) as caught:
        settings.load_mapping()
    assert caught.value.problems[0].startswith(f"{name}: set in the environment")


def test_a_dynaconf_switch_that_agrees_with_our_options_is_fine(
    isolated: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write(isolated / "settings.toml", SETTINGS_TOML)
    monkeypatch.setenv("MERGE_ENABLED_FOR_DYNACONF", "true")
    monkeypatch.setenv("ENVIRONMENTS_FOR_DYNACONF", "false")
    assert settings.load_mapping()["schema"] == "app"


# --- load_settings ---------------------------------------------------------------------------


def test_load_settings_returns_a_checked_config(
    isolated: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write(isolated / "settings.toml", SETTINGS_TOML)
    monkeypatch.setenv("OUTBOX_PUBLISHER__BATCH_SIZE", "100")
    monkeypatch.setenv("OUTBOX_INBOX__ENABLED", "true")
    monkeypatch.setenv("OUTBOX_INBOX__SUBSCRIPTION", "projects/p/subscriptions/app-inbox")
    cfg = settings.load_settings()
    assert isinstance(cfg, config.OutboxConfig)
    assert cfg.publisher.batch_size == 100
    assert cfg.publisher.tick_interval == 0.5
    assert cfg.publisher.backoff.initial == 2.0
    assert cfg.publisher.topics == {"OrderCreated": "orders-created"}
    assert cfg.inbox.enabled is True
    assert cfg.inbox_consumer == "app"
    cfg.validate()


def test_load_settings_reports_problems_with_key_paths(
    isolated: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write(isolated / "settings.toml", SETTINGS_TOML)
    monkeypatch.setenv("OUTBOX_PUBLISHER__BATCH_SIZE", "5000")
    monkeypatch.setenv("OUTBOX_PUBLISHER__NOTIFY", '"false"')  # quoted: stays a string
    with pytest.raises(errors.ConfigError) as caught:
        settings.load_settings()
    assert caught.value.problems == (
        "publisher.notify: must be true or false, got the string 'false' "
        "(write true or false without quotes)",
        "publisher.batch_size: must be between 1 and 1000, got 5000",
    )


def test_load_settings_without_any_settings_says_what_is_required() -> None:
    with pytest.raises(errors.ConfigError) as caught:
        settings.load_settings()
    paths = [problem.split(":", 1)[0] for problem in caught.value.problems]
    assert paths == ["schema", "dsn", "publisher.topic"]
