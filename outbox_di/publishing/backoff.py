"""Capped exponential backoff with jitter, for publish retries and database outages."""

from __future__ import annotations

import random

MAX_OUTAGE_DELAY = 5.0
"""Longest wait between two tries of a loop that lost its database or its broker (the relay's
and the inbox's loops, the receiver): an outage's end is noticed within it. A try costs one
connection attempt, so a short cap is cheap; with 30 s, a 60 s failover could leave a loop idle
for up to 30 s more."""


def retry_delay(
    attempt: int,
    *,
    initial: float,
    maximum: float,
    multiplier: float,
    jitter: float,
    rng: random.Random | None = None,
) -> float:
    """Seconds to wait after failed attempt number ``attempt`` (1 for the first failure).

    ``initial * multiplier**(attempt-1)``, capped at ``maximum``, then spread by up to
    ``±jitter`` (a fraction) so that rows failing together do not retry in lockstep. Never
    negative, never above ``maximum``.
    """
    exponent = max(0, attempt - 1)
    try:
        base = initial * multiplier**exponent
    except OverflowError:
        base = maximum
    base = min(base, maximum)
    if jitter:
        base *= 1.0 + (rng or random).uniform(-jitter, jitter)
    return max(0.0, min(base, maximum))


def listen_retry_delay(failures: int, rng: random.Random | None = None) -> float:
    """Seconds before a lost LISTEN connection is opened again, after ``failures`` failures in a
    row: 0.5 s doubling up to ``MAX_OUTAGE_DELAY``, ±20 % jitter (the poll covers the gap)."""
    return retry_delay(
        failures, initial=0.5, maximum=MAX_OUTAGE_DELAY, multiplier=2.0, jitter=0.2, rng=rng
    )
