"""Deliberate breakages for the chaos run (``--break NAME``): imported at interpreter start by the
worker processes of a broken run only (this folder is put first on their ``PYTHONPATH``).

The run must fail with each of them; they exist to show that it can.

* ``ack-before-store``: the inbox receiver acknowledges a batch before its insert commits;
* ``mark-before-ack``: the publisher reports success before the broker acknowledged the publish
  (the publish goes on in the background), so the relay marks rows published too early.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Sequence
from typing import Any

BREAK = os.environ.get("CHAOS_BREAK", "")


def _ack_before_store() -> None:
    from outbox_di.inbox.receiver import InboxReceiver

    settle = InboxReceiver._settle

    async def broken(self: Any, received: Sequence[Any]) -> int:
        await self._acknowledge([item.ack_id for item in received])

        async def already_acknowledged(ack_ids: Sequence[str]) -> None:
            return None

        self._acknowledge = already_acknowledged
        try:
            return await settle(self, received)
        finally:
            del self._acknowledge

    InboxReceiver._settle = broken  # type: ignore[method-assign]


def _mark_before_ack() -> None:
    from outbox_di.brokers.pubsub import PubSubPublisher
    from outbox_di.publishing import base

    publish = PubSubPublisher.publish
    background: set[asyncio.Future[Any]] = set()

    async def broken(self: Any, events: Sequence[Any]) -> Sequence[base.PublishOutcome]:
        future = asyncio.ensure_future(publish(self, events))
        background.add(future)
        future.add_done_callback(background.discard)
        return [base.PublishOutcome(message_id="not-acknowledged-yet") for _ in events]

    PubSubPublisher.publish = broken  # type: ignore[method-assign]


if BREAK == "ack-before-store":
    _ack_before_store()
elif BREAK == "mark-before-ack":
    _mark_before_ack()
elif BREAK:
    raise SystemExit(f"CHAOS_BREAK={BREAK!r}: unknown breakage")
