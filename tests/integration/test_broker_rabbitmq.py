"""The RabbitMQ adapter against the RabbitMQ server this machine runs (no PostgreSQL needed).

Each test makes its own exchange and queue with the test kit's ``temporary_channel`` and skips
with the reason when RabbitMQ does not answer at ``OUTBOX_TEST_RABBITMQ_URL`` (by default the
local server, ``amqp://guest:guest@127.0.0.1:5672/``).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
import urllib.parse
import uuid
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from typing import Any

import pytest

from outbox_di import config, errors, models
from outbox_di.brokers import make_publisher, make_subscriber
from outbox_di.brokers import rabbitmq as adapter
from outbox_di.brokers.ports import Delivery, event_attributes
from outbox_di.testing import brokers as brokers_testing
from outbox_di.testing.brokers import rabbitmq as rabbitmq_testing
from outbox_di.testing.proxy import FaultProxy

pytestmark = pytest.mark.integration

URL = os.environ.get("OUTBOX_TEST_RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672/")
OVER_LIMIT = adapter.MAX_MESSAGE_BYTES + 1


def settings(
    topic: str | None = "unused",
    subscription: str = "unused",
    *,
    topics: Mapping[str, str] | None = None,
    schema: str = "s",
    url: str = URL,
    connect_timeout: float = 5.0,
    max_messages: int = 1000,
    publish_timeout: float = 10.0,
) -> config.OutboxConfig:
    publisher: dict[str, Any] = {"topic": topic, "publish_timeout": publish_timeout}
    if topics:
        publisher["topics"] = dict(topics)
    return config.OutboxConfig.from_mapping(
        {
            "schema": schema,
            "dsn": "postgresql://postgres@127.0.0.1/postgres",
            "broker": "rabbitmq",
            "rabbitmq": {"url": url, "connect_timeout": connect_timeout},
            "publisher": publisher,
            "inbox": {
                "enabled": True,
                "subscription": subscription,
                "max_messages": max_messages,
            },
        }
    )


@pytest.fixture(scope="module")
def server() -> None:
    reason = brokers_testing.unavailable(settings())
    if reason:
        pytest.skip(reason)


@pytest.fixture
async def channel(server: None) -> AsyncIterator[brokers_testing.Channel]:
    async with brokers_testing.temporary_channel(settings(), "rmqtest") as made:
        yield made


def event(
    index: int = 0,
    *,
    event_type: str = "order.created",
    aggregate_type: str = "order",
    payload: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> models.OutboxEvent:
    return brokers_testing.outbox_event(
        payload if payload is not None else b'{"n": %d}' % index,
        event_type=event_type,
        aggregate_type=aggregate_type,
        aggregate_id=f"agg-{index}",
        headers=headers,
        seq=index,
    )


async def pull(channel: brokers_testing.Channel, count: int) -> list[brokers_testing.Probed]:
    return await channel.pull(lambda received: len(received) >= count, within=10.0)


async def receive_all(
    subscriber: Any, count: int, within: float = 10.0, batch: int = 1000
) -> list[Delivery]:
    """Receive until ``count`` deliveries came (or ``within`` seconds passed)."""
    received: list[Delivery] = []
    deadline = time.monotonic() + within
    while len(received) < count and time.monotonic() < deadline:
        received.extend(await subscriber.receive(batch, 0.5))
    return received


def ids(deliveries: Sequence[Delivery]) -> list[str]:
    return [delivery.message.event_id for delivery in deliveries]


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


@pytest.fixture
def silent_server() -> Iterator[int]:
    """A port that accepts connections and never answers (a hung broker)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    try:
        yield listener.getsockname()[1]
    finally:
        listener.close()


# -- the publisher -----------------------------------------------------------------------------


async def test_a_batch_arrives_in_order_with_exact_bytes_and_attributes(
    channel: brokers_testing.Channel,
) -> None:
    events = [
        event(
            index,
            payload=bytes([0xFF, 0x00, 0xFE, index]) + "é".encode() + b"\x80",
            headers={"trace": f"t-{index}", "clé": "välue", "nul": "a\x00b"},
        )
        for index in range(200)
    ]
    publisher = make_publisher(settings(channel.topic))
    await publisher.start()
    try:
        outcomes = await publisher.publish(events)
    finally:
        await publisher.close()

    assert [outcome.ok for outcome in outcomes] == [True] * len(events)
    assert [outcome.message_id for outcome in outcomes] == [str(e.event_id) for e in events]
    received = await pull(channel, len(events))
    assert [probe.payload for probe in received] == [e.payload for e in events]
    assert [probe.attributes for probe in received] == [event_attributes(e) for e in events]
    assert [probe.message_id for probe in received] == [str(e.event_id) for e in events]


async def test_routes_by_event_type_and_aggregate_type_to_two_exchanges(server: None) -> None:
    async with (
        brokers_testing.temporary_channel(settings(), "routes") as first,
        brokers_testing.temporary_channel(settings(), "routes") as second,
    ):
        # {schema} in a name stands for the schema: "routes-<hex>" is written "{schema}-<hex>".
        templated = second.topic.replace("routes-", "{schema}-", 1)
        publisher = make_publisher(
            settings(
                first.topic,
                topics={"invoice.paid": templated, "shipment": templated},
                schema="routes",
            )
        )
        by_default = event(1)
        by_event_type = event(2, event_type="invoice.paid", aggregate_type="invoice")
        by_aggregate_type = event(3, event_type="shipment.sent", aggregate_type="shipment")
        await publisher.start()
        try:
            outcomes = await publisher.publish([by_default, by_event_type, by_aggregate_type])
        finally:
            await publisher.close()
        assert all(outcome.ok for outcome in outcomes)

        on_first = await first.pull(lambda got: len(got) >= 2, within=1.5)
        on_second = await pull(second, 2)
    assert [probe.attributes["event_id"] for probe in on_first] == [str(by_default.event_id)]
    assert [probe.attributes["event_id"] for probe in on_second] == [
        str(by_event_type.event_id),
        str(by_aggregate_type.event_id),
    ]


async def test_missing_exchanges_fail_start_naming_their_keys(
    channel: brokers_testing.Channel,
) -> None:
    missing = f"missing-{uuid.uuid4().hex[:8]}"
    publisher = make_publisher(
        settings(missing, topics={"order.paid": f"{missing}-paid", "order.kept": channel.topic})
    )
    with pytest.raises(errors.ConfigError) as caught:
        await publisher.start()
    problems = caught.value.problems
    assert len(problems) == 2
    assert any(p.startswith("publisher.topic:") and repr(missing) in p for p in problems)
    assert any(p.startswith("publisher.topics.order.paid:") for p in problems)
    assert all("declare it first" in p for p in problems)
    # What the failed start opened is closed: publishing needs a new start.
    with pytest.raises(errors.OutboxError):
        await publisher.publish([event()])


async def test_oversized_and_unsendable_events_fail_alone_and_permanently(
    channel: brokers_testing.Channel,
) -> None:
    publisher = adapter.RabbitMQPublisher(settings(channel.topic))
    await publisher.start()
    try:
        frame_max = publisher._frame_max
        assert frame_max > 0
        # A header that makes the header frame exactly frame_max bytes: sent; one byte more: not.
        fitting = event(10, headers={"big": ""})
        message_id = str(fitting.event_id)
        room = frame_max - adapter.header_frame_size(
            fitting.event_type, message_id, event_attributes(fitting)
        )
        fitting.headers["big"] = "x" * room
        assert (
            adapter.header_frame_size(fitting.event_type, message_id, event_attributes(fitting))
            == frame_max
        )
        too_wide = event(11, headers={"big": "x" * (room + 1)})
        batch = [
            event(0),
            event(1, payload=b"\x00" * OVER_LIMIT),
            event(2, event_type="é" * 128),  # 256 bytes of UTF-8: not a routing key
            event(3, headers={"k" * 129: "v"}),  # a header name the client would cut short
            fitting,
            too_wide,
            event(4, payload=b"\x01" * adapter.MAX_MESSAGE_BYTES),  # exactly the limit
        ]
        outcomes = await publisher.publish(batch)
    finally:
        await publisher.close()

    ok = [outcome.ok for outcome in outcomes]
    permanent = [outcome.permanent for outcome in outcomes]
    assert ok == [True, False, False, False, True, False, True]
    assert permanent == [False, True, True, True, False, True, False]
    assert "134217729 bytes" in (outcomes[1].error or "")
    assert "routing key" in (outcomes[2].error or "")
    assert "header key" in (outcomes[3].error or "")
    assert "frame_max" in (outcomes[5].error or "")
    received = await pull(channel, 3)
    assert [probe.attributes["event_id"] for probe in received] == [
        str(batch[0].event_id),
        str(fitting.event_id),
        str(batch[6].event_id),
    ]
    assert len(received[2].payload) == adapter.MAX_MESSAGE_BYTES


async def test_a_lower_server_limit_is_learned_from_its_refusal(
    channel: brokers_testing.Channel,
) -> None:
    # As if the broker's max_message_size were unknown: the server refuses the body over 128 MiB
    # by closing the channel; the publisher keeps to the limit it names from then on.
    publisher = adapter.RabbitMQPublisher(settings(channel.topic))
    await publisher.start()
    try:
        publisher.max_message_bytes = 2 * adapter.MAX_MESSAGE_BYTES
        big = event(1, payload=b"\x02" * OVER_LIMIT)
        first = await publisher.publish([big])
        assert not first[0].ok and not first[0].permanent
        assert publisher.max_message_bytes == adapter.MAX_MESSAGE_BYTES
        again = await publisher.publish([big, event(2)])
    finally:
        await publisher.close()
    assert again[0].permanent
    assert again[1].ok  # the channel was reopened
    received = await pull(channel, 1)
    assert [probe.attributes["event_id"] for probe in received] == [str(again[1].message_id)]


@pytest.mark.parametrize("which", ["publisher", "subscriber"])
async def test_an_unreachable_server_fails_start_within_the_timeout(
    which: str, silent_server: int
) -> None:
    for port in (closed_port(), silent_server):
        url = f"amqp://guest:s3cret-pw@127.0.0.1:{port}/"
        made = settings("some-exchange", "some-queue", url=url, connect_timeout=1.0)
        client = make_publisher(made) if which == "publisher" else make_subscriber(made)
        started = time.monotonic()
        with pytest.raises(errors.BrokerUnavailableError) as caught:
            await client.start()
        elapsed = time.monotonic() - started
        assert elapsed < 3.0
        assert "s3cret-pw" not in str(caught.value)
        assert "s3cret-pw" not in caught.value.endpoint
        assert f"127.0.0.1:{port}" in str(caught.value)
        assert "rabbitmq.connect_timeout" in str(caught.value)
        assert caught.value.timeout == 1.0


async def test_a_refused_login_names_rabbitmq_url(server: None) -> None:
    bad = URL.replace("guest:guest@", "guest:wrong-pw@", 1)
    if bad == URL:
        pytest.skip("the test server's URL does not use the guest user")
    publisher = make_publisher(settings("some-exchange", url=bad))
    with pytest.raises(errors.ConfigError) as caught:
        await publisher.start()
    assert caught.value.problems[0].startswith("rabbitmq.url:")
    assert "wrong-pw" not in str(caught.value)


# -- the subscriber ----------------------------------------------------------------------------


async def test_a_missing_queue_fails_start_naming_inbox_subscription(server: None) -> None:
    missing = f"missing-{uuid.uuid4().hex[:8]}"
    subscriber = make_subscriber(settings(subscription=missing))
    with pytest.raises(errors.ConfigError) as caught:
        await subscriber.start()
    (problem,) = caught.value.problems
    assert problem.startswith("inbox.subscription:")
    assert repr(missing) in problem


async def test_received_messages_carry_the_event_fields(
    channel: brokers_testing.Channel,
) -> None:
    full = {
        "event_id": "e-1",
        "event_type": "catalog.item_created",
        "aggregate_type": "item",
        "aggregate_id": "A-1",
        "trace": "abc",
    }
    await channel.publish([(b"\xff\x00 raw", full), (b"bare", {"note": "no ids"})])
    subscriber = make_subscriber(settings(subscription=channel.subscription))
    await subscriber.start()
    try:
        assert subscriber.name == channel.subscription
        first, second = await receive_all(subscriber, 2)
        assert await subscriber.ack([first, second]) == 0
    finally:
        await subscriber.close()
    assert first.message.event_id == "e-1"
    assert first.message.event_type == "catalog.item_created"
    assert first.message.aggregate_type == "item"
    assert first.message.aggregate_id == "A-1"
    assert first.message.headers == {"trace": "abc"}
    assert first.message.payload == b"\xff\x00 raw"
    assert first.size == len(b"\xff\x00 raw")
    assert first.message.message_id  # the AMQP message id
    # No event_id: the broker's message id stands for it; no event_type: "unknown".
    assert second.message.message_id
    assert second.message.event_id == second.message.message_id
    assert second.message.event_type == "unknown"
    assert second.message.headers == {"note": "no ids"}


async def test_published_events_are_received_as_they_were_sent(
    channel: brokers_testing.Channel,
) -> None:
    events = [event(index, headers={"h": str(index)}) for index in range(5)]
    publisher = make_publisher(settings(channel.topic))
    await publisher.start()
    try:
        assert all(outcome.ok for outcome in await publisher.publish(events))
    finally:
        await publisher.close()
    subscriber = make_subscriber(settings(subscription=channel.subscription))
    await subscriber.start()
    try:
        deliveries = await receive_all(subscriber, len(events))
        await subscriber.ack(deliveries)
    finally:
        await subscriber.close()
    assert ids(deliveries) == [str(e.event_id) for e in events]
    assert [d.message.headers for d in deliveries] == [{"h": str(i)} for i in range(5)]
    assert [d.message.message_id for d in deliveries] == [str(e.event_id) for e in events]
    assert [d.message.aggregate_id for d in deliveries] == [e.aggregate_id for e in events]


async def test_acknowledged_messages_are_not_delivered_again(
    channel: brokers_testing.Channel,
) -> None:
    await channel.publish([(b"%d" % i, {"event_id": f"a-{i}"}) for i in range(6)])
    subscriber = make_subscriber(settings(subscription=channel.subscription))
    await subscriber.start()
    try:
        deliveries = await receive_all(subscriber, 6)
        assert ids(deliveries) == [f"a-{i}" for i in range(6)]
        assert await subscriber.ack(deliveries) == 0
        assert await subscriber.ack(deliveries) == 0  # settled already: not sent twice
    finally:
        await subscriber.close()
    reopened = make_subscriber(settings(subscription=channel.subscription))
    await reopened.start()
    try:
        assert await reopened.receive(100, 1.0) == []
    finally:
        await reopened.close()


async def test_nacked_messages_are_delivered_again(channel: brokers_testing.Channel) -> None:
    await channel.publish([(b"%d" % i, {"event_id": f"n-{i}"}) for i in range(3)])
    subscriber = make_subscriber(settings(subscription=channel.subscription))
    await subscriber.start()
    try:
        first = await receive_all(subscriber, 3)
        await subscriber.nack(first)
        again = await receive_all(subscriber, 3)
        assert sorted(ids(again)) == sorted(ids(first)) == ["n-0", "n-1", "n-2"]
        assert await subscriber.ack(again) == 0
        assert await subscriber.receive(10, 0.5) == []
    finally:
        await subscriber.close()


async def test_unacknowledged_messages_go_to_the_next_subscriber(
    channel: brokers_testing.Channel,
) -> None:
    await channel.publish([(b"%d" % i, {"event_id": f"u-{i}"}) for i in range(4)])
    subscriber = make_subscriber(settings(subscription=channel.subscription))
    await subscriber.start()
    taken = await receive_all(subscriber, 4)
    assert ids(taken) == ["u-0", "u-1", "u-2", "u-3"]
    await subscriber.close()
    # Settling on a closed subscriber never raises: the acks are counted as failed.
    assert await subscriber.ack(taken) == 4
    await subscriber.nack(taken)

    successor = make_subscriber(settings(subscription=channel.subscription))
    await successor.start()
    try:
        redelivered = await receive_all(successor, 4)
        assert sorted(ids(redelivered)) == ["u-0", "u-1", "u-2", "u-3"]
        assert await successor.ack(redelivered) == 0
    finally:
        await successor.close()


async def test_acking_a_later_batch_leaves_an_earlier_one_unsettled(
    channel: brokers_testing.Channel,
) -> None:
    # One basic.ack with multiple=True would settle the earlier batch too: it must not be used.
    await channel.publish([(b"%d" % i, {"event_id": f"m-{i}"}) for i in range(4)])
    subscriber = make_subscriber(settings(subscription=channel.subscription))
    await subscriber.start()
    try:
        earlier = await receive_all(subscriber, 2, batch=2)
        later = await receive_all(subscriber, 2, batch=2)
        assert ids(earlier) + ids(later) == ["m-0", "m-1", "m-2", "m-3"]
        assert await subscriber.ack(later) == 0
    finally:
        await subscriber.close()
    successor = make_subscriber(settings(subscription=channel.subscription))
    await successor.start()
    try:
        redelivered = await receive_all(successor, 2)
        assert sorted(ids(redelivered)) == ["m-0", "m-1"]
        await successor.ack(redelivered)
        assert await successor.receive(10, 0.5) == []
    finally:
        await successor.close()


async def test_prefetch_bounds_what_is_delivered_unsettled(
    channel: brokers_testing.Channel,
) -> None:
    await channel.publish([(b"%d" % i, {"event_id": f"p-{i}"}) for i in range(10)])
    subscriber = make_subscriber(settings(subscription=channel.subscription, max_messages=3))
    await subscriber.start()
    try:
        first = await receive_all(subscriber, 3)
        await asyncio.sleep(0.3)  # time for more to arrive, were the broker to send them
        assert await subscriber.receive(100, 0.3) == []
        assert await subscriber.ack(first) == 0
        rest: list[Delivery] = []
        deadline = time.monotonic() + 10.0
        while len(rest) < 7 and time.monotonic() < deadline:
            batch = await subscriber.receive(100, 0.5)
            assert len(batch) <= 3
            assert await subscriber.ack(batch) == 0
            rest.extend(batch)
    finally:
        await subscriber.close()
    assert ids(first) + ids(rest) == [f"p-{i}" for i in range(10)]


async def test_cancelling_a_pending_receive_loses_nothing(
    channel: brokers_testing.Channel,
) -> None:
    subscriber = make_subscriber(settings(subscription=channel.subscription))
    await subscriber.start()
    try:
        pending = asyncio.ensure_future(subscriber.receive(10, 5.0))
        await asyncio.sleep(0.2)
        pending.cancel()
        with pytest.raises(asyncio.CancelledError):
            await pending
        # Cancelled as the message comes in: whether it had returned it or not, it is not lost.
        racing = asyncio.ensure_future(subscriber.receive(10, 5.0))
        await asyncio.sleep(0.1)
        await channel.publish([(b"after", {"event_id": "c-1"})])
        racing.cancel()
        got: list[Delivery] = []
        with contextlib.suppress(asyncio.CancelledError):
            got.extend(await racing)
        got.extend(await receive_all(subscriber, 1 - len(got), within=3.0))
        assert ids(got) == ["c-1"]
        assert await subscriber.ack(got) == 0
        assert await subscriber.receive(10, 0.3) == []
    finally:
        await subscriber.close()


async def test_both_sides_recover_from_a_cut_connection(
    channel: brokers_testing.Channel,
) -> None:
    upstream = urllib.parse.urlsplit(URL)
    with FaultProxy(upstream.hostname or "127.0.0.1", upstream.port or 5672) as proxy:
        through = upstream._replace(
            netloc=f"{upstream.username}:{upstream.password}@127.0.0.1:{proxy.port}",
            query="reconnect_interval=0.3",
        ).geturl()
        made = settings(channel.topic, channel.subscription, url=through, publish_timeout=1.0)
        publisher, subscriber = make_publisher(made), make_subscriber(made)
        await publisher.start()
        await subscriber.start()
        try:
            before = [event(0), event(1)]
            assert all(outcome.ok for outcome in await publisher.publish(before))
            taken = await receive_all(subscriber, 2)
            assert ids(taken) == [str(e.event_id) for e in before]

            proxy.cut()
            await asyncio.sleep(0.3)
            during = await publisher.publish([event(2)])
            assert not during[0].ok and not during[0].permanent
            # Their channel is gone: not acknowledged, and the broker delivers them again.
            assert await subscriber.ack(taken) == 2

            proxy.restore()
            after = event(3)
            deadline = time.monotonic() + 10.0
            while not (await publisher.publish([after]))[0].ok:
                assert time.monotonic() < deadline, "the publisher did not reconnect"
                await asyncio.sleep(0.2)
            received: list[Delivery] = []
            deadline = time.monotonic() + 10.0
            while len(received) < 3 and time.monotonic() < deadline:
                try:
                    received.extend(await subscriber.receive(10, 0.5))
                except errors.BrokerError:  # while it reconnects: back off, as the receiver does
                    await asyncio.sleep(0.1)
            assert sorted(ids(received)) == sorted(str(e.event_id) for e in [*before, after])
            assert await subscriber.ack(received) == 0
        finally:
            await publisher.close()
            await subscriber.close()


async def test_a_second_queue_gets_its_own_copy(channel: brokers_testing.Channel) -> None:
    async with channel.subscribe("second") as extra:
        assert extra.startswith("second-") and extra != channel.subscription
        sent = event(7)
        publisher = make_publisher(settings(channel.topic))
        await publisher.start()
        try:
            assert (await publisher.publish([sent]))[0].ok
        finally:
            await publisher.close()
        subscriber = make_subscriber(settings(subscription=extra))
        await subscriber.start()
        try:
            copy = await receive_all(subscriber, 1)
            assert await subscriber.ack(copy) == 0
        finally:
            await subscriber.close()
    assert ids(copy) == [str(sent.event_id)]
    assert [p.attributes["event_id"] for p in await pull(channel, 1)] == [str(sent.event_id)]


async def test_the_test_kit_unavailable_names_the_endpoint_without_password() -> None:
    reason = rabbitmq_testing.unavailable(
        settings(url=f"amqp://guest:s3cret-pw@127.0.0.1:{closed_port()}/")
    )
    assert reason is not None
    assert "s3cret-pw" not in reason
    assert "127.0.0.1" in reason
