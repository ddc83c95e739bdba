"""RedisPublisher and RedisSubscriber against a real Redis server (no PostgreSQL needed).

The server is ``OUTBOX_DI_TEST_REDIS_URL`` (default ``redis://127.0.0.1:6379/0``), shared with
other tests: every test makes stream keys of its own (``temporary_channel``, or a key with a
random suffix) and deletes them. When the server does not answer, every test is skipped with
the reason :func:`outbox_di.testing.brokers.redis.unavailable` gives.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import socket
import time
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from typing import Any

import pytest
import redis.asyncio as aioredis

from outbox_di import config, errors, models
from outbox_di.brokers import Delivery, make_publisher, make_subscriber
from outbox_di.brokers.ports import event_attributes
from outbox_di.brokers.redis import RedisPublisher, RedisSubscriber
from outbox_di.testing import brokers as brokers_testing
from outbox_di.testing.brokers import Probed
from outbox_di.testing.brokers import redis as redis_testing

URL = os.environ.get("OUTBOX_DI_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
PREFIX = "outbox-di-test-redis"


def _settings(
    topic: str = f"{PREFIX}:unused",
    subscription: str | None = None,
    *,
    topics: Mapping[str, str] | None = None,
    url: str = URL,
    **redis: Any,
) -> config.OutboxConfig:
    publisher: dict[str, Any] = {"topic": topic, "publish_timeout": "5s"}
    if topics:
        publisher["topics"] = dict(topics)
    return config.OutboxConfig.from_mapping(
        {
            "schema": "s",
            "dsn": "postgresql://postgres@127.0.0.1/postgres",
            "broker": "redis",
            "redis": {"url": url, "connect_timeout": "2s", "claim_idle": "60s", **redis},
            "publisher": publisher,
            "inbox": {"enabled": subscription is not None, "subscription": subscription},
        }
    )


_UNAVAILABLE = redis_testing.unavailable(_settings())
pytestmark = pytest.mark.skipif(_UNAVAILABLE is not None, reason=_UNAVAILABLE or "")


def _event(
    payload: bytes = b'{"n":1}',
    *,
    event_type: str = "order.created",
    aggregate_type: str = "Order",
    headers: dict[str, str] | None = None,
) -> models.OutboxEvent:
    return brokers_testing.outbox_event(
        payload,
        event_type=event_type,
        aggregate_type=aggregate_type,
        aggregate_id=f"order-{secrets.token_hex(3)}",
        headers=headers,
    )


def _key(name: str) -> str:
    return f"{PREFIX}:{name}:{secrets.token_hex(6)}"


@pytest.fixture
async def raw() -> AsyncIterator[aioredis.Redis]:
    """A plain client, to look at what the adapter left in Redis."""
    client = aioredis.from_url(URL)
    try:
        yield client
    finally:
        await client.aclose()


@pytest.fixture
async def channel() -> AsyncIterator[redis_testing.RedisChannel]:
    async with redis_testing.temporary_channel(_settings(), PREFIX) as made:
        yield made


@contextlib.asynccontextmanager
async def _publisher(settings: config.OutboxConfig) -> AsyncIterator[RedisPublisher]:
    publisher = make_publisher(settings)
    assert isinstance(publisher, RedisPublisher)
    await publisher.start()
    try:
        yield publisher
    finally:
        await publisher.close()


@contextlib.asynccontextmanager
async def _subscriber(subscription: str, **redis: Any) -> AsyncIterator[RedisSubscriber]:
    subscriber = make_subscriber(_settings(subscription=subscription, **redis))
    assert isinstance(subscriber, RedisSubscriber)
    await subscriber.start()
    try:
        yield subscriber
    finally:
        await subscriber.close()


async def _receive(subscriber: RedisSubscriber, count: int, within: float = 5.0) -> list[Delivery]:
    """Receive until ``count`` deliveries came, or ``within`` seconds passed."""
    deadline = time.monotonic() + within
    got: list[Delivery] = []
    while len(got) < count and time.monotonic() < deadline:
        got.extend(await subscriber.receive(100, 0.2))
    return got


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _ids(deliveries: Sequence[Delivery]) -> list[str]:
    return [delivery.message.message_id or "" for delivery in deliveries]


async def _pending(raw: aioredis.Redis, subscription: str) -> int:
    stream, _, group = subscription.rpartition("/")
    summary = await raw.xpending(stream, group)
    return int(summary["pending"])


def _enough(count: int) -> Any:
    return lambda received: len(received) >= count


# --- the publisher ------------------------------------------------------------------------


async def test_batch_is_published_in_order_with_exact_payloads_and_attributes(
    channel: redis_testing.RedisChannel,
) -> None:
    events = [
        _event(b'{"n":0}'),
        _event(b"\xff\xfe\x00\x80 not UTF-8", event_type="order.paid"),
        _event(b""),
        # Headers named like the entry's own fields cannot collide with them.
        _event(b"x" * 10_000, headers={"payload": "p", "attributes": "a", "note": "ü → ✓"}),
        _event(b'{"n":4}', headers={"traceparent": "00-abc-def-01"}),
    ]
    async with _publisher(_settings(channel.topic)) as publisher:
        outcomes = await publisher.publish(events)
    assert [outcome.ok for outcome in outcomes] == [True] * len(events)
    assert all(outcome.message_id for outcome in outcomes)

    received = await channel.pull(_enough(len(events)), within=5)
    assert [item.payload for item in received] == [event.payload for event in events]
    assert [item.attributes for item in received] == [event_attributes(e) for e in events]
    assert [item.message_id for item in received] == [o.message_id for o in outcomes]


async def test_events_are_routed_by_topics() -> None:
    settings = _settings()  # only for the channels' connection
    async with (
        redis_testing.temporary_channel(settings, PREFIX) as orders,
        redis_testing.temporary_channel(settings, PREFIX) as invoices,
    ):
        routed = _settings(orders.topic, topics={"Invoice": invoices.topic})
        events = [
            _event(b"o1"),
            _event(b"i1", event_type="invoice.sent", aggregate_type="Invoice"),
            _event(b"o2", event_type="order.paid"),
        ]
        async with _publisher(routed) as publisher:
            outcomes = await publisher.publish(events)
        assert all(outcome.ok for outcome in outcomes)
        assert [item.payload for item in await orders.pull(_enough(2), 5)] == [b"o1", b"o2"]
        assert [item.payload for item in await invoices.pull(_enough(1), 5)] == [b"i1"]


async def test_a_missing_stream_is_created_by_the_first_publish(raw: aioredis.Redis) -> None:
    stream = _key("created")
    try:
        async with _publisher(_settings(stream)) as publisher:
            assert await raw.exists(stream) == 0  # start() accepted it
            outcomes = await publisher.publish([_event(b"first")])
        assert outcomes[0].ok
        assert await raw.type(stream) == b"stream"
        assert await raw.xlen(stream) == 1
    finally:
        await raw.delete(stream)


async def test_start_refuses_a_key_that_is_not_a_stream(raw: aioredis.Redis) -> None:
    default, routed = _key("string"), _key("hash")
    await raw.set(default, "not a stream")
    await raw.hset(routed, "field", "value")
    try:
        publisher = make_publisher(_settings(default, topics={"Invoice": routed}))
        with pytest.raises(errors.ConfigError) as caught:
            await publisher.start()
        problems = "\n".join(caught.value.problems)
        assert f"publisher.topic: Redis key {default!r} holds a string, not a stream" in problems
        assert f"publisher.topics.Invoice: Redis key {routed!r} holds a hash" in problems
    finally:
        await raw.delete(default, routed)


async def test_an_event_over_the_size_limit_fails_alone_and_permanently(
    channel: redis_testing.RedisChannel, raw: aioredis.Redis
) -> None:
    async with _publisher(_settings(channel.topic)) as publisher:
        # The limit is the server's own proto-max-bulk-len, read at start.
        configured: Any = await raw.config_get("proto-max-bulk-len")
        limit = int(configured["proto-max-bulk-len"])
        assert publisher.max_value_bytes == limit
        # bytes(n) is zero-filled by calloc: no memory is touched, and nothing is sent.
        huge = _event(bytes(limit + 1))
        outcomes = await publisher.publish([_event(b"before"), huge, _event(b"after")])
        assert [outcome.ok for outcome in outcomes] == [True, False, True]
        assert outcomes[1].permanent
        assert "proto-max-bulk-len" in (outcomes[1].error or "")

        # The same rule at a limit a test can afford to reach with real bytes.
        publisher.max_value_bytes = 1000
        outcomes = await publisher.publish([_event(b"a" * 1000), _event(b"b" * 1001)])
        assert outcomes[0].ok
        assert not outcomes[1].ok and outcomes[1].permanent
    received = await channel.pull(_enough(3), within=2)
    assert [item.payload for item in received] == [b"before", b"after", b"a" * 1000]


async def test_an_error_reply_fails_only_its_event(
    channel: redis_testing.RedisChannel, raw: aioredis.Redis
) -> None:
    broken = _key("broken")
    settings = _settings(channel.topic, topics={"order.broken": broken})
    try:
        async with _publisher(settings) as publisher:
            await raw.set(broken, "replaced after start")  # XADD now gets WRONGTYPE
            outcomes = await publisher.publish(
                [_event(b"1"), _event(b"2", event_type="order.broken"), _event(b"3")]
            )
        assert [outcome.ok for outcome in outcomes] == [True, False, True]
        assert not outcomes[1].permanent  # retried later: the key may be fixed
        assert "WRONGTYPE" in (outcomes[1].error or "")
        assert [item.payload for item in await channel.pull(_enough(2), 5)] == [b"1", b"3"]
    finally:
        await raw.delete(broken)


async def test_max_length_trims_the_stream(raw: aioredis.Redis) -> None:
    stream = _key("trimmed")
    try:
        async with _publisher(_settings(stream, max_length=10)) as publisher:
            outcomes = await publisher.publish([_event(b"%d" % n) for n in range(300)])
        assert all(outcome.ok for outcome in outcomes)
        # MAXLEN ~ trims whole nodes of the stream: about 10 entries, never all 300.
        assert 10 <= await raw.xlen(stream) < 300
    finally:
        await raw.delete(stream)


# --- start-up checks ----------------------------------------------------------------------


@contextlib.contextmanager
def _closed_port() -> Iterator[int]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    yield port


@contextlib.contextmanager
def _silent_port() -> Iterator[int]:
    """A port that accepts connections (the kernel's backlog) and never answers."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(16)
        yield sock.getsockname()[1]


@pytest.mark.parametrize("server", [_closed_port, _silent_port], ids=["closed", "silent"])
@pytest.mark.parametrize("side", ["publisher", "subscriber"])
async def test_an_unreachable_server_is_reported_within_connect_timeout(
    server: Any, side: str
) -> None:
    secret = "s3cret-pw-4711"
    with server() as port:
        url = f"redis://outbox:{secret}@127.0.0.1:{port}/0"
        settings = _settings(subscription=f"{PREFIX}:s/g", url=url, connect_timeout="1s")
        adapter: Any = (
            make_publisher(settings) if side == "publisher" else make_subscriber(settings)
        )
        started = time.monotonic()
        with pytest.raises(errors.BrokerUnavailableError) as caught:
            await adapter.start()
        elapsed = time.monotonic() - started
    assert elapsed < 1.8
    message = str(caught.value)
    assert f"127.0.0.1:{port}" in message and "redis.connect_timeout (1s)" in message
    assert secret not in message and secret not in caught.value.endpoint
    assert caught.value.timeout == 1.0
    assert redis_testing.unavailable(settings) is not None


# --- the subscriber -----------------------------------------------------------------------


async def test_subscriber_start_refuses_a_missing_stream_or_group(raw: aioredis.Redis) -> None:
    stream = _key("nogroup")
    subscriber = make_subscriber(_settings(subscription=f"{stream}/billing"))
    with pytest.raises(errors.ConfigError) as caught:
        await subscriber.start()
    (problem,) = caught.value.problems
    assert problem.startswith("inbox.subscription: ")
    assert f"XGROUP CREATE {stream} billing $ MKSTREAM" in problem

    await raw.xadd(stream, {"payload": b"x"})  # the stream now exists, the group still not
    try:
        with pytest.raises(errors.ConfigError) as caught:
            await subscriber.start()
        (problem,) = caught.value.problems
        assert f"inbox.subscription: stream {stream!r} has no consumer group 'billing'" in problem
        assert f"XGROUP CREATE {stream} billing $ MKSTREAM" in problem
    finally:
        await raw.delete(stream)


async def test_received_message_carries_the_event(
    channel: redis_testing.RedisChannel,
) -> None:
    event = _event(b'{"total":12}', headers={"traceparent": "00-abc-01", "tenant": "t1"})
    async with _publisher(_settings(channel.topic)) as publisher:
        (outcome,) = await publisher.publish([event])
    async with _subscriber(channel.subscription) as subscriber:
        assert subscriber.name == channel.subscription
        (delivery,) = await _receive(subscriber, 1)
        message = delivery.message
        assert message.event_id == str(event.event_id)
        assert message.event_type == "order.created"
        assert message.aggregate_type == "Order"
        assert message.aggregate_id == event.aggregate_id
        assert message.headers == {"traceparent": "00-abc-01", "tenant": "t1"}
        assert message.payload == b'{"total":12}'
        assert message.message_id == outcome.message_id == delivery.token
        assert message.ordering_key is None
        assert delivery.size == len(b'{"total":12}')
        assert await subscriber.ack([delivery]) == 0


async def test_hand_written_entries_are_delivered_as_far_as_they_can_be_read(
    channel: redis_testing.RedisChannel, raw: aioredis.Redis
) -> None:
    plain = await raw.xadd(channel.topic, {"payload": b"raw", "event_type": "by.hand", "k": "v"})
    await raw.xadd(channel.topic, {"payload": b"\x00bin", "attributes": b"not json \xff"})
    await raw.xadd(channel.topic, {"attributes": '{"event_type":"t","n":5,"s":"x"}'})
    async with _subscriber(channel.subscription) as subscriber:
        first, second, third = (d.message for d in await _receive(subscriber, 3))
    assert (first.payload, first.event_type, first.headers) == (b"raw", "by.hand", {"k": "v"})
    assert first.event_id == first.message_id == _text(plain)
    assert (second.payload, second.event_type, second.headers) == (b"\x00bin", "unknown", {})
    assert (third.payload, third.event_type, third.headers) == (b"", "t", {"n": "5", "s": "x"})


async def test_ack_settles_for_good(
    channel: redis_testing.RedisChannel, raw: aioredis.Redis
) -> None:
    await channel.publish([(b"%d" % n, {"event_type": "t"}) for n in range(3)])
    async with _subscriber(channel.subscription, claim_idle="500ms") as subscriber:
        deliveries = await _receive(subscriber, 3)
        assert [d.message.payload for d in deliveries] == [b"0", b"1", b"2"]
        assert await subscriber.ack(deliveries) == 0
        consumer = subscriber.consumer
    assert await _pending(raw, channel.subscription) == 0
    # The consumer, left with nothing pending, was removed from the group at close.
    listed = await raw.xinfo_consumers(channel.topic, channel.subscription.rpartition("/")[2])
    assert consumer.encode() not in [item["name"] for item in listed]

    await asyncio.sleep(0.7)  # past claim_idle: nothing is left to take over either
    async with _subscriber(channel.subscription, claim_idle="500ms") as again:
        assert await again.receive(100, 0.3) == []
        assert await again.receive(100, 0.3) == []


async def test_nack_hands_the_deliveries_out_again_first(
    channel: redis_testing.RedisChannel, raw: aioredis.Redis
) -> None:
    await channel.publish([(b"%d" % n, {"event_type": "t"}) for n in range(4)])
    async with _subscriber(channel.subscription) as subscriber:  # claim_idle 60s
        first = await _receive(subscriber, 4)
        await subscriber.ack(first[:1])
        await subscriber.nack(first[1:])
        started = time.monotonic()
        again = await subscriber.receive(100, 5.0)
        assert time.monotonic() - started < 1.0  # at once, not after a wait or claim_idle
        assert _ids(again) == _ids(first[1:])
        assert [d.message.payload for d in again] == [b"1", b"2", b"3"]
        assert await subscriber.ack(again) == 0
        assert await subscriber.receive(100, 0.2) == []
    assert await _pending(raw, channel.subscription) == 0


async def test_an_entry_deleted_while_pending_is_skipped_and_settled(
    channel: redis_testing.RedisChannel, raw: aioredis.Redis
) -> None:
    await channel.publish([(b"gone", {"event_type": "t"}), (b"kept", {"event_type": "t"})])
    async with _subscriber(channel.subscription) as subscriber:
        first = await _receive(subscriber, 2)
        await raw.xdel(channel.topic, first[0].token)
        await subscriber.nack(first)
        again = await subscriber.receive(100, 0.5)
        assert [d.message.payload for d in again] == [b"kept"]
        await subscriber.ack(again)
    assert await _pending(raw, channel.subscription) == 0


async def test_unacknowledged_deliveries_go_to_a_new_subscriber_after_claim_idle(
    channel: redis_testing.RedisChannel, raw: aioredis.Redis
) -> None:
    await channel.publish([(b"a", {"event_type": "t"}), (b"b", {"event_type": "t"})])
    async with _subscriber(channel.subscription, claim_idle="1s") as dying:
        taken = await _receive(dying, 2)
        assert len(taken) == 2
    # Closed without acknowledging: the entries stay pending with the old consumer.
    assert await _pending(raw, channel.subscription) == 2
    started = time.monotonic()
    async with _subscriber(channel.subscription, claim_idle="1s") as successor:
        again = await _receive(successor, 2, within=5)
        waited = time.monotonic() - started
        assert _ids(again) == _ids(taken)
        assert [d.message.payload for d in again] == [b"a", b"b"]
        assert waited >= 0.8  # taken over only once idle for claim_idle
        assert await successor.ack(again) == 0
    assert await _pending(raw, channel.subscription) == 0


async def test_a_cancelled_receive_loses_nothing(
    channel: redis_testing.RedisChannel, raw: aioredis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with _subscriber(channel.subscription) as subscriber:  # claim_idle 60s
        # One delivery stays with the receiver meanwhile: it must not be handed out twice.
        await channel.publish([(b"held", {"event_type": "t"})])
        held = await _receive(subscriber, 1)
        await channel.publish([(b"%d" % n, {"event_type": "t"}) for n in range(3)])
        # The worst moment: Redis has moved the entries to this consumer, the call has not
        # returned them yet.
        read = subscriber.client.xreadgroup
        taken = asyncio.Event()

        async def read_then_stall(*args: Any, **kwargs: Any) -> Any:
            reply = await read(*args, **kwargs)
            if reply:
                taken.set()
                await asyncio.sleep(30)
            return reply

        monkeypatch.setattr(subscriber.client, "xreadgroup", read_then_stall)
        receiving = asyncio.ensure_future(subscriber.receive(100, 5.0))
        await asyncio.wait_for(taken.wait(), 5)
        receiving.cancel()
        with pytest.raises(asyncio.CancelledError):
            await receiving
        monkeypatch.undo()
        assert await _pending(raw, channel.subscription) == 4

        # The next call finds them in this consumer's own pending list, long before
        # claim_idle; one deleted meanwhile is settled, not handed out.
        entries: Any = await raw.xrange(channel.topic)
        await raw.xdel(channel.topic, entries[1][0])
        again = await subscriber.receive(100, 5.0)
        assert [d.message.payload for d in again] == [b"1", b"2"]
        await subscriber.ack([*held, *again])
        assert await _pending(raw, channel.subscription) == 0

        # Cancelled while blocked waiting: the connection is not left with a stale reply.
        for round_ in range(3):
            waiting = asyncio.ensure_future(subscriber.receive(100, 5.0))
            await asyncio.sleep(0.1)
            waiting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await waiting
            await channel.publish([(b"late-%d" % round_, {"event_type": "t"})])
            (late,) = await _receive(subscriber, 1, within=3)
            assert late.message.payload == b"late-%d" % round_
            await subscriber.ack([late])
    assert await _pending(raw, channel.subscription) == 0


async def test_a_cancel_racing_an_arrival_loses_nothing(
    channel: redis_testing.RedisChannel,
) -> None:
    async with _subscriber(channel.subscription) as subscriber:  # claim_idle 60s
        for round_ in range(5):
            payload = b"race-%d" % round_
            waiting = asyncio.ensure_future(subscriber.receive(100, 5.0))
            await asyncio.sleep(0.05)
            await channel.publish([(payload, {"event_type": "t"})])
            waiting.cancel()  # the reply may or may not have been read
            got: list[Delivery] = []
            with contextlib.suppress(asyncio.CancelledError):
                got = list(await waiting)
            if not got:
                got = await _receive(subscriber, 1, within=3)
            assert [d.message.payload for d in got] == [payload]
            await subscriber.ack(got)


async def test_the_channel_pulls_what_it_publishes(
    channel: redis_testing.RedisChannel,
) -> None:
    sent = [(b"\xffraw", {"event_type": "t", "event_id": "e1", "h": "v"})]
    await channel.publish(sent)
    received = await channel.pull(_enough(1), within=3)
    assert [(item.payload, item.attributes) for item in received] == [
        (b"\xffraw", {"event_type": "t", "event_id": "e1", "h": "v"})
    ]
    assert isinstance(received[0], Probed) and received[0].message_id
    assert redis_testing.unavailable(_settings()) is None


async def test_a_failed_ack_is_counted_and_the_deliveries_come_back(
    channel: redis_testing.RedisChannel, raw: aioredis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    await channel.publish([(b"a", {"event_type": "t"}), (b"b", {"event_type": "t"})])
    async with _subscriber(channel.subscription) as subscriber:  # claim_idle 60s
        first = await _receive(subscriber, 2)

        async def refuse(*args: Any, **kwargs: Any) -> Any:
            raise aioredis.ConnectionError("connection lost (injected)")

        monkeypatch.setattr(subscriber.client, "xack", refuse)
        assert await subscriber.ack(first) == 2  # never raises
        assert subscriber.ack_failures == 2
        monkeypatch.undo()
        again = await subscriber.receive(100, 1.0)
        assert _ids(again) == _ids(first)
        assert await subscriber.ack(again) == 0
    assert await _pending(raw, channel.subscription) == 0


async def test_receive_raises_a_broker_error_when_the_group_is_gone(
    channel: redis_testing.RedisChannel, raw: aioredis.Redis
) -> None:
    async with _subscriber(channel.subscription) as subscriber:
        await raw.xgroup_destroy(channel.topic, channel.subscription.rpartition("/")[2])
        with pytest.raises(errors.BrokerError) as caught:
            await subscriber.receive(10, 0.2)
        assert "NOGROUP" in str(caught.value) and "XGROUP CREATE" in str(caught.value)


async def test_the_same_event_published_twice_is_two_entries(
    channel: redis_testing.RedisChannel,
) -> None:
    # Redis Streams keep no record of what was added: the inbox drops the copy by event_id.
    event = _event(b"twice")
    async with _publisher(_settings(channel.topic)) as publisher:
        (first,) = await publisher.publish([event])
        (second,) = await publisher.publish([event])
    assert first.ok and second.ok and first.message_id != second.message_id
    received = await channel.pull(_enough(2), within=3)
    assert [item.attributes["event_id"] for item in received] == [str(event.event_id)] * 2
