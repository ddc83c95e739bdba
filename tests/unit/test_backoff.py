"""``backoff.retry_delay``: the exponential curve, its cap and the jitter's bounds."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from outbox_di.publishing import backoff


def test_without_jitter_it_doubles_from_initial_up_to_the_cap() -> None:
    delays = [
        backoff.retry_delay(attempt, initial=1.0, maximum=10.0, multiplier=2.0, jitter=0.0)
        for attempt in range(1, 7)
    ]
    assert delays == [1.0, 2.0, 4.0, 8.0, 10.0, 10.0]


def test_attempt_zero_or_below_counts_as_the_first() -> None:
    for attempt in (0, -3):
        assert (
            backoff.retry_delay(attempt, initial=0.5, maximum=10.0, multiplier=3.0, jitter=0.0)
            == 0.5
        )


def test_a_huge_attempt_does_not_overflow_and_stays_at_the_cap() -> None:
    for attempt in (1_000, 10_000, 10**9):
        delay = backoff.retry_delay(attempt, initial=1.0, maximum=300.0, multiplier=2.0, jitter=0.0)
        assert delay == 300.0


def test_jitter_spreads_delays_within_its_fraction() -> None:
    rng = random.Random(7)
    delays = [
        backoff.retry_delay(3, initial=1.0, maximum=100.0, multiplier=2.0, jitter=0.25, rng=rng)
        for _ in range(2000)
    ]
    assert min(delays) >= 4.0 * 0.75
    assert max(delays) <= 4.0 * 1.25
    # Spread over the band, not stuck at one end: rows failing together do not retry together.
    assert min(delays) < 3.2 and max(delays) > 4.8
    assert len(set(delays)) > 1900


def test_jitter_never_pushes_a_capped_delay_above_the_cap() -> None:
    rng = random.Random(3)
    delays = [
        backoff.retry_delay(50, initial=1.0, maximum=30.0, multiplier=2.0, jitter=0.2, rng=rng)
        for _ in range(1000)
    ]
    assert max(delays) <= 30.0
    assert min(delays) >= 30.0 * 0.8
    assert max(delays) == 30.0  # the upper half of the band is clipped to the cap


def test_the_given_rng_makes_it_reproducible() -> None:
    def run(seed: int) -> list[float]:
        rng = random.Random(seed)
        return [
            backoff.retry_delay(n, initial=1.0, maximum=60.0, multiplier=2.0, jitter=0.5, rng=rng)
            for n in range(1, 20)
        ]

    assert run(11) == run(11)
    assert run(11) != run(12)


def _expected(attempt: int, initial: float, maximum: float, multiplier: float) -> float:
    """The unjittered delay, computed another way: the cap is reached once the curve passes it."""
    delay = initial
    for _ in range(max(0, attempt - 1)):
        if delay >= maximum:
            break
        delay *= multiplier
    return min(delay, maximum)


@given(
    attempt=st.integers(min_value=-5, max_value=2_000),
    initial=st.floats(min_value=0.001, max_value=1_000.0),
    maximum=st.floats(min_value=0.0, max_value=10_000.0),
    multiplier=st.floats(min_value=1.0, max_value=10.0),
    jitter=st.floats(min_value=0.0, max_value=1.0),
    seed=st.integers(min_value=0, max_value=2**32),
)
def test_never_negative_never_above_the_cap_and_within_the_jitter_band(
    attempt: int, initial: float, maximum: float, multiplier: float, jitter: float, seed: int
) -> None:
    delay = backoff.retry_delay(
        attempt,
        initial=initial,
        maximum=maximum,
        multiplier=multiplier,
        jitter=jitter,
        rng=random.Random(seed),
    )
    unjittered = backoff.retry_delay(
        attempt, initial=initial, maximum=maximum, multiplier=multiplier, jitter=0.0
    )
    assert unjittered == pytest.approx(_expected(attempt, initial, maximum, multiplier))
    assert 0.0 <= delay <= maximum
    assert delay >= unjittered * (1.0 - jitter) * (1 - 1e-12)
    assert delay <= min(unjittered * (1.0 + jitter), maximum) * (1 + 1e-12)
