"""NatsPublisher and NatsSubscriber against a real NATS server with JetStream.

Every test makes its own stream (``temporary_channel``) and deletes it afterwards. The server
is ``OUTBOX_TEST_NATS_SERVERS`` (``nats://127.0.0.1:4222`` by default); when it does not answer
the tests are skipped with the reason. No PostgreSQL is needed: events are built directly.
Redelivery tests use a second consumer with an ``ack_wait`` of one second, so a message that
was not settled comes back quickly; tests that must tell a hand-back from a deadline use the
channel's own consumer, whose ``ack_wait`` (5 s) is longer than they wait.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from typing import Any

import pytest
import pytest_asyncio
from nats.js import JetStreamContext, api

from outbox_di import config, errors, models
from outbox_di.brokers import make_publisher, make_subscriber, startup
from outbox_di.brokers.nats import NatsPublisher, NatsSubscriber
from outbox_di.brokers.ports import Delivery, event_attributes
from outbox_di.testing import brokers as brokers_testing
from outbox_di.testing.brokers import Probed
from outbox_di.testing.brokers import nats as nats_testing

pytestmark = pytest.mark.integration

SERVERS = os.environ.get("OUTBOX_TEST_NATS_SERVERS", "nats://127.0.0.1:4222")
QUICK = "quick"
"""A second durable consumer on a channel's stream, redelivering after one second."""
QUICK_ACK_WAIT = 1.0


def _settings(
    topic: str = "unused.subject",
    subscription: str = "UNUSED/unused",
    *,
    topics: dict[str, str] | None = None,
    servers: str = SERVERS,
    connect_timeout: str = "5s",
) -> config.OutboxConfig:
    publisher: dict[str, Any] = {"topic": topic, "publish_timeout": "5s"}
    if topics:
        publisher["topics"] = topics
    return config.OutboxConfig.from_mapping(
        {
            "schema": "s",
            "dsn": "postgresql://postgres@127.0.0.1/postgres",
            "broker": "nats",
            "nats": {"servers": servers, "connect_timeout": connect_timeout},
            "publisher": publisher,
            "inbox": {"enabled": True, "subscription": subscription},
        }
    )


def _event(
    payload: bytes,
    *,
    event_type: str = "order.created",
    aggregate_type: str = "Order",
    aggregate_id: str = "1",
    headers: dict[str, str] | None = None,
) -> models.OutboxEvent:
    return brokers_testing.outbox_event(
        payload,
        event_type=event_type,
        aggregate_type=aggregate_type,
        aggregate_id=aggregate_id,
        headers=headers,
    )


@pytest.fixture(scope="module")
def nats_up() -> None:
    reason = nats_testing.unavailable(_settings())
    if reason is not None:
        pytest.skip(reason)


@pytest_asyncio.fixture
async def channel(nats_up: None) -> AsyncIterator[nats_testing.NatsChannel]:
    async with nats_testing.temporary_channel(_settings(), "outbox_test") as made:
        assert isinstance(made, nats_testing.NatsChannel)
        await made.js.add_consumer(
            made.stream,
            api.ConsumerConfig(
                durable_name=QUICK, ack_policy=api.AckPolicy.EXPLICIT, ack_wait=QUICK_ACK_WAIT
            ),
        )
        yield made


async def _publisher(settings: config.OutboxConfig) -> NatsPublisher:
    publisher = make_publisher(settings)
    assert isinstance(publisher, NatsPublisher)
    await publisher.start()
    return publisher


async def _subscriber(subscription: str) -> NatsSubscriber:
    subscriber = make_subscriber(_settings(subscription=subscription))
    assert isinstance(subscriber, NatsSubscriber)
    await subscriber.start()
    return subscriber


async def _receive(subscriber: NatsSubscriber, count: int, within: float = 5.0) -> list[Delivery]:
    """Deliveries until ``count`` came or ``within`` seconds passed."""
    got: list[Delivery] = []
    deadline = time.monotonic() + within
    while len(got) < count and time.monotonic() < deadline:
        got.extend(await subscriber.receive(100, min(0.5, deadline - time.monotonic())))
    return got


def _closed_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


def _payloads(probed: Sequence[Probed]) -> list[bytes]:
    return [item.payload for item in probed]


# --- publisher ---------------------------------------------------------------------------------


async def test_batch_is_confirmed_and_arrives_in_order_with_exact_bytes_and_attributes(
    channel: nats_testing.NatsChannel,
) -> None:
    events = [
        _event(b'{"n": 0}', headers={"trace-id": "abc", "note": "café ☕"}),
        _event(b"\xff\xfe\x00\x80 not utf-8", aggregate_id="42"),
        _event(b"", event_type="order.paid"),
        *(_event(f"message {n}".encode(), aggregate_id=str(n)) for n in range(3, 20)),
    ]
    publisher = await _publisher(_settings(channel.topic))
    try:
        outcomes = await publisher.publish(events)
        again = await publisher.publish(events[:3])
    finally:
        await publisher.close()

    assert [outcome.error for outcome in outcomes] == [None] * len(events)
    assert [outcome.message_id for outcome in outcomes] == [
        f"{channel.stream}:{n}" for n in range(1, len(events) + 1)
    ]
    # The same events again, within the stream's duplicate window: dropped by the server, yet
    # ok (the stream has them), with the sequence of the first copy.
    assert [outcome.ok for outcome in again] == [True] * 3
    assert [outcome.message_id for outcome in again] == [o.message_id for o in outcomes[:3]]

    probed = await channel.pull(lambda got: len(got) >= len(events))
    assert _payloads(probed) == [event.payload for event in events]
    assert [item.attributes for item in probed] == [event_attributes(e) for e in events]
    assert probed[0].attributes["note"] == "café ☕"
    extra = await channel.pull(lambda got: bool(got), within=1.0)
    assert extra == [], "a republished event was stored twice"


async def test_routes_by_event_type_then_aggregate_type_then_default(nats_up: None) -> None:
    base = _settings()
    async with (
        nats_testing.temporary_channel(base, "route_a") as first,
        nats_testing.temporary_channel(base, "route_b") as second,
    ):
        settings = _settings(
            first.topic, topics={"payment.settled": second.topic, "Invoice": second.topic}
        )
        events = [
            _event(b"default", event_type="order.created", aggregate_type="Order"),
            _event(b"by event type", event_type="payment.settled", aggregate_type="Payment"),
            _event(b"by aggregate type", event_type="invoice.sent", aggregate_type="Invoice"),
        ]
        publisher = await _publisher(settings)
        try:
            outcomes = await publisher.publish(events)
        finally:
            await publisher.close()
        assert all(outcome.ok for outcome in outcomes), outcomes
        to_first = await first.pull(lambda got: len(got) >= 1, within=3.0)
        to_second = await second.pull(lambda got: len(got) >= 2, within=3.0)
        assert _payloads(to_first) == [b"default"]
        assert _payloads(to_second) == [b"by event type", b"by aggregate type"]
        assert await first.pull(lambda got: bool(got), within=0.5) == []


async def test_a_subject_no_stream_captures_fails_the_start_naming_the_key(
    channel: nats_testing.NatsChannel,
) -> None:
    missing = f"outbox_test.missing.{uuid.uuid4().hex[:8]}"
    settings = _settings(missing, topics={"order.paid": f"{missing}.paid"})
    publisher = NatsPublisher(settings)
    with pytest.raises(errors.ConfigError) as caught:
        await publisher.start()
    problems = caught.value.problems
    assert len(problems) == 2
    assert any(p.startswith("publisher.topic: ") and repr(missing) in p for p in problems)
    assert any(p.startswith("publisher.topics.order.paid: ") for p in problems)
    assert all("nats stream add" in p and "add_stream(" in p for p in problems)
    assert publisher._client is None  # a failed start closes what it opened

    # {schema} in a subject is the schema's name: s here, a subject the channel's stream lacks.
    with pytest.raises(errors.ConfigError, match=r"publisher\.topic"):
        await NatsPublisher(_settings(channel.topic + ".{schema}")).start()


async def test_a_missing_stream_or_consumer_fails_the_start_naming_inbox_subscription(
    channel: nats_testing.NatsChannel,
) -> None:
    with pytest.raises(errors.ConfigError) as caught:
        await _subscriber(f"{channel.stream}/nobody")
    (problem,) = caught.value.problems
    assert problem.startswith("inbox.subscription: ")
    assert "no consumer 'nobody'" in problem and "nats consumer add" in problem

    with pytest.raises(errors.ConfigError) as caught:
        await _subscriber("NO_SUCH_STREAM/inbox")
    (problem,) = caught.value.problems
    assert problem.startswith("inbox.subscription: stream 'NO_SUCH_STREAM' does not exist")

    # A consumer the inbox cannot use safely: acknowledging nothing, or everything up to one.
    await channel.js.add_consumer(
        channel.stream, api.ConsumerConfig(durable_name="fire", ack_policy=api.AckPolicy.NONE)
    )
    with pytest.raises(errors.ConfigError, match=r"inbox\.subscription: .*'explicit'"):
        await _subscriber(f"{channel.stream}/fire")
    # A push consumer, and one that delivers no bodies.
    await channel.js.add_consumer(
        channel.stream, api.ConsumerConfig(durable_name="pushed", deliver_subject="_pushed.x")
    )
    with pytest.raises(errors.ConfigError, match="is a push consumer"):
        await _subscriber(f"{channel.stream}/pushed")
    await channel.js.add_consumer(
        channel.stream,
        api.ConsumerConfig(
            durable_name="heads", ack_policy=api.AckPolicy.EXPLICIT, headers_only=True
        ),
    )
    with pytest.raises(errors.ConfigError, match="delivers headers only"):
        await _subscriber(f"{channel.stream}/heads")


async def test_an_unreachable_server_fails_within_connect_timeout_without_the_password(
    nats_up: None,
) -> None:
    port = _closed_port()
    settings = _settings(
        "orders.events",
        "ORDERS/inbox",
        servers=f"nats://outbox:s3cret-pw@127.0.0.1:{port}",
        connect_timeout="1s",
    )
    for adapter in (NatsPublisher(settings), NatsSubscriber(settings)):
        started = time.monotonic()
        with pytest.raises(errors.BrokerUnavailableError) as caught:
            await adapter.start()
        elapsed = time.monotonic() - started
        assert 0.9 <= elapsed < 2.0, elapsed
        assert "s3cret-pw" not in str(caught.value)
        assert "s3cret-pw" not in caught.value.endpoint
        assert caught.value.endpoint == f"nats://127.0.0.1:{port}"
        assert "nats.connect_timeout (1s)" in str(caught.value)
        assert caught.value.timeout == 1.0


async def test_a_message_the_server_would_refuse_fails_alone_and_permanently(
    channel: nats_testing.NatsChannel,
) -> None:
    limit = channel.client.max_payload
    exact = _event(b"", aggregate_id="exact")
    # What the client sends: a header block, one "name: value" line a header, and the body.
    headers = {**event_attributes(exact), "Nats-Msg-Id": str(exact.event_id)}
    block = len(b"NATS/1.0\r\n\r\n") + sum(
        len(f"{k}: {v}\r\n".encode()) for k, v in headers.items()
    )
    exact = _event(b"x" * (limit - block), aggregate_id="exact")
    events = [
        _event(b"before"),
        _event(b"y" * (limit - block + 1), aggregate_id="exact"),  # one byte over
        _event(b"line break", headers={"note": "a\r\nb"}),
        _event(b"padded", headers={"note": " kept as is? "}),  # the client would strip it
        _event(b"bad name", headers={"my header": "x"}),
        _event(b"reserved", headers={"Nats-Expected-Stream": "OTHER"}),
        exact,
        _event(b"after"),
    ]
    publisher = await _publisher(_settings(channel.topic))
    try:
        outcomes = await publisher.publish(events)
        later = await publisher.publish([_event(b"the connection survived")])
    finally:
        await publisher.close()
    assert [(o.ok, o.permanent) for o in outcomes] == [
        (True, False),
        (False, True),
        (False, True),
        (False, True),
        (False, True),
        (False, True),
        (True, False),
        (True, False),
    ]
    assert f"max_payload of {limit} bytes" in (outcomes[1].error or "")
    assert "line break" in (outcomes[2].error or "")
    assert "leading or trailing spaces" in (outcomes[3].error or "")
    assert "header name" in (outcomes[4].error or "")
    assert "Nats-" in (outcomes[5].error or "")
    assert later[0].ok
    probed = await channel.pull(lambda got: len(got) >= 4)
    assert _payloads(probed) == [b"before", exact.payload, b"after", b"the connection survived"]


async def test_a_message_over_the_stream_s_own_limit_fails_permanently(
    nats_up: None,
) -> None:
    async with nats_testing.temporary_channel(_settings(), "small") as made:
        assert isinstance(made, nats_testing.NatsChannel)
        info = await made.js.stream_info(made.stream)
        info.config.max_msg_size = 1000  # a limit of the stream, far below max_payload
        await made.js.update_stream(info.config)
        publisher = await _publisher(_settings(made.topic))
        try:
            outcomes = await publisher.publish([_event(b"x" * 2000), _event(b"small")])
        finally:
            await publisher.close()
        assert (outcomes[0].ok, outcomes[0].permanent) == (False, True)
        assert "code 10054" in (outcomes[0].error or "")
        assert outcomes[1].ok
        assert _payloads(await made.pull(lambda got: len(got) >= 1)) == [b"small"]


async def test_an_event_without_a_route_fails_permanently(nats_up: None) -> None:
    async with nats_testing.temporary_channel(_settings(), "no_route") as made:
        settings = config.OutboxConfig.from_mapping(
            {
                **_settings().to_dict(),
                "publisher": {"topic": None, "topics": {"order.paid": made.topic}},
            }
        )
        publisher = await _publisher(settings)
        try:
            outcomes = await publisher.publish([_event(b"x", event_type="order.lost")])
        finally:
            await publisher.close()
    assert outcomes[0].permanent and "publisher.topic" in (outcomes[0].error or "")


# --- subscriber --------------------------------------------------------------------------------


async def test_received_messages_carry_the_event_and_its_headers(
    channel: nats_testing.NatsChannel,
) -> None:
    event = _event(b"\x00\xffbody", headers={"trace-id": "t-1", "tenant": "acme"})
    publisher = await _publisher(_settings(channel.topic))
    try:
        (outcome,) = await publisher.publish([event])
    finally:
        await publisher.close()
    await channel.publish([(b"from elsewhere", {})])  # another service, no attributes at all

    subscriber = await _subscriber(channel.subscription)
    try:
        first, bare = await _receive(subscriber, 2)
        assert await subscriber.ack([first, bare]) == 0
    finally:
        await subscriber.close()
    message = first.message
    assert message.event_id == str(event.event_id)
    assert message.event_type == "order.created"
    assert (message.aggregate_type, message.aggregate_id) == ("Order", "1")
    assert message.payload == b"\x00\xffbody" and first.size == len(b"\x00\xffbody")
    assert message.headers == {"trace-id": "t-1", "tenant": "acme"}  # no fixed keys, no Nats-
    assert message.message_id == outcome.message_id == f"{channel.stream}:1"
    assert bare.message.event_id == bare.message.message_id == f"{channel.stream}:2"
    assert bare.message.event_type == "unknown" and bare.message.headers == {}
    assert subscriber.name == channel.subscription


async def test_acknowledged_messages_are_not_delivered_again(
    channel: nats_testing.NatsChannel,
) -> None:
    await channel.publish([(f"m{n}".encode(), {"event_id": f"e{n}"}) for n in range(3)])
    subscription = f"{channel.stream}/{QUICK}"
    subscriber = await _subscriber(subscription)
    try:
        got = await _receive(subscriber, 3)
        assert [d.message.payload for d in got] == [b"m0", b"m1", b"m2"]
        assert await subscriber.ack(got) == 0
    finally:
        await subscriber.close()
    reopened = await _subscriber(subscription)
    try:
        # Past the consumer's ack_wait: an unacknowledged message would be back by now.
        assert await _receive(reopened, 1, within=QUICK_ACK_WAIT + 1.0) == []
    finally:
        await reopened.close()


async def test_a_nacked_message_is_delivered_again_at_once(
    channel: nats_testing.NatsChannel,
) -> None:
    await channel.publish([(b"again", {"event_id": "e1"}), (b"kept", {"event_id": "e2"})])
    subscriber = await _subscriber(channel.subscription)  # ack_wait 5 s: not the deadline
    try:
        again, kept = await _receive(subscriber, 2)
        await subscriber.nack([again])
        assert await subscriber.ack([kept]) == 0
        started = time.monotonic()
        redelivered = await _receive(subscriber, 1, within=3.0)
        assert time.monotonic() - started < 2.0
        assert [d.message.payload for d in redelivered] == [b"again"]
        assert redelivered[0].message.message_id == again.message.message_id
        assert await subscriber.ack(redelivered) == 0
        assert await _receive(subscriber, 1, within=1.0) == []
    finally:
        await subscriber.close()


async def test_unsettled_messages_go_to_the_next_subscriber(
    channel: nats_testing.NatsChannel,
) -> None:
    await channel.publish([(b"one", {}), (b"two", {})])
    # Closed with messages unsettled: handed back at once (well within the 5 s ack_wait).
    first = await _subscriber(channel.subscription)
    try:
        assert len(await _receive(first, 2)) == 2
    finally:
        await first.close()
    second = await _subscriber(channel.subscription)
    try:
        started = time.monotonic()
        got = await _receive(second, 2, within=3.0)
        assert time.monotonic() - started < 2.0
        assert sorted(d.message.payload for d in got) == [b"one", b"two"]
        assert await second.ack(got) == 0
    finally:
        await second.close()


async def test_a_subscriber_that_went_silent_loses_nothing(
    channel: nats_testing.NatsChannel,
) -> None:
    # Never settled and never closed (its process hung or died): the consumer's ack_wait
    # hands the messages to another subscriber.
    await channel.publish([(b"stuck", {})])
    subscription = f"{channel.stream}/{QUICK}"
    silent = await _subscriber(subscription)
    other = await _subscriber(subscription)
    try:
        assert [d.message.payload for d in await _receive(silent, 1)] == [b"stuck"]
        got = await _receive(other, 1, within=QUICK_ACK_WAIT + 3.0)
        assert [d.message.payload for d in got] == [b"stuck"]
        assert await other.ack(got) == 0
    finally:
        await silent.close()
        await other.close()


async def test_cancelling_a_pending_receive_loses_nothing(
    channel: nats_testing.NatsChannel,
) -> None:
    subscriber = await _subscriber(channel.subscription)
    try:
        pending = asyncio.ensure_future(subscriber.receive(10, 5.0))
        await asyncio.sleep(0.3)
        pending.cancel()
        with pytest.raises(asyncio.CancelledError):
            await pending
        # The cancelled fetch's pull request is still open on the server: what it brings waits
        # for the next receive.
        await channel.publish([(b"after cancel", {})])
        got = await _receive(subscriber, 1, within=3.0)
        assert [d.message.payload for d in got] == [b"after cancel"]
        assert await subscriber.ack(got) == 0

        pending = asyncio.ensure_future(subscriber.receive(10, 5.0))
        await asyncio.sleep(0.3)
        pending.cancel()
        with pytest.raises(asyncio.CancelledError):
            await pending
        await channel.publish([(b"cancelled then closed", {})])
        await asyncio.sleep(0.3)
    finally:
        await subscriber.close()  # hands back what arrived for the cancelled fetch
    reopened = await _subscriber(channel.subscription)
    try:
        started = time.monotonic()
        got = await _receive(reopened, 1, within=4.0)
        assert [d.message.payload for d in got] == [b"cancelled then closed"]
        assert time.monotonic() - started < nats_testing.ACK_WAIT - 1.0
        assert await reopened.ack(got) == 0
    finally:
        await reopened.close()


async def test_concurrent_receives_share_out_the_messages(
    channel: nats_testing.NatsChannel,
) -> None:
    await channel.publish([(f"m{n}".encode(), {}) for n in range(6)])
    subscriber = await _subscriber(channel.subscription)
    try:
        batches = await asyncio.gather(subscriber.receive(3, 2.0), subscriber.receive(3, 2.0))
        got = [d for batch in batches for d in batch]
        got += await _receive(subscriber, 6 - len(got), within=2.0)
        assert sorted(d.message.payload for d in got) == [f"m{n}".encode() for n in range(6)]
        assert await subscriber.ack(got) == 0
    finally:
        await subscriber.close()


async def test_a_message_published_during_a_waiting_receive_comes_at_once(
    channel: nats_testing.NatsChannel,
) -> None:
    """A receive that waits on the server returns with the first message, not when its batch
    is full or its timeout ends (nats-py's batch fetch does the latter)."""
    subscriber = await _subscriber(channel.subscription)
    try:
        waiting = asyncio.ensure_future(subscriber.receive(1000, 8.0))
        await asyncio.sleep(0.3)  # the receive is waiting on the server by now
        published = time.monotonic()
        await channel.publish([(b"one", {})])
        got = await asyncio.wait_for(waiting, 8.0)
        took = time.monotonic() - published
        assert [d.message.payload for d in got] == [b"one"]
        assert took < 2.0, f"the receive held the message for {took:.1f}s"
        assert await subscriber.ack(got) == 0
    finally:
        await subscriber.close()


async def test_an_empty_receive_waits_about_its_timeout(
    channel: nats_testing.NatsChannel,
) -> None:
    subscriber = await _subscriber(channel.subscription)
    try:
        started = time.monotonic()
        assert await subscriber.receive(100, 0.5) == []
        assert 0.4 <= time.monotonic() - started < 1.5
        for step in range(30):  # short waits, ended by the server's reply or the client
            assert await subscriber.receive(100, 0.001 * (step % 10 + 1)) == []
    finally:
        await subscriber.close()


async def test_a_fetch_ended_by_asyncio_s_own_timeout_is_an_empty_receive(
    channel: nats_testing.NatsChannel, monkeypatch: pytest.MonkeyPatch
) -> None:
    # nats-py ends a fetch with asyncio.TimeoutError rather than its own subclass when the
    # server's "no messages" reply lands just as the wait runs out: a race, forced here.
    async def timed_out(*args: object, **kwargs: object) -> list[object]:
        raise asyncio.TimeoutError

    subscriber = await _subscriber(channel.subscription)
    try:
        monkeypatch.setattr(JetStreamContext.PullSubscription, "fetch", timed_out)
        assert await subscriber.receive(100, 0.5) == []
    finally:
        await subscriber.close()


async def test_a_second_subscription_gets_what_is_published_after_it(
    channel: nats_testing.NatsChannel,
) -> None:
    await channel.publish([(b"before", {})])
    async with channel.subscribe("second") as subscription:
        assert subscription.startswith(f"{channel.stream}/second_")
        await channel.publish([(b"after", {})])
        subscriber = await _subscriber(subscription)
        try:
            got = await _receive(subscriber, 2, within=1.5)
            assert [d.message.payload for d in got] == [b"after"]
            assert await subscriber.ack(got) == 0
        finally:
            await subscriber.close()
    with pytest.raises(errors.ConfigError, match="has no consumer"):
        await _subscriber(subscription)
    # The channel's own subscription still has both.
    assert _payloads(await channel.pull(lambda got: len(got) >= 2)) == [b"before", b"after"]


async def test_a_stop_ends_a_start_that_waits_for_the_server(nats_up: None) -> None:
    settings = _settings(servers=f"nats://127.0.0.1:{_closed_port()}", connect_timeout="10s")
    stop = asyncio.Event()
    asyncio.get_running_loop().call_later(0.3, stop.set)
    started = time.monotonic()
    with startup.stop_startup_on(stop), pytest.raises(errors.StartAborted):
        await NatsSubscriber(settings).start()
    assert time.monotonic() - started < 2.0
