"""The Agent value object: lifecycle, lk.agent.state and the derived flags of spec §3.2."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Any

AGENT_STATE_ATTRIBUTE = "lk.agent.state"
PUBLISH_ON_BEHALF_ATTRIBUTE = "lk.publish_on_behalf"


class AgentLifecycle(StrEnum):
    """Client-side lifecycle of the session's agent (not an attribute value)."""

    DISCONNECTED = "disconnected"
    CONNECTING = "connecting"
    CONNECTED = "connected"
    FAILED = "failed"


class AgentState(StrEnum):
    """The agent's own state, read from its `lk.agent.state` participant attribute."""

    INITIALIZING = "initializing"
    IDLE = "idle"
    LISTENING = "listening"
    THINKING = "thinking"
    SPEAKING = "speaking"

    @classmethod
    def parse(cls, raw: str | None) -> AgentState | None:
        """The exact lower-case attribute value, or None when missing or unknown."""
        try:
            return cls(raw) if raw is not None else None
        except ValueError:
            return None


class AgentFailure(StrEnum):
    """Why the agent is failed."""

    TIMEOUT = "timeout"
    LEFT = "left"

    @property
    def message(self) -> str:
        if self is AgentFailure.TIMEOUT:
            return "Agent did not connect"
        return "Agent left the room unexpectedly"


CONVERSATIONAL_STATES = frozenset({AgentState.LISTENING, AgentState.THINKING, AgentState.SPEAKING})


@dataclass(frozen=True, slots=True)
class Agent:
    """An immutable snapshot of the session's agent; a new one replaces it on every change."""

    lifecycle: AgentLifecycle = AgentLifecycle.DISCONNECTED
    state: AgentState | None = None
    identity: str | None = None
    failure: AgentFailure | None = None
    buffering: bool = False
    """Pre-connect audio is being recorded while connecting (always False for a headless daemon)."""

    @classmethod
    def disconnected(cls) -> Agent:
        return cls()

    @classmethod
    def connecting(cls, *, buffering: bool = False) -> Agent:
        return cls(lifecycle=AgentLifecycle.CONNECTING, buffering=buffering)

    @classmethod
    def connected(cls, identity: str, state: AgentState | None) -> Agent:
        return cls(lifecycle=AgentLifecycle.CONNECTED, identity=identity, state=state)

    def failed(self, failure: AgentFailure) -> Agent:
        """The failed form of this agent; identity and last state are kept for display."""
        return Agent(
            lifecycle=AgentLifecycle.FAILED,
            state=self.state,
            identity=self.identity,
            failure=failure,
        )

    @property
    def is_connected(self) -> bool:
        """The agent is present and conversational (listening, thinking or speaking)."""
        return self.lifecycle is AgentLifecycle.CONNECTED and self.state in CONVERSATIONAL_STATES

    @property
    def can_listen(self) -> bool:
        """Input would reach the agent: it is conversational, or pre-connect audio is buffering."""
        if self.lifecycle is AgentLifecycle.CONNECTING:
            return self.buffering
        return self.is_connected

    @property
    def is_pending(self) -> bool:
        """Waiting for the agent: connecting without buffering, or present but idle/initializing."""
        if self.lifecycle is AgentLifecycle.CONNECTING:
            return not self.buffering
        if self.lifecycle is AgentLifecycle.CONNECTED:
            return self.state in (AgentState.IDLE, AgentState.INITIALIZING)
        return False

    @property
    def is_finished(self) -> bool:
        """Nothing more will happen without a new start: disconnected or failed."""
        return self.lifecycle in (AgentLifecycle.DISCONNECTED, AgentLifecycle.FAILED)

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe form for bridges and status output."""
        return {
            "lifecycle": self.lifecycle.value,
            "state": self.state.value if self.state is not None else None,
            "identity": self.identity,
            "failure": self.failure.value if self.failure is not None else None,
            "is_connected": self.is_connected,
            "can_listen": self.can_listen,
            "is_pending": self.is_pending,
            "is_finished": self.is_finished,
        }


def derive_agent(
    current: Agent,
    candidate: tuple[str, Mapping[str, str]] | None,
    *,
    reconnecting: bool = False,
    timed_out_identity: str | None = None,
) -> Agent:
    """The next Agent of a connected session (spec §3.2 transitions, with the [PY] refinements).

    `candidate` is the first agent participant's (identity, attributes), or None. Unlike the
    reference SDKs, a failure is sticky: it is cleared only by an agent that appears (or, for
    the agent that timed out, becomes conversational), by a new start, or by a disconnect; and
    while `reconnecting` a missing agent is not judged as left.
    """
    if candidate is not None:
        identity, attributes = candidate
        state = AgentState.parse(attributes.get(AGENT_STATE_ATTRIBUTE))
        agent = Agent.connected(identity, state)
        if (
            current.failure is AgentFailure.TIMEOUT
            and identity == timed_out_identity
            and not agent.is_connected
        ):
            return replace(current, state=state)  # the same slow agent: still failed
        return agent
    if reconnecting:
        return current
    if current.is_connected:
        return current.failed(AgentFailure.LEFT)
    if current.lifecycle is AgentLifecycle.FAILED:
        return current
    return Agent.connecting(buffering=current.buffering)
