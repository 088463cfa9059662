"""The one backoff rule: doubling, capped, jittered into [0.5, 1] of the ceiling, reset on success."""

from __future__ import annotations

from lkbridge.backoff import Backoff, backoff_delay


def test_delays_double_up_to_the_cap_within_the_jitter() -> None:
    backoff = Backoff(1.0, 8.0)
    for ceiling in (1.0, 2.0, 4.0, 8.0, 8.0):
        delay = backoff.next()
        assert ceiling * 0.5 <= delay <= ceiling


def test_reset_starts_again_from_the_initial_delay() -> None:
    backoff = Backoff(1.0, 60.0)
    for _ in range(5):
        backoff.next()
    backoff.reset()
    assert 0.5 <= backoff.next() <= 1.0


def test_thousands_of_attempts_stay_at_the_cap() -> None:
    backoff = Backoff(1.0, 60.0)
    backoff.attempt = 5000  # a session restarted for days: no float overflow
    assert 30.0 <= backoff.next() <= 60.0
    assert 30.0 <= backoff_delay(10**6, 1.0, 60.0) <= 60.0
