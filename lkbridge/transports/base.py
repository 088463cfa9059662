"""The message transport contract: MessageSender, MessageReceiver, room binding and base classes.

A transport is any object with one or both of these shapes (like httpx's transport base, the
contract is two methods; everything else is optional):

* ``MessageSender`` — ``async def send(self, message: SentMessage) -> None``; raise to fail.
* ``MessageReceiver`` — ``def messages(self) -> AsyncIterator[ReceivedMessage]`` and
  ``async def aclose(self) -> None``. The session calls ``messages()`` once and consumes it
  until ``aclose()``; a message whose id is already known updates that message in place.
  Raising from the iterator is fatal: the session records a ``receiver`` error and stops
  consuming that receiver.

A transport that needs the LiveKit room also implements ``RoomBound``: the session creates a
fresh ``rtc.Room`` for every ``start()``, calls ``await bind(binding)`` on each distinct
transport before connecting (so stream handlers are registered in time) and ``await unbind()``
when that room is finished with (``end()``, unexpected disconnect, next ``start()``, ``aclose()``).
A transport is bound to at most one room at a time. Through the binding a transport can also
report a non-fatal error (``binding.report_error(exc)``), which becomes the session's
``receiver`` error while the transport keeps running.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Iterator
from contextvars import ContextVar
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from lkbridge.messages import ReceivedMessage, SentMessage

_HANDOVER: ContextVar[Callable[[], None] | None] = ContextVar("lkbridge_handover", default=None)


def handed_over() -> None:
    """Say, from inside `send()`, that the message has just left for the agent.

    The chat sender calls it the moment LiveKit has the whole text stream, before its loopback
    copy is stored and published: the daemon marks a journaled send as carried out right then,
    so a crash after this point does not send it again (docs/mqtt.md, "What survives").
    """
    hook = _HANDOVER.get()
    if hook is not None:
        hook()


@contextlib.contextmanager
def on_handover(hook: Callable[[], None]) -> Iterator[None]:
    """Within this block (the same task), handed_over() calls hook."""
    token = _HANDOVER.set(hook)
    try:
        yield
    finally:
        _HANDOVER.reset(token)

if TYPE_CHECKING:
    from livekit import rtc

FLUSH_TIMEOUT = 5.0
"""Upper bound for `ReceiverBase.flush()`: a sender never wedges on a stalled consumer."""


@runtime_checkable
class MessageSender(Protocol):
    """Sends the user's messages somewhere (an agent, a topic, a log)."""

    async def send(self, message: SentMessage) -> None: ...


@runtime_checkable
class MessageReceiver(Protocol):
    """Produces messages for the session's history (transcripts, loopback, bridged chat)."""

    def messages(self) -> AsyncIterator[ReceivedMessage]: ...

    async def aclose(self) -> None: ...


class RoomBinding:
    """What a session hands its transports for one connection: the room and an error channel."""

    def __init__(self, room: rtc.Room, report_error: Callable[[BaseException], None]) -> None:
        self.room = room
        self._report_error = report_error

    @property
    def local_identity(self) -> str | None:
        """The local participant's identity once connected, else None."""
        try:
            return self.room.local_participant.identity
        except Exception:  # rtc raises a bare Exception before connect
            return None

    def report_error(self, error: BaseException) -> None:
        """Report a non-fatal transport error; the session shows it as a `receiver` error."""
        self._report_error(error)


@runtime_checkable
class RoomBound(Protocol):
    """Optional: a transport that must be attached to each new room."""

    async def bind(self, binding: RoomBinding) -> None: ...

    async def unbind(self) -> None: ...


class RoomTransportBase:
    """Keeps the current binding; subclasses extend `bind`/`unbind` and call super()."""

    def __init__(self) -> None:
        self._binding: RoomBinding | None = None

    @property
    def binding(self) -> RoomBinding | None:
        return self._binding

    async def bind(self, binding: RoomBinding) -> None:
        self._binding = binding

    async def unbind(self) -> None:
        self._binding = None


class _Closed:
    """Queue sentinel: the receiver was closed."""


_CLOSED = _Closed()


class ReceiverBase(RoomTransportBase):
    """A receiver backed by an unbounded asyncio queue; subclasses call `_emit(message)`.

    `messages()` is meant for one consumer (the session). `flush()` waits until the consumer
    has taken and processed every message emitted so far, so a sender can guarantee that its
    loopback message is in the session's history when `send()` returns.
    """

    def __init__(self) -> None:
        super().__init__()
        self._queue: asyncio.Queue[ReceivedMessage | _Closed] = asyncio.Queue()
        self._consumers = 0
        self._closed = False

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def has_consumer(self) -> bool:
        """True while someone iterates `messages()` (a session that uses this as a receiver)."""
        return self._consumers > 0

    def _emit(self, message: ReceivedMessage) -> None:
        if not self._closed:
            self._queue.put_nowait(message)

    async def messages(self) -> AsyncIterator[ReceivedMessage]:
        self._consumers += 1
        try:
            while True:
                item = await self._queue.get()
                try:
                    if isinstance(item, _Closed):
                        return
                    yield item
                finally:
                    # Runs when the consumer asks for the next item, i.e. after it processed this one.
                    self._queue.task_done()
        finally:
            self._consumers -= 1

    async def flush(self, timeout: float = FLUSH_TIMEOUT) -> None:
        """Wait (bounded) until the consumer has processed everything emitted so far."""
        if self._consumers == 0:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._queue.join(), timeout)

    async def aclose(self) -> None:
        if self._binding is not None:
            await self.unbind()
        if not self._closed:
            self._closed = True
            self._queue.put_nowait(_CLOSED)


class MemoryReceiver(ReceiverBase):
    """An in-memory receiver for tests and glue code: `push()` messages, `fail()` to report errors."""

    def push(self, message: ReceivedMessage) -> None:
        self._emit(message)

    def fail(self, error: BaseException) -> None:
        """Report a non-fatal error through the current binding (no-op when unbound)."""
        if self._binding is not None:
            self._binding.report_error(error)


class MemorySender:
    """An in-memory sender for tests: records messages; raises `error` instead when it is set."""

    def __init__(self, *, error: BaseException | None = None) -> None:
        self.sent: list[SentMessage] = []
        self.error = error

    async def send(self, message: SentMessage) -> None:
        if self.error is not None:
            raise self.error
        self.sent.append(message)
