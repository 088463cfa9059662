"""The answer-correlation rule: reply_to, and how each sent message ends (ReplyTracker)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

from lkbridge.messages import MessageType, ReceivedMessage
from lkbridge.session.replies import ReplyOutcome, ReplyStatus, ReplyTracker

T = datetime(2026, 1, 1, tzinfo=UTC)


def agent(segment: str, text: str, *, final: bool = False) -> ReceivedMessage:
    return ReceivedMessage(segment, T, MessageType.AGENT_TRANSCRIPT, text, final)


class Fixture:
    def __init__(self) -> None:
        self.settled: list[ReplyOutcome] = []
        self.tracker = ReplyTracker(on_settled=self.settled.append)
        self.store: dict[str, ReceivedMessage] = {}

    def receive(self, message: ReceivedMessage) -> ReceivedMessage:
        tagged = self.tracker.tag(message, self.store.get(message.id))
        self.store[tagged.id] = tagged
        self.tracker.observe(tagged)
        return tagged


def test_a_reply_is_tied_to_the_latest_sent_message_before_its_first_chunk() -> None:
    f = Fixture()
    assert f.receive(agent("SG_greet", "Hello")).reply_to is None  # nothing sent yet
    f.tracker.sent("m1")
    assert f.receive(agent("SG_1", "You")).reply_to == "m1"
    f.tracker.sent("m2")  # sent while SG_1 still streams: SG_1 stays m1's
    assert f.receive(agent("SG_1", "You said")).reply_to == "m1"
    assert f.receive(agent("SG_2", "Other")).reply_to == "m2"


def test_user_messages_are_never_tagged_and_a_given_reply_to_is_kept() -> None:
    f = Fixture()
    f.tracker.sent("m1")
    user = ReceivedMessage("m1", T, MessageType.USER_INPUT, "hi", True)
    assert f.receive(user).reply_to is None
    own = ReceivedMessage("SG_x", T, MessageType.AGENT_TRANSCRIPT, "x", reply_to="elsewhere")
    assert f.receive(own).reply_to == "elsewhere"


def test_answered_when_the_tied_reply_becomes_final() -> None:
    f = Fixture()
    f.tracker.sent("m1")
    f.receive(agent("SG_1", "You"))
    assert f.settled == []
    f.receive(agent("SG_1", "You said: hi", final=True))
    outcome = f.tracker.outcome("m1")
    assert outcome is not None and outcome.status is ReplyStatus.ANSWERED
    assert outcome.text == "You said: hi" and outcome.answered
    assert f.settled == [outcome]


def test_interrupted_when_a_newer_message_is_sent_first_and_the_cut_reply_is_kept() -> None:
    f = Fixture()
    f.tracker.sent("m1")
    f.receive(agent("SG_1", "You"))
    f.tracker.sent("m2")
    outcome = f.tracker.outcome("m1")
    assert outcome is not None and outcome.status is ReplyStatus.INTERRUPTED
    assert outcome.superseded_by == "m2" and outcome.text == "You"
    f.receive(agent("SG_1", "You sa", final=True))  # the agent cut it off
    cut = f.tracker.outcome("m1")
    assert cut is not None and cut.status is ReplyStatus.INTERRUPTED and cut.text == "You sa"
    f.receive(agent("SG_2", "You said: m2", final=True))
    answered = f.tracker.outcome("m2")
    assert answered is not None and answered.status is ReplyStatus.ANSWERED


def test_interrupted_before_any_reply_started() -> None:
    f = Fixture()
    f.tracker.sent("m1")
    f.tracker.sent("m2")
    outcome = f.tracker.outcome("m1")
    assert outcome == ReplyOutcome(ReplyStatus.INTERRUPTED, "m1", None, superseded_by="m2")


def test_a_final_answer_is_not_undone_by_a_later_send() -> None:
    f = Fixture()
    f.tracker.sent("m1")
    f.receive(agent("SG_1", "done", final=True))
    f.tracker.sent("m2")
    outcome = f.tracker.outcome("m1")
    assert outcome is not None and outcome.status is ReplyStatus.ANSWERED


def test_end_settles_everything_pending_and_forgets_the_latest() -> None:
    f = Fixture()
    f.tracker.sent("m1")
    f.receive(agent("SG_1", "half"))
    f.tracker.end()
    outcome = f.tracker.outcome("m1")
    assert outcome is not None and outcome.status is ReplyStatus.ENDED and outcome.text == "half"
    assert f.receive(agent("SG_new", "greeting in a new room")).reply_to is None


async def test_wait_returns_the_outcome_or_times_out_without_settling() -> None:
    f = Fixture()
    f.tracker.sent("m1")
    timed_out = await f.tracker.wait("m1", 0.01)
    assert timed_out.status is ReplyStatus.TIMED_OUT and f.tracker.is_pending("m1")
    waiter = asyncio.ensure_future(f.tracker.wait("m1", 5))
    await asyncio.sleep(0)
    f.receive(agent("SG_1", "yes", final=True))
    outcome = await waiter
    assert outcome.status is ReplyStatus.ANSWERED and outcome.text == "yes"
    assert (await f.tracker.wait("m1", 0)).status is ReplyStatus.ANSWERED


async def test_close_wakes_waiters_with_ended() -> None:
    f = Fixture()
    waiter = asyncio.ensure_future(f.tracker.wait("never-sent", None))
    await asyncio.sleep(0)
    f.tracker.close()
    assert (await waiter).status is ReplyStatus.ENDED


def test_a_reply_that_arrives_before_the_delivery_returned_answers_the_message_being_sent() -> None:
    # A quick agent (or a busy client) can have the whole answer in before send_text returns.
    f = Fixture()
    f.tracker.sent("m1")
    f.receive(agent("SG_1", "You said: m1", final=True))
    f.tracker.begin("m2")
    assert f.receive(agent("SG_2", "You said: m2", final=True)).reply_to == "m2"
    f.tracker.sent("m2")
    outcome = f.tracker.outcome("m2")
    assert outcome is not None and outcome.status is ReplyStatus.ANSWERED
    assert outcome.text == "You said: m2"
    first = f.tracker.outcome("m1")
    assert first is not None and first.status is ReplyStatus.ANSWERED


def test_a_failed_delivery_gives_the_replies_back_to_what_was_sent_before() -> None:
    f = Fixture()
    f.tracker.sent("m1")
    f.tracker.begin("m2")
    f.tracker.abandon("m2")
    assert f.tracker.latest_sent == "m1" and not f.tracker.is_pending("m2")
    assert f.receive(agent("SG_1", "You said: m1", final=True)).reply_to == "m1"
    outcome = f.tracker.outcome("m1")
    assert outcome is not None and outcome.status is ReplyStatus.ANSWERED
