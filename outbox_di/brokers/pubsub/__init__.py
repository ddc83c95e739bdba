"""Google Cloud Pub/Sub: the relay's publisher, the inbox's subscriber, their names and clients.

Importing this package loads grpc and the Pub/Sub client; the library imports it only when
``broker = "pubsub"`` (the default) starts a publisher or a subscriber.
"""

from __future__ import annotations

from outbox_di.brokers.pubsub.publisher import PubSubPublisher
from outbox_di.brokers.pubsub.subscriber import PubSubSubscriber

__all__ = ["PubSubPublisher", "PubSubSubscriber"]
