"""Agent: the derived flags of spec §3.2 and the lifecycle transitions."""

from __future__ import annotations

import json

import pytest

from lkbridge.session.agent import (
    Agent,
    AgentFailure,
    AgentLifecycle,
    AgentState,
    derive_agent,
)

# lifecycle -> (is_connected, can_listen, is_pending, is_finished)
TABLE = [
    (Agent.disconnected(), (False, False, False, True)),
    (Agent.connecting(buffering=True), (False, True, False, False)),
    (Agent.connecting(buffering=False), (False, False, True, False)),
    (Agent.connected("a", AgentState.LISTENING), (True, True, False, False)),
    (Agent.connected("a", AgentState.THINKING), (True, True, False, False)),
    (Agent.connected("a", AgentState.SPEAKING), (True, True, False, False)),
    (Agent.connected("a", AgentState.IDLE), (False, False, True, False)),
    (Agent.connected("a", AgentState.INITIALIZING), (False, False, True, False)),
    (Agent.connected("a", None), (False, False, False, False)),  # Flutter: missing state
    (
        Agent.connected("a", AgentState.LISTENING).failed(AgentFailure.TIMEOUT),
        (False, False, False, True),
    ),
    (Agent.connecting().failed(AgentFailure.LEFT), (False, False, False, True)),
]


@pytest.mark.parametrize(("agent", "flags"), TABLE)
def test_derived_flags_follow_the_spec_table(agent: Agent, flags: tuple[bool, ...]) -> None:
    assert (agent.is_connected, agent.can_listen, agent.is_pending, agent.is_finished) == flags


def test_headless_default_is_not_buffering() -> None:
    assert Agent.connecting().buffering is False
    assert Agent.connecting().is_pending


@pytest.mark.parametrize(
    ("raw", "state"),
    [
        ("idle", AgentState.IDLE),
        ("initializing", AgentState.INITIALIZING),
        ("listening", AgentState.LISTENING),
        ("thinking", AgentState.THINKING),
        ("speaking", AgentState.SPEAKING),
        ("Listening", None),
        ("dancing", None),
        ("", None),
        (None, None),
    ],
)
def test_agent_state_parsing_is_exact(raw: str | None, state: AgentState | None) -> None:
    assert AgentState.parse(raw) is state


def test_failed_keeps_identity_and_last_state_and_has_messages() -> None:
    failed = Agent.connected("agent-x", AgentState.IDLE).failed(AgentFailure.TIMEOUT)
    assert failed.lifecycle is AgentLifecycle.FAILED
    assert (failed.identity, failed.state, failed.failure) == (
        "agent-x",
        AgentState.IDLE,
        "timeout",
    )
    assert AgentFailure.TIMEOUT.message == "Agent did not connect"
    assert AgentFailure.LEFT.message == "Agent left the room unexpectedly"


def test_to_dict_is_json_safe() -> None:
    data = json.loads(json.dumps(Agent.connected("a", AgentState.THINKING).to_dict()))
    assert data == {
        "lifecycle": "connected",
        "state": "thinking",
        "identity": "a",
        "failure": None,
        "is_connected": True,
        "can_listen": True,
        "is_pending": False,
        "is_finished": False,
    }


def candidate(
    identity: str = "agent-1", state: str | None = "listening"
) -> tuple[str, dict[str, str]]:
    return identity, ({"lk.agent.state": state} if state is not None else {})


def test_an_agent_candidate_connects_and_follows_its_state_attribute() -> None:
    agent = derive_agent(Agent.connecting(), candidate(state=None))
    assert (agent.lifecycle, agent.state) == (AgentLifecycle.CONNECTED, None)
    agent = derive_agent(agent, candidate(state="thinking"))
    assert agent == Agent.connected("agent-1", AgentState.THINKING)


def test_a_conversational_agent_that_leaves_is_failed_left() -> None:
    agent = derive_agent(Agent.connected("agent-1", AgentState.SPEAKING), None)
    assert (agent.lifecycle, agent.failure) == (AgentLifecycle.FAILED, AgentFailure.LEFT)
    assert derive_agent(agent, None) == agent  # sticky until an agent appears
    assert derive_agent(agent, candidate("agent-2")).is_connected


def test_an_idle_agent_that_leaves_goes_back_to_connecting() -> None:
    agent = derive_agent(Agent.connected("agent-1", AgentState.IDLE), None)
    assert agent == Agent.connecting()


def test_no_judgement_while_reconnecting() -> None:
    current = Agent.connected("agent-1", AgentState.LISTENING)
    assert derive_agent(current, None, reconnecting=True) is current


def test_a_late_agent_clears_a_timeout_failure() -> None:
    timed_out = Agent.connecting().failed(AgentFailure.TIMEOUT)
    assert derive_agent(timed_out, None) == timed_out
    late = derive_agent(timed_out, candidate("agent-late", state=None), timed_out_identity=None)
    assert late.lifecycle is AgentLifecycle.CONNECTED and late.failure is None


def test_the_slow_agent_that_timed_out_stays_failed_until_it_is_conversational() -> None:
    slow = Agent.connected("agent-1", AgentState.INITIALIZING).failed(AgentFailure.TIMEOUT)
    still = derive_agent(slow, candidate("agent-1", "idle"), timed_out_identity="agent-1")
    assert still.failure is AgentFailure.TIMEOUT and still.state is AgentState.IDLE
    ready = derive_agent(still, candidate("agent-1", "listening"), timed_out_identity="agent-1")
    assert ready.is_connected and ready.failure is None
