"""Table and index size after 1M events relayed, with automatic retention and without.

    .venv/bin/python bench/retention.py [--events 1000000] [--chunk 50000] [--window 5]
                                        [--vacuum-every 2] [--json]

Each run writes ``--events`` events into a fresh outbox table, ``--chunk`` rows per
transaction, while a ``PublisherTask`` (default configuration, a publisher that acknowledges
everything at once, so the broker does not set the pace) relays them:

* ``retention on``: a ``Retention`` runs beside the relay, as in ``outbox-di worker``, with
  ``retention.published = --window`` seconds and ``retention.interval = 1s`` (the default
  batch size); sizes are read once every row is published and a pass after the last row's
  window has run, so the rows that may be deleted are gone;
* ``retention off`` (the baseline): nothing deletes; the same sizes after the same events;
* ``off, then purge``: the baseline's table after one ``outbox-di purge`` by hand (every
  published row, in batches) — what a service without retention does when the table got big.

A long run of a service spans many vacuums; this short one runs a plain ``VACUUM`` of the table
after every ``--vacuum-every`` chunks, in every run alike, where autovacuum would (0: none, only
autovacuum, which a run this short may not see at all).

Printed per run: rows left, the heap (``pg_relation_size``), the indexes (``pg_indexes_size``),
the whole table with TOAST (``pg_total_relation_size``), and the same after one more plain
``VACUUM`` (autovacuum stays on, as on a production server). A plain VACUUM
makes the space of deleted rows reusable but returns little to the file system; only
``VACUUM FULL`` (an exclusive lock) shrinks the files, which the purge line shows too.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import sys
import time
from collections.abc import Sequence

from psycopg2 import sql

from outbox_di import config, database, models, operations, repository
from outbox_di.publishing import base
from outbox_di.publishing.task import PublisherTask
from outbox_di.retention import Retention
from outbox_di.testing import postgres


class AckAll:
    """A publisher that acknowledges every event at once and keeps nothing."""

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def publish(self, events: Sequence[models.OutboxEvent]) -> Sequence[base.PublishOutcome]:
        return [base.PublishOutcome(message_id=str(n)) for n in range(len(events))]


@dataclasses.dataclass
class Sizes:
    rows: int
    heap: int
    indexes: int
    total: int


@dataclasses.dataclass
class Run:
    label: str
    seconds: float
    deleted: int
    before_vacuum: Sizes
    after_vacuum: Sizes
    after_vacuum_full: Sizes | None = None
    growth: list[tuple[int, int]] = dataclasses.field(default_factory=list)  # (events, total)


def fill(dsn: str, name: str, rows: int, start: int) -> None:
    """``rows`` due events in one transaction, with a payload of about 200 bytes."""
    with database.connect(dsn) as conn, conn, conn.cursor() as cursor:
        cursor.execute(
            sql.SQL(
                "INSERT INTO {}.outbox_events "
                "(event_id, aggregate_type, aggregate_id, event_type, payload) "
                "SELECT gen_random_uuid(), 'order', 'order-' || n, 'order.created', "
                "convert_to(json_build_object('n', n, 'customer', 'customer-' || (n %% 977), "
                "'lines', json_build_array(json_build_object('sku', 'sku-' || (n %% 101), "
                "'quantity', 1 + n %% 5, 'price', '19.90')), 'currency', 'EUR', "
                "'note', repeat('x', 60))::text, 'UTF8') "
                "FROM generate_series(%s, %s) AS n"
            ).format(sql.Identifier(name)),
            (start, start + rows - 1),
        )


def sizes(dsn: str, name: str) -> Sizes:
    table = f"{name}.outbox_events"
    with database.connect(dsn) as conn, conn.cursor() as cursor:
        cursor.execute(
            sql.SQL(
                "SELECT (SELECT count(*) FROM {}), pg_relation_size(%s::regclass), "
                "pg_indexes_size(%s::regclass), pg_total_relation_size(%s::regclass)"
            ).format(sql.Identifier(name, "outbox_events")),
            (table, table, table),
        )
        row = cursor.fetchone()
    return Sizes(*(int(value) for value in row))


def vacuum(dsn: str, name: str, *, full: bool = False) -> None:
    with database.connect(dsn) as conn:
        conn.autocommit = True
        with conn.cursor() as cursor:
            statement = "VACUUM (FULL) {}" if full else "VACUUM {}"
            cursor.execute(sql.SQL(statement).format(sql.Identifier(name, "outbox_events")))


async def relay_run(
    dsn: str, name: str, args: argparse.Namespace, *, retention_on: bool
) -> tuple[float, int, list[tuple[int, int]]]:
    """Write and relay the events (deleting as it goes with ``retention_on``); seconds taken,
    rows deleted by retention, and the whole table's size after each chunk."""
    cfg = config.OutboxConfig.from_mapping(
        {
            "schema": name,
            "dsn": dsn,
            "pubsub": {"project": "outbox-bench"},
            "publisher": {"topic": "retention-bench"},
            "retention": {
                "enabled": retention_on,
                "published": f"{args.window}s",
                "interval": "1s",
            },
        }
    )
    async with database.open_pool(dsn, max_size=6, settings=database.RELAY_SETTINGS) as pool:
        repo = repository.OutboxRepository(pool, name)
        relay = PublisherTask(cfg, repo, AckAll())
        retention = Retention(
            cfg, repo, repository.InboxRepository(pool, name), first_pass_delay=1.0
        )
        growth: list[tuple[int, int]] = []
        started = time.perf_counter()
        await relay.start()
        if retention_on:
            await retention.start()
        try:
            for number, start in enumerate(range(0, args.events, args.chunk)):
                rows = min(args.chunk, args.events - start)
                await asyncio.to_thread(fill, dsn, name, rows, start)
                if args.vacuum_every and number % args.vacuum_every == args.vacuum_every - 1:
                    await asyncio.to_thread(vacuum, dsn, name)  # what autovacuum does
                growth.append((start + rows, (await asyncio.to_thread(sizes, dsn, name)).total))
                # Keep the backlog under two chunks: the relay, not the writer, sets the pace.
                while relay.stats.published < start + rows - args.chunk:  # noqa: ASYNC110
                    await asyncio.sleep(0.05)
            while relay.stats.published < args.events:  # noqa: ASYNC110 - the measurement
                await asyncio.sleep(0.05)
            elapsed = time.perf_counter() - started
            if retention_on:
                # The last rows' window, then one more pass.
                await asyncio.sleep(args.window)
                passes = retention.stats.passes
                while retention.stats.passes < passes + 2:  # noqa: ASYNC110
                    await asyncio.sleep(0.1)
        finally:
            await relay.stop()
            if retention_on:
                await retention.stop()
    return elapsed, retention.stats.published_deleted, growth


async def measure(dsn: str, args: argparse.Namespace) -> list[Run]:
    runs: list[Run] = []
    for retention_on in (True, False):
        name = postgres.create_schema(dsn, "bench_retention")
        try:
            elapsed, deleted, growth = await relay_run(dsn, name, args, retention_on=retention_on)
            before = sizes(dsn, name)
            vacuum(dsn, name)
            label = "retention on" if retention_on else "retention off"
            runs.append(Run(label, elapsed, deleted, before, sizes(dsn, name), growth=growth))
            print(f"  {label}: {args.events:,} events in {elapsed:.1f} s", file=sys.stderr)
            if not retention_on:
                with database.connect(dsn) as conn:
                    conn.autocommit = True
                    purged = operations.purge(conn, name, older_than=0.001, batch_size=10_000)
                before = sizes(dsn, name)
                vacuum(dsn, name)
                after = sizes(dsn, name)
                vacuum(dsn, name, full=True)
                runs.append(Run("off, then purge", 0.0, purged, before, after, sizes(dsn, name)))
        finally:
            postgres.drop_schema(dsn, name)
    return runs


def _mib(value: int) -> str:
    return f"{value / 2**20:,.1f} MiB"


def _line(sizes_: Sizes) -> str:
    return (
        f"{sizes_.rows:>9,} rows, heap {_mib(sizes_.heap):>11}, indexes {_mib(sizes_.indexes):>11}"
        f", total {_mib(sizes_.total):>11}"
    )


def report(runs: list[Run], args: argparse.Namespace) -> None:
    print(
        f"outbox table after {args.events:,} events relayed (retention window {args.window} s, "
        f"a pass every 1 s; VACUUM every {args.vacuum_every * args.chunk:,} events)"
    )
    for run in runs:
        deleted = f", {run.deleted:,} rows deleted" if run.deleted else ""
        timed = f" in {run.seconds:.1f} s" if run.seconds else ""
        print(f"{run.label}{timed}{deleted}:")
        if run.growth:
            step = max(1, len(run.growth) // 5)
            samples = run.growth[step - 1 :: step]
            shown = ", ".join(f"{events // 1000:,}k {_mib(total)}" for events, total in samples)
            print(f"  whole table while relaying (events written: size): {shown}")
        print(f"  as left:              {_line(run.before_vacuum)}")
        print(f"  after VACUUM:         {_line(run.after_vacuum)}")
        if run.after_vacuum_full is not None:
            print(f"  after VACUUM (FULL):  {_line(run.after_vacuum_full)}")
    on, off = runs[0], runs[1]
    print(
        f"retention on vs off, whole table as left: "
        f"{on.before_vacuum.total / off.before_vacuum.total:.3f}x; relay time "
        f"{on.seconds / off.seconds:.2f}x (information)"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--chunk", type=int, default=50_000)
    parser.add_argument("--window", type=float, default=5.0)
    parser.add_argument("--vacuum-every", type=int, default=2)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    with postgres.postgres_server() as server:
        print(f"PostgreSQL: {server.source}", file=sys.stderr)
        runs = asyncio.run(measure(server.dsn, args))
    if args.json:
        print(json.dumps([dataclasses.asdict(run) for run in runs], indent=2))
    else:
        report(runs, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
