"""Unit tests of the config tree: defaults, conversions, every rule, and the problem messages."""

from __future__ import annotations

import copy
import dataclasses
import json
import types
from collections.abc import Iterator, Mapping
from typing import Any

import pytest

from outbox_di import config, errors

MINIMAL: dict[str, Any] = {"schema": "app", "dsn": "postgresql://localhost/app"}
VALID: dict[str, Any] = {**MINIMAL, "publisher": {"topic": "orders"}}


def with_value(path: str, value: Any, base: Mapping[str, Any] = VALID) -> dict[str, Any]:
    """A deep copy of ``base`` with the dotted ``path`` set to ``value``."""
    data = copy.deepcopy(dict(base))
    *parents, last = path.split(".")
    node = data
    for key in parents:
        node = node.setdefault(key, {})
    node[last] = value
    return data


def problems_of(data: Any) -> tuple[str, ...]:
    with pytest.raises(errors.ConfigError) as caught:
        config.OutboxConfig.from_mapping(data)
    return caught.value.problems


def problems_at(data: Any, path: str) -> list[str]:
    return [problem for problem in problems_of(data) if problem.startswith(f"{path}:")]


# --- defaults --------------------------------------------------------------------------------


def test_defaults_match_the_documented_tree() -> None:
    cfg = config.OutboxConfig.from_mapping(VALID)
    assert cfg.schema == "app"
    assert cfg.dsn == "postgresql://localhost/app"
    assert cfg.run_workers is True
    assert cfg.pool == config.PoolConfig(min_size=1, max_size=10, connect_timeout=10.0)
    assert cfg.pubsub == config.PubSubConfig(project=None, emulator_host=None, connect_timeout=10.0)
    assert cfg.publisher == config.PublisherConfig(
        enabled=True,
        topic="orders",
        topics={},
        batch_size=500,
        workers=2,
        tick_interval=1.0,
        notify=True,
        lock_ttl=30.0,
        backoff=config.BackoffConfig(initial=1.0, max=300.0, multiplier=2.0, jitter=0.2),
        max_attempts=10,
        ordering=False,
        publish_timeout=10.0,
        shutdown_timeout=10.0,
        metrics_enabled=True,
    )
    assert cfg.inbox == config.InboxConfig(
        enabled=False,
        consumer=None,
        subscription=None,
        batch_size=100,
        workers=2,
        lock_ttl=30.0,
        max_attempts=10,
        retry_delay=1.0,
        handler_timeout=10.0,
        retention=7 * 24 * 3600.0,
        max_messages=1000,
        max_bytes=100 * 1024 * 1024,
        metrics_enabled=True,
    )


def test_defaults_need_only_schema_dsn_and_a_topic() -> None:
    problems = problems_of({})
    assert problems == (
        "schema: required (the PostgreSQL schema that holds the outbox tables)",
        "dsn: required (a libpq URI or key=value connection string)",
        "publisher.topic: required when publisher.enabled is true (or give publisher.topics)",
    )


def test_configs_are_frozen_and_hashable() -> None:
    cfg = config.OutboxConfig.from_mapping(with_value("publisher.topics", {"A": "t-a"}))
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.schema = "other"  # type: ignore[misc]
    assert hash(cfg) == hash(config.OutboxConfig.from_mapping(cfg.to_dict()))


def test_consumer_defaults_to_the_schema() -> None:
    cfg = config.OutboxConfig.from_mapping(VALID)
    assert cfg.inbox.consumer is None
    assert cfg.inbox_consumer == "app"
    assert cfg.inbox.consumer_name("other") == "other"
    named = config.OutboxConfig.from_mapping(with_value("inbox.consumer", "billing"))
    assert named.inbox_consumer == "billing"


# --- durations -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        (30, 30.0),
        (1.5, 1.5),
        (0, 0.0),
        ("30", 30.0),
        ("0.25", 0.25),
        ("500ms", 0.5),
        ("2s", 2.0),
        ("1.5s", 1.5),
        ("5m", 300.0),
        ("2h", 7200.0),
        ("7d", 604800.0),
        (" 30s ", 30.0),
        ("-5s", -5.0),
    ],
)
def test_parse_duration_accepts(value: object, seconds: float) -> None:
    assert config.parse_duration(value, "publisher.lock_ttl") == pytest.approx(seconds)


@pytest.mark.parametrize(
    "value",
    [True, None, "", "s", "5x", "5 sec", "1h30m", "7 days", "5S", "nan", float("inf"), [1], {}],
)
def test_parse_duration_rejects(value: object) -> None:
    with pytest.raises(ValueError, match=r"^publisher\.lock_ttl: must be a duration") as caught:
        config.parse_duration(value, "publisher.lock_ttl")
    message = str(caught.value)
    assert "'500ms'" in message
    assert "'7d'" in message


def test_durations_are_float_seconds_in_the_config() -> None:
    data = with_value("publisher.tick_interval", "500ms")
    data = with_value("inbox.retention", "2d", data)
    data = with_value("pool.connect_timeout", 3, data)
    cfg = config.OutboxConfig.from_mapping(data)
    assert cfg.publisher.tick_interval == 0.5
    assert cfg.inbox.retention == 172800.0
    assert cfg.pool.connect_timeout == 3.0
    assert isinstance(cfg.pool.connect_timeout, float)


def test_a_bad_duration_is_reported_with_its_key() -> None:
    assert problems_at(with_value("inbox.retention", "a week"), "inbox.retention") == [
        "inbox.retention: must be a duration: seconds as a number (30, 1.5) or a string with a "
        "unit ms, s, m, h or d ('500ms', '30s', '1.5s', '5m', '2h', '7d'); got the string 'a week'"
    ]


# --- range rules -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        ("schema", "Orders", "1-63 lower-case letters, digits and underscores"),
        ("schema", "1st", "1-63 lower-case letters, digits and underscores"),
        ("schema", "a" * 64, "1-63 lower-case letters, digits and underscores"),
        ("schema", "", "1-63 lower-case letters, digits and underscores"),
        ("schema", "pg_app", "reserved"),
        ("dsn", "  ", "must not be empty"),
        ("pool.min_size", -1, "must be at least 0, got -1"),
        ("pool.max_size", 0, "must be at least 1, got 0"),
        ("pool.connect_timeout", 0, "must be greater than 0, got 0.0"),
        ("pubsub.project", "", "must not be empty"),
        ("pubsub.emulator_host", "http://localhost:8085", "must be host:port"),
        ("pubsub.emulator_host", "localhost", "must be host:port"),
        ("pubsub.connect_timeout", 0, "must be greater than 0, got 0.0"),
        ("pubsub.connect_timeout", "-2s", "must be greater than 0, got -2.0"),
        ("publisher.topic", "ab", "must be a topic name"),
        ("publisher.topic", "1orders", "must be a topic name"),
        ("publisher.topic", "orders events", "must be a topic name"),
        ("publisher.topic", "projects/p/subscriptions/orders", "must be a topic name"),
        ("publisher.batch_size", 0, "must be between 1 and 1000, got 0"),
        ("publisher.batch_size", 5000, "must be between 1 and 1000, got 5000"),
        ("publisher.workers", 0, "must be at least 1, got 0"),
        ("publisher.tick_interval", 0, "must be greater than 0, got 0.0"),
        ("publisher.lock_ttl", "-1s", "must be greater than 0, got -1.0"),
        ("publisher.backoff.initial", 0, "must be greater than 0, got 0.0"),
        ("publisher.backoff.max", 0, "must be greater than 0, got 0.0"),
        ("publisher.backoff.multiplier", 0.5, "must be at least 1.0, got 0.5"),
        ("publisher.backoff.jitter", 1.5, "must be a fraction between 0 and 1, got 1.5"),
        ("publisher.backoff.jitter", -0.1, "must be a fraction between 0 and 1, got -0.1"),
        ("publisher.max_attempts", 0, "must be at least 1, got 0"),
        ("publisher.publish_timeout", 0, "must be greater than 0, got 0.0"),
        ("publisher.shutdown_timeout", "0s", "must be greater than 0, got 0.0"),
        ("inbox.consumer", "", "must not be empty"),
        ("inbox.subscription", "s", "must be a subscription name"),
        ("inbox.subscription", "projects/p/topics/orders", "must be a subscription name"),
        ("inbox.batch_size", 0, "must be between 1 and 1000, got 0"),
        ("inbox.batch_size", 1001, "must be between 1 and 1000, got 1001"),
        ("inbox.workers", 0, "must be at least 1, got 0"),
        ("inbox.lock_ttl", 0, "must be greater than 0, got 0.0"),
        ("inbox.max_attempts", 0, "must be at least 1, got 0"),
        ("inbox.retry_delay", -1, "must be at least 0.0, got -1.0"),
        ("inbox.handler_timeout", 0, "must be greater than 0, got 0.0"),
        ("inbox.retention", 0, "must be greater than 0, got 0.0"),
        ("inbox.max_messages", 0, "must be at least 1, got 0"),
        ("inbox.max_bytes", 0, "must be at least 1, got 0"),
    ],
)
def test_range_rules(path: str, value: object, message: str) -> None:
    found = problems_at(with_value(path, value), path)
    assert any(message in problem for problem in found), found


@pytest.mark.parametrize(
    ("path", "value"),
    [
        ("schema", "_x"),
        ("schema", "a" * 63),
        ("pool.min_size", 0),
        ("pool.max_size", 1),
        ("pubsub.project", "my-project"),
        ("pubsub.emulator_host", "localhost:8085"),
        ("pubsub.emulator_host", "[::1]:8085"),
        ("publisher.topic", "abc"),
        ("publisher.topic", "projects/my-project/topics/orders.v1~x%2B+y-z_"),
        ("publisher.batch_size", 1),
        ("publisher.batch_size", 1000),
        ("publisher.backoff.multiplier", 1),
        ("publisher.backoff.jitter", 0),
        ("publisher.backoff.jitter", 1),
        ("inbox.retry_delay", 0),
        ("inbox.subscription", "projects/p/subscriptions/orders-sub"),
    ],
)
def test_boundary_values_are_accepted(path: str, value: object) -> None:
    config.OutboxConfig.from_mapping(with_value(path, value))


# --- types -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        ("publisher.notify", "false", "must be true or false, got the string 'false' (write true"),
        ("publisher.notify", "TRUE", "(write true or false without quotes)"),
        ("run_workers", 1, "must be true or false, got 1"),
        ("inbox.enabled", "yes", "must be true or false, got the string 'yes'"),
        ("publisher.batch_size", True, "must be an integer, got the boolean true"),
        ("publisher.batch_size", 1.5, "must be an integer, got 1.5"),
        ("publisher.batch_size", "100", "must be an integer, got the string '100'"),
        ("publisher.batch_size", None, "must be an integer, got null"),
        ("publisher.backoff.jitter", "0.2", "must be a finite number, got the string '0.2'"),
        ("publisher.backoff.multiplier", False, "must be a finite number, got the boolean false"),
        ("publisher.backoff.multiplier", float("inf"), "must be a finite number, got inf"),
        ("schema", 5, "must be a string, got 5"),
        ("dsn", ["a"], "must be a string, got a list"),
        ("publisher.topic", {"a": 1}, "must be a string, got a table"),
        ("publisher.topics", "orders", "must be a table of routing key = topic"),
        ("publisher", 5, "must be a table of settings, got 5"),
        ("publisher.backoff", "fast", "must be a table of settings, got the string 'fast'"),
    ],
)
def test_type_errors(path: str, value: object, message: str) -> None:
    found = problems_at(with_value(path, value), path)
    assert any(message in problem for problem in found), found


def test_whole_floats_are_accepted_as_ints() -> None:
    cfg = config.OutboxConfig.from_mapping(with_value("publisher.batch_size", 100.0))
    assert cfg.publisher.batch_size == 100
    assert type(cfg.publisher.batch_size) is int


def test_null_is_fine_for_optional_keys() -> None:
    data = with_value("publisher.topic", None)
    data = with_value("publisher.topics", {"OrderCreated": "orders"}, data)
    data = with_value("pubsub.project", None, data)
    data = with_value("inbox.consumer", None, data)
    cfg = config.OutboxConfig.from_mapping(data)
    assert cfg.publisher.topic is None
    assert cfg.pubsub.project is None


def test_topics_report_every_bad_entry() -> None:
    data = with_value("publisher.topics", {"A": "x y", "B": 3, "C": "fine-topic", "": "orders"})
    problems = problems_of(data)
    assert any(p.startswith("publisher.topics.A: must be a topic name") for p in problems)
    assert "publisher.topics.B: must be a topic string, got 3" in problems
    assert any(p.startswith("publisher.topics: routing keys must be non-empty") for p in problems)
    assert not any(p.startswith("publisher.topics.C") for p in problems)


def test_a_bad_section_does_not_cause_knock_on_problems() -> None:
    # publisher falls back to its defaults, whose missing topic is not worth reporting too.
    assert problems_of(with_value("publisher", 5)) == (
        "publisher: must be a table of settings, got 5",
    )


# --- unknown keys ----------------------------------------------------------------------------


def test_unknown_top_level_key_names_the_closest() -> None:
    assert problems_of(with_value("schemaa", "x")) == (
        "schemaa: unknown key; did you mean 'schema'?",
    )


def test_unknown_nested_key_names_the_closest() -> None:
    assert problems_of(with_value("publisher.batchsize", 100)) == (
        "publisher.batchsize: unknown key; did you mean 'batch_size'?",
    )
    assert problems_of(with_value("publisher.backoff.maximum", 100)) == (
        "publisher.backoff.maximum: unknown key; did you mean 'max'?",
    )


def test_unknown_key_with_nothing_close_lists_the_valid_keys() -> None:
    assert problems_of(with_value("pool.zzz", 1)) == (
        "pool.zzz: unknown key; valid keys here: min_size, max_size, connect_timeout, idle_timeout",
    )


def test_keys_that_are_not_strings_are_reported() -> None:
    data: dict[Any, Any] = {**VALID, 3: "x"}
    assert problems_of(data) == ("<root>.3: keys must be strings",)


# --- many problems at once -------------------------------------------------------------------


def test_every_problem_is_reported_in_one_error() -> None:
    data = {
        "Schema": "Bad-Name",
        "pool": {"min_size": 5, "max_size": 2},
        "pubsub": {"emulator_host": "nohost"},
        "publisher": {
            "batchsize": 3,
            "batch_size": 5000,
            "notify": "false",
            "lock_ttl": "5s",
            "backoff": {"initial": "10s", "max": "1s", "jitter": 2},
        },
        "inbox": {"enabled": True, "retention": "7 days"},
        "extra": 1,
    }
    with pytest.raises(errors.ConfigError) as caught:
        config.OutboxConfig.from_mapping(data)
    paths = [problem.split(":", 1)[0] for problem in caught.value.problems]
    assert sorted(paths) == sorted(
        [
            "extra",
            "schema",
            "dsn",
            "pool.max_size",
            "pubsub.emulator_host",
            "publisher.batchsize",
            "publisher.batch_size",
            "publisher.notify",
            "publisher.lock_ttl",
            "publisher.topic",
            "publisher.backoff.max",
            "publisher.backoff.jitter",
            "inbox.retention",
            "inbox.subscription",
        ]
    )
    message = str(caught.value)
    assert message.startswith("invalid outbox configuration (14 problem(s)):")
    assert "  - publisher.batch_size: must be between 1 and 1000, got 5000" in message
    assert isinstance(caught.value, ValueError)


# --- cross-field rules -----------------------------------------------------------------------


def test_enabled_publisher_needs_a_topic() -> None:
    assert problems_of(MINIMAL) == (
        "publisher.topic: required when publisher.enabled is true (or give publisher.topics)",
    )
    routed = config.OutboxConfig.from_mapping(
        with_value("publisher.topics", {"OrderCreated": "orders"}, MINIMAL)
    )
    assert routed.publisher.topics == {"OrderCreated": "orders"}
    disabled = config.OutboxConfig.from_mapping(with_value("publisher.enabled", False, MINIMAL))
    assert disabled.publisher.topic is None


def test_pool_max_size_must_cover_min_size() -> None:
    data = with_value("pool.min_size", 5, with_value("pool.max_size", 4))
    assert problems_of(data) == ("pool.max_size: must be at least pool.min_size (5), got 4",)
    config.OutboxConfig.from_mapping(with_value("pool.min_size", 4, with_value("pool.max_size", 4)))


@pytest.mark.parametrize("lock_ttl", ["10s", "5s"])
def test_publisher_lease_must_outlive_a_publish(lock_ttl: str) -> None:
    data = with_value("publisher.lock_ttl", lock_ttl)
    (problem,) = problems_of(data)
    assert problem.startswith(
        "publisher.lock_ttl: must be greater than publisher.publish_timeout (10.0)"
    )
    config.OutboxConfig.from_mapping(with_value("publisher.lock_ttl", "10.5s"))


@pytest.mark.parametrize("lock_ttl", ["10s", "2s"])
def test_inbox_lease_must_outlive_a_handler_run(lock_ttl: str) -> None:
    data = with_value("inbox.lock_ttl", lock_ttl)
    (problem,) = problems_of(data)
    assert problem.startswith("inbox.lock_ttl: must be greater than inbox.handler_timeout (10.0)")
    config.OutboxConfig.from_mapping(with_value("inbox.lock_ttl", "11s"))


def test_backoff_cap_must_cover_the_first_delay() -> None:
    data = with_value("publisher.backoff", {"initial": "1m", "max": "30s"})
    assert problems_of(data) == (
        "publisher.backoff.max: must be at least publisher.backoff.initial (60.0), got 30.0",
    )


def test_enabled_inbox_needs_a_subscription() -> None:
    assert problems_of(with_value("inbox.enabled", True)) == (
        "inbox.subscription: required when inbox.enabled is true",
    )
    data = with_value("inbox", {"enabled": True, "subscription": "orders-sub"})
    assert config.OutboxConfig.from_mapping(data).inbox.subscription == "orders-sub"


@pytest.mark.parametrize(
    ("path", "value"),
    [("publisher.lock_ttl", "soon"), ("publisher.topic", 5), ("inbox.subscription", 5)],
)
def test_a_cross_field_rule_is_skipped_when_its_input_is_invalid(path: str, value: object) -> None:
    data = with_value("inbox.enabled", True, with_value("inbox.subscription", "s-1"))
    problems = problems_of(with_value(path, value, data))
    assert [problem.split(":", 1)[0] for problem in problems] == [path]


# --- validate() on built objects -------------------------------------------------------------


def test_validate_accepts_a_good_config() -> None:
    config.OutboxConfig.from_mapping(VALID).validate()


def test_validate_rechecks_after_replace() -> None:
    cfg = config.OutboxConfig.from_mapping(VALID)
    bad = dataclasses.replace(
        cfg,
        schema="Bad",
        pool=dataclasses.replace(cfg.pool, min_size=20),
        publisher=dataclasses.replace(cfg.publisher, batch_size=0, topic=None),
    )
    with pytest.raises(errors.ConfigError) as caught:
        bad.validate()
    assert [problem.split(":", 1)[0] for problem in caught.value.problems] == [
        "schema",
        "pool.max_size",
        "publisher.batch_size",
        "publisher.topic",
    ]


def test_validate_reports_wrong_types_in_hand_built_objects() -> None:
    two: Any = "2"
    soon: Any = "soon"
    cfg = config.OutboxConfig(
        schema="app",
        dsn="postgresql://localhost/app",
        pool=config.PoolConfig(min_size=two),
        publisher=config.PublisherConfig(topic="orders", lock_ttl=soon),
        inbox=two,
    )
    with pytest.raises(errors.ConfigError) as caught:
        cfg.validate()
    problems = caught.value.problems
    assert [problem.split(":", 1)[0] for problem in problems] == [
        "pool.min_size",
        "publisher.lock_ttl",
        "inbox",
    ]
    assert problems[0] == "pool.min_size: must be an integer, got the string '2'"
    assert problems[1].startswith("publisher.lock_ttl: must be a duration")
    assert problems[2] == "inbox: must be InboxConfig, got the string '2'"


# --- round trip, mappings, case --------------------------------------------------------------


def test_to_dict_round_trips() -> None:
    data = {
        "schema": "billing",
        "dsn": "host=db dbname=billing",
        "run_workers": False,
        "pool": {"min_size": 2, "max_size": 4, "connect_timeout": "3s"},
        "pubsub": {"project": "proj", "emulator_host": "localhost:8085"},
        "publisher": {
            "topic": "projects/proj/topics/billing",
            "topics": {"InvoiceSent": "invoices", "Refund": "projects/p/topics/refunds"},
            "batch_size": 100,
            "tick_interval": "250ms",
            "backoff": {"initial": "2s", "max": "1h", "multiplier": 3, "jitter": 0},
            "ordering": True,
        },
        "inbox": {"enabled": True, "subscription": "billing-sub", "retention": "1d"},
    }
    cfg = config.OutboxConfig.from_mapping(data)
    plain = cfg.to_dict()
    assert json.loads(json.dumps(plain)) == plain  # plain values only
    assert plain["publisher"]["tick_interval"] == 0.25
    assert plain["publisher"]["backoff"]["max"] == 3600.0
    assert type(plain["publisher"]["topics"]) is dict
    assert config.OutboxConfig.from_mapping(plain) == cfg


def test_keys_are_case_insensitive_but_routing_keys_are_kept() -> None:
    data = {
        "SCHEMA": "app",
        "Dsn": "postgresql://x",
        "PUBLISHER": {
            "BATCH_SIZE": 7,
            "Topics": {"OrderCreated": "orders"},
            "BACKOFF": {"MAX": "1m"},
        },
    }
    cfg = config.OutboxConfig.from_mapping(data)
    assert cfg.publisher.batch_size == 7
    assert cfg.publisher.backoff.max == 60.0
    assert cfg.publisher.topics == {"OrderCreated": "orders"}


def test_a_key_given_twice_in_different_case_is_an_error() -> None:
    assert problems_of({**VALID, "SCHEMA": "other"}) == (
        "schema: given twice ('schema' and 'SCHEMA')",
    )


class ReadOnlyMapping(Mapping[str, Any]):
    """A mapping that is not a dict, as dynaconf's Box objects are not."""

    def __init__(self, data: Mapping[str, Any]) -> None:
        self._data = dict(data)

    def __getitem__(self, key: str) -> Any:
        value = self._data[key]
        return ReadOnlyMapping(value) if isinstance(value, Mapping) else value

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)


def test_any_mapping_is_accepted() -> None:
    data = with_value("publisher.backoff", {"max": "2m"})
    cfg = config.OutboxConfig.from_mapping(ReadOnlyMapping(data))
    assert cfg.publisher.backoff.max == 120.0
    assert config.OutboxConfig.from_mapping(types.MappingProxyType(data)) == cfg


def test_a_non_mapping_is_an_error() -> None:
    not_a_mapping: Any = ["schema", "app"]
    assert problems_of(not_a_mapping) == ("<root>: must be a table of settings, got a list",)


# --- helpers for loaders ---------------------------------------------------------------------


def test_closest_key() -> None:
    assert config.closest_key("PUBLISHR", ["schema", "publisher"]) == "publisher"
    assert config.closest_key("zzz", ["schema", "publisher"]) is None


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        (("publisher", "topics"), True),
        (("PUBLISHER", "Topics"), True),
        (("publisher",), False),
        (("publisher", "topic"), False),
        (("publisher", "topics", "OrderCreated"), False),
        (("nothing",), False),
        ((), False),
    ],
)
def test_is_free_form(path: tuple[str, ...], expected: bool) -> None:
    assert config.is_free_form(path) is expected


# --- dsn ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "used"),
    [
        ("postgresql+asyncpg://app:pw@db:5432/app", "postgresql://app:pw@db:5432/app"),
        (
            "postgresql+psycopg2://app@db/app?sslmode=require",
            "postgresql://app@db/app?sslmode=require",
        ),
        ("postgresql+psycopg://app@db/app", "postgresql://app@db/app"),
        ("postgres+asyncpg://app@db/app", "postgres://app@db/app"),
        ("PostgreSQL+AsyncPG://app@db/app", "postgresql://app@db/app"),
        ("  postgresql://app@db/app\n", "postgresql://app@db/app"),
        ("postgresql://app@db/app", "postgresql://app@db/app"),
        ("postgres://app@db/app", "postgres://app@db/app"),
        ("postgresql:///app", "postgresql:///app"),
        ("host=db dbname=app user=app", "host=db dbname=app user=app"),
        ("host=db password='with space'", "host=db password='with space'"),
    ],
)
def test_dsn_takes_urls_and_key_value_strings_and_drops_a_driver_suffix(
    given: str, used: str
) -> None:
    cfg = config.OutboxConfig.from_mapping({**VALID, "dsn": given})
    assert cfg.dsn == used
    assert config.OutboxConfig.from_mapping(cfg.to_dict()).dsn == used


def test_dsn_driver_suffix_is_dropped_in_code_too() -> None:
    cfg = config.OutboxConfig.from_mapping(VALID)
    replaced = dataclasses.replace(cfg, dsn="postgresql+asyncpg://app@db/app")
    replaced.validate()
    assert replaced.dsn == "postgresql://app@db/app"
    assert config.normalize_dsn("mysql+pymysql://app@db/app") == "mysql+pymysql://app@db/app"


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        (
            "mysql://app:pw@db/app",
            "dsn: must be a PostgreSQL connection string, got a mysql:// URL",
        ),
        ("mysql+pymysql://app@db/app", "got a mysql+pymysql:// URL"),
        ("sqlite:///app.db", "got a sqlite:// URL"),
        ("http://db:5432/app", "got a http:// URL"),
        ("db.example.com", 'dsn: not a connection string libpq accepts (missing "=" after'),
        ("postgresql://app@db/app?ssl_mode=on", 'invalid URI query parameter: "ssl_mode"'),
        ("host=db dbname", "dsn: not a connection string libpq accepts"),
    ],
)
def test_dsn_that_postgresql_cannot_take_is_refused_naming_the_key_and_the_forms(
    given: str, expected: str
) -> None:
    (problem,) = problems_at({**VALID, "dsn": given}, "dsn")
    assert expected in problem
    assert "postgresql://user@host:5432/dbname" in problem
    assert "host=db port=5432 dbname=app user=app" in problem


@pytest.mark.parametrize(
    "given",
    [
        "host=db password=s3cr3t and-more",
        "postgresql://app:s3cr3t%zz@db/app",
        "mysql://app:s3cr3t@db/app",
    ],
)
def test_dsn_problem_never_shows_the_password(given: str) -> None:
    (problem,) = problems_at({**VALID, "dsn": given}, "dsn")
    assert "s3cr3t" not in problem
    assert "and-more" not in problem
