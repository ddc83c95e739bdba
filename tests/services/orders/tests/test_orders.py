"""The orders service under test: its production container, overridden for the test."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import orders_service
import pytest
from broker import Broker
from fastapi.testclient import TestClient

from outbox_di import Message, OutboxRepository

T = TypeVar("T")


def eventually(probe: Callable[[], T | None], timeout: float = 20.0) -> T:
    deadline = time.monotonic() + timeout
    while True:
        found = probe()
        if found is not None:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"nothing after {timeout}s")
        time.sleep(0.1)


@pytest.fixture
def client(outbox_dsn: str, orders_schema: str, broker: Broker) -> Iterator[TestClient]:
    """The service's app on the test database and broker: its own container, overridden."""
    container = orders_service.container
    orders_service.app.dependency_overrides[orders_service.database_url] = lambda: outbox_dsn
    try:
        with (
            container.override_config(
                dsn=outbox_dsn,
                schema=orders_schema,
                publisher={"topic": broker.events_topic},
                inbox={"subscription": broker.payments},
                pubsub={"emulator_host": broker.host, "project": broker.project},
            ),
            TestClient(orders_service.app) as test_client,
        ):
            yield test_client
    finally:
        orders_service.app.dependency_overrides.clear()


def test_an_order_is_stored_and_its_event_relayed(client: TestClient, broker: Broker) -> None:
    placed = client.post("/orders", json={"id": "o-1", "amount": 12})
    assert placed.status_code == 201, placed.text
    assert client.get("/orders/o-1").json() == {"id": "o-1", "amount": 12, "status": "placed"}

    def pulled() -> Any:
        response = broker.subscriber.pull(
            subscription=broker.events_watch, max_messages=10, timeout=5
        )
        return response.received_messages or None

    [received] = eventually(pulled)
    assert received.message.attributes["event_type"] == "order.placed"
    assert received.message.attributes["event_id"] == placed.json()["event_id"]
    assert json.loads(received.message.data) == {"id": "o-1", "amount": 12}


def test_a_captured_payment_marks_the_order_paid_once(client: TestClient, broker: Broker) -> None:
    assert client.post("/orders", json={"id": "o-2", "amount": 30}).status_code == 201
    attributes = {
        "event_id": "pay-o-2",
        "event_type": "payment.captured",
        "aggregate_type": "order",
        "aggregate_id": "o-2",
    }
    for _ in range(2):  # a duplicate delivery runs the handler once
        broker.publisher.publish(broker.payments_topic, b'{"amount": 30}', **attributes).result()

    def paid() -> dict[str, Any] | None:
        order: dict[str, Any] = client.get("/orders/o-2").json()
        return order if order["status"] == "paid" else None

    assert eventually(paid)["status"] == "paid"


@pytest.mark.asyncio
async def test_the_plugins_async_fixtures_work_in_strict_mode(
    outbox_repository: OutboxRepository, outbox_pool: Any
) -> None:
    async with outbox_pool.acquire() as conn, conn.cursor() as cursor:
        await cursor.execute("BEGIN")
        await outbox_repository.enqueue(cursor, Message("order", "o-3", "order.placed", {}))
        await cursor.execute("COMMIT")
    assert await outbox_repository.count_pending() == 1


def test_production_settings_are_untouched_after_the_override() -> None:
    # The overrides of the tests above are gone: the service's own configuration is back.
    assert orders_service.container.settings().schema == "orders"
    assert "orders-db.internal" in orders_service.container.settings().dsn
