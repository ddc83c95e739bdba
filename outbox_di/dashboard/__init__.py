"""A web dashboard of one or more outbox_di schemas: backlog, publish rate and lag over the last
hour, dead events with retry and discard (the same code as ``outbox-di dead``). It has no login:
mount it behind the service's own authentication. ``import outbox_di`` does not load it."""

from __future__ import annotations

from outbox_di.dashboard.core import (
    ACTION_HEADER,
    Backend,
    Dashboard,
    PostgresBackend,
    Request,
    Response,
    Series,
)

__all__ = [
    "ACTION_HEADER",
    "Backend",
    "Dashboard",
    "PostgresBackend",
    "Request",
    "Response",
    "Series",
]
