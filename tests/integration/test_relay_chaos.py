"""The relay under chaos: concurrent writers, a worker killed mid-batch, failing publishes.

Both tests run on both emulators (Google's and the in-process one): measured here, Google's
emulator takes the 10,000-event run in ~5 s; the ordered run is smaller on Google's emulator
(600 events over 20 keys), whose ordered delivery slows down badly when the machine is busy.
The publisher, the gRPC client and the relay are the real ones; the failures come from a
:class:`FaultyPublisher` around the real publisher (seeded RNG).

Delivery is at least once, so duplicates are expected only where a lease explains them: events of
the killed worker's claim, events whose publish call was cancelled in flight (a timeout), and
events whose mark lost its lease (``stats.lease_lost``). They are counted, printed (``-s``) and
bounded by that. A broker redelivery (same message id) is not a duplicate publish and is counted
apart.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
import uuid
from collections.abc import Sequence
from typing import Any

import pytest
from google.pubsub_v1.types import ReceivedMessage

from outbox_di import config, database, models, repository
from outbox_di.brokers.pubsub import PubSubPublisher
from outbox_di.publishing.task import PublisherTask
from outbox_di.testing import pubsub as pubsub_testing
from outbox_di.testing.publisher_suite import FaultyPublisher, pull_until, wait_until
from outbox_di.testing.pubsub import EmulatorEndpoint

pytestmark = pytest.mark.integration

PROJECT = "outbox-di-chaos"
FAILURE_RATE = 0.2


def _config(schema: str, dsn: str, host: str, topic: str, **publisher: Any) -> config.OutboxConfig:
    settings: dict[str, Any] = {
        "topic": topic,
        "workers": 3,
        "batch_size": 250,
        "tick_interval": "50ms",
        # Leases outlive a publish on a busy machine: a lease lost to slowness is a duplicate
        # the test cannot tell from a bug. The killed worker's rows wait these 3 s.
        "lock_ttl": "3s",
        "publish_timeout": "2s",
        "shutdown_timeout": "2s",
        "max_attempts": 100,
        "backoff": {"initial": "10ms", "max": "100ms", "jitter": 0.2},
    }
    settings.update(publisher)
    return config.OutboxConfig.from_mapping(
        {
            "schema": schema,
            "dsn": dsn,
            "pubsub": {"project": PROJECT, "emulator_host": host},
            "publisher": settings,
        }
    )


async def _writer(
    pool: Any,
    repo: repository.OutboxRepository,
    batches: Sequence[Sequence[models.Message]],
    written: list[uuid.UUID],
) -> None:
    for batch in batches:
        async with pool.acquire() as conn, conn.cursor() as cursor, cursor.begin():
            ids = await repo.enqueue_many(cursor, batch)
        written.extend(ids)
        await asyncio.sleep(0)


async def _kill_one_worker_mid_publish(
    task: PublisherTask, faulty: FaultyPublisher, after: int
) -> set[uuid.UUID]:
    """Once ``after`` events are published, cancel a worker whose claimed batch is inside the
    publisher right now, without cleanup (its lease stays); returns the ids it held."""

    async def victim_found() -> bool:
        return task.stats.published >= after and any(
            not faulty.in_flight.isdisjoint(claim.event_ids) for claim in task._claims.values()
        )

    await wait_until(victim_found, 30.0, "a worker inside a publish call")
    number = next(
        n for n, claim in task._claims.items() if not faulty.in_flight.isdisjoint(claim.event_ids)
    )
    # No cleanup: forget the claim so stop() cannot release it either. A SIGKILL, in effect.
    claim = task._claims.pop(number)
    victim = task._workers[number]
    victim.cancel()
    await asyncio.gather(victim, return_exceptions=True)
    return set(claim.event_ids)


def _first_ids(
    received: Sequence[ReceivedMessage],
) -> tuple[dict[str, set[str]], int]:
    """Message ids per event id, and how many deliveries were redeliveries of a message id."""
    by_event: dict[str, set[str]] = {}
    seen: set[str] = set()
    redelivered = 0
    for item in received:
        message = item.message
        if message.message_id in seen:
            redelivered += 1
            continue
        seen.add(message.message_id)
        by_event.setdefault(message.attributes["event_id"], set()).add(message.message_id)
    return by_event, redelivered


def _report_duplicates(
    label: str,
    by_event: dict[str, set[str]],
    redelivered: int,
    killed: set[uuid.UUID],
    task: PublisherTask,
    faulty: FaultyPublisher,
) -> int:
    """Print the duplicates and check that leases explain them; returns how many there were."""
    duplicates = {event_id: ids for event_id, ids in by_event.items() if len(ids) > 1}
    extra = sum(len(ids) - 1 for ids in duplicates.values())
    killed_text = {str(event_id) for event_id in killed}
    interrupted_text = {str(event_id) for event_id in faulty.interrupted}
    unexplained = [
        event_id
        for event_id in duplicates
        if event_id not in killed_text and event_id not in interrupted_text
    ]
    print(
        f"\n[{label}] events {len(by_event)}, duplicate publishes {extra} "
        f"(events published more than once: {len(duplicates)}; in the killed worker's claim: "
        f"{len(killed)}; publish calls cancelled in flight covered {len(faulty.interrupted)} "
        f"events; lease lost at mark: {task.stats.lease_lost}); redeliveries {redelivered}; "
        f"publish calls {faulty.calls}, failed on purpose {faulty.failed_calls}; "
        f"stats {task.stats}"
    )
    for event_id, ids in sorted(duplicates.items()):
        print(f"[{label}]   duplicate {event_id}: message ids {sorted(ids, key=int)}")
    assert len(unexplained) <= task.stats.lease_lost, (
        f"{len(unexplained)} duplicates no lease explains: {unexplained[:10]}"
    )
    return extra


@pytest.mark.timeout(300)  # every wait inside is bounded; this only stops a wedged run
async def test_ten_thousand_events_survive_a_killed_worker_and_failing_publishes(
    pubsub_emulator: EmulatorEndpoint,
    outbox_pool: Any,
    outbox_repository: repository.OutboxRepository,
    outbox_dsn: str,
) -> None:
    """10,000 events from 8 concurrent writers (transactions of 1-50), 3 workers with a 1 s
    lease, one worker killed mid-publish, 20% of publish calls failing: every event reaches the
    topic."""
    host = pubsub_emulator.host
    rng = random.Random(20240611)
    writers, total = 8, 10_000
    plans: list[list[list[models.Message]]] = [[] for _ in range(writers)]
    for writer in range(writers):
        quota = total // writers
        n = 0
        while n < quota:
            size = min(rng.randint(1, 50), quota - n)
            plans[writer].append(
                [
                    models.Message("chaos", f"w{writer}-{n + k}", "chaos.event", {"n": n + k})
                    for k in range(size)
                ]
            )
            n += size
    async with pubsub_testing.temporary_topic(host, PROJECT, prefix="chaos", ordered=False) as made:
        name, subscription = made.name, made.subscription
        settings = _config(outbox_repository.schema, outbox_dsn, host, name)
        faulty = FaultyPublisher(
            PubSubPublisher(settings), failure_rate=FAILURE_RATE, rng=random.Random(7)
        )
        written: list[uuid.UUID] = []
        started = time.monotonic()
        async with database.open_pool(outbox_dsn, min_size=1, max_size=6) as relay_pool:
            relay_repo = repository.OutboxRepository(relay_pool, outbox_repository.schema)
            task = PublisherTask(settings, relay_repo, faulty, rng=random.Random(3))
            await task.start()
            try:
                writing = asyncio.gather(
                    *(_writer(outbox_pool, outbox_repository, plan, written) for plan in plans)
                )
                killed = await _kill_one_worker_mid_publish(task, faulty, after=1500)
                await writing
                assert len(written) == total

                async def drained() -> bool:
                    return await relay_repo.count_pending() == 0

                await wait_until(drained, 60.0, "the outbox drained")
            finally:
                await task.stop()
                await faulty.close()
        relayed = time.monotonic() - started
        async with pubsub_testing.async_subscriber_client(host) as subscriber:
            wanted = {str(event_id) for event_id in written}
            received = await pull_until(
                subscriber,
                subscription,
                lambda got: len({m.message.attributes["event_id"] for m in got}) >= total,
                30.0,
            )
            # Late extras (a cancelled request the emulator still finished) come in this pull.
            received += await pull_until(subscriber, subscription, bool, 1.5)
        by_event, redelivered = _first_ids(received)
    assert not wanted - set(by_event), f"lost: {len(wanted - set(by_event))} events"
    assert set(by_event) == wanted
    assert task.stats.dead == 0
    assert faulty.failed_calls > 0 and killed
    extra = _report_duplicates(
        f"10k/{pubsub_emulator.kind}", by_event, redelivered, killed, task, faulty
    )
    print(
        f"[10k/{pubsub_emulator.kind}] relayed in {relayed:.1f}s (writers included); "
        f"killed claim {len(killed)} events; {extra} duplicate publishes"
    )


@pytest.mark.timeout(300)  # every wait inside is bounded; this only stops a wedged run
async def test_ordering_holds_per_key_under_chaos(
    pubsub_emulator: EmulatorEndpoint,
    outbox_pool: Any,
    outbox_schema: str,
    outbox_dsn: str,
) -> None:
    """Per-key ordering with 3 workers, a killed worker and 20% failing publishes: for every
    key, the first appearance of its events on the topic follows enqueue (seq) order, checked
    both by message id (the broker's publish order) and by delivery on an ordered subscription.
    2,000 events over 50 keys (600 over 20 on Google's emulator)."""
    host = pubsub_emulator.host
    # Google's emulator delivers an ordered subscription slowly, and more so on a
    # loaded machine: it gets a smaller run; the in-process one takes the full 2,000 events.
    in_process = pubsub_emulator.emulator is not None
    total, key_count, writers = (2000, 50, 5) if in_process else (600, 20, 4)
    per_key = total // key_count
    rng = random.Random(99)
    # Each key belongs to one writer, so a key's commit order is its enqueue order.
    keys = [f"key-{k:02d}" for k in range(key_count)]
    plans: list[list[list[models.Message]]] = [[] for _ in range(writers)]
    for writer in range(writers):
        mine = keys[writer::writers]
        stream = [(key, n) for n in range(per_key) for key in mine]
        position = 0
        while position < len(stream):
            size = rng.randint(1, 50)
            plans[writer].append(
                [
                    models.Message("account", key, "account.changed", {"key": key, "n": n})
                    for key, n in stream[position : position + size]
                ]
            )
            position += size
    async with pubsub_testing.temporary_topic(host, PROJECT, prefix="chaos", ordered=True) as made:
        name, subscription = made.name, made.subscription
        repo = repository.OutboxRepository(outbox_pool, outbox_schema, ordering=True)
        settings = _config(outbox_schema, outbox_dsn, host, name, ordering=True)
        faulty = FaultyPublisher(
            PubSubPublisher(settings), failure_rate=FAILURE_RATE, rng=random.Random(11)
        )
        written: list[uuid.UUID] = []
        async with database.open_pool(outbox_dsn, min_size=1, max_size=6) as relay_pool:
            relay_repo = repository.OutboxRepository(relay_pool, outbox_schema, ordering=True)
            task = PublisherTask(settings, relay_repo, faulty, rng=random.Random(5))
            await task.start()
            try:
                writing = asyncio.gather(
                    *(_writer(outbox_pool, repo, plan, written) for plan in plans)
                )
                killed = await _kill_one_worker_mid_publish(task, faulty, after=total // 10)
                await writing

                async def drained() -> bool:
                    return await relay_repo.count_pending() == 0

                await wait_until(drained, 60.0, "the outbox drained")
            finally:
                await task.stop()
                await faulty.close()
        async with pubsub_testing.async_subscriber_client(host) as subscriber:
            received = await pull_until(
                subscriber,
                subscription,
                lambda got: len({m.message.attributes["event_id"] for m in got}) >= total,
                40.0,
            )
            received += await pull_until(subscriber, subscription, bool, 1.5)
        by_event, redelivered = _first_ids(received)
    assert set(by_event) == {str(event_id) for event_id in written}
    assert task.stats.dead == 0
    _report_duplicates(
        f"ordering/{pubsub_emulator.kind}", by_event, redelivered, killed, task, faulty
    )

    # By the broker's publish order: the smallest message id of each event.
    first_id: dict[tuple[str, int], int] = {}
    # By delivery on the ordered subscription: the first time each event showed up.
    delivered: dict[str, list[int]] = {}
    seen: set[str] = set()
    for item in received:
        message = item.message
        body = json.loads(message.data)
        assert message.ordering_key == body["key"]
        slot = (body["key"], int(body["n"]))
        message_id = int(message.message_id)
        first_id[slot] = min(first_id.get(slot, message_id), message_id)
        event_id = message.attributes["event_id"]
        if event_id not in seen:
            seen.add(event_id)
            delivered.setdefault(body["key"], []).append(int(body["n"]))
    expected = list(range(per_key))
    published: dict[str, list[int]] = {}
    for (key, n), _ in sorted(first_id.items(), key=lambda item: item[1]):
        published.setdefault(key, []).append(n)
    out_of_order = []
    for key in keys:
        by_publish = published.get(key)
        if by_publish != expected or delivered.get(key) != expected:
            out_of_order.append((key, by_publish, delivered.get(key)))
    assert not out_of_order, f"published out of order: {out_of_order[:3]}"
