"""The relay from the outbox table to a broker: the task, its backoff, an in-memory publisher
for tests (the broker adapters are in :mod:`outbox_di.brokers`)."""

from __future__ import annotations
