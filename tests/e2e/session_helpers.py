"""Helpers for the Session e2e tests: polling waits, an event recorder, minted sources."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from devstack.livekit_server import LiveKitServer
from lkbridge import (
    AgentChanged,
    ConnectionStateChanged,
    MessageReceived,
    MintedTokenSource,
    ReceivedMessage,
    Session,
)
from lkbridge.session.events import SessionEvent


async def wait_until(
    predicate: Callable[[], Any], timeout: float = 10.0, what: str = "condition"
) -> None:
    """Poll predicate until it is truthy; fail with `what` after timeout seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        await asyncio.sleep(0.02)


def minted(server: LiveKitServer, **kwargs: Any) -> MintedTokenSource:
    return MintedTokenSource(server.url, server.api_key, server.api_secret, **kwargs)


class Recorder:
    """Keeps every event a session emits (through a listener) for later assertions."""

    def __init__(self, session: Session) -> None:
        self.events: list[SessionEvent] = []
        session.add_listener(self.events.append)

    def states(self) -> list[str]:
        return [e.state.value for e in self.events if isinstance(e, ConnectionStateChanged)]

    def lifecycles(self) -> list[str]:
        out: list[str] = []
        for e in self.events:
            if isinstance(e, AgentChanged) and (not out or out[-1] != e.agent.lifecycle.value):
                out.append(e.agent.lifecycle.value)
        return out

    def agent_states(self) -> list[str | None]:
        out: list[str | None] = []
        for e in self.events:
            if isinstance(e, AgentChanged) and e.agent.state is not None:
                value = e.agent.state.value
                if not out or out[-1] != value:
                    out.append(value)
        return out

    def updates(self, message_id: str) -> list[ReceivedMessage]:
        return [
            e.message
            for e in self.events
            if isinstance(e, MessageReceived) and e.message.id == message_id
        ]
