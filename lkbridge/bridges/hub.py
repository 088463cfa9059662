"""The daemon/bridge seam: the hub API bridges use, and the Bridge protocol the daemon drives."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from types import TracebackType
from typing import Any, Protocol, runtime_checkable

from lkbridge.errors import LkbridgeError
from lkbridge.messages import ReceivedMessage


class HubError(LkbridgeError):
    """A command could not be carried out; the message is a clear sentence for the requester."""


class Expired(HubError):
    """The command's message expiry ran out before it could be carried out."""


class UnknownSession(HubError):
    def __init__(self, session_id: str) -> None:
        super().__init__(f"unknown session {session_id!r}")
        self.session_id = session_id


@dataclass(frozen=True, slots=True)
class ErrorInfo:
    """A session's current error as bridges see it (its message already scrubbed of secrets)."""

    kind: str
    message: str
    at: str | None = None  # ISO 8601; None for a session that could not be built

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "message": self.message, "at": self.at}


@dataclass(frozen=True, slots=True)
class SessionSnapshot:
    """A session's state at one moment (the retained `state` payload's typed form)."""

    session: str
    connection_state: str = "disconnected"
    is_connected: bool = False
    agent: Mapping[str, Any] | None = None  # the agent's JSON form (Agent.to_dict())
    error: ErrorInfo | None = None
    room: str | None = None
    wanted: bool = False
    restarts: int | None = None  # None: no runner (the session could not be built)
    timestamp: str | None = None  # ISO 8601, when taken
    retry_in: float | None = None  # seconds until a scheduled restart
    end_reason: str | None = None  # why the agent or room went away (until the next start)
    last_restart: Mapping[str, Any] | None = None  # {"reason", "at"} of the last restart
    sending: int | None = None  # texts on their way to the agent (None: no runner)

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "session": self.session,
            "connection_state": self.connection_state,
            "is_connected": self.is_connected,
            "agent": dict(self.agent) if self.agent is not None else None,
            "error": self.error.to_json() if self.error is not None else None,
            "room": self.room,
            "wanted": self.wanted,
        }
        if self.restarts is not None:  # a runner's snapshot: say why it went away, if it did
            data["end_reason"] = self.end_reason
            data["last_restart"] = dict(self.last_restart) if self.last_restart else None
        for key in ("restarts", "sending", "timestamp", "retry_in"):
            if (value := getattr(self, key)) is not None:
                data[key] = value
        return data


@dataclass(frozen=True, slots=True)
class MessageEvent:
    """A message of a session's history, new or updated."""

    session: str
    message: ReceivedMessage
    conversation_id: str | None = None  # of the question this message answers (Assist), if any

    def to_json(self) -> dict[str, Any]:
        """{id, timestamp, type, text, final, reply_to, session[, conversation_id]}."""
        data = self.message.to_dict() | {"session": self.session}
        if self.conversation_id is not None:
            data["conversation_id"] = self.conversation_id
        return data


@dataclass(frozen=True, slots=True)
class SessionChange:
    """A session was added or removed; `replaced`: a new one of the same id follows at once."""

    session: str
    replaced: bool = False

    def to_json(self) -> dict[str, Any]:
        return {"session": self.session, "replaced": self.replaced}


@dataclass(frozen=True, slots=True)
class SessionNotice:
    """A session-level event about a message, e.g. `unanswered` (`{base}/<id>/event`)."""

    session: str
    event: str
    details: Mapping[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"event": self.event, **self.details, "session": self.session}


@dataclass(frozen=True, slots=True)
class DaemonNotice:
    """A daemon-level event (plugin failed, messages dropped, config reloaded, ...)."""

    event: str
    details: Mapping[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"event": self.event, **self.details}


@dataclass(frozen=True, slots=True)
class HistoryStatus:
    """Whether message history reaches the disk, and if not, why."""

    persisted: bool
    database: str
    problem: str | None = None
    moved_aside: str | None = None  # where a damaged database was moved

    def to_json(self) -> dict[str, Any]:
        return {
            "persisted": self.persisted,
            "database": self.database,
            "problem": self.problem,
            "moved_aside": self.moved_aside,
        }


@dataclass(frozen=True, slots=True)
class StateStatus:
    """The state directory: where it is, its history, and an overrides file being ignored."""

    directory: str
    history: HistoryStatus
    overrides_problem: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "directory": self.directory,
            "history": self.history.to_json(),
            "overrides_problem": self.overrides_problem,
        }


@dataclass(frozen=True, slots=True)
class BridgeInfo:
    """The retained `bridge/info`: version, sessions, plugins, the config without secrets."""

    version: str
    sessions: tuple[str, ...]
    plugins: tuple[Mapping[str, Any], ...]  # one plain description per plugin
    plugin_conflicts: tuple[str, ...]
    config: Mapping[str, Any]  # the effective config as plain data, every secret redacted
    state: StateStatus
    last_reload_error: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "sessions": list(self.sessions),
            "plugins": [dict(p) for p in self.plugins],
            "plugin_conflicts": list(self.plugin_conflicts),
            "config": dict(self.config),
            "state": self.state.to_json(),
            "last_reload_error": self.last_reload_error,
        }


@dataclass(frozen=True, slots=True)
class Health:
    """The answer to health_check: uptime, each session's connection, what is broken."""

    uptime: float  # seconds
    sessions: Mapping[str, str]  # session id -> connection state
    broken_sessions: Mapping[str, str]  # session id -> why it could not be built
    state: StateStatus
    last_reload_error: str | None = None
    status: str = "ok"

    def to_json(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "uptime": self.uptime,
            "sessions": dict(self.sessions),
            "broken_sessions": dict(self.broken_sessions),
            "state": self.state.to_json(),
            "last_reload_error": self.last_reload_error,
        }


@dataclass(frozen=True, slots=True)
class ReloadResult:
    """What a config reload did, by session id, and the sections that need a restart."""

    added: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()
    changed: tuple[str, ...] = ()
    unchanged: tuple[str, ...] = ()
    needs_restart: tuple[str, ...] = ()

    def to_json(self) -> dict[str, list[str]]:
        return {
            "added": list(self.added),
            "removed": list(self.removed),
            "changed": list(self.changed),
            "unchanged": list(self.unchanged),
            "needs_restart": list(self.needs_restart),
        }


@dataclass(frozen=True, slots=True)
class SessionRemoved:
    """The answer to session/remove."""

    session: str
    removed: bool = True

    def to_json(self) -> dict[str, Any]:
        return {"session": self.session, "removed": self.removed}


class HubEventKind(StrEnum):
    STATE = "state"  # data: SessionSnapshot
    MESSAGE = "message"  # data: MessageEvent
    ERROR = "error"  # data: ErrorInfo, or None when cleared
    SESSION_EVENT = "session_event"  # data: SessionNotice
    SESSION_ADDED = "session_added"  # data: SessionChange
    SESSION_REMOVED = "session_removed"  # data: SessionChange
    BRIDGE = "bridge"  # data: DaemonNotice


HubEventData = (
    SessionSnapshot | MessageEvent | ErrorInfo | SessionChange | SessionNotice | DaemonNotice | None
)


@dataclass(frozen=True)
class HubEvent:
    """One thing that happened; session_id is "" for daemon-level events. The data are typed
    values; a bridge turns them into its wire format (to_json() for JSON) at its edge."""

    kind: HubEventKind
    session_id: str
    data: HubEventData = field(default=None)


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

    def snapshot(self, session_id: str) -> SessionSnapshot:
        """The session's current state (the retained `state` payload is its to_json())."""
        ...

    def current_error(self, session_id: str) -> ErrorInfo | None:
        """The session's current error, or None."""
        ...

    def session_config(self, session_id: str) -> object:
        """The session's current configuration, a `lkbridge.config.models.SessionConfig` (typed
        `object` here so this seam imports nothing but errors and messages); UnknownSession."""
        ...

    def info(self) -> BridgeInfo:
        """Bridge info: version, session ids, plugins, the effective config without secrets."""
        ...

    def observe(self, listener: HubListener) -> Callable[[], None]:
        """Call listener (synchronously, on the loop) for every HubEvent; returns an unsubscribe."""
        ...

    async def start_session(self, session_id: str) -> SessionSnapshot: ...

    async def end_session(self, session_id: str) -> SessionSnapshot: ...

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

    def journal(self, intents: Sequence[Intent]) -> list[int | HubError]:
        """Store intents (one commit, which a killed process keeps) before the bridge carries
        them out; the bridge acknowledges their messages once `durable()` returned.

        Returns, per intent, its journal sequence number, or why it was refused at once.
        """
        ...

    async def durable(self) -> None:
        """Return once everything journaled so far is on disk (fsynced); HubError if it failed."""
        ...

    def drop(self, seq: int) -> None:
        """Mark a journaled intent done without carrying it out (it was answered otherwise)."""
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

    def history(self, session_id: str) -> list[MessageEvent]:
        """The session's message history, oldest first."""
        ...

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
    ) -> SessionSnapshot:
        """Add a session made from the config file's [templates.<template>]; nothing else (no
        token source, secret, transport or address) can be chosen by the caller."""
        ...

    async def remove_session(self, session_id: str) -> SessionRemoved: ...

    async def reload(self) -> ReloadResult:
        """Re-read the config; says which sessions were added, removed, changed."""
        ...

    def health(self) -> Health: ...

    def provide_service(self, name: str, service: Any) -> None:
        """Offer a service to transports built after this call (`TransportContext.services`)."""
        ...

    def report(self, event: str, **data: Any) -> None:
        """Let a bridge report a daemon-level event (it reaches every bridge as a BRIDGE event)."""
        ...


@runtime_checkable
class Bridge(Protocol):
    """What the daemon needs of a bridge (what a BridgeFactory returns).

    The daemon enters it (`async with`) at start, before the sessions run, and leaves it at
    shutdown, after they have ended; entering must not wait for a remote peer.
    """

    async def __aenter__(self) -> object: ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None: ...

    async def wait_ready(self, timeout: float) -> bool:
        """Wait (at most timeout seconds) until it serves; False if not yet (start-up goes on)."""
        ...

    def status(self) -> str:
        """One short line for systemd's STATUS=, e.g. "MQTT connected"."""
        ...
