"""The Publisher protocol the relay talks to, and an in-memory publisher for tests and benches.

A publisher gets a claimed batch and returns one :class:`PublishOutcome` per event, in order.
It never raises for a broker problem: a failed event gets an outcome with ``error`` set, and
``permanent=True`` when retrying cannot help (a message over the broker's size limit, no topic
for the event type), which dead-letters the row at once.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from outbox_di import models


@dataclasses.dataclass(frozen=True, slots=True)
class PublishOutcome:
    """What happened to one event of a batch."""

    message_id: str | None = None
    error: str | None = None
    permanent: bool = False

    @property
    def ok(self) -> bool:
        return self.error is None


@runtime_checkable
class Publisher(Protocol):
    """What the relay needs from a broker client."""

    async def start(self) -> None:
        """Check the configuration against the broker (topics exist); fail fast if not."""

    async def publish(self, events: Sequence[models.OutboxEvent]) -> Sequence[PublishOutcome]:
        """Publish ``events``; one outcome per event, in the same order."""

    async def close(self) -> None:
        """Release the broker client."""


class InMemoryPublisher:
    """Records what it is asked to publish; with fault injection, for tests and benchmarks."""

    def __init__(self) -> None:
        self.published: list[models.OutboxEvent] = []
        self.batches = 0
        self._fail_next = 0
        self._error = "injected failure"
        self._delay = 0.0
        self._permanent = False

    def fail_next(
        self, count: int, error: str = "injected failure", *, permanent: bool = False
    ) -> None:
        """The next ``count`` events fail with ``error``."""
        self._fail_next = count
        self._error = error
        self._permanent = permanent

    def set_delay(self, seconds: float) -> None:
        """Every publish call takes at least ``seconds`` (a slow broker)."""
        self._delay = seconds

    async def start(self) -> None:
        return None

    async def publish(self, events: Sequence[models.OutboxEvent]) -> Sequence[PublishOutcome]:
        if self._delay:
            await asyncio.sleep(self._delay)
        self.batches += 1
        outcomes: list[PublishOutcome] = []
        for event in events:
            if self._fail_next > 0:
                self._fail_next -= 1
                outcomes.append(PublishOutcome(error=self._error, permanent=self._permanent))
            else:
                self.published.append(event)
                outcomes.append(PublishOutcome(message_id=str(len(self.published))))
        return outcomes

    async def close(self) -> None:
        return None
