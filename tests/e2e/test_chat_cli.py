"""`lkbridge chat` against a running demo: in a pseudo-terminal, with piped input, and errors."""

from __future__ import annotations

import os
import pty
import select
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from devstack.demo.replies import HELP
from tests.support.demo_proc import DemoProcess, Ready, lkbridge, require_server_binary

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Ready]:
    """One demo stack for the module (embedded broker unless Mosquitto is there: auto)."""
    require_server_binary()
    process = DemoProcess(tmp_path_factory.mktemp("chat") / "demo")
    try:
        yield process.wait_ready()
    finally:
        assert process.interrupt() == 0, process.diagnostics()


class Terminal:
    """A child process on a pseudo-terminal; output is collected with arrival times."""

    def __init__(self, *args: str) -> None:
        self.master, slave = pty.openpty()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "lkbridge", *args],
            stdin=slave, stdout=slave, stderr=slave, start_new_session=True,
            env={**os.environ, "NO_COLOR": "1", "COLUMNS": "200"},
        )
        os.close(slave)
        self.chunks: list[tuple[float, bytes]] = []

    @property
    def text(self) -> str:
        return b"".join(chunk for _, chunk in self.chunks).decode(errors="replace")

    def read_until(self, needle: str, timeout: float = 20.0) -> str:
        deadline = time.monotonic() + timeout
        while needle not in self.text:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"{needle!r} not shown within {timeout} s; got:\n{self.text}")
            ready, _, _ = select.select([self.master], [], [], min(left, 0.2))
            if ready:
                try:
                    data = os.read(self.master, 4096)
                except OSError:  # EIO: the child closed the terminal
                    data = b""
                if not data:
                    raise AssertionError(f"{needle!r} never shown; the chat ended:\n{self.text}")
                self.chunks.append((time.monotonic(), data))
        return self.text

    def type(self, keys: str) -> None:
        os.write(self.master, keys.encode())

    def close(self) -> int | None:
        if self.proc.poll() is None:
            self.proc.kill()
        code = self.proc.wait(10)
        os.close(self.master)
        return code


def test_chat_in_a_terminal_streams_the_answer_as_it_grows(demo: Ready) -> None:
    term = Terminal("chat", "-c", demo.config, "demo")
    try:
        term.read_until("chatting with demo")
        term.read_until("you: ")  # the prompt
        typed_at = time.monotonic()
        term.type("help\n")
        term.read_until(HELP + "\r\nyou: ")  # the answer, then the prompt again
        start = term.text.index("agent: ")
        offset, pieces = 0, []
        for at, chunk in term.chunks:  # which reads carried parts of the answer, and when
            if offset + len(chunk) > start and at >= typed_at:
                pieces.append(at)
            offset += len(chunk)
        assert len(pieces) >= 3 and pieces[-1] - pieces[0] > 0.3, (
            "the answer arrived in pieces over time, not at once")
        assert "you: help\r\nagent: " + HELP in term.text
        term.type("\x04")  # Ctrl-D
        term.read_until("bye")
        assert term.proc.wait(15) == 0
    finally:
        term.close()


def test_chat_stops_on_ctrl_c(demo: Ready) -> None:
    term = Terminal("chat", "-c", demo.config, "demo")
    try:
        term.read_until("chatting with demo")
        term.type("reverse hello world\n")
        term.read_until("world hello")
        term.proc.send_signal(signal.SIGINT)
        assert term.proc.wait(15) == 0
    finally:
        term.close()


def test_chat_with_piped_input_prints_plain_lines_and_waits_for_the_answer(demo: Ready) -> None:
    result = lkbridge("chat", "-c", demo.config, "demo", stdin="what is 2 + 2\n", timeout=60)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert "agent: 2 + 2 = 4" in lines, result.stdout
    assert all("\x1b" not in line and "\r" not in line for line in lines)


def test_chat_names_the_sessions_when_the_one_asked_for_does_not_exist(demo: Ready) -> None:
    result = lkbridge("chat", "-c", demo.config, "kitchen", stdin="")
    assert result.returncode == 1
    assert "no session 'kitchen'" in result.stderr and "(sessions: demo)" in result.stderr


def test_clients_say_when_no_broker_answers(tmp_path: Path) -> None:
    for command in (["status"], ["send", "demo", "hi"], ["chat", "demo"]):
        result = lkbridge(*command, "--host", "127.0.0.1", "--port", "9", "-c", "/nonexistent.toml")
        assert result.returncode == 1
        assert "does not exist" in result.stderr
        # a file named by $LKBRIDGE_CONFIG must exist as well (no silent defaults)
        result = lkbridge(*command, "--host", "127.0.0.1", "--port", "9",
                          env={"LKBRIDGE_CONFIG": str(tmp_path / "absent.toml")})
        assert result.returncode == 1
        assert "absent.toml: file does not exist" in result.stderr, result.stderr
        result = lkbridge(*command, "--host", "127.0.0.1", "--port", "9",
                          env={"LKBRIDGE_CONFIG": ""})
        assert result.returncode == 1
        assert "cannot reach the MQTT broker at 127.0.0.1:9" in result.stderr, result.stderr
