"""The fault-injection run: separate OS processes, real faults, and a count of what was lost.

    .venv/bin/python -m tests.chaos.run                          # 100,000 events, ~10 minutes
    .venv/bin/python -m tests.chaos.run --events 10000 --seconds 60   # the short run of make test
    .venv/bin/python -m tests.chaos.run --break ack-before-store # must fail (see breaks/)

What runs, each in a process of its own (docs/reliability.md has the picture):

* a private PostgreSQL cluster (:class:`outbox_di.testing.cluster.PrivateCluster`), never the
  machine's shared server: the run crashes it;
* two service schemas, ``chaos_a`` and ``chaos_b``, each with a business table
  (``chaos_orders``) and an effects table (``chaos_effects``);
* producer processes committing orders and their events in the same transactions, at a steady
  rate, to both schemas, straight to the cluster;
* three ``outbox-di worker`` relay processes (two for ``chaos_a``, one for ``chaos_b``) and two
  ``outbox-di worker`` inbox processes (one per schema) whose transactional handler writes one
  effect row per event (``tests/chaos/handlers.py``); every worker reaches PostgreSQL through a
  :class:`~outbox_di.testing.proxy.FaultProxy`;
* ``chaos_a``'s broker: Google's Pub/Sub emulator (the in-process one when Google's is not
  installed) behind a second proxy; ``chaos_b``'s: the in-process emulator, failing a share of
  publish calls all along;
* an audit subscription on each topic, read straight from the emulator, that sees every copy
  published.

The faults, on a schedule printed at the start: SIGKILL of a random relay or inbox process
every few seconds (restarted a second later), ``pg_ctl stop -m immediate`` then a start (a
crash: no checkpoint, crash recovery), the broker proxy cut for 10 s (connections reset, new
ones refused), and the PostgreSQL proxy held silent for longer than the leases (``lock_ttl``).

At the end the producers stop, the run waits for quiet and prints one table per schema:
committed, published, received, effects, lost (committed without an effect), double effects,
duplicate publishes against the bound that leases explain, and the time to recover after each
fault. It exits 1 on any loss, any double effect, an unexplained duplicate, a fault of the
schedule that was not applied, or no quiet within the wait.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import dataclasses
import datetime as dt
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import psycopg2
from psycopg2 import sql

ROOT = Path(__file__).resolve().parents[2]
PROJECT = "outbox-di-chaos"
SCHEMAS = ("chaos_a", "chaos_b")
TOPICS = {"chaos_a": "chaos-a", "chaos_b": "chaos-b"}
BREAKS = ("ack-before-store", "mark-before-ack")

# Worker settings: short leases so that the faults end within the run.
LOCK_TTL = 4.0
BATCH_SIZE = 100
WORKERS = 2
RELAYS = {"chaos_a": 2, "chaos_b": 1}
FAIL_SHARE = 0.1
BROKER_OUTAGE = 10.0
PG_STALL = LOCK_TTL + 4.0
PG_DOWN = 2.0
INBOX_DB_CUT = 5.0
PER_TRANSACTION = 5


# -- the producer: a process of its own ------------------------------------------------------


def produce(dsn: str, rate: float, events: int, seed: int, producer: int) -> None:
    """Commit ``events`` orders with their events at ``rate`` per second, alternating schemas;
    reconnect through outages. Prints how many transactions committed and failed."""
    from outbox_di import models, repository

    repos = {name: repository.OutboxRepository(None, name) for name in SCHEMAS}
    insert = {
        name: sql.SQL("INSERT INTO {}.chaos_orders (order_id, event_id) VALUES (%s, %s)").format(
            sql.Identifier(name)
        )
        for name in SCHEMAS
    }
    rng = random.Random(seed)
    interval = PER_TRANSACTION / rate
    conn: Any = None
    committed = failed = 0
    number = 0
    next_at = time.monotonic()
    while committed < events:
        now = time.monotonic()
        if next_at > now:
            time.sleep(next_at - now)
        # After an outage, carry on at the rate: no burst to catch up.
        next_at = max(next_at + interval, time.monotonic() - 1.0)
        name = SCHEMAS[number % len(SCHEMAS)]
        count = min(PER_TRANSACTION, events - committed)
        messages = [
            models.Message(
                "order",
                f"p{producer}-{number}-{n}",
                "order.placed",
                {"producer": producer, "n": number, "noise": rng.random()},
            )
            for n in range(count)
        ]
        number += 1
        try:
            if conn is None:
                conn = psycopg2.connect(dsn, connect_timeout=3, application_name="chaos-producer")
            with conn, conn.cursor() as cursor:
                for message in messages:
                    cursor.execute(insert[name], (message.aggregate_id, str(message.event_id)))
                repos[name].enqueue_many_sync(cursor, messages)
            committed += count
        except psycopg2.Error:
            # The commit's outcome may be unknown; the orders table is the truth, read at the end.
            failed += 1
            with contextlib.suppress(Exception):
                conn.close()
            conn = None
            time.sleep(0.2)
    print(json.dumps({"producer": producer, "committed": committed, "failed": failed}))


# -- processes ---------------------------------------------------------------------------------


@dataclasses.dataclass
class Worker:
    """One ``outbox-di worker`` process, restarted whenever it exits."""

    name: str
    role: str  # "relay" or "inbox"
    schema: str
    env: dict[str, str]
    log: Path
    process: subprocess.Popen[bytes] | None = None
    restart_at: float | None = None
    starts: int = 0
    kills: int = 0

    def start(self) -> None:
        handlers = ["--handlers", "tests.chaos.handlers:build"] if self.role == "inbox" else []
        log = self.log.open("ab")
        self.process = subprocess.Popen(
            [str(Path(sys.executable).parent / "outbox-di"), "worker", *handlers],
            env=self.env,
            cwd=self.log.parent,  # no settings.toml there: the environment is the whole config
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        self.starts += 1
        self.restart_at = None

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill(self) -> None:
        if self.process is not None and self.alive():
            self.process.send_signal(signal.SIGKILL)
            self.process.wait()
            self.kills += 1

    def stop(self, timeout: float = 15.0) -> None:
        if self.process is None or not self.alive():
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def _worker_env(
    role: str, schema: str, dsn: str, pubsub_host: str, breakage: str | None
) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OUTBOX_", "PUBSUB_"))}
    env["PYTHONPATH"] = os.pathsep.join(
        [*([str(ROOT / "tests" / "chaos" / "breaks")] if breakage else []), str(ROOT)]
    )
    if breakage:
        env["CHAOS_BREAK"] = breakage
    common = {
        "DSN": dsn,
        "SCHEMA": schema,
        "POOL__CONNECT_TIMEOUT": "3s",
        "PUBSUB__PROJECT": PROJECT,
        "PUBSUB__EMULATOR_HOST": pubsub_host,
        "PUBSUB__CONNECT_TIMEOUT": "5s",
    }
    if role == "relay":
        own = {
            "PUBLISHER__ENABLED": "true",
            "PUBLISHER__TOPIC": TOPICS[schema],
            "PUBLISHER__BATCH_SIZE": str(BATCH_SIZE),
            "PUBLISHER__WORKERS": str(WORKERS),
            "PUBLISHER__LOCK_TTL": f"{LOCK_TTL}s",
            "PUBLISHER__PUBLISH_TIMEOUT": "2s",
            "PUBLISHER__TICK_INTERVAL": "500ms",
            "PUBLISHER__SHUTDOWN_TIMEOUT": "3s",
            "PUBLISHER__MAX_ATTEMPTS": "100000",
            "PUBLISHER__BACKOFF__INITIAL": "100ms",
            "PUBLISHER__BACKOFF__MAX": "2s",
            "INBOX__ENABLED": "false",
        }
    else:
        own = {
            "PUBLISHER__ENABLED": "false",
            "INBOX__ENABLED": "true",
            "INBOX__SUBSCRIPTION": f"{TOPICS[schema]}-inbox",
            "INBOX__BATCH_SIZE": str(BATCH_SIZE),
            "INBOX__WORKERS": str(WORKERS),
            "INBOX__LOCK_TTL": f"{LOCK_TTL}s",
            "INBOX__HANDLER_TIMEOUT": "2s",
            "INBOX__MAX_ATTEMPTS": "100000",
            "INBOX__RETRY_DELAY": "100ms",
            "INBOX__SHUTDOWN_TIMEOUT": "3s",
        }
    env.update({f"OUTBOX_{key}": value for key, value in {**common, **own}.items()})
    return env


# -- the broker side ---------------------------------------------------------------------------


class Audit:
    """Every copy published on a topic, read from an audit subscription of its own: by event id,
    the distinct broker message ids (a redelivery of one copy has the same id)."""

    def __init__(self, host: str, subscription: str) -> None:
        from google.cloud import pubsub_v1  # type: ignore[import-untyped, unused-ignore]

        from outbox_di.testing import pubsub as pubsub_testing

        with pubsub_testing.emulator_env(host):
            self._client = pubsub_v1.SubscriberClient()
        self._path = self._client.subscription_path(PROJECT, subscription)
        self.copies: dict[str, set[str]] = collections.defaultdict(set)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"audit-{subscription}", daemon=True)
        self.last_seen = time.monotonic()

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                response = self._client.pull(
                    request={"subscription": self._path, "max_messages": 1000}, timeout=5
                )
            except Exception:  # a deadline with nothing to pull, or a busy emulator
                continue
            if not response.received_messages:
                continue
            for item in response.received_messages:
                event_id = item.message.attributes.get("event_id", "")
                self.copies[event_id].add(item.message.message_id)
            self.last_seen = time.monotonic()
            with contextlib.suppress(Exception):
                self._client.acknowledge(
                    request={
                        "subscription": self._path,
                        "ack_ids": [item.ack_id for item in response.received_messages],
                    },
                    timeout=10,
                )

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(15)
        with contextlib.suppress(Exception):
            self._client.close()


def _create_topic(host: str, topic: str) -> None:
    from google.cloud import pubsub_v1  # type: ignore[import-untyped, unused-ignore]

    from outbox_di.testing import pubsub as pubsub_testing

    with pubsub_testing.emulator_env(host):
        publisher = pubsub_v1.PublisherClient()
        subscriber = pubsub_v1.SubscriberClient()
    topic_path = publisher.topic_path(PROJECT, topic)
    publisher.create_topic(request={"name": topic_path})
    for suffix in ("inbox", "audit"):
        subscriber.create_subscription(
            request={
                "name": subscriber.subscription_path(PROJECT, f"{topic}-{suffix}"),
                "topic": topic_path,
                "ack_deadline_seconds": 10,
            }
        )
    subscriber.close()


# -- the schedule ------------------------------------------------------------------------------


@dataclasses.dataclass
class Fault:
    at: float
    kind: str  # kill, pg-crash, broker-outage, pg-stall
    duration: float = 0.0
    target: str = ""
    applied_at: float | None = None
    ended_at: float | None = None


def schedule(seconds: float, kill_every: float, names: Sequence[str], seed: int) -> list[Fault]:
    """The faults of a run of ``seconds``: kills every ``kill_every`` seconds from 5 s, and the
    crash, the broker outage, the stall and the inbox's database cut at 30%, 50%, 72% and 87%
    of the run."""
    rng = random.Random(seed)
    faults = [
        Fault(seconds * 0.30, "pg-crash", PG_DOWN),
        Fault(seconds * 0.50, "broker-outage", BROKER_OUTAGE),
        Fault(seconds * 0.72, "pg-stall", PG_STALL),
        Fault(seconds * 0.87, "inbox-db-cut", INBOX_DB_CUT),
    ]
    at = 5.0
    while at < seconds:
        faults.append(Fault(at, "kill", target=rng.choice(list(names))))
        at += kill_every
    return sorted(faults, key=lambda f: f.at)


# -- the run -----------------------------------------------------------------------------------


@dataclasses.dataclass
class Result:
    schema: str
    committed: int
    published: int
    copies: int
    received: int
    effects: int
    lost: int
    doubled: int
    duplicates: int
    bound: int
    pending: int
    dead: int
    unseen: int


def _query(dsn: str, statement: sql.Composable | str, values: Any = None) -> list[Any]:
    connection = psycopg2.connect(dsn, connect_timeout=5)
    with contextlib.closing(connection) as conn, conn, conn.cursor() as cursor:
        cursor.execute(statement, values)
        return list(cursor.fetchall()) if cursor.description else []


def _prepare(dsn: str) -> None:
    from outbox_di import database

    with database.connect(dsn) as conn:
        for name in SCHEMAS:
            database.migrate(conn, name)
    for name in SCHEMAS:
        _query(
            dsn,
            sql.SQL(
                "CREATE TABLE {s}.chaos_orders (order_id text PRIMARY KEY,"
                " event_id text NOT NULL UNIQUE, created_at timestamptz NOT NULL"
                " DEFAULT clock_timestamp());"
                "CREATE TABLE {s}.chaos_effects (id bigserial PRIMARY KEY,"
                " event_id text NOT NULL, effected_at timestamptz NOT NULL"
                " DEFAULT clock_timestamp());"
                "CREATE INDEX ON {s}.chaos_effects (event_id)"
            ).format(s=sql.Identifier(name)),
        )


def _counts(dsn: str, name: str) -> tuple[int, int]:
    """(orders committed, orders with an effect) of one schema."""
    [(committed, effected)] = _query(
        dsn,
        sql.SQL(
            "SELECT (SELECT count(*) FROM {s}.chaos_orders),"
            " (SELECT count(DISTINCT event_id) FROM {s}.chaos_effects)"
        ).format(s=sql.Identifier(name)),
    )
    return int(committed), int(effected)


def _recovery(dsn: str, name: str, ended: dt.datetime) -> float | None:
    """Seconds from a fault's end until every order committed before it had its effect."""
    [(latest,)] = _query(
        dsn,
        sql.SQL(
            "SELECT max(e.first) FROM {s}.chaos_orders AS o"
            " JOIN (SELECT event_id, min(effected_at) AS first FROM {s}.chaos_effects"
            "       GROUP BY event_id) AS e USING (event_id)"
            " WHERE o.created_at < %s"
        ).format(s=sql.Identifier(name)),
        (ended,),
    )
    if latest is None:
        return None
    seconds: float = (latest - ended).total_seconds()
    return max(0.0, seconds)


def _result(dsn: str, name: str, audit: Audit, bound: int) -> Result:
    s = sql.Identifier(name)
    [row] = _query(
        dsn,
        sql.SQL(
            "SELECT (SELECT count(*) FROM {s}.chaos_orders),"
            " (SELECT count(*) FROM {s}.outbox_events WHERE status = 'published'),"
            " (SELECT count(*) FROM {s}.outbox_events WHERE status = 'pending'),"
            " (SELECT count(*) FROM {s}.outbox_events WHERE status = 'dead'),"
            " (SELECT count(*) FROM {s}.inbox_events),"
            " (SELECT count(DISTINCT event_id) FROM {s}.chaos_effects),"
            " (SELECT count(*) FROM {s}.chaos_orders AS o WHERE NOT EXISTS"
            "   (SELECT 1 FROM {s}.chaos_effects AS e WHERE e.event_id = o.event_id)),"
            " (SELECT count(*) FROM (SELECT event_id FROM {s}.chaos_effects GROUP BY event_id"
            "   HAVING count(*) > 1) AS d)"
        ).format(s=s),
    )
    committed, published, pending, dead, received, effects, lost, doubled = map(int, row)
    orders = {event_id for (event_id,) in _query(dsn, sql.SQL(
        "SELECT event_id FROM {s}.chaos_orders").format(s=s))}  # fmt: skip
    seen = {event_id for event_id in audit.copies if event_id in orders}
    copies = sum(len(audit.copies[event_id]) for event_id in seen)
    return Result(
        schema=name,
        committed=committed,
        published=published,
        copies=copies,
        received=received,
        effects=effects,
        lost=lost,
        doubled=doubled,
        duplicates=copies - len(seen),
        bound=bound,
        pending=pending,
        dead=dead,
        unseen=len(orders - seen),
    )


@contextlib.contextmanager
def _brokers() -> Iterator[tuple[str, str, str, Any]]:
    """(chaos_a's emulator host, the label of that emulator, chaos_b's host, chaos_b's in-process
    emulator)."""
    from outbox_di.testing import emulator as emulator_module
    from outbox_di.testing import pubsub as pubsub_testing

    with contextlib.ExitStack() as stack:
        binary = pubsub_testing.find_google_emulator()
        if binary is not None:
            google = stack.enter_context(pubsub_testing.GoogleEmulator(binary))
            a_host, label = google.host, "Google's emulator"
        else:
            first = stack.enter_context(emulator_module.InProcessEmulator())
            a_host, label = first.host, "in-process emulator (Google's not installed)"
        b = stack.enter_context(emulator_module.InProcessEmulator())
        yield a_host, label, b.host, b


def run(args: argparse.Namespace) -> int:
    from outbox_di.testing.cluster import PrivateCluster
    from outbox_di.testing.proxy import FaultProxy

    seed = args.seed
    run_dir = Path(tempfile.mkdtemp(prefix="outbox_di_chaos_"))
    names = [f"relay-a{n}" for n in range(RELAYS["chaos_a"])]
    names += [f"relay-b{n}" for n in range(RELAYS["chaos_b"])]
    names += ["inbox-a", "inbox-b"]
    faults = schedule(args.seconds, args.kill_every, names, seed)
    print(f"outbox_di chaos run: {args.events} events in about {args.seconds:.0f} s, seed {seed}")
    if args.breakage:
        print(f"deliberately broken: {args.breakage} (the run must fail)")
    print(f"processes' logs: {run_dir}")
    print("schedule (seconds from the start of the producers):")
    kills = [f for f in faults if f.kind == "kill"]
    print(
        f"  every {args.kill_every:g} s from 5 s: SIGKILL of a relay or inbox process "
        f"({len(kills)} kills), restarted 1 s later"
    )
    for fault in faults:
        if fault.kind != "kill":
            print(f"  {fault.at:6.1f} s  {fault.kind} for {fault.duration:g} s")
    sys.stdout.flush()

    cluster = PrivateCluster(
        settings={"max_connections": "300", "shared_buffers": "128MB", "fsync": "on"}
    )
    failures: list[str] = []
    with contextlib.ExitStack() as stack:
        cluster.start()
        stack.callback(cluster.remove)
        _prepare(cluster.dsn)
        # Two network paths to the database: the relays' and the inbox workers' (a consumer's
        # database may be cut off while its broker keeps delivering).
        relay_db = stack.enter_context(FaultProxy("127.0.0.1", cluster.port))
        inbox_db = stack.enter_context(FaultProxy("127.0.0.1", cluster.port))
        db_proxies = {"relay": relay_db, "inbox": inbox_db}
        a_host, a_label, b_host, b_emulator = stack.enter_context(_brokers())
        a_host_name, a_port = a_host.rsplit(":", 1)
        broker_proxy = stack.enter_context(FaultProxy(a_host_name, int(a_port)))
        _create_topic(a_host, TOPICS["chaos_a"])
        _create_topic(b_host, TOPICS["chaos_b"])
        b_emulator.fail_share(FAIL_SHARE, seed=seed)
        audits = {
            "chaos_a": Audit(a_host, f"{TOPICS['chaos_a']}-audit"),  # not through the proxy
            "chaos_b": Audit(b_host, f"{TOPICS['chaos_b']}-audit"),
        }
        for audit in audits.values():
            audit.start()
            stack.callback(audit.stop)
        print(f"chaos_a: {a_label} behind a proxy; chaos_b: in-process emulator failing "
              f"{FAIL_SHARE:.0%} of publish calls; PostgreSQL {cluster.bindir} on port "
              f"{cluster.port}, relays and inbox workers through a proxy each")  # fmt: skip

        hosts = {"chaos_a": broker_proxy.host, "chaos_b": b_host}
        workers: dict[str, Worker] = {}
        for name in names:
            role = "relay" if name.startswith("relay") else "inbox"
            schema_name = "chaos_a" if name.endswith(("a0", "a1", "-a")) else "chaos_b"
            workers[name] = Worker(
                name,
                role,
                schema_name,
                _worker_env(
                    role,
                    schema_name,
                    f"postgresql://postgres@127.0.0.1:{db_proxies[role].port}/postgres",
                    hosts[schema_name],
                    args.breakage,
                ),
                run_dir / f"{name}.log",
            )
        for worker in workers.values():
            worker.start()
            stack.callback(worker.stop)
        time.sleep(3.0)  # the workers' imports and start-up checks

        producers = []
        per_producer = [args.events // args.producers] * args.producers
        per_producer[0] += args.events - sum(per_producer)
        rate = args.events / args.seconds / args.producers
        for number, count in enumerate(per_producer):
            producers.append(
                subprocess.Popen(
                    [sys.executable, "-m", "tests.chaos.run", "produce", "--dsn", cluster.dsn,
                     "--rate", f"{rate:.3f}", "--events", str(count), "--seed",
                     str(seed + number), "--producer", str(number)],
                    cwd=ROOT,
                    env={**os.environ, "PYTHONPATH": str(ROOT)},
                    stdout=subprocess.PIPE,
                    text=True,
                )
            )  # fmt: skip
        started = time.monotonic()
        wall_start = dt.datetime.now(dt.timezone.utc)

        def wall(offset: float) -> dt.datetime:
            return wall_start + dt.timedelta(seconds=offset)

        pending_faults = list(faults)
        active: list[tuple[float, Fault]] = []
        while True:
            now = time.monotonic() - started
            _supervise(workers, now)
            while pending_faults and pending_faults[0].at <= now:
                fault = pending_faults.pop(0)
                try:
                    _apply(fault, workers, cluster, db_proxies, broker_proxy, now)
                except Exception as exc:
                    failures.append(f"{fault.kind} at {fault.at:.1f} s: not applied ({exc})")
                    continue
                if fault.duration:
                    active.append((now + fault.duration, fault))
                else:
                    fault.ended_at = now + 1.0  # the restart
            for end, fault in list(active):
                if now >= end:
                    _end(fault, cluster, db_proxies, broker_proxy)
                    fault.ended_at = time.monotonic() - started
                    active.remove((end, fault))
            if all(p.poll() is not None for p in producers) and not pending_faults and not active:
                break
            time.sleep(0.05)
        produced_for = time.monotonic() - started
        for process in producers:
            out, _ = process.communicate()
            if process.returncode != 0:
                failures.append(f"a producer exited with {process.returncode}")
            elif args.verbose:
                print("producer:", out.strip())
        print(f"producers done after {produced_for:.1f} s; waiting for quiet")
        sys.stdout.flush()

        # Quiet: every committed order has its effect, and no worker is restarting.
        quiet_by = time.monotonic() + args.quiet_timeout
        while True:
            now = time.monotonic() - started
            _supervise(workers, now)
            counts = [_counts(cluster.dsn, name) for name in SCHEMAS]
            if all(committed == effected for committed, effected in counts):
                break
            if time.monotonic() > quiet_by:
                failures.append(
                    f"no quiet within {args.quiet_timeout:g} s after the producers: "
                    f"{[c - e for c, e in counts]} orders still without an effect"
                )
                break
            time.sleep(0.5)
        quiet_after = time.monotonic() - started - produced_for
        time.sleep(args.settle)  # late copies (a lease that expires now) would show up by now
        for worker in workers.values():
            worker.stop()
        for audit in audits.values():
            deadline = time.monotonic() + 20
            while time.monotonic() - audit.last_seen < 3 and time.monotonic() < deadline:
                time.sleep(0.5)

        relay_kills = {
            name: sum(w.kills for w in workers.values() if w.schema == name and w.role == "relay")
            for name in SCHEMAS
        }
        results: list[Result] = []
        for name in SCHEMAS:
            # What leases explain: a killed relay's claims in flight (its workers' batches), and
            # for a crash, a stall (and for chaos_a, the broker outage) the batches in flight
            # of every relay of the schema (a mark lost in the crash, a publish answer cut off).
            shared_faults = 2 + (1 if name == "chaos_a" else 0)
            in_flight = WORKERS * BATCH_SIZE
            bound = (relay_kills[name] + shared_faults * RELAYS[name]) * in_flight
            results.append(_result(cluster.dsn, name, audits[name], bound))

        _report(results, faults, workers, cluster.dsn, wall, quiet_after, b_emulator)
        for result in results:
            if result.lost:
                failures.append(f"{result.schema}: {result.lost} events lost")
            if result.doubled:
                failures.append(f"{result.schema}: {result.doubled} effects happened twice")
            if result.duplicates > result.bound:
                failures.append(
                    f"{result.schema}: {result.duplicates} duplicate publishes, more than the "
                    f"{result.bound} that leases explain"
                )
        applied = collections.Counter(f.kind for f in faults if f.applied_at is not None)
        for kind in ("kill", "pg-crash", "broker-outage", "pg-stall", "inbox-db-cut"):
            if not applied[kind]:
                failures.append(f"fault {kind} was never applied")
        if args.breakage:
            print(f"(deliberately broken: {args.breakage})")
    if failures:
        print("FAILED:")
        for failure in failures:
            print(f"  - {failure}")
        print(f"logs kept in {run_dir}")
        return 1
    print("PASSED: nothing lost, no effect twice, every duplicate explained by a lease")
    if not args.keep_logs:
        import shutil

        shutil.rmtree(run_dir, ignore_errors=True)
    return 0


def _supervise(workers: dict[str, Worker], now: float) -> None:
    """Start again, a second after it exited, every worker that is not running (killed, or its
    start-up check failed), as a process supervisor would."""
    for worker in workers.values():
        if not worker.alive() and worker.restart_at is None:
            worker.restart_at = now + 1.0
        if worker.restart_at is not None and now >= worker.restart_at:
            worker.start()


def _apply(
    fault: Fault,
    workers: dict[str, Worker],
    cluster: Any,
    db_proxies: dict[str, Any],
    broker_proxy: Any,
    now: float,
) -> None:
    if fault.kind == "kill":
        worker = workers[fault.target]
        if not worker.alive():
            # Restarting (killed just before, or a start-up check failed): the next one alive.
            alive = [w for w in workers.values() if w.alive()]
            if not alive:
                raise RuntimeError("no worker process alive to kill")
            worker = alive[0]
            fault.target = worker.name
        worker.kill()
        worker.restart_at = now + 1.0
    elif fault.kind == "pg-crash":
        cluster.crash()
    elif fault.kind == "broker-outage":
        broker_proxy.cut()
    elif fault.kind == "pg-stall":
        for proxy in db_proxies.values():
            proxy.hold()
    elif fault.kind == "inbox-db-cut":
        db_proxies["inbox"].cut()
    fault.applied_at = now


def _end(fault: Fault, cluster: Any, db_proxies: dict[str, Any], broker_proxy: Any) -> None:
    if fault.kind == "pg-crash":
        cluster.start()
    elif fault.kind == "broker-outage":
        broker_proxy.restore()
    elif fault.kind == "pg-stall":
        for proxy in db_proxies.values():
            if proxy.mode == "hold":  # a cut that overlaps the stall lasts its own time
                proxy.restore()
    elif fault.kind == "inbox-db-cut":
        db_proxies["inbox"].restore()


def _report(
    results: Sequence[Result],
    faults: Sequence[Fault],
    workers: dict[str, Worker],
    dsn: str,
    wall: Any,
    quiet_after: float,
    b_emulator: Any,
) -> None:
    print()
    header = f"{'':<36}" + "".join(f"{r.schema:>12}" for r in results)
    print(header)
    rows: list[tuple[str, list[object]]] = [
        ("events committed (with their orders)", [r.committed for r in results]),
        ("published (rows marked)", [r.published for r in results]),
        ("copies on the topic (audit)", [r.copies for r in results]),
        ("received (inbox rows)", [r.received for r in results]),
        ("effects", [r.effects for r in results]),
        ("lost (committed, no effect)", [r.lost for r in results]),
        ("effects twice", [r.doubled for r in results]),
        ("duplicate publishes", [r.duplicates for r in results]),
        ("  bound that leases explain", [r.bound for r in results]),
        ("never on the topic", [r.unseen for r in results]),
        ("left pending / dead", [f"{r.pending} / {r.dead}" for r in results]),
    ]
    for label, values in rows:
        print(f"{label:<36}" + "".join(f"{v!s:>12}" for v in values))
    print()
    print("faults (recovery: from the fault's end until every event committed before it had "
          "its effect, slowest schema)")  # fmt: skip
    kill_recoveries: list[float] = []
    for fault in faults:
        if fault.applied_at is None or fault.ended_at is None:
            continue
        ended = wall(fault.ended_at)
        found = [_recovery(dsn, name, ended) for name in SCHEMAS]
        recovery = max((r for r in found if r is not None), default=float("nan"))
        if fault.kind == "kill":
            kill_recoveries.append(recovery)
            continue
        meanwhile = sum(
            1
            for kill in faults
            if kill.kind == "kill"
            and kill.applied_at is not None
            and fault.applied_at <= kill.applied_at <= fault.ended_at + recovery
        )
        print(f"  {fault.kind:<14} at {fault.applied_at:6.1f} s for {fault.duration:4.1f} s:"
              f" recovered {recovery:5.1f} s after ({meanwhile} kills meanwhile)")  # fmt: skip
    if kill_recoveries:
        killed = collections.Counter(f.target for f in faults if f.kind == "kill" and f.applied_at)
        print(f"  kill           {len(kill_recoveries)} times "
              f"({', '.join(f'{n} x{c}' for n, c in sorted(killed.items()))}): recovered "
              f"{statistics.median(kill_recoveries):.1f} s after (median), "
              f"{max(kill_recoveries):.1f} s (max)")  # fmt: skip
    print(f"  quiet {quiet_after:.1f} s after the producers stopped; in-process emulator failed "
          f"{b_emulator.failed_by_share} publish calls; worker starts: "
          f"{sum(w.starts for w in workers.values())}")  # fmt: skip


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.chaos.run", description=__doc__)
    sub = parser.add_subparsers(dest="command")
    producer = sub.add_parser("produce", help="(internal) one producer process")
    producer.add_argument("--dsn", required=True)
    producer.add_argument("--rate", type=float, required=True)
    producer.add_argument("--events", type=int, required=True)
    producer.add_argument("--seed", type=int, default=0)
    producer.add_argument("--producer", type=int, default=0)
    parser.add_argument("--events", type=int, default=100_000, help="default 100,000")
    parser.add_argument("--seconds", type=float, default=540.0, help="producing time (540)")
    parser.add_argument("--producers", type=int, default=2)
    parser.add_argument("--kill-every", type=float, default=5.0, help="seconds between kills")
    parser.add_argument("--seed", type=int, default=int(os.environ.get("CHAOS_SEED", "1")))
    parser.add_argument("--quiet-timeout", type=float, default=180.0)
    parser.add_argument("--settle", type=float, default=5.0)
    parser.add_argument("--break", dest="breakage", choices=BREAKS, default=None)
    parser.add_argument("--keep-logs", action="store_true")
    parser.add_argument("--verbose", action="store_true")
    args = parser.parse_args(argv)
    if args.command == "produce":
        produce(args.dsn, args.rate, args.events, args.seed, args.producer)
        return 0

    def interrupted(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)  # unwinds the run: workers, emulators and cluster stop

    signal.signal(signal.SIGTERM, interrupted)
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
