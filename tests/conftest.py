"""Session-scoped fixtures for the real parts: Mosquitto, the LiveKit server and the scripted agent."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from devstack.livekit_server import LiveKitServer, ServerUnavailable, ensure_binary
from devstack.mosquitto import Mosquitto, find_mosquitto

IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}
TEST_ADDR = os.environ.get("LKB_TEST_ADDR", "127.0.0.1")
ROOT = Path(__file__).resolve().parent.parent


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
