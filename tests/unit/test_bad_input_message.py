"""Bad ``Message`` fields, tried systematically: a message is refused with a ``MessageError``
naming the field before anything is written, or it is one PostgreSQL can store; what Pub/Sub
would refuse is named by the relay's check (the row is then dead-lettered with that reason)."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from outbox_di import errors, models
from outbox_di.brokers import ports
from outbox_di.brokers.pubsub import publisher as pubsub
from outbox_di.repository import OutboxRepository

NOW = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
# Text with what PostgreSQL cannot store (NUL, lone surrogates) and what SQL would choke on.
hostile = st.sampled_from(
    ["'", '"', ";", "$$", "{{schema}}", "%s", "%(event_id)s", "\\", "\x00", "\ud800", "\udcff", "é"]
)
texts = st.lists(
    st.text(alphabet=st.characters(codec=None, exclude_categories=()), max_size=6) | hostile,
    max_size=4,
).map("".join)
REPOSITORY = OutboxRepository(None, "orders")


def _storable(text: str) -> bool:
    return "\x00" not in text and not any(0xD800 <= ord(c) <= 0xDFFF for c in text)


@settings(max_examples=200, derandomize=True, database=None, deadline=None)
@given(aggregate_type=texts, aggregate_id=texts, event_type=texts, ordering_key=st.none() | texts)
def test_text_fields_are_refused_by_name_or_storable(
    aggregate_type: str, aggregate_id: str, event_type: str, ordering_key: str | None
) -> None:
    fields = {
        "aggregate_type": aggregate_type,
        "aggregate_id": aggregate_id,
        "event_type": event_type,
        "ordering_key": ordering_key,
    }
    try:
        message = models.Message(aggregate_type, aggregate_id, event_type, {}, **_key(ordering_key))
    except errors.MessageError as exc:
        bad = [name for name, value in fields.items() if value is not None and not _storable(value)]
        assert bad, f"refused a storable message: {exc}"
        assert str(exc).startswith(f"{bad[0]} of event "), exc
        assert "NUL character" in str(exc) or "lone surrogate" in str(exc)
        return
    assert all(_storable(value) for value in fields.values() if value is not None)
    try:
        row = REPOSITORY._row(message)
    except errors.MessageError as exc:  # an empty field: named too
        assert "must not be empty" in str(exc) or "non-empty string" in str(exc), exc
        return
    assert row[1:4] == (aggregate_type, aggregate_id, event_type)


def _key(ordering_key: str | None) -> dict[str, Any]:
    return {} if ordering_key is None else {"ordering_key": ordering_key}


header_values = st.one_of(
    texts, st.integers(), st.none(), st.binary(max_size=4), st.lists(st.text(max_size=2))
)


@settings(max_examples=200, derandomize=True, database=None, deadline=None)
@given(
    headers=st.dictionaries(
        texts | st.sampled_from(sorted(models.RESERVED_HEADERS)) | st.integers(),
        header_values,
        max_size=4,
    )
)
def test_headers_are_refused_by_name_or_stored_as_a_json_object_of_strings(
    headers: dict[Any, Any],
) -> None:
    try:
        message = models.Message("order", "o-1", "order.paid", {}, headers)
        encoded = models.encode_headers(message.headers, message.event_id)
    except errors.MessageError as exc:
        text = str(exc)
        assert "of event " in text
        assert any(
            hint in text
            for hint in ("is reserved", "NUL character", "lone surrogate", "must map str to str")
        ), text
        return
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in headers.items())
    assert not models.RESERVED_HEADERS.intersection(headers)
    assert models.decode_headers(encoded) == headers
    # What Pub/Sub takes is the relay's business: a reason (the row is dead-lettered), or a size.
    event = _event(headers=headers)
    checked = pubsub._check_message(event, ports.event_attributes(event))
    assert isinstance(checked, int) or checked.startswith(("attribute", "payload", "1", "2")), (
        checked
    )


def _event(*, headers: dict[str, str] | None = None, payload: bytes = b"{}") -> models.OutboxEvent:
    return models.claimed_event(
        uuid.uuid4(), 1, "order", "o-1", "order.paid", payload, headers or {}, None,
        NOW, NOW, 1, None, uuid.uuid4(), NOW,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("headers", "reason"),
    [
        ({"goog-trace": "1"}, "uses the prefix 'goog', reserved by Pub/Sub"),
        ({"k" * 257: "1"}, "is empty or over 256 bytes"),
        ({"": "1"}, "is empty or over 256 bytes"),
        ({"k": "é" * 513}, "attribute 'k' is over 1024 bytes"),
        ({f"h{n}": "1" for n in range(97)}, "101 attributes is over Pub/Sub's limit of 100"),
    ],
)
def test_header_keys_and_values_pubsub_refuses_are_named_by_the_relay(
    headers: dict[str, str], reason: str
) -> None:
    # Accepted at enqueue (the publisher is pluggable; these are Pub/Sub's rules), then
    # dead-lettered by PubSubPublisher with this reason (test_pubsub_publisher.py runs it).
    message = models.Message("order", "o-1", "order.paid", {}, headers)
    assert REPOSITORY._row(message)
    event = _event(headers=headers)
    assert reason in str(pubsub.message_problem(event, ports.event_attributes(event)))


@pytest.mark.parametrize(("size", "refused"), [(0, False), (10_000_000, False), (10_000_001, True)])
def test_payload_sizes(size: int, refused: bool) -> None:
    payload = b"x" * size
    message = models.Message("order", "o-1", "order.paid", payload)
    assert message.payload_bytes() == payload  # 0 bytes is a payload like another
    problem = pubsub.message_problem(_event(payload=payload), {"event_id": "x"})
    if refused:
        assert problem == (
            "payload of 10000001 bytes is over Pub/Sub's limit of 10000000 bytes per message"
        )
    else:
        assert problem is None


@settings(max_examples=200, derandomize=True, database=None, deadline=None)
@given(payload=st.binary(max_size=64))
def test_any_bytes_are_stored_as_they_are(payload: bytes) -> None:
    # Bytes are never decoded: non-UTF-8 payloads reach the broker byte for byte.
    assert models.encode_payload(payload) == payload
    assert models.encode_payload(bytearray(payload)) == payload


json_like = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=True, allow_infinity=True)
    | texts
    | st.builds(object),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(texts | st.integers(), inner),
    max_leaves=5,
)


@settings(max_examples=100, derandomize=True, database=None, deadline=None)
@given(payload=json_like)
def test_a_payload_is_compact_json_or_a_message_error_naming_the_fix(payload: object) -> None:
    event_id = uuid.uuid4()
    try:
        encoded = models.encode_payload(payload, event_id)
    except errors.MessageError as exc:
        assert str(exc).startswith(f"payload of event {event_id} is neither bytes nor JSON")
        assert "pass bytes, or a value json.dumps accepts" in str(exc)
        return
    encoded.decode("utf-8")  # valid UTF-8 JSON, whatever the text held


@pytest.mark.parametrize(
    ("available_at", "message"),
    [
        (dt.datetime(2030, 1, 1), "has no time zone (2030-01-01T00:00:00): PostgreSQL"),
        ("2030-01-01T00:00:00Z", "must be a datetime.datetime with a time zone, got str"),
        (dt.date(2030, 1, 1), "must be a datetime.datetime with a time zone, got date"),
        (1893456000, "must be a datetime.datetime with a time zone, got int"),
    ],
)
def test_available_at_must_be_an_aware_datetime(available_at: Any, message: str) -> None:
    # A naive datetime used to be stored in the session's TimeZone: hours early or late.
    with pytest.raises(errors.MessageError, match=r"^available_at of event ") as info:
        models.Message("order", "o-1", "order.paid", {}, available_at=available_at)
    assert message in str(info.value)
    assert "datetime.now(timezone.utc)" in str(info.value) or "got" in str(info.value)


@settings(max_examples=50, derandomize=True, database=None, deadline=None)
@given(at=st.datetimes(timezones=st.timezones() | st.just(dt.timezone(dt.timedelta(hours=-12)))))
def test_any_aware_datetime_is_accepted(at: dt.datetime) -> None:
    message = models.Message("order", "o-1", "order.paid", {}, available_at=at)
    assert message.available_at == at


def test_an_ordering_key_that_is_not_a_string_is_named() -> None:
    with pytest.raises(
        errors.MessageError, match=r"ordering_key of event .* must be a str or None"
    ):
        models.Message("order", "o-1", "order.paid", {}, ordering_key=7)  # type: ignore[arg-type]
