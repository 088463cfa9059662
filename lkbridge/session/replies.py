"""ReplyTracker: ties agent replies to the user_input they answer, and how each send ended."""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, replace
from enum import StrEnum

from lkbridge.messages import MessageType, ReceivedMessage

OUTCOMES_KEPT = 1000
"""How many sent messages' outcomes are remembered (the oldest are forgotten first)."""


class ReplyStatus(StrEnum):
    """How a sent message ended, as `Session.wait_for_reply` reports it."""

    ANSWERED = "answered"
    """A reply tied to it (`reply_to`) became final before anything newer was sent."""
    INTERRUPTED = "interrupted"
    """A later user_input was sent before its reply was final: the reply is missing or cut."""
    TIMED_OUT = "timed_out"
    """No final reply within the time asked for (the reply may still come later)."""
    ENDED = "ended"
    """The room or the agent went away before a final reply; this agent will not answer."""


@dataclass(frozen=True, slots=True)
class ReplyOutcome:
    """The outcome of waiting for the answer to one sent message."""

    status: ReplyStatus
    message_id: str
    reply: ReceivedMessage | None = None
    """The reply tied to the message, if one arrived (final when answered, else possibly cut)."""
    superseded_by: str | None = None
    """For `interrupted`: the id of the user_input sent after it."""

    @property
    def answered(self) -> bool:
        return self.status is ReplyStatus.ANSWERED

    @property
    def text(self) -> str | None:
        """The reply's text (None when no reply arrived)."""
        return self.reply.text if self.reply is not None else None


Settled = Callable[[ReplyOutcome], None]


class ReplyTracker:
    """The answer-correlation rule, with no LiveKit dependency.

    `reply_to` of an agent_transcript is the id of the latest user_input the session sent
    (delivered through its senders) before the reply's first chunk arrived; later updates of
    the same message keep it. A sent message is settled once: answered when a reply tied to
    it becomes final; interrupted when a newer message is sent before that; ended when the
    room or agent goes away first. `on_settled` hears about every settled outcome.
    """

    def __init__(self, on_settled: Settled | None = None) -> None:
        self.latest_sent: str | None = None
        self._pending: OrderedDict[str, ReceivedMessage | None] = OrderedDict()
        self._outcomes: OrderedDict[str, ReplyOutcome] = OrderedDict()
        self._waiters: dict[str, list[asyncio.Future[ReplyOutcome]]] = {}
        self._on_settled = on_settled
        # message being delivered -> what was latest before it (to go back to if it fails)
        self._before: OrderedDict[str, str | None] = OrderedDict()

    def outcome(self, message_id: str) -> ReplyOutcome | None:
        return self._outcomes.get(message_id)

    def is_pending(self, message_id: str) -> bool:
        return message_id in self._pending

    def reply_so_far(self, message_id: str) -> ReceivedMessage | None:
        return self._pending.get(message_id)

    def begin(self, message_id: str) -> None:
        """The senders start delivering message_id. A reply whose first chunk arrives from now
        on answers it: a quick agent can answer before the delivery has returned."""
        self._before[message_id] = self.latest_sent
        self.latest_sent = message_id
        if message_id not in self._outcomes:
            self._pending[message_id] = None
        while len(self._pending) > OUTCOMES_KEPT:
            self._pending.popitem(last=False)
        while len(self._before) > OUTCOMES_KEPT:
            self._before.popitem(last=False)

    def abandon(self, message_id: str) -> None:
        """The delivery of message_id failed (its sender reports why): it was never sent."""
        before = self._before.pop(message_id, None)
        if self.latest_sent == message_id:
            self.latest_sent = before
        self._pending.pop(message_id, None)

    def sent(self, message_id: str) -> None:
        """The senders delivered message_id: what was sent before it and is still waiting for
        its answer is interrupted."""
        if message_id not in self._before:
            self.begin(message_id)
        previous = self._before.pop(message_id)
        if previous is not None and previous in self._pending:
            reply = self._pending[previous]
            self._settle(
                ReplyOutcome(ReplyStatus.INTERRUPTED, previous, reply, superseded_by=message_id)
            )

    def tag(self, message: ReceivedMessage, previous: ReceivedMessage | None) -> ReceivedMessage:
        """The message as it is to be stored: agent transcripts get their reply_to."""
        if message.type is not MessageType.AGENT_TRANSCRIPT or message.reply_to is not None:
            return message
        reply_to = previous.reply_to if previous is not None else self.latest_sent
        return replace(message, reply_to=reply_to) if reply_to is not None else message

    def observe(self, message: ReceivedMessage) -> None:
        """A stored message: a reply to a pending send is remembered, and settles it if final."""
        target = message.reply_to
        if message.type is not MessageType.AGENT_TRANSCRIPT or target is None:
            return
        if target in self._pending:
            current = self._pending[target]
            if current is None or current.id == message.id:
                self._pending[target] = message
                if message.final:
                    self._settle(ReplyOutcome(ReplyStatus.ANSWERED, target, message))
            return
        outcome = self._outcomes.get(target)
        if outcome is not None and outcome.status is not ReplyStatus.ANSWERED:
            if outcome.reply is None or outcome.reply.id == message.id:
                # the cut reply of an interrupted message still comes in: keep it with the outcome
                self._outcomes[target] = replace(outcome, reply=message)

    def end(self) -> None:
        """The room or the agent went away: nothing pending will be answered."""
        for message_id, reply in list(self._pending.items()):
            self._settle(ReplyOutcome(ReplyStatus.ENDED, message_id, reply))
        self.latest_sent = None
        self._before.clear()

    def _settle(self, outcome: ReplyOutcome) -> None:
        self._pending.pop(outcome.message_id, None)
        self._outcomes[outcome.message_id] = outcome
        while len(self._outcomes) > OUTCOMES_KEPT:
            self._outcomes.popitem(last=False)
        for waiter in self._waiters.pop(outcome.message_id, []):
            if not waiter.done():
                waiter.set_result(outcome)
        if self._on_settled is not None:
            self._on_settled(outcome)

    async def wait(self, message_id: str, timeout: float | None) -> ReplyOutcome:
        """The message's outcome, waiting up to timeout seconds (None: no bound)."""
        known = self._outcomes.get(message_id)
        if known is not None:
            return known
        waiter: asyncio.Future[ReplyOutcome] = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(message_id, []).append(waiter)
        try:
            done, _ = await asyncio.wait({waiter}, timeout=timeout)
        finally:
            waiters = self._waiters.get(message_id)
            if waiters is not None and waiter in waiters:
                waiters.remove(waiter)
                if not waiters:
                    del self._waiters[message_id]
        if done:
            return waiter.result()
        return ReplyOutcome(ReplyStatus.TIMED_OUT, message_id, self._pending.get(message_id))

    def close(self) -> None:
        """End everything still pending and wake every waiter."""
        self.end()
        for message_id, waiters in list(self._waiters.items()):
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(ReplyOutcome(ReplyStatus.ENDED, message_id))
        self._waiters.clear()
