"""Dropped events and refused requests, counted and reported at once, then at most once a second."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

__all__ = ["REPORT_INTERVAL", "DropReports"]

REPORT_INTERVAL = 1.0
"""Seconds between two reports of dropped events or refused requests (the first is at once)."""

KINDS = ("events_dropped", "requests_refused")


class DropReports:
    """Counts per kind; `report(kind, count, total)` gets what was counted since the last report.

    A flood of drops or refusals costs one report a second, not one each.
    """

    def __init__(self, report: Callable[[str, int, int], None]) -> None:
        self._report = report
        self._counts = dict.fromkeys(KINDS, 0)  # not yet reported
        self._totals = dict.fromkeys(KINDS, 0)
        self._report_at = 0.0
        self._handle: asyncio.TimerHandle | None = None
        self._closed = False

    def count(self, what: str) -> None:
        """Count a dropped event or refused request; reported at once, then at most every 1 s."""
        self._counts[what] += 1
        self._totals[what] += 1
        if self._handle is not None or self._closed:
            return
        loop = asyncio.get_running_loop()
        delay = max(0.0, self._report_at + REPORT_INTERVAL - loop.time())
        self._handle = loop.call_later(delay, self._flush)

    def close(self) -> None:
        """Report nothing more (what is still counted is left unreported)."""
        self._closed = True
        if self._handle is not None:
            self._handle.cancel()

    def _flush(self) -> None:
        self._handle = None
        self._report_at = asyncio.get_running_loop().time()
        for what, count in self._counts.items():
            if count:
                self._counts[what] = 0
                self._report(what, count, self._totals[what])
