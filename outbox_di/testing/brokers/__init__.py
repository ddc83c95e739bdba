"""The test kit's view of a broker: a topic and a subscription made for one test.

A :class:`Channel` is what the contract suites and a service's own tests need from any broker:
names to put in the configuration (``publisher.topic``, ``inbox.subscription``), a way to
publish raw messages as another service would (the inbox's side), and a way to read what the
relay published (the outbox's side). ``temporary_channel(settings, prefix)`` of each broker's
module here makes one with fresh names, attached to each other, and deletes both afterwards;
:func:`temporary_channel` picks the module of ``settings.broker``.

A broker that does not answer is skipped, never failed: ``unavailable(settings)`` says why.
"""

from __future__ import annotations

import dataclasses
import importlib
import types
import uuid
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Protocol

from outbox_di import config as config_module
from outbox_di import models

__all__ = ["Channel", "Probed", "outbox_event", "temporary_channel", "unavailable"]


@dataclasses.dataclass(frozen=True)
class Probed:
    """One message read back from a channel's subscription."""

    payload: bytes
    attributes: dict[str, str]
    message_id: str | None = None


class Channel(Protocol):
    """A topic and a subscription attached to it, made for one test."""

    @property
    def topic(self) -> str:
        """The topic's name as ``publisher.topic`` takes it."""

    @property
    def subscription(self) -> str:
        """The subscription's name as ``inbox.subscription`` takes it."""

    async def publish(self, messages: Sequence[tuple[bytes, Mapping[str, str]]]) -> None:
        """Publish ``(payload, attributes)`` pairs to the topic, in order, each confirmed by
        the broker before this returns."""

    async def pull(
        self, done: Callable[[Sequence[Probed]], bool], within: float = 15.0
    ) -> list[Probed]:
        """Read (and acknowledge) what arrives on the subscription until ``done(received)``
        or ``within`` seconds; everything received, redeliveries included."""

    def subscribe(self, prefix: str = "extra") -> AbstractAsyncContextManager[str]:
        """Another subscription to the topic (a second consumer), deleted on exit; its name
        as ``inbox.subscription`` takes it. It gets what is published after it was made."""


def _module(broker: str) -> types.ModuleType:
    if broker not in config_module.BROKERS:
        raise ValueError(f"unknown broker {broker!r}")
    return importlib.import_module(f"outbox_di.testing.brokers.{broker}")


def temporary_channel(
    settings: config_module.OutboxConfig, prefix: str = "test"
) -> AbstractAsyncContextManager[Channel]:
    """A fresh :class:`Channel` on ``settings.broker``, deleted on exit."""
    factory = _module(settings.broker).temporary_channel
    channel: AbstractAsyncContextManager[Channel] = factory(settings, prefix)
    return channel


def unavailable(settings: config_module.OutboxConfig) -> str | None:
    """Why ``settings.broker`` cannot be used for tests here (its client library is missing,
    its server does not answer), or None when it can."""
    try:
        module = _module(settings.broker)
    except ImportError as exc:
        return f"the {settings.broker} client is not installed ({exc})"
    reason: str | None = module.unavailable(settings)
    return reason


def outbox_event(
    payload: bytes = b"{}",
    *,
    event_type: str = "order.created",
    aggregate_type: str = "order",
    aggregate_id: str = "1",
    headers: dict[str, str] | None = None,
    seq: int = 1,
) -> models.OutboxEvent:
    """An outbox row as a claim hands it to a publisher (pending, leased, a fresh event id):
    for testing a :class:`~outbox_di.brokers.ports.Publisher` without a database."""
    now = models.utcnow()
    return models.claimed_event(
        uuid.uuid4(),
        seq,
        aggregate_type,
        aggregate_id,
        event_type,
        payload,
        dict(headers or {}),
        None,
        now,
        now,
        0,
        None,
        uuid.uuid4(),
        now,
    )
