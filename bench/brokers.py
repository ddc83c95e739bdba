"""Relay throughput on each broker, beside the broker's own client publishing the same messages.

    .venv/bin/python bench/brokers.py [--broker rabbitmq,nats,redis] [--rows 20000] [--rounds 3]

For each broker that answers here (its default local address, or ``OUTBOX_RABBITMQ__URL``,
``OUTBOX_NATS__SERVERS``, ``OUTBOX_REDIS__URL``):

* the library: ``PublisherTask`` with the broker's publisher and the default configuration
  (2 workers, batch 500), from a pre-filled table of ``--rows`` rows to "confirmed by the broker"
  (the whole relay: claim, publish, mark);
* publish only: the same events through the same publisher with no database, in two loops
  (the relay's default workers) of 500-event batches, each confirmed before that loop's next.
  It is what the broker, its client and the adapter take on this machine: the ceiling of the
  relay through them, so "library / publish only" is the share the outbox's claim and mark
  leave of it.

The comparison is printed as "library / publish only" (no goal: the broker sets the ceiling).
Each figure is the median of ``--rounds`` rounds, with the spread.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
from typing import Any

from outbox_di import brokers, config, database, models, repository
from outbox_di.publishing.task import PublisherTask
from outbox_di.testing import brokers as brokers_testing
from outbox_di.testing import postgres

BATCH = 500
PAYLOAD = b'{"n": 1, "name": "bench"}'


def settings_for(broker: str, dsn: str, schema_name: str, topic: str) -> config.OutboxConfig:
    section: dict[str, str] = {}
    for key in ("url", "servers"):
        value = os.environ.get(f"OUTBOX_{broker.upper()}__{key.upper()}")
        if value:
            section[key] = value
    mapping: dict[str, Any] = {
        "schema": schema_name,
        "dsn": dsn,
        "broker": broker,
        "publisher": {"topic": topic},
    }
    if section:
        mapping[broker] = section
    return config.OutboxConfig.from_mapping(mapping)


async def prefill(pool: Any, repo: repository.OutboxRepository, rows: int) -> None:
    for start in range(0, rows, 1000):
        messages = [
            models.Message("item", f"item-{n}", "item.created", PAYLOAD)
            for n in range(start, min(rows, start + 1000))
        ]
        async with pool.acquire() as conn, conn.cursor() as cursor, cursor.begin():
            await repo.enqueue_many(cursor, messages)


async def library(broker: str, dsn: str, rows: int) -> float:
    """Events/s of the relay, through ``broker``."""
    name = postgres.create_schema(dsn, "bench_brokers")
    try:
        probe = settings_for(broker, dsn, name, "bench")
        async with brokers_testing.temporary_channel(probe, "bench") as channel:
            cfg = settings_for(broker, dsn, name, channel.topic)
            async with database.open_pool(dsn, max_size=4) as pool:
                await prefill(pool, repository.OutboxRepository(pool, name), rows)
            workers = cfg.publisher.workers
            async with database.open_pool(
                dsn, min_size=workers + 2, max_size=workers + 2, settings=database.RELAY_SETTINGS
            ) as pool:
                publisher = brokers.make_publisher(cfg)
                await publisher.start()
                relay = PublisherTask(cfg, repository.OutboxRepository(pool, name), publisher)
                started = time.perf_counter()
                await relay.start()
                while relay.stats.published < rows:  # noqa: ASYNC110 - polling is the measurement
                    await asyncio.sleep(0.002)
                elapsed = time.perf_counter() - started
                await relay.stop()
                await publisher.close()
                assert relay.stats.published == rows, relay.stats
        return rows / elapsed
    finally:
        postgres.drop_schema(dsn, name)


async def publish_only(broker: str, dsn: str, rows: int, loops: int = 2) -> float:
    """Events/s of the broker's publisher alone (no database): ``loops`` loops (the relay's
    default workers) sending 500-event batches, each batch confirmed before that loop's next."""
    probe = settings_for(broker, dsn, "bench", "bench")
    async with brokers_testing.temporary_channel(probe, "bench") as channel:
        cfg = settings_for(broker, dsn, "bench", channel.topic)
        events = [
            brokers_testing.outbox_event(
                PAYLOAD, event_type="item.created", aggregate_type="item", aggregate_id=f"i-{n}"
            )
            for n in range(rows)
        ]
        batches = iter([events[start : start + BATCH] for start in range(0, rows, BATCH)])
        publisher = brokers.make_publisher(cfg)
        await publisher.start()

        async def loop() -> None:
            for batch in batches:
                outcomes = await publisher.publish(batch)
                assert all(outcome.ok for outcome in outcomes), outcomes[0]

        started = time.perf_counter()
        await asyncio.gather(*(loop() for _ in range(loops)))
        elapsed = time.perf_counter() - started
        await publisher.close()
        return rows / elapsed


def _spread(values: list[float]) -> str:
    return f"{statistics.median(values):,.0f}/s ({min(values):,.0f}-{max(values):,.0f})"


async def run(args: argparse.Namespace, dsn: str) -> int:
    for broker in args.broker.split(","):
        probe = settings_for(broker, dsn, "bench", "bench")
        reason = brokers_testing.unavailable(probe)
        if reason:
            print(f"{broker}: skipped ({reason})")
            continue
        relayed: list[float] = []
        raw: list[float] = []
        for _ in range(args.rounds):
            raw.append(await publish_only(broker, dsn, args.rows))
            relayed.append(await library(broker, dsn, args.rows))
        ratios = [r / p for r, p in zip(relayed, raw, strict=True)]
        print(f"{broker}:")
        print(f"  publish only (no database)          {_spread(raw)}")
        print(f"  library (claim, publish, mark)      {_spread(relayed)}")
        print(
            f"  library / publish only              {statistics.median(ratios):.2f} "
            f"({min(ratios):.2f}-{max(ratios):.2f})"
        )
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--broker", default="rabbitmq,nats,redis")
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    for broker in args.broker.split(","):
        if broker not in config.BROKERS or broker == "pubsub":
            parser.error(
                f"--broker: one of rabbitmq, nats, redis, got {broker!r} (Pub/Sub: relay.py)"
            )
    with postgres.postgres_server() as server:
        return asyncio.run(run(args, server.dsn))


if __name__ == "__main__":
    sys.exit(main())
