"""One relay for many schemas: a quiet schema beside a hot backlog, and one process for ten
schemas against ten processes, beside a hand-written baseline measured in the same run.

    .venv/bin/python bench/fleet.py [--rounds 3] [--backlog 200000] [--quiet-rate 50]
                                    [--lag-seconds 4] [--lag-warmup 2] [--schemas 10]
                                    [--rows 10000] [--json]

Fairness (in this process, a ``FleetRelay`` with the default configuration, 2 loops, through
the Pub/Sub publisher): a writer commits one event per transaction into a quiet schema at
``--quiet-rate`` events/s; each event's lag is its commit to the broker's acknowledgement.
Measured twice per round: with the other schema empty ("alone"), and while the other schema
holds ``--backlog`` due rows that the same relay works through ("beside"). Goal: p99 beside
at most 2x p99 alone (printed as ``ratio``, lower is better).

Ten schemas (``--schemas`` of ``--rows`` due rows each, committed in one transaction so every
relay sees them at once), until every row is published:

* ``one process``: one ``outbox-di worker --schema s0,...,s9``;
* ``ten processes``: ten ``outbox-di worker --schema sN``, one per schema (what each service
  running its own relay looks like);
* ``raw asyncpg``: the baseline, in this process: two hand-written loops taking the schemas in
  turn, each a claim (``FOR UPDATE SKIP LOCKED``), one ``Publish`` request, one batch mark.

Printed: events/s (commit to the last mark), the workers' resident memory (sum of VmRSS, peak
while relaying) and their database connections.

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
import os
import signal
import statistics
import sys
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import asyncpg  # type: ignore[import-untyped]
from psycopg2 import sql

sys.path.insert(0, str(Path(__file__).resolve().parent))
import relay as relay_bench

from outbox_di import config, database, fleet, models, repository, schema, worker
from outbox_di.brokers.pubsub import connection
from outbox_di.brokers.pubsub import publisher as pubsub
from outbox_di.publishing import base
from outbox_di.testing import postgres
from outbox_di.testing import pubsub as pubsub_testing

PROJECT = relay_bench.PROJECT
TOPIC = "fleet-bench-{schema}"  # each service its own topic, as in a fleet
BATCH = relay_bench.BATCH


async def make_topics(host: str, names: Sequence[str]) -> None:
    client = connection.make_emulator_client(host)
    try:
        for name in names:
            with contextlib.suppress(Exception):
                topic = TOPIC.format(schema=name)
                await client.create_topic(name=f"projects/{PROJECT}/topics/{topic}")
    finally:
        await client.transport.close()


def fill(dsn: str, names: Sequence[str], rows: int) -> None:
    """``rows`` due events in each schema of ``names``, committed in one transaction."""
    with database.connect(dsn) as conn, conn, conn.cursor() as cursor:
        for name in names:
            cursor.execute(
                sql.SQL(
                    "INSERT INTO {}.outbox_events "
                    "(event_id, aggregate_type, aggregate_id, event_type, payload) "
                    "SELECT gen_random_uuid(), 'item', 'item-' || n, 'item.created', "
                    '\'{{"n": 1, "name": "bench"}}\'::bytea FROM generate_series(1, %s) AS n'
                ).format(sql.Identifier(name)),
                (rows,),
            )


def pending(dsn: str, names: Sequence[str]) -> int:
    with database.connect(dsn) as conn, conn.cursor() as cursor:
        total = 0
        for name in names:
            cursor.execute(schema.Queries(name)["outbox_count_pending"].sql)
            total += int(cursor.fetchone()[0])
        return total


# -- fairness ---------------------------------------------------------------------------------


class Timed:
    """A publisher noting, per event, when the broker acknowledged it; and how many events of
    its schema it sent."""

    def __init__(self, inner: base.Publisher, acked: dict[uuid.UUID, float] | None) -> None:
        self.inner = inner
        self.acked = acked
        self.sent = 0
        self.calls: list[float] = []  # ms per publish call (kept with the acknowledgements)

    async def start(self) -> None:
        await self.inner.start()

    async def close(self) -> None:
        await self.inner.close()

    async def publish(self, events: Sequence[models.OutboxEvent]) -> Sequence[base.PublishOutcome]:
        started = time.perf_counter()
        outcomes = await self.inner.publish(events)
        now = time.perf_counter()
        if self.acked is not None:
            self.calls.append((now - started) * 1000.0)
            for event, outcome in zip(events, outcomes, strict=True):
                if outcome.ok:
                    self.acked[event.event_id] = now
        self.sent += len(events)
        return outcomes


@dataclasses.dataclass
class FairRound:
    alone: tuple[float, float] = (0.0, 0.0)
    beside: tuple[float, float] = (0.0, 0.0)
    hot_relayed: int = 0
    hot_left: int = 0
    not_acked: int = 0
    # The quiet schema's own Publish calls (p50, p99 ms): the broker's part of its lag.
    publish_alone: tuple[float, float] = (0.0, 0.0)
    publish_beside: tuple[float, float] = (0.0, 0.0)


async def fairness(dsn: str, host: str, args: argparse.Namespace) -> FairRound:
    hot = postgres.create_schema(dsn, "bench_fleet")
    quiet = postgres.create_schema(dsn, "bench_fleet")
    result = FairRound()
    try:
        await make_topics(host, [hot, quiet])
        settings = config.OutboxConfig.from_mapping(
            {
                "schemas": [hot, quiet],
                "dsn": dsn,
                "pubsub": {"project": PROJECT, "emulator_host": host},
                "publisher": {"topic": TOPIC},
                "retention": {"enabled": False},
            }
        )
        acked: dict[uuid.UUID, float] = {}
        publishers: dict[str, Timed] = {}
        client = connection.make_emulator_client(host)

        def publisher_for(member: config.OutboxConfig) -> base.Publisher:
            # Only the quiet schema's acknowledgements are kept: 200,000 of the backlog's would
            # make this process's garbage collections, and so the lag, longer.
            kept = acked if member.schema == quiet else None
            made = Timed(pubsub.PubSubPublisher(member, client=client), kept)
            publishers[member.schema] = made
            return made

        async with (
            database.open_pool(dsn, max_size=4) as pool,
            database.open_pool(
                dsn, max_size=settings.publisher.workers + 4, settings=database.RELAY_SETTINGS
            ) as relay_pool,
        ):
            repo = repository.OutboxRepository(pool, quiet)
            relay = fleet.FleetRelay(settings, relay_pool, publisher_for)
            await relay.start()
            worker.settle_heap()  # as outbox-di worker does once its relay runs
            try:
                await asyncio.sleep(0.3)  # LISTEN in place
                committed, written = await relay_bench.offer_load(
                    pool, repo, args.quiet_rate, args.lag_seconds, args.lag_warmup
                )
                await _until_acked(publishers[quiet], written)
                result.alone, lost_alone = _lags(committed, acked)
                result.publish_alone = relay_bench._percentiles(publishers[quiet].calls)
                publishers[quiet].calls.clear()
                await asyncio.to_thread(fill, dsn, [hot], args.backlog)
                while publishers[hot].sent < 5 * BATCH:  # noqa: ASYNC110 - waiting for the backlog
                    await asyncio.sleep(0.01)
                started = publishers[hot].sent
                quiet_before = publishers[quiet].sent
                committed, written = await relay_bench.offer_load(
                    pool, repo, args.quiet_rate, args.lag_seconds, 0.0
                )
                result.hot_relayed = publishers[hot].sent - started
                result.hot_left = args.backlog - publishers[hot].sent
                await _until_acked(publishers[quiet], quiet_before + written)
                result.beside, lost_beside = _lags(committed, acked)
                result.publish_beside = relay_bench._percentiles(publishers[quiet].calls)
                result.not_acked = lost_alone + lost_beside
            finally:
                await relay.stop()
                await client.transport.close()
    finally:
        postgres.drop_schema(dsn, hot)
        postgres.drop_schema(dsn, quiet)
    return result


async def _until_acked(publisher: Timed, count: int) -> None:
    deadline = time.perf_counter() + 30
    while publisher.sent < count and time.perf_counter() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(0.01)


def _lags(committed: dict[uuid.UUID, float], acked: dict[uuid.UUID, float]) -> tuple[Any, int]:
    lags = [(acked[i] - at) * 1000.0 for i, at in committed.items() if i in acked]
    return relay_bench._percentiles(lags), len(committed) - len(lags)


# -- ten schemas -----------------------------------------------------------------------------


@dataclasses.dataclass
class TenRound:
    events_s: float
    rss_mib: float = 0.0
    connections: int = 0


def _worker_env(dsn: str, host: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OUTBOX_")}
    env.update(
        {
            "OUTBOX_DSN": dsn,
            "OUTBOX_PUBLISHER__TOPIC": TOPIC,
            "OUTBOX_PUBSUB__PROJECT": PROJECT,
            "OUTBOX_PUBSUB__EMULATOR_HOST": host,
            "OUTBOX_RETENTION__ENABLED": "false",
        }
    )
    return env


def _rss_mib(pids: Sequence[int]) -> float:
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError), open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
    return total / 1024


def _connections(dsn: str) -> int:
    with database.connect(dsn) as conn, conn.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
            "AND application_name LIKE 'outbox_di%%' AND pid <> pg_backend_pid()"
        )
        return int(cursor.fetchone()[0])


async def processes(dsn: str, host: str, names: Sequence[str], rows: int, one: bool) -> TenRound:
    """Events/s of worker processes relaying ``names`` (one for all, or one each)."""
    groups = [list(names)] if one else [[name] for name in names]
    before = _connections(dsn)
    env = _worker_env(dsn, host)
    workers = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "outbox_di.cli",
            "worker",
            "--schema",
            ",".join(group),
            env=env,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
        for group in groups
    ]
    try:
        # Every relay serving before the clock starts: one event in each schema, published.
        await asyncio.to_thread(fill, dsn, names, 1)
        deadline = time.monotonic() + 120
        while await asyncio.to_thread(pending, dsn, names):
            for worker in workers:
                assert worker.returncode is None, await worker.communicate()
            assert time.monotonic() < deadline, "the workers did not start relaying"
            await asyncio.sleep(0.1)
        connections = _connections(dsn) - before
        pids = [worker.pid for worker in workers]
        await asyncio.to_thread(fill, dsn, names, rows)
        started = time.perf_counter()
        peak = 0.0
        polls = 0
        while await asyncio.to_thread(pending, dsn, names):
            peak = max(peak, _rss_mib(pids))
            if polls % 10 == 0:  # the pools grow as the loops get busy
                connections = max(connections, _connections(dsn) - before)
            polls += 1
            await asyncio.sleep(0.05)
        elapsed = time.perf_counter() - started
    finally:
        for worker in workers:
            if worker.returncode is None:
                worker.send_signal(signal.SIGTERM)
        for worker in workers:
            _, err = await asyncio.wait_for(worker.communicate(), 30)
            assert worker.returncode == 0, err.decode()
    return TenRound(len(names) * rows / elapsed, peak, connections)


async def raw_round_robin(dsn: str, host: str, names: Sequence[str], rows: int) -> TenRound:
    """The baseline: two hand-written asyncpg loops, each taking the next schema in turn."""
    await asyncio.to_thread(fill, dsn, names, rows)
    statements = [
        (
            schema.Queries(name)["outbox_claim"].numeric_sql,
            schema.Queries(name)["outbox_mark_published"].numeric_sql,
            f"projects/{PROJECT}/topics/{TOPIC.format(schema=name)}",
        )
        for name in names
    ]
    client = connection.make_emulator_client(host)
    conn_pool = await asyncpg.create_pool(
        dsn,
        min_size=2,
        max_size=2,
        server_settings={"plan_cache_mode": "force_custom_plan", **database.RELAY_SETTINGS},
    )
    assert conn_pool is not None
    for _, _, topic in statements:
        await relay_bench.warm(client, topic)
    turn = 0
    empty: set[int] = set()
    done = 0

    async def loop() -> None:
        nonlocal turn, done
        while len(empty) < len(statements):
            index = turn % len(statements)
            turn += 1
            if index in empty:
                continue
            claim, mark, topic = statements[index]
            token = uuid.uuid4()
            now = models.utcnow()
            async with conn_pool.acquire() as conn:
                records = await conn.fetch(claim, now, now - dt.timedelta(seconds=30), BATCH, token)
            if not records:
                empty.add(index)
                continue
            messages = [
                relay_bench._raw_message(r[0], r[4], r[2], r[3], r[5], r[6]) for r in records
            ]
            await relay_bench.raw_publish(client, topic, messages)
            async with conn_pool.acquire() as conn:
                await conn.execute(
                    mark, models.utcnow(), ",".join([str(r[0]) for r in records]), token
                )
            done += len(records)

    async def poll() -> None:  # the same load on the server as while the workers are timed
        while len(empty) < len(statements):
            await asyncio.to_thread(pending, dsn, names)
            await asyncio.sleep(0.05)

    try:
        started = time.perf_counter()
        await asyncio.gather(loop(), loop(), poll())
        elapsed = time.perf_counter() - started
    finally:
        await conn_pool.close()
        await client.transport.close()
    assert done == len(names) * rows, (done, len(names) * rows)
    return TenRound(done / elapsed)


async def ten_schemas(dsn: str, host: str, args: argparse.Namespace) -> dict[str, TenRound]:
    names = [postgres.create_schema(dsn, "bench_fleet") for _ in range(args.schemas)]
    try:
        await make_topics(host, names)
        return {
            "one process": await processes(dsn, host, names, args.rows, one=True),
            "ten processes": await processes(dsn, host, names, args.rows, one=False),
            "raw asyncpg": await raw_round_robin(dsn, host, names, args.rows),
        }
    finally:
        for name in names:
            postgres.drop_schema(dsn, name)


# -- main -------------------------------------------------------------------------------------


@dataclasses.dataclass
class Results:
    pubsub: str
    fairness: list[FairRound] = dataclasses.field(default_factory=list)
    ten: list[dict[str, TenRound]] = dataclasses.field(default_factory=list)


async def run(args: argparse.Namespace, dsn: str, host: str, label: str) -> Results:
    await relay_bench.ensure_topic(host)
    results = Results(label)
    for number in range(args.rounds):
        fair = await fairness(dsn, host, args)
        results.fairness.append(fair)
        ten = await ten_schemas(dsn, host, args)
        results.ten.append(ten)
        print(
            f"  round {number + 1}/{args.rounds}: quiet p99 alone {fair.alone[1]:.1f} ms, "
            f"beside {fair.beside[1]:.1f} ms; "
            + ", ".join(f"{key} {value.events_s:,.0f}/s" for key, value in ten.items()),
            file=sys.stderr,
        )
    return results


def _spread(values: Sequence[float], unit: str, digits: int = 1) -> str:
    return (
        f"{statistics.median(values):,.{digits}f} {unit} "
        f"(min {min(values):,.{digits}f}, max {max(values):,.{digits}f})"
    )


def report(results: Results, args: argparse.Namespace) -> None:
    rounds = len(results.fairness)
    print(f"fleet relay through {results.pubsub}, median of {rounds} rounds (min, max)")
    alone = [r.alone for r in results.fairness]
    beside = [r.beside for r in results.fairness]
    print(
        f"quiet schema at {args.quiet_rate:.0f} events/s, lag commit -> ack, alone: p50 "
        f"{_spread([a[0] for a in alone], 'ms')}, p99 {_spread([a[1] for a in alone], 'ms')}"
    )
    print(
        f"  beside a {args.backlog:,}-row backlog: p50 {_spread([b[0] for b in beside], 'ms')}, "
        f"p99 {_spread([b[1] for b in beside], 'ms')}; the backlog's rows relayed meanwhile "
        f"{_spread([r.hot_relayed for r in results.fairness], 'rows', 0)}, left at the end "
        f"{_spread([r.hot_left for r in results.fairness], 'rows', 0)}"
    )
    calls_alone = [r.publish_alone[1] for r in results.fairness]
    calls_beside = [r.publish_beside[1] for r in results.fairness]
    print(
        f"  the quiet schema's own Publish calls, p99: alone {_spread(calls_alone, 'ms')}, "
        f"beside {_spread(calls_beside, 'ms')} (information: the broker's share of the lag, "
        "on a machine the backlog's relay keeps busy)"
    )
    ratio = statistics.median(b[1] / a[1] for a, b in zip(alone, beside, strict=True))
    print(
        f"quiet p99 beside vs alone: ratio {ratio:.2f} (goal <= 2)"
        + ("" if ratio <= 2 else "  GOAL MISSED")
    )
    if any(r.hot_left <= 0 for r in results.fairness):
        print("  note: the backlog ran out before the end of a round; raise --backlog")
    lost = sum(r.not_acked for r in results.fairness)
    if lost:
        print(f"  {lost} quiet events not acknowledged within 30 s")
    print(f"{args.schemas} schemas x {args.rows:,} due rows each, commit -> all published:")
    for key in results.ten[0]:
        rows = [ten[key] for ten in results.ten]
        line = f"  {key + ':':<15}{_spread([r.events_s for r in rows], 'events/s', 0)}"
        if key != "raw asyncpg":
            line += (
                f", memory {_spread([r.rss_mib for r in rows], 'MiB', 0)}, "
                f"{statistics.median([r.connections for r in rows]):.0f} database connections"
            )
        print(line)

    def paired(a: str, b: str, field: str) -> float:
        return float(
            statistics.median(
                getattr(ten[a], field) / getattr(ten[b], field) for ten in results.ten
            )
        )

    print(
        f"one process vs ten: {paired('one process', 'ten processes', 'events_s'):.2f}x "
        f"events/s, {paired('one process', 'ten processes', 'rss_mib'):.2f}x memory "
        "(information)"
    )
    print(
        f"one process vs the raw asyncpg baseline: "
        f"{paired('one process', 'raw asyncpg', 'events_s'):.2f}x events/s (information)"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--backlog", type=int, default=200_000)
    parser.add_argument("--quiet-rate", type=float, default=50.0)
    parser.add_argument("--lag-seconds", type=float, default=4.0)
    parser.add_argument("--lag-warmup", type=float, default=2.0)
    parser.add_argument("--schemas", type=int, default=10)
    parser.add_argument("--rows", type=int, default=10_000)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    with postgres.postgres_server() as server, pubsub_testing.pubsub_server() as emulator:
        print(
            f"PostgreSQL: {server.source}; Pub/Sub: {emulator.label} at {emulator.host}",
            file=sys.stderr,
        )
        results = asyncio.run(run(args, server.dsn, emulator.host, emulator.label))
    if args.json:
        print(json.dumps(dataclasses.asdict(results), indent=2))
    else:
        report(results, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
