"""Percentile summaries of latency samples."""

from __future__ import annotations

import math
from collections.abc import Sequence

PERCENTILES = (50, 90, 99)


def percentile(sorted_values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile of already sorted values."""
    if not sorted_values:
        return math.nan
    rank = max(1, math.ceil(p / 100 * len(sorted_values)))
    return sorted_values[rank - 1]


def summarize(samples_ms: Sequence[float]) -> dict[str, float | int]:
    """count, p50, p90, p99, max and mean (milliseconds), rounded to microseconds."""
    values = sorted(samples_ms)
    summary: dict[str, float | int] = {"count": len(values)}
    for p in PERCENTILES:
        summary[f"p{p}"] = round(percentile(values, p), 3)
    summary["max"] = round(values[-1], 3) if values else math.nan
    summary["mean"] = round(sum(values) / len(values), 3) if values else math.nan
    return summary
