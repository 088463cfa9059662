"""Asking a session a question and waiting (bounded) for that question's own final answer."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum

import structlog

from lkbridge.bridges.hub import (
    Hub,
    HubError,
    HubEvent,
    HubEventKind,
    MessageEvent,
    SessionSnapshot,
    UnknownSession,
)
from lkbridge.messages import MessageType, ReceivedMessage

log = structlog.get_logger(__name__)

BACKLOG_LIMIT = 1000
"""Events kept for a question while its text is still being delivered (then the oldest go)."""

QUIET_WAIT = 5.0
"""Seconds at most a question waits for the agent to finish answering an earlier text."""


class Reason(StrEnum):
    """Why a question got no answer; each has a sentence a person can hear."""

    EMPTY = "empty"
    TOO_LONG = "too_long"
    BUSY = "busy"
    NOT_RUNNING = "not_running"
    AGENT_UNAVAILABLE = "agent_unavailable"
    NOT_DELIVERED = "not_delivered"
    ENDED = "ended"
    AGENT_LEFT = "agent_left"
    INTERRUPTED = "interrupted"
    TIMEOUT = "timeout"
    SHUTTING_DOWN = "shutting_down"


SENTENCES: Mapping[Reason, str] = {
    Reason.EMPTY: "Sorry, I did not get a question.",
    Reason.TOO_LONG: "Sorry, that question is too long for me.",
    Reason.BUSY: "Sorry, I am busy with other questions. Please ask again in a moment.",
    Reason.NOT_RUNNING: "Sorry, the assistant is not running right now.",
    Reason.AGENT_UNAVAILABLE: "Sorry, the assistant's agent is not available right now.",
    Reason.NOT_DELIVERED: "Sorry, your question could not be passed on to the assistant.",
    Reason.ENDED: "Sorry, the conversation ended before the assistant answered.",
    Reason.AGENT_LEFT: "Sorry, the assistant's agent left before it answered.",
    Reason.INTERRUPTED: "Sorry, another message interrupted the answer.",
    Reason.TIMEOUT: "Sorry, the assistant did not answer in time.",
    Reason.SHUTTING_DOWN: "Sorry, the assistant is shutting down.",
}


@dataclass(frozen=True, slots=True)
class Outcome:
    """An answer (`handled`) or why there is none (`reason`); `text` is what a person hears."""

    handled: bool
    text: str
    reason: Reason | None = None
    message_id: str | None = None  # the question's message id, once it was sent

    @classmethod
    def failed(cls, reason: Reason, message_id: str | None = None) -> Outcome:
        return cls(False, SENTENCES[reason], reason, message_id)


def reason_for_send_error(error: HubError) -> Reason:
    """Classify why hub.send refused: the daemon's sentences are for operators, not speakers."""
    if isinstance(error, UnknownSession):
        return Reason.NOT_RUNNING
    text = str(error).lower()
    if "shutting down" in text:
        return Reason.SHUTTING_DOWN
    if "queue is full" in text:
        return Reason.BUSY
    if "agent" in text:
        return Reason.AGENT_UNAVAILABLE
    if "not running" in text or "connect" in text or "closed" in text or "ended" in text:
        return Reason.NOT_RUNNING
    return Reason.NOT_DELIVERED


class PendingAnswer:
    """Watches one session's hub events for the final answer to one sent message.

    Until the message id is known (the send is still under way) message events are kept in a
    bounded backlog, so an answer that overtakes the send's return is not missed.
    """

    def __init__(self, live: Callable[[], Reason | None] | None = None) -> None:
        self._live = live  # why the session cannot answer any more (asked at a final reply)
        self.sent_id: str | None = None
        self.future: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()
        self._backlog: list[ReceivedMessage] = []
        self._later: set[str] = set()  # user_input ids sent after ours

    def sent(self, message_id: str) -> None:
        self.sent_id = message_id
        backlog, self._backlog = self._backlog, []
        ours_seen = False
        for message in backlog:
            if message.type is MessageType.USER_INPUT:
                # Texts queued before ours were delivered first: they do not interrupt it.
                ours_seen = ours_seen or message.id == message_id
                if not ours_seen:
                    continue
            self._message(message)

    def feed(self, event: HubEvent) -> None:
        if self.future.done():
            return
        data = event.data
        if event.kind is HubEventKind.MESSAGE and isinstance(data, MessageEvent):
            if self.sent_id is None:
                if len(self._backlog) >= BACKLOG_LIMIT:
                    del self._backlog[0]
                self._backlog.append(data.message)
            else:
                self._message(data.message)
        elif self.sent_id is None:
            return  # state before the send finished says nothing about the answer
        elif event.kind is HubEventKind.SESSION_REMOVED:
            self._fail(Reason.ENDED)
        elif event.kind is HubEventKind.STATE and isinstance(data, SessionSnapshot):
            self._state(data)

    def _fail(self, reason: Reason) -> None:
        if not self.future.done():
            self.future.set_result(Outcome.failed(reason, self.sent_id))

    def _message(self, message: ReceivedMessage) -> None:
        if message.type is MessageType.USER_INPUT and message.id != self.sent_id:
            self._later.add(message.id)
        elif message.type is MessageType.AGENT_TRANSCRIPT:
            reply_to = message.reply_to
            if reply_to == self.sent_id and message.final:
                text = message.text
                if text.strip() and not self.future.done():
                    # A session being ended closes the reply's stream, which finalises the text
                    # received so far: that cut-off text is not an answer.
                    gone = self._live() if self._live is not None else None
                    if gone is not None:
                        self._fail(gone)
                    elif self._later:
                        # Another text reached the agent before this reply was finished: agents
                        # cut the reply short and close it as final (the agents framework does).
                        self._fail(Reason.INTERRUPTED)
                    else:
                        self.future.set_result(Outcome(True, text, None, self.sent_id))
            elif reply_to is not None and reply_to in self._later:
                self._fail(Reason.INTERRUPTED)

    def _state(self, snapshot: SessionSnapshot) -> None:
        if snapshot.connection_state == "disconnected":
            self._fail(Reason.ENDED)
            return
        agent = snapshot.agent
        if agent is not None and agent.get("lifecycle") == "failed":
            self._fail(Reason.AGENT_LEFT)


class AnswerDesk:
    """One session's questions: asked one at a time, each waiting for its own final answer.

    Questions from several connections queue up (at most `max_waiting`) instead of interrupting
    each other; `timeout` bounds a question's whole life, its time in the queue included.

    Before a question is sent, the desk waits (at most QUIET_WAIT) until the latest text the
    session sent (from MQTT, say) has its final reply: a question sent into a reply still on its
    way would cut it short, and that reply's first words, arriving after the question was sent,
    would count as the question's own (reply_to is "the latest text sent before the first chunk").
    """

    def __init__(self, hub: Hub, session_id: str, *, timeout: float, max_waiting: int) -> None:
        self._hub = hub
        self.session_id = session_id
        self.timeout = timeout
        self.max_waiting = max_waiting
        self._turn = asyncio.Lock()
        self._waiting = 0
        self._pending: set[PendingAnswer] = set()
        self._open_input: str | None = None  # the latest text sent, while it has no final reply
        self._quiet = asyncio.Event()
        self._quiet.set()
        self._log = log.bind(session=session_id)

    @property
    def waiting(self) -> int:
        return self._waiting

    def _why_not_live(self) -> Reason | None:
        """Asked when a final reply arrives: why it is not an answer (the session is being
        ended or is gone, the agent failed, another text is being delivered), or None."""
        try:
            snapshot = self._hub.snapshot(self.session_id)
        except HubError:
            return Reason.ENDED
        if not snapshot.wanted or snapshot.connection_state == "disconnected":
            return Reason.ENDED
        agent = snapshot.agent
        if agent is not None and agent.get("lifecycle") == "failed":
            return Reason.AGENT_LEFT
        if snapshot.sending:
            # Another text is on its way to the agent (ours was delivered already): the agent
            # cut this reply short for it, and its loopback has not been seen yet.
            return Reason.INTERRUPTED
        return None

    def _track(self, event: HubEvent) -> None:
        """Keep `_open_input` (and `_quiet`) up to date from the session's events."""
        data = event.data
        if isinstance(data, MessageEvent):
            message = data.message
            if message.type is MessageType.USER_INPUT:
                self._open_input = message.id
            elif (
                message.type is MessageType.AGENT_TRANSCRIPT
                and message.final
                and message.reply_to is not None
                and message.reply_to == self._open_input
            ):
                self._open_input = None
        elif event.kind is HubEventKind.SESSION_REMOVED or (
            isinstance(data, SessionSnapshot) and data.connection_state == "disconnected"
        ):
            self._open_input = None  # nothing more will be answered in that room
        if self._open_input is None:
            self._quiet.set()
        else:
            self._quiet.clear()

    async def _wait_quiet(self) -> None:
        if not self._quiet.is_set():
            try:
                await asyncio.wait_for(self._quiet.wait(), min(QUIET_WAIT, self.timeout / 3))
            except TimeoutError:
                self._log.info("wyoming_agent_still_busy", waited=QUIET_WAIT)

    def feed(self, event: HubEvent) -> None:
        """Hand one of this session's hub events to every question waiting for an answer."""
        self._track(event)
        for pending in list(self._pending):
            pending.feed(event)

    async def ask(self, text: str, *, conversation_id: str | None = None) -> Outcome:
        if self._waiting >= self.max_waiting:
            return Outcome.failed(Reason.BUSY)
        self._waiting += 1
        pending: PendingAnswer | None = None
        try:
            async with asyncio.timeout(self.timeout):
                async with self._turn:
                    await self._wait_quiet()
                    pending = PendingAnswer(self._why_not_live)
                    self._pending.add(pending)
                    try:
                        sent = await self._hub.send(
                            self.session_id, text, conversation_id=conversation_id
                        )
                    except HubError as exc:
                        reason = reason_for_send_error(exc)
                        self._log.info("wyoming_question_not_sent", reason=reason.value,
                                       error=str(exc))  # fmt: skip
                        return Outcome.failed(reason)
                    pending.sent(str(sent["id"]))
                    return await pending.future
        except TimeoutError:
            message_id = pending.sent_id if pending is not None else None
            return Outcome.failed(Reason.TIMEOUT, message_id)
        finally:
            self._waiting -= 1
            if pending is not None:
                self._pending.discard(pending)
                if not pending.future.done():
                    pending.future.cancel()
