"""On a real PostgreSQL: the operator commands print neither payloads nor header values, nor a
DSN's password; the relay's and the inbox's metric attributes and log lines hold no password;
hostile operator arguments are data, never SQL."""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import uuid
from typing import Any

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from outbox_di import cli, config, database, errors, models, repository
from outbox_di.inbox.worker import InboxWorker
from outbox_di.publishing.base import InMemoryPublisher
from outbox_di.publishing.task import PublisherTask
from outbox_di.testing.publisher_suite import metric_points

pytestmark = pytest.mark.integration

PASSWORD = "Hunter2-pw-7f3a"  # the server trusts 127.0.0.1: any password connects
PAYLOAD = b'{"card": "4111-PAYLOAD-SECRET"}'
HEADER_VALUE = "HEADER-SECRET-9c1d"


def _with_password(dsn: str) -> str:
    assert dsn.startswith("postgresql://postgres@"), dsn
    return dsn.replace("postgresql://postgres@", f"postgresql://postgres:{PASSWORD}@", 1)


def _cli(*argv: str) -> tuple[int, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main(list(argv))
    return code, out.getvalue() + err.getvalue()


async def _dead_rows(
    pool: Any, outbox: repository.OutboxRepository, inbox: repository.InboxRepository
) -> None:
    message = models.Message(
        "card", "c-1", "\x1b[31mcard.charged", PAYLOAD, {"x-note": HEADER_VALUE}
    )
    async with pool.acquire() as conn, conn.cursor() as cursor:
        await cursor.execute("BEGIN")
        await outbox.enqueue(cursor, message)
        await cursor.execute("COMMIT")
    now = models.utcnow()
    [event] = await outbox.claim_pending(now, now, 10, token := uuid.uuid4())
    await outbox.mark_dead(event.event_id, token, "dead after permanent error: refused")
    received = models.ReceivedMessage(
        str(uuid.uuid4()), "card.charged", PAYLOAD, {"x-note": HEADER_VALUE}, "m-1"
    )
    await inbox.record_dead("billing", received, "no handler registered for event type 'x'")


async def test_operator_commands_print_no_payload_no_header_and_no_password(
    outbox_pool: Any,
    outbox_repository: repository.OutboxRepository,
    inbox_repository: repository.InboxRepository,
    outbox_dsn: str,
) -> None:
    await _dead_rows(outbox_pool, outbox_repository, inbox_repository)
    dsn = _with_password(outbox_dsn)
    common = ("--schema", outbox_repository.schema, "--dsn", dsn)
    outputs: list[str] = []
    for argv in (
        ("status", *common),
        ("status", *common, "--json"),
        ("dead", "list", *common),
        ("dead", "list", *common, "--json"),
        ("dead", "list", *common, "--inbox"),
        ("dead", "list", *common, "--inbox", "--json"),
        ("purge", *common, "--older-than", "7d"),
        ("dead", "retry", *common, "--event-type", "x'; DROP TABLE outbox_events; --"),
        ("dead", "discard", *common, "--id", "'; DELETE FROM inbox_events; --", "--inbox"),
    ):
        code, output = _cli(*argv)
        assert code == 0, (argv, output)
        outputs.append(output)
    everything = "\n".join(outputs)
    assert "card.charged" in everything, "the dead rows were listed"
    for secret in ("PAYLOAD-SECRET", HEADER_VALUE, PASSWORD):
        assert secret not in everything
    assert "\x1b" not in everything and "\\x1b[31mcard.charged" in everything
    # The hostile --event-type and --id matched nothing and dropped nothing.
    assert await outbox_repository.count_pending() == 0
    assert await inbox_repository.count_dead("billing") == 1
    assert "0 dead outbox event(s) made pending again" in outputs[7]

    # A server that does not answer: the error names the DSN, password masked.
    unreachable = f"postgresql://postgres:{PASSWORD}@127.0.0.1:1/postgres"
    code, output = _cli("status", "--schema", outbox_repository.schema, "--dsn", unreachable)
    assert code == 2 and "postgres:***@127.0.0.1:1" in output and PASSWORD not in output


async def test_metric_attributes_log_lines_and_start_errors_hold_no_password(
    outbox_pool: Any,
    outbox_repository: repository.OutboxRepository,
    inbox_repository: repository.InboxRepository,
    outbox_dsn: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="outbox_di")
    dsn = _with_password(outbox_dsn)
    cfg = config.OutboxConfig.from_mapping(
        {
            "schema": outbox_repository.schema,
            "dsn": dsn,
            "publisher": {"topic": "cards", "max_attempts": 1, "tick_interval": "50ms"},
            "inbox": {"consumer": "billing", "retry_delay": "10ms", "max_attempts": 1},
        }
    )
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    meter = provider.get_meter("security")
    async with outbox_pool.acquire() as conn, conn.cursor() as cursor:
        await cursor.execute("BEGIN")
        await outbox_repository.enqueue(cursor, models.Message("card", "c-1", "card.charged", {}))
        await outbox_repository.enqueue(cursor, models.Message("card", "c-2", "card.charged", {}))
        await cursor.execute("COMMIT")
    await inbox_repository.record_received(
        "billing", models.ReceivedMessage(str(uuid.uuid4()), "card.charged", b"{}")
    )
    await inbox_repository.record_received(
        "billing", models.ReceivedMessage(str(uuid.uuid4()), "unhandled", b"{}")
    )
    publisher = InMemoryPublisher()
    publisher.fail_next(1, "refused", permanent=True)

    async def failing(event: models.InboxEvent) -> None:
        raise ValueError("boom")

    task = PublisherTask(cfg, outbox_repository, publisher, meter=meter)
    worker = InboxWorker(
        cfg, inbox_repository, {"card.charged": failing}, meter=meter, poll_interval=0.05
    )
    async with task, worker:
        for _ in range(200):
            if worker.stats.dead == 2 and len(publisher.published) == 1:
                break
            await asyncio.sleep(0.02)
    assert worker.stats.dead == 2 and len(publisher.published) == 1
    points = metric_points(reader)
    attributes = [
        str(value) for found in points.values() for p in found for value in p.attributes.values()
    ]
    assert attributes, "metrics were recorded"
    assert outbox_repository.schema in attributes
    assert not [value for value in attributes if PASSWORD in value]
    provider.shutdown()

    # The start-up check of an unmigrated schema gives the migrate command, password masked.
    with pytest.raises(errors.SchemaNotReadyError) as info:
        await database.require_schema(outbox_pool, f"missing_{uuid.uuid4().hex[:8]}", dsn)
    assert "postgres:***@" in str(info.value)

    logged = [record.getMessage() + repr(record.__dict__) for record in caplog.records]
    assert any("dead" in line for line in logged)
    assert not [line for line in logged if PASSWORD in line]
    assert PASSWORD not in repr(cfg) and PASSWORD not in str(info.value)
