"""The hub API: the small surface through which bridges observe and command the daemon's sessions."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Protocol

from lkbridge.config.models import SessionConfig
from lkbridge.errors import LkbridgeError


class HubError(LkbridgeError):
    """A command could not be carried out; the message is a clear sentence for the requester."""


class UnknownSession(HubError):
    def __init__(self, session_id: str) -> None:
        super().__init__(f"unknown session {session_id!r}")
        self.session_id = session_id


class HubEventKind(StrEnum):
    STATE = "state"  # data: the session's state snapshot (see SessionSnapshot)
    MESSAGE = "message"  # data: the message event dict {id, timestamp, type, text, final, session}
    ERROR = "error"  # data: {kind, message, at} or None when cleared
    SESSION_ADDED = "session_added"  # data: {"session": id}
    SESSION_REMOVED = "session_removed"  # data: {"session": id}
    BRIDGE = "bridge"  # data: a daemon-level event {"event": name, ...} (plugin failed, overflow...)


@dataclass(frozen=True)
class HubEvent:
    """One thing that happened; session_id is "" for daemon-level events."""

    kind: HubEventKind
    session_id: str
    data: Mapping[str, Any] | None = field(default=None)


HubListener = Callable[[HubEvent], None]


class Hub(Protocol):
    """What a bridge may use. Every command raises HubError (or UnknownSession) with a clear text."""

    def session_ids(self) -> list[str]:
        """The ids of all sessions, in config order."""
        ...

    def snapshot(self, session_id: str) -> dict[str, Any]:
        """The session's current state as JSON-safe data (the retained `state` payload)."""
        ...

    def current_error(self, session_id: str) -> dict[str, Any] | None:
        """The session's current error {kind, message, at}, or None."""
        ...

    def session_config(self, session_id: str) -> SessionConfig:
        """The session's current configuration (raises UnknownSession)."""
        ...

    def info(self) -> dict[str, Any]:
        """Bridge info: version, session ids, plugins, the effective config without secrets."""
        ...

    def observe(self, listener: HubListener) -> Callable[[], None]:
        """Call listener (synchronously, on the loop) for every HubEvent; returns an unsubscribe."""
        ...

    async def start_session(self, session_id: str) -> dict[str, Any]: ...

    async def end_session(self, session_id: str) -> dict[str, Any]: ...

    async def send(
        self,
        session_id: str,
        text: str,
        *,
        send_id: str | None = None,
        conversation_id: str | None = None,
    ) -> dict[str, Any]:
        """Send text to the agent; with send_id, a repeated id is acknowledged but not sent again.

        conversation_id (e.g. Home Assistant's) is recorded on the message events of the
        agent's reply to this text. Returns {"id", "timestamp", "text", "duplicate": bool}.
        """
        ...

    def history(self, session_id: str) -> list[dict[str, Any]]: ...

    def restore(self, session_id: str, messages: list[dict[str, Any]]) -> int:
        """Replace the history with messages (message event shape); returns how many were kept."""
        ...

    def dismiss_error(self, session_id: str) -> None: ...

    async def add_session(
        self,
        session_id: str,
        template: str,
        *,
        agent_name: str | None = None,
        agent_metadata: str | None = None,
    ) -> dict[str, Any]:
        """Add a session made from the config file's [templates.<template>]; nothing else (no
        token source, secret, transport or address) can be chosen by the caller."""
        ...

    async def remove_session(self, session_id: str) -> dict[str, Any]: ...

    async def reload(self) -> dict[str, Any]:
        """Re-read the config; returns {"added": [...], "removed": [...], "changed": [...]}."""
        ...

    def health(self) -> dict[str, Any]: ...

    def provide_service(self, name: str, service: Any) -> None:
        """Offer a service to transports built after this call (`TransportContext.services`)."""
        ...

    def report(self, event: str, **data: Any) -> None:
        """Let a bridge report a daemon-level event (it reaches every bridge as a BRIDGE event)."""
        ...
