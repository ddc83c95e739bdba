"""The claim's fast builders produce exactly what the standard constructors produce."""

from __future__ import annotations

import dataclasses
import datetime as dt
import pickle
import uuid
from typing import Any

import pytest

from outbox_di import models
from outbox_di.repository import OutboxRepository

NOW = dt.datetime(2026, 11, 30, 12, 0, tzinfo=dt.timezone.utc)


def test_claimed_event_equals_the_dataclass_built_the_standard_way() -> None:
    event_id, token = uuid.uuid4(), uuid.uuid4()
    # Every field a distinct value, so a setter wired to the wrong slot shows.
    values: dict[str, Any] = {
        "event_id": event_id,
        "seq": 7,
        "aggregate_type": "item",
        "aggregate_id": "item-7",
        "event_type": "item.created",
        "payload": b'{"n":7}',
        "headers": {"traceparent": "00-x-y-01"},
        "ordering_key": "key-7",
        "created_at": NOW,
        "available_at": NOW + dt.timedelta(seconds=1),
        "delivery_attempts": 3,
        "last_error": "boom",
        "lock_token": token,
        "locked_at": NOW + dt.timedelta(seconds=2),
    }
    fast = models.claimed_event(**values)
    standard = models.OutboxEvent(status=models.OutboxStatus.PENDING, published_at=None, **values)
    assert fast == standard
    assert repr(fast) == repr(standard)
    for field in dataclasses.fields(models.OutboxEvent):
        assert getattr(fast, field.name) == getattr(standard, field.name), field.name
    with pytest.raises(dataclasses.FrozenInstanceError):
        fast.seq = 8  # type: ignore[misc]
    assert pickle.loads(pickle.dumps(fast)) == standard


@pytest.mark.parametrize("make", [uuid.uuid4, uuid.uuid1, lambda: uuid.UUID(int=0)])
def test_uuid_from_db_matches_uuid_for_canonical_text(make: object) -> None:
    expected = make()  # type: ignore[operator]
    parsed = models.uuid_from_db(str(expected))
    assert type(parsed) is uuid.UUID
    assert parsed == expected
    assert hash(parsed) == hash(expected)
    assert str(parsed) == str(expected)
    assert parsed.hex == expected.hex
    assert parsed.version == expected.version
    assert parsed.is_safe == uuid.SafeUUID.unknown
    assert pickle.loads(pickle.dumps(parsed)) == expected
    assert models.uuid_from_db(str(expected).upper()) == expected


def test_uuid_from_db_other_forms() -> None:
    value = uuid.uuid4()
    assert models.uuid_from_db(value) is value
    assert models.uuid_from_db(value.hex) == value  # not 36 characters: the standard parser
    with pytest.raises(ValueError):
        models.uuid_from_db("not-a-uuid-not-a-uuid-not-a-uuid-xxx")


def _claim_row(headers: object) -> tuple[object, ...]:
    # The claim's RETURNING columns, as psycopg2 hands them over.
    return (
        "0f1e2d3c-4b5a-4978-8695-a4b3c2d1e0f9",
        1,
        "item",
        "item-1",
        "item.created",
        memoryview(b'{"n":1}'),
        headers,
        None,
        NOW,
        NOW,
        1,
        None,
    )


def test_claimed_row_headers() -> None:
    token = uuid.uuid4()
    # Empty headers come back from the claim as NULL.
    empty = OutboxRepository._claimed(_claim_row(None), token, NOW)
    assert empty.headers == {}
    assert empty.payload == b'{"n":1}'
    assert type(empty.payload) is bytes
    assert empty.event_id == uuid.UUID("0f1e2d3c-4b5a-4978-8695-a4b3c2d1e0f9")
    assert empty.lock_token == token
    assert empty.status is models.OutboxStatus.PENDING
    given = OutboxRepository._claimed(_claim_row({"a": "b"}), token, NOW)
    assert given.headers == {"a": "b"}
    # A row written by another tool, with a number in its headers: converted, not refused.
    salvaged = OutboxRepository._claimed(_claim_row({"a": 1}), token, NOW)
    assert salvaged.headers == {"a": "1"}


def test_publish_request_built_in_place_equals_the_standard_construction() -> None:
    from google.pubsub_v1.types import PublishRequest, PubsubMessage

    from outbox_di.brokers import ports
    from outbox_di.brokers.pubsub import publisher as pubsub

    token = uuid.uuid4()
    events = [
        models.claimed_event(
            uuid.uuid4(),
            n,
            "item",
            f"item-{n}",
            "item.created",
            b'{"n":%d}' % n,
            {"traceparent": f"00-{n}"} if n % 2 else {},
            f"key-{n}" if n % 3 else None,
            NOW,
            NOW,
            1,
            None,
            token,
            NOW,
        )
        for n in range(6)
    ]
    items = [(n, event, ports.event_attributes(event), 0) for n, event in enumerate(events)]
    built = pubsub.build_request("projects/p/topics/t", items)
    standard = PublishRequest.pb()(
        topic="projects/p/topics/t",
        messages=[
            PubsubMessage.pb()(
                data=event.payload,
                attributes=ports.event_attributes(event),
                ordering_key=event.ordering_key or "",
            )
            for event in events
        ],
    )
    assert built == standard
    assert built.messages[1].attributes["traceparent"] == "00-1"
    assert built.messages[1].attributes["event_id"] == str(events[1].event_id)
    assert built.messages[0].ordering_key == ""
    assert built.messages[1].ordering_key == "key-1"


@pytest.mark.parametrize(
    ("headers", "event_type", "aggregate_id", "payload", "ordering_key", "plain"),
    [
        ({}, "item.created", "item-1", b"{}", None, True),
        ({}, "item.created", "i" * 256, b"x" * 1000, "key", True),
        ({}, "item.created", "é" * 257, b"{}", None, False),  # long: checked in full
        ({}, "t" * 300, "item-1", b"{}", None, False),
        ({}, "item.created", "item-1", b"x" * 10_000_001, None, False),  # refused, in full
        ({"traceparent": "00-a-b-01"}, "item.created", "item-1", b"{}", None, False),
    ],
)
def test_the_plain_message_fast_path_agrees_with_the_full_check(
    headers: dict[str, str],
    event_type: str,
    aggregate_id: str,
    payload: bytes,
    ordering_key: str | None,
    plain: bool,
) -> None:
    from outbox_di.brokers import ports
    from outbox_di.brokers.pubsub import publisher as pubsub

    event = models.claimed_event(
        uuid.uuid4(),
        1,
        "item",
        aggregate_id,
        event_type,
        payload,
        headers,
        ordering_key,
        NOW,
        NOW,
        1,
        None,
        uuid.uuid4(),
        NOW,
    )
    fast = pubsub._plain_message_size(event)
    full = pubsub._check_message(event, ports.event_attributes(event))
    if plain:
        assert fast == full
        assert isinstance(fast, int)
    else:
        assert fast is None
