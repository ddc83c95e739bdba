"""A process that only enqueues does not load grpc or Pub/Sub's client: ``import outbox_di``, the
container and the web integrations leave them out (about half of the modules and of the import
time); the publisher and the receiver load them when they are used."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

WEB_PROCESS = """
import json, sys
import outbox_di
from outbox_di import Message, Outbox, OutboxContainer
import outbox_di.cli
import outbox_di.integrations.aiohttp
import outbox_di.integrations.fastapi

container = OutboxContainer(
    config={"schema": "catalog", "dsn": "postgresql://db/catalog", "run_workers": False,
            "publisher": {"topic": "events"}}
)
Message("item", "1", "item.created", {"id": 1})
loaded = sorted(
    name for name in sys.modules
    if name == "grpc" or name.startswith(("grpc.", "google.pubsub", "google.cloud.pubsub"))
)
first = len(sys.modules)
publisher_class = outbox_di.PubSubPublisher
from outbox_di import InboxReceiver
print(json.dumps({"loaded": loaded, "modules": first, "after": len(sys.modules),
                  "publisher": publisher_class.__module__, "receiver": InboxReceiver.__module__}))
"""


def test_an_enqueue_only_process_does_not_load_grpc() -> None:
    found = subprocess.run(
        [sys.executable, "-c", WEB_PROCESS], capture_output=True, text=True, check=True
    )
    report = json.loads(found.stdout)
    assert report["loaded"] == []
    assert report["publisher"] == "outbox_di.brokers.pubsub.publisher"
    assert report["receiver"] == "outbox_di.inbox.receiver"
    assert report["after"] > report["modules"] + 100  # the lazy names brought grpc in


BROKER_WEB_PROCESS = """
import json, sys
from outbox_di import Message, Outbox, OutboxContainer
import outbox_di.integrations.fastapi

for broker in ("rabbitmq", "nats", "redis"):
    OutboxContainer(
        config={"schema": "catalog", "dsn": "postgresql://db/catalog", "run_workers": False,
                "broker": broker, "publisher": {"topic": "events"}}
    ).settings()
clients = ("aio_pika", "aiormq", "nats", "redis", "grpc", "google.pubsub_v1")
prefixes = tuple(client + "." for client in clients)
print(json.dumps(sorted(
    name for name in sys.modules if name in clients or name.startswith(prefixes)
)))
"""


def test_a_web_process_loads_no_broker_client_whatever_the_broker() -> None:
    found = subprocess.run(
        [sys.executable, "-c", BROKER_WEB_PROCESS], capture_output=True, text=True, check=True
    )
    assert json.loads(found.stdout) == []


def test_the_public_names_are_the_few_a_service_uses() -> None:
    import outbox_di

    assert sorted(outbox_di.__all__) == [
        "ConfigError",
        "DatabaseError",
        "InboxEvent",
        "InboxHandlers",
        "Message",
        "NotInTransactionError",
        "Outbox",
        "OutboxConfig",
        "OutboxContainer",
        "OutboxError",
        "__version__",
        "load_settings",
    ]
    # The names of 0.1.0 still resolve, from their own modules.
    from outbox_di.inbox.worker import InboxWorker
    from outbox_di.repository import OutboxRepository

    assert outbox_di.OutboxRepository is OutboxRepository
    assert outbox_di.InboxWorker is InboxWorker


def test_an_unknown_name_is_still_an_attribute_error() -> None:
    import outbox_di

    with pytest.raises(AttributeError, match="NoSuchThing"):
        _ = outbox_di.NoSuchThing
