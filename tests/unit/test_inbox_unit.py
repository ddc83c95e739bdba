"""Inbox pieces without I/O: message mapping, names, handler kinds, backoff, flow control."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from google.pubsub_v1.types import PubsubMessage

from outbox_di import config, errors, models
from outbox_di.brokers.pubsub import names, subscriber
from outbox_di.inbox import receiver, worker


def _config(**inbox: Any) -> config.OutboxConfig:
    return config.OutboxConfig.from_mapping(
        {
            "schema": "svc",
            "dsn": "postgresql://x@127.0.0.1/x",
            "publisher": {"enabled": False},
            "inbox": inbox,
        }
    )


def test_attributes_become_columns_and_the_rest_headers() -> None:
    pb = PubsubMessage.pb()(
        data=b"{}",
        message_id="123",
        ordering_key="k1",
        attributes={
            "event_id": "e-1",
            "event_type": "order.placed",
            "aggregate_type": "order",
            "aggregate_id": "o-9",
            "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        },
    )
    message = subscriber.to_received(pb)
    assert message == models.ReceivedMessage(
        event_id="e-1",
        event_type="order.placed",
        payload=b"{}",
        headers={"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"},
        message_id="123",
        aggregate_type="order",
        aggregate_id="o-9",
        ordering_key="k1",
    )


def test_missing_event_id_and_type_fall_back() -> None:
    message = subscriber.to_received(PubsubMessage.pb()(data=b"x", message_id="77"))
    assert message.event_id == "77"
    assert message.event_type == receiver.UNKNOWN_EVENT_TYPE == "unknown"
    assert message.ordering_key is None and message.headers == {}


def test_nul_characters_are_refused_and_scrubbed() -> None:
    fine = models.ReceivedMessage("e-1", "t", b"\x00 payload bytes are fine", {"k": "v"})
    assert receiver.refusal(fine) is None
    bad_id = models.ReceivedMessage("e\x001", "t", b"")
    assert receiver.refusal(bad_id) == (
        "event_id contains a NUL character, which PostgreSQL text cannot store"
    )
    bad_key = models.ReceivedMessage("e-2", "t", b"", {"a\x00": "v"}, ordering_key="k\x00")
    assert receiver.refusal(bad_key) == (
        "ordering_key contains a NUL character, which PostgreSQL text cannot store"
    )
    clean = receiver.scrubbed(bad_key)
    assert clean.headers == {"a\ufffd": "v"} and clean.ordering_key == "k\ufffd"
    assert receiver.refusal(clean) is None
    assert receiver.scrubbed(bad_id).event_id == "e\ufffd1"


def test_subscription_names_resolve_like_topics() -> None:
    full = "projects/p/subscriptions/s"
    assert names.resolve_subscription(full, None) == full
    assert names.resolve_subscription("s", "p") == full
    with pytest.raises(errors.ConfigError, match="no project is known"):
        names.resolve_subscription("s", None)


def test_receiver_needs_a_subscription_and_uses_the_schema_as_consumer() -> None:
    with pytest.raises(errors.ConfigError, match=r"inbox\.subscription"):
        receiver.InboxReceiver(_config(), repository=None)  # type: ignore[arg-type]
    made = receiver.InboxReceiver(
        _config(subscription="projects/proj/subscriptions/sub"),
        repository=None,  # type: ignore[arg-type]
    )
    assert made.consumer == "svc"
    assert made.subscription == "projects/proj/subscriptions/sub"


def test_retry_delay_doubles_and_is_capped() -> None:
    made = worker.InboxWorker(
        _config(retry_delay="1s"),
        repository=None,  # type: ignore[arg-type]
        handlers={},
    )
    delays = [made.retry_delay(attempt) for attempt in (1, 2, 3, 20)]
    assert 0.9 <= delays[0] <= 1.1
    assert 1.8 <= delays[1] <= 2.2
    assert 3.6 <= delays[2] <= 4.4
    assert delays[3] <= 300.0


async def test_flow_control_waits_for_room() -> None:
    flow = receiver._FlowControl(max_messages=1500, max_bytes=100)
    assert await flow.room() == 1000
    flow.take(1200, 10)
    assert await flow.room() == 300
    flow.take(300, 0)
    waiter = asyncio.ensure_future(flow.room())
    await asyncio.sleep(0.01)
    assert not waiter.done()
    await flow.give_back(1000, 10)
    assert await asyncio.wait_for(waiter, 1) == 1000
    flow.take(0, 100)  # over max_bytes: no room until bytes are given back
    waiter = asyncio.ensure_future(flow.room())
    await asyncio.sleep(0.01)
    assert not waiter.done()
    await flow.give_back(0, 100)
    assert await asyncio.wait_for(waiter, 1) == 1000
