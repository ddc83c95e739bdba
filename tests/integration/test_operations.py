"""Operator commands against a real PostgreSQL: status, dead list/retry/discard, purge."""

from __future__ import annotations

import datetime as dt
import json
import uuid
from typing import Any

import pytest

from outbox_di import cli, models, repository, schema

pytestmark = pytest.mark.integration

TTL = dt.timedelta(seconds=30)


async def _seed(pool: Any, outbox: repository.OutboxRepository) -> dict[str, list[uuid.UUID]]:
    """2 published (old), 1 in flight, 1 failing, 2 dead (1 per type), 3 waiting."""
    messages = [
        models.Message("item", f"i{n}", "item.created" if n % 2 else "item.deleted", {"n": n})
        for n in range(9)
    ]
    async with pool.acquire() as conn, conn.cursor() as cursor, cursor.begin():
        ids = await outbox.enqueue_many(cursor, messages)
    now = models.utcnow()
    long_ago = now - dt.timedelta(days=10)
    token = uuid.uuid4()
    claimed = await outbox.claim_pending(now, now - TTL, 6, token)
    assert [e.event_id for e in claimed] == ids[:6]
    await outbox.mark_published(ids[0:2], token, long_ago)
    await outbox.reschedule(ids[3], token, now + dt.timedelta(hours=1), "broker down")
    await outbox.mark_dead(ids[4], token, "payload too large")
    await outbox.mark_dead(ids[5], token, "no topic")
    # ids[2] stays leased (in flight); ids[6:] are waiting.
    return {
        "published": ids[0:2],
        "in_flight": [ids[2]],
        "failing": [ids[3]],
        "dead": ids[4:6],
        "waiting": ids[6:],
    }


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    code = cli.main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out + captured.err


async def test_status_counts_per_event_type(
    outbox_pool: Any,
    outbox_repository: repository.OutboxRepository,
    inbox_repository: repository.InboxRepository,
    outbox_dsn: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    await _seed(outbox_pool, outbox_repository)
    await inbox_repository.record_received(
        "billing", models.ReceivedMessage("e1", "order.paid", b"{}")
    )
    schema = outbox_repository.schema
    code, out = _run(capsys, "status", "--dsn", outbox_dsn, "--schema", schema, "--json")
    assert code == 0
    rows = {(r["table"], r["consumer"], r["event_type"]): r for r in json.loads(out)}
    created = rows[("outbox", None, "item.created")]
    deleted = rows[("outbox", None, "item.deleted")]
    # ids 1,3,5,7 are item.created: 3 failing, 5 dead, 7 waiting; 1 published.
    assert (created["pending"], created["failing"], created["dead"]) == (2, 1, 1)
    # ids 0,2,4,6,8 are item.deleted: 2 in flight, 4 dead, 6 and 8 waiting; 0 published.
    assert (deleted["pending"], deleted["in_flight"], deleted["dead"]) == (3, 1, 1)
    assert deleted["oldest_pending_age_s"] >= 0
    inbox = rows[("inbox", "billing", "order.paid")]
    assert inbox["pending"] == 1 and inbox["dead"] == 0
    code, out = _run(capsys, "status", "--dsn", outbox_dsn, "--schema", schema)
    assert code == 0
    assert "item.created" in out and "in flight" in out and "billing" in out


async def test_dead_list_retry_and_discard(
    outbox_pool: Any,
    outbox_repository: repository.OutboxRepository,
    outbox_dsn: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    seeded = await _seed(outbox_pool, outbox_repository)
    base = ["--dsn", outbox_dsn, "--schema", outbox_repository.schema]
    code, out = _run(capsys, "dead", "list", *base, "--json")
    listed = json.loads(out)
    assert code == 0
    assert [row["event_id"] for row in listed] == [str(i) for i in seeded["dead"]]
    assert listed[0]["last_error"] == "payload too large"
    code, out = _run(capsys, "dead", "list", *base)
    assert "payload too large" in out and "no topic" in out

    before = _deleted_counts(_run(capsys, "status", *base, "--json")[1])
    code, out = _run(capsys, "dead", "retry", *base, "--event-type", "item.deleted")
    assert (code, out.strip()) == (0, "1 dead outbox event(s) made pending again")
    retried = await outbox_repository.get(seeded["dead"][0])
    assert retried is not None
    assert retried.status is models.OutboxStatus.PENDING and retried.delivery_attempts == 0
    # It keeps its last error for the record, but it is no longer counted as failing.
    assert retried.last_error == "payload too large"
    after = _deleted_counts(_run(capsys, "status", *base, "--json")[1])
    assert after == {"pending": before["pending"] + 1, "failing": before["failing"], "dead": 0}

    code, out = _run(capsys, "dead", "discard", *base, "--id", str(seeded["dead"][1]), "--json")
    assert json.loads(out) == {"table": "outbox", "action": "discard", "count": 1}
    assert await outbox_repository.get(seeded["dead"][1]) is None
    code, out = _run(capsys, "dead", "list", *base)
    assert "no dead outbox events" in out

    # A choice is required: nothing is touched by accident.
    with pytest.raises(SystemExit):
        cli.main(["dead", "retry", *base])
    capsys.readouterr()


def _deleted_counts(status_json: str) -> dict[str, int]:
    (row,) = [row for row in json.loads(status_json) if row["event_type"] == "item.deleted"]
    return {key: row[key] for key in ("pending", "failing", "dead")}


async def test_inbox_dead_retry(
    inbox_repository: repository.InboxRepository,
    outbox_dsn: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    await inbox_repository.record_received("b", models.ReceivedMessage("x1", "t.one", b"{}"))
    now = models.utcnow()
    token = uuid.uuid4()
    await inbox_repository.claim("b", now, now - TTL, 10, token)
    await inbox_repository.mark_dead("b", "x1", token, "no handler registered")
    base = ["--dsn", outbox_dsn, "--schema", inbox_repository.schema, "--inbox"]
    code, out = _run(capsys, "dead", "list", *base, "--json")
    [row] = json.loads(out)
    assert (row["consumer"], row["event_id"], row["table"]) == ("b", "x1", "inbox")
    code, out = _run(capsys, "dead", "retry", *base, "--all")
    assert (code, out.strip()) == (0, "1 dead inbox event(s) made pending again")
    assert await inbox_repository.count_pending("b") == 1


async def test_purge_deletes_old_published_rows_in_batches(
    outbox_pool: Any,
    outbox_repository: repository.OutboxRepository,
    outbox_dsn: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    seeded = await _seed(outbox_pool, outbox_repository)
    base = ["--dsn", outbox_dsn, "--schema", outbox_repository.schema]
    code, out = _run(capsys, "purge", *base, "--older-than", "30d", "--json")
    assert json.loads(out) == {"table": "outbox", "deleted": 0}
    code, out = _run(capsys, "purge", *base, "--older-than", "7d", "--batch-size", "1")
    assert (code, out.strip()) == (0, "purged 2 published outbox row(s) older than 7d")
    for event_id in seeded["published"]:
        assert await outbox_repository.get(event_id) is None
    # Pending, in-flight and dead rows are never purged.
    assert await outbox_repository.count_pending() == 5
    code, out = _run(capsys, "purge", *base, "--older-than", "soon")
    assert code == 2 and "--older-than" in out


async def test_inbox_purge(
    inbox_repository: repository.InboxRepository,
    outbox_dsn: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    for n in range(3):
        await inbox_repository.record_received("b", models.ReceivedMessage(f"p{n}", "t", b"{}"))
    now = models.utcnow()
    token = uuid.uuid4()
    await inbox_repository.claim("b", now, now - TTL, 10, token)
    await inbox_repository.mark_processed("b", ["p0", "p1"], token, now - dt.timedelta(days=8))
    base = ["--dsn", outbox_dsn, "--schema", inbox_repository.schema, "--inbox"]
    code, out = _run(capsys, "purge", *base, "--older-than", "7d")
    assert (code, out.strip()) == (0, "purged 2 processed inbox row(s) older than 7d")
    assert await inbox_repository.get("b", "p2") is not None


@pytest.mark.parametrize(
    ("query", "values"),
    [
        ("outbox_status", {"stale_before": dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)}),
        ("inbox_status", {"stale_before": dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)}),
        ("outbox_dead_list", {"event_type": None, "limit": 100}),
        ("inbox_dead_list", {"event_type": None, "limit": 100}),
        ("outbox_dead_retry", {"all": True, "event_type": None, "event_ids": []}),
        ("inbox_dead_retry", {"all": True, "event_type": None, "event_ids": []}),
        ("outbox_dead_discard", {"all": True, "event_type": None, "event_ids": []}),
        ("inbox_dead_discard", {"all": True, "event_type": None, "event_ids": []}),
    ],
)
async def test_operator_queries_read_the_dead_and_pending_rows_by_index(
    outbox_pool: Any,
    outbox_repository: repository.OutboxRepository,
    inbox_repository: repository.InboxRepository,
    query: str,
    values: dict[str, object],
) -> None:
    """Version 2's dead-row indexes: status, dead list, retry and discard do not read the
    published (or processed) rows, however many there are. With sequential scans priced out,
    a query that no index can answer still scans the table, and the plan shows it."""
    await _seed(outbox_pool, outbox_repository)
    await inbox_repository.record_dead(
        "billing", models.ReceivedMessage("in-dead", "order.paid", b"{}"), "no handler"
    )
    queries = schema.Queries(outbox_repository.schema)
    table = query.split("_", 1)[0] + "_events"
    async with outbox_pool.acquire() as conn, conn.cursor() as cursor:
        await cursor.execute("SET enable_seqscan = off")
        await cursor.execute("EXPLAIN (FORMAT JSON) " + queries[query].sql, values)
        [[plan]] = await cursor.fetchall()
        await cursor.execute("RESET enable_seqscan")

    def nodes(node: dict[str, Any]) -> list[dict[str, Any]]:
        return [node, *(n for child in node.get("Plans", ()) for n in nodes(child))]

    scans = [n for n in nodes(plan[0]["Plan"]) if n.get("Relation Name") == table]
    assert scans, f"{query} does not read {table}"
    assert not [n for n in scans if n["Node Type"] == "Seq Scan"], json.dumps(plan, indent=1)
    used = {n.get("Index Name") for n in nodes(plan[0]["Plan"])}
    assert f"{table}_dead_idx" in used, json.dumps(plan, indent=1)
