"""Enqueue throughput through the library beside the same INSERT on the raw driver.

Both paths run in the same process, on the same aiopg pool, into the same table (with its
NOTIFY trigger), with the same number of concurrent writers and the same transaction pattern:
``BEGIN; INSERT ...; COMMIT`` with 1 event, or with 100 events in one statement. Both build
their rows per event (a fresh UUID, a small dict payload encoded as JSON, empty headers): the
library through ``models.Message`` and ``OutboxRepository.enqueue``/``enqueue_many``, the raw
baseline as hand-built parameter dicts for the library's own statement text. The ratio
(library / raw) is then the library's own overhead.

Runs are interleaved over several rounds, with a fresh table before each; in every round each
variant runs twice for half of ``--seconds``, in the mirrored order library, raw, no-trigger,
no-trigger, raw, library. Throughputs are the median of each series; ``ratio`` is the median of
the rounds' library/raw ratios, so that load from elsewhere on a small machine weighs on both
sides of a pair alike. The NOTIFY trigger's cost (the raw path into a table migrated with
``notify=False``) is printed beside, as information, not as a goal.

Run from the repository root: ``.venv/bin/python bench/enqueue.py [--json]``.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import itertools
import json
import platform
import secrets
import statistics
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

from outbox_di import database, models, repository, schema
from outbox_di.testing import postgres

GOAL = 0.9
"""Library throughput / raw throughput must be at least this (under 10% overhead)."""

BATCH = 100
MODES = ("1/tx", f"{BATCH}/tx")
LIBRARY, RAW, RAW_NO_NOTIFY = "library", "raw", "raw_no_notify"
VARIANTS = (LIBRARY, RAW, RAW_NO_NOTIFY)

# A hand-written service would encode its payload with one prebuilt encoder too.
_raw_dumps = json.JSONEncoder(separators=(",", ":")).encode

Work = Callable[[], Awaitable[int]]


def _payload(n: int) -> dict[str, Any]:
    """A small, typical event body."""
    return {"order_id": n, "sku": "SKU-1042", "quantity": 2, "price": "19.99", "paid": True}


class Bench:
    """The schemas, pool and work functions of one benchmark run."""

    def __init__(self, dsn: str, pool: Any, with_notify: str, without_notify: str) -> None:
        self.dsn = dsn
        self.pool = pool
        self.schemas = {LIBRARY: with_notify, RAW: with_notify, RAW_NO_NOTIFY: without_notify}
        self.repo = repository.OutboxRepository(pool, with_notify)
        self.counters = {
            name: repository.OutboxRepository(pool, name) for name in (with_notify, without_notify)
        }
        self.insert_sql = {
            name: (
                schema.Queries(name)["outbox_insert"].sql,
                schema.Queries(name)["outbox_insert_many"].sql,
            )
            for name in (with_notify, without_notify)
        }
        self._ids: Iterator[int] = itertools.count()

    # -- table resets ---------------------------------------------------------------------

    def reset(self, name: str) -> None:
        """A fresh, empty table: drop the schema and migrate it again."""
        with database.connect(self.dsn) as conn:
            with conn, conn.cursor() as cursor:
                cursor.execute(schema.Queries(name)["drop_schema"].sql)
            database.migrate(conn, name, notify=name == self.schemas[LIBRARY])

    def drop_all(self) -> None:
        with database.connect(self.dsn) as conn, conn, conn.cursor() as cursor:
            for name in self.counters:
                cursor.execute(schema.Queries(name)["drop_schema"].sql)

    # -- one transaction of each kind -----------------------------------------------------

    async def library_one(self) -> int:
        async with self.pool.acquire() as conn, conn.cursor() as cursor, cursor.begin():
            n = next(self._ids)
            message = models.Message("order", f"order-{n}", "order.created", _payload(n))
            await self.repo.enqueue(cursor, message)
        return 1

    async def library_many(self) -> int:
        async with self.pool.acquire() as conn, conn.cursor() as cursor, cursor.begin():
            messages = []
            for _ in range(BATCH):
                n = next(self._ids)
                messages.append(models.Message("order", f"order-{n}", "order.created", _payload(n)))
            await self.repo.enqueue_many(cursor, messages)
        return BATCH

    def raw_one(self, schema_name: str) -> Work:
        sql = self.insert_sql[schema_name][0]

        async def work() -> int:
            async with self.pool.acquire() as conn, conn.cursor() as cursor, cursor.begin():
                n = next(self._ids)
                values = {
                    "event_id": str(uuid.uuid4()),
                    "aggregate_type": "order",
                    "aggregate_id": f"order-{n}",
                    "event_type": "order.created",
                    "payload": _raw_dumps(_payload(n)).encode(),
                    "headers": "{}",
                    "ordering_key": None,
                    "available_at": None,
                }
                await cursor.execute(sql, values)
            return 1

        return work

    def raw_many(self, schema_name: str) -> Work:
        sql = self.insert_sql[schema_name][1]

        async def work() -> int:
            async with self.pool.acquire() as conn, conn.cursor() as cursor, cursor.begin():
                # Every column built per event, as for events of several kinds.
                event_ids: list[str] = []
                aggregate_types: list[str] = []
                aggregate_ids: list[str] = []
                event_types: list[str] = []
                payloads: list[bytes] = []
                headers: list[str] = []
                ordering_keys: list[str | None] = []
                available_ats: list[None] = []
                for _ in range(BATCH):
                    n = next(self._ids)
                    event_ids.append(str(uuid.uuid4()))
                    aggregate_types.append("order")
                    aggregate_ids.append(f"order-{n}")
                    event_types.append("order.created")
                    payloads.append(_raw_dumps(_payload(n)).encode())
                    headers.append("{}")
                    ordering_keys.append(None)
                    available_ats.append(None)
                values = {
                    "event_ids": event_ids,
                    "aggregate_types": aggregate_types,
                    "aggregate_ids": aggregate_ids,
                    "event_types": event_types,
                    "payloads": payloads,
                    "headers": headers,
                    "ordering_keys": ordering_keys,
                    "available_ats": available_ats,
                }
                await cursor.execute(sql, values)
            return BATCH

        return work

    def work(self, mode: str, variant: str) -> Work:
        if variant == LIBRARY:
            return self.library_one if mode == MODES[0] else self.library_many
        name = self.schemas[variant]
        return self.raw_one(name) if mode == MODES[0] else self.raw_many(name)

    # -- a timed run ------------------------------------------------------------------------

    async def run(self, mode: str, variant: str, seconds: float, writers: int) -> Sample:
        """``writers`` concurrent writers for about ``seconds``, into a fresh table."""
        name = self.schemas[variant]
        self.reset(name)
        work = self.work(mode, variant)
        deadline = time.perf_counter() + seconds

        async def writer() -> int:
            done = 0
            while time.perf_counter() < deadline:
                done += await work()
            return done

        cpu = time.process_time()
        start = time.perf_counter()
        counts = await asyncio.gather(*(writer() for _ in range(writers)))
        elapsed = time.perf_counter() - start
        cpu = time.process_time() - cpu
        written = sum(counts)
        stored = await self.counters[name].count_pending()
        if stored != written:
            raise SystemExit(f"{mode} {variant}: wrote {written} events but {stored} are stored")
        return Sample(written, elapsed, cpu)


@dataclasses.dataclass
class Sample:
    """What one or more timed runs did: events written, wall time, this process's CPU time."""

    events: int = 0
    elapsed: float = 0.0
    cpu: float = 0.0

    def add(self, other: Sample) -> None:
        self.events += other.events
        self.elapsed += other.elapsed
        self.cpu += other.cpu

    @property
    def rate(self) -> float:
        return self.events / self.elapsed

    @property
    def cpu_us(self) -> float:
        """Client CPU (this process: building, encoding, the driver) per event, in µs."""
        return self.cpu / self.events * 1e6


# Each round runs every variant twice, for half the time, in a mirrored order: a load that rises
# or falls steadily during the round then weighs on every variant alike, and library and raw
# (and raw and no-trigger) run back to back.
ROUND_ORDER = VARIANTS + VARIANTS[::-1]

Results = dict[str, dict[str, list[Sample]]]
"""mode -> variant -> one sample per round."""


def _rate(value: float) -> str:
    return f"{value:,.0f} ev/s"


async def measure(
    dsn: str, writers: int, seconds: float, rounds: int, log: Callable[[str], None]
) -> Results:
    suffix = secrets.token_hex(4)
    with_notify, without_notify = f"bench_enqueue_{suffix}", f"bench_enqueue_{suffix}_nonotify"
    results: Results = {mode: {variant: [] for variant in VARIANTS} for mode in MODES}
    async with database.open_pool(
        dsn, min_size=writers, max_size=writers, application_name="outbox_di_bench"
    ) as pool:
        bench = Bench(dsn, pool, with_notify, without_notify)
        try:
            # Warm-up: connections, server caches and Python's code paths; not counted.
            for mode in MODES:
                for variant in VARIANTS:
                    await bench.run(mode, variant, min(0.5, seconds), writers)
            for round_no in range(rounds):
                for mode in MODES:
                    samples = {variant: Sample() for variant in VARIANTS}
                    for variant in ROUND_ORDER:
                        samples[variant].add(await bench.run(mode, variant, seconds / 2, writers))
                    for variant, sample in samples.items():
                        results[mode][variant].append(sample)
                    log(
                        f"  round {round_no + 1}/{rounds} {mode:>6}: "
                        + ", ".join(
                            f"{variant} {_rate(sample.rate)} ({sample.cpu_us:.1f} µs CPU/ev)"
                            for variant, sample in samples.items()
                        )
                    )
        finally:
            bench.drop_all()
    return results


def summarize(results: Results) -> dict[str, Any]:
    summary: dict[str, Any] = {}
    for mode, series in results.items():
        rates = {
            variant: [sample.rate for sample in samples] for variant, samples in series.items()
        }
        cpu = {
            variant: statistics.median(sample.cpu_us for sample in samples)
            for variant, samples in series.items()
        }
        medians = {variant: statistics.median(values) for variant, values in rates.items()}
        # Ratios are taken within each round (adjacent runs, same load), then the median.
        ratio = statistics.median(
            library / raw for library, raw in zip(rates[LIBRARY], rates[RAW], strict=True)
        )
        notify_cost = statistics.median(
            raw / bare for raw, bare in zip(rates[RAW], rates[RAW_NO_NOTIFY], strict=True)
        )
        summary[mode] = {
            "library_ev_s": round(medians[LIBRARY], 1),
            "raw_ev_s": round(medians[RAW], 1),
            "raw_no_notify_ev_s": round(medians[RAW_NO_NOTIFY], 1),
            "ratio": round(ratio, 3),
            "ratio_of_medians": round(medians[LIBRARY] / medians[RAW], 3),
            "goal": GOAL,
            "goal_met": ratio >= GOAL,
            "notify_trigger_cost": round(notify_cost, 3),
            "client_cpu_us_per_event": {variant: round(value, 2) for variant, value in cpu.items()},
            "rounds_ev_s": {
                variant: [round(value, 1) for value in values] for variant, values in rates.items()
            },
        }
    return summary


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--writers", type=int, default=8, help="concurrent writers (default 8)")
    parser.add_argument(
        "--seconds",
        type=float,
        default=2.0,
        help="time per variant per round, as two halves (default 2)",
    )
    parser.add_argument(
        "--rounds", type=int, default=5, help="interleaved rounds; medians are reported (default 5)"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object instead")
    args = parser.parse_args(argv)
    if args.writers < 1 or args.rounds < 1 or args.seconds <= 0:
        parser.error("--writers and --rounds must be >= 1 and --seconds > 0")
    return args


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)

    def log(line: str) -> None:
        print(line, file=sys.stderr if args.json else sys.stdout, flush=True)

    with postgres.postgres_server() as server:
        with database.connect(server.dsn) as conn:
            version = conn.server_version
        pg_version = f"{version // 10000}.{version % 10000}"
        log(
            f"enqueue benchmark: PostgreSQL {pg_version} ({server.source}), Python "
            f"{platform.python_version()}, {args.writers} writers, {args.rounds} rounds of "
            f"{args.seconds:g} s per variant"
        )
        results = asyncio.run(measure(server.dsn, args.writers, args.seconds, args.rounds, log))
    summary = summarize(results)
    if args.json:
        document = {
            "benchmark": "enqueue",
            "postgres": pg_version,
            "postgres_source": server.source,
            "python": platform.python_version(),
            "writers": args.writers,
            "seconds": args.seconds,
            "rounds": args.rounds,
            "modes": summary,
        }
        print(json.dumps(document, indent=2))
        return 0
    print("medians:")
    for mode, figures in summary.items():
        verdict = "" if figures["goal_met"] else "  GOAL MISSED"
        print(
            f"enqueue {mode + ':':<7} library {_rate(figures['library_ev_s'])}  "
            f"raw {_rate(figures['raw_ev_s'])}  ratio {figures['ratio']:.2f} "
            f"(goal >= {GOAL}){verdict}"
        )
    for mode, figures in summary.items():
        print(
            f"notify trigger cost {mode + ':':<7} {figures['notify_trigger_cost']:.2f}x of "
            f"no-trigger throughput (raw {_rate(figures['raw_ev_s'])} with the trigger, "
            f"{_rate(figures['raw_no_notify_ev_s'])} without)"
        )
    for mode, figures in summary.items():
        cpu = figures["client_cpu_us_per_event"]
        print(
            f"client CPU per event {mode + ':':<7} library {cpu[LIBRARY]:.1f} µs, "
            f"raw {cpu[RAW]:.1f} µs (this process: building rows, encoding, driver, event loop)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
