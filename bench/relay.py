"""Relay throughput and end-to-end lag, beside raw-SQL baselines measured in the same run.

    .venv/bin/python bench/relay.py [--rows 20000] [--rounds 3] [--rate 500] [--lag-seconds 5]
                                    [--lag-warmup 3] [--json]

Throughput: events/s from a pre-filled table of ``--rows`` rows to "acknowledged by Pub/Sub"
(the publish call returned message ids), through:

* the library: ``PublisherTask`` + ``PubSubPublisher`` with the default configuration
  (2 workers, batch 500), and with 1 worker;
* raw baselines of the same steps, written by hand: batch claim with ``FOR UPDATE SKIP LOCKED``,
  publish the batch as one request with the same Pub/Sub client, one batch mark; two loops, once
  on asyncpg (the fastest Python driver) and once on aiopg (the library's pool driver).

Lag: commit of a one-event transaction to the broker's acknowledgement, at a steady offered load
(``--rate`` events/s), printed twice: with an in-memory publisher (the library's own cost) and
through the emulator; beside it, the floor under any relay's lag on this machine, measured at
the same rate: the emulator's own one-message round trip and one PostgreSQL round trip.

Goals (the "ratio" lines): relay >= 0.8x the asyncpg baseline; 2 workers >= 1.6x one;
lag p50 <= 2 ms and p99 <= 10 ms at 500 events/s.

Pub/Sub: ``PUBSUB_EMULATOR_HOST`` when set, else Google's emulator when installed, else the
in-process emulator. PostgreSQL: as the test kit finds it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import datetime as dt
import json
import statistics
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any

import asyncpg  # type: ignore[import-untyped]
from google.pubsub_v1.types import PublishRequest

from outbox_di import config, database, models, repository, schema
from outbox_di.brokers.pubsub import connection
from outbox_di.brokers.pubsub import publisher as pubsub
from outbox_di.publishing import base
from outbox_di.publishing.task import PublisherTask
from outbox_di.testing import postgres
from outbox_di.testing import pubsub as pubsub_testing

PROJECT = "outbox-bench"
TOPIC = "relay-bench"
BATCH = 500


def make_config(schema_name: str, dsn: str, host: str, **publisher: Any) -> config.OutboxConfig:
    return config.OutboxConfig.from_mapping(
        {
            "schema": schema_name,
            "dsn": dsn,
            "pubsub": {"project": PROJECT, "emulator_host": host},
            "publisher": {"topic": TOPIC, **publisher},
        }
    )


async def ensure_topic(host: str) -> None:
    client = connection.make_emulator_client(host)
    try:
        with contextlib.suppress(Exception):
            await client.create_topic(name=f"projects/{PROJECT}/topics/{TOPIC}")
    finally:
        await client.transport.close()


async def prefill(pool: Any, repo: repository.OutboxRepository, rows: int) -> None:
    for start in range(0, rows, 1000):
        messages = [
            models.Message("item", f"item-{n}", "item.created", {"n": n, "name": "bench"})
            for n in range(start, min(rows, start + 1000))
        ]
        async with pool.acquire() as conn, conn.cursor() as cursor, cursor.begin():
            await repo.enqueue_many(cursor, messages)


CPU_US_PER_EVENT: dict[str, list[float]] = {}
"""This process's CPU time per event in each timed section, by contender (every round)."""


class Clock:
    """Times a section: wall time (``elapsed``), and this process's CPU per event in it (the
    driver, building messages, the gRPC client and its threads, the event loop), recorded in
    ``CPU_US_PER_EVENT``. CPU time is less disturbed by other processes than throughput."""

    def __init__(self, label: str, events: int) -> None:
        self.label = label
        self.events = events
        self.elapsed = 0.0

    def __enter__(self) -> Clock:
        self._wall = time.perf_counter()
        self._cpu = time.process_time()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.elapsed = time.perf_counter() - self._wall
        cpu = time.process_time() - self._cpu
        CPU_US_PER_EVENT.setdefault(self.label, []).append(cpu / self.events * 1e6)


# -- the library --------------------------------------------------------------------------


async def library_throughput(dsn: str, host: str, rows: int, workers: int) -> float:
    name = postgres.create_schema(dsn, "bench_relay")
    try:
        cfg = make_config(name, dsn, host, workers=workers)
        async with database.open_pool(dsn, max_size=4) as pool:
            await prefill(pool, repository.OutboxRepository(pool, name), rows)
        # As OutboxContainer.relay_pool opens it, its connections open before the clock starts
        # (the baselines' are too).
        async with database.open_pool(
            dsn, min_size=workers + 2, max_size=workers + 2, settings=database.RELAY_SETTINGS
        ) as pool:
            repo = repository.OutboxRepository(pool, name)
            publisher = pubsub.PubSubPublisher(cfg)
            # A running service's client is connected: the channel and the topic check too.
            await publisher.start()
            relay = PublisherTask(cfg, repo, publisher)
            with Clock(f"library, {workers} worker{'s' if workers > 1 else ''}", rows) as clock:
                await relay.start()
                while relay.stats.published < rows:  # noqa: ASYNC110 - polling is the measurement
                    await asyncio.sleep(0.002)
            await relay.stop()
            await publisher.close()
        return rows / clock.elapsed
    finally:
        postgres.drop_schema(dsn, name)


# -- raw baselines ------------------------------------------------------------------------

_PB_REQUEST: Any = pubsub._PB_REQUEST


def _raw_message(
    event_id: Any,
    event_type: str,
    aggregate_type: str,
    aggregate_id: str,
    payload: bytes,
    headers: Any,
) -> tuple[bytes, dict[str, str]]:
    """A message's data and attributes from a claimed record."""
    # The claim returns empty headers as NULL; asyncpg gives jsonb as text, psycopg2 as a dict.
    if headers is None:
        attributes: dict[str, str] = {}
    else:
        attributes = json.loads(headers) if isinstance(headers, str) else dict(headers)
    attributes.update(
        event_id=str(event_id),
        event_type=event_type,
        aggregate_type=aggregate_type,
        aggregate_id=aggregate_id,
    )
    return bytes(payload), attributes


async def warm(client: Any, topic: str) -> None:
    """Connect the client's channel before the clock starts, as the library's start() does."""
    await client.get_topic(topic=topic, timeout=10)


async def raw_publish(
    client: Any, topic: str, messages: list[tuple[bytes, dict[str, str]]]
) -> None:
    # Built in place, the fast way with protobuf's upb backend (as the library does): each
    # message added to the request rather than copied into it, attributes set key by key.
    request = _PB_REQUEST(topic=topic)
    add = request.messages.add
    for data, attributes in messages:
        target = add(data=data).attributes
        for key, value in attributes.items():
            target[key] = value
    await client.publish(request=PublishRequest.wrap(request), timeout=10, retry=None)


async def asyncpg_baseline(
    dsn: str, host: str, rows: int, loops: int, *, relay_settings: bool = False
) -> float:
    """Claim (SKIP LOCKED) + publish + batch mark, hand-written on asyncpg; with
    ``relay_settings``, on sessions set up as the library's relay pool is."""
    name = postgres.create_schema(dsn, "bench_relay")
    try:
        async with database.open_pool(dsn, max_size=4) as pool:
            await prefill(pool, repository.OutboxRepository(pool, name), rows)
        queries = schema.Queries(name)
        claim = queries["outbox_claim"].numeric_sql
        mark = queries["outbox_mark_published"].numeric_sql
        client = connection.make_emulator_client(host)
        topic = f"projects/{PROJECT}/topics/{TOPIC}"
        done = 0
        conn_pool = await asyncpg.create_pool(
            dsn,
            min_size=loops,
            max_size=loops,
            server_settings={
                "plan_cache_mode": "force_custom_plan",
                **(database.RELAY_SETTINGS if relay_settings else {}),
            },
        )
        assert conn_pool is not None
        await warm(client, topic)

        async def loop() -> None:
            nonlocal done
            while True:
                token = uuid.uuid4()
                now = models.utcnow()
                async with conn_pool.acquire() as conn:
                    records = await conn.fetch(
                        claim, now, now - dt.timedelta(seconds=30), BATCH, token
                    )
                if not records:
                    return
                messages = [_raw_message(r[0], r[4], r[2], r[3], r[5], r[6]) for r in records]
                await raw_publish(client, topic, messages)
                async with conn_pool.acquire() as conn:
                    # outbox_mark_published takes (published_at, event_ids, lock_token), the
                    # ids joined by commas
                    await conn.execute(
                        mark, models.utcnow(), ",".join([str(r[0]) for r in records]), token
                    )
                done += len(records)

        label = f"raw asyncpg{' on relay settings' if relay_settings else ''}, {loops} loop(s)"
        with Clock(label, rows) as clock:
            await asyncio.gather(*(loop() for _ in range(loops)))
        await conn_pool.close()
        await client.transport.close()
        assert done == rows, (done, rows)
        return rows / clock.elapsed
    finally:
        postgres.drop_schema(dsn, name)


async def raw_parts(name: str, host: str) -> tuple[str, str, Any, str]:
    """The hand-written aiopg loops' claim and mark statements, a connected Pub/Sub client and
    the topic."""
    queries = schema.Queries(name)
    client = connection.make_emulator_client(host)
    topic = f"projects/{PROJECT}/topics/{TOPIC}"
    await warm(client, topic)
    return queries["outbox_claim"].sql, queries["outbox_mark_published"].sql, client, topic


async def aiopg_batch(
    pool: Any,
    claim: str,
    mark: str,
    client: Any,
    topic: str,
    on_acknowledged: Callable[[list[Any]], None] | None = None,
) -> int:
    """One claim → publish → mark of the hand-written aiopg loop; how many rows it claimed.
    ``on_acknowledged`` sees the claimed records when Pub/Sub has acknowledged them."""
    token = str(uuid.uuid4())
    now = models.utcnow()
    values = {
        "now": now,
        "stale_before": now - dt.timedelta(seconds=30),
        "limit": BATCH,
        "lock_token": token,
    }
    async with pool.acquire() as conn, conn.cursor() as cursor:
        await cursor.execute(claim, values)
        records = await cursor.fetchall()
    if not records:
        return 0
    messages = [_raw_message(r[0], r[4], r[2], r[3], r[5], r[6]) for r in records]
    await raw_publish(client, topic, messages)
    if on_acknowledged is not None:
        on_acknowledged(records)
    async with pool.acquire() as conn, conn.cursor() as cursor:
        await cursor.execute(
            mark,
            {
                "event_ids": ",".join([r[0] for r in records]),
                "lock_token": token,
                "published_at": models.utcnow(),
            },
        )
    return len(records)


async def aiopg_baseline(dsn: str, host: str, rows: int, loops: int) -> float:
    """The same hand-written loop on aiopg (psycopg2), the library's pool driver."""
    name = postgres.create_schema(dsn, "bench_relay")
    try:
        async with database.open_pool(dsn, min_size=loops, max_size=loops + 2) as pool:
            await prefill(pool, repository.OutboxRepository(pool, name), rows)
            claim, mark, client, topic = await raw_parts(name, host)
            done = 0

            async def loop() -> None:
                nonlocal done
                while claimed := await aiopg_batch(pool, claim, mark, client, topic):
                    done += claimed

            with Clock(f"raw aiopg, {loops} loop(s)", rows) as clock:
                await asyncio.gather(*(loop() for _ in range(loops)))
            await client.transport.close()
        assert done == rows, (done, rows)
        return rows / clock.elapsed
    finally:
        postgres.drop_schema(dsn, name)


async def publish_only(host: str, rows: int, loops: int) -> float:
    """Messages/s of the emulator alone: ``loops`` concurrent loops, each sending ``BATCH``
    prebuilt messages per ``Publish`` one request at a time, no database (information: how far
    the broker side scales from one request in flight to two on this machine)."""
    client = connection.make_emulator_client(host)
    topic = f"projects/{PROJECT}/topics/{TOPIC}"
    await warm(client, topic)
    messages = [
        _raw_message(uuid.uuid4(), "item.created", "item", f"item-{n}", b'{"n":0}', None)
        for n in range(BATCH)
    ]
    requests = rows // BATCH

    async def loop(count: int) -> None:
        for _ in range(count):
            await raw_publish(client, topic, messages)

    try:
        started = time.perf_counter()
        await asyncio.gather(*(loop(requests // loops) for _ in range(loops)))
        elapsed = time.perf_counter() - started
    finally:
        await client.transport.close()
    return (requests // loops) * loops * BATCH / elapsed


# -- lag --------------------------------------------------------------------------------


class _Timed:
    """Wraps a publisher and notes when each event's publish call returned successfully."""

    def __init__(self, inner: base.Publisher) -> None:
        self.inner = inner
        self.acked: dict[uuid.UUID, float] = {}

    async def start(self) -> None:
        await self.inner.start()

    async def close(self) -> None:
        await self.inner.close()

    async def publish(self, events: Sequence[models.OutboxEvent]) -> Sequence[base.PublishOutcome]:
        outcomes = await self.inner.publish(events)
        now = time.perf_counter()
        for event, outcome in zip(events, outcomes, strict=True):
            if outcome.ok:
                self.acked[event.event_id] = now
        return outcomes


async def offer_load(
    pool: Any, repo: repository.OutboxRepository, rate: float, seconds: float, warmup: float
) -> tuple[dict[uuid.UUID, float], int]:
    """A writer committing one event per transaction at ``rate`` events/s, for ``warmup``
    seconds (not counted) and then ``seconds``: the commit time of each counted event, and how
    many events were written in all."""
    committed: dict[uuid.UUID, float] = {}
    warm, total = int(rate * warmup), int(rate * seconds)
    interval = 1.0 / rate
    next_at = time.perf_counter()
    for n in range(warm + total):
        message = models.Message("item", f"i{n}", "item.created", {"n": n})
        async with pool.acquire() as conn, conn.cursor() as cursor:
            async with cursor.begin():
                await repo.enqueue(cursor, message)
            if n >= warm:
                committed[message.event_id] = time.perf_counter()
        next_at += interval
        delay = next_at - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
    return committed, warm + total


async def lag(
    dsn: str,
    host: str,
    make_publisher: Callable[[config.OutboxConfig], base.Publisher],
    rate: float,
    seconds: float,
    warmup: float = 0.0,
) -> tuple[float, float, int]:
    """Lag p50, p99 (ms) and events not acknowledged, over ``seconds`` at ``rate`` after
    ``warmup`` seconds of the same load whose events are not counted (steady state: the Java
    emulator's one-message path is still being compiled in its first seconds)."""
    name = postgres.create_schema(dsn, "bench_relay")
    try:
        cfg = make_config(name, dsn, host)
        async with (
            database.open_pool(dsn, max_size=8) as pool,
            database.open_pool(dsn, max_size=4, settings=database.RELAY_SETTINGS) as relay_pool,
        ):
            repo = repository.OutboxRepository(pool, name)
            timed = _Timed(make_publisher(cfg))
            relay_repo = repository.OutboxRepository(relay_pool, name)
            async with PublisherTask(cfg, relay_repo, timed):
                await asyncio.sleep(0.3)  # workers idle, LISTEN in place
                committed, written = await offer_load(pool, repo, rate, seconds, warmup)
                deadline = time.perf_counter() + 10
                while len(timed.acked) < written and time.perf_counter() < deadline:  # noqa: ASYNC110
                    await asyncio.sleep(0.01)
        lags = [(timed.acked[i] - t) * 1000.0 for i, t in committed.items() if i in timed.acked]
        p50, p99 = _percentiles(lags)
        return p50, p99, len(committed) - len(lags)
    finally:
        postgres.drop_schema(dsn, name)


def _percentiles(lags: list[float]) -> tuple[float, float]:
    lags.sort()
    return statistics.median(lags), lags[min(len(lags) - 1, int(len(lags) * 0.99))]


async def raw_lag(
    dsn: str, host: str, rate: float, seconds: float, warmup: float
) -> tuple[float, float, int]:
    """``lag()`` for a hand-written relay of the same steps: one loop on aiopg with the relay's
    session settings, woken by its own LISTEN connection, the library's claim and mark
    statements, the same Pub/Sub client (information: the same path without the library)."""
    name = postgres.create_schema(dsn, "bench_relay")
    claim, mark, client, topic = await raw_parts(name, host)
    acked: dict[str, float] = {}  # by the id's text, as psycopg2 returns it
    committed: dict[uuid.UUID, float] = {}
    try:
        async with (
            database.open_pool(dsn, max_size=8) as pool,
            database.open_pool(
                dsn, min_size=3, max_size=3, settings=database.RELAY_SETTINGS
            ) as relay_pool,
        ):
            repo = repository.OutboxRepository(pool, name)
            wake = asyncio.Event()

            async def listen() -> None:
                async with relay_pool.acquire() as conn:
                    async with conn.cursor() as cursor:
                        await cursor.execute(schema.Queries(name)["listen_outbox"].sql)
                    while True:
                        await conn.notifies.get()
                        wake.set()

            def acknowledged(records: list[Any]) -> None:
                done = time.perf_counter()
                for record in records:
                    acked[record[0]] = done

            async def relay() -> None:
                while True:
                    await wake.wait()
                    wake.clear()
                    while await aiopg_batch(relay_pool, claim, mark, client, topic, acknowledged):
                        pass

            tasks = [asyncio.create_task(listen()), asyncio.create_task(relay())]
            try:
                await asyncio.sleep(0.3)  # LISTEN in place
                committed, written = await offer_load(pool, repo, rate, seconds, warmup)
                deadline = time.perf_counter() + 10
                while len(acked) < written and time.perf_counter() < deadline:  # noqa: ASYNC110
                    await asyncio.sleep(0.01)
            finally:
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
    finally:
        await client.transport.close()
        postgres.drop_schema(dsn, name)
    lags = [(acked[str(i)] - t) * 1000.0 for i, t in committed.items() if str(i) in acked]
    p50, p99 = _percentiles(lags)
    return p50, p99, len(committed) - len(lags)


async def lag_floor(dsn: str, host: str, rate: float, seconds: float) -> tuple[float, float, float]:
    """What no relay can go under on this machine, measured at the same offered rate: the
    emulator's own round trip for a one-message ``Publish`` (p50, p99) and one PostgreSQL round
    trip on the relay's driver (p50 of ``SELECT 1``). A relay's lag adds at least a NOTIFY and a
    claim to the first."""
    client = connection.make_emulator_client(host)
    topic = f"projects/{PROJECT}/topics/{TOPIC}"
    await warm(client, topic)
    message = _raw_message(uuid.uuid4(), "item.created", "item", "i0", b'{"n":0}', None)
    publishes: list[float] = []
    round_trips: list[float] = []
    try:
        async with (
            database.open_pool(dsn, min_size=1, max_size=1) as pool,
            pool.acquire() as conn,
            conn.cursor() as cursor,
        ):
            interval = 1.0 / rate
            next_at = time.perf_counter()
            for _ in range(int(rate * seconds)):
                started = time.perf_counter()
                await raw_publish(client, topic, [message])
                publishes.append((time.perf_counter() - started) * 1000.0)
                started = time.perf_counter()
                await cursor.execute("SELECT 1")
                await cursor.fetchall()
                round_trips.append((time.perf_counter() - started) * 1000.0)
                next_at += interval
                delay = next_at - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
    finally:
        await client.transport.close()
    return (*_percentiles(publishes), statistics.median(round_trips))


# -- main -------------------------------------------------------------------------------


@dataclasses.dataclass
class Results:
    pubsub: str
    rows: int
    library_2w: list[float] = dataclasses.field(default_factory=list)
    library_1w: list[float] = dataclasses.field(default_factory=list)
    asyncpg_raw: list[float] = dataclasses.field(default_factory=list)
    aiopg_raw: list[float] = dataclasses.field(default_factory=list)
    asyncpg_relay_settings: list[float] = dataclasses.field(default_factory=list)
    asyncpg_one_loop: list[float] = dataclasses.field(default_factory=list)
    asyncpg_relay_settings_one_loop: list[float] = dataclasses.field(default_factory=list)
    publish_only_1: list[float] = dataclasses.field(default_factory=list)
    publish_only_2: list[float] = dataclasses.field(default_factory=list)
    lag_memory: tuple[float, float, int] = (0.0, 0.0, 0)
    lag_emulator: tuple[float, float, int] = (0.0, 0.0, 0)
    lag_floor: tuple[float, float, float] = (0.0, 0.0, 0.0)
    lag_raw: tuple[float, float, int] = (0.0, 0.0, 0)
    cpu_us_per_event: dict[str, list[float]] = dataclasses.field(default_factory=dict)


def _goal(ratio: float, goal: float) -> str:
    return f"ratio {ratio:.2f} (goal >= {goal})" + ("" if ratio >= goal else "  GOAL MISSED")


async def run(args: argparse.Namespace, dsn: str, host: str, pubsub_name: str) -> Results:
    await ensure_topic(host)
    results = Results(pubsub_name, args.rows)
    for round_number in range(args.rounds):
        results.library_2w.append(await library_throughput(dsn, host, args.rows, workers=2))
        results.asyncpg_raw.append(await asyncpg_baseline(dsn, host, args.rows, loops=2))
        results.library_1w.append(await library_throughput(dsn, host, args.rows, workers=1))
        results.aiopg_raw.append(await aiopg_baseline(dsn, host, args.rows, loops=2))
        results.asyncpg_relay_settings.append(
            await asyncpg_baseline(dsn, host, args.rows, loops=2, relay_settings=True)
        )
        results.asyncpg_one_loop.append(await asyncpg_baseline(dsn, host, args.rows, loops=1))
        results.asyncpg_relay_settings_one_loop.append(
            await asyncpg_baseline(dsn, host, args.rows, loops=1, relay_settings=True)
        )
        results.publish_only_1.append(await publish_only(host, args.rows, loops=1))
        results.publish_only_2.append(await publish_only(host, args.rows, loops=2))
        print(
            f"  round {round_number + 1}/{args.rounds}: library {results.library_2w[-1]:,.0f}/s, "
            f"asyncpg {results.asyncpg_raw[-1]:,.0f}/s, 1 worker {results.library_1w[-1]:,.0f}/s, "
            f"aiopg {results.aiopg_raw[-1]:,.0f}/s",
            file=sys.stderr,
        )
    in_memory = lambda cfg: base.InMemoryPublisher()  # noqa: E731
    results.lag_memory = await lag(
        dsn, host, in_memory, args.rate, args.lag_seconds, args.lag_warmup
    )
    results.lag_emulator = await lag(
        dsn, host, pubsub.PubSubPublisher, args.rate, args.lag_seconds, args.lag_warmup
    )
    results.lag_raw = await raw_lag(dsn, host, args.rate, args.lag_seconds, args.lag_warmup)
    results.cpu_us_per_event = CPU_US_PER_EVENT
    results.lag_floor = await lag_floor(dsn, host, args.rate, args.lag_seconds)
    return results


def _paired(numerators: list[float], denominators: list[float]) -> float:
    return statistics.median(a / b for a, b in zip(numerators, denominators, strict=True))


def report(results: Results, rate: float) -> None:
    library = statistics.median(results.library_2w)
    one = statistics.median(results.library_1w)
    raw_asyncpg = statistics.median(results.asyncpg_raw)
    raw_aiopg = statistics.median(results.aiopg_raw)
    rounds = len(results.library_2w)
    print(f"relay {results.rows:,} rows to {results.pubsub}, median of {rounds} rounds")
    print(f"  library (default config, 2 workers): {library:>9,.0f} events/s")
    print(f"  raw asyncpg baseline (2 loops):      {raw_asyncpg:>9,.0f} events/s")
    print(f"  raw aiopg baseline (2 loops):        {raw_aiopg:>9,.0f} events/s")
    print(f"  library, 1 worker:                   {one:>9,.0f} events/s")
    print("client CPU per event (this process, median; information: where the library's cost is)")
    for label, values in results.cpu_us_per_event.items():
        print(f"  {label + ':':<46}{statistics.median(values):>7.1f} µs")
    # Goal ratios: the median of the per-round ratios. The two runs of a pair are close in time,
    # so a slow spell of the machine weighs on both (the medians of each column are above).
    vs_asyncpg = _paired(results.library_2w, results.asyncpg_raw)
    print(f"relay vs asyncpg baseline: {_goal(vs_asyncpg, 0.8)}")
    print(f"relay vs aiopg baseline: {library / raw_aiopg:.2f}x (information)")
    tuned = statistics.median(results.asyncpg_relay_settings)
    print(
        f"relay vs asyncpg baseline on the relay's session settings: {library / tuned:.2f}x "
        f"({tuned:,.0f} events/s; information)"
    )
    print(f"2 workers vs 1: {_goal(_paired(results.library_2w, results.library_1w), 1.6)}")
    raw_one = statistics.median(results.asyncpg_one_loop)
    print(
        f"raw asyncpg 2 loops vs 1: {raw_asyncpg / raw_one:.2f}x ({raw_one:,.0f} events/s with "
        "one loop; information: how far two loops scale on this machine at all)"
    )
    tuned_one = statistics.median(results.asyncpg_relay_settings_one_loop)
    print(
        f"raw asyncpg on the relay's session settings, 2 loops vs 1: {tuned / tuned_one:.2f}x "
        f"({tuned_one:,.0f} events/s with one loop; information: the same loops with less "
        "waiting on WAL flushes leave less idle time for a second loop to fill)"
    )
    broker_one = statistics.median(results.publish_only_1)
    broker_two = statistics.median(results.publish_only_2)
    print(
        f"{results.pubsub} alone, {BATCH}-message Publish, 2 in flight vs 1: "
        f"{broker_two / broker_one:.2f}x ({broker_one:,.0f} vs {broker_two:,.0f} messages/s, no "
        "database; information: the broker side's own scaling)"
    )
    for label, (p50, p99, lost) in (
        ("in-memory publisher", results.lag_memory),
        (results.pubsub, results.lag_emulator),
    ):
        verdict = "" if p50 <= 2 and p99 <= 10 else "  GOAL MISSED"
        print(
            f"lag at {rate:.0f} events/s, {label}: p50 {p50:.2f} ms, p99 {p99:.2f} ms "
            f"(goal p50 <= 2, p99 <= 10){verdict}" + (f", {lost} not acked" if lost else "")
        )
    raw_p50, raw_p99, raw_lost = results.lag_raw
    print(
        f"lag at {rate:.0f} events/s, hand-written aiopg relay through {results.pubsub}: "
        f"p50 {raw_p50:.2f} ms, p99 {raw_p99:.2f} ms (information: one loop, its own LISTEN, "
        "the same statements, settings and client, without the library)"
        + (f", {raw_lost} not acked" if raw_lost else "")
    )
    publish_p50, publish_p99, round_trip = results.lag_floor
    print(
        f"lag floor at {rate:.0f}/s on this machine: {results.pubsub} alone, one-message Publish "
        f"p50 {publish_p50:.2f} ms, p99 {publish_p99:.2f} ms; one PostgreSQL round trip (aiopg, "
        f"SELECT 1) p50 {round_trip:.2f} ms (information: the relay's lag adds a NOTIFY and a "
        "claim to the publish)"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--rate", type=float, default=500.0)
    parser.add_argument("--lag-seconds", type=float, default=5.0)
    parser.add_argument("--lag-warmup", type=float, default=3.0)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    with postgres.postgres_server() as server, pubsub_testing.pubsub_server() as pubsub:
        print(
            f"PostgreSQL: {server.source}; Pub/Sub: {pubsub.label} at {pubsub.host}",
            file=sys.stderr,
        )
        results = asyncio.run(run(args, server.dsn, pubsub.host, pubsub.label))
    if args.json:
        print(json.dumps(dataclasses.asdict(results), indent=2))
    else:
        report(results, args.rate)
    return 0


if __name__ == "__main__":
    sys.exit(main())
