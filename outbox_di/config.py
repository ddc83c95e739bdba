"""The outbox configuration tree: frozen dataclasses, their defaults and every validation rule.

This module does not know where values come from (``settings.py`` reads dynaconf): it turns a plain
mapping into a checked :class:`OutboxConfig` and reports every problem at once, each prefixed with
its dotted key path, so one failed start-up shows everything there is to fix.

Each rule is written once, as field metadata (type and range) or as a section rule (cross-field);
``from_mapping`` and ``validate`` both run the same rules.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, ClassVar

import psycopg2.extensions

from outbox_di import errors, redaction, schema

__all__ = [
    "BROKERS",
    "BackoffConfig",
    "InboxConfig",
    "NatsConfig",
    "OutboxConfig",
    "PoolConfig",
    "PubSubConfig",
    "PublisherConfig",
    "RabbitMQConfig",
    "RedisConfig",
    "RetentionConfig",
    "broker_names",
    "closest_key",
    "is_free_form",
    "normalize_dsn",
    "parse_duration",
]

_RESOURCE_NAME = r"[A-Za-z][A-Za-z0-9._~%+-]{2,254}"
_TOPIC_RE = re.compile(rf"{_RESOURCE_NAME}|projects/[^/\s]+/topics/{_RESOURCE_NAME}")
_SUBSCRIPTION_RE = re.compile(rf"{_RESOURCE_NAME}|projects/[^/\s]+/subscriptions/{_RESOURCE_NAME}")
# A PostgreSQL URL, with the +driver suffix of a SQLAlchemy URL (postgresql+asyncpg://) if any.
_POSTGRES_URL_RE = re.compile(r"(postgres(?:ql)?)(\+[A-Za-z0-9_]+)?://", re.IGNORECASE)
_URL_SCHEME_RE = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*)://")
_PASSWORD_VALUE_RE = re.compile(r"password\s*=\s*('(?:[^'\\]|\\.)*'|\S+)")
_DSN_FORMS = (
    "write a URL, postgresql://user@host:5432/dbname, or libpq key=value pairs, "
    "'host=db port=5432 dbname=app user=app'"
)
_HOST_PORT_RE = re.compile(r"(\[[0-9A-Fa-f:.]+\]|[^\s/:\[\]]+):\d{1,5}")
_DURATION_RE = re.compile(r"([+-]?(?:\d+(?:\.\d*)?|\.\d+))\s*(ms|s|m|h|d)?")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
MAX_DURATION = 36500 * 86400.0
"""The longest duration a key takes (100 years): longer ones overflow ``datetime.timedelta``."""
_MAX_INT = 2**63 - 1
_DURATION_FORMS = (
    "seconds as a number (30, 1.5) or a string with a unit ms, s, m, h or d "
    "('500ms', '30s', '1.5s', '5m', '2h', '7d')"
)

# Field metadata key under which each field's _Spec is stored.
_SPEC_KEY = "outbox_di.config"


def _describe(value: object) -> str:
    """Say what a wrong value is, in the words of a settings file rather than of Python."""
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) > 10**30:
        return f"an integer of {value.bit_length()} bits"  # repr() refuses past 4300 digits
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"the boolean {str(value).lower()}"
    if isinstance(value, str):
        return f"the string {value!r}"
    if isinstance(value, Mapping):
        return "a table"
    if isinstance(value, (list, tuple, set, frozenset)):
        return "a list"
    if isinstance(value, (int, float)):
        return repr(value)
    return f"a {type(value).__name__}"


# --- conversions: a raw value to the field's type, or ValueError naming the key -----------------


def parse_duration(value: object, key: str) -> float:
    """Turn a duration (seconds as a number, or a string such as ``"500ms"``) into float seconds.

    Settings files and environment variables read better with units; the rest of the library only
    ever sees float seconds. Negative values parse (the range rules then say what is allowed).
    """
    seconds: float | None = None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        seconds = _finite_float(value)
    elif isinstance(value, str):
        match = _DURATION_RE.fullmatch(value.strip())
        if match is not None:
            number, unit = match.groups()
            seconds = float(number) * _UNIT_SECONDS[unit or "s"]
    if seconds is None or not math.isfinite(seconds):
        raise ValueError(f"{key}: must be a duration: {_DURATION_FORMS}; got {_describe(value)}")
    if abs(seconds) > MAX_DURATION:
        raise ValueError(
            f"{key}: must be a duration of at most 36500d (100 years), got {_describe(value)}"
        )
    return seconds


def _as_str(value: object, key: str) -> str:
    if isinstance(value, str):
        return value
    raise ValueError(f"{key}: must be a string, got {_describe(value)}")


def _as_bool(value: object, key: str) -> bool:
    # A quoted "false" is truthy in Python: refusing it beats silently enabling something.
    if isinstance(value, bool):
        return value
    hint = ""
    if isinstance(value, str) and value.strip().lower() in {"true", "false"}:
        hint = " (write true or false without quotes)"
    raise ValueError(f"{key}: must be true or false, got {_describe(value)}{hint}")


ALL_SCHEMAS = "*"
"""``schemas = "*"``: every schema of the database holding an outbox (rescanned while running)."""


def _as_schema_list(value: object, key: str) -> tuple[str, ...]:
    # A list, or one comma-separated string (what an OUTBOX_SCHEMAS variable holds).
    if isinstance(value, str):
        items: list[object] = list(value.split(",")) if value.strip() else []
    elif isinstance(value, (list, tuple)):
        items = list(value)
    else:
        raise ValueError(
            f"{key}: must be a list of schema names (['catalog', 'billing']), a comma-separated "
            f"string ('catalog,billing') or '*' (every outbox schema), got {_describe(value)}"
        )
    names: list[str] = []
    for item in items:
        if not isinstance(item, str):
            raise ValueError(f"{key}: every entry must be a schema name, got {_describe(item)}")
        names.append(item.strip())
    return tuple(names)


def _schema_names(value: Any, key: str) -> Iterator[str]:
    if value == (ALL_SCHEMAS,):
        return
    seen: set[str] = set()
    for name in value:
        if name == ALL_SCHEMAS:
            yield f"{key}: '*' (every outbox schema) must stand alone, got {list(value)!r}"
        elif not name:
            yield f"{key}: an empty schema name in {list(value)!r}"
        elif name in seen:
            yield f"{key}: schema {name!r} is listed twice"
        else:
            seen.add(name)
            yield from _schema_name(name, key)


def _as_int(value: object, key: str) -> int:
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, int) and not isinstance(value, bool):
        if abs(value) > _MAX_INT:
            raise ValueError(
                f"{key}: must be an integer between -(2**63) and 2**63 - 1, got one of "
                f"{value.bit_length()} bits"
            )
        return value
    raise ValueError(f"{key}: must be an integer, got {_describe(value)}")


def normalize_dsn(dsn: str) -> str:
    """``dsn`` as libpq takes it: a SQLAlchemy URL's ``+driver`` suffix dropped
    (``postgresql+asyncpg://…`` becomes ``postgresql://…``), the scheme lower-cased and the
    surrounding whitespace removed. Anything else is returned as it is."""
    dsn = dsn.strip()
    match = _POSTGRES_URL_RE.match(dsn)
    if match is None:
        return dsn
    return f"{match.group(1).lower()}://{dsn[match.end() :]}"


def _as_dsn(value: object, key: str) -> str:
    return normalize_dsn(_as_str(value, key))


def _finite_float(value: float) -> float | None:
    """``float(value)``, or None for what no float holds (an int past 1e308, inf, nan)."""
    try:
        number = float(value)
    except OverflowError:
        return None
    return number if math.isfinite(number) else None


def _as_float(value: object, key: str) -> float:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        number = _finite_float(value)
        if number is not None:
            return number
    raise ValueError(f"{key}: must be a finite number, got {_describe(value)}")


def _as_routes(value: object, key: str) -> dict[Any, Any]:
    # Entries are checked by _routes, so every bad entry is reported, not only the first.
    if not isinstance(value, Mapping):
        raise ValueError(f"{key}: must be a table of routing key = topic, got {_describe(value)}")
    return {route: value[route] for route in value}  # indexing lets lazy values resolve


# --- checks on a converted value: each yields problems already prefixed with the key ------------

_Check = Callable[[Any, str], Iterator[str]]


def _between(low: int, high: int) -> _Check:
    def check(value: Any, key: str) -> Iterator[str]:
        if not low <= value <= high:
            yield f"{key}: must be between {low} and {high}, got {value!r}"

    return check


def _at_least(low: float) -> _Check:
    def check(value: Any, key: str) -> Iterator[str]:
        if value < low:
            yield f"{key}: must be at least {low!r}, got {value!r}"

    return check


def _positive(value: Any, key: str) -> Iterator[str]:
    if not value > 0:
        yield f"{key}: must be greater than 0, got {value!r}"


def _fraction(value: Any, key: str) -> Iterator[str]:
    if not 0.0 <= value <= 1.0:
        yield f"{key}: must be a fraction between 0 and 1, got {value!r}"


def _non_empty(value: Any, key: str) -> Iterator[str]:
    if not value.strip():
        yield f"{key}: must not be empty"


def _consumer_name(value: Any, key: str) -> Iterator[str]:
    # Part of the inbox's primary key (consumer, event_id): a btree entry holds 2704 bytes.
    if not value.strip():
        yield f"{key}: must not be empty"
    elif "\x00" in value or len(value.encode("utf-8", "surrogatepass")) > 255:
        yield (
            f"{key}: must be at most 255 bytes of UTF-8 without NUL characters (it is part of "
            f"the inbox's primary key), got {len(value)} characters"
        )


def _libpq_reason(exc: Exception, dsn: str) -> str:
    """libpq's reason for refusing ``dsn``, unless it could show part of a password."""
    if _PASSWORD_VALUE_RE.search(dsn):
        # An unquoted password with a space is echoed in part: say nothing of the value.
        return "the reason is not shown, the string holds a password"
    reason = str(exc).strip().removeprefix("invalid dsn: ")
    return redaction.redact_text(reason, dsn)


def _dsn(value: Any, key: str) -> Iterator[str]:
    # The pool connects with psycopg2 (libpq): refuse here what libpq would refuse at start-up.
    # Never echo the value: it may hold a password.
    if not value.strip():
        yield f"{key}: must not be empty; {_DSN_FORMS}"
        return
    scheme = _URL_SCHEME_RE.match(value)
    if scheme is not None and _POSTGRES_URL_RE.match(value) is None:
        yield (
            f"{key}: must be a PostgreSQL connection string, got a {scheme.group(1)}:// URL; "
            f"{_DSN_FORMS} (a SQLAlchemy URL such as postgresql+asyncpg://… is accepted: its "
            "+driver part is dropped, the library connects with psycopg2)"
        )
        return
    try:
        psycopg2.extensions.parse_dsn(value)
    except psycopg2.Error as exc:
        reason = _libpq_reason(exc, value)
        yield f"{key}: not a connection string libpq accepts ({reason}); {_DSN_FORMS}"


def _schema_name(value: Any, key: str) -> Iterator[str]:
    # The rule rendering applies (^[a-z_][a-z0-9_]{0,62}$, no pg_ prefix): a name that passes here
    # must not fail later when the DDL is rendered.
    try:
        schema.validate_schema_name(value)
    except errors.SchemaNameError as exc:
        yield f"{key}: {exc}"


BROKERS = ("pubsub", "rabbitmq", "nats", "redis")
"""The values ``broker`` takes."""


@dataclasses.dataclass(frozen=True)
class _Names:
    """What a topic and a subscription are called on one broker, and the rule for each."""

    topic: str
    topic_rule: str
    topic_re: re.Pattern[str]
    subscription: str
    subscription_rule: str
    subscription_re: re.Pattern[str]


_AMQP_NAME = r"[A-Za-z0-9_.:-]{1,255}"
_NATS_TOKEN = r"[^\s.*>/]+"
_NAMES = {
    "pubsub": _Names(
        "topic",
        "3-255 characters: letters, digits and . _ ~ % + -, starting with a letter, or "
        "'projects/<project>/topics/<name>'",
        _TOPIC_RE,
        "subscription",
        "3-255 characters: letters, digits and . _ ~ % + -, starting with a letter, or "
        "'projects/<project>/subscriptions/<name>'",
        _SUBSCRIPTION_RE,
    ),
    "rabbitmq": _Names(
        "exchange",
        "1-255 characters: letters, digits and _ . : -",
        re.compile(_AMQP_NAME),
        "queue",
        "1-255 characters: letters, digits and _ . : -",
        re.compile(_AMQP_NAME),
    ),
    "nats": _Names(
        "subject",
        "tokens separated by '.', with no spaces, '*', '>' or '/' (for example 'orders.events')",
        re.compile(rf"{_NATS_TOKEN}(?:\.{_NATS_TOKEN})*"),
        "consumer",
        "'<stream>/<durable consumer>', each without spaces, '.', '*', '>' or '/' "
        "(for example 'ORDERS/billing')",
        re.compile(rf"{_NATS_TOKEN}/{_NATS_TOKEN}"),
    ),
    "redis": _Names(
        "stream",
        "a stream key of 1-512 characters without spaces",
        re.compile(r"\S{1,512}"),
        "consumer group",
        "'<stream key>/<group>' (the group after the last '/'), without spaces",
        re.compile(r"\S{1,512}/[^\s/]{1,255}"),
    ),
}


_BROKER_LABELS = {"pubsub": "", "rabbitmq": "RabbitMQ ", "nats": "NATS ", "redis": "Redis "}


def broker_names(broker: str) -> _Names:
    """How ``broker`` names topics and subscriptions."""
    return _NAMES[broker]


def _name_problem(value: str, key: str, broker: str, *, subscription: bool) -> str | None:
    names = _NAMES[broker]
    kind, rule, pattern = (
        (names.subscription, names.subscription_rule, names.subscription_re)
        if subscription
        else (names.topic, names.topic_rule, names.topic_re)
    )
    if pattern.fullmatch(value):
        return None
    return f"{key}: must be a {_BROKER_LABELS[broker]}{kind} name ({rule}), got {value!r}"


SCHEMA_PLACEHOLDER = "{schema}"
"""Written in a topic name, it stands for the schema whose events are published (a relay of
several schemas publishes each to its own topic)."""


def _topic(value: Any, key: str) -> Iterator[str]:
    if not value.strip():
        yield f"{key}: must not be empty"


def _topic_problem(value: str, key: str, broker: str) -> str | None:
    # {schema} is checked here as a typical name; the relay checks each topic it becomes again.
    shown = value.replace(SCHEMA_PLACEHOLDER, "schema")
    if _NAMES[broker].topic_re.fullmatch(shown):
        return None
    return _name_problem(value, key, broker, subscription=False)


def topic_for_schema(topic: str, schema_name: str, key: str, broker: str = "pubsub") -> str:
    """``topic`` with ``{schema}`` replaced by ``schema_name``; a clear error when the result is
    not a topic name of ``broker``."""
    made = topic.replace(SCHEMA_PLACEHOLDER, schema_name)
    problem = _name_problem(made, key, broker, subscription=False)
    if problem:
        raise errors.ConfigError([f"{problem} (from {topic!r} for schema {schema_name!r})"])
    return made


def _subscription(value: Any, key: str) -> Iterator[str]:
    if not value.strip():
        yield f"{key}: must not be empty"


def _routes(value: Any, key: str) -> Iterator[str]:
    for route, topic in value.items():
        if not isinstance(route, str) or not route.strip():
            yield f"{key}: routing keys must be non-empty strings, got {_describe(route)}"
        elif not isinstance(topic, str):
            yield f"{key}.{route}: must be a topic string, got {_describe(topic)}"
        elif not topic.strip():
            yield f"{key}.{route}: must not be empty"


def _host_port(value: Any, key: str) -> Iterator[str]:
    if not _HOST_PORT_RE.fullmatch(value):
        yield f"{key}: must be host:port (for example 'localhost:8085'), got {value!r}"


# --- field metadata ------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Spec:
    """How one field is converted and checked; ``section`` marks a nested config table."""

    coerce: Callable[[object, str], Any] | None = None
    checks: tuple[_Check, ...] = ()
    optional: bool = False
    section: type[Any] | None = None
    free_form: bool = False  # a table whose keys are data (event types), kept as written
    hint: str = ""


def _metadata(spec: _Spec) -> dict[str, _Spec]:
    return {_SPEC_KEY: spec}


def _spec_of(field: dataclasses.Field[Any]) -> _Spec:
    spec = field.metadata[_SPEC_KEY]
    assert isinstance(spec, _Spec)
    return spec


def _setting(default: Any, coerce: Callable[[object, str], Any], *checks: _Check) -> Any:
    """A field with a default; ``None`` as the default makes the key optional (null allowed)."""
    spec = _Spec(coerce=coerce, checks=checks, optional=default is None)
    return dataclasses.field(default=default, metadata=_metadata(spec))


def _section(cls: type[Any]) -> dict[str, _Spec]:
    """Metadata of a nested config table (its own dataclass, defaults included)."""
    return _metadata(_Spec(section=cls))


# --- section rules (cross-field): read converted values by field name ---------------------------


@dataclasses.dataclass(frozen=True)
class _Rule:
    """A rule over several fields of one section; skipped when one of them is already invalid."""

    fields: tuple[str, ...]
    check: Callable[[Mapping[str, Any], str], Iterator[str]]


def _pool_sizes(values: Mapping[str, Any], prefix: str) -> Iterator[str]:
    if values["max_size"] < values["min_size"]:
        yield (
            f"{prefix}max_size: must be at least {prefix}min_size ({values['min_size']}), "
            f"got {values['max_size']}"
        )


def _backoff_cap(values: Mapping[str, Any], prefix: str) -> Iterator[str]:
    if values["max"] < values["initial"]:
        yield (
            f"{prefix}max: must be at least {prefix}initial ({values['initial']!r}), "
            f"got {values['max']!r}"
        )


def _publisher_target(values: Mapping[str, Any], prefix: str) -> Iterator[str]:
    if values["enabled"] and not values["topic"] and not values["topics"]:
        yield f"{prefix}topic: required when {prefix}enabled is true (or give {prefix}topics)"


def _publisher_lease(values: Mapping[str, Any], prefix: str) -> Iterator[str]:
    # A claim must outlive one publish round trip, or a slow publish lets a second worker take it.
    if not values["lock_ttl"] > values["publish_timeout"]:
        yield (
            f"{prefix}lock_ttl: must be greater than {prefix}publish_timeout "
            f"({values['publish_timeout']!r}) so a lease outlives one publish round trip, "
            f"got {values['lock_ttl']!r}"
        )


def _inbox_lease(values: Mapping[str, Any], prefix: str) -> Iterator[str]:
    # A claim must outlive one handler run, or a slow handler lets a second worker run it too.
    if not values["lock_ttl"] > values["handler_timeout"]:
        yield (
            f"{prefix}lock_ttl: must be greater than {prefix}handler_timeout "
            f"({values['handler_timeout']!r}) so a lease outlives one handler run, "
            f"got {values['lock_ttl']!r}"
        )


def _inbox_source(values: Mapping[str, Any], prefix: str) -> Iterator[str]:
    if values["enabled"] and not values["subscription"]:
        yield f"{prefix}subscription: required when {prefix}enabled is true"


def _broker_names(values: Mapping[str, Any], prefix: str) -> Iterator[str]:
    """The topics and the subscription, checked by the rules of the configured broker."""
    broker = values["broker"]
    publisher, inbox = values["publisher"], values["inbox"]
    if publisher.topic and publisher.topic.strip():
        problem = _topic_problem(publisher.topic, f"{prefix}publisher.topic", broker)
        if problem:
            yield problem
    for route, topic in publisher.topics.items():
        if isinstance(route, str) and isinstance(topic, str) and topic.strip():
            problem = _topic_problem(topic, f"{prefix}publisher.topics.{route}", broker)
            if problem:
                yield problem
    if inbox.subscription and inbox.subscription.strip():
        key = f"{prefix}inbox.subscription"
        problem = _name_problem(inbox.subscription, key, broker, subscription=True)
        if problem:
            yield problem


# --- the tree -----------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class PoolConfig:
    """The database pool the workers use (web processes may start only this)."""

    min_size: int = _setting(1, _as_int, _at_least(0))
    max_size: int = _setting(10, _as_int, _at_least(1))
    connect_timeout: float = _setting(10.0, parse_duration, _positive)
    # Connections beyond min_size that a burst opened are closed when the pool is found idle
    # (none in use) at a check; the checks run this often.
    idle_timeout: float = _setting(30.0, parse_duration, _positive)

    _rules: ClassVar[tuple[_Rule, ...]] = (_Rule(("min_size", "max_size"), _pool_sizes),)


@dataclasses.dataclass(frozen=True)
class PubSubConfig:
    """Where Pub/Sub is; unset, the project comes from full resource names or the environment."""

    project: str | None = _setting(None, _as_str, _non_empty)
    emulator_host: str | None = _setting(None, _as_str, _host_port)
    # Bound on the start-up checks (the publisher's topics, the receiver's subscription).
    connect_timeout: float = _setting(10.0, parse_duration, _positive)

    _rules: ClassVar[tuple[_Rule, ...]] = ()


def _as_broker(value: object, key: str) -> str:
    name = _as_str(value, key).strip().lower()
    if name not in BROKERS:
        close = closest_key(name, BROKERS)
        hint = f" (did you mean {close!r}?)" if close else ""
        raise ValueError(f"{key}: must be one of {', '.join(BROKERS)}, got {value!r}{hint}")
    return name


def _url(*schemes: str) -> _Check:
    def check(value: Any, key: str) -> Iterator[str]:
        scheme = value.partition("://")[0].lower() if "://" in value else ""
        if scheme not in schemes:
            forms = " or ".join(f"{item}://host:port" for item in schemes)
            yield f"{key}: must be a URL {forms}, got {redaction.redact_dsn(value)!r}"

    return check


def _urls(*schemes: str) -> _Check:
    one = _url(*schemes)

    def check(value: Any, key: str) -> Iterator[str]:
        for item in value.split(","):
            yield from one(item.strip(), key)

    return check


class _RedactedURL:
    """A repr that shows the section's ``url`` without its password."""

    def __repr__(self) -> str:
        fields = ", ".join(
            f"{field.name}="
            + repr(
                redaction.redact_dsn(value)
                if field.name in ("url", "servers") and isinstance(value, str)
                else value
            )
            for field in dataclasses.fields(self)  # type: ignore[arg-type]
            for value in (getattr(self, field.name),)
        )
        return f"{type(self).__name__}({fields})"


@dataclasses.dataclass(frozen=True, repr=False)
class RabbitMQConfig(_RedactedURL):
    """Where RabbitMQ is (``broker = "rabbitmq"``): topics are exchanges, the inbox's
    subscription a queue."""

    url: str = _setting("amqp://guest:guest@127.0.0.1:5672/", _as_str, _url("amqp", "amqps"))
    connect_timeout: float = _setting(10.0, parse_duration, _positive)

    _rules: ClassVar[tuple[_Rule, ...]] = ()


@dataclasses.dataclass(frozen=True, repr=False)
class NatsConfig(_RedactedURL):
    """Where NATS is (``broker = "nats"``): topics are JetStream subjects, the inbox's
    subscription a durable consumer ``STREAM/name``."""

    servers: str = _setting("nats://127.0.0.1:4222", _as_str, _urls("nats", "tls"))
    connect_timeout: float = _setting(10.0, parse_duration, _positive)

    _rules: ClassVar[tuple[_Rule, ...]] = ()


@dataclasses.dataclass(frozen=True, repr=False)
class RedisConfig(_RedactedURL):
    """Where Redis is (``broker = "redis"``): topics are stream keys, the inbox's
    subscription a consumer group ``stream/group``."""

    url: str = _setting("redis://127.0.0.1:6379/0", _as_str, _url("redis", "rediss"))
    connect_timeout: float = _setting(10.0, parse_duration, _positive)
    # A delivery left unacknowledged this long (its receiver died) is taken by another.
    claim_idle: float = _setting(30.0, parse_duration, _positive)
    # Trim each stream to about this many entries on publish; None keeps them all.
    max_length: int | None = _setting(None, _as_int, _at_least(1))

    _rules: ClassVar[tuple[_Rule, ...]] = ()


@dataclasses.dataclass(frozen=True)
class BackoffConfig:
    """Delay before retrying a publish: ``initial * multiplier**attempt``, capped, jittered."""

    initial: float = _setting(1.0, parse_duration, _positive)
    max: float = _setting(300.0, parse_duration, _positive)
    multiplier: float = _setting(2.0, _as_float, _at_least(1.0))
    jitter: float = _setting(0.2, _as_float, _fraction)

    _rules: ClassVar[tuple[_Rule, ...]] = (_Rule(("initial", "max"), _backoff_cap),)


@dataclasses.dataclass(frozen=True)
class PublisherConfig:
    """The relay from the outbox table to Pub/Sub; the defaults are the fast ones."""

    enabled: bool = _setting(True, _as_bool)
    topic: str | None = _setting(None, _as_str, _topic)
    # Routing: key is an event_type or an aggregate_type. Left out of the hash: a dict has none.
    topics: Mapping[str, str] = dataclasses.field(
        default_factory=dict,
        hash=False,
        metadata=_metadata(_Spec(coerce=_as_routes, checks=(_routes,), free_form=True)),
    )
    batch_size: int = _setting(500, _as_int, _between(1, 1000))
    workers: int = _setting(2, _as_int, _at_least(1))
    tick_interval: float = _setting(1.0, parse_duration, _positive)
    notify: bool = _setting(True, _as_bool)
    lock_ttl: float = _setting(30.0, parse_duration, _positive)
    backoff: BackoffConfig = dataclasses.field(
        default_factory=BackoffConfig, metadata=_section(BackoffConfig)
    )
    max_attempts: int = _setting(10, _as_int, _at_least(1))
    ordering: bool = _setting(False, _as_bool)
    publish_timeout: float = _setting(10.0, parse_duration, _positive)
    shutdown_timeout: float = _setting(10.0, parse_duration, _positive)
    metrics_enabled: bool = _setting(True, _as_bool)

    _rules: ClassVar[tuple[_Rule, ...]] = (
        _Rule(("enabled", "topic", "topics"), _publisher_target),
        _Rule(("lock_ttl", "publish_timeout"), _publisher_lease),
    )


@dataclasses.dataclass(frozen=True)
class InboxConfig:
    """The receiver (Pub/Sub to inbox rows) and the worker that runs handlers on them."""

    enabled: bool = _setting(False, _as_bool)
    # None means "the schema name": see consumer_name().
    consumer: str | None = _setting(None, _as_str, _consumer_name)
    subscription: str | None = _setting(None, _as_str, _subscription)
    batch_size: int = _setting(100, _as_int, _between(1, 1000))
    workers: int = _setting(2, _as_int, _at_least(1))
    lock_ttl: float = _setting(30.0, parse_duration, _positive)
    max_attempts: int = _setting(10, _as_int, _at_least(1))
    retry_delay: float = _setting(1.0, parse_duration, _at_least(0.0))
    handler_timeout: float = _setting(10.0, parse_duration, _positive)
    retention: float = _setting(7 * 86400.0, parse_duration, _positive)
    max_messages: int = _setting(1000, _as_int, _at_least(1))
    max_bytes: int = _setting(100 * 1024 * 1024, _as_int, _at_least(1))
    shutdown_timeout: float = _setting(10.0, parse_duration, _positive)
    metrics_enabled: bool = _setting(True, _as_bool)

    _rules: ClassVar[tuple[_Rule, ...]] = (
        _Rule(("enabled", "subscription"), _inbox_source),
        _Rule(("lock_ttl", "handler_timeout"), _inbox_lease),
    )

    def consumer_name(self, schema: str) -> str:
        """``consumer`` if set, else the schema, so a single service needs no consumer name."""
        return self.consumer if self.consumer is not None else schema


@dataclasses.dataclass(frozen=True)
class RetentionConfig:
    """Automatic deletion of old rows by worker processes, so the tables stay small."""

    enabled: bool = _setting(True, _as_bool)
    published: float = _setting(7 * 86400.0, parse_duration, _positive)
    # None means inbox.retention (7 days unless set): see OutboxConfig.processed_retention.
    processed: float | None = _setting(None, parse_duration, _positive)
    batch_size: int = _setting(1000, _as_int, _between(1, 100_000))
    interval: float = _setting(600.0, parse_duration, _positive)

    _rules: ClassVar[tuple[_Rule, ...]] = ()


@dataclasses.dataclass(frozen=True)
class OutboxConfig:
    """The whole outbox configuration; build it with :meth:`from_mapping` to get it checked."""

    schema: str = dataclasses.field(
        metadata=_metadata(
            _Spec(
                coerce=_as_str,
                checks=(_schema_name,),
                hint="the PostgreSQL schema that holds the outbox tables",
            )
        )
    )
    dsn: str = dataclasses.field(
        metadata=_metadata(
            _Spec(
                coerce=_as_dsn,
                checks=(_dsn,),
                hint="a libpq URI or key=value connection string",
            )
        )
    )
    schemas: tuple[str, ...] = _setting((), _as_schema_list, _schema_names)
    """The schemas one relay process serves (``outbox-di worker``); ``("*",)``: every outbox
    schema. Empty: ``schema`` alone."""
    run_workers: bool = _setting(True, _as_bool)
    broker: str = _setting("pubsub", _as_broker)
    """Which broker the relay publishes to and the inbox receives from."""
    pool: PoolConfig = dataclasses.field(default_factory=PoolConfig, metadata=_section(PoolConfig))
    pubsub: PubSubConfig = dataclasses.field(
        default_factory=PubSubConfig, metadata=_section(PubSubConfig)
    )
    rabbitmq: RabbitMQConfig = dataclasses.field(
        default_factory=RabbitMQConfig, metadata=_section(RabbitMQConfig)
    )
    nats: NatsConfig = dataclasses.field(default_factory=NatsConfig, metadata=_section(NatsConfig))
    redis: RedisConfig = dataclasses.field(
        default_factory=RedisConfig, metadata=_section(RedisConfig)
    )
    publisher: PublisherConfig = dataclasses.field(
        default_factory=PublisherConfig, metadata=_section(PublisherConfig)
    )
    inbox: InboxConfig = dataclasses.field(
        default_factory=InboxConfig, metadata=_section(InboxConfig)
    )
    retention: RetentionConfig = dataclasses.field(
        default_factory=RetentionConfig, metadata=_section(RetentionConfig)
    )

    _rules: ClassVar[tuple[_Rule, ...]] = (_Rule(("broker", "publisher", "inbox"), _broker_names),)

    def __post_init__(self) -> None:
        # A SQLAlchemy URL given in code (dataclasses.replace) is normalized as from_mapping does.
        if isinstance(self.dsn, str):
            object.__setattr__(self, "dsn", normalize_dsn(self.dsn))

    def __repr__(self) -> str:
        # The generated repr would show the DSN's password wherever a config is printed or
        # logged; to_dict() keeps it (it must round-trip).
        fields = ", ".join(
            f"{field.name}="
            + repr(
                redaction.redact_dsn(self.dsn)
                if field.name == "dsn" and isinstance(self.dsn, str)
                else getattr(self, field.name)
            )
            for field in dataclasses.fields(self)
        )
        return f"OutboxConfig({fields})"

    @property
    def inbox_consumer(self) -> str:
        """The resolved inbox consumer name (``inbox.consumer``, else the schema)."""
        return self.inbox.consumer_name(self.schema)

    @property
    def processed_retention(self) -> float:
        """How long processed inbox rows are kept: ``retention.processed``, else
        ``inbox.retention`` (the older key, still honoured)."""
        if self.retention.processed is not None:
            return self.retention.processed
        return self.inbox.retention

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> OutboxConfig:
        """Build and check a config from a plain or dynaconf mapping; keys are case-insensitive.

        Raises :class:`errors.ConfigError` listing every problem, not only the first.
        """
        if not isinstance(data, Mapping):
            problem = f"<root>: must be a table of settings, got {_describe(data)}"
            raise errors.ConfigError([problem])
        problems: list[str] = []
        invalid: set[str] = set()
        config = _build(cls, _schema_from_schemas(data), "", problems, invalid)
        assert isinstance(config, OutboxConfig)
        problems.extend(_check(config, "", invalid))
        if problems:
            raise errors.ConfigError(problems)
        return config

    def validate(self) -> None:
        """Check every value and cross-field rule again (say, after ``dataclasses.replace``)."""
        problems = list(_check(self, "", set()))
        if problems:
            raise errors.ConfigError(problems)

    def to_dict(self) -> dict[str, Any]:
        """A plain nested dict (durations in float seconds) that ``from_mapping`` accepts back."""
        return _to_dict(self)


# --- the machinery shared by from_mapping and validate ------------------------------------------


def closest_key(key: str, valid: Iterable[str]) -> str | None:
    """The valid key most like ``key`` (for 'did you mean' hints), or None when none is close."""
    matches = difflib.get_close_matches(key.lower(), list(valid), n=1, cutoff=0.6)
    return matches[0] if matches else None


def _unknown_key(prefix: str, key: str, valid: Sequence[str]) -> str:
    suggestion = closest_key(key, valid)
    if suggestion is not None:
        return f"{prefix}{key}: unknown key; did you mean {suggestion!r}?"
    return f"{prefix}{key}: unknown key; valid keys here: {', '.join(valid)}"


def _build(
    cls: type[Any], data: Mapping[Any, Any], prefix: str, problems: list[str], invalid: set[str]
) -> Any:
    """Convert one section, recording problems; a bad value falls back to its default and is
    marked invalid, so later rules neither crash on it nor report knock-on problems."""
    fields = {field.name: field for field in dataclasses.fields(cls)}
    given: dict[str, tuple[str, Any]] = {}
    for raw_key in data:
        if not isinstance(raw_key, str):
            problems.append(f"{prefix or '<root>.'}{raw_key!r}: keys must be strings")
            continue
        key = raw_key.lower()
        if key in given:
            problems.append(f"{prefix}{key}: given twice ({given[key][0]!r} and {raw_key!r})")
        elif key not in fields:
            problems.append(_unknown_key(prefix, raw_key, list(fields)))
        else:
            given[key] = (raw_key, data[raw_key])  # indexing lets lazy values resolve

    kwargs: dict[str, Any] = {}
    for name, field in fields.items():
        spec = _spec_of(field)
        path = prefix + name
        required = (
            field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING
        )
        if required:
            kwargs[name] = ""  # a placeholder while invalid; replaced below when the value is good
        if name not in given:
            if required:
                problems.append(f"{path}: required ({spec.hint})")
                invalid.add(path)
            continue
        value = given[name][1]
        if spec.section is not None:
            if isinstance(value, Mapping):
                kwargs[name] = _build(spec.section, value, path + ".", problems, invalid)
            else:
                problems.append(f"{path}: must be a table of settings, got {_describe(value)}")
                invalid.add(path)
            continue
        if value is None and spec.optional:
            kwargs[name] = None
            continue
        assert spec.coerce is not None
        try:
            kwargs[name] = spec.coerce(value, path)
        except ValueError as exc:
            problems.append(str(exc))
            invalid.add(path)
    return cls(**kwargs)


def _schema_from_schemas(data: Mapping[Any, Any]) -> Mapping[Any, Any]:
    """``schema`` is optional when ``schemas`` is given: the first one listed stands for it
    (``public`` for ``"*"``) where a single schema is needed (the relay serves them all)."""
    keys = {key.lower(): key for key in data if isinstance(key, str)}
    if "schema" in keys or "schemas" not in keys:
        return data
    try:
        names = _as_schema_list(data[keys["schemas"]], "schemas")
    except ValueError:
        return data  # reported by _build, with schema's own "required" problem
    if not names:
        return data
    first = "public" if names[0] == ALL_SCHEMAS else names[0]
    return {**data, "schema": first}


def _check(obj: Any, prefix: str, invalid: set[str]) -> Iterator[str]:
    """Yield the type, range and cross-field problems of a built section, recursively."""
    values: dict[str, Any] = {}
    bad: set[str] = set()
    for field in dataclasses.fields(obj):
        spec = _spec_of(field)
        path = prefix + field.name
        value = getattr(obj, field.name)
        if path in invalid:
            bad.add(field.name)
            continue
        if spec.section is not None:
            if isinstance(value, spec.section):
                yield from _check(value, path + ".", invalid)
                values[field.name] = value
            else:
                yield f"{path}: must be {spec.section.__name__}, got {_describe(value)}"
                bad.add(field.name)
            continue
        if value is None and spec.optional:
            values[field.name] = None
            continue
        assert spec.coerce is not None
        try:
            value = spec.coerce(value, path)
        except ValueError as exc:
            yield str(exc)
            bad.add(field.name)
            continue
        values[field.name] = value
        for check in spec.checks:
            yield from check(value, path)
    for rule in type(obj)._rules:
        if not bad.intersection(rule.fields):
            yield from rule.check(values, prefix)


def _to_dict(obj: Any) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for field in dataclasses.fields(obj):
        value = getattr(obj, field.name)
        spec = _spec_of(field)
        if spec.section is not None:
            result[field.name] = _to_dict(value)
        elif spec.free_form:
            result[field.name] = dict(value)
        elif isinstance(value, tuple):
            result[field.name] = list(value)  # plain values only (schemas)
        else:
            result[field.name] = value
    return result


def is_free_form(path: Sequence[str]) -> bool:
    """Whether ``path`` (e.g. ``("publisher", "topics")``) names a table whose keys are data.

    Loaders lower-case config keys but must keep these as written: they are event types.
    """
    cls: type[Any] | None = OutboxConfig
    for position, segment in enumerate(path):
        if cls is None:
            return False
        fields = {field.name: field for field in dataclasses.fields(cls)}
        field = fields.get(segment.lower())
        if field is None:
            return False
        spec = _spec_of(field)
        if position == len(path) - 1:
            return spec.free_form
        cls = spec.section
    return False
