"""A process's memory and CPU time from /proc (Linux only, no dependencies)."""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def memory_mb(pid: int) -> dict[str, float]:
    """Current (VmRSS) and peak (VmHWM) resident memory in MB (10^6 bytes)."""
    values: dict[str, float] = {}
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                values[key] = int(rest.split()[0]) * 1024 / 1e6
    return {"rss": values["VmRSS"], "peak": values["VmHWM"]}


def _stat_cpu(path: str) -> float:
    with open(path) as stat:
        # The command name may hold spaces; the fields after it start with the state (field 3).
        fields = stat.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def cpu_seconds(pid: int) -> float:
    """User + system CPU time the process has used so far (its threads included)."""
    return _stat_cpu(f"/proc/{pid}/stat")


def main_thread_cpu_seconds(pid: int) -> float:
    """CPU time of the main thread alone (for these programs: the asyncio loop)."""
    return _stat_cpu(f"/proc/{pid}/task/{pid}/stat")


def machine_busy() -> tuple[int, int]:
    """(busy, total) jiffies over all CPUs since boot, from /proc/stat."""
    with open("/proc/stat") as stat:
        values = [int(v) for v in stat.readline().split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    return sum(values) - idle, sum(values)


@dataclass
class CpuWindow:
    """CPU used between start() and stop(), as a percentage of one core.

    `main_percent` is the main thread's share (the Python event loop); the rest is other
    threads, for these programs mostly the LiveKit library's native ones.
    """

    pid: int
    _cpu: float = 0.0
    _main: float = 0.0
    _wall: float = 0.0
    percent: float = 0.0
    main_percent: float = 0.0
    wall: float = 0.0

    def start(self) -> None:
        self._cpu = cpu_seconds(self.pid)
        self._main = main_thread_cpu_seconds(self.pid)
        self._wall = time.perf_counter()

    def stop(self) -> float:
        self.wall = time.perf_counter() - self._wall
        self.percent = 100.0 * (cpu_seconds(self.pid) - self._cpu) / self.wall
        self.main_percent = 100.0 * (main_thread_cpu_seconds(self.pid) - self._main) / self.wall
        return self.percent


@dataclass
class MachineWindow:
    """How busy the whole machine was between start() and stop(), in % of all its cores."""

    _busy: int = 0
    _total: int = 0
    percent: float = 0.0

    def start(self) -> None:
        self._busy, self._total = machine_busy()

    def stop(self) -> float:
        busy, total = machine_busy()
        self.percent = 100.0 * (busy - self._busy) / max(1, total - self._total)
        return self.percent


@dataclass
class RssSampler:
    """Samples VmRSS every `interval` seconds in a thread, until stop()."""

    pid: int
    interval: float = 0.25
    samples: list[float] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.samples.append(memory_mb(self.pid)["rss"])
            except OSError:
                return  # the process is gone
            self._stop.wait(self.interval)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)

    @property
    def mean(self) -> float:
        return sum(self.samples) / len(self.samples) if self.samples else 0.0
