"""Claim latency against the backlog: the unordered and the ordered claim, beside a bare index scan.

    .venv/bin/python bench/claim.py [--rounds 50] [--limit 500]

Each figure is the p50 (and p10-p90) of ``--rounds`` claims of ``--limit`` rows through
``OutboxRepository.claim_pending`` on a pool opened with the relay's session settings, timed
in this process (round trip included). After each claim its rows are given back with
``release`` (untimed): lease cleared, attempt count restored, due again at once, so every
round finds the same rows in the same state (a rollback would do the same but is not what
the relay does; the release is). Every scenario has its own schema, filled with
``INSERT ... SELECT generate_series`` and analyzed before the clock starts; then, round by
round, each scenario is claimed once, in an order mirrored every other round, so a slow spell
of the shared machine weighs on all of them alike. The first five rounds are not counted.

Scenarios:

* unordered: 1k pending; 1k pending + 1M published; 200k pending;
* ordered, a stuck key: its head leased (by a worker that holds it), 1k / 20k / 200k rows of
  that key behind it, older than everything else, then 1k pending over 100 other keys (each
  claim takes those 100 heads);
* ordered, 1k / 20k / 200k pending over 100 keys (each claim takes the 100 heads).

Beside each, the baseline: the bare index scan of ``--limit`` rows the unordered claim starts
from (due rows in ``(available_at, seq)`` order, no lock, no update), on the same pool.

Goals, printed as ``ratio`` lines, each the median of the per-round ratios (lower is better:
the 200k or 1M-published figure over its 1k one): unordered <= 1.2; ordered <= 1.5. The 20k
figures are printed as ratios without a goal.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import statistics
import sys
import time
import uuid
from collections.abc import Sequence
from typing import Any

from outbox_di import database, models, repository, schema
from outbox_di.testing import postgres

TTL = dt.timedelta(seconds=30)

FILL = """
INSERT INTO {table} (event_id, aggregate_type, aggregate_id, event_type, payload, ordering_key,
                     status, available_at, published_at)
SELECT gen_random_uuid(), 'bench', 'agg-' || g, 'bench.event', '\\x7b7d', {key}, {status},
       now() - interval '2 hours' + g * interval '1 microsecond', {published_at}
FROM generate_series(1, {rows}) AS g
"""

BARE_SCAN = """
SELECT ctid FROM {table}
WHERE status = 'pending' AND available_at <= now()
ORDER BY available_at, seq
LIMIT {limit}
"""


class Scenario:
    """One schema in the state a figure is measured in."""

    def __init__(self, pool: Any, key: str, label: str, schema_name: str, *, ordering: bool):
        self.pool = pool
        self.key = key
        self.label = label
        self.table = f"{schema.quote_ident(schema_name)}.outbox_events"
        self.repo = repository.OutboxRepository(pool, schema_name, ordering=ordering)
        self.times: list[float] = []
        self.bare: list[float] = []
        self.claimed = 0

    async def sql(self, text: str) -> None:
        async with self.pool.acquire() as conn, conn.cursor() as cursor:
            await cursor.execute(text)

    async def fill(
        self, rows: int, key: str = "NULL", status: str = "pending", published: bool = False
    ) -> None:
        # Only constants of this file and the quoted schema name reach the SQL text.
        await self.sql(
            FILL.format(
                table=self.table,
                rows=int(rows),
                key=key,
                status=f"'{status}'",
                published_at="now()" if published else "NULL",
            )
        )

    async def lease_oldest(self) -> None:
        """The oldest row, leased now by a worker that keeps it (a stuck key's head)."""
        await self.sql(
            f"UPDATE {self.table} SET lock_token = gen_random_uuid(), locked_at = now() "  # noqa: S608
            f"WHERE seq = (SELECT min(seq) FROM {self.table})"
        )

    async def analyze(self) -> None:
        await self.sql(f"VACUUM ANALYZE {self.table}")

    async def round(self, limit: int, *, count: bool) -> None:
        """One claim, timed, its rows given back; then the bare index scan, timed."""
        now = models.utcnow()
        token = uuid.uuid4()
        start = time.perf_counter()
        events = await self.repo.claim_pending(now, now - TTL, limit, token)
        elapsed = (time.perf_counter() - start) * 1000
        await self.repo.release([event.event_id for event in events], token)
        async with self.pool.acquire() as conn, conn.cursor() as cursor:
            start = time.perf_counter()
            await cursor.execute(BARE_SCAN.format(table=self.table, limit=int(limit)))
            await cursor.fetchall()
            bare = (time.perf_counter() - start) * 1000
        if count:
            self.times.append(elapsed)
            self.bare.append(bare)
            self.claimed = len(events)

    def line(self) -> str:
        deciles = statistics.quantiles(self.times, n=10)
        return (
            f"{self.label:<46} claim p50 {statistics.median(self.times):6.2f} ms "
            f"(p10-p90 {deciles[0]:.2f}-{deciles[-1]:.2f}, {self.claimed} rows)   "
            f"bare index scan p50 {statistics.median(self.bare):.2f} ms"
        )


def ratio_line(label: str, value: float, goal: float | None) -> str:
    if goal is None:
        return f"{label}: ratio {value:.2f} (no goal)"
    verdict = "" if value <= goal else "  GOAL MISSED"
    return f"{label}: ratio {value:.2f} (goal <= {goal}){verdict}"


SCENARIOS = (
    ("u1k", "unordered, 1k pending", False),
    ("u1m", "unordered, 1k pending + 1M published", False),
    ("u200k", "unordered, 200k pending", False),
    ("s1k", "ordered, stuck key holding 1k (+1k/100 keys)", True),
    ("s20k", "ordered, stuck key holding 20k (+1k/100 keys)", True),
    ("s200k", "ordered, stuck key holding 200k (+1k/100 keys)", True),
    ("k1k", "ordered, 1k pending over 100 keys", True),
    ("k20k", "ordered, 20k pending over 100 keys", True),
    ("k200k", "ordered, 200k pending over 100 keys", True),
)


async def prepare(scenario: Scenario) -> None:
    key = scenario.key
    rows = {"1k": 1_000, "20k": 20_000, "200k": 200_000, "1m": 1_000}[key[1:]]
    if key.startswith("u"):
        await scenario.fill(rows)
        if key == "u1m":
            await scenario.fill(1_000_000, status="published", published=True)
    elif key.startswith("s"):
        await scenario.fill(rows, key="'stuck'")
        await scenario.lease_oldest()
        await scenario.fill(1_000, key="'key-' || (g % 100)")
    else:
        await scenario.fill(rows, key="'key-' || (g % 100)")
    await scenario.analyze()


async def run(dsn: str, schemas: Sequence[str], rounds: int, limit: int) -> list[str]:
    async with database.open_pool(
        dsn, min_size=2, max_size=2, settings=database.RELAY_SETTINGS
    ) as pool:
        scenarios = [
            Scenario(pool, key, label, name, ordering=ordering)
            for (key, label, ordering), name in zip(SCENARIOS, schemas, strict=True)
        ]
        for scenario in scenarios:
            await prepare(scenario)
        # Round by round, every scenario once, in an order mirrored every other round: a slow
        # spell of the shared machine weighs on all of them alike.
        for number in range(rounds + 5):
            order = scenarios if number % 2 == 0 else scenarios[::-1]
            for scenario in order:
                await scenario.round(limit, count=number >= 5)
    by_key = {scenario.key: scenario for scenario in scenarios}
    lines = [scenario.line() for scenario in scenarios]

    def paired(top: str, bottom: str) -> float:
        # The median of the per-round ratios (the two claims of a round are close in time).
        pairs = zip(by_key[top].times, by_key[bottom].times, strict=True)
        return statistics.median(a / b for a, b in pairs)

    return [
        *lines,
        ratio_line("unordered 200k pending ÷ 1k pending", paired("u200k", "u1k"), 1.2),
        ratio_line("unordered 1M published ÷ 1k pending", paired("u1m", "u1k"), 1.2),
        ratio_line("ordered stuck key 200k ÷ 1k", paired("s200k", "s1k"), 1.5),
        ratio_line("ordered 100 keys 200k ÷ 1k", paired("k200k", "k1k"), 1.5),
        ratio_line("ordered stuck key 20k ÷ 1k", paired("s20k", "s1k"), None),
        ratio_line("ordered 100 keys 20k ÷ 1k", paired("k20k", "k1k"), None),
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=50)
    parser.add_argument("--limit", type=int, default=500)
    args = parser.parse_args()
    started = time.perf_counter()
    with postgres.postgres_server() as server:
        print(f"PostgreSQL: {server.source}", file=sys.stderr)
        with contextlib.ExitStack() as stack:
            schemas = [
                stack.enter_context(postgres.migrated_schema(server.dsn, f"bench_claim_{key}"))
                for key, _, _ in SCENARIOS
            ]
            lines = asyncio.run(run(server.dsn, schemas, args.rounds, args.limit))
    for line in lines:
        print(line)
    print(f"({time.perf_counter() - started:.0f} s)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
