"""Benchmark 3: sustained `send` rates through one session, step by step, until it breaks."""

from __future__ import annotations

import asyncio
import os
import threading
import time
import uuid
from typing import Any

from bench.latency import attach
from bench.mqttc import BenchMqtt
from bench.procstat import CpuWindow, MachineWindow
from bench.stats import summarize
from bench.targets import Launched
from devstack.agent import AgentJob

P99_LIMIT_MS = 50.0


def _paced(
    mqttc: BenchMqtt, topic: str, tag: str, rate: float, sent: list[float],
    stop: threading.Event,
) -> float:  # fmt: skip
    """Publish len(sent) messages at `rate` per second on a fixed schedule; returns seconds taken.

    Runs in its own thread so the agent's event loop never delays the schedule; `stop` ends it
    early (the run was interrupted).
    """
    start = time.perf_counter()
    for i in range(len(sent)):
        delay = start + i / rate - time.perf_counter()
        if delay > 0 and stop.wait(delay):
            break
        sent[i] = time.perf_counter()
        mqttc.publish(topic, f"{tag}:{i}")
    return time.perf_counter() - start


async def one_step(
    target: Launched, job: AgentJob, mqttc: BenchMqtt, rate: int, duration: float,
    drain: float, others: dict[str, int],
) -> dict[str, Any]:  # fmt: skip
    """One rate for `duration` seconds; CPU of every process involved and of the machine."""
    arrivals = attach(job)
    tag = uuid.uuid4().hex[:6]
    sent = [0.0] * max(1, round(rate * duration))
    cpu, bench_cpu = CpuWindow(target.pid), CpuWindow(os.getpid())
    servers = {name: CpuWindow(pid) for name, pid in others.items()}
    machine = MachineWindow()
    for window in (cpu, bench_cpu, *servers.values(), machine):
        window.start()
    stop = threading.Event()
    try:
        elapsed = await asyncio.to_thread(
            _paced, mqttc, target.send_topic(target.sessions[0]), tag, rate, sent, stop
        )
    finally:
        stop.set()
    for window in (cpu, bench_cpu, *servers.values(), machine):
        window.stop()
    await arrivals.wait_for_count(len(sent), drain)
    latencies = [
        (arrivals.at[key] - sent[i]) * 1000
        for i in range(len(sent))
        if (key := f"{tag}:{i}") in arrivals.at
    ]
    summary = summarize(latencies)
    lost = len(sent) - len(latencies)
    return {
        "rate": rate,
        "sent": len(sent),
        "achieved_rate": round(len(sent) / elapsed, 1),
        "lost": lost,
        "duplicates": arrivals.duplicates,
        **summary,
        "cpu_percent": round(cpu.percent, 1),
        "cpu_main_thread_percent": round(cpu.main_percent, 1),
        "bench_cpu_percent": round(bench_cpu.percent, 1),
        **{f"{name}_cpu_percent": round(w.percent, 1) for name, w in servers.items()},
        "machine_busy_percent": round(machine.percent, 1),
        "ok": lost == 0 and summary["p99"] < P99_LIMIT_MS,
    }


async def sustained(
    target: Launched, job: AgentJob, mqttc: BenchMqtt, *, rates: list[int], duration: float,
    others: dict[str, int], drain: float = 10.0, on_step: Any = None,
) -> dict[str, Any]:  # fmt: skip
    """Steps up through `rates` until a step loses messages (or the target dies).

    A message counts as lost when it has not reached the agent `drain` seconds after the step's
    last publish, so a step never leaves a backlog to the next one. The result is the highest
    rate at which that step and every lower one lost nothing and had p99 under 50 ms.
    """
    steps = []
    for rate in rates:
        step = await one_step(target, job, mqttc, rate, duration, drain, others)
        steps.append(step)
        if on_step is not None:
            on_step(target.name, step)
        if step["lost"] or not target.alive():
            break
        await asyncio.sleep(2.0)  # a breather between steps
    best = None
    for step in steps:
        if not step["ok"]:
            break
        best = step["rate"]
    return {"duration_s": duration, "p99_limit_ms": P99_LIMIT_MS, "best_rate": best, "steps": steps}
