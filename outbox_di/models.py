"""Messages that services enqueue and the events read back from the outbox and inbox tables."""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
import json
import logging
import uuid
from collections.abc import Callable, Mapping
from typing import Any, TypeGuard

from outbox_di import errors

logger = logging.getLogger("outbox_di")

Headers = Mapping[str, str]


class OutboxStatus(str, enum.Enum):
    """Lifecycle of an outbox row; ``in flight`` is a pending row with a live lease."""

    PENDING = "pending"
    PUBLISHED = "published"
    DEAD = "dead"


class InboxStatus(str, enum.Enum):
    """Lifecycle of an inbox row."""

    PENDING = "pending"
    PROCESSED = "processed"
    DEAD = "dead"


@dataclasses.dataclass(frozen=True, slots=True)
class Message:
    """An event a service enqueues in its own transaction.

    ``payload`` is stored as given when it is bytes; anything else is encoded as UTF-8 JSON.
    ``event_id`` is generated at construction, so the caller knows it before enqueueing.
    """

    aggregate_type: str
    aggregate_id: str | uuid.UUID | int
    event_type: str
    payload: Any = b""
    headers: Headers = dataclasses.field(default_factory=dict)
    event_id: uuid.UUID = dataclasses.field(default_factory=uuid.uuid4)
    available_at: dt.datetime | None = None
    ordering_key: str | None = None

    def __post_init__(self) -> None:
        # What PostgreSQL cannot store (a NUL, a lone surrogate), what the relay would silently
        # overwrite (a reserved header) and a time without a zone, refused while the mistake is
        # at hand. Wrong types are named by enqueue (they are checked there, on the hot path).
        at = self.available_at
        if at is not None and (not isinstance(at, dt.datetime) or at.utcoffset() is None):
            raise errors.MessageError(_available_at_problem(at, self.event_id))
        for name in ("aggregate_type", "aggregate_id", "event_type", "ordering_key"):
            value = getattr(self, name)
            if type(value) is str and not (value.isascii() and "\x00" not in value):
                _check_text(value, name, self.event_id)
        key = self.ordering_key
        if key is not None and not isinstance(key, str):
            raise errors.MessageError(
                f"ordering_key of event {self.event_id} must be a str or None, got "
                f"{type(key).__name__} {key!r} (convert it with str())"
            )
        headers = self.headers
        if headers and isinstance(headers, Mapping):
            _check_headers(headers, self.event_id)

    def payload_bytes(self) -> bytes:
        """The exact bytes that will be published."""
        return encode_payload(self.payload, self.event_id)


RESERVED_HEADERS = frozenset({"event_id", "event_type", "aggregate_type", "aggregate_id"})
"""Header names the relay sets from the message's own fields (as Pub/Sub attributes)."""


def text_problem(value: str) -> str | None:
    """Why PostgreSQL cannot store ``value`` as ``text`` (or in ``jsonb``), or None."""
    if "\x00" in value:
        return "contains a NUL character, which PostgreSQL text and jsonb cannot store"
    if not value.isascii():
        try:
            value.encode()
        except UnicodeEncodeError as exc:
            return (
                f"contains {value[exc.start]!r} at position {exc.start}, a lone surrogate that "
                "is not UTF-8 (decode bytes with errors='replace', or send them as the payload)"
            )
    return None


def _check_text(value: str, field: str, event_id: object) -> None:
    problem = text_problem(value)
    if problem is not None:
        raise errors.MessageError(f"{field} of event {event_id} {problem}")


def _check_headers(headers: Mapping[Any, Any], event_id: object) -> None:
    for key, value in headers.items():
        if not isinstance(key, str):
            continue  # named by encode_headers at enqueue
        if key in RESERVED_HEADERS:
            raise errors.MessageError(
                f"header {key!r} of event {event_id} is reserved: the relay sets the {key} "
                "attribute from the message's own field, so this value would be lost; rename "
                "the header"
            )
        if not (key.isascii() and "\x00" not in key):
            _check_text(key, f"header key {key[:40]!r}", event_id)
        if isinstance(value, str) and not (value.isascii() and "\x00" not in value):
            _check_text(value, f"header {key[:40]!r}", event_id)


def _available_at_problem(value: object, event_id: object) -> str:
    if not isinstance(value, dt.datetime):
        return (
            f"available_at of event {event_id} must be a datetime.datetime with a time zone, "
            f"got {type(value).__name__} {value!r}"
        )
    return (
        f"available_at of event {event_id} has no time zone ({value.isoformat()}): PostgreSQL "
        "would read it in the session's TimeZone; give an aware datetime, e.g. "
        "datetime.now(timezone.utc) + timedelta(minutes=5)"
    )


def require_message(value: object, call: str) -> Message:
    """``value`` if it is a :class:`Message`; else a ``TypeError`` that names ``call``, the
    expected form, before anything is written."""
    if isinstance(value, Message):
        return value
    if isinstance(value, Mapping):
        hint = "build one: Message(aggregate_type, aggregate_id, event_type, payload)"
    else:
        hint = "the session comes first, the message second"
    raise TypeError(f"{call}: expected a Message, got {type(value).__name__} ({hint})")


def require_messages(values: object, call: str) -> list[Message]:
    """``values`` as a list of :class:`Message`, each checked (see :func:`require_message`)."""
    if isinstance(values, (Message, str, bytes, Mapping)) or not hasattr(values, "__iter__"):
        raise TypeError(
            f"{call}: expected an iterable of Message, got {type(values).__name__} "
            "(the session comes first, the messages second)"
        )
    return [require_message(value, f"{call}, item {index}") for index, value in enumerate(values)]


@dataclasses.dataclass(frozen=True, slots=True)
class ReceivedMessage:
    """A message taken from the broker, before it is recorded in the inbox."""

    event_id: str
    event_type: str
    payload: bytes
    headers: Headers = dataclasses.field(default_factory=dict)
    message_id: str | None = None
    aggregate_type: str = ""
    aggregate_id: str = ""
    ordering_key: str | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class OutboxEvent:
    """A stored outbox row as read back."""

    event_id: uuid.UUID
    seq: int
    aggregate_type: str
    aggregate_id: str
    event_type: str
    payload: bytes
    headers: dict[str, str]
    ordering_key: str | None
    status: OutboxStatus
    created_at: dt.datetime
    available_at: dt.datetime
    published_at: dt.datetime | None
    delivery_attempts: int
    last_error: str | None
    lock_token: uuid.UUID | None
    locked_at: dt.datetime | None

    def json(self) -> Any:
        """The payload decoded as JSON."""
        return json.loads(self.payload)


# -- building events on the claim's hot path ------------------------------------------------
#
# A relay claim turns hundreds of rows into OutboxEvents per round trip, so two standard
# constructors dominate its Python time: a frozen dataclass's __init__ goes through
# object.__setattr__ once per field (~4 µs for 16 fields here, against ~2 µs when each slot's
# setter is called directly), and uuid.UUID(text) validates its text in Python (~2.5 µs,
# against ~1 µs for parsing the hex digits alone). The builders below produce the very same
# objects (equal, same hash, same str), from values the database has already validated.

_NEW = object.__new__
# Each slot's setter, looked up by name (so a reordering of the fields cannot mismatch them).
_SETTERS = {
    field.name: getattr(OutboxEvent, field.name).__set__
    for field in dataclasses.fields(OutboxEvent)
}
_set_event_id = _SETTERS["event_id"]
_set_seq = _SETTERS["seq"]
_set_aggregate_type = _SETTERS["aggregate_type"]
_set_aggregate_id = _SETTERS["aggregate_id"]
_set_event_type = _SETTERS["event_type"]
_set_payload = _SETTERS["payload"]
_set_headers = _SETTERS["headers"]
_set_ordering_key = _SETTERS["ordering_key"]
_set_status = _SETTERS["status"]
_set_created_at = _SETTERS["created_at"]
_set_available_at = _SETTERS["available_at"]
_set_published_at = _SETTERS["published_at"]
_set_delivery_attempts = _SETTERS["delivery_attempts"]
_set_last_error = _SETTERS["last_error"]
_set_lock_token = _SETTERS["lock_token"]
_set_locked_at = _SETTERS["locked_at"]
# A field added to OutboxEvent must be set in claimed_event() too (tests/unit/test_models.py
# compares every field with the dataclass's own constructor).


def claimed_event(
    event_id: uuid.UUID,
    seq: int,
    aggregate_type: str,
    aggregate_id: str,
    event_type: str,
    payload: bytes,
    headers: dict[str, str],
    ordering_key: str | None,
    created_at: dt.datetime,
    available_at: dt.datetime,
    delivery_attempts: int,
    last_error: str | None,
    lock_token: uuid.UUID,
    locked_at: dt.datetime,
) -> OutboxEvent:
    """``OutboxEvent(...)`` for a row just claimed (pending, unpublished, leased to
    ``lock_token``), without the frozen ``__init__``'s per-field cost. Same object, faster."""
    event: OutboxEvent = _NEW(OutboxEvent)
    _set_event_id(event, event_id)
    _set_seq(event, seq)
    _set_aggregate_type(event, aggregate_type)
    _set_aggregate_id(event, aggregate_id)
    _set_event_type(event, event_type)
    _set_payload(event, payload)
    _set_headers(event, headers)
    _set_ordering_key(event, ordering_key)
    _set_status(event, OutboxStatus.PENDING)
    _set_created_at(event, created_at)
    _set_available_at(event, available_at)
    _set_published_at(event, None)
    _set_delivery_attempts(event, delivery_attempts)
    _set_last_error(event, last_error)
    _set_lock_token(event, lock_token)
    _set_locked_at(event, locked_at)
    return event


def _direct_uuid_builder() -> Callable[[str], uuid.UUID] | None:
    """``uuid.UUID``'s own slots (``int``, ``is_safe``), when this Python has them."""
    slots = uuid.UUID.__dict__
    int_slot, safe_slot = slots.get("int"), slots.get("is_safe")
    if not (hasattr(int_slot, "__set__") and hasattr(safe_slot, "__set__")):
        return None
    set_int, set_safe = int_slot.__set__, safe_slot.__set__  # type: ignore[union-attr]
    unknown = uuid.SafeUUID.unknown
    new = _NEW
    uuid_class = uuid.UUID

    def build(text: str) -> uuid.UUID:
        value: uuid.UUID = new(uuid_class)
        set_int(value, int(text.replace("-", ""), 16))
        set_safe(value, unknown)
        return value

    # Guard against a Python whose UUID keeps more state than these two slots.
    sample = "0f1e2d3c-4b5a-4978-8695-a4b3c2d1e0f9"
    if build(sample) != uuid.UUID(sample) or str(build(sample)) != sample:
        return None
    return build


_build_uuid = _direct_uuid_builder()


def uuid_from_db(value: object) -> uuid.UUID:
    """A ``uuid`` column's value as ``uuid.UUID``: drivers hand it over as a UUID or as the
    canonical text PostgreSQL prints (36 characters), which is parsed without re-validation."""
    if type(value) is str and len(value) == 36 and _build_uuid is not None:
        return _build_uuid(value)
    return value if isinstance(value, uuid.UUID) else uuid.UUID(str(value))


@dataclasses.dataclass(frozen=True, slots=True)
class InboxEvent:
    """A stored inbox row as read back."""

    consumer: str
    event_id: str
    seq: int
    message_id: str | None
    aggregate_type: str
    aggregate_id: str
    event_type: str
    payload: bytes
    headers: dict[str, str]
    ordering_key: str | None
    status: InboxStatus
    created_at: dt.datetime
    available_at: dt.datetime
    processed_at: dt.datetime | None
    delivery_attempts: int
    last_error: str | None
    lock_token: uuid.UUID | None
    locked_at: dt.datetime | None

    def json(self) -> Any:
        """The payload decoded as JSON."""
        return json.loads(self.payload)


_dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode


def _prebuilt_encoder() -> Callable[[Any], str]:
    """``_dumps`` without its per-call set-up, for the enqueue path.

    ``JSONEncoder.encode`` builds a new C encoder on every call: about half of its cost for a
    small dict. This one builds it once, with the same settings, so its output is identical. It
    has no circular-reference check (the check's ``markers`` dict would be shared between
    threads); a circular value overflows the recursion limit instead, and is then encoded again
    by ``_dumps`` so that it fails exactly as before.
    """
    make_encoder = getattr(json.encoder, "c_make_encoder", None)
    if make_encoder is None:  # no C accelerator (PyPy): the standard path
        return _dumps
    settings = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    iterencode = make_encoder(
        None,
        settings.default,
        json.encoder.encode_basestring,
        None,
        settings.key_separator,
        settings.item_separator,
        settings.sort_keys,
        settings.skipkeys,
        settings.allow_nan,
    )
    join = "".join

    def dumps(value: Any) -> str:
        try:
            return join(iterencode(value, 0))
        except RecursionError:
            return _dumps(value)

    return dumps


_encode_json = _prebuilt_encoder()


def encode_payload(payload: Any, event_id: object = None) -> bytes:
    """Bytes as they are; anything else as compact UTF-8 JSON."""
    if type(payload) is not dict:  # a dict is the common case: straight to the encoder
        if isinstance(payload, bytes):
            return payload
        if isinstance(payload, (bytearray, memoryview)):
            return bytes(payload)
    try:
        return _encode_json(payload).encode()
    except (TypeError, ValueError) as exc:
        raise errors.MessageError(
            f"payload of event {event_id} is neither bytes nor JSON-serializable ({exc}); "
            "pass bytes, or a value json.dumps accepts (dict, list, str, number, bool, None)"
        ) from exc


def encode_headers(headers: Headers, event_id: object = None) -> str:
    """Headers as a JSON object of strings; anything else is a clear error before storage."""
    if not headers:
        return "{}"
    for key, value in headers.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise errors.MessageError(
                f"headers of event {event_id} must map str to str; got {key!r}: {value!r} "
                "(convert the value with str() before enqueueing)"
            )
    return _encode_json(headers if type(headers) is dict else dict(headers))


def _is_str_map(value: object) -> TypeGuard[dict[str, str]]:
    # The hot path of every claim: a plain loop is ~5x cheaper than all() over a generator.
    if type(value) is not dict:
        return False
    for key, item in value.items():  # noqa: SIM110 - a loop, on purpose (see above)
        if type(key) is not str or type(item) is not str:
            return False
    return True


def decode_headers(raw: object, event_id: object = None) -> dict[str, str]:
    """Read stored headers tolerantly: a warning and a best effort, never an exception.

    Rows written by other tools (or older code) may hold a JSON string, an array, or values that
    are not strings. The relay must not stall on such a row, so it gets what can be salvaged.
    """
    if _is_str_map(raw):
        return raw
    value = raw
    if isinstance(value, (bytes, bytearray, memoryview)):
        value = bytes(value).decode("utf-8", errors="replace")
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            logger.warning(
                "headers of event %s are not JSON; ignoring them",
                event_id,
                extra={"event_id": str(event_id)},
            )
            return {}
        logger.warning(
            "headers of event %s are stored as a JSON string, not an object; decoding it",
            event_id,
            extra={"event_id": str(event_id)},
        )
        if _is_str_map(value):
            return value
    if isinstance(value, dict):
        logger.warning(
            "headers of event %s hold non-string values; converting them to strings",
            event_id,
            extra={"event_id": str(event_id)},
        )
        return {str(k): v if isinstance(v, str) else _dumps(v) for k, v in value.items()}
    logger.warning(
        "headers of event %s are not a JSON object (%s); ignoring them",
        event_id,
        type(value).__name__,
        extra={"event_id": str(event_id)},
    )
    return {}


def utcnow() -> dt.datetime:
    """The current time, timezone-aware (UTC)."""
    return dt.datetime.now(dt.timezone.utc)
