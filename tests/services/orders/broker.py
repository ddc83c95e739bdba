"""The orders service's topics and subscriptions for one test, on a Pub/Sub emulator."""

from __future__ import annotations

import uuid

from google.cloud import pubsub_v1  # type: ignore[import-untyped, unused-ignore]

from outbox_di.testing.pubsub import EmulatorEndpoint


class Broker:
    """The topics and subscriptions of one test, on an emulator."""

    def __init__(self, endpoint: EmulatorEndpoint) -> None:
        suffix = uuid.uuid4().hex[:8]
        self.host = endpoint.host
        self.project = "orders-test"
        self.publisher = pubsub_v1.PublisherClient()
        self.subscriber = pubsub_v1.SubscriberClient()
        self.events_topic = self.publisher.topic_path(self.project, f"orders-events-{suffix}")
        self.events_watch = self.subscriber.subscription_path(self.project, f"watch-{suffix}")
        self.payments_topic = self.publisher.topic_path(self.project, f"payments-{suffix}")
        self.payments = self.subscriber.subscription_path(self.project, f"payments-{suffix}")

    def create(self) -> None:
        self.publisher.create_topic(name=self.events_topic)
        self.subscriber.create_subscription(name=self.events_watch, topic=self.events_topic)
        self.publisher.create_topic(name=self.payments_topic)
        self.subscriber.create_subscription(name=self.payments, topic=self.payments_topic)

    def delete(self) -> None:
        for subscription in (self.events_watch, self.payments):
            self.subscriber.delete_subscription(subscription=subscription)
        for topic in (self.events_topic, self.payments_topic):
            self.publisher.delete_topic(topic=topic)
        self.publisher.transport.close()
        self.subscriber.close()
