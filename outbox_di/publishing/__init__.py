"""The relay from the outbox table to a broker: protocol, Pub/Sub publisher, task, backoff."""

from __future__ import annotations
