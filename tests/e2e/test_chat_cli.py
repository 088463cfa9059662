"""`lkbridge chat` and `lkbridge send --wait` against a daemon and the real-framework agent: in a
pseudo-terminal, with piped input, two clients at once, and errors."""

from __future__ import annotations

import asyncio
import os
import pty
import select
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from devstack.framework_agent import FrameworkAgentProcess
from devstack.livekit_server import LiveKitServer
from devstack.mosquitto import Mosquitto
from tests.support.daemon_proc import DaemonProcess, daemon_config, session_toml
from tests.support.demo_proc import lkbridge
from tests.support.mqtt_probe import MqttProbe, Seen

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]


def agent_ready(m: Seen) -> bool:
    return bool(m.payload) and bool((m.json().get("agent") or {}).get("is_connected"))


@dataclass
class Stack:
    """A daemon with two sessions (desk, hall) whose agent is the real-framework worker."""

    config: Path
    base: str
    probe: MqttProbe

    def topic(self, session: str, leaf: str) -> str:
        return f"{self.base}/{session}/{leaf}"

    def wait_for(self, topic: str, predicate: Callable[[Seen], bool], *, after: int = 0,
                 timeout: float = 30.0) -> Seen:
        return asyncio.run(self.probe.wait_for(topic, predicate, after=after, timeout=timeout))


@pytest.fixture(scope="module")
def stack(
    tmp_path_factory: pytest.TempPathFactory, livekit_server: LiveKitServer,
    _mosquitto_session: Mosquitto, framework_agent: FrameworkAgentProcess, log_dir: Path,
) -> Iterator[Stack]:
    broker = _mosquitto_session
    if not broker.running:  # an earlier test may have stopped the shared broker
        broker.start()
    tmp = tmp_path_factory.mktemp("chat")
    base = f"chat{uuid.uuid4().hex[:6]}"
    sessions = "".join(session_toml(name, livekit_server, framework_agent.agent_name)
                       for name in ("desk", "hall"))
    config = daemon_config(tmp, broker.port, sessions, base_topic=base)
    daemon = DaemonProcess(config, livekit_server, log_dir / f"daemon-{tmp.name}.log")
    daemon.start()
    probe = MqttProbe("127.0.0.1", broker.port, f"{base}/#")
    try:
        ready = Stack(config, base, probe)
        for session in ("desk", "hall"):
            ready.wait_for(ready.topic(session, "state"), agent_ready, timeout=60)
        yield ready
        assert daemon.stop() == 0, daemon.log_text()[-2000:]
    finally:
        probe.close()
        if daemon.proc is not None and daemon.proc.poll() is None:
            daemon.kill()


def send_wait(stack: Stack, session: str, text: str, *extra: str) -> subprocess.CompletedProcess[str]:
    return lkbridge("send", "--wait", *extra, "-c", str(stack.config), session, text, timeout=90)


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

    def drain(self, timeout: float = 5.0) -> str:
        """Everything the child wrote until it closed the terminal (or the timeout)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if select.select([self.master], [], [], 0.2)[0]:
                try:
                    data = os.read(self.master, 4096)
                except OSError:
                    data = b""
                if not data:
                    break
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


def test_chat_in_a_terminal_streams_the_answer_as_it_grows(stack: Stack) -> None:
    term = Terminal("chat", "-c", str(stack.config), "desk")
    try:
        term.read_until("chatting with desk")
        term.read_until("you: ")  # the prompt
        typed_at = time.monotonic()
        question = "[slow 0.2] tell me a story"
        answer = f"You said: {question}"
        term.type(question + "\n")
        term.read_until(answer + "\r\nyou: ")  # the answer, then the prompt again
        start = term.text.index("agent: ")
        offset, pieces = 0, []
        for at, chunk in term.chunks:  # which reads carried parts of the answer, and when
            if offset + len(chunk) > start and at >= typed_at:
                pieces.append(at)
            offset += len(chunk)
        assert len(pieces) >= 3 and pieces[-1] - pieces[0] > 0.3, (
            "the answer arrived in pieces over time, not at once")
        assert f"you: {question}\r\nagent: {answer}" in term.text
        term.type("\x04")  # Ctrl-D
        term.read_until("bye")
        assert term.proc.wait(15) == 0
    finally:
        term.close()


def test_chat_stops_on_ctrl_c_while_the_answer_is_still_coming(stack: Stack) -> None:
    term = Terminal("chat", "-c", str(stack.config), "desk")
    try:
        term.read_until("chatting with desk")
        term.type("[slow 1] one two three four five six\n")
        term.read_until("agent: You said:")
        term.proc.send_signal(signal.SIGINT)
        assert term.proc.wait(15) == 0
        shown = term.drain()
        assert "five six" not in shown[shown.index("agent: "):], (
            "it stopped at once, without waiting for the rest of the answer")
    finally:
        term.close()


@pytest.mark.conversation
def test_chat_with_piped_input_prints_plain_lines_and_waits_for_its_own_answer(
    stack: Stack,
) -> None:
    """Another client's question is being answered when the chat's text arrives: the framework
    cuts that answer off, and the cut-off answer (final) is not taken for the chat's own."""
    mark = stack.probe.mark()
    stack.probe.publish(stack.topic("desk", "send"), "[slow 0.5] an earlier question of many words")
    stack.wait_for(stack.topic("desk", "message"),
                   lambda m: m.json()["type"] == "agent_transcript", after=mark)
    result = lkbridge("chat", "-c", str(stack.config), "desk", stdin="what is 2 + 2\n", timeout=60)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert "agent: You said: what is 2 + 2" in lines, result.stdout
    assert lines.index("agent: You said: what is 2 + 2") < lines.index("· bye")
    assert all("\x1b" not in line and "\r" not in line for line in lines)


@pytest.mark.conversation
def test_a_chat_client_interrupts_the_answer_a_send_wait_client_waits_for(stack: Stack) -> None:
    """Two clients of one session: the chat's text arrives while the agent thinks about the
    other client's question. The framework drops that reply; `send --wait` says so (exit 3)
    and never prints the chat's answer as its own."""
    mark = stack.probe.mark()
    waiting = subprocess.Popen(
        [sys.executable, "-m", "lkbridge", "send", "--wait", "-c", str(stack.config), "desk",
         "[think 5] a question it ponders"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        stack.wait_for(stack.topic("desk", "agent_state"), lambda m: m.text == "thinking",
                       after=mark)
        chat = lkbridge("chat", "-c", str(stack.config), "desk",
                        stdin="[instant] the chat's question\n", timeout=60)
        out, err = waiting.communicate(timeout=60)
    finally:
        if waiting.poll() is None:
            waiting.kill()
            waiting.wait(10)
    assert chat.returncode == 0, chat.stderr
    assert "agent: You said: [instant] the chat's question" in chat.stdout.splitlines(), chat.stdout
    assert waiting.returncode == 3, (out, err)
    assert out == "" and err.startswith("lkbridge send: interrupted:"), err


def test_send_wait_says_ended_when_the_session_ends_before_the_answer(stack: Stack) -> None:
    mark = stack.probe.mark()
    waiting = subprocess.Popen(
        [sys.executable, "-m", "lkbridge", "send", "--wait", "-c", str(stack.config), "hall",
         "[think 10] a question nobody answers"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        stack.wait_for(stack.topic("hall", "agent_state"), lambda m: m.text == "thinking",
                       after=mark)
        stack.probe.publish(f"{stack.base}/bridge/request/session/end", {"session": "hall"})
        out, err = waiting.communicate(timeout=60)
    finally:
        if waiting.poll() is None:
            waiting.kill()
            waiting.wait(10)
    assert waiting.returncode == 5, (out, err)
    assert out == "" and "ended" in err, err


def test_chat_names_the_sessions_when_the_one_asked_for_does_not_exist(stack: Stack) -> None:
    result = lkbridge("chat", "-c", str(stack.config), "kitchen", stdin="")
    assert result.returncode == 1
    assert "no session 'kitchen'" in result.stderr and "(sessions: desk, hall)" in result.stderr


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
