"""The daemon's systemd protocol, read from a real NOTIFY_SOCKET: READY, STATUS, WATCHDOG, STOPPING."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from devstack.livekit_server import LiveKitServer
from devstack.mosquitto import Mosquitto
from tests.support.daemon_proc import DaemonProcess, daemon_config, session_toml
from tests.support.mqtt_probe import MqttProbe

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


async def test_status_and_is_connected_say_connected_only_when_connected(
    tmp_path: Path, livekit_server: LiveKitServer, mqtt_broker: Mosquitto,
    notify_socket: NotifySocket, log_dir: Path,
) -> None:
    """A LiveKit URL that accepts TCP and never answers keeps the session connecting: STATUS and
    the MQTT state must not call that connected (they did: "1/1 session(s) connected")."""
    silent = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)  # never accepted: the WebSocket handshake never gets an answer
    port = silent.getsockname()[1]
    base = f"sdconn-{os.getpid()}"
    sessions = session_toml("slow", livekit_server, None).replace(
        livekit_server.url, f"ws://127.0.0.1:{port}"
    )
    config = daemon_config(tmp_path, mqtt_broker.port, sessions, base_topic=base)
    probe = MqttProbe("127.0.0.1", mqtt_broker.port, f"{base}/#")
    daemon = DaemonProcess(config, livekit_server, log_dir / f"daemon-{tmp_path.name}.log",
                           env={"NOTIFY_SOCKET": str(notify_socket.path)})
    daemon.start()
    assert daemon.proc is not None
    try:
        await notify_socket.wait_for("READY=1")
        state = await probe.wait_for(
            f"{base}/slow/state",
            lambda m: bool(m.payload) and m.json().get("connection_state") == "connecting",
            timeout=10,
        )
        assert state.json()["is_connected"] is False, state.json()
        await asyncio.sleep(1.0)
        status = [line for line in notify_socket.drain() if line.startswith("STATUS=")]
        assert status and all("0/1 session(s) connected" in line for line in status), status
    finally:
        probe.close()
        silent.close()
        if daemon.proc.poll() is None:
            daemon.kill()


async def test_a_failed_reload_is_visible(
    tmp_path: Path, livekit_server: LiveKitServer, mqtt_broker: Mosquitto,
    notify_socket: NotifySocket, log_dir: Path,
) -> None:
    """SIGHUP with an invalid file: the old config runs on, and STATUS, bridge/event, bridge/info
    and the verdict `lkbridge reload` waits for all say the reload failed."""
    base = f"sdreload-{os.getpid()}"
    config = daemon_config(
        tmp_path, mqtt_broker.port, session_toml("lab", livekit_server, None, autostart=False),
        base_topic=base,
    )
    runtime = tmp_path / "run"
    runtime.mkdir()
    probe = MqttProbe("127.0.0.1", mqtt_broker.port, f"{base}/#")
    env = {"NOTIFY_SOCKET": str(notify_socket.path), "RUNTIME_DIRECTORY": str(runtime)}
    daemon = DaemonProcess(config, livekit_server, log_dir / f"daemon-{tmp_path.name}.log", env=env)
    daemon.start()
    assert daemon.proc is not None
    try:
        await notify_socket.wait_for("READY=1")
        good = config.read_text()
        config.write_text(good + "\n[sessions.lab\n")
        mark = len(notify_socket.drain())
        reload = await asyncio.to_thread(
            subprocess.run, [sys.executable, "-m", "lkbridge", "reload", "--pid",
                             str(daemon.proc.pid), "--timeout", "15"],
            capture_output=True, text=True, check=False, env={**os.environ, **env},
        )
        assert reload.returncode == 1 and "invalid TOML" in reload.stderr, reload
        await notify_socket.wait_for("STATUS=", contains="reload failed, previous config kept",
                                     after=mark)
        event = await probe.wait_for(
            f"{base}/bridge/event", lambda m: m.json().get("event") == "config_reload_failed"
        )
        assert "invalid TOML" in event.json()["error"]
        info = await probe.wait_for(
            f"{base}/bridge/info", lambda m: bool(m.json().get("last_reload_error"))
        )
        assert info.json()["sessions"] == ["lab"]
        assert daemon.proc.poll() is None
        # Fixed: the next reload succeeds and clears it.
        config.write_text(good)
        mark = len(notify_socket.drain())
        reload = await asyncio.to_thread(
            subprocess.run, [sys.executable, "-m", "lkbridge", "reload", "--pid",
                             str(daemon.proc.pid), "--timeout", "15"],
            capture_output=True, text=True, check=False, env={**os.environ, **env},
        )
        assert reload.returncode == 0, reload
        line = await notify_socket.wait_for("STATUS=", after=mark)
        assert "reload failed" not in line, line
    finally:
        probe.close()
        if daemon.proc.poll() is None:
            daemon.kill()
