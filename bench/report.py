"""Tables, targets, charts and the Markdown summary of a benchmark run.

`python -m bench.report bench/results/<run>.json` prints the Markdown tables for
docs/benchmarks.md; add `--charts` to draw the PNG charts again from the JSON.
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.judge import folded, runs, spread, targets, targets_markdown

TARGETS = ("lkbridge", "baseline")
LATENCIES = {
    "latency_send": "1. MQTT send → agent lk.chat handler",
    "latency_transcription": "2. agent lk.transcription chunk → MQTT message event",
    "latency_transcription_sd": "6. chunk → message event, state on the SD-card stand-in",
}
P50_MARGIN_MS = 1.5
P99_FACTOR = 1.5
RATE_TARGET = 500
RSS_MARGIN_MB = 25.0
IDLE_CPU_SESSIONS = 10
IDLE_CPU_LIMIT = 1.0
READY_SESSIONS = 50
READY_LIMIT_S = 1.0


def fmt(value: Any, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def ratio(a: Any, b: Any) -> str:
    try:
        return f"{a / b:.2f}x"
    except (TypeError, ZeroDivisionError):
        return "—"


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]], *, markdown: bool = False) -> str:
    cells = [[str(h) for h in headers], *[[str(c) for c in row] for row in rows]]
    if markdown:
        lines = ["| " + " | ".join(r) + " |" for r in cells]
        lines.insert(1, "|" + "|".join("---" for _ in headers) + "|")
        return "\n".join(lines)
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    return "\n".join("  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)) for r in cells)


# -- one table per benchmark ----------------------------------------------------------------


def latency_table(data: dict[str, Any], *, markdown: bool = False) -> str:
    keys = ("p50", "p90", "p99", "max", "mean")
    rows: list[list[Any]] = []
    for name in TARGETS:
        d = folded(data.get(name))
        if d:
            rows.append([name, *(fmt(d.get(k)) for k in keys), fmt(d.get("count"), 0),
                         d.get("lost"), d["repeats"], spread(d["p99_runs"])])  # fmt: skip
    lkb, base = folded(data.get("lkbridge")), folded(data.get("baseline"))
    if lkb and base:
        rows.append(["lkbridge - baseline (ms)", *(fmt(lkb[k] - base[k]) for k in keys), "", "",
                     "", ""])  # fmt: skip
        rows.append(["lkbridge / baseline", *(ratio(lkb[k], base[k]) for k in keys), "", "", "",
                     ""])  # fmt: skip
    headers = ["ms (median of repeats)", "p50", "p90", "p99", "max", "mean", "messages",
               "lost (all repeats)", "repeats", "p99 median (min to max)"]  # fmt: skip
    return table(headers, rows, markdown=markdown)


def throughput_table(data: dict[str, Any], *, markdown: bool = False) -> str:
    rows = []
    for name in TARGETS:
        steps = [(r, s) for r, res in enumerate(runs(data.get(name)), 1) for s in res["steps"]]
        for repeat, s in steps:
            rows.append([
                f"{name} #{repeat}", s["rate"], s["sent"], s["lost"], fmt(s["p50"]), fmt(s["p99"]),
                fmt(s["max"], 1), fmt(s["cpu_percent"], 0),
                fmt(s.get("cpu_main_thread_percent"), 0), fmt(s["bench_cpu_percent"], 0),
                fmt(s.get("livekit-server_cpu_percent"), 0), fmt(s.get("machine_busy_percent"), 0),
                "yes" if s["ok"] else "NO",
            ])  # fmt: skip
    headers = ["target", "msg/s", "sent", "lost", "p50 ms", "p99 ms", "max ms", "CPU %",
               "loop thread %", "bench CPU %", "server CPU %", "machine busy %",
               "ok"]  # fmt: skip
    best = "  ".join(
        f"{name}: {spread([float(r.get('best_rate') or 0) for r in runs(data.get(name))], 0)} msg/s"
        for name in TARGETS
    )
    return table(headers, rows, markdown=markdown) + f"\n\nhighest rate with zero loss and " \
        f"p99 < 50 ms — {best}"  # fmt: skip


def cpu(row: dict[str, Any]) -> str:
    if not row:
        return "—"
    return f"{row['cpu_percent']:.2f} ({fmt(row.get('cpu_main_thread_percent'))})"


def footprint_table(data: dict[str, Any], *, markdown: bool = False) -> str:
    lkb = {r["sessions"]: r for r in data.get("lkbridge") or [] if "sessions" in r}
    base = {r["sessions"]: r for r in data.get("baseline") or [] if "sessions" in r}
    rows = []
    for n in sorted(set(lkb) | set(base)):
        a, b = lkb.get(n, {}), base.get(n, {})
        diff = a["peak_rss_mb"] - b["peak_rss_mb"] if a and b else None
        rows.append([
            n, fmt(a.get("peak_rss_mb"), 1), fmt(b.get("peak_rss_mb"), 1), fmt(diff, 1),
            fmt(a.get("idle_rss_mb"), 1), fmt(b.get("idle_rss_mb"), 1),
            cpu(a), cpu(b), fmt(a.get("connected_s"), 1), fmt(b.get("connected_s"), 1),
        ])  # fmt: skip
    headers = ["sessions", "lkbridge peak MB", "baseline peak MB", "difference MB",
               "lkbridge idle MB", "baseline idle MB", "lkbridge CPU % (loop thread)",
               "baseline CPU % (loop thread)", "lkbridge all in (s)",
               "baseline all in (s)"]  # fmt: skip
    text = table(headers, rows, markdown=markdown)
    slopes = []
    for name, rows_by_n in (("lkbridge", lkb), ("baseline", base)):
        slope = per_session_mb(rows_by_n)
        if slope is not None:
            slopes.append(f"{name} {slope:.2f} MB")
    if slopes:
        text += "\n\nidle RSS per added session (least squares over all counts): " + ", ".join(
            slopes
        )
    return text


def per_session_mb(rows_by_n: dict[int, dict[str, Any]]) -> float | None:
    points = [(n, r["idle_rss_mb"]) for n, r in rows_by_n.items()]
    if len(points) < 2:
        return None
    mx = sum(n for n, _ in points) / len(points)
    my = sum(m for _, m in points) / len(points)
    var = sum((n - mx) ** 2 for n, _ in points)
    return sum((n - mx) * (m - my) for n, m in points) / var if var else None


def startup_table(data: dict[str, Any], *, markdown: bool = False) -> str:
    lkb = {r["sessions"]: r for r in data.get("lkbridge") or [] if "sessions" in r}
    base = {r["sessions"]: r for r in data.get("baseline") or [] if "sessions" in r}
    rows = []
    for n in sorted(set(lkb) | set(base)):
        a, b = lkb.get(n), base.get(n)

        def spread(r: dict[str, Any] | None, key: str) -> str:
            if not r:
                return "—"
            s = r[key]
            return f"{s['median']:.3f} ({s['min']:.3f} to {s['max']:.3f})"

        rows.append([
            n, (a or b or {}).get("runs"), spread(a, "ready_s"), spread(b, "ready_s"),
            ratio(a["ready_s"]["median"], b["ready_s"]["median"]) if a and b else "—",
            spread(a, "connected_s"), spread(b, "connected_s"),
        ])  # fmt: skip
    headers = ["sessions", "runs", "lkbridge READY s", "baseline READY s", "ratio",
               "lkbridge all in s", "baseline all in s"]  # fmt: skip
    return table(headers, rows, markdown=markdown)


# -- targets ----------------------------------------------------------------------------------


def evaluate(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Each target of issue 7 with the measured figure and whether it was met."""
    rows: list[dict[str, Any]] = []
    for key, title in LATENCIES.items():
        if key == "latency_transcription_sd":
            continue  # judged in issue 13's table
        lkb = folded((results.get(key) or {}).get("lkbridge"))
        base = folded((results.get(key) or {}).get("baseline"))
        if not (lkb and base):
            continue
        short = title.split(" ", 1)[1]
        diff = lkb["p50"] - base["p50"]
        rows.append({
            "target": f"{short}: p50 within {P50_MARGIN_MS} ms of the baseline",
            "figure": f"{lkb['p50']:.2f} vs {base['p50']:.2f} ms ({diff:+.2f} ms)",
            "met": diff <= P50_MARGIN_MS,
        })  # fmt: skip
        rows.append({
            "target": f"{short}: p99 within {P99_FACTOR}x of the baseline",
            "figure": f"{lkb['p99']:.2f} vs {base['p99']:.2f} ms ({ratio(lkb['p99'], base['p99'])})",
            "met": lkb["p99"] <= P99_FACTOR * base["p99"],
        })  # fmt: skip
    tput_runs = runs((results.get("throughput") or {}).get("lkbridge"))
    if tput_runs:
        # Carried only with zero loss *and* p99 under 50 ms, in every repeat.
        at_rate = [s for r in tput_runs for s in r["steps"] if s["rate"] == RATE_TARGET]
        if len(at_rate) == len(tput_runs):
            figure = "; ".join(f"{s['lost']} lost of {s['sent']}, p99 {s['p99']:.1f} ms"
                               for s in at_rate)  # fmt: skip
            met = all(s["lost"] == 0 and s["p99"] < 50 for s in at_rate)
        else:
            figure, met = f"not reached in {len(tput_runs) - len(at_rate)} repeat(s)", False
        rows.append({"target": f"{RATE_TARGET} msg/s through one session: zero loss and"
                     " p99 < 50 ms", "figure": figure, "met": met})  # fmt: skip
    foot = results.get("footprint") or {}
    lkb_f = {r["sessions"]: r for r in foot.get("lkbridge") or [] if "sessions" in r}
    base_f = {r["sessions"]: r for r in foot.get("baseline") or [] if "sessions" in r}
    for n in sorted(set(lkb_f) & set(base_f)):
        diff = lkb_f[n]["peak_rss_mb"] - base_f[n]["peak_rss_mb"]
        rows.append({
            "target": f"peak RSS at most {RSS_MARGIN_MB:g} MB above the baseline, {n} sessions",
            "figure": f"{lkb_f[n]['peak_rss_mb']:.1f} vs {base_f[n]['peak_rss_mb']:.1f} MB "
                      f"({diff:+.1f} MB)",
            "met": diff <= RSS_MARGIN_MB,
        })  # fmt: skip
    if IDLE_CPU_SESSIONS in lkb_f:
        cpu = lkb_f[IDLE_CPU_SESSIONS]["cpu_percent"]
        base_cpu = base_f.get(IDLE_CPU_SESSIONS, {}).get("cpu_percent")
        rows.append({
            "target": f"idle CPU under {IDLE_CPU_LIMIT:g} % of one core, "
                      f"{IDLE_CPU_SESSIONS} sessions",
            "figure": f"{cpu:.2f} % (baseline {fmt(base_cpu)} %)",
            "met": cpu < IDLE_CPU_LIMIT,
        })  # fmt: skip
    for r in (results.get("startup") or {}).get("lkbridge") or []:
        if r.get("sessions") == READY_SESSIONS:
            s = r["ready_s"]
            rows.append({
                "target": f"READY=1 within {READY_LIMIT_S:g} s of process start, "
                          f"{READY_SESSIONS} sessions",
                "figure": f"median {s['median']:.3f} s, worst {s['max']:.3f} s of {r['runs']}",
                "met": s["max"] <= READY_LIMIT_S,
            })  # fmt: skip
    return rows


def targets_table(results: dict[str, Any], *, markdown: bool = False) -> str:
    rows = [[r["target"], r["figure"], "met" if r["met"] else "MISSED"] for r in evaluate(results)]
    return table(["target", "measured (lkbridge vs baseline)", "verdict"], rows, markdown=markdown)


def sections(results: dict[str, Any], *, markdown: bool = False) -> list[tuple[str, str]]:
    """(title, table) for everything the run measured."""
    out = []
    for key, title in LATENCIES.items():
        if results.get(key):
            out.append((title, latency_table(results[key], markdown=markdown)))
    if results.get("throughput"):
        out.append(("3. sustained send rate through one session",
                    throughput_table(results["throughput"], markdown=markdown)))  # fmt: skip
    if results.get("footprint"):
        out.append(("4. footprint with N connected idle sessions",
                    footprint_table(results["footprint"], markdown=markdown)))  # fmt: skip
    if results.get("startup"):
        out.append(("5. start-up: process start → READY=1",
                    startup_table(results["startup"], markdown=markdown)))  # fmt: skip
    fs = results.get("fsyncs") or {}
    if fs:
        rows = []
        for name in TARGETS:
            d = fs.get(name)
            if d:
                t, s = d["transcription"], d["send"]
                rows.append([name, t["chunks"], t["finals"], t["fsyncs"], fmt(t["fsyncs_per_chunk"], 3),
                             s["sends"], s["fsyncs"], fmt(s["fsyncs_per_send"], 3)])  # fmt: skip
        out.append(("7. fsyncs per message (strace, untimed pass on the SD-card stand-in)", table(
            ["target", "chunks", "of which finals", "fsyncs", "per chunk", "sends", "fsyncs",
             "per send"], rows, markdown=markdown)))  # fmt: skip
    out.append(("targets (issue 7)", targets_table(results, markdown=markdown)))
    if markdown:
        out.append(("targets (issue 13), judged on the median of repeats", targets_markdown(results)))
    else:
        rows = [[r["figure"], r["target"], r["measured"],
                 "—" if r["met"] is None else ("met" if r["met"] else "MISSED")]
                for r in targets(results)]  # fmt: skip
        out.append(("targets (issue 13), judged on the median of repeats",
                    table(["figure", "target", "measured", "verdict"], rows)))  # fmt: skip
    return out


def machine_line(results: dict[str, Any]) -> str:
    m, v = results["machine"], results["versions"]
    return (
        f"{m['cpu']}, {m['cores']} cores, {m['ram_mb']} MB RAM, Linux {m['kernel']}; "
        f"Python {v['python']}, lkbridge {v['lkbridge']} ({v['lkbridge_commit']}), "
        f"livekit {v['livekit']}, livekit-api {v['livekit-api']}, paho-mqtt {v['paho-mqtt']}, "
        f"livekit-server {v['livekit-server']}, mosquitto {v['mosquitto']}; {results['date']}"
    )


def markdown(results: dict[str, Any]) -> str:
    parts = [f"Run `{results['run']}` ({results['mode']}): {machine_line(results)}"]
    for title, body in sections(results, markdown=True):
        parts.append(f"#### {title}\n\n{body}")
    return "\n\n".join(parts) + "\n"


# -- charts -----------------------------------------------------------------------------------


def charts(results: dict[str, Any], prefix: Path) -> list[Path]:
    """PNG charts next to the JSON: latency percentiles, RSS against sessions, rate steps."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("bench: matplotlib is not installed (pip install -e '.[bench]'); no charts")
        return []
    colors = {"lkbridge": "#1f77b4", "baseline": "#ff7f0e"}
    written = []
    latency_keys = [k for k in LATENCIES if results.get(k)]
    if latency_keys:
        fig, axes = plt.subplots(1, len(latency_keys), figsize=(6 * len(latency_keys), 4.2))
        axes = [axes] if len(latency_keys) == 1 else list(axes)
        for ax, key in zip(axes, latency_keys, strict=True):
            pcts = ["p50", "p90", "p99", "max"]
            for offset, name in ((-0.2, "lkbridge"), (0.2, "baseline")):
                d = folded(results[key].get(name))
                if not d:
                    continue
                values = [d[p] for p in pcts]
                bars = ax.bar([i + offset for i in range(len(pcts))], values, 0.4,
                              label=name, color=colors[name])  # fmt: skip
                ax.bar_label(bars, labels=[f"{v:.1f}" for v in values], fontsize=8)
            ax.set_xticks(range(len(pcts)), pcts)
            ax.set_ylabel("ms")
            ax.set_title(LATENCIES[key].split(" ", 1)[1], fontsize=10)
            ax.legend()
        fig.suptitle(f"latency, one message at a time, median of repeats — {results['run']}",
                     fontsize=10)  # fmt: skip
        fig.tight_layout()
        written.append(_save(fig, prefix, "latency"))
    foot = results.get("footprint") or {}
    if any(foot.get(n) for n in TARGETS):
        fig, ax = plt.subplots(figsize=(6.5, 4.2))
        for name in TARGETS:
            rows = sorted((r for r in foot.get(name) or [] if "sessions" in r),
                          key=lambda r: r["sessions"])  # fmt: skip
            if not rows:
                continue
            xs = [r["sessions"] for r in rows]
            ax.plot(xs, [r["peak_rss_mb"] for r in rows], "o-", color=colors[name],
                    label=f"{name} peak RSS")  # fmt: skip
            ax.plot(xs, [r["idle_rss_mb"] for r in rows], "s--", color=colors[name], alpha=0.6,
                    label=f"{name} idle RSS")  # fmt: skip
            if name == "baseline":
                ax.plot(xs, [r["peak_rss_mb"] + RSS_MARGIN_MB for r in rows], ":", color="grey",
                        label=f"target: baseline peak + {RSS_MARGIN_MB:g} MB")  # fmt: skip
        ax.set_xlabel("connected idle sessions (each with its own agent)")
        ax.set_ylabel("MB")
        ax.set_title(f"resident memory against session count — {results['run']}", fontsize=10)
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        written.append(_save(fig, prefix, "rss"))
    tput = results.get("throughput") or {}
    if any(tput.get(n) for n in TARGETS):
        fig, ax = plt.subplots(figsize=(6.5, 4.2))
        for name in TARGETS:
            for repeat, result in enumerate(runs(tput.get(name))):
                steps = result.get("steps", [])
                if not steps:
                    continue
                ax.plot([s["rate"] for s in steps], [s["p99"] for s in steps], "o-", alpha=0.7,
                        color=colors[name], label=f"{name} p99" if repeat == 0 else None)  # fmt: skip
                lossy = [s for s in steps if s["lost"]]
                ax.plot([s["rate"] for s in lossy], [s["p99"] for s in lossy], "x", ms=12,
                        color="red", label=f"{name}: messages lost" if lossy else None)  # fmt: skip
        ax.axhline(50, color="grey", ls=":", label="p99 limit 50 ms")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("offered rate, messages/s (one session)")
        ax.set_ylabel("p99 latency, ms")
        ax.set_title(f"sustained send rate — {results['run']}", fontsize=10)
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        written.append(_save(fig, prefix, "throughput"))
    return written


def _save(fig: Any, prefix: Path, what: str) -> Path:
    import matplotlib.pyplot as plt

    path = prefix.with_name(f"{prefix.name}-{what}.png")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description="Markdown tables (and charts) of a bench run.")
    parser.add_argument("results", type=Path, help="a bench/results/*.json file")
    parser.add_argument("--charts", action="store_true", help="draw the PNG charts again")
    args = parser.parse_args()
    results = json.loads(args.results.read_text())
    print(markdown(results))
    if args.charts:
        for path in charts(results, args.results.with_suffix("")):
            print(f"wrote {path}")


if __name__ == "__main__":
    main()
