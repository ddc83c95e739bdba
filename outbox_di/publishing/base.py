"""An in-memory publisher for tests and benches, and the relay's names for the publisher port.

:class:`Publisher` and :class:`PublishOutcome` are defined in :mod:`outbox_di.brokers.ports`
(with the subscriber port); they are imported here for the relay's code.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from outbox_di import models
from outbox_di.brokers.ports import Publisher, PublishOutcome

__all__ = ["InMemoryPublisher", "PublishOutcome", "Publisher"]


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
