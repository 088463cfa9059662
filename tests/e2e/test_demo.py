"""`lkbridge demo --headless` end to end: ready line, send, answer on MQTT and in status, Ctrl-C."""

from __future__ import annotations

import asyncio
import fcntl
import json
import os
import pty
import re
import select
import subprocess
import sys
import termios
import time
from pathlib import Path

import pytest

from devstack.mosquitto import find_mosquitto
from tests.support.demo_proc import (
    IN_CI,
    TEST_ADDR,
    DemoProcess,
    lkbridge,
    processes_mentioning,
    require_server_binary,
    server_secret,
)
from tests.support.mqtt_probe import MqttProbe, Seen

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]


def _agent_final(m: Seen) -> bool:
    event = m.json()
    return event["type"] == "agent_transcript" and bool(event["final"])


@pytest.mark.parametrize("broker", ["mosquitto", "embedded"])
async def test_demo_answers_send_shows_it_on_mqtt_and_in_status_and_stops_on_ctrl_c(
    tmp_path: Path, broker: str
) -> None:
    require_server_binary()
    if broker == "mosquitto" and find_mosquitto() is None:
        if IN_CI:
            pytest.fail("CI=true and mosquitto is not installed", pytrace=False)
        pytest.skip("mosquitto is not installed")
    directory = tmp_path / "demo"
    demo = DemoProcess(directory, "--broker", broker, "--base-topic", "demo1")
    probe: MqttProbe | None = None
    try:
        ready = await asyncio.to_thread(demo.wait_ready)
        assert (ready.base, ready.session) == ("demo1", "demo")
        assert ready.config == str(directory / "config.toml")
        assert ("mosquitto)" if broker == "mosquitto" else "embedded Python broker") in demo.output
        probe = MqttProbe("127.0.0.1", ready.port, "demo1/#")
        await probe.wait_for("demo1/bridge/state", lambda m: m.json() == {"state": "online"})

        sent = await asyncio.to_thread(lkbridge, "send", "-c", ready.config, "demo", "hello")
        assert sent.returncode == 0, sent.stderr
        assert sent.stdout.startswith("sent to demo: message ")
        answer = await probe.wait_for("demo1/demo/message", _agent_final, timeout=20)
        assert answer.json()["text"].startswith("Hello! I am the lkbridge demo agent")
        growing = [m.json()["text"] for m in probe.seen("demo1/demo/message")
                   if m.json()["id"] == answer.json()["id"]]
        assert len(growing) > 2, "the answer streams in as it grows"
        await asyncio.to_thread(demo.wait_for_line, r"^agent: Hello! I am the lkbridge demo agent")
        await asyncio.to_thread(demo.wait_for_line, r"^you: hello$")

        asked = await asyncio.to_thread(
            lkbridge, "send", "--wait", "-c", ready.config, "demo", "what is 6 * 7")
        assert (asked.returncode, asked.stdout) == (0, "6 * 7 = 42\n"), asked.stderr

        status = await asyncio.to_thread(lkbridge, "status", "-c", ready.config)
        assert status.returncode == 0, status.stderr
        assert "online" in status.stdout.splitlines()[0]
        row = next(line for line in status.stdout.splitlines() if line.startswith("demo "))
        assert re.search(r"connected\s+listening\s+lkbridge-\w+\s+4\s+agent_transcript: 6 \* 7 = 42",
                         row), status.stdout
        as_json = await asyncio.to_thread(lkbridge, "status", "--json", "-c", ready.config)
        data = json.loads(as_json.stdout)
        assert data["bridge"]["state"] == "online"
        assert data["bridge"]["info"]["sessions"] == ["demo"]
        assert data["sessions"]["demo"]["state"]["agent"]["is_connected"] is True
        assert data["sessions"]["demo"]["last_message"]["text"] == "6 * 7 = 42"

        unknown = await asyncio.to_thread(lkbridge, "send", "-c", ready.config, "nobody", "hi")
        assert unknown.returncode == 1
        assert "unknown session 'nobody'" in unknown.stderr

        secret = server_secret(directory)
        code = await asyncio.to_thread(demo.interrupt)
        assert code == 0, demo.diagnostics()
        assert demo.lines[-1] == "stopped."
        await probe.wait_for("demo1/bridge/state", lambda m: m.json() == {"state": "offline"})
        assert processes_mentioning(str(directory)) == [], "every part of the stack is gone"
        # The server's random secret is passed by reference: not in the config, output or logs.
        server_config = (directory / "logs" / "livekit-server.yaml").read_text()
        assert secret not in server_config and "keys" not in json.loads(server_config)
        assert 'api_secret = { env = "LKBRIDGE_DEMO_API_SECRET" }' in (
            directory / "config.toml").read_text()
        for text in (demo.output, (directory / "config.toml").read_text(),
                     (directory / "logs" / "daemon.log").read_text(),
                     (directory / "logs" / "demo.log").read_text(), sent.stdout, status.stdout):
            assert secret not in text
    finally:
        if probe is not None:
            probe.close()
        demo.kill()


async def test_demo_fails_clearly_when_the_mqtt_port_is_taken(tmp_path: Path) -> None:
    require_server_binary()
    holder = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = holder.sockets[0].getsockname()[1]
    try:
        demo = DemoProcess(tmp_path / "busy", "--broker", "embedded", "--port", str(port))
        code = await asyncio.to_thread(demo.proc.wait, 60)
        assert code == 1
        stderr = demo.stderr_path.read_text()
        assert "the embedded broker cannot listen" in stderr, stderr
        assert processes_mentioning(str(tmp_path / "busy")) == []
    finally:
        holder.close()
        await holder.wait_closed()


def test_interactive_demo_in_a_terminal_answers_what_is_typed_and_stops_on_ctrl_c(
    tmp_path: Path,
) -> None:
    """As a newcomer runs it: a terminal, typing into the demo, then Ctrl-C from the keyboard.

    The pseudo-terminal is the demo's controlling terminal, so ^C goes to its whole foreground
    process group, as it would on a real terminal.
    """
    require_server_binary()
    directory = tmp_path / "tty-demo"
    master, slave = pty.openpty()

    def controlling_terminal() -> None:
        os.setsid()
        fcntl.ioctl(0, termios.TIOCSCTTY, 0)

    proc = subprocess.Popen(
        [sys.executable, "-m", "lkbridge", "demo", "--addr", TEST_ADDR, "--dir", str(directory)],
        stdin=slave, stdout=slave, stderr=slave, preexec_fn=controlling_terminal,
        env={**os.environ, "NO_COLOR": "1"},
    )
    os.close(slave)
    seen = b""

    def read_until(needle: bytes, timeout: float) -> None:
        nonlocal seen
        deadline = time.monotonic() + timeout
        while needle not in seen:
            if time.monotonic() > deadline:
                raise AssertionError(f"{needle!r} not shown; got:\n{seen.decode(errors='replace')}")
            if select.select([master], [], [], 0.2)[0]:
                try:
                    chunk = os.read(master, 4096)
                except OSError:
                    chunk = b""
                if not chunk:
                    raise AssertionError(f"the demo ended early:\n{seen.decode(errors='replace')}")
                seen += chunk

    try:
        read_until(b"Ctrl-D or Ctrl-C stops everything.", 120)
        read_until(b"you: ", 10)
        os.write(master, b"what is 6 * 7\n")
        read_until(b"agent: 6 * 7 = 42\r\n", 20)
        os.write(master, b"\x03")  # ^C: SIGINT to the terminal's foreground process group
        read_until(b"stopped.", 40)
        assert proc.wait(20) == 0
        assert processes_mentioning(str(directory)) == []
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        os.close(master)
