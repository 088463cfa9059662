"""Fixtures for the real parts: Mosquitto, the LiveKit server, the agents, and CPU load."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from devstack.framework_agent import AgentUnavailable, FrameworkAgentProcess
from devstack.livekit_server import LiveKitServer, ServerUnavailable, ensure_binary
from devstack.mosquitto import Mosquitto, find_mosquitto
from tests.support.daemon_proc import DaemonProcess

IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}
TEST_ADDR = os.environ.get("LKB_TEST_ADDR", "127.0.0.1")
ROOT = Path(__file__).resolve().parent.parent
_LOAD = os.environ.get("LKB_CPU_LOAD", "").strip().lower()
CPU_LOAD = int(_LOAD) if _LOAD.isdigit() else (1 if _LOAD in {"true", "yes"} else 0)
"""Busy-loop processes per core beside the tests: LKB_CPU_LOAD=1 (or true) one, N: N."""


def _unavailable(reason: str) -> None:
    """In CI a missing real part is a hard failure; elsewhere the e2e test skips, saying why."""
    if IN_CI:
        pytest.fail(f"CI=true and {reason}", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def log_dir() -> Path:
    path = Path(os.environ.get("LKB_TEST_LOG_DIR", ROOT / "test-logs"))
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture(scope="session")
def test_addr() -> str:
    """The address the LiveKit server binds to and advertises (inside the test namespace)."""
    return TEST_ADDR


@pytest.fixture(scope="session")
def _mosquitto_session(log_dir: Path) -> Iterator[Mosquitto]:
    if find_mosquitto() is None:
        _unavailable("mosquitto is not installed (apt-get install mosquitto), so e2e tests cannot run")
    broker = Mosquitto(log_dir=log_dir)
    broker.start()
    yield broker
    broker.stop()


@pytest.fixture
def mqtt_broker(_mosquitto_session: Mosquitto) -> Mosquitto:
    """The shared broker, started again if an earlier test stopped it."""
    if not _mosquitto_session.running:
        _mosquitto_session.start()
    return _mosquitto_session


@pytest.fixture
def private_broker(log_dir: Path) -> Iterator[Mosquitto]:
    """A broker of this test's own, for tests that stop, kill or restart it."""
    if find_mosquitto() is None:
        _unavailable("mosquitto is not installed (apt-get install mosquitto), so e2e tests cannot run")
    broker = Mosquitto(log_dir=log_dir)
    broker.start()
    yield broker
    broker.stop()


@pytest.fixture(scope="session")
def livekit_server(log_dir: Path) -> Iterator[LiveKitServer]:
    try:
        binary = ensure_binary(build=IN_CI or os.environ.get("LKB_BUILD_SERVER") == "1")
    except ServerUnavailable as exc:
        _unavailable(f"{exc} (run `make test` to build it)")
        raise
    server = LiveKitServer(addr=TEST_ADDR, log_dir=log_dir, binary=binary)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def unique_name() -> Callable[[str], str]:
    """Unique names for rooms and agents, so tests never share dispatch state."""

    def make(prefix: str) -> str:
        return f"{prefix}-{uuid.uuid4().hex[:10]}"

    return make


@pytest.fixture
async def scripted_agent(
    livekit_server: LiveKitServer, unique_name: Callable[[str], str]
) -> AsyncIterator[Callable[..., Awaitable[Any]]]:
    """Factory: `agent = await scripted_agent(**options)` registers a worker; all closed at teardown."""
    from devstack.agent import ScriptedAgent

    agents: list[ScriptedAgent] = []

    async def make(agent_name: str | None = None, **options: Any) -> ScriptedAgent:
        agent = ScriptedAgent(
            url=livekit_server.url,
            api_key=livekit_server.api_key,
            api_secret=livekit_server.api_secret,
            agent_name=agent_name or unique_name("agent"),
            **options,
        )
        await agent.start()
        agents.append(agent)
        return agent

    yield make
    for agent in agents:
        await agent.aclose()


# --- CPU load: busy devices -------------------------------------------------------------


@pytest.fixture(scope="session", autouse=True)
def cpu_load() -> Iterator[int]:
    """With LKB_CPU_LOAD=1, one busy-loop process per core (normal priority) runs beside the
    whole test session, as on a device whose CPU is busy with other work (LKB_CPU_LOAD=N: N per
    core). Yields their count."""
    if not CPU_LOAD:
        yield 0
        return
    burners = [
        subprocess.Popen([sys.executable, "-c", "while True: pass"], stdin=subprocess.DEVNULL)
        for _ in range(CPU_LOAD * (os.cpu_count() or 1))
    ]
    try:
        yield len(burners)
    finally:
        for proc in burners:
            proc.kill()
        for proc in burners:
            proc.wait(10)


_CONVERSATION_SUMMARIES = pytest.StashKey[list[str]]()


@pytest.fixture
def conversation_summary(request: pytest.FixtureRequest) -> list[str]:
    """Lines a conversation test reports; printed at the end of the run (CI keeps them)."""
    return request.config.stash.setdefault(_CONVERSATION_SUMMARIES, [])


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    lines = terminalreporter.config.stash.get(_CONVERSATION_SUMMARIES, [])
    if lines:
        terminalreporter.section("replies whole (conversation tests)")
        for line in lines:
            terminalreporter.write_line(line)


def pytest_report_header(config: pytest.Config) -> str:
    if CPU_LOAD:
        count = CPU_LOAD * (os.cpu_count() or 1)
        return f"cpu load: {count} busy-loop processes beside the tests (LKB_CPU_LOAD)"
    return "cpu load: none (LKB_CPU_LOAD=1 adds one busy-loop process per core)"


# --- the agent on the real LiveKit Agents framework ------------------------------------


def _start_framework_agent(
    server: LiveKitServer, agent_name: str, log_dir: Path
) -> FrameworkAgentProcess:
    agent = FrameworkAgentProcess(
        url=server.url,
        api_key=server.api_key,
        api_secret=server.api_secret,
        agent_name=agent_name,
        log_path=log_dir / f"framework-agent-{agent_name}.log",
    )
    try:
        agent.start()
    except AgentUnavailable as exc:
        _unavailable(str(exc))
    return agent


@pytest.fixture(scope="session")
def framework_agent(livekit_server: LiveKitServer, log_dir: Path) -> Iterator[FrameworkAgentProcess]:
    """One worker of the real LiveKit Agents framework (devstack/framework_agent/worker.py),
    registered for explicit dispatch under `.agent_name`, shared by the whole test session:
    every session that dispatches it gets a fresh room and its own job. Replies are
    `You said: <text>`, streamed in word chunks; see worker.py for the switches."""
    agent = _start_framework_agent(livekit_server, f"fw-{uuid.uuid4().hex[:8]}", log_dir)
    yield agent
    agent.stop()


@pytest.fixture
def framework_agent_factory(
    livekit_server: LiveKitServer, log_dir: Path, unique_name: Callable[[str], str]
) -> Iterator[Callable[..., FrameworkAgentProcess]]:
    """Factory for a worker of the test's own (for tests that kill or restart it)."""
    agents: list[FrameworkAgentProcess] = []

    def make(agent_name: str | None = None) -> FrameworkAgentProcess:
        agent = _start_framework_agent(livekit_server, agent_name or unique_name("fw"), log_dir)
        agents.append(agent)
        return agent

    yield make
    for agent in agents:
        agent.stop()


@pytest.fixture
def daemon_factory(
    tmp_path: Path, livekit_server: LiveKitServer, log_dir: Path
) -> Iterator[Callable[..., DaemonProcess]]:
    """Starts lkbridge daemons (subprocesses) on a config; kills those still running after."""
    procs: list[DaemonProcess] = []

    def make(config: Path) -> DaemonProcess:
        proc = DaemonProcess(config, livekit_server, log_dir / f"daemon-{tmp_path.name}.log")
        proc.start()
        procs.append(proc)
        return proc

    yield make
    for proc in procs:
        if proc.proc is not None and proc.proc.poll() is None:
            proc.kill()
