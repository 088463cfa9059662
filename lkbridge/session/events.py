"""Session observation: typed change events, listener callbacks and async event streams."""

from __future__ import annotations

import asyncio
import inspect
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from types import TracebackType
from typing import Any

from lkbridge.log import get_logger
from lkbridge.messages import ReceivedMessage, utcnow
from lkbridge.session.agent import Agent

log = get_logger(__name__)


class ConnectionState(StrEnum):
    """The session's connection state; `connecting` is the session's own (rtc has no such state)."""

    DISCONNECTED = "disconnected"
    CONNECTING = "connecting"
    CONNECTED = "connected"
    RECONNECTING = "reconnecting"


class SessionErrorKind(StrEnum):
    CONNECTION = "connection"
    SENDER = "sender"
    RECEIVER = "receiver"


_PREFIXES = {
    SessionErrorKind.CONNECTION: "Connection failed",
    SessionErrorKind.SENDER: "Message sender failed",
    SessionErrorKind.RECEIVER: "Message receiver failed",
}


@dataclass(frozen=True, slots=True)
class SessionError:
    """The session's last error; equal errors (same kind and cause) do not notify twice."""

    kind: SessionErrorKind
    cause: str
    at: datetime = field(default_factory=utcnow, compare=False)
    exception: BaseException | None = field(default=None, compare=False, repr=False)

    @property
    def message(self) -> str:
        """Readable text with the SDKs' fixed prefix, e.g. `Connection failed: <cause>`."""
        return f"{_PREFIXES[self.kind]}: {self.cause}"

    def __str__(self) -> str:
        return self.message

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind.value,
            "message": self.message,
            "at": self.at.isoformat(timespec="milliseconds"),
        }


@dataclass(frozen=True, slots=True)
class ConnectionStateChanged:
    state: ConnectionState
    previous: ConnectionState


@dataclass(frozen=True, slots=True)
class AgentChanged:
    agent: Agent
    previous: Agent


@dataclass(frozen=True, slots=True)
class MessageReceived:
    """A message was inserted (new id, appended) or updated in place (`inserted` is False)."""

    message: ReceivedMessage
    inserted: bool
    previous: ReceivedMessage | None = None


@dataclass(frozen=True, slots=True)
class ErrorChanged:
    """The session error was set, replaced or cleared (`error` is None)."""

    error: SessionError | None
    previous: SessionError | None


@dataclass(frozen=True, slots=True)
class MessageUnanswered:
    """A message this session sent will get no (whole) answer, or none came in time.

    `reason` is `interrupted` (a newer message was sent before its reply was final; see
    `superseded_by`), `ended` (the room or the agent went away first) or `timed_out` (no final
    reply within `SessionOptions.reply_timeout`; a reply that still comes is stored as usual).
    """

    message_id: str
    reason: str
    superseded_by: str | None = None
    at: datetime = field(default_factory=utcnow, compare=False)

    def to_dict(self) -> dict[str, Any]:
        return {
            "event": "unanswered",
            "id": self.message_id,
            "reason": self.reason,
            "superseded_by": self.superseded_by,
            "at": self.at.isoformat(timespec="milliseconds"),
        }


@dataclass(frozen=True, slots=True)
class HistoryRestored:
    """restore_message_history() replaced the whole history."""

    messages: tuple[ReceivedMessage, ...]


SessionEvent = (
    ConnectionStateChanged
    | AgentChanged
    | MessageReceived
    | ErrorChanged
    | HistoryRestored
    | MessageUnanswered
)
Listener = Callable[[SessionEvent], object]


class _End:
    """Sentinel: the stream is finished."""


_END = _End()


class EventStream:
    """`async for event in session.events()`: every event from creation on, in order.

    It is registered as soon as it is created, so nothing between `events()` and the first
    iteration is missed. It ends when the session is closed or when `aclose()` is called.
    If the consumer falls behind by more than `maxsize` events the oldest are dropped and
    counted in `dropped`.
    """

    def __init__(self, hub: EventHub, maxsize: int) -> None:
        self._hub = hub
        self._items: deque[SessionEvent | _End] = deque()
        self._maxsize = maxsize
        self._wakeup = asyncio.Event()
        self._finished = False
        self.dropped = 0

    def _put(self, item: SessionEvent | _End) -> None:
        if self._finished:
            return
        if isinstance(item, _End):
            self._finished = True
        elif len(self._items) >= self._maxsize:
            self._items.popleft()
            self.dropped += 1
            if self.dropped == 1 or self.dropped % 1000 == 0:
                log.warning("session_events_dropped", dropped=self.dropped)
        self._items.append(item)
        self._wakeup.set()

    def __aiter__(self) -> EventStream:
        return self

    async def __anext__(self) -> SessionEvent:
        while not self._items:
            self._wakeup.clear()
            await self._wakeup.wait()
        item = self._items.popleft()
        if isinstance(item, _End):
            self._items.appendleft(item)  # stay finished for later calls
            raise StopAsyncIteration
        return item

    async def aclose(self) -> None:
        self._hub._streams.discard(self)
        self._items.clear()
        self._put(_END)

    async def __aenter__(self) -> EventStream:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()


class EventHub:
    """Fans events out to listener callbacks (synchronously) and to event streams."""

    def __init__(self) -> None:
        self._listeners: list[Listener] = []
        self._streams: set[EventStream] = set()
        self._closed = False

    def add_listener(self, listener: Listener) -> None:
        if inspect.iscoroutinefunction(listener):
            raise TypeError("listeners are called synchronously; use session.events() to await")
        if listener not in self._listeners:
            self._listeners.append(listener)

    def remove_listener(self, listener: Listener) -> None:
        if listener in self._listeners:
            self._listeners.remove(listener)

    def stream(self, maxsize: int = 10_000) -> EventStream:
        stream = EventStream(self, maxsize)
        if self._closed:
            stream._put(_END)
        else:
            self._streams.add(stream)
        return stream

    def emit(self, event: SessionEvent) -> None:
        for listener in list(self._listeners):
            try:
                listener(event)
            except Exception as exc:  # a broken observer must not break the session
                log.error(
                    "session_listener_failed",
                    listener=getattr(listener, "__qualname__", repr(listener)),
                    event_type=type(event).__name__,
                    error=repr(exc),
                )
        for stream in list(self._streams):
            stream._put(event)

    def close(self) -> None:
        self._closed = True
        for stream in list(self._streams):
            stream._put(_END)
        self._streams.clear()
