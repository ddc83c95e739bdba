"""The Pub/Sub emulators, through the real ``google-cloud-pubsub`` client over gRPC.

Tests taking ``pubsub_emulator`` run against every available emulator (Google's and the
in-process one; only ``PUBSUB_EMULATOR_HOST`` when it is set). The agreement test runs one
scripted scenario against both and compares what a client can observe. Fault injection exists
only in the in-process emulator. Every wait is bounded.
"""

from __future__ import annotations

import asyncio
import os
import queue
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import grpc  # type: ignore[import-untyped, unused-ignore]
import pytest
from google.api_core import exceptions
from google.cloud import pubsub_v1  # type: ignore[import-untyped, unused-ignore]
from google.pubsub_v1 import PublisherClient as GapicPublisherClient
from google.pubsub_v1 import SubscriberAsyncClient, types
from google.pubsub_v1 import SubscriberClient as GapicSubscriberClient

from outbox_di.testing import emulator as emulator_module
from outbox_di.testing import pubsub as pubsub_testing
from outbox_di.testing.pubsub import EmulatorEndpoint

# The plugin (outbox_di.testing) will provide these fixtures; they are named here explicitly.
pubsub_emulator = pubsub_testing.pubsub_emulator
pubsub_google_emulator = pubsub_testing.pubsub_google_emulator
pubsub_inprocess_emulator = pubsub_testing.pubsub_inprocess_emulator

PROJECT = "projects/outbox-di-test"
WAIT = 10.0  # seconds: the longest any single wait for messages may take


def _names(prefix: str) -> tuple[str, str]:
    """A unique topic and subscription path for one test."""
    name = f"{prefix}-{uuid.uuid4().hex[:12]}"
    return f"{PROJECT}/topics/{name}", f"{PROJECT}/subscriptions/{name}"


def _msg(data: bytes, **fields: Any) -> types.PubsubMessage:
    return types.PubsubMessage(data=data, **fields)


def _in_process(endpoint: EmulatorEndpoint) -> emulator_module.InProcessEmulator:
    assert endpoint.emulator is not None
    return endpoint.emulator


def _status(exc: BaseException) -> str:
    assert isinstance(exc, exceptions.GoogleAPICallError), exc
    code = exc.grpc_status_code
    return code.name if code is not None else type(exc).__name__


async def _error_code(call: Any) -> str:
    try:
        await call
    except exceptions.GoogleAPICallError as exc:
        return _status(exc)
    return "OK"


async def _pull(
    subscriber: SubscriberAsyncClient, subscription: str, want: int, within: float = WAIT
) -> list[types.ReceivedMessage]:
    """Unary pulls until ``want`` messages came or ``within`` seconds passed.

    Both emulators hold an empty pull until about one second before its deadline, so each call
    gets a deadline of 1.5-3 s and returns as soon as something is there.
    """
    received: list[types.ReceivedMessage] = []
    deadline = time.monotonic() + within
    while len(received) < want and time.monotonic() < deadline:
        timeout = max(1.5, min(3.0, deadline - time.monotonic()))
        response = await subscriber.pull(
            request={"subscription": subscription, "max_messages": min(1000, want - len(received))},
            timeout=timeout,
        )
        received.extend(response.received_messages)
    return received


async def _pull_nothing(subscriber: SubscriberAsyncClient, subscription: str, wait: float) -> int:
    """How many messages arrive within about ``wait`` seconds (one long-polling pull)."""
    response = await subscriber.pull(
        request={"subscription": subscription, "max_messages": 100}, timeout=wait + 1.0
    )
    return len(response.received_messages)


def _pull_sync(
    subscriber: Any, subscription: str, want: int, within: float = WAIT
) -> list[types.ReceivedMessage]:
    received: list[types.ReceivedMessage] = []
    deadline = time.monotonic() + within
    while len(received) < want and time.monotonic() < deadline:
        timeout = max(1.5, min(3.0, deadline - time.monotonic()))
        response = subscriber.pull(
            request={"subscription": subscription, "max_messages": min(1000, want - len(received))},
            timeout=timeout,
        )
        received.extend(response.received_messages)
    return received


def _data(messages: list[types.ReceivedMessage]) -> list[str]:
    return [m.message.data.decode() for m in messages]


async def _setup(host: str, prefix: str, **subscription: Any) -> tuple[str, str]:
    topic, name = _names(prefix)
    async with pubsub_testing.async_publisher_client(host) as publisher:
        await publisher.create_topic(name=topic)
    async with pubsub_testing.async_subscriber_client(host) as subscriber:
        await subscriber.create_subscription(request={"name": name, "topic": topic, **subscription})
    return topic, name


# -- both emulators ---------------------------------------------------------------------------


async def test_topic_and_subscription_administration(pubsub_emulator: EmulatorEndpoint) -> None:
    topic, subscription = _names("admin")
    publisher = pubsub_testing.async_publisher_client(pubsub_emulator.host)
    subscriber = pubsub_testing.async_subscriber_client(pubsub_emulator.host)
    async with publisher, subscriber:
        created = await publisher.create_topic(name=topic)
        assert created.name == topic
        assert (await publisher.get_topic(topic=topic)).name == topic
        with pytest.raises(exceptions.AlreadyExists):
            await publisher.create_topic(name=topic)
        with pytest.raises(exceptions.InvalidArgument):
            await publisher.create_topic(name=f"{PROJECT}/topics/1-starts-with-a-digit")

        updated = await publisher.update_topic(
            request={
                "topic": {"name": topic, "message_retention_duration": {"seconds": 3600}},
                "update_mask": {"paths": ["message_retention_duration"]},
            }
        )
        assert updated.message_retention_duration.total_seconds() == 3600

        made = await subscriber.create_subscription(name=subscription, topic=topic)
        assert made.ack_deadline_seconds == 10  # the default
        assert not made.enable_message_ordering
        with pytest.raises(exceptions.AlreadyExists):
            await subscriber.create_subscription(name=subscription, topic=topic)
        ordered = await subscriber.create_subscription(
            request={
                "name": f"{subscription}-ordered",
                "topic": topic,
                "enable_message_ordering": True,
                "ack_deadline_seconds": 30,
            }
        )
        assert ordered.enable_message_ordering and ordered.ack_deadline_seconds == 30
        assert (await subscriber.get_subscription(subscription=subscription)).topic == topic

        topics = [t.name async for t in await publisher.list_topics(project=PROJECT)]
        assert topic in topics
        names = [s async for s in await publisher.list_topic_subscriptions(topic=topic)]
        assert sorted(names) == [subscription, f"{subscription}-ordered"]
        listed = [s.name async for s in await subscriber.list_subscriptions(project=PROJECT)]
        assert subscription in listed

        await subscriber.delete_subscription(subscription=f"{subscription}-ordered")
        with pytest.raises(exceptions.NotFound):
            await subscriber.get_subscription(subscription=f"{subscription}-ordered")
        await publisher.delete_topic(topic=topic)
        with pytest.raises(exceptions.NotFound):
            await publisher.get_topic(topic=topic)
        # A subscription outlives its topic, detached.
        orphan = await subscriber.get_subscription(subscription=subscription)
        assert orphan.topic == "_deleted-topic_"
        await subscriber.delete_subscription(subscription=subscription)


async def test_not_found_for_missing_topic_and_subscription(
    pubsub_emulator: EmulatorEndpoint,
) -> None:
    topic, subscription = _names("missing")
    publisher = pubsub_testing.async_publisher_client(pubsub_emulator.host)
    subscriber = pubsub_testing.async_subscriber_client(pubsub_emulator.host)
    async with publisher, subscriber:
        with pytest.raises(exceptions.NotFound):
            await publisher.get_topic(topic=topic)
        with pytest.raises(exceptions.NotFound):
            await publisher.publish(topic=topic, messages=[_msg(b"x")], timeout=5)
        with pytest.raises(exceptions.NotFound):
            await subscriber.create_subscription(name=subscription, topic=topic)
        with pytest.raises(exceptions.NotFound):
            await subscriber.pull(subscription=subscription, max_messages=1, timeout=5)
        with pytest.raises(exceptions.NotFound):
            await subscriber.acknowledge(subscription=subscription, ack_ids=[f"{subscription}:1"])
        with pytest.raises(exceptions.NotFound):
            await publisher.delete_topic(topic=topic)

    # The high-level publisher reports it through the future.
    with pubsub_testing.emulator_env(pubsub_emulator.host):
        high_level = pubsub_v1.PublisherClient()
    with high_level:
        future = high_level.publish(topic, b"x")
        with pytest.raises(exceptions.NotFound):
            future.result(timeout=WAIT)
        high_level.stop()


async def test_bad_requests_are_invalid_argument(pubsub_emulator: EmulatorEndpoint) -> None:
    topic, subscription = await _setup(pubsub_emulator.host, "invalid")
    publisher = pubsub_testing.async_publisher_client(pubsub_emulator.host)
    subscriber = pubsub_testing.async_subscriber_client(pubsub_emulator.host)
    async with publisher, subscriber:
        limit = emulator_module.MAX_MESSAGES_PER_PUBLISH
        with pytest.raises(exceptions.InvalidArgument, match="Too many messages"):
            await publisher.publish(topic=topic, messages=[_msg(b"x")] * (limit + 1))
        with pytest.raises(exceptions.InvalidArgument, match="empty"):
            await publisher.publish(topic=topic, messages=[types.PubsubMessage()])
        with pytest.raises(exceptions.InvalidArgument):
            await subscriber.acknowledge(subscription=subscription, ack_ids=["bogus"])
        with pytest.raises(exceptions.InvalidArgument):
            await subscriber.pull(subscription=subscription, max_messages=0, timeout=5)
        # Exactly the limit is fine.
        response = await publisher.publish(topic=topic, messages=[_msg(b"x")] * limit)
        assert len(response.message_ids) == limit


async def test_async_publish_500_in_one_request_then_pull_and_ack(
    pubsub_emulator: EmulatorEndpoint,
) -> None:
    topic, subscription = await _setup(pubsub_emulator.host, "batch")
    publisher = pubsub_testing.async_publisher_client(pubsub_emulator.host)
    subscriber = pubsub_testing.async_subscriber_client(pubsub_emulator.host)
    async with publisher, subscriber:
        messages = [
            types.PubsubMessage(data=f"m{i}".encode(), attributes={"n": str(i)}) for i in range(500)
        ]
        response = await publisher.publish(topic=topic, messages=messages, timeout=WAIT)
        ids = [int(message_id) for message_id in response.message_ids]
        assert len(ids) == 500 and ids == sorted(ids) and len(set(ids)) == 500

        received = await _pull(subscriber, subscription, 500)
        assert sorted(_data(received)) == sorted(f"m{i}" for i in range(500))
        assert all(m.message.attributes["n"] == m.message.data.decode()[1:] for m in received)
        assert {m.message.message_id for m in received} == set(response.message_ids)
        assert all(m.message.publish_time.timestamp() > 0 for m in received)
        await subscriber.acknowledge(
            subscription=subscription, ack_ids=[m.ack_id for m in received]
        )
        assert await _pull_nothing(subscriber, subscription, wait=0.5) == 0


def test_high_level_publisher_with_ordering_keys_and_attributes(
    pubsub_emulator: EmulatorEndpoint,
) -> None:
    topic, subscription = _names("ordering-publish")
    with pubsub_testing.emulator_env(pubsub_emulator.host):
        publisher = pubsub_v1.PublisherClient(
            publisher_options=pubsub_v1.types.PublisherOptions(enable_message_ordering=True)
        )
        subscriber = GapicSubscriberClient()
    with publisher, subscriber:
        publisher.create_topic(name=topic)
        subscriber.create_subscription(name=subscription, topic=topic)
        futures = [
            publisher.publish(topic, f"{key}-{i}".encode(), ordering_key=key, seq=str(i), key=key)
            for i in range(5)
            for key in ("alpha", "beta")
        ]
        futures.append(publisher.publish(topic, b"no-key-0", seq="0", key=""))
        message_ids = [future.result(timeout=WAIT) for future in futures]
        publisher.stop()
        assert all(message_id.isdigit() for message_id in message_ids)

        received = _pull_sync(subscriber, subscription, 11)
        subscriber.acknowledge(subscription=subscription, ack_ids=[m.ack_id for m in received])
    assert len(received) == 11
    by_key: dict[str, list[int]] = {}
    for m in sorted(received, key=lambda m: int(m.message.message_id)):
        assert m.message.ordering_key == m.message.attributes["key"]
        assert m.message.data.decode().endswith(m.message.attributes["seq"])
        by_key.setdefault(m.message.ordering_key, []).append(int(m.message.attributes["seq"]))
    assert by_key == {"alpha": [0, 1, 2, 3, 4], "beta": [0, 1, 2, 3, 4], "": [0]}


def test_streaming_pull_subscribe_with_flow_control(pubsub_emulator: EmulatorEndpoint) -> None:
    topic, subscription = _names("streaming")
    count, max_messages = 40, 5
    lock = threading.Lock()
    received: list[str] = []
    active = 0
    most_active = 0
    done = threading.Event()

    def callback(message: Any) -> None:
        nonlocal active, most_active
        with lock:
            active += 1
            most_active = max(most_active, active)
        time.sleep(0.005)
        with lock:
            active -= 1
            received.append(message.data.decode())
            if len(set(received)) >= count:
                done.set()
        message.ack()

    with pubsub_testing.emulator_env(pubsub_emulator.host):
        publisher = GapicPublisherClient()
        subscriber = pubsub_v1.SubscriberClient()
    with publisher, subscriber:
        publisher.create_topic(name=topic)
        subscriber.create_subscription(name=subscription, topic=topic)
        publisher.publish(topic=topic, messages=[_msg(f"s{i}".encode()) for i in range(count)])
        future = subscriber.subscribe(
            subscription,
            callback,
            flow_control=pubsub_v1.types.FlowControl(max_messages=max_messages),
        )
        try:
            assert done.wait(WAIT), f"received {len(set(received))} of {count}"
        finally:
            future.cancel()
            future.result(timeout=WAIT)
    assert set(received) == {f"s{i}" for i in range(count)}
    assert most_active <= max_messages


async def test_nack_redelivers_at_once(pubsub_emulator: EmulatorEndpoint) -> None:
    topic, subscription = await _setup(pubsub_emulator.host, "nack")
    publisher = pubsub_testing.async_publisher_client(pubsub_emulator.host)
    subscriber = pubsub_testing.async_subscriber_client(pubsub_emulator.host)
    async with publisher, subscriber:
        await publisher.publish(topic=topic, messages=[_msg(b"a"), _msg(b"b")])
        first = await _pull(subscriber, subscription, 2)
        assert sorted(_data(first)) == ["a", "b"]
        nacked = next(m for m in first if m.message.data == b"a")
        started = time.monotonic()
        await subscriber.modify_ack_deadline(
            subscription=subscription, ack_ids=[nacked.ack_id], ack_deadline_seconds=0
        )
        again = await _pull(subscriber, subscription, 1)
        assert time.monotonic() - started < 2.0
        assert _data(again) == ["a"]
        assert again[0].message.message_id == nacked.message.message_id
        assert again[0].ack_id != nacked.ack_id
        assert again[0].delivery_attempt == 0  # only set with a dead-letter policy
        await subscriber.acknowledge(
            subscription=subscription, ack_ids=[m.ack_id for m in first + again]
        )
        assert await _pull_nothing(subscriber, subscription, wait=0.5) == 0


async def test_expired_ack_deadline_redelivers(pubsub_emulator: EmulatorEndpoint) -> None:
    topic, subscription = await _setup(pubsub_emulator.host, "expiry")
    publisher = pubsub_testing.async_publisher_client(pubsub_emulator.host)
    subscriber = pubsub_testing.async_subscriber_client(pubsub_emulator.host)
    async with publisher, subscriber:
        await publisher.publish(topic=topic, messages=[_msg(b"late")])
        (first,) = await _pull(subscriber, subscription, 1)
        started = time.monotonic()
        await subscriber.modify_ack_deadline(
            subscription=subscription, ack_ids=[first.ack_id], ack_deadline_seconds=1
        )
        (again,) = await _pull(subscriber, subscription, 1)
        elapsed = time.monotonic() - started
        assert 0.8 <= elapsed < 5.0
        assert again.message.message_id == first.message.message_id
        # The first delivery's ack id is stale now: acking it does not remove the message.
        await subscriber.acknowledge(subscription=subscription, ack_ids=[first.ack_id])
        await subscriber.modify_ack_deadline(
            subscription=subscription, ack_ids=[again.ack_id], ack_deadline_seconds=0
        )
        (third,) = await _pull(subscriber, subscription, 1)
        await subscriber.acknowledge(subscription=subscription, ack_ids=[third.ack_id])
        assert await _pull_nothing(subscriber, subscription, wait=0.5) == 0


async def test_ordered_subscription_holds_a_key_until_acked(
    pubsub_emulator: EmulatorEndpoint,
) -> None:
    topic, subscription = await _setup(
        pubsub_emulator.host, "ordered-pull", enable_message_ordering=True
    )
    publisher = pubsub_testing.async_publisher_client(pubsub_emulator.host)
    subscriber = pubsub_testing.async_subscriber_client(pubsub_emulator.host)
    async with publisher, subscriber:
        await publisher.publish(
            topic=topic,
            messages=[
                _msg(b"k1", ordering_key="K"),
                _msg(b"k2", ordering_key="K"),
                _msg(b"k3", ordering_key="K"),
                _msg(b"other", ordering_key="L"),
            ],
        )
        response = await subscriber.pull(subscription=subscription, max_messages=1, timeout=5)
        assert _data(list(response.received_messages)) == ["k1"]
        # K is held while k1 is outstanding; other keys are not.
        rest = await _pull(subscriber, subscription, 1, within=3)
        assert _data(rest) == ["other"]
        assert await _pull_nothing(subscriber, subscription, wait=0.5) == 0
        await subscriber.acknowledge(
            subscription=subscription,
            ack_ids=[response.received_messages[0].ack_id, rest[0].ack_id],
        )
        tail = await _pull(subscriber, subscription, 2)
        assert _data(tail) == ["k2", "k3"]
        await subscriber.acknowledge(subscription=subscription, ack_ids=[m.ack_id for m in tail])


def test_ordered_delivery_per_key_with_streaming_pull(pubsub_emulator: EmulatorEndpoint) -> None:
    topic, subscription = _names("ordered-stream")
    keys, per_key = ("a", "b", "c"), 4
    lock = threading.Lock()
    seen: dict[str, list[int]] = {key: [] for key in keys}
    done = threading.Event()

    def callback(message: Any) -> None:
        with lock:
            seen[message.ordering_key].append(int(message.attributes["seq"]))
            if sum(len(v) for v in seen.values()) >= len(keys) * per_key:
                done.set()
        message.ack()

    with pubsub_testing.emulator_env(pubsub_emulator.host):
        publisher = pubsub_v1.PublisherClient(
            publisher_options=pubsub_v1.types.PublisherOptions(enable_message_ordering=True)
        )
        subscriber = pubsub_v1.SubscriberClient()
    with publisher, subscriber:
        publisher.create_topic(name=topic)
        subscriber.create_subscription(
            request={"name": subscription, "topic": topic, "enable_message_ordering": True}
        )
        futures = [
            publisher.publish(topic, b"x", ordering_key=key, seq=str(i))
            for i in range(per_key)
            for key in keys
        ]
        for publish_future in futures:
            publish_future.result(timeout=WAIT)
        publisher.stop()
        future = subscriber.subscribe(subscription, callback)
        try:
            assert done.wait(WAIT), seen
        finally:
            future.cancel()
            future.result(timeout=WAIT)
    assert seen == {key: list(range(per_key)) for key in keys}


async def test_dead_letter_policy_counts_delivery_attempts(
    pubsub_emulator: EmulatorEndpoint,
) -> None:
    topic, subscription = _names("dead-letter")
    dead_topic, dead_subscription = _names("dead-letter-dlq")
    publisher = pubsub_testing.async_publisher_client(pubsub_emulator.host)
    subscriber = pubsub_testing.async_subscriber_client(pubsub_emulator.host)
    async with publisher, subscriber:
        await publisher.create_topic(name=topic)
        await publisher.create_topic(name=dead_topic)
        await subscriber.create_subscription(name=dead_subscription, topic=dead_topic)
        await subscriber.create_subscription(
            request={
                "name": subscription,
                "topic": topic,
                "dead_letter_policy": {"dead_letter_topic": dead_topic, "max_delivery_attempts": 5},
            }
        )
        await publisher.publish(topic=topic, messages=[_msg(b"poison")])
        attempts = []
        for _ in range(5):
            (message,) = await _pull(subscriber, subscription, 1)
            attempts.append(message.delivery_attempt)
            await subscriber.modify_ack_deadline(
                subscription=subscription, ack_ids=[message.ack_id], ack_deadline_seconds=0
            )
        assert attempts == [1, 2, 3, 4, 5]
        # No sixth delivery: the message goes to the dead-letter topic (Google's emulator moves
        # it when the subscription is pulled again, the in-process one on the fifth nack).
        assert await _pull_nothing(subscriber, subscription, wait=0.5) == 0
        (dead,) = await _pull(subscriber, dead_subscription, 1)
        assert dead.message.data == b"poison"
        await subscriber.acknowledge(subscription=dead_subscription, ack_ids=[dead.ack_id])


# -- agreement ---------------------------------------------------------------------------------


async def _scenario(host: str) -> dict[str, Any]:
    """One scripted session; returns what a client observes, in emulator-independent terms."""
    topic, plain = _names("agreement")
    ordered = f"{plain}-ordered"
    seen: dict[str, Any] = {}
    publisher = pubsub_testing.async_publisher_client(host)
    subscriber = pubsub_testing.async_subscriber_client(host)
    async with publisher, subscriber:
        await publisher.create_topic(name=topic)
        seen["create topic twice"] = await _error_code(publisher.create_topic(name=topic))
        seen["get missing topic"] = await _error_code(publisher.get_topic(topic=f"{topic}-x"))
        seen["bad topic name"] = await _error_code(publisher.create_topic(name="projects/p/t"))
        made = await subscriber.create_subscription(name=plain, topic=topic)
        seen["default ack deadline"] = made.ack_deadline_seconds
        await subscriber.create_subscription(
            request={"name": ordered, "topic": topic, "enable_message_ordering": True}
        )
        seen["create subscription twice"] = await _error_code(
            subscriber.create_subscription(name=plain, topic=topic)
        )
        seen["subscription on missing topic"] = await _error_code(
            subscriber.create_subscription(name=f"{plain}-x", topic=f"{topic}-x")
        )

        messages = [
            types.PubsubMessage(
                data=f"m{i}".encode(),
                attributes={"i": str(i), "parity": "even" if i % 2 == 0 else "odd"},
                ordering_key=f"k{i % 3}" if i < 9 else "",
            )
            for i in range(12)
        ]
        ids = (await publisher.publish(topic=topic, messages=messages)).message_ids
        seen["ids increase"] = [int(i) for i in ids] == sorted(int(i) for i in ids)

        got = await _pull(subscriber, plain, 12)
        seen["messages"] = sorted(
            (m.message.data, dict(m.message.attributes), m.message.ordering_key) for m in got
        )
        seen["delivery attempts"] = sorted({m.delivery_attempt for m in got})
        nacked = [m for m in got if m.message.data in (b"m0", b"m7")]
        await subscriber.modify_ack_deadline(
            subscription=plain, ack_ids=[m.ack_id for m in nacked], ack_deadline_seconds=0
        )
        again = await _pull(subscriber, plain, 2)
        seen["redelivered after nack"] = sorted(_data(again))
        seen["redelivered keeps ids"] = {m.message.message_id for m in again} == {
            m.message.message_id for m in nacked
        }
        await subscriber.acknowledge(subscription=plain, ack_ids=[m.ack_id for m in got + again])
        seen["after acking all"] = await _pull_nothing(subscriber, plain, wait=0.5)

        order: dict[str, list[str]] = {}
        total = 0
        deadline = time.monotonic() + WAIT
        while total < 12 and time.monotonic() < deadline:
            batch = await _pull(subscriber, ordered, 12 - total, within=3)
            for m in batch:
                order.setdefault(m.message.ordering_key, []).append(m.message.data.decode())
            total += len(batch)
            if batch:
                await subscriber.acknowledge(
                    subscription=ordered, ack_ids=[m.ack_id for m in batch]
                )
        seen["order per key"] = {key: order[key] for key in sorted(order) if key}
        seen["no key"] = sorted(order.get("", []))

        seen["too many messages"] = await _error_code(
            publisher.publish(topic=topic, messages=[_msg(b"x")] * 1001)
        )
        seen["empty message"] = await _error_code(
            publisher.publish(topic=topic, messages=[types.PubsubMessage()])
        )
        seen["publish to missing topic"] = await _error_code(
            publisher.publish(topic=f"{topic}-x", messages=[_msg(b"x")], timeout=5)
        )
        seen["pull missing subscription"] = await _error_code(
            subscriber.pull(subscription=f"{plain}-x", max_messages=1, timeout=5)
        )
        seen["malformed ack id"] = await _error_code(
            subscriber.acknowledge(subscription=plain, ack_ids=["bogus"])
        )
        seen["negative ack deadline"] = await _error_code(
            subscriber.modify_ack_deadline(
                subscription=plain, ack_ids=[f"{plain}:1"], ack_deadline_seconds=-1
            )
        )
        await publisher.delete_topic(topic=topic)
        seen["topic after delete"] = (await subscriber.get_subscription(subscription=plain)).topic
        await subscriber.delete_subscription(subscription=plain)
        await subscriber.delete_subscription(subscription=ordered)
    return seen


async def test_google_and_inprocess_emulators_agree(
    pubsub_google_emulator: EmulatorEndpoint, pubsub_inprocess_emulator: EmulatorEndpoint
) -> None:
    google = await _scenario(pubsub_google_emulator.host)
    in_process = await _scenario(pubsub_inprocess_emulator.host)
    assert in_process == google
    # And both are right, not merely alike.
    assert google["order per key"] == {
        "k0": ["m0", "m3", "m6"],
        "k1": ["m1", "m4", "m7"],
        "k2": ["m2", "m5", "m8"],
    }
    assert google["redelivered after nack"] == ["m0", "m7"]
    assert google["create topic twice"] == "ALREADY_EXISTS"
    assert google["get missing topic"] == "NOT_FOUND"
    assert google["too many messages"] == "INVALID_ARGUMENT"
    assert google["delivery attempts"] == [0]


# -- in-process only: fault injection, limits, shutdown ---------------------------------------


async def test_fail_next_publishes(pubsub_inprocess_emulator: EmulatorEndpoint) -> None:
    emulator = _in_process(pubsub_inprocess_emulator)
    topic, _ = await _setup(pubsub_inprocess_emulator.host, "fail")
    published = emulator.published_count
    async with pubsub_testing.async_publisher_client(pubsub_inprocess_emulator.host) as publisher:
        try:
            emulator.fail_next_publishes(2)
            for _ in range(2):
                with pytest.raises(exceptions.ServiceUnavailable):
                    await publisher.publish(topic=topic, messages=[_msg(b"x")], retry=None)
            ok = await publisher.publish(topic=topic, messages=[_msg(b"x")], retry=None)
            assert len(ok.message_ids) == 1

            emulator.fail_next_publishes(1, code=grpc.StatusCode.PERMISSION_DENIED)
            with pytest.raises(exceptions.PermissionDenied):
                await publisher.publish(topic=topic, messages=[_msg(b"y")])

            # With the client's default retry, a transient failure is invisible.
            emulator.fail_next_publishes(1)
            retried = await publisher.publish(topic=topic, messages=[_msg(b"z")], timeout=WAIT)
            assert len(retried.message_ids) == 1
        finally:
            emulator.reset_faults()
    assert emulator.published_count == published + 2


async def test_publish_delay(pubsub_inprocess_emulator: EmulatorEndpoint) -> None:
    emulator = _in_process(pubsub_inprocess_emulator)
    topic, _ = await _setup(pubsub_inprocess_emulator.host, "delay")
    async with pubsub_testing.async_publisher_client(pubsub_inprocess_emulator.host) as publisher:
        try:
            emulator.set_publish_delay(0.5)
            started = time.monotonic()
            await publisher.publish(topic=topic, messages=[_msg(b"slow")], retry=None)
            assert time.monotonic() - started >= 0.5
            with pytest.raises(exceptions.DeadlineExceeded):
                await publisher.publish(
                    topic=topic, messages=[_msg(b"too slow")], retry=None, timeout=0.2
                )
            emulator.set_publish_delay(0)
            started = time.monotonic()
            await publisher.publish(topic=topic, messages=[_msg(b"fast")], retry=None)
            assert time.monotonic() - started < 0.5
        finally:
            emulator.reset_faults()


async def test_drop_acks_redelivers_after_the_deadline(
    pubsub_inprocess_emulator: EmulatorEndpoint,
) -> None:
    emulator = _in_process(pubsub_inprocess_emulator)
    host = pubsub_inprocess_emulator.host
    topic, subscription = await _setup(host, "drop-acks", ack_deadline_seconds=1)
    publisher = pubsub_testing.async_publisher_client(host)
    subscriber = pubsub_testing.async_subscriber_client(host)
    async with publisher, subscriber:
        await publisher.publish(topic=topic, messages=[_msg(b"sticky")])
        acked = emulator.acked_count
        try:
            emulator.drop_acks(True)
            (first,) = await _pull(subscriber, subscription, 1)
            await subscriber.acknowledge(subscription=subscription, ack_ids=[first.ack_id])
            assert emulator.acked_count == acked
            started = time.monotonic()
            (again,) = await _pull(subscriber, subscription, 1)
            assert again.message.message_id == first.message.message_id
            assert 0.5 <= time.monotonic() - started < 5
        finally:
            emulator.drop_acks(False)
        await subscriber.acknowledge(subscription=subscription, ack_ids=[again.ack_id])
        assert emulator.acked_count == acked + 1
        assert await _pull_nothing(subscriber, subscription, wait=1.5) == 0


async def test_publish_over_10_mb_is_invalid_argument(
    pubsub_inprocess_emulator: EmulatorEndpoint,
) -> None:
    # Google's emulator accepts up to about 11,000,000 bytes and then breaks the stream (the
    # client retries until its deadline): the limit is checked only against the in-process one.
    topic, _ = await _setup(pubsub_inprocess_emulator.host, "too-big")
    limit = emulator_module.MAX_PUBLISH_REQUEST_BYTES
    async with pubsub_testing.async_publisher_client(pubsub_inprocess_emulator.host) as publisher:
        with pytest.raises(exceptions.InvalidArgument, match="exceeds the limit"):
            await publisher.publish(topic=topic, messages=[_msg(b"x" * (limit + 1))])
        ok = await publisher.publish(topic=topic, messages=[_msg(b"x" * (limit - 100))])
        assert len(ok.message_ids) == 1


def _open_stream(
    subscriber: Any, first: types.StreamingPullRequest
) -> tuple[queue.Queue[types.StreamingPullRequest | None], queue.Queue[Any], threading.Thread]:
    """A raw StreamingPull: requests go in one queue (None half-closes), responses and the
    final error (or "end") come out of the other."""
    requests: queue.Queue[types.StreamingPullRequest | None] = queue.Queue()
    responses: queue.Queue[Any] = queue.Queue()

    def request_iterator() -> Iterator[types.StreamingPullRequest]:
        yield first
        while (request := requests.get()) is not None:
            yield request

    def read() -> None:
        try:
            for response in subscriber.streaming_pull(requests=request_iterator(), timeout=30):
                responses.put(response)
            responses.put("end")
        except Exception as exc:
            responses.put(exc)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    return requests, responses, reader


def test_streaming_pull_respects_server_side_flow_control(
    pubsub_inprocess_emulator: EmulatorEndpoint,
) -> None:
    # Google's emulator ignores max_outstanding_messages (it sent 6 messages to a stream that
    # allowed 2); the real service and the in-process emulator respect it.
    topic, subscription = _names("flow")
    with pubsub_testing.emulator_env(pubsub_inprocess_emulator.host):
        publisher = GapicPublisherClient()
        subscriber = GapicSubscriberClient()
    with publisher, subscriber:
        publisher.create_topic(name=topic)
        subscriber.create_subscription(name=subscription, topic=topic)
        publisher.publish(topic=topic, messages=[_msg(f"f{i}".encode()) for i in range(7)])
        first = types.StreamingPullRequest(
            subscription=subscription, stream_ack_deadline_seconds=60, max_outstanding_messages=3
        )
        requests, responses, reader = _open_stream(subscriber, first)
        try:
            got: list[types.ReceivedMessage] = []
            while len(got) < 3:
                got.extend(responses.get(timeout=WAIT).received_messages)
            assert len(got) == 3
            with pytest.raises(queue.Empty):
                responses.get(timeout=0.5)
            requests.put(types.StreamingPullRequest(ack_ids=[m.ack_id for m in got[:2]]))
            more = list(responses.get(timeout=WAIT).received_messages)
            assert len(more) == 2
            # A nack on the stream frees room and the message comes back on it.
            requests.put(
                types.StreamingPullRequest(
                    modify_deadline_ack_ids=[got[2].ack_id], modify_deadline_seconds=[0]
                )
            )
            back = list(responses.get(timeout=WAIT).received_messages)
            assert [m.message.message_id for m in back] == [got[2].message.message_id]
        finally:
            requests.put(None)  # half-close: the server ends the stream, as Google's does
            reader.join(WAIT)
        assert responses.get(timeout=1) == "end"
    assert not reader.is_alive()


def test_streaming_pull_byte_flow_control(pubsub_inprocess_emulator: EmulatorEndpoint) -> None:
    topic, subscription = _names("flow-bytes")
    with pubsub_testing.emulator_env(pubsub_inprocess_emulator.host):
        publisher = GapicPublisherClient()
        subscriber = GapicSubscriberClient()
    with publisher, subscriber:
        publisher.create_topic(name=topic)
        subscriber.create_subscription(name=subscription, topic=topic)
        publisher.publish(topic=topic, messages=[_msg(b"x" * 1000) for _ in range(3)])
        first = types.StreamingPullRequest(
            subscription=subscription, stream_ack_deadline_seconds=60, max_outstanding_bytes=500
        )
        requests, responses, reader = _open_stream(subscriber, first)
        try:
            (one,) = responses.get(timeout=WAIT).received_messages  # one may cross the limit
            with pytest.raises(queue.Empty):
                responses.get(timeout=0.5)
            requests.put(types.StreamingPullRequest(ack_ids=[one.ack_id]))
            assert len(responses.get(timeout=WAIT).received_messages) == 1
        finally:
            requests.put(None)
            reader.join(WAIT)


def test_stop_ends_open_streams_and_long_polls_promptly() -> None:
    topic, subscription = _names("stop")
    in_process = emulator_module.InProcessEmulator().start()
    try:
        with pubsub_testing.emulator_env(in_process.host):
            publisher = GapicPublisherClient()
            subscriber = GapicSubscriberClient()
        with publisher, subscriber:
            publisher.create_topic(name=topic)
            subscriber.create_subscription(name=subscription, topic=topic)
            first = types.StreamingPullRequest(
                subscription=subscription, stream_ack_deadline_seconds=10
            )
            requests, responses, reader = _open_stream(subscriber, first)
            polled: queue.Queue[Any] = queue.Queue()

            def long_poll() -> None:
                try:
                    polled.put(
                        subscriber.pull(
                            subscription=subscription, max_messages=1, timeout=30, retry=None
                        )
                    )
                except Exception as exc:
                    polled.put(exc)

            poller = threading.Thread(target=long_poll, daemon=True)
            poller.start()
            time.sleep(0.3)  # both are waiting now
            started = time.monotonic()
            in_process.stop()
            stopped = time.monotonic() - started
            outcome = responses.get(timeout=WAIT)
            poll_outcome = polled.get(timeout=WAIT)
            requests.put(None)
            reader.join(WAIT)
            poller.join(WAIT)
        assert stopped < 3.0
        assert isinstance(outcome, exceptions.ServiceUnavailable), outcome
        assert not isinstance(poll_outcome, Exception) or isinstance(
            poll_outcome, exceptions.ServiceUnavailable | exceptions.Cancelled
        ), poll_outcome
        assert not reader.is_alive() and not poller.is_alive()
    finally:
        in_process.stop()


# -- Google's emulator as a child process --------------------------------------------------------


def test_google_emulator_runs_in_its_own_process_group_and_is_reaped() -> None:
    if pubsub_testing.find_google_emulator() is None:
        pytest.skip("Google's Pub/Sub emulator not found")
    with pubsub_testing.GoogleEmulator() as google:
        pid = google.pid
        assert pid is not None
        assert os.getpgid(pid) == pid  # its own group, so the whole group can be stopped
        assert google.startup_seconds is not None and google.startup_seconds < 30
        assert pubsub_testing.wait_until_answers(google.host, timeout=5)
    with pytest.raises(ProcessLookupError):
        os.killpg(pid, 0)


def test_wait_until_answers_is_bounded() -> None:
    in_process = emulator_module.InProcessEmulator().start()
    host = in_process.host
    assert pubsub_testing.wait_until_answers(host, timeout=5)
    in_process.stop()
    started = time.monotonic()
    assert not pubsub_testing.wait_until_answers(host, timeout=0.5)
    assert time.monotonic() - started < 2.0


async def test_async_helpers_need_no_environment(pubsub_emulator: EmulatorEndpoint) -> None:
    assert os.environ.get(pubsub_testing.ENV_HOST) in (None, pubsub_emulator.host)
    topic, _ = _names("helpers")
    async with pubsub_testing.async_publisher_client(pubsub_emulator.host) as publisher:
        await publisher.create_topic(name=topic)
        await publisher.delete_topic(topic=topic)
    # emulator_env restores what was there.
    before = os.environ.get(pubsub_testing.ENV_HOST)
    with pubsub_testing.emulator_env("127.0.0.1:1") as host:
        assert os.environ[pubsub_testing.ENV_HOST] == host == "127.0.0.1:1"
    assert os.environ.get(pubsub_testing.ENV_HOST) == before
    await asyncio.sleep(0)
