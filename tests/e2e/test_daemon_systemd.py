"""The daemon's systemd protocol, read from a real NOTIFY_SOCKET: READY, STATUS, WATCHDOG, STOPPING."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from devstack.livekit_server import LiveKitServer
from devstack.mosquitto import Mosquitto
from tests.support.daemon_proc import DaemonProcess, daemon_config, session_toml

pytestmark = pytest.mark.e2e


class NotifySocket:
    """A datagram socket playing systemd's part; keeps (monotonic time, line) for every line."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.setblocking(False)
        self.lines: list[tuple[float, str]] = []

    def drain(self) -> list[str]:
        while True:
            try:
                data = self.sock.recv(4096)
            except BlockingIOError:
                break
            now = time.monotonic()
            self.lines.extend((now, line) for line in data.decode().splitlines())
        return [line for _, line in self.lines]

    async def wait_for(
        self, prefix: str, *, contains: str = "", after: int = 0, timeout: float = 15.0
    ) -> str:
        """The first line from index `after` that starts with prefix and contains `contains`."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in self.drain()[after:]:
                if line.startswith(prefix) and contains in line:
                    return line
            await asyncio.sleep(0.02)
        raise AssertionError(f"no {prefix!r} within {timeout} s; got {self.drain()[after:][-10:]}")

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[NotifySocket]:
    sock = NotifySocket(tmp_path / "notify.sock")
    yield sock
    sock.close()


async def test_ready_watchdog_status_reload_and_stopping(
    tmp_path: Path, livekit_server: LiveKitServer, private_broker: Mosquitto,
    notify_socket: NotifySocket, log_dir: Path,
) -> None:
    config = daemon_config(
        tmp_path, private_broker.port, session_toml("lab", livekit_server, None, autostart=False),
        base_topic="sd",
    )
    daemon = DaemonProcess(
        config, livekit_server, log_dir / f"daemon-{tmp_path.name}.log",
        env={"NOTIFY_SOCKET": str(notify_socket.path), "WATCHDOG_USEC": "400000"},
    )
    started = time.monotonic()
    daemon.start()
    assert daemon.proc is not None
    try:
        ready = await notify_socket.wait_for("READY=1")
        lines = notify_socket.drain()
        status = [line for line in lines if line.startswith("STATUS=")]
        assert status and "MQTT connected" in status[0], lines
        assert any(line.startswith("MAINPID=") or line == "READY=1" for line in lines)
        assert ready == "READY=1"
        assert time.monotonic() - started < 15

        # The watchdog pings while the loop is healthy.
        mark = len(notify_socket.drain())
        await asyncio.sleep(1.2)
        pings = [line for line in notify_socket.drain()[mark:] if line == "WATCHDOG=1"]
        assert len(pings) >= 3, pings

        # A broker outage is a status, not a restart: pings go on, STATUS says why.
        private_broker.stop()
        await notify_socket.wait_for("STATUS=", contains="MQTT broker unreachable", after=mark,
                                     timeout=20)
        mark = len(notify_socket.drain())
        await asyncio.sleep(1.0)
        assert "WATCHDOG=1" in notify_socket.drain()[mark:]
        assert daemon.proc.poll() is None
        private_broker.start()
        await notify_socket.wait_for("STATUS=", contains="MQTT connected", after=mark, timeout=30)

        # SIGHUP reloads: RELOADING=1, then READY=1 again.
        mark = len(notify_socket.drain())
        os.kill(daemon.proc.pid, signal.SIGHUP)
        await notify_socket.wait_for("RELOADING=1", after=mark)
        await notify_socket.wait_for("READY=1", after=mark)

        # SIGTERM: STOPPING=1 and a clean exit.
        mark = len(notify_socket.drain())
        daemon.proc.send_signal(signal.SIGTERM)
        await notify_socket.wait_for("STOPPING=1", after=mark)
        assert daemon.proc.wait(15) == 0
    finally:
        if daemon.proc.poll() is None:
            daemon.kill()


async def test_a_bridge_that_cannot_start_fails_the_daemon_before_ready(
    tmp_path: Path, livekit_server: LiveKitServer, mqtt_broker: Mosquitto,
    notify_socket: NotifySocket, log_dir: Path,
) -> None:
    """Running without MQTT would look healthy and do nothing: exit non-zero, never READY."""
    config = daemon_config(
        tmp_path, mqtt_broker.port, session_toml("lab", livekit_server, None, autostart=False),
        base_topic="sdfail",
    )
    text = config.read_text().replace(
        "[mqtt]\n", '[mqtt]\nusername = "u"\npassword = { env = "LKB_SURELY_UNSET_PASSWORD" }\n'
    )
    config.write_text(text)
    daemon = DaemonProcess(config, livekit_server, log_dir / f"daemon-{tmp_path.name}.log",
                           env={"NOTIFY_SOCKET": str(notify_socket.path)})
    daemon.start()
    assert daemon.proc is not None
    assert daemon.proc.wait(20) == 1
    lines = notify_socket.drain()
    assert "READY=1" not in lines
    assert any(line.startswith("STATUS=bridge mqtt failed") for line in lines), lines
    assert "LKB_SURELY_UNSET_PASSWORD" in daemon.log_text()
