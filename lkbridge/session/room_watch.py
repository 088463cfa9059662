"""RoomWatch: a session's room events and who its agent is (leave grace, connect timeout)."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any

from livekit import rtc
from livekit.rtc.room import EventTypes

from lkbridge.session.agent import (
    PUBLISH_ON_BEHALF_ATTRIBUTE,
    Agent,
    AgentFailure,
    AgentLifecycle,
    derive_agent,
)
from lkbridge.session.events import ConnectionState
from lkbridge.session.state import SessionState

_AGENT_EVENTS: tuple[EventTypes, ...] = (
    "participant_connected",
    "participant_disconnected",
    "participant_active",
    "participant_attributes_changed",
    "participant_metadata_changed",
    "participant_name_changed",
    "track_published",
    "track_unpublished",
    "track_subscribed",
    "track_unsubscribed",
)


AGENT_LEAVE_GRACE = 1.0
"""Seconds before an agent that vanished without a known reason counts as having left."""


def _is_agent_candidate(p: rtc.RemoteParticipant) -> bool:
    return p.kind == rtc.ParticipantKind.PARTICIPANT_KIND_AGENT and not p.attributes.get(
        PUBLISH_ON_BEHALF_ATTRIBUTE
    )


class RoomWatch(SessionState):
    """Follows the current rtc.Room: reconnects, an unexpected disconnect, and the agent in it.

    Session builds on this; it owns the room's lifecycle (start, end) and the tasks it spawns.
    """

    def __init__(self, *, name: str | None = None, history_limit: int | None = None) -> None:
        super().__init__(name=name, history_limit=history_limit)
        self._room: rtc.Room | None = None
        self._agent_timer: asyncio.Task[None] | None = None
        self._leave_timer: asyncio.Task[None] | None = None
        self._timed_out_identity: str | None = None
        self._disconnect_reason: str | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._ending = False

    def _room_dropped(self, room: rtc.Room) -> None:
        """The room dropped the session unexpectedly (Session invalidates and releases)."""
        raise NotImplementedError

    # ------------------------------------------------------------------ tasks

    def _spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro, name=f"lkbridge.session.core.{name}")
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            self._log.error(
                "session_task_failed", task=task.get_name(), error=repr(task.exception())
            )

    # ------------------------------------------------------------------ room and agent

    def _observe(self, room: rtc.Room) -> None:
        def changed(*_: object) -> None:
            if room is self._room:
                self._update_agent()

        def participant_left(participant: rtc.RemoteParticipant) -> None:
            if room is self._room:
                # A known reason (e.g. CLIENT_INITIATED) is a real departure: judge at once.
                self._update_agent(judge_left=participant.disconnect_reason is not None)

        for event in _AGENT_EVENTS:
            room.on(event, participant_left if event == "participant_disconnected" else changed)
        room.on("reconnecting", lambda: self._on_reconnecting(room))
        room.on("reconnected", lambda: self._on_reconnected(room))
        room.on("disconnected", lambda reason: self._on_disconnected(room, reason))

    def _on_reconnecting(self, room: rtc.Room) -> None:
        if room is self._room and self.is_connected:
            self._set_connection_state(ConnectionState.RECONNECTING)

    def _on_reconnected(self, room: rtc.Room) -> None:
        if room is self._room and self.is_connected:
            self._set_connection_state(ConnectionState.CONNECTED)
            self._update_agent()

    def _on_disconnected(self, room: rtc.Room, reason: rtc.DisconnectReason.ValueType) -> None:
        if room is not self._room or self._connection_state is ConnectionState.DISCONNECTED:
            return
        intentional = self._ending or reason == rtc.DisconnectReason.CLIENT_INITIATED
        self._cancel_agent_timer()
        if not intentional:
            self._disconnect_reason = (
                rtc.DisconnectReason.Name(reason) if reason else "UNKNOWN_REASON"
            )
        self._set_connection_state(ConnectionState.DISCONNECTED)
        self._set_agent(Agent.disconnected())
        if not intentional:
            reason_name = self._disconnect_reason
            self._log.warning("session_disconnected_unexpectedly", reason=reason_name)
            self._room_dropped(room)

    def _update_agent(self, *, judge_left: bool = False) -> None:
        """Re-derive the agent from the room (spec §3.2, with the [PY] refinements).

        A full reconnect removes every remote participant a moment before the room reports
        `reconnecting`, so an agent that vanishes without a known reason is judged as left
        only after AGENT_LEAVE_GRACE seconds, and never while reconnecting.
        """
        room = self._room
        if self._connection_state is ConnectionState.DISCONNECTED:
            self._set_agent(Agent.disconnected())
            return
        if self._connection_state is ConnectionState.CONNECTING or room is None:
            return
        if not room.isconnected():
            return
        participant = next(
            (p for p in room.remote_participants.values() if _is_agent_candidate(p)), None
        )
        candidate = (participant.identity, participant.attributes) if participant else None
        hold = self._connection_state is ConnectionState.RECONNECTING
        if candidate is None and self._agent.is_connected and not hold and not judge_left:
            hold = True
            if self._leave_timer is None:
                self._leave_timer = self._spawn(self._leave_grace(), "agent_leave_grace")
        self._set_agent(
            derive_agent(
                self._agent,
                candidate,
                reconnecting=hold,
                timed_out_identity=self._timed_out_identity,
            )
        )

    async def _leave_grace(self) -> None:
        await asyncio.sleep(AGENT_LEAVE_GRACE)
        self._leave_timer = None
        self._update_agent(judge_left=True)

    async def _agent_timeout(self, timeout: float) -> None:
        await asyncio.sleep(timeout)
        agent = self._agent
        if not self.is_connected or agent.is_connected:
            return
        if agent.lifecycle not in (AgentLifecycle.CONNECTING, AgentLifecycle.CONNECTED):
            return
        self._timed_out_identity = agent.identity
        self._log.warning("agent_timed_out", timeout=timeout, identity=agent.identity)
        self._set_agent(agent.failed(AgentFailure.TIMEOUT))

    def _cancel_agent_timer(self) -> None:
        for timer in (self._agent_timer, self._leave_timer):
            if timer is not None:
                timer.cancel()
        self._agent_timer = self._leave_timer = None
