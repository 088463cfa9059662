"""The hub API: the small surface through which bridges observe and command the daemon's sessions."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Protocol

from lkbridge.errors import LkbridgeError


class HubError(LkbridgeError):
    """A command could not be carried out; the message is a clear sentence for the requester."""


class Expired(HubError):
    """The command's message expiry ran out before it could be carried out."""


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

INTENT_KINDS = ("send", "start", "end", "dismiss_error")


@dataclass(frozen=True)
class Intent:
    """A send or command a bridge received, to be journaled and carried out later, in order."""

    session_id: str
    kind: str  # one of INTENT_KINDS
    text: str | None = None  # send
    send_id: str | None = None  # send: the idempotency id, if any
    expires_at: float | None = None  # wall clock (time.time()); None: never expires
    digest: bytes | None = None  # identifies the received message (see Hub.journaled)

    def __post_init__(self) -> None:
        if self.kind not in INTENT_KINDS:
            raise ValueError(f"unknown intent kind {self.kind!r}")


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

    def info(self) -> dict[str, Any]:
        """Bridge info: version, session ids, plugins, the effective config without secrets."""
        ...

    def observe(self, listener: HubListener) -> Callable[[], None]:
        """Call listener (synchronously, on the loop) for every HubEvent; returns an unsubscribe."""
        ...

    async def start_session(self, session_id: str) -> dict[str, Any]: ...

    async def end_session(self, session_id: str) -> dict[str, Any]: ...

    async def send(self, session_id: str, text: str, *, send_id: str | None = None) -> dict[str, Any]:
        """Send text to the agent; with send_id, a repeated id is acknowledged but not sent again.

        Returns {"id", "timestamp", "text", "duplicate": bool}.
        """
        ...

    def journal(self, intents: Sequence[Intent]) -> list[int | HubError]:
        """Store intents (one commit, which a killed process keeps) before the bridge carries
        them out; the bridge acknowledges their messages once `durable()` returned.

        Returns, per intent, its journal sequence number, or why it was refused at once.
        """
        ...

    async def durable(self) -> None:
        """Return once everything journaled so far is on disk (fsynced); HubError if it failed."""
        ...

    def journaled(self, digest: bytes) -> bool:
        """Whether a message with this digest is in the journal (a redelivery, not a new one)."""
        ...

    async def carry_out(self, seq: int, intent: Intent) -> Awaitable[dict[str, Any]]:
        """Carry out a journaled intent, after the earlier ones of its session.

        Returns once a send is queued for the agent (its answer is the awaitable: the next one
        need not wait for it), or once a command is done. Failures (HubError, Expired) are
        raised by the awaitable. The journal entry is marked carried out in every case.
        """
        ...

    def history(self, session_id: str) -> list[dict[str, Any]]: ...

    def restore(self, session_id: str, messages: list[dict[str, Any]]) -> int:
        """Replace the history with messages (message event shape); returns how many were kept."""
        ...

    def dismiss_error(self, session_id: str) -> None: ...

    async def add_session(self, session_id: str, table: Mapping[str, Any]) -> dict[str, Any]: ...

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
