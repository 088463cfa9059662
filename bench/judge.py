"""Repeats of a benchmark folded into medians with their spread, and issue 13's targets."""

from __future__ import annotations

import statistics
from typing import Any

LIMIT_P99_RATIO = 1.2
LIMIT_SD_P99_RATIO = 1.5
LIMIT_RATE_RATIO = 0.8
LIMIT_CPU_RATIO = 1.3
LIMIT_SEND_P50_MS = 0.3
CPU_RATE = 300


def runs(value: Any) -> list[dict[str, Any]]:
    """The repeats of one target's result (schema 1 stored a single dict)."""
    if value is None:
        return []
    return [v for v in (value if isinstance(value, list) else [value]) if v]


def median(values: list[float]) -> float | None:
    values = [v for v in values if v is not None and v == v]
    return statistics.median(values) if values else None


def spread(values: list[float], digits: int = 2) -> str:
    values = [v for v in values if v is not None and v == v]
    if not values:
        return "—"
    return f"{statistics.median(values):.{digits}f} ({min(values):.{digits}f} to {max(values):.{digits}f})"


def folded(value: Any) -> dict[str, Any] | None:
    """A latency result over repeats: the median of each figure, plus the repeats' p99s."""
    items = runs(value)
    if not items:
        return None
    out: dict[str, Any] = {"repeats": len(items)}
    for key in ("p50", "p90", "p99", "max", "mean", "count", "lost"):
        out[key] = median([float(r[key]) for r in items if key in r])
    out["lost"] = sum(int(r.get("lost") or 0) for r in items)
    out["p99_runs"] = [r["p99"] for r in items]
    out["p50_runs"] = [r["p50"] for r in items]
    return out


def cpu_ms_per_message(step: dict[str, Any]) -> float:
    """CPU time per message of a throughput step: % of one core over the offered rate."""
    return float(step["cpu_percent"]) * 10.0 / float(step["rate"])


def _ratio_row(figure: str, now: str, target: str, lkb: list[float], base: list[float],
               limit: float, *, digits: int = 2) -> dict[str, Any]:  # fmt: skip
    lm, bm = median(lkb), median(base)
    if lm is None or bm is None or not bm:
        return {"figure": figure, "now": now, "target": target, "measured": "not measured",
                "met": None}  # fmt: skip
    pairs = [a / b for a, b in zip(lkb, base, strict=False) if b]
    value = lm / bm
    measured = (
        f"{value:.2f}x ({lm:.{digits}f} vs {bm:.{digits}f}; per repeat "
        f"{', '.join(f'{p:.2f}x' for p in pairs)})"
    )
    return {"figure": figure, "now": now, "target": target, "measured": measured,
            "met": value <= limit if limit >= 1 else value >= limit}  # fmt: skip


def targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Issue 13's figures, each judged on the median over repeats (spread shown)."""
    rows: list[dict[str, Any]] = []
    fs = (results.get("fsyncs") or {}).get("lkbridge")
    if fs:
        t, s = fs["transcription"], fs["send"]
        rows.append({
            "figure": "fsyncs per partial transcript update / per final message",
            "now": "1 / 1", "target": "0 / ≤ 1",
            "measured": f"{t['fsyncs']} fsyncs for {t['chunks']} chunks ({t['chunks'] - t['finals']}"
                        f" partial updates) and {t['finals']} finals: {t['fsyncs_per_final_if_none_per_chunk']:.2f}"
                        f" per final if 0 per partial (unit test: exactly 0 per partial); sends:"
                        f" {s['fsyncs_per_send']:.2f} per send (journal batch + loopback final)",
            "met": t["fsyncs"] <= t["finals"],
        })  # fmt: skip
    lt = results.get("latency_transcription") or {}
    rows.append(_ratio_row(
        "chunk → message event p99, lkbridge / baseline (median of runs)", "1.25 to 1.83x",
        f"≤ {LIMIT_P99_RATIO}x", [r["p99"] for r in runs(lt.get("lkbridge"))],
        [r["p99"] for r in runs(lt.get("baseline"))], LIMIT_P99_RATIO))  # fmt: skip
    sd = results.get("latency_transcription_sd") or {}
    rows.append(_ratio_row(
        "chunk → event p99 with the SD-card stand-in, lkbridge / baseline", "unmeasured",
        f"≤ {LIMIT_SD_P99_RATIO}x", [r["p99"] for r in runs(sd.get("lkbridge"))],
        [r["p99"] for r in runs(sd.get("baseline"))], LIMIT_SD_P99_RATIO))  # fmt: skip
    tp = results.get("throughput") or {}
    best = {n: [float(r["best_rate"] or 0) for r in runs(tp.get(n))] for n in ("lkbridge", "baseline")}
    rows.append(_ratio_row(
        "highest rate, one session, zero loss and p99 < 50 ms", "200 vs 750 msg/s",
        f"≥ {LIMIT_RATE_RATIO}x the baseline's", best["lkbridge"], best["baseline"],
        LIMIT_RATE_RATIO, digits=0))  # fmt: skip
    cpu = {
        n: [cpu_ms_per_message(s) for r in runs(tp.get(n)) for s in r["steps"] if s["rate"] == CPU_RATE]
        for n in ("lkbridge", "baseline")
    }  # fmt: skip
    rows.append(_ratio_row(
        f"CPU per message at {CPU_RATE} msg/s, lkbridge / baseline (ms of CPU)", "1.6x",
        f"≤ {LIMIT_CPU_RATIO}x", cpu["lkbridge"], cpu["baseline"], LIMIT_CPU_RATIO, digits=3))  # fmt: skip
    ls = results.get("latency_send") or {}
    lkb, base = runs(ls.get("lkbridge")), runs(ls.get("baseline"))
    if lkb and base:
        diffs = [a["p50"] - b["p50"] for a, b in zip(lkb, base, strict=False)]
        lm, bm = median([r["p50"] for r in lkb]), median([r["p50"] for r in base])
        assert lm is not None and bm is not None
        rows.append({
            "figure": "send → lk.chat p50 overhead", "now": "+0.24 ms",
            "target": f"≤ +{LIMIT_SEND_P50_MS} ms (keep)",
            "measured": f"{lm - bm:+.2f} ms ({lm:.2f} vs {bm:.2f}; per repeat "
                        f"{', '.join(f'{d:+.2f}' for d in diffs)})",
            "met": lm - bm <= LIMIT_SEND_P50_MS,
        })  # fmt: skip
    return rows


def targets_markdown(results: dict[str, Any]) -> str:
    lines = ["| figure | now | target | measured median (spread) | met? |", "|---|---|---|---|---|"]
    for r in targets(results):
        met = "—" if r["met"] is None else ("yes" if r["met"] else "**no**")
        lines.append(f"| {r['figure']} | {r['now']} | {r['target']} | {r['measured']} | {met} |")
    return "\n".join(lines)
