"""The servers one benchmark run shares: Mosquitto, the LiveKit server and one scripted agent."""

from __future__ import annotations

import asyncio
import contextlib
import os
import platform
import subprocess
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from devstack.agent import AgentJob, ScriptedAgent
from devstack.livekit_server import LIVEKIT_SERVER_VERSION, LiveKitServer, ensure_binary
from devstack.mosquitto import find_mosquitto
from devstack.procs import free_port, stop_process, wait_for_tcp

MQTT_HOST = "127.0.0.1"


class BenchBroker:
    """Mosquitto as users run it: its defaults, except anonymous access on a local port.

    Not the test broker (devstack.mosquitto), which is tuned for the tests. Mosquitto
    leaves Nagle's algorithm on by default (`set_tcp_nodelay false`); `nodelay` turns it off.
    """

    def __init__(self, log_dir: Path, *, nodelay: bool = False) -> None:
        self.log_dir = log_dir
        self.nodelay = nodelay
        self.host = MQTT_HOST
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def config_lines(self) -> list[str]:
        lines = [f"listener {self.port} {self.host}", "allow_anonymous true", "persistence false"]
        return lines + (["set_tcp_nodelay true"] if self.nodelay else [])

    def start(self) -> None:
        binary = find_mosquitto()
        if binary is None:
            raise SystemExit("bench: mosquitto is not installed (Debian: apt-get install mosquitto)")
        self.port = free_port(self.host)
        conf = self.log_dir / "mosquitto.conf"
        conf.write_text("\n".join(self.config_lines) + "\n")
        log_path = self.log_dir / "mosquitto.log"
        with log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [binary, "-c", str(conf)], stdout=log, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )  # fmt: skip
        wait_for_tcp(self.host, self.port, 10.0, self.proc, "mosquitto", log_path)

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)


class Stack:
    """Running servers and the agent worker; `jobs()` hands out the rooms the agent joined."""

    def __init__(self, broker: BenchBroker, server: LiveKitServer, agent: ScriptedAgent) -> None:
        self.broker = broker
        self.server = server
        self.agent = agent

    @property
    def server_pids(self) -> dict[str, int]:
        """The LiveKit server's and the broker's process ids (to see how busy they are)."""
        procs = {"livekit-server": self.server._proc, "mosquitto": self.broker.proc}
        return {name: proc.pid for name, proc in procs.items() if proc is not None}

    def drain_jobs(self) -> None:
        """Forget jobs nobody asked for (late joins of an earlier process)."""
        queue = self.agent._job_queue
        while not queue.empty():
            queue.get_nowait()

    async def jobs(self, count: int, timeout: float) -> list[AgentJob]:
        """The next `count` jobs, each linked to its room's user (the bridge side is in)."""
        deadline = time.monotonic() + timeout
        jobs = []
        for _ in range(count):
            jobs.append(await self.agent.wait_for_job(max(0.1, deadline - time.monotonic())))
        while any(job.linked_identity is None for job in jobs):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{count} rooms not all linked within {timeout:g} s")
            await asyncio.sleep(0.02)
        return jobs

    @staticmethod
    async def wait_closed(jobs: list[AgentJob], timeout: float = 15.0) -> None:
        """Wait until the agent left these rooms (it leaves when the bridge side leaves)."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.gather(*(job.closed.wait() for job in jobs)), timeout)


@contextlib.asynccontextmanager
async def running_stack(addr: str, log_dir: Path, *, broker_nodelay: bool) -> AsyncIterator[Stack]:
    """Start Mosquitto on 127.0.0.1 and the LiveKit server on addr; register the agent."""
    broker = BenchBroker(log_dir, nodelay=broker_nodelay)
    server = LiveKitServer(addr=addr, log_dir=log_dir, binary=ensure_binary(build=False))
    broker.start()
    try:
        server.start()
        agent = ScriptedAgent(
            server.url, server.api_key, server.api_secret, f"bench-agent-{os.getpid()}",
            echo=False,
        )
        await agent.start()
        try:
            yield Stack(broker, server, agent)
        finally:
            await agent.aclose()
    finally:
        server.stop()
        broker.stop()


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _first_line(cmd: list[str]) -> str | None:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=10, check=False)
    except OSError:
        return None
    text = (out.stdout or out.stderr).strip()
    return text.splitlines()[0] if text else None


def machine_info() -> dict[str, Any]:
    """CPU, cores, RAM, kernel, and the versions of everything on the measured path."""
    cpu = "unknown"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as cpuinfo:
        for line in cpuinfo:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    ram_mb = None
    with contextlib.suppress(OSError), open("/proc/meminfo") as meminfo:
        for line in meminfo:
            if line.startswith("MemTotal:"):
                ram_mb = int(line.split()[1]) // 1024
    root = Path(__file__).resolve().parent.parent
    commit = _first_line(["git", "-C", str(root), "rev-parse", "--short", "HEAD"])
    changed = _first_line(["git", "-C", str(root), "status", "--porcelain", "--", "lkbridge"])
    if commit and changed:
        commit += "+uncommitted"  # lkbridge/ differs from the commit: figures are not reproducible
    mosquitto = _first_line([find_mosquitto() or "mosquitto", "-h"])
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {
            "cpu": cpu,
            "cores": os.cpu_count(),
            "ram_mb": ram_mb,
            "kernel": platform.release(),
            "arch": platform.machine(),
        },
        "versions": {
            "python": platform.python_version(),
            "lkbridge": _version("lkbridge"),
            "lkbridge_commit": commit,
            "livekit": _version("livekit"),
            "livekit-api": _version("livekit-api"),
            "paho-mqtt": _version("paho-mqtt"),
            "livekit-server": LIVEKIT_SERVER_VERSION,
            "mosquitto": mosquitto.removeprefix("mosquitto version ") if mosquitto else None,
        },
    }
