"""A wall-clock reading that wall-clock jumps cannot move: for send-id windows."""

from __future__ import annotations

import time

__all__ = ["SteadyClock"]


class SteadyClock:
    """Seconds since the epoch, read from the wall clock once and then advanced by the
    monotonic clock, so that setting the clock (NTP's first sync on a device without a
    real-time clock, a manual change) moves nothing while the process runs.

    `floor` (e.g. the newest time already written) is where it starts if the wall clock reads
    earlier, so times it gives never go back, even across restarts on a clock set back.
    """

    def __init__(self, floor: float = 0.0) -> None:
        self._start = max(time.time(), floor)
        self._started = time.monotonic()

    def now(self) -> float:
        return self._start + (time.monotonic() - self._started)
