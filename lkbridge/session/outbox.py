"""The session's outbox: sends user text in order, holding it until the agent can receive it."""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from enum import Enum

from lkbridge.errors import (
    AgentUnavailableError,
    SendQueueFullError,
    SessionClosedError,
    TransportError,
)
from lkbridge.log import get_logger
from lkbridge.messages import SentMessage
from lkbridge.session.agent import Agent, AgentLifecycle
from lkbridge.transports.base import on_handover

log = get_logger(__name__)


class Gate(Enum):
    """What the outbox may do with the message at its head right now."""

    OPEN = "open"
    """Deliver it."""
    WAIT = "wait"
    """Hold it until something changes or its hold time runs out."""


GateDecision = Gate | BaseException
"""OPEN, WAIT, or an exception: every held message fails with it."""


@dataclass(eq=False)
class _Entry:
    message: SentMessage
    future: asyncio.Future[None]
    deadline: float
    held: bool = field(default=False)
    on_delivered: Callable[[], None] | None = None

    def handed_over(self) -> None:
        """Call on_delivered once: when a sender says so (handed_over()), else after delivery."""
        hook, self.on_delivered = self.on_delivered, None
        if hook is not None:
            try:
                hook()
            except Exception:
                log.exception("on_delivered_failed", message_id=self.message.id)


def agent_gate(
    agent: Agent, *, held: bool, hold: bool, disconnected: bool, closed: bool
) -> GateDecision:
    """The session's rule: deliver to an active agent, hold while it may still come, else fail.

    A session that was never started is not held for: its senders say what is wrong. Text that
    was held fails once the session ends or the agent fails.
    """
    if closed:
        return SessionClosedError("the session was closed before the message was sent")
    if not hold or agent.is_connected:
        return Gate.OPEN
    if disconnected:
        if held:
            return AgentUnavailableError("the session ended before the agent became active")
        return Gate.OPEN
    if agent.lifecycle is AgentLifecycle.FAILED and agent.failure is not None:
        return AgentUnavailableError(f"the agent is not available: {agent.failure.message}")
    return Gate.WAIT


def _fresh(error: BaseException) -> BaseException:
    """A new instance per waiting caller, so tracebacks do not pile up on one object."""
    try:
        return type(error)(*error.args)
    except Exception:
        return error


class Outbox:
    """A FIFO of outgoing messages worked by one task, so delivery order is send order.

    `gate(held)` is asked before each delivery (`held` says whether that message already had to
    wait). A held message fails with AgentUnavailableError when its hold time runs out; when the
    queue already holds `limit` messages, `submit()` fails at once with SendQueueFullError.
    A delivery that takes longer than `send_timeout` seconds is cancelled and fails with
    TransportError (None: no bound). Call `notify()` whenever something the gate looks at has
    changed.
    """

    def __init__(
        self,
        deliver: Callable[[SentMessage], Awaitable[None]],
        gate: Callable[[bool], GateDecision],
        *,
        limit: int,
        hold_time: float,
        send_timeout: float | None = None,
        name: str = "lkbridge.session.outbox",
    ) -> None:
        if limit < 1:
            raise ValueError("send queue limit: must be at least 1")
        self._deliver = deliver
        self._gate = gate
        self._limit = limit
        self.hold_time = hold_time
        self.send_timeout = send_timeout
        self._name = name
        self._entries: deque[_Entry] = deque()
        self._changed = asyncio.Event()
        self._room = asyncio.Event()  # set whenever a queued message is settled
        self._task: asyncio.Task[None] | None = None
        self._closed = False

    def __len__(self) -> int:
        return sum(1 for e in self._entries if not e.future.done())

    @property
    def held_count(self) -> int:
        return sum(1 for e in self._entries if e.held and not e.future.done())

    def notify(self) -> None:
        self._changed.set()

    async def wait_room(self) -> None:
        """Return once submit() would not fail for a full queue (or the outbox is closed)."""
        while not self._closed and len(self) >= self._limit:
            self._room.clear()
            await self._room.wait()

    async def submit(self, message: SentMessage) -> None:
        """Deliver message (possibly after holding it); raises why it could not be delivered."""
        await self.submit_nowait(message)  # a cancelled caller cancels the future: skipped

    def submit_nowait(
        self, message: SentMessage, on_delivered: Callable[[], None] | None = None
    ) -> asyncio.Future[None]:
        """Queue message now, behind those already queued; the future says how it went.

        `on_delivered()` is called once, the moment a sender reports the message handed over
        (transports.base.handed_over()) or else when the delivery returned, before anything
        else runs on the loop (the daemon's journal marks the send carried out there).
        """
        if self._closed:
            raise SessionClosedError("the session is closed")
        if len(self) >= self._limit:
            raise SendQueueFullError(
                f"send queue is full ({self._limit} messages are waiting for the agent)"
            )
        loop = asyncio.get_running_loop()
        entry = _Entry(
            message, loop.create_future(), deadline=loop.time() + self.hold_time,
            on_delivered=on_delivered,
        )  # fmt: skip
        self._entries.append(entry)
        if self._task is None or self._task.done():
            self._task = loop.create_task(self._run(), name=self._name)
        self._changed.set()
        return entry.future

    async def aclose(self) -> None:
        """Fail whatever is still queued with SessionClosedError and stop the worker."""
        self._closed = True
        self._room.set()
        self._fail_all(SessionClosedError("the session was closed before the message was sent"))
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def _fail_all(self, error: BaseException) -> None:
        while self._entries:
            self._settle(self._entries.popleft(), _fresh(error))

    def _settle(self, entry: _Entry, error: BaseException | None) -> None:
        self._room.set()
        if entry.future.done():
            return
        if error is None:
            entry.future.set_result(None)
        else:
            entry.future.set_exception(error)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            while self._entries and self._entries[0].future.done():
                self._entries.popleft()
                self._room.set()
            if not self._entries:
                self._changed.clear()
                await self._changed.wait()
                continue
            entry = self._entries[0]
            decision = self._gate(entry.held)
            if decision is Gate.OPEN:
                error: BaseException | None = None
                bound = asyncio.timeout(self.send_timeout)
                try:
                    async with bound:
                        with on_handover(entry.handed_over):
                            await self._deliver(entry.message)
                except asyncio.CancelledError as exc:
                    task = asyncio.current_task()
                    if task is not None and task.cancelling():
                        raise  # the outbox itself is being stopped
                    # A sender that raises CancelledError on its own must not kill the worker.
                    error = TransportError(f"a sender was cancelled: {exc or 'CancelledError'}")
                except Exception as exc:
                    error = exc
                    if isinstance(exc, TimeoutError) and bound.expired():
                        error = TransportError(
                            f"the message was not sent within {self.send_timeout:g} s"
                            " (a sender did not finish; it was cancelled)"
                        )
                if error is None:
                    entry.handed_over()
                if self._entries and self._entries[0] is entry:
                    self._entries.popleft()
                self._settle(entry, error)
                continue
            if isinstance(decision, BaseException):
                log.info("held_messages_failed", count=len(self), reason=str(decision))
                self._fail_all(decision)
                continue
            if not entry.held:
                entry.held = True
                log.info("message_held", message_id=entry.message.id, queued=len(self))
            remaining = entry.deadline - loop.time()
            if remaining <= 0:
                self._entries.popleft()
                self._settle(
                    entry,
                    AgentUnavailableError(
                        f"the agent did not become active within {self.hold_time:g} s"
                    ),
                )
                continue
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), remaining)
