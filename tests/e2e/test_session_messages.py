"""Session messages against the real server: lk.chat sends, held text, transcripts, history."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from devstack.livekit_server import LiveKitServer
from lkbridge import (
    MessageType,
    ReceivedMessage,
    Session,
    SessionErrorKind,
    SessionOptions,
    TextMessageSender,
    TranscriptionStreamReceiver,
)
from lkbridge.transports.base import MemorySender
from tests.e2e.session_helpers import Recorder, minted, wait_until

pytestmark = pytest.mark.e2e


async def _connected(
    server: LiveKitServer, scripted_agent: Callable[..., Any], **session_kwargs: Any
) -> tuple[Session, Any, Any]:
    agent = await scripted_agent()
    session = Session.with_agent(agent.agent_name, token_source=minted(server), **session_kwargs)
    await session.start()
    job = await agent.wait_for_job(timeout=10)
    await wait_until(lambda: session.agent.is_connected, 10, "an active agent")
    return session, agent, job


def _local_identity(session: Session) -> str:
    assert session.room is not None
    return session.room.local_participant.identity


async def test_send_text_reaches_the_agent_with_a_loopback_and_an_echo(
    livekit_server: LiveKitServer, scripted_agent: Callable[..., Any]
) -> None:
    session, _, job = await _connected(livekit_server, scripted_agent)
    recorder = Recorder(session)
    async with session:
        sent = await session.send_text("hello agent")
        assert sent is not None and session.error is None
        # The loopback is in the history when send_text returns, with the sent id and time.
        loopback = session.messages[-1]
        assert (loopback.id, loopback.timestamp, loopback.type, loopback.text) == (
            sent.id,
            sent.timestamp,
            MessageType.USER_INPUT,
            "hello agent",
        )
        chat = await asyncio.wait_for(job.chat.get(), 10)
        assert (chat.sender, chat.text) == (_local_identity(session), "hello agent")
        await wait_until(
            lambda: any(
                m.type is MessageType.AGENT_TRANSCRIPT and m.final for m in session.messages
            ),
            10,
            "the echo",
        )
        assert [(m.type, m.text) for m in session.messages] == [
            (MessageType.USER_INPUT, "hello agent"),
            (MessageType.AGENT_TRANSCRIPT, "You said: hello agent"),
        ]
        await wait_until(lambda: recorder.agent_states()[-1:] == ["listening"], 10, "listening")
        assert recorder.agent_states()[-3:] == ["thinking", "speaking", "listening"]


async def test_text_sent_before_the_agent_is_active_is_held_and_delivered(
    livekit_server: LiveKitServer, scripted_agent: Callable[..., Any]
) -> None:
    agent = await scripted_agent(join_delay=0.5, state_delay=1.0)
    async with Session.with_agent(agent.agent_name, token_source=minted(livekit_server)) as session:
        await session.start()
        assert not session.agent.is_connected
        sends = [asyncio.ensure_future(session.send_text(t)) for t in ("first", "second")]
        job = await agent.wait_for_job(timeout=10)
        results = await asyncio.wait_for(asyncio.gather(*sends), 15)
        assert all(r is not None for r in results)
        assert session.agent.is_connected and session.error is None
        received = [await asyncio.wait_for(job.chat.get(), 10) for _ in range(2)]
        # Both delivered. (The scripted agent reads each incoming stream in its own task, so it
        # may see them in either order; the send order shows in the loopbacks.)
        assert sorted(c.text for c in received) == ["first", "second"]
        assert [m.text for m in session.messages] == ["first", "second"]
        assert [m.id for m in session.messages] == [r.id for r in results if r is not None]


async def test_without_holding_early_text_is_lost_as_in_the_reference_sdks(
    livekit_server: LiveKitServer, scripted_agent: Callable[..., Any]
) -> None:
    agent = await scripted_agent(join_delay=1.0)
    options = SessionOptions(hold_until_agent=False)
    async with Session.with_agent(
        agent.agent_name, token_source=minted(livekit_server), options=options
    ) as session:
        await session.start()
        assert await session.send_text("into the void") is not None  # "succeeds"...
        job = await agent.wait_for_job(timeout=10)
        await wait_until(lambda: session.agent.is_connected, 10, "an active agent")
        await asyncio.sleep(0.5)
        assert job.chat.empty()  # ...but nobody ever got it


async def test_held_text_fails_with_a_sender_error_when_the_agent_never_comes(
    livekit_server: LiveKitServer, unique_name: Callable[[str], str]
) -> None:
    options = SessionOptions(agent_connect_timeout=1.5, send_queue_limit=1)
    async with Session.with_agent(
        unique_name("nobody"), token_source=minted(livekit_server), options=options
    ) as session:
        await session.start()
        started = time.monotonic()
        held = asyncio.ensure_future(session.send_text("anyone?"))
        await asyncio.sleep(0.1)
        # The queue holds one message: one more fails at once.
        assert await session.send_text("overflow") is None
        assert time.monotonic() - started < 1.0
        assert session.error is not None and session.error.kind is SessionErrorKind.SENDER
        assert "send queue is full" in session.error.message
        assert await asyncio.wait_for(held, 10) is None
        assert time.monotonic() - started >= 1.3
        assert session.error.message == (
            "Message sender failed: the agent is not available: Agent did not connect"
        )
        assert not any(m.type is MessageType.USER_INPUT for m in session.messages)


async def test_senders_run_in_order_and_the_first_failure_stops_the_rest(
    livekit_server: LiveKitServer, scripted_agent: Callable[..., Any]
) -> None:
    chat = TextMessageSender()
    failing = MemorySender(error=RuntimeError("audit log unavailable"))
    after = MemorySender()
    session, _, job = await _connected(
        livekit_server,
        scripted_agent,
        senders=[chat, failing, after],
        receivers=[chat, TranscriptionStreamReceiver()],
    )
    async with session:
        assert await session.send_text("counted") is None
        assert session.error is not None
        assert session.error.message == "Message sender failed: RuntimeError: audit log unavailable"
        assert after.sent == []
        # The sender before the failure did run: the agent got the text and the loopback is kept.
        assert (await asyncio.wait_for(job.chat.get(), 10)).text == "counted"
        assert [m.text for m in session.messages if m.type is MessageType.USER_INPUT] == ["counted"]


async def test_agent_speech_grows_in_place_and_user_speech_is_replaced_in_place(
    livekit_server: LiveKitServer, scripted_agent: Callable[..., Any]
) -> None:
    session, _, job = await _connected(livekit_server, scripted_agent)
    recorder = Recorder(session)
    async with session:
        user_segment = await job.send_user_transcript(
            _local_identity(session), ["what", "what is", "what is the time"]
        )
        await wait_until(
            lambda: any(m.id == user_segment and m.final for m in session.messages), 10, "user"
        )
        speech = asyncio.ensure_future(
            job.say(["It ", "is ", "noon", "."], chunk_delay=0.15, speaking_state=False)
        )
        await wait_until(lambda: len(session.messages) == 2, 10, "agent speech")
        agent_message = session.messages[1]
        assert agent_message.type is MessageType.AGENT_TRANSCRIPT and not agent_message.final
        segment = await speech
        await wait_until(
            lambda: any(m.id == segment and m.final for m in session.messages), 10, "final"
        )
        assert [(m.id, m.type, m.text, m.final) for m in session.messages] == [
            (user_segment, MessageType.USER_TRANSCRIPT, "what is the time", True),
            (segment, MessageType.AGENT_TRANSCRIPT, "It is noon.", True),
        ]
        agent_updates = recorder.updates(segment)
        assert [(m.text, m.final) for m in agent_updates] == [
            ("It ", False),
            ("It is ", False),
            ("It is noon", False),
            ("It is noon.", False),
            ("It is noon.", True),  # the trailer's lk.transcription_final
        ]
        assert len({m.timestamp for m in agent_updates}) == 1
        # Each interim user stream closes without the final flag and stays not final (unlike
        # Swift's stream-close rule); the next stream replaces the text; the last stream's
        # header says final, which takes effect when that stream ends.
        user_updates = recorder.updates(user_segment)
        assert [(m.text, m.final) for m in user_updates] == [
            ("what", False),
            ("what is", False),
            ("what is the time", False),
            ("what is the time", True),
        ]
        assert len({m.timestamp for m in user_updates}) == 1


async def test_a_stream_aborted_midway_keeps_its_text_not_final_and_sets_a_receiver_error(
    livekit_server: LiveKitServer, scripted_agent: Callable[..., Any]
) -> None:
    session, _, job = await _connected(livekit_server, scripted_agent)
    async with session:
        segment = await job.say("abcdefghijkl", chunk_size=4, chunk_delay=0.2, abort_after=2)
        await wait_until(lambda: session.error is not None, 10, "a receiver error")
        assert session.error is not None and session.error.kind is SessionErrorKind.RECEIVER
        assert session.error.message.startswith(
            f"Message receiver failed: transcription stream from {job.identity} ended abnormally"
        )
        message = next(m for m in session.messages if m.id == segment)
        assert (message.text, message.final) == ("abcdefgh", False)  # cut: never finished


async def test_a_stream_whose_attributes_say_final_from_the_start_still_appends(
    livekit_server: LiveKitServer, scripted_agent: Callable[..., Any]
) -> None:
    """Issue 10: rtc can hand a stream over so late that its attributes already hold the
    trailer's final flag. The wire form of that: the flag in the header. Every chunk must
    still append, and the id must be final once, with the whole text."""
    session, _, job = await _connected(livekit_server, scripted_agent)
    recorder = Recorder(session)
    async with session:
        chunks = ["echo", ":", " fc-4", " two", " three"]
        segment = await job.say(chunks, chunk_delay=0.05, final_at_open=True, speaking_state=False)
        await wait_until(
            lambda: any(m.id == segment and m.final for m in session.messages), 10, "final"
        )
        message = next(m for m in session.messages if m.id == segment)
        assert (message.text, message.final) == ("echo: fc-4 two three", True)
        finals = [m.text for m in recorder.updates(segment) if m.final]
        assert finals == ["echo: fc-4 two three"]


async def test_restored_history_is_sorted_and_later_updates_land_in_place(
    livekit_server: LiveKitServer, scripted_agent: Callable[..., Any]
) -> None:
    session, _, job = await _connected(livekit_server, scripted_agent)
    now = datetime.now(UTC)

    def old(mid: str, minutes: int, text: str) -> ReceivedMessage:
        return ReceivedMessage(
            id=mid,
            timestamp=now - timedelta(minutes=minutes),
            type=MessageType.AGENT_TRANSCRIPT,
            text=text,
            final=True,
        )

    async with session:
        session.restore_message_history(
            [
                old("SG_restored", 5, "stale"),
                old("SG_first", 10, "first"),
                old("SG_restored", 6, "still stale"),
            ]
        )
        assert [m.id for m in session.messages] == ["SG_first", "SG_restored"]
        assert session.messages[1].text == "still stale"  # last value wins
        await job.say("fresh words", segment_id="SG_restored", speaking_state=False)
        await wait_until(lambda: session.messages[-1].text == "fresh words", 10, "the update")
        assert [m.id for m in session.messages] == ["SG_first", "SG_restored"]
        sent = await session.send_text("new")
        assert sent is not None and session.messages[-1].id == sent.id


async def test_a_chat_sender_that_is_not_a_receiver_produces_no_loopback(
    livekit_server: LiveKitServer, scripted_agent: Callable[..., Any]
) -> None:
    session, _, job = await _connected(
        livekit_server,
        scripted_agent,
        senders=[TextMessageSender()],
        receivers=[TranscriptionStreamReceiver()],
    )
    async with session:
        assert await session.send_text("quiet") is not None
        assert (await asyncio.wait_for(job.chat.get(), 10)).text == "quiet"
        await wait_until(lambda: any(m.final for m in session.messages), 10, "the echo")
        assert [m.type for m in session.messages] == [MessageType.AGENT_TRANSCRIPT]
