"""Session lifecycle against the real LiveKit server and the scripted agent: connect, agent, end."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import pytest
from livekit import rtc

from devstack.livekit_server import LiveKitServer
from lkbridge import (
    AgentFailure,
    AgentLifecycle,
    AgentState,
    CachingTokenSource,
    ConnectionState,
    Session,
    SessionOptions,
)
from tests.e2e.session_helpers import Recorder, minted, wait_until

pytestmark = pytest.mark.e2e


async def test_start_agent_state_end_and_restart_in_a_fresh_room(
    livekit_server: LiveKitServer, scripted_agent: Callable[..., Any]
) -> None:
    agent = await scripted_agent(publish_initializing=True, state_delay=0.3)
    source = CachingTokenSource(minted(livekit_server))
    session = Session.with_agent(agent.agent_name, token_source=source)
    recorder = Recorder(session)
    async with session:
        start = asyncio.ensure_future(session.start())
        await wait_until(lambda: session.connection_state is ConnectionState.CONNECTING, 5)
        assert session.is_connected  # connecting counts as connected, as in the SDKs
        assert session.agent.lifecycle is AgentLifecycle.CONNECTING and session.agent.is_pending
        await start
        assert session.connection_state is ConnectionState.CONNECTED and session.error is None
        job = await agent.wait_for_job(timeout=10)
        assert session.room_name == job.room_name
        await wait_until(lambda: session.agent.is_connected, 10, "an active agent")
        assert session.agent.identity == job.identity
        assert session.agent.state is AgentState.LISTENING
        for state in ("thinking", "speaking", "idle", "listening"):
            await job.set_state(state)
            await wait_until(lambda s=state: session.agent.state == s, 5, f"agent state {state}")  # type: ignore[misc]
        assert recorder.agent_states() == [
            "initializing",
            "listening",
            "thinking",
            "speaking",
            "idle",
            "listening",
        ]
        first_room = session.room_name
        cached = source.cached_response()
        assert cached is not None and cached.room_name == first_room

        await session.end()
        assert session.connection_state is ConnectionState.DISCONNECTED
        assert session.agent.lifecycle is AgentLifecycle.DISCONNECTED
        assert source.cached_response() is None  # invalidated: the next start gets a new room
        assert recorder.states() == ["connecting", "connected", "disconnected"]
        assert recorder.lifecycles() == ["connecting", "connected", "disconnected"]

        await session.start()
        second_job = await agent.wait_for_job(timeout=10)
        assert second_job.room_name == session.room_name != first_room
        await wait_until(lambda: session.agent.is_connected, 10, "the new agent")
        assert session.agent.identity == second_job.identity
    assert session.connection_state is ConnectionState.DISCONNECTED  # aclose ended it


async def test_an_agent_that_never_comes_times_out_without_a_session_error(
    livekit_server: LiveKitServer, unique_name: Callable[[str], str]
) -> None:
    options = SessionOptions(agent_connect_timeout=1.5)
    async with Session.with_agent(
        unique_name("nobody"), token_source=minted(livekit_server), options=options
    ) as session:
        await session.start()
        started = time.monotonic()
        assert session.agent.lifecycle is AgentLifecycle.CONNECTING
        await wait_until(lambda: session.agent.failure is AgentFailure.TIMEOUT, 6, "timeout")
        assert time.monotonic() - started >= 1.3
        assert session.agent.lifecycle is AgentLifecycle.FAILED and session.agent.is_finished
        assert session.error is None
        assert session.connection_state is ConnectionState.CONNECTED


async def test_a_late_agent_clears_the_timeout_failure(
    livekit_server: LiveKitServer, scripted_agent: Callable[..., Any]
) -> None:
    agent = await scripted_agent(join_delay=2.5)
    options = SessionOptions(agent_connect_timeout=1.0)
    async with Session.with_agent(
        agent.agent_name, token_source=minted(livekit_server), options=options
    ) as session:
        recorder = Recorder(session)
        await session.start()
        await wait_until(lambda: session.agent.failure is AgentFailure.TIMEOUT, 5, "timeout")
        job = await agent.wait_for_job(timeout=10)
        await wait_until(lambda: session.agent.is_connected, 10, "the late agent")
        assert session.agent.failure is None and session.agent.identity == job.identity
        assert recorder.lifecycles() == ["connecting", "failed", "connected"]


async def test_an_agent_that_leaves_while_conversational_is_failed_left(
    livekit_server: LiveKitServer, scripted_agent: Callable[..., Any]
) -> None:
    agent = await scripted_agent()
    async with Session.with_agent(agent.agent_name, token_source=minted(livekit_server)) as session:
        await session.start()
        job = await agent.wait_for_job(timeout=10)
        await wait_until(lambda: session.agent.is_connected, 10, "an active agent")
        await job.leave()
        await wait_until(lambda: session.agent.failure is AgentFailure.LEFT, 10, "left")
        assert session.agent.lifecycle is AgentLifecycle.FAILED
        assert session.agent.identity == job.identity
        assert session.error is None and session.connection_state is ConnectionState.CONNECTED


async def test_no_timeout_when_the_token_dispatches_no_agent(
    livekit_server: LiveKitServer,
) -> None:
    options = SessionOptions(agent_connect_timeout=0.5)
    async with Session.from_configurable_token_source(
        minted(livekit_server), options=options
    ) as session:
        await session.start()
        assert session.connection_state is ConnectionState.CONNECTED
        await asyncio.sleep(1.5)
        assert session.agent.lifecycle is AgentLifecycle.CONNECTING
        assert session.agent.failure is None and session.agent.is_pending


async def test_events_stream_reports_the_changes_in_order(
    livekit_server: LiveKitServer, scripted_agent: Callable[..., Any]
) -> None:
    agent = await scripted_agent()
    session = Session.with_agent(agent.agent_name, token_source=minted(livekit_server))
    seen: list[str] = []

    async def consume() -> None:
        async for event in session.events():
            seen.append(type(event).__name__)

    consumer = asyncio.ensure_future(consume())
    await session.start()
    await wait_until(lambda: session.agent.is_connected, 10, "an active agent")
    await session.aclose()
    await asyncio.wait_for(consumer, 5)  # the stream ends when the session closes
    assert seen[0] == "ConnectionStateChanged"
    assert "AgentChanged" in seen and seen.count("ConnectionStateChanged") == 3


async def test_a_full_reconnect_never_marks_the_agent_as_left(
    livekit_server: LiveKitServer, scripted_agent: Callable[..., Any]
) -> None:
    # The scripted agent would leave when it sees our old connection go (it ignores the
    # disconnect reason, unlike the agents framework); keep it in the room for this test.
    agent = await scripted_agent(close_on_disconnect=False)
    async with Session.with_agent(agent.agent_name, token_source=minted(livekit_server)) as session:
        recorder = Recorder(session)
        await session.start()
        await agent.wait_for_job(timeout=10)
        await wait_until(lambda: session.agent.is_connected, 10, "an active agent")
        assert session.room is not None
        await session.room.simulate_scenario(rtc.SimulateScenarioKind.SIMULATE_FULL_RECONNECT)
        await wait_until(lambda: "reconnecting" in recorder.states(), 10, "reconnecting")
        await wait_until(
            lambda: session.connection_state is ConnectionState.CONNECTED, 15, "reconnected"
        )
        await wait_until(lambda: session.agent.is_connected, 10, "the agent again")
        assert recorder.states()[-2:] == ["reconnecting", "connected"]
        await asyncio.sleep(1.5)  # past the leave grace
        assert "failed" not in recorder.lifecycles() and session.agent.is_connected


async def test_an_unexpected_disconnect_invalidates_the_cached_token(
    livekit_server: LiveKitServer, scripted_agent: Callable[..., Any]
) -> None:
    agent = await scripted_agent()
    source = CachingTokenSource(minted(livekit_server))
    async with Session.with_agent(agent.agent_name, token_source=source) as session:
        await session.start()
        await agent.wait_for_job(timeout=10)
        first_room = session.room_name
        assert session.room is not None and source.cached_response() is not None
        await session.room.simulate_scenario(rtc.SimulateScenarioKind.SIMULATE_SERVER_LEAVE)
        await wait_until(
            lambda: session.connection_state is ConnectionState.DISCONNECTED, 15, "disconnect"
        )
        assert session.agent.lifecycle is AgentLifecycle.DISCONNECTED
        assert source.cached_response() is None
        await session.start()
        job = await agent.wait_for_job(timeout=10)
        assert job.room_name == session.room_name != first_room
