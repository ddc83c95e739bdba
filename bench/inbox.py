"""Inbox throughput: Pub/Sub → inbox rows → a no-op handler, beside a raw-SQL baseline of the
same steps measured in the same run.

    .venv/bin/python bench/inbox.py [--messages 20000] [--rounds 5] [--emulator auto] [--json]

Each run gets a fresh topic with one subscription and a fresh schema; ``--messages`` messages
(a small JSON payload and the attributes the relay sets: ``event_id``, ``event_type``,
``aggregate_type``, ``aggregate_id``) are published before the clock starts. Measured: the time
from start until every message is recorded, acknowledged and processed (messages/s), through

* the library: ``InboxReceiver`` + ``InboxWorker`` with the default configuration (2 pull loops,
  2 worker loops, claims of ``inbox.batch_size`` = 100) and a no-op plain handler;
* a hand-written baseline of the same steps on the same aiopg pool driver and the same GAPIC
  client: 2 loops of unary pull (up to 1,000) → one ``INSERT … SELECT FROM unnest(…) ON
  CONFLICT DO NOTHING`` → one acknowledge; 2 loops of claim (``FOR UPDATE SKIP LOCKED``, 100)
  → the no-op handler per row → one mark-processed statement; an empty claim sleeps 10 ms.

Both write into the same kind of table (the library's DDL, NOTIFY trigger included). The goal
(``ratio``, library ÷ baseline, median of the per-round ratios) is >= 0.8. Rounds alternate
which side runs first. "Client CPU per message" (this process's CPU time over a run, divided by
the messages) is printed beside, as information: it is less disturbed by other load.

Pub/Sub (``--emulator auto``): ``PUBSUB_EMULATOR_HOST`` when set, else Google's emulator when
installed, else the in-process emulator (which runs in this process, so its CPU counts in the
client CPU figures). PostgreSQL: as the test kit finds it.
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
from collections.abc import AsyncIterator
from typing import Any

from google.pubsub_v1.types import PubsubMessage, PullResponse
from psycopg2 import sql

from outbox_di import config, database, models, repository
from outbox_di.inbox.receiver import InboxReceiver
from outbox_di.inbox.worker import InboxWorker
from outbox_di.testing import postgres
from outbox_di.testing import pubsub as pubsub_testing

PROJECT = "outbox-bench"
CONSUMER = "bench"
EVENT_TYPE = "item.created"
GOAL = 0.8
PULL_MAX = 1000
CLAIM_BATCH = 100  # inbox.batch_size's default
LOOPS = 2  # the receiver's pull loops and inbox.workers' default
_COLUMN_ATTRIBUTES = frozenset({"event_id", "event_type", "aggregate_type", "aggregate_id"})


@contextlib.asynccontextmanager
async def filled_subscription(
    host: str, messages: int
) -> AsyncIterator[pubsub_testing.TopicWithSubscription]:
    """A fresh topic and subscription holding ``messages`` messages, published beforehand."""
    async with pubsub_testing.temporary_topic(host, PROJECT, prefix="inbox-bench") as made:
        async with pubsub_testing.async_publisher_client(host) as publisher:
            for start in range(0, messages, 1000):
                batch = [
                    PubsubMessage(
                        data=json.dumps({"n": n, "name": "bench"}).encode(),
                        attributes={
                            "event_id": str(uuid.uuid4()),
                            "event_type": EVENT_TYPE,
                            "aggregate_type": "item",
                            "aggregate_id": f"item-{n}",
                        },
                    )
                    for n in range(start, min(messages, start + 1000))
                ]
                await publisher.publish(topic=made.topic, messages=batch, timeout=30.0)
        yield made


def make_config(schema_name: str, dsn: str, host: str, subscription: str) -> config.OutboxConfig:
    return config.OutboxConfig.from_mapping(
        {
            "schema": schema_name,
            "dsn": dsn,
            "pubsub": {"project": PROJECT, "emulator_host": host},
            "publisher": {"enabled": False},
            "inbox": {"enabled": True, "consumer": CONSUMER, "subscription": subscription},
        }
    )


async def _noop(event: Any) -> None:
    return None


async def _wait(done: Any, what: str, within: float = 300.0) -> None:
    deadline = time.monotonic() + within
    while not done():
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} not reached within {within:g}s")
        await asyncio.sleep(0.002)


# -- the library --------------------------------------------------------------------------


async def library_run(dsn: str, host: str, messages: int) -> tuple[float, float]:
    async with filled_subscription(host, messages) as made:
        with postgres.migrated_schema(dsn, "bench_inbox") as name:
            cfg = make_config(name, dsn, host, made.subscription)
            async with database.open_pool(dsn, max_size=10) as pool:
                repo = repository.InboxRepository(pool, name)
                receiver = InboxReceiver(cfg, repo)
                worker = InboxWorker(cfg, repo, {EVENT_TYPE: _noop})
                started, cpu = time.perf_counter(), time.process_time()
                await receiver.start()
                await worker.start()
                try:
                    await _wait(
                        lambda: (
                            worker.stats.processed >= messages and receiver.stats.acked >= messages
                        ),
                        "library: every message processed and acknowledged",
                    )
                    elapsed = time.perf_counter() - started
                    cpu = time.process_time() - cpu
                finally:
                    await receiver.stop()
                    await worker.stop()
    return messages / elapsed, cpu / messages * 1e6


# -- the raw baseline ---------------------------------------------------------------------


class RawSql:
    """The baseline's statements, written by hand for one schema."""

    def __init__(self, schema_name: str) -> None:
        table = sql.Identifier(schema_name, "inbox_events")
        self.insert = sql.SQL(
            "INSERT INTO {} (consumer, event_id, message_id, aggregate_type, aggregate_id, "
            "event_type, payload, headers) "
            "SELECT %s, * FROM unnest(%s::text[], %s::text[], %s::text[], %s::text[], "
            "%s::text[], %s::bytea[], %s::jsonb[]) "
            "ON CONFLICT (consumer, event_id) DO NOTHING"
        ).format(table)
        self.claim = sql.SQL(
            "UPDATE {} AS e SET lock_token = %s, locked_at = now(), "
            "delivery_attempts = e.delivery_attempts + 1 "
            "WHERE (e.consumer, e.event_id) IN ("
            "  SELECT consumer, event_id FROM {} WHERE consumer = %s AND status = 'pending' "
            "  AND available_at <= now() AND (locked_at IS NULL OR locked_at < %s) "
            "  ORDER BY available_at, seq LIMIT %s FOR UPDATE SKIP LOCKED) "
            "RETURNING e.event_id, e.event_type, e.aggregate_id, e.payload, e.headers, "
            "e.delivery_attempts"
        ).format(table, table)
        self.mark = sql.SQL(
            "UPDATE {} SET status = 'processed', processed_at = now() "
            "WHERE consumer = %s AND event_id = ANY(%s) AND lock_token = %s"
        ).format(table)


async def raw_run(dsn: str, host: str, messages: int) -> tuple[float, float]:
    async with filled_subscription(host, messages) as made:
        with postgres.migrated_schema(dsn, "bench_inbox") as name:
            statements = RawSql(name)
            async with (
                database.open_pool(dsn, max_size=10) as pool,
                pubsub_testing.async_subscriber_client(host) as client,
            ):
                acked = processed = 0

                async def receive() -> None:
                    nonlocal acked
                    while acked < messages:
                        try:
                            response = await client.pull(
                                request={
                                    "subscription": made.subscription,
                                    "max_messages": PULL_MAX,
                                },
                                timeout=10.0,
                                retry=None,
                            )
                        except Exception:  # an empty pull ends in DeadlineExceeded
                            continue
                        received = list(PullResponse.pb(response).received_messages)
                        if not received:
                            continue
                        columns: list[list[Any]] = [[] for _ in range(7)]
                        for item in received:
                            message = item.message
                            attributes = message.attributes
                            rest = {
                                k: v for k, v in attributes.items() if k not in _COLUMN_ATTRIBUTES
                            }
                            columns[0].append(attributes.get("event_id") or message.message_id)
                            columns[1].append(message.message_id)
                            columns[2].append(attributes.get("aggregate_type", ""))
                            columns[3].append(attributes.get("aggregate_id", ""))
                            columns[4].append(attributes.get("event_type", "unknown"))
                            columns[5].append(message.data)
                            columns[6].append(json.dumps(rest) if rest else "{}")
                        async with pool.acquire() as conn, conn.cursor() as cursor:
                            await cursor.execute(statements.insert, (CONSUMER, *columns))
                        await client.acknowledge(
                            request={
                                "subscription": made.subscription,
                                "ack_ids": [item.ack_id for item in received],
                            },
                            timeout=10.0,
                        )
                        acked += len(received)

                async def process() -> None:
                    nonlocal processed
                    while processed < messages:
                        token = str(uuid.uuid4())
                        stale = models.utcnow() - dt.timedelta(seconds=30)
                        async with pool.acquire() as conn, conn.cursor() as cursor:
                            await cursor.execute(
                                statements.claim, (token, CONSUMER, stale, CLAIM_BATCH)
                            )
                            rows = await cursor.fetchall()
                        if not rows:
                            await asyncio.sleep(0.01)
                            continue
                        for row in rows:
                            await _noop(row)
                        async with pool.acquire() as conn, conn.cursor() as cursor:
                            await cursor.execute(
                                statements.mark, (CONSUMER, [row[0] for row in rows], token)
                            )
                        processed += len(rows)

                started, cpu = time.perf_counter(), time.process_time()
                loops = [asyncio.create_task(receive()) for _ in range(LOOPS)]
                loops += [asyncio.create_task(process()) for _ in range(LOOPS)]
                try:
                    await _wait(
                        lambda: processed >= messages and acked >= messages,
                        "baseline: every message processed and acknowledged",
                    )
                    elapsed = time.perf_counter() - started
                    cpu = time.process_time() - cpu
                finally:
                    for task in loops:
                        task.cancel()
                    await asyncio.gather(*loops, return_exceptions=True)
    return messages / elapsed, cpu / messages * 1e6


# -- main -------------------------------------------------------------------------------


@dataclasses.dataclass
class Results:
    pubsub: str
    messages: int
    library: list[float] = dataclasses.field(default_factory=list)
    raw: list[float] = dataclasses.field(default_factory=list)
    library_cpu_us: list[float] = dataclasses.field(default_factory=list)
    raw_cpu_us: list[float] = dataclasses.field(default_factory=list)

    def add(self, side: str, measured: tuple[float, float]) -> None:
        getattr(self, side).append(measured[0])
        getattr(self, f"{side}_cpu_us").append(measured[1])

    @property
    def ratios(self) -> list[float]:
        return [lib / raw for lib, raw in zip(self.library, self.raw, strict=True)]


async def run(args: argparse.Namespace, dsn: str, host: str, pubsub_name: str) -> Results:
    results = Results(pubsub_name, args.messages)
    # A warm-up of each side (JIT of the emulator, connection set-up), not counted.
    await library_run(dsn, host, min(args.messages, 2000))
    await raw_run(dsn, host, min(args.messages, 2000))
    for round_number in range(args.rounds):
        if round_number % 2 == 0:
            results.add("library", await library_run(dsn, host, args.messages))
            results.add("raw", await raw_run(dsn, host, args.messages))
        else:
            results.add("raw", await raw_run(dsn, host, args.messages))
            results.add("library", await library_run(dsn, host, args.messages))
        print(
            f"  round {round_number + 1}/{args.rounds}: library {results.library[-1]:,.0f} msg/s "
            f"({results.library_cpu_us[-1]:.0f} µs CPU/msg), raw {results.raw[-1]:,.0f} msg/s "
            f"({results.raw_cpu_us[-1]:.0f} µs CPU/msg), ratio {results.ratios[-1]:.2f}",
            file=sys.stderr,
        )
    return results


def report(results: Results) -> None:
    library = statistics.median(results.library)
    raw = statistics.median(results.raw)
    ratio = statistics.median(results.ratios)
    verdict = "" if ratio >= GOAL else "  GOAL MISSED"
    print(
        f"inbox {results.messages:,} messages from {results.pubsub}, received + processed "
        f"(no-op handler), median of {len(results.library)} rounds"
    )
    print(f"  library (InboxReceiver + InboxWorker, defaults): {library:>9,.0f} msg/s")
    print(f"  raw aiopg baseline (2 pull + 2 claim loops):     {raw:>9,.0f} msg/s")
    print(f"inbox vs raw baseline: ratio {ratio:.2f} (goal >= {GOAL}){verdict}")
    print(
        f"client CPU per message: library {statistics.median(results.library_cpu_us):.1f} µs, "
        f"raw {statistics.median(results.raw_cpu_us):.1f} µs (this process: decoding, "
        "statements, driver, handlers, event loop)"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument(
        "--emulator",
        choices=("auto", "google", "in-process"),
        default="auto",
        help="auto: PUBSUB_EMULATOR_HOST, else Google's emulator when found, else in-process",
    )
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if args.emulator == "google" and not pubsub_testing.find_google_emulator():
        parser.error("Google's Pub/Sub emulator was not found")
    with (
        postgres.postgres_server() as server,
        pubsub_testing.pubsub_server(args.emulator) as pubsub,
    ):
        print(
            f"PostgreSQL: {server.source}; Pub/Sub: {pubsub.label} at {pubsub.host}",
            file=sys.stderr,
        )
        results = asyncio.run(run(args, server.dsn, pubsub.host, pubsub.label))
    if args.json:
        print(
            json.dumps(
                {
                    **dataclasses.asdict(results),
                    "ratios": results.ratios,
                    "ratio": statistics.median(results.ratios),
                    "goal": GOAL,
                },
                indent=2,
            )
        )
    else:
        report(results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
