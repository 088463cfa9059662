"""Jittered exponential backoff: the one rule for MQTT reconnect and session restart delays."""

from __future__ import annotations

import random


def backoff_delay(attempt: int, initial: float, maximum: float) -> float:
    """Seconds before retry `attempt` (0-based): doubling from initial, capped at maximum, times
    a random factor in [0.5, 1] ("equal jitter": never zero, and clients never retry in step)."""
    ceiling = min(maximum, initial * 2.0 ** min(attempt, 30))
    return ceiling * random.uniform(0.5, 1.0)


class Backoff:
    """The delays of successive retries, until reset() after a success."""

    def __init__(self, initial: float = 1.0, maximum: float = 60.0) -> None:
        self.initial = initial
        self.maximum = maximum
        self.attempt = 0

    def next(self) -> float:
        delay = backoff_delay(self.attempt, self.initial, self.maximum)
        self.attempt += 1
        return delay

    def reset(self) -> None:
        self.attempt = 0
