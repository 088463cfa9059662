"""An in-memory Hub for tests: sessions as dicts, every command recorded, events emitted by hand."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

from lkbridge.bridges.hub import (
    BridgeInfo,
    DaemonNotice,
    ErrorInfo,
    Health,
    HistoryStatus,
    HubError,
    HubEvent,
    HubEventKind,
    HubListener,
    Intent,
    MessageEvent,
    ReloadResult,
    SessionChange,
    SessionRemoved,
    SessionSnapshot,
    StateStatus,
    UnknownSession,
)
from lkbridge.messages import ReceivedMessage

MESSAGE = {
    "id": "m1",
    "timestamp": "2026-01-02T03:04:05.000+00:00",
    "type": "agent_transcript",
    "text": "hello",
    "final": True,
    "reply_to": None,
}

FAKE_STATE = StateStatus("/var/lib/lkbridge", HistoryStatus(True, "/var/lib/lkbridge/history.db"))


class FakeHub:
    """Just enough of the Hub protocol to route requests; records every command."""

    def __init__(self, *session_ids: str) -> None:
        self.sessions: dict[str, dict[str, Any]] = {
            sid: {"session": sid, "connection_state": "disconnected", "agent": None, "error": None}
            for sid in session_ids
        }
        self.histories: dict[str, list[MessageEvent]] = {sid: [] for sid in session_ids}
        self.calls: list[tuple[Any, ...]] = []
        self.listeners: list[HubListener] = []
        self.sent_ids: set[str] = set()
        self.fail_with: Exception | None = None
        self.services: dict[str, Any] = {}
        self.journaled_intents: list[Intent] = []
        self.dropped: list[int] = []
        self.configs: dict[str, Any] = {}  # session id -> SessionConfig (session_config())

    def _get(self, session_id: str) -> dict[str, Any]:
        if self.fail_with is not None:
            raise self.fail_with
        if session_id not in self.sessions:
            raise UnknownSession(session_id)
        return self.sessions[session_id]

    def change(self, session_id: str, **changes: Any) -> None:
        """Update a session's state and emit its STATE event, as the daemon does."""
        self.sessions[session_id].update(changes)
        self.emit(HubEvent(HubEventKind.STATE, session_id, self.snapshot(session_id)))

    def session_config(self, session_id: str) -> Any:
        self._get(session_id)
        if session_id not in self.configs:
            raise UnknownSession(session_id)
        return self.configs[session_id]

    def session_ids(self) -> list[str]:
        return list(self.sessions)

    def snapshot(self, session_id: str) -> SessionSnapshot:
        return snapshot_of(self._get(session_id))

    def current_error(self, session_id: str) -> ErrorInfo | None:
        return error_of(self._get(session_id).get("error"))

    def info(self) -> BridgeInfo:
        return BridgeInfo("test", tuple(self.session_ids()), (), (), {}, FAKE_STATE)

    def observe(self, listener: HubListener) -> Callable[[], None]:
        self.listeners.append(listener)
        return lambda: self.listeners.remove(listener)

    def emit(self, event: HubEvent) -> None:
        for listener in list(self.listeners):
            listener(event)

    async def start_session(self, session_id: str) -> SessionSnapshot:
        state = self._get(session_id)
        self.calls.append(("start", session_id))
        state["connection_state"] = "connecting"
        self.change(session_id)
        return self.snapshot(session_id)

    async def end_session(self, session_id: str) -> SessionSnapshot:
        state = self._get(session_id)
        self.calls.append(("end", session_id))
        state["connection_state"] = "disconnected"
        self.change(session_id)
        return self.snapshot(session_id)

    async def send(
        self,
        session_id: str,
        text: str,
        *,
        send_id: str | None = None,
        conversation_id: str | None = None,
    ) -> dict[str, Any]:
        self._get(session_id)
        duplicate = send_id is not None and send_id in self.sent_ids
        if send_id is not None:
            self.sent_ids.add(send_id)
        if not duplicate:
            self.calls.append(("send", session_id, text, send_id))
            message = {**MESSAGE, "id": send_id or "generated", "type": "user_input", "text": text}
            event = MessageEvent(session_id, ReceivedMessage.from_dict(message))
            self.emit(HubEvent(HubEventKind.MESSAGE, session_id, event))
        return {"id": send_id or "generated", "text": text, "duplicate": duplicate}

    def journal(self, intents: Sequence[Intent]) -> list[int | HubError]:
        results: list[int | HubError] = []
        for intent in intents:
            try:
                self._get(intent.session_id)
            except HubError as exc:
                results.append(exc)
                continue
            self.journaled_intents.append(intent)
            results.append(len(self.journaled_intents))
        return results

    async def durable(self) -> None:
        return None

    def drop(self, seq: int) -> None:
        self.dropped.append(seq)

    def journaled(self, digest: bytes) -> bool:
        return any(i.digest == digest for i in self.journaled_intents)

    async def carry_out(self, seq: int, intent: Intent) -> Awaitable[dict[str, Any]]:
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        try:
            if intent.kind == "send":
                result = await self.send(intent.session_id, intent.text or "",
                                         send_id=intent.send_id)
            elif intent.kind == "start":
                result = await self.start_session(intent.session_id)
            elif intent.kind == "end":
                result = await self.end_session(intent.session_id)
            else:
                self.dismiss_error(intent.session_id)
                result = {}
        except HubError as exc:
            future.set_exception(exc)
        else:
            future.set_result(result)
        return future

    def history(self, session_id: str) -> list[MessageEvent]:
        self._get(session_id)
        return list(self.histories.get(session_id, []))

    def restore(self, session_id: str, messages: list[dict[str, Any]]) -> int:
        self._get(session_id)
        self.calls.append(("restore", session_id, messages))
        self.histories[session_id] = [
            MessageEvent(session_id, ReceivedMessage.from_dict(m)) for m in messages
        ]
        return len(messages)

    def dismiss_error(self, session_id: str) -> None:
        self._get(session_id)["error"] = None
        self.calls.append(("dismiss_error", session_id))
        self.emit(HubEvent(HubEventKind.ERROR, session_id, None))

    async def add_session(
        self,
        session_id: str,
        template: str,
        *,
        agent_name: str | None = None,
        agent_metadata: str | None = None,
    ) -> SessionSnapshot:
        if session_id in self.sessions:
            raise HubError(f"session {session_id!r} already exists (remove it first)")
        if template != "assistant":
            raise HubError(f"template: unknown template {template!r}; known: assistant")
        self.sessions[session_id] = {"session": session_id, "error": None}
        self.histories[session_id] = []
        table = {"template": template, "agent_name": agent_name, "agent_metadata": agent_metadata}
        self.calls.append(("add", session_id, table))
        self.emit(HubEvent(HubEventKind.SESSION_ADDED, session_id, SessionChange(session_id)))
        return self.snapshot(session_id)

    async def remove_session(self, session_id: str) -> SessionRemoved:
        self._get(session_id)
        del self.sessions[session_id]
        self.calls.append(("remove", session_id))
        self.emit(HubEvent(HubEventKind.SESSION_REMOVED, session_id, SessionChange(session_id)))
        return SessionRemoved(session_id)

    async def reload(self) -> ReloadResult:
        self.calls.append(("reload",))
        return ReloadResult()

    def health(self) -> Health:
        return Health(0.0, {}, {}, FAKE_STATE)

    def provide_service(self, name: str, service: Any) -> None:
        self.services[name] = service

    def report(self, event: str, **data: Any) -> None:
        self.emit(HubEvent(HubEventKind.BRIDGE, "", DaemonNotice(event, data)))


def error_of(data: Mapping[str, Any] | None) -> ErrorInfo | None:
    """A test's error dict {kind, message, at} as the hub's typed value."""
    if data is None:
        return None
    return ErrorInfo(data["kind"], data["message"], data.get("at"))


def snapshot_of(state: Mapping[str, Any]) -> SessionSnapshot:
    """A test's loose state dict as the hub's typed snapshot."""
    return SessionSnapshot(
        session=state["session"],
        connection_state=state.get("connection_state", "disconnected"),
        is_connected=state.get("connection_state") == "connected",
        agent=state.get("agent"),
        error=error_of(state.get("error")),
        wanted=state.get("wanted", False),
        sending=state.get("sending"),
    )
