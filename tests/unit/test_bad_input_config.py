"""Bad configuration, tried systematically: whatever the values and key names, the answer is a
config or a ``ConfigError`` whose every problem starts with the key path; never another error."""

from __future__ import annotations

import dataclasses
import re
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from outbox_di import config, errors, schema

BASE: dict[str, Any] = {
    "schema": "orders",
    "dsn": "postgresql://orders@db/orders",
    "publisher": {"topic": "orders"},
}

# Every key path of the tree, from the dataclasses (a key added later is tried too).


def _paths(cls: type[Any], prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    found: list[tuple[str, ...]] = []
    for field in dataclasses.fields(cls):
        spec = field.metadata["outbox_di.config"]
        path = (*prefix, field.name)
        found.append(path)
        if spec.section is not None:
            found.extend(_paths(spec.section, path))
    return found


PATHS = _paths(config.OutboxConfig)
DOTTED = {".".join(path) for path in PATHS}

values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=10**300, max_value=10**400)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=20)
    | st.sampled_from(["500ms", "1h30m", "-5s", "1e400", "9" * 400 + "d", "true", "projects/p"]),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=6,
)


def _set(tree: dict[str, Any], path: tuple[str, ...], value: object) -> dict[str, Any]:
    node = tree
    for part in path[:-1]:
        child = node.get(part)
        node[part] = child = dict(child) if isinstance(child, dict) else {}
        node = child
    node[path[-1]] = value
    return tree


def _starts_with_a_key(problem: str, given_keys: set[str]) -> bool:
    head = problem.split(":", 1)[0]
    inside = tuple(f"{key}." for key in given_keys)  # a key of a table given as the value
    return head in DOTTED or head.startswith(("<root>", "publisher.topics", *inside))


@settings(max_examples=200, derandomize=True, database=None, deadline=None)
@given(changes=st.lists(st.tuples(st.sampled_from(PATHS), values), min_size=1, max_size=4))
def test_any_value_at_any_key_is_a_config_or_a_config_error_naming_the_key(
    changes: list[tuple[tuple[str, ...], object]],
) -> None:
    tree: dict[str, Any] = {key: dict(v) if isinstance(v, dict) else v for key, v in BASE.items()}
    for path, value in changes:
        tree = _set(tree, path, value)
    try:
        built = config.OutboxConfig.from_mapping(tree)
    except errors.ConfigError as exc:
        assert exc.problems, "a ConfigError lists its problems"
        given_keys = {".".join(path) for path, _ in changes}
        for problem in exc.problems:
            assert _starts_with_a_key(problem, given_keys), problem
            assert len(problem) < 2000, "a huge value is described, not printed"
        return
    # What is accepted survives validate() and a round trip, and the durations fit a timedelta.
    built.validate()
    assert config.OutboxConfig.from_mapping(built.to_dict()) == built
    for name in ("connect_timeout", "idle_timeout"):
        assert abs(getattr(built.pool, name)) <= config.MAX_DURATION


@settings(max_examples=200, derandomize=True, database=None, deadline=None)
@given(key=st.text(min_size=1, max_size=30), section=st.sampled_from(["", "pool", "inbox"]))
def test_an_unknown_key_is_named_with_its_section(key: str, section: str) -> None:
    valid = {f.name for f in dataclasses.fields(config.OutboxConfig)}
    if section:
        valid = {p[1] for p in PATHS if p[0] == section and len(p) == 2}
    if key.lower() in valid:
        return
    tree = _set({**BASE}, (section, key) if section else (key,), 1)
    with pytest.raises(errors.ConfigError) as info:
        config.OutboxConfig.from_mapping(tree)
    prefix = f"{section}.{key}" if section else key
    assert any(p.startswith(f"{prefix}: unknown key") for p in info.value.problems), info.value


@settings(max_examples=200, derandomize=True, database=None, deadline=None)
@given(value=values)
def test_parse_duration_is_float_seconds_or_a_value_error_naming_the_key(value: object) -> None:
    try:
        seconds = config.parse_duration(value, "inbox.retention")
    except ValueError as exc:
        assert str(exc).startswith("inbox.retention: must be a duration")
        return
    assert isinstance(seconds, float) and abs(seconds) <= config.MAX_DURATION


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        (("pool", "connect_timeout"), 10**400, "pool.connect_timeout: must be a duration"),
        (("inbox", "retention"), 1e300, "inbox.retention: must be a duration of at most 36500d"),
        (("publisher", "backoff", "multiplier"), 10**400, "must be a finite number, got an int"),
        (("publisher", "workers"), 2**64, "publisher.workers: must be an integer between"),
        (("inbox", "consumer"), "c" * 256, "inbox.consumer: must be at most 255 bytes"),
        (("inbox", "consumer"), "a\x00b", "inbox.consumer: must be at most 255 bytes"),
    ],
)
def test_values_that_used_to_escape_as_other_errors(
    path: tuple[str, ...], value: object, message: str
) -> None:
    # 10**400 raised OverflowError, 1e300 seconds overflowed timedelta in the workers, a
    # 3,000-character consumer failed every inbox insert (the primary key cannot index it).
    with pytest.raises(errors.ConfigError) as info:
        config.OutboxConfig.from_mapping(_set({**BASE}, path, value))
    assert any(message in problem for problem in info.value.problems), info.value.problems


@settings(max_examples=200, derandomize=True, database=None, deadline=None)
@given(
    name=st.text(max_size=70)
    | st.from_regex(r"[a-z_][a-z0-9_]{0,70}", fullmatch=True)
    | st.sampled_from(["{{schema}}", 'a"b', "a;b", "pg_x", "x$$", "Orders", "1a", "a\x00"])
)
def test_a_schema_name_is_usable_as_is_or_refused_with_every_reason(name: str) -> None:
    try:
        checked = schema.validate_schema_name(name)
    except errors.SchemaNameError as exc:
        text = str(exc)
        assert text.startswith(f"invalid schema name {name!r}: it ")
        assert "Use 1-63 lower-case letters" in text
        assert schema.schema_name_problems(name), "at least one reason"
        with pytest.raises(errors.ConfigError, match=r"^invalid outbox configuration"):
            config.OutboxConfig.from_mapping({**BASE, "schema": name})
        return
    assert re.fullmatch(r"[a-z_][a-z0-9_]{0,62}", checked) and not checked.startswith("pg_")
    assert schema.quote_ident(checked) == f'"{checked}"'
    assert schema.schema_name_problems(checked) == []
