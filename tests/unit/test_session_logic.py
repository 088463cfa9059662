"""Session logic that needs no server: history, events, the outbox, errors and start failures."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from lkbridge import (
    AgentChanged,
    AgentLifecycle,
    ConnectionState,
    ConnectionStateChanged,
    ErrorChanged,
    HistoryRestored,
    LiteralTokenSource,
    MessageReceived,
    MessageType,
    MessageUnanswered,
    ReceivedMessage,
    ReplyStatus,
    SentMessage,
    Session,
    SessionOptions,
    TextMessageSender,
    TokenRequestOptions,
    TokenSourceResponse,
    TranscriptionStreamReceiver,
)
from lkbridge.errors import AgentUnavailableError, SendQueueFullError, SessionClosedError
from lkbridge.session.events import EventHub, SessionError, SessionErrorKind, SessionEvent
from lkbridge.session.history import MessageHistory
from lkbridge.session.options import describe_connect_error
from lkbridge.session.outbox import Gate, GateDecision, Outbox
from lkbridge.tokens.sources import CustomTokenSource
from lkbridge.transports.base import MemoryReceiver, MemorySender, handed_over

T = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def msg(mid: str, seconds: int = 0, text: str = "x", final: bool = False) -> ReceivedMessage:
    return ReceivedMessage(
        id=mid,
        timestamp=T + timedelta(seconds=seconds),
        type=MessageType.AGENT_TRANSCRIPT,
        text=text,
        final=final,
    )


def jwt(claims: dict[str, Any]) -> str:
    body = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    return f"eyJhbGciOiJIUzI1NiJ9.{body}.c2ln"


# --------------------------------------------------------------------------- history


def test_history_appends_new_ids_and_updates_known_ones_in_place() -> None:
    history = MessageHistory()
    assert history.put(msg("a", text="one")) == (True, None)
    history.put(msg("b"))
    changed, previous = history.put(msg("a", text="one two"))
    assert changed and previous == msg("a", text="one")
    assert history.put(msg("a", text="one two")) == (False, msg("a", text="one two"))
    assert [(m.id, m.text) for m in history.snapshot()] == [("a", "one two"), ("b", "x")]


def test_restore_replaces_sorts_stably_and_last_value_wins() -> None:
    history = MessageHistory()
    history.put(msg("old"))
    ordered, skipped = history.restore(
        [
            msg("c", 30),
            msg("a", 10, text="first"),
            msg("tie-1", 20),
            msg("tie-2", 20),
            msg("a", 40, text="second"),  # duplicate id: the later value wins (and its time)
            "junk",
            {"id": "d", "timestamp": "2026-03-01T12:00:05Z", "type": "user_input", "text": "dict"},
            {"id": "broken"},
        ]
    )
    assert skipped == 2
    assert [m.id for m in ordered] == ["d", "tie-1", "tie-2", "c", "a"]
    assert history.get("a") == msg("a", 40, text="second")
    assert history.get("old") is None


def test_restore_copes_with_naive_timestamps() -> None:
    history = MessageHistory()
    naive = ReceivedMessage(
        id="n", timestamp=datetime(2026, 3, 1, 11, 0), type=MessageType.USER_INPUT, text="n"
    )
    ordered, _ = history.restore([msg("a", 0), naive])
    assert [m.id for m in ordered] == ["n", "a"]


# --------------------------------------------------------------------------- events


async def test_event_stream_sees_everything_from_creation_and_ends_on_close() -> None:
    hub = EventHub()
    stream = hub.stream()
    first = ConnectionStateChanged(ConnectionState.CONNECTING, ConnectionState.DISCONNECTED)
    hub.emit(first)
    hub.close()
    assert [e async for e in stream] == [first]
    assert [e async for e in hub.stream()] == []  # a stream made after close is finished


async def test_listeners_are_called_synchronously_and_failures_are_contained() -> None:
    hub = EventHub()
    seen: list[SessionEvent] = []

    def broken(event: SessionEvent) -> None:
        raise RuntimeError("observer bug")

    hub.add_listener(broken)
    hub.add_listener(seen.append)
    hub.add_listener(seen.append)  # added once only
    event = ErrorChanged(error=None, previous=None)
    hub.emit(event)
    assert seen == [event]
    hub.remove_listener(seen.append)
    hub.emit(event)
    assert seen == [event]

    async def async_listener(event: SessionEvent) -> None: ...

    with pytest.raises(TypeError, match=r"session\.events\(\)"):
        hub.add_listener(async_listener)


async def test_a_slow_stream_drops_its_oldest_events() -> None:
    hub = EventHub()
    stream = hub.stream(maxsize=2)
    events = [ErrorChanged(SessionError(SessionErrorKind.SENDER, str(i)), None) for i in range(3)]
    for event in events:
        hub.emit(event)
    await stream.aclose()
    assert stream.dropped == 1


def test_session_error_messages_use_the_sdk_prefixes_and_compare_by_cause() -> None:
    error = SessionError(SessionErrorKind.CONNECTION, "boom")
    assert error.message == "Connection failed: boom"
    assert SessionError(SessionErrorKind.SENDER, "x").message == "Message sender failed: x"
    assert SessionError(SessionErrorKind.RECEIVER, "x").message == "Message receiver failed: x"
    assert error == SessionError(SessionErrorKind.CONNECTION, "boom")  # time is not compared
    assert error.to_dict()["kind"] == "connection"


# --------------------------------------------------------------------------- outbox


class GateSwitch:
    def __init__(self, decision: GateDecision = Gate.OPEN) -> None:
        self.decision = decision
        self.asked: list[bool] = []

    def __call__(self, held: bool) -> GateDecision:
        self.asked.append(held)
        return self.decision


async def test_outbox_delivers_in_order_after_holding() -> None:
    delivered: list[str] = []

    async def deliver(message: SentMessage) -> None:
        delivered.append(message.text)

    gate = GateSwitch(Gate.WAIT)
    outbox = Outbox(deliver, gate, limit=10, hold_time=5.0)
    sends = [asyncio.ensure_future(outbox.submit(SentMessage(text=t))) for t in "abc"]
    await asyncio.sleep(0.05)
    assert delivered == [] and outbox.held_count == 1 and len(outbox) == 3
    gate.decision = Gate.OPEN
    outbox.notify()
    await asyncio.gather(*sends)
    assert delivered == ["a", "b", "c"]
    assert True in gate.asked
    await outbox.aclose()


async def test_outbox_hold_time_runs_out_per_message() -> None:
    async def deliver(message: SentMessage) -> None:
        raise AssertionError("must not deliver")

    outbox = Outbox(deliver, GateSwitch(Gate.WAIT), limit=10, hold_time=0.05)
    with pytest.raises(AgentUnavailableError, match=r"within 0\.05 s"):
        await outbox.submit(SentMessage(text="late"))
    await outbox.aclose()


async def test_outbox_gate_failure_fails_every_held_message() -> None:
    async def deliver(message: SentMessage) -> None: ...

    gate = GateSwitch(Gate.WAIT)
    outbox = Outbox(deliver, gate, limit=10, hold_time=5.0)
    sends = [asyncio.ensure_future(outbox.submit(SentMessage(text=t))) for t in "ab"]
    await asyncio.sleep(0.02)
    gate.decision = AgentUnavailableError("the agent is not available: Agent did not connect")
    outbox.notify()
    results = await asyncio.gather(*sends, return_exceptions=True)
    assert all(isinstance(r, AgentUnavailableError) for r in results)
    assert results[0] is not results[1]
    await outbox.aclose()


async def test_outbox_is_bounded_and_closing_fails_what_waits() -> None:
    async def deliver(message: SentMessage) -> None: ...

    outbox = Outbox(deliver, GateSwitch(Gate.WAIT), limit=2, hold_time=5.0)
    sends = [asyncio.ensure_future(outbox.submit(SentMessage(text=t))) for t in "ab"]
    await asyncio.sleep(0.01)
    with pytest.raises(SendQueueFullError, match="send queue is full"):
        await outbox.submit(SentMessage(text="c"))
    await outbox.aclose()
    results = await asyncio.gather(*sends, return_exceptions=True)
    assert all(isinstance(r, SessionClosedError) for r in results)
    with pytest.raises(SessionClosedError):
        await outbox.submit(SentMessage(text="d"))


async def test_a_cancelled_send_is_skipped() -> None:
    delivered: list[str] = []

    async def deliver(message: SentMessage) -> None:
        delivered.append(message.text)

    gate = GateSwitch(Gate.WAIT)
    outbox = Outbox(deliver, gate, limit=5, hold_time=5.0)
    first = asyncio.ensure_future(outbox.submit(SentMessage(text="cancel me")))
    second = asyncio.ensure_future(outbox.submit(SentMessage(text="keep me")))
    await asyncio.sleep(0.01)
    first.cancel()
    gate.decision = Gate.OPEN
    outbox.notify()
    await second
    assert delivered == ["keep me"]
    await outbox.aclose()


# --------------------------------------------------------------------------- options / errors


@pytest.mark.parametrize(
    "kwargs", [{"agent_connect_timeout": 0}, {"connect_timeout": -1}, {"send_queue_limit": 0}]
)
def test_session_options_are_validated(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        SessionOptions(**kwargs)


TOKEN = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ1In0.abcdefghijklmnop"


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (
            "engine: signal failure: client error: 401 Unauthorized - invalid token: "
            f"{TOKEN}, error: token signature is invalid: signature is invalid",
            "the LiveKit server at ws://h:7880 rejected the token (HTTP 401): its signature does "
            "not match the server's key (wrong API key or secret?)",
        ),
        (
            "engine: signal failure: client error: 401 Unauthorized - invalid authorization token",
            "the LiveKit server at ws://h:7880 rejected the token (HTTP 401): it is not a valid "
            "token",
        ),
        (
            "engine: signal failure: transport connection error: IO error: Connection refused "
            "(os error 111)",
            "the LiveKit server at ws://h:7880 is unreachable: Connection refused (os error 111)",
        ),
        ("something new", "could not connect to the LiveKit server at ws://h:7880: something new"),
    ],
)
def test_connect_errors_are_described_plainly_without_the_token(raw: str, expected: str) -> None:
    described = describe_connect_error(raw, "ws://h:7880?access_token=" + TOKEN)
    assert described == expected
    assert TOKEN not in described


# --------------------------------------------------------------------------- session, offline


def test_default_transports_and_with_agent_options() -> None:
    session = Session.with_agent(
        "bot",
        agent_metadata="{}",
        token_source=CustomTokenSource(lambda o: {}),
        options=SessionOptions(room_name="pinned"),
    )
    assert session._token_options == TokenRequestOptions(
        room_name="pinned", agent_name="bot", agent_metadata="{}"
    )
    senders, receivers = session._transports.senders, session._transports.receivers
    assert len(senders) == 1 and isinstance(senders[0], TextMessageSender)
    assert receivers[0] is senders[0] and isinstance(receivers[1], TranscriptionStreamReceiver)
    assert session.connection_state is ConnectionState.DISCONNECTED and not session.is_connected
    assert session.agent.lifecycle is AgentLifecycle.DISCONNECTED
    assert session.error is None and session.messages == [] and session.room is None


async def test_send_before_start_fails_with_a_sender_error() -> None:
    async with Session.from_fixed_token_source(LiteralTokenSource("ws://x", "t")) as session:
        assert await session.send_text("hello") is None
        assert session.error is not None
        assert session.error.kind is SessionErrorKind.SENDER
        assert session.error.message == (
            "Message sender failed: cannot send a message before connecting to the room"
        )
        session.dismiss_error()
        assert session.error is None


async def test_senders_run_in_order_and_the_first_failure_stops_the_rest() -> None:
    first, second, third = (
        MemorySender(),
        MemorySender(error=RuntimeError("disk full")),
        MemorySender(),
    )
    session = Session.from_fixed_token_source(
        LiteralTokenSource("ws://x", "t"), senders=[first, second, third], receivers=[]
    )
    async with session:
        assert await session.send_text("a") is None
        assert [m.text for m in first.sent] == ["a"] and third.sent == []
        assert session.error is not None
        assert session.error.message == "Message sender failed: RuntimeError: disk full"
        second.error = None
        sent = await session.send_text("b")
        assert sent is not None and [m.text for m in third.sent] == ["b"]
        assert third.sent[0] is sent


async def test_receivers_feed_the_history_and_report_errors() -> None:
    receiver = MemoryReceiver()
    session = Session.from_fixed_token_source(
        LiteralTokenSource("ws://x", "t"), senders=[], receivers=[receiver]
    )
    async with session, session.events() as events:
        receiver.push(msg("a", text="Hel"))
        receiver.push(msg("a", text="Hello"))
        receiver.push(msg("b", text="x"))
        received = [await anext(events) for _ in range(3)]
        assert [
            (e.inserted, e.message.text) for e in received if isinstance(e, MessageReceived)
        ] == [
            (True, "Hel"),
            (False, "Hello"),
            (True, "x"),
        ]
        assert [m.text for m in session.messages] == ["Hello", "x"]
        session.restore_message_history([msg("z", 99), msg("a", 1, text="restored")])
        restored = await anext(events)
        assert isinstance(restored, HistoryRestored)
        assert [m.id for m in session.get_message_history()] == ["a", "z"]
        receiver.push(msg("a", text="updated in place"))
        await anext(events)
        assert [(m.id, m.text) for m in session.messages] == [("a", "updated in place"), ("z", "x")]


async def test_restore_never_raises() -> None:
    session = Session.from_fixed_token_source(LiteralTokenSource("ws://x", "t"))
    session.restore_message_history(None)  # type: ignore[arg-type]
    session.restore_message_history([1, 2, 3])  # type: ignore[list-item]
    assert session.messages == []
    await session.aclose()


async def test_a_failing_token_source_gives_a_connection_error_and_start_can_be_retried() -> None:
    calls = 0

    def broken(options: TokenRequestOptions) -> TokenSourceResponse:
        nonlocal calls
        calls += 1
        raise OSError("name resolution failed")

    session = Session.from_configurable_token_source(CustomTokenSource(broken))
    seen: list[SessionEvent] = []
    session.add_listener(seen.append)
    await session.start()
    assert session.error is not None and session.error.kind is SessionErrorKind.CONNECTION
    assert session.error.message == (
        "Connection failed: custom token source failed: OSError: name resolution failed"
    )
    assert session.connection_state is ConnectionState.DISCONNECTED
    assert [e.state for e in seen if isinstance(e, ConnectionStateChanged)] == [
        ConnectionState.CONNECTING,
        ConnectionState.DISCONNECTED,
    ]
    assert [e.agent.lifecycle for e in seen if isinstance(e, AgentChanged)] == [
        AgentLifecycle.CONNECTING,
        AgentLifecycle.DISCONNECTED,
    ]
    await session.start()
    assert calls == 2
    await session.aclose()
    await session.start()  # ignored after close
    assert calls == 2


@pytest.mark.parametrize(
    ("token", "cause"),
    [
        (jwt({"sub": "u", "exp": int(time.time()) - 30}), "participant token expired at "),
        ("definitely-not-a-jwt", "participant token is malformed"),
    ],
)
async def test_unusable_tokens_are_refused_before_connecting(token: str, cause: str) -> None:
    async with Session.from_fixed_token_source(LiteralTokenSource("ws://127.0.0.1:9", token)) as s:
        await s.start()
        assert s.error is not None
        assert s.error.message.startswith(f"Connection failed: {cause}")
        assert token not in s.error.message
        assert s.room is None


async def test_aclose_ends_event_streams() -> None:
    session = Session.from_fixed_token_source(LiteralTokenSource("ws://x", "t"))
    events = session.events()
    await session.aclose()
    assert [e async for e in events] == []
    assert session.closed
    assert await session.send_text("after close") is None
    assert session.error is not None and "closed" in session.error.message


def test_agent_gate_rules() -> None:
    from lkbridge.session.agent import Agent, AgentFailure, AgentState
    from lkbridge.session.outbox import agent_gate

    active = Agent.connected("a", AgentState.LISTENING)
    pending = Agent.connecting()
    failed = pending.failed(AgentFailure.TIMEOUT)

    def gate(agent: Agent, **kw: bool) -> GateDecision:
        flags = {"held": False, "hold": True, "disconnected": False, "closed": False, **kw}
        return agent_gate(agent, **flags)

    assert gate(active) is Gate.OPEN
    assert gate(pending) is Gate.WAIT
    assert gate(Agent.connected("a", AgentState.INITIALIZING)) is Gate.WAIT
    assert gate(pending, hold=False) is Gate.OPEN  # the reference SDKs' behaviour
    assert gate(Agent.disconnected(), disconnected=True) is Gate.OPEN  # senders report it
    ended = gate(pending, disconnected=True, held=True)
    assert isinstance(ended, AgentUnavailableError) and "session ended" in str(ended)
    unavailable = gate(failed)
    assert isinstance(unavailable, AgentUnavailableError)
    assert str(unavailable) == "the agent is not available: Agent did not connect"
    assert isinstance(gate(active, closed=True), SessionClosedError)


def test_public_api_resolves_and_importing_lkbridge_stays_light() -> None:
    import subprocess
    import sys

    import lkbridge

    for name in lkbridge.__all__:
        assert getattr(lkbridge, name) is not None, name
    probe = (
        "import sys, lkbridge; "
        "heavy = [m for m in ('livekit', 'aiohttp', 'structlog', 'numpy') if m in sys.modules]; "
        "print(','.join(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_history_limit_keeps_the_newest_by_arrival_and_bounds_restore() -> None:
    from lkbridge.messages import MessageType, ReceivedMessage, utcnow
    from lkbridge.session.history import MessageHistory

    def msg(i: int) -> ReceivedMessage:
        return ReceivedMessage(f"m{i}", utcnow(), MessageType.AGENT_TRANSCRIPT, str(i))

    history = MessageHistory(limit=3)
    for i in range(10):
        history.put(msg(i))
    assert [m.id for m in history.snapshot()] == ["m7", "m8", "m9"]
    history.put(ReceivedMessage("m8", utcnow(), MessageType.AGENT_TRANSCRIPT, "updated"))
    assert [m.id for m in history.snapshot()] == ["m7", "m8", "m9"], "updates never evict"
    history.restore([msg(i) for i in range(5)])
    assert [m.id for m in history.snapshot()] == ["m2", "m3", "m4"]
    assert MessageHistory(limit=0).put(msg(1)) == (True, None)


async def test_a_sender_raising_cancelled_error_fails_that_send_not_the_outbox() -> None:
    import asyncio

    from lkbridge import LiteralTokenSource, Session, SessionOptions

    class CancelsOnce:
        def __init__(self) -> None:
            self.sent: list[str] = []

        async def send(self, message: Any) -> None:
            if not self.sent:
                self.sent.append("<cancelled>")
                raise asyncio.CancelledError("sender gave up")
            self.sent.append(message.text)

    sender = CancelsOnce()
    session = Session.from_fixed_token_source(
        LiteralTokenSource("ws://127.0.0.1:1", "x"),
        options=SessionOptions(hold_until_agent=False),
        senders=[sender], receivers=[],
    )
    first = await asyncio.wait_for(session.send_text("one"), 5)
    assert first is None and session.error is not None and session.error.kind.value == "sender"
    second = await asyncio.wait_for(session.send_text("two"), 5)
    assert second is not None and sender.sent == ["<cancelled>", "two"]
    await session.aclose()


async def test_outbox_reports_the_hand_over_once_when_the_sender_says_so() -> None:
    """on_delivered runs at handed_over() inside the sender (before the rest of the delivery),
    exactly once; without handed_over() it runs when the delivery returned."""
    events: list[str] = []

    async def deliver(message: SentMessage) -> None:
        events.append(f"sent {message.text}")
        if message.text == "tells":
            handed_over()
            handed_over()  # a second call changes nothing
        await asyncio.sleep(0)
        events.append(f"loopback {message.text}")

    outbox = Outbox(deliver, GateSwitch(Gate.OPEN), limit=5, hold_time=5.0)
    first = outbox.submit_nowait(SentMessage(text="tells"), lambda: events.append("handed tells"))
    second = outbox.submit_nowait(SentMessage(text="quiet"), lambda: events.append("handed quiet"))
    await asyncio.gather(first, second)
    assert events == [
        "sent tells", "handed tells", "loopback tells",
        "sent quiet", "loopback quiet", "handed quiet",
    ]  # fmt: skip
    await outbox.aclose()


async def test_outbox_does_not_report_a_failed_delivery_and_wait_room_waits() -> None:
    handed: list[str] = []
    release = asyncio.Event()

    async def deliver(message: SentMessage) -> None:
        await release.wait()
        if message.text == "boom":
            raise RuntimeError("boom")

    outbox = Outbox(deliver, GateSwitch(Gate.OPEN), limit=2, hold_time=5.0)
    sends = [outbox.submit_nowait(SentMessage(text=t), lambda t=t: handed.append(t))
             for t in ("boom", "ok")]  # fmt: skip
    room = asyncio.ensure_future(outbox.wait_room())
    await asyncio.sleep(0.01)
    assert not room.done()  # two queued, limit two
    release.set()
    await room
    results = await asyncio.gather(*sends, return_exceptions=True)
    assert isinstance(results[0], RuntimeError) and results[1] is None
    assert handed == ["ok"]
    await outbox.aclose()


async def test_replies_are_tied_to_the_latest_delivered_text_and_outcomes_reported() -> None:
    receiver = MemoryReceiver()
    session = Session.from_fixed_token_source(
        LiteralTokenSource("ws://x", "t"),
        options=SessionOptions(reply_timeout=0.05),
        senders=[MemorySender()],
        receivers=[receiver],
    )
    async with session, session.events() as events:
        receiver.push(msg("SG_hello", text="Hi, I'm here"))  # before anything was sent
        first = await session.send_text("first")
        assert first is not None
        receiver.push(msg("SG_1", text="You"))
        receiver.push(msg("SG_1", text="You said: first", final=True))
        outcome = await session.wait_for_reply(first.id, timeout=5)
        assert outcome.status is ReplyStatus.ANSWERED and outcome.text == "You said: first"
        by_id = {m.id: m for m in session.messages}
        assert by_id["SG_hello"].reply_to is None and by_id["SG_1"].reply_to == first.id

        second = await session.send_text("second")
        third = await session.send_text("third")
        assert second is not None and third is not None
        interrupted = await session.wait_for_reply(second.id, timeout=1)
        assert interrupted.status is ReplyStatus.INTERRUPTED
        assert interrupted.superseded_by == third.id
        timed_out = await session.wait_for_reply(third.id, timeout=0.01)
        assert timed_out.status is ReplyStatus.TIMED_OUT
        unanswered: list[MessageUnanswered] = []
        while len(unanswered) < 2:
            event = await asyncio.wait_for(anext(events), 5)
            if isinstance(event, MessageUnanswered):
                unanswered.append(event)
        assert [(e.message_id, e.reason) for e in unanswered] == [
            (second.id, "interrupted"),
            (third.id, "timed_out"),  # SessionOptions.reply_timeout
        ]
        assert unanswered[0].to_dict()["event"] == "unanswered"
    ended = await session.wait_for_reply(third.id, timeout=1)
    assert ended.status is ReplyStatus.ENDED  # closed before it was answered
