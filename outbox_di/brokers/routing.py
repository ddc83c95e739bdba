"""Which topic each event goes to, the same on every broker."""

from __future__ import annotations

from collections.abc import Callable

from outbox_di import config as config_module
from outbox_di import models
from outbox_di.brokers.ports import PublishOutcome

__all__ = ["TopicRouter", "unrouted"]


def _as_named(name: str, key: str) -> str:
    return name


class TopicRouter:
    """Chooses each event's topic: ``topics[event_type]``, else ``topics[aggregate_type]``,
    else ``topic``. Names are resolved once, at construction: ``{schema}`` in them replaced by
    the schema's name, then ``resolve(name, key)`` (Pub/Sub makes a full topic path of it)."""

    def __init__(
        self,
        settings: config_module.OutboxConfig,
        resolve: Callable[[str, str], str] = _as_named,
    ) -> None:
        publisher = settings.publisher

        def named(topic: str, key: str) -> str:
            # {schema} in a name: this schema's topic (one relay, several schemas).
            made = config_module.topic_for_schema(topic, settings.schema, key, settings.broker)
            return resolve(made, key)

        self.default = named(publisher.topic, "publisher.topic") if publisher.topic else None
        self.routes = {
            route: named(topic, f"publisher.topics.{route}")
            for route, topic in publisher.topics.items()
        }

    def topic_for(self, event: models.OutboxEvent) -> str | None:
        routes = self.routes
        if routes:
            found = routes.get(event.event_type) or routes.get(event.aggregate_type)
            if found:
                return found
        return self.default

    def configured(self) -> dict[str, str]:
        """Every configured topic with the key that names it."""
        named = {f"publisher.topics.{route}": topic for route, topic in self.routes.items()}
        if self.default:
            named["publisher.topic"] = self.default
        return named


def unrouted(event: models.OutboxEvent, kind: str = "topic") -> PublishOutcome:
    """The permanent failure of an event that no topic (``kind``: the broker's word for it)
    takes: retrying cannot help until the configuration routes it."""
    return PublishOutcome(
        error=(
            f"no {kind} for event_type {event.event_type!r} / aggregate_type "
            f"{event.aggregate_type!r}: set publisher.topic or publisher.topics"
        ),
        permanent=True,
    )
