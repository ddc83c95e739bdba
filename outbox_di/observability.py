"""Metric instruments, log fields and span names (the names are a contract).

Only ``opentelemetry-api`` is used. Without an SDK configured by the service every instrument is
a no-op; with ``metrics_enabled: false`` the library asks for no instruments at all.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from opentelemetry import metrics, trace
from opentelemetry.metrics import Meter

INSTRUMENTATION_NAME = "outbox_di"

# Outbox metrics (attributes: schema, event_type).
PUBLISH_SUCCESS = "outbox_publish_success_total"
PUBLISH_FAILURE = "outbox_publish_failure_total"
PUBLISH_LATENCY = "outbox_publish_latency_ms"
PUBLISH_LAG = "outbox_publish_lag_ms"
OUTBOX_PENDING = "outbox_pending_gauge"
OUTBOX_DEAD = "outbox_dead_total"
OUTBOX_OLDEST_PENDING_AGE = "outbox_oldest_pending_age_ms"

# Inbox metrics (attributes: schema, event_type, consumer).
INBOX_SUCCESS = "inbox_process_success_total"
INBOX_FAILURE = "inbox_process_failure_total"
INBOX_LATENCY = "inbox_process_latency_ms"
INBOX_PENDING = "inbox_pending_gauge"
INBOX_DUPLICATE = "inbox_duplicate_total"
INBOX_DEAD = "inbox_dead_total"
INBOX_OLDEST_PENDING_AGE = "inbox_oldest_pending_age_ms"

# Log record fields (passed with ``extra=``), so log pipelines can index them. The first five
# are the seed's; ``event_type``, ``consumer`` (inbox), ``lock_token`` (a lost lease) and
# ``error`` (a failure) were added after them. Names are never renamed or removed.
LOG_FIELDS = (
    "event_id",
    "aggregate_id",
    "attempt",
    "latency_ms",
    "lag_ms",
    "event_type",
    "consumer",
    "lock_token",
    "error",
    "schema",
)
_LOG_FIELD_SET = frozenset(LOG_FIELDS)

SPAN_PUBLISH = "outbox publish"
SPAN_HANDLE = "inbox handle"

logger = logging.getLogger("outbox_di")


def get_meter(meter: Meter | None = None) -> Meter:
    """The given meter, else the global provider's (a no-op until a service configures one)."""
    return meter if meter is not None else metrics.get_meter(INSTRUMENTATION_NAME)


def get_tracer() -> trace.Tracer:
    return trace.get_tracer(INSTRUMENTATION_NAME)


def tracing_configured() -> bool:
    """Whether the service installed a tracer provider (else spans would be no-ops)."""
    provider = trace.get_tracer_provider()
    return not isinstance(provider, (trace.ProxyTracerProvider, trace.NoOpTracerProvider))


def current_traceparent() -> str | None:
    """The W3C ``traceparent`` of the active span, or ``None`` outside a (valid) span."""
    context = trace.get_current_span().get_span_context()
    if not context.is_valid:
        return None
    return f"00-{context.trace_id:032x}-{context.span_id:016x}-{int(context.trace_flags):02x}"


def link_to(traceparent: str | None) -> list[trace.Link]:
    """A span link to the context a ``traceparent`` names (none when absent or malformed)."""
    if not traceparent:
        return []
    parts = traceparent.split("-")
    if len(parts) != 4 or len(parts[1]) != 32 or len(parts[2]) != 16:
        return []
    try:
        context = trace.SpanContext(
            trace_id=int(parts[1], 16),
            span_id=int(parts[2], 16),
            is_remote=True,
            trace_flags=trace.TraceFlags(int(parts[3], 16)),
        )
    except ValueError:
        return []
    return [trace.Link(context)] if context.is_valid else []


class _Attributes:
    """Attribute dicts built once per event type, not once per event."""

    def __init__(self, base: Mapping[str, str]) -> None:
        self._base = dict(base)
        self._cache: dict[str, dict[str, str]] = {}

    def __call__(self, event_type: str) -> dict[str, str]:
        found = self._cache.get(event_type)
        if found is None:
            found = {**self._base, "event_type": event_type}
            self._cache[event_type] = found
        return found


class OutboxMetrics:
    """The publisher's instruments for one schema."""

    def __init__(self, meter: Meter | None, schema: str, *, enabled: bool = True) -> None:
        self.enabled = enabled
        self.attributes = _Attributes({"schema": schema})
        self.schema_attributes = {"schema": schema}
        if not enabled:
            return
        m = get_meter(meter)
        self.success = m.create_counter(
            PUBLISH_SUCCESS, unit="1", description="Events published and acknowledged by the broker"
        )
        self.failure = m.create_counter(
            PUBLISH_FAILURE, unit="1", description="Failed publish attempts (retried or dead)"
        )
        self.latency = m.create_histogram(
            PUBLISH_LATENCY, unit="ms", description="Publish round trip to the broker, per batch"
        )
        self.lag = m.create_histogram(
            PUBLISH_LAG, unit="ms", description="Enqueue commit to broker acknowledgement"
        )
        self.pending = m.create_gauge(
            OUTBOX_PENDING, unit="1", description="Outbox rows not yet published nor dead"
        )
        self.dead = m.create_counter(OUTBOX_DEAD, unit="1", description="Events dead-lettered")
        self.oldest_pending_age = m.create_gauge(
            OUTBOX_OLDEST_PENDING_AGE, unit="ms", description="Age of the oldest pending event"
        )

    def published(self, event_type: str, count: int) -> None:
        if self.enabled:
            self.success.add(count, self.attributes(event_type))

    def failed(self, event_type: str, count: int = 1) -> None:
        if self.enabled:
            self.failure.add(count, self.attributes(event_type))

    def dead_lettered(self, event_type: str) -> None:
        if self.enabled:
            self.dead.add(1, self.attributes(event_type))

    def record_latency(self, latency_ms: float, event_type: str) -> None:
        if self.enabled:
            self.latency.record(latency_ms, self.attributes(event_type))

    def record_lag(self, lag_ms: float, event_type: str) -> None:
        if self.enabled:
            self.lag.record(lag_ms, self.attributes(event_type))

    def set_backlog(self, pending: int, oldest_age_ms: float) -> None:
        if self.enabled:
            self.pending.set(pending, self.schema_attributes)
            self.oldest_pending_age.set(oldest_age_ms, self.schema_attributes)


def log_extra(**fields: Any) -> dict[str, Any]:
    """``extra=`` for a log call, restricted to the contract's field names."""
    unknown = fields.keys() - _LOG_FIELD_SET
    if unknown:
        raise ValueError(f"not a log field of the contract: {sorted(unknown)}")
    return fields


class InboxMetrics:
    """The inbox receiver's and worker's instruments for one schema and consumer."""

    def __init__(
        self, meter: Meter | None, schema: str, consumer: str, *, enabled: bool = True
    ) -> None:
        self.enabled = enabled
        self.attributes = _Attributes({"schema": schema, "consumer": consumer})
        self.consumer_attributes = {"schema": schema, "consumer": consumer}
        if not enabled:
            return
        m = get_meter(meter)
        self.success = m.create_counter(
            INBOX_SUCCESS, unit="1", description="Inbox events processed by their handler"
        )
        self.failure = m.create_counter(
            INBOX_FAILURE, unit="1", description="Failed handler runs (retried or dead)"
        )
        self.latency = m.create_histogram(
            INBOX_LATENCY, unit="ms", description="Handler run time, per event"
        )
        self.pending = m.create_gauge(
            INBOX_PENDING, unit="1", description="Inbox rows not yet processed nor dead"
        )
        self.duplicate = m.create_counter(
            INBOX_DUPLICATE, unit="1", description="Deliveries of an event already in the inbox"
        )
        self.dead = m.create_counter(
            INBOX_DEAD, unit="1", description="Inbox events parked as dead"
        )
        self.oldest_pending_age = m.create_gauge(
            INBOX_OLDEST_PENDING_AGE, unit="ms", description="Age of the oldest pending inbox row"
        )

    def processed(self, event_type: str, count: int = 1) -> None:
        if self.enabled:
            self.success.add(count, self.attributes(event_type))

    def failed(self, event_type: str, count: int = 1) -> None:
        if self.enabled:
            self.failure.add(count, self.attributes(event_type))

    def dead_lettered(self, event_type: str, count: int = 1) -> None:
        if self.enabled:
            self.dead.add(count, self.attributes(event_type))

    def duplicates(self, event_type: str, count: int) -> None:
        if self.enabled and count:
            self.duplicate.add(count, self.attributes(event_type))

    def record_latency(self, latency_ms: float, event_type: str) -> None:
        if self.enabled:
            self.latency.record(latency_ms, self.attributes(event_type))

    def set_backlog(self, pending: int, oldest_age_ms: float) -> None:
        if self.enabled:
            self.pending.set(pending, self.consumer_attributes)
            self.oldest_pending_age.set(oldest_age_ms, self.consumer_attributes)
