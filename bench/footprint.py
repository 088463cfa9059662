"""Benchmarks 4 and 5: memory and idle CPU with N connected sessions, and start-up to READY=1."""

from __future__ import annotations

import asyncio
import statistics
import time
from pathlib import Path
from typing import Any

from bench.notify import NotifyListener
from bench.procstat import CpuWindow, MachineWindow, RssSampler, memory_mb
from bench.stack import Stack
from bench.targets import launch


def connect_timeout(count: int) -> float:
    return 30.0 + count


async def footprint(
    stack: Stack, name: str, count: int, work_dir: Path, notify: NotifyListener, *,
    settle: float, window: float,
) -> dict[str, Any]:  # fmt: skip
    """A fresh process with `count` sessions, each with its own agent, all connected and idle."""
    target = await launch(name, stack, count, work_dir, notify)
    jobs = []
    try:
        jobs = await stack.jobs(count, connect_timeout(count))
        connected_after = time.perf_counter() - target.started
        await asyncio.sleep(settle)
        sampler, cpu, machine = RssSampler(target.pid), CpuWindow(target.pid), MachineWindow()
        sampler.start()
        cpu.start()
        machine.start()
        await asyncio.sleep(window)
        machine.stop()
        cpu.stop()
        sampler.stop()
        memory = memory_mb(target.pid)
        alive = target.alive()
    finally:
        await target.stop()
        await stack.wait_closed(jobs)
    return {
        "sessions": count,
        "peak_rss_mb": round(memory["peak"], 1),
        "idle_rss_mb": round(sampler.mean, 1),
        "cpu_percent": round(cpu.percent, 2),
        "cpu_main_thread_percent": round(cpu.main_percent, 2),
        "machine_busy_percent": round(machine.percent, 1),
        "window_s": round(cpu.wall, 1),
        "connected_s": round(connected_after, 2),
        "alive": alive,
    }


async def startup(
    stack: Stack, name: str, count: int, work_dir: Path, notify: NotifyListener, *, runs: int,
) -> dict[str, Any]:  # fmt: skip
    """Process start → READY=1 (and → every session's agent in), `runs` times."""
    ready: list[float] = []
    connected: list[float] = []
    for _ in range(runs):
        target = await launch(name, stack, count, work_dir, notify)
        ready.append(target.ready_after)
        jobs = []
        try:
            jobs = await stack.jobs(count, connect_timeout(count))
            connected.append(time.perf_counter() - target.started)
        finally:
            await target.stop()
            await stack.wait_closed(jobs)
        await asyncio.sleep(1.0)
    return {
        "sessions": count,
        "runs": runs,
        "ready_s": _spread(ready),
        "connected_s": _spread(connected),
    }


def _spread(values: list[float]) -> dict[str, Any]:
    return {
        "median": round(statistics.median(values), 3),
        "min": round(min(values), 3),
        "max": round(max(values), 3),
        "all": [round(v, 3) for v in values],
    }
