"""An in-memory Hub for tests: sessions as dicts, every command recorded, events emitted by hand."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

from lkbridge.bridges.hub import (
    HubError,
    HubEvent,
    HubEventKind,
    HubListener,
    Intent,
    UnknownSession,
)

MESSAGE = {
    "id": "m1",
    "timestamp": "2026-01-02T03:04:05.000+00:00",
    "type": "agent_transcript",
    "text": "hello",
    "final": True,
}


class FakeHub:
    """Just enough of the Hub protocol to route requests; records every command."""

    def __init__(self, *session_ids: str) -> None:
        self.sessions: dict[str, dict[str, Any]] = {
            sid: {"session": sid, "connection_state": "disconnected", "agent": None, "error": None}
            for sid in session_ids
        }
        self.histories: dict[str, list[dict[str, Any]]] = {sid: [] for sid in session_ids}
        self.calls: list[tuple[Any, ...]] = []
        self.listeners: list[HubListener] = []
        self.sent_ids: set[str] = set()
        self.fail_with: Exception | None = None
        self.services: dict[str, Any] = {}
        self.journaled_intents: list[Intent] = []

    def _get(self, session_id: str) -> dict[str, Any]:
        if self.fail_with is not None:
            raise self.fail_with
        if session_id not in self.sessions:
            raise UnknownSession(session_id)
        return self.sessions[session_id]

    def change(self, session_id: str, **changes: Any) -> None:
        """Update a session's state and emit its STATE event, as the daemon does."""
        self.sessions[session_id].update(changes)
        self.emit(HubEvent(HubEventKind.STATE, session_id, dict(self.sessions[session_id])))

    def session_ids(self) -> list[str]:
        return list(self.sessions)

    def snapshot(self, session_id: str) -> dict[str, Any]:
        return dict(self._get(session_id))

    def current_error(self, session_id: str) -> dict[str, Any] | None:
        error: dict[str, Any] | None = self._get(session_id)["error"]
        return error

    def info(self) -> dict[str, Any]:
        return {"version": "test", "sessions": self.session_ids()}

    def observe(self, listener: HubListener) -> Callable[[], None]:
        self.listeners.append(listener)
        return lambda: self.listeners.remove(listener)

    def emit(self, event: HubEvent) -> None:
        for listener in list(self.listeners):
            listener(event)

    async def start_session(self, session_id: str) -> dict[str, Any]:
        state = self._get(session_id)
        self.calls.append(("start", session_id))
        state["connection_state"] = "connecting"
        self.change(session_id)
        return dict(state)

    async def end_session(self, session_id: str) -> dict[str, Any]:
        state = self._get(session_id)
        self.calls.append(("end", session_id))
        state["connection_state"] = "disconnected"
        self.change(session_id)
        return dict(state)

    async def send(
        self, session_id: str, text: str, *, send_id: str | None = None
    ) -> dict[str, Any]:
        self._get(session_id)
        duplicate = send_id is not None and send_id in self.sent_ids
        if send_id is not None:
            self.sent_ids.add(send_id)
        if not duplicate:
            self.calls.append(("send", session_id, text, send_id))
            message = {**MESSAGE, "id": send_id or "generated", "type": "user_input"}
            self.emit(HubEvent(HubEventKind.MESSAGE, session_id, message | {"text": text}))
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

    def history(self, session_id: str) -> list[dict[str, Any]]:
        self._get(session_id)
        return list(self.histories[session_id])

    def restore(self, session_id: str, messages: list[dict[str, Any]]) -> int:
        self._get(session_id)
        self.calls.append(("restore", session_id, messages))
        self.histories[session_id] = [dict(m, session=session_id) for m in messages]
        return len(messages)

    def dismiss_error(self, session_id: str) -> None:
        self._get(session_id)["error"] = None
        self.calls.append(("dismiss_error", session_id))
        self.emit(HubEvent(HubEventKind.ERROR, session_id, None))

    async def add_session(self, session_id: str, table: Mapping[str, Any]) -> dict[str, Any]:
        if session_id in self.sessions:
            raise HubError(f"session {session_id!r} already exists (remove it first)")
        if "token" not in table:
            raise HubError(f"sessions.{session_id}.token: missing")
        self.sessions[session_id] = {"session": session_id, "error": None}
        self.histories[session_id] = []
        self.calls.append(("add", session_id, dict(table)))
        self.emit(HubEvent(HubEventKind.SESSION_ADDED, session_id, {"session": session_id}))
        return dict(self.sessions[session_id])

    async def remove_session(self, session_id: str) -> dict[str, Any]:
        self._get(session_id)
        del self.sessions[session_id]
        self.calls.append(("remove", session_id))
        self.emit(HubEvent(HubEventKind.SESSION_REMOVED, session_id, {"session": session_id}))
        return {"session": session_id, "removed": True}

    async def reload(self) -> dict[str, Any]:
        self.calls.append(("reload",))
        return {"added": [], "removed": [], "changed": []}

    def health(self) -> dict[str, Any]:
        return {"status": "ok"}

    def provide_service(self, name: str, service: Any) -> None:
        self.services[name] = service

    def report(self, event: str, **data: Any) -> None:
        self.emit(HubEvent(HubEventKind.BRIDGE, "", {"event": event, **data}))
