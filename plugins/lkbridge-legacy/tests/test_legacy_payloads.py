"""lkbridge-legacy without a server: packet encoding, loopback, segment mapping, registration."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest
from livekit import rtc
from lkbridge_legacy.chat import (
    LEGACY_CHAT_TOPIC,
    MAX_PACKET_BYTES,
    LegacyChatSender,
    decode_legacy_chat,
    encode_legacy_chat,
)
from lkbridge_legacy.transcription import LegacyTranscriptionReceiver, SegmentClock

from lkbridge.errors import NotConnectedError, TransportError
from lkbridge.hookspecs import TransportContext
from lkbridge.messages import MessageType, ReceivedMessage, SentMessage
from lkbridge.plugins.host import load_plugins
from lkbridge.transports.base import RoomBinding


class FakeParticipant:
    def __init__(self, identity: str) -> None:
        self.identity = identity
        self.published: list[tuple[bytes, bool, str]] = []

    async def publish_data(self, payload: bytes, *, reliable: bool, topic: str) -> None:
        self.published.append((payload, reliable, topic))


class FakeRoom:
    """The part of rtc.Room the legacy transports use."""

    def __init__(self, identity: str = "me", connected: bool = True) -> None:
        self.local_participant = FakeParticipant(identity)
        self.connected = connected
        self.handlers: dict[str, list[Callable[..., None]]] = {}

    def isconnected(self) -> bool:
        return self.connected

    def on(self, event: str, callback: Callable[..., None]) -> None:
        self.handlers.setdefault(event, []).append(callback)

    def off(self, event: str, callback: Callable[..., None]) -> None:
        self.handlers[event].remove(callback)

    def emit(self, event: str, *args: Any) -> None:
        for callback in list(self.handlers.get(event, [])):
            callback(*args)


def _binding(room: FakeRoom, errors: list[BaseException] | None = None) -> RoomBinding:
    return RoomBinding(room, (errors if errors is not None else []).append)  # type: ignore[arg-type]


# -- legacy chat packets -------------------------------------------------------------------------


def test_a_sent_message_is_encoded_like_the_js_sdk_chat_packet() -> None:
    sent = SentMessage(
        text="grüß dich", id="m-1", timestamp=datetime(2025, 3, 4, 5, 6, 7, 890000, tzinfo=UTC)
    )
    payload = encode_legacy_chat(sent)
    assert json.loads(payload) == {"id": "m-1", "timestamp": 1741064767890, "message": "grüß dich"}
    assert "grüß".encode() in payload  # UTF-8, not \u escapes
    decoded = decode_legacy_chat(payload)
    assert (decoded.id, decoded.message, decoded.time) == ("m-1", "grüß dich", sent.timestamp)


@pytest.mark.parametrize(
    ("payload", "problem"),
    [
        (b"\xff", "not a JSON chat packet"),
        (b"hello", "not a JSON chat packet"),
        (b"[]", "a chat packet is a JSON object"),
        (b'{"timestamp": 1, "message": "x"}', "id: expected a non-empty string"),
        (b'{"id": "a", "timestamp": "now", "message": "x"}', "timestamp: expected milliseconds"),
        (b'{"id": "a", "timestamp": true, "message": "x"}', "timestamp: expected milliseconds"),
        (b'{"id": "a", "timestamp": 1}', "message: expected a string"),
    ],
)
def test_bad_chat_packets_are_refused(payload: bytes, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        decode_legacy_chat(payload)


async def test_send_publishes_one_reliable_packet_and_loops_back_while_consumed() -> None:
    sender = LegacyChatSender()
    with pytest.raises(NotConnectedError):
        await sender.send(SentMessage(text="too early"))
    room = FakeRoom()
    await sender.bind(_binding(room))

    first = SentMessage(text="not consumed yet")
    await sender.send(first)
    assert room.local_participant.published == [
        (encode_legacy_chat(first), True, LEGACY_CHAT_TOPIC)
    ]

    received: list[ReceivedMessage] = []

    async def consume() -> None:
        async for message in sender.messages():
            received.append(message)

    consumer = asyncio.ensure_future(consume())
    await asyncio.sleep(0)
    second = SentMessage(text="looped back")
    await asyncio.wait_for(sender.send(second), 1)
    assert received == [second.as_received()]  # same id, user_input, in before send() returns

    with pytest.raises(TransportError, match="too long for a chat data packet"):
        await sender.send(SentMessage(text="x" * MAX_PACKET_BYTES))
    assert len(room.local_participant.published) == 2
    await sender.aclose()
    await asyncio.wait_for(consumer, 1)


# -- legacy transcription ------------------------------------------------------------------------


def test_segment_clock_keeps_the_first_time_until_final_and_is_bounded() -> None:
    clock = SegmentClock(limit=2)
    first = clock.stamp("s1", "agent", final=False)
    assert clock.stamp("s1", "agent", final=False) == first
    assert clock.stamp("s1", "agent", final=True) == first
    assert len(clock) == 0  # final segments are forgotten
    clock.stamp("a", "x", final=False)
    clock.stamp("b", "x", final=False)
    clock.stamp("c", "x", final=False)
    assert len(clock) == 2


def _segment(seg_id: str, text: str, final: bool) -> rtc.TranscriptionSegment:
    return rtc.TranscriptionSegment(
        id=seg_id, text=text, start_time=0, end_time=0, language="en", final=final
    )


async def test_transcription_events_become_agent_and_user_transcripts() -> None:
    receiver = LegacyTranscriptionReceiver()
    room = FakeRoom(identity="me")
    await receiver.bind(_binding(room))
    agent, me = FakeParticipant("agent-1"), FakeParticipant("me")
    stream = receiver.messages()

    room.emit("transcription_received", [_segment("SG_1", "Hel", False)], agent, None)
    room.emit("transcription_received", [_segment("SG_1", "Hello there", True)], agent, None)
    room.emit(
        "transcription_received",
        [_segment("SG_2", "", False), _segment("SG_2", "turn it off", True)],
        me,
        None,
    )
    room.emit("transcription_received", [_segment("SG_3", "who?", True)], None, None)
    got = [await asyncio.wait_for(anext(stream), 1) for _ in range(4)]

    assert [(m.id, m.type, m.text, m.final) for m in got] == [
        ("SG_1", MessageType.AGENT_TRANSCRIPT, "Hel", False),
        ("SG_1", MessageType.AGENT_TRANSCRIPT, "Hello there", True),
        ("SG_2", MessageType.USER_TRANSCRIPT, "turn it off", True),
        ("SG_3", MessageType.AGENT_TRANSCRIPT, "who?", True),
    ]
    assert got[0].timestamp == got[1].timestamp  # one segment, one timestamp

    await receiver.unbind()
    assert room.handlers["transcription_received"] == []
    room.emit("transcription_received", [_segment("SG_4", "late", True)], agent, None)
    await receiver.aclose()
    assert [m async for m in stream] == []  # nothing after unbind, and the stream ends


async def test_a_broken_event_is_reported_not_raised() -> None:
    receiver = LegacyTranscriptionReceiver()
    room = FakeRoom()
    errors: list[BaseException] = []
    await receiver.bind(_binding(room, errors))
    room.emit("transcription_received", [object()], FakeParticipant("agent"), None)
    assert len(errors) == 1 and "legacy transcription event failed" in str(errors[0])
    await receiver.aclose()


# -- registration through the installed entry point -------------------------------------------------


def test_the_installed_distribution_registers_both_transports() -> None:
    host = load_plugins()
    info = host.plugins["legacy"]
    assert (info.distribution, info.loaded) == ("lkbridge-legacy", True)
    assert info.registers == [
        "transport legacy-chat (sender+receiver)",
        "transport legacy-transcription (receiver)",
    ]
    chat = host.transports["legacy-chat"]
    assert (chat.plugin, chat.can_send, chat.can_receive) == ("legacy", True, True)
    made = chat.factory(TransportContext("s", {"topic": "old-chat"}))
    assert isinstance(made, LegacyChatSender) and made.topic == "old-chat"
    with pytest.raises(ValueError, match="legacy-chat: unknown option 'topik'"):
        chat.factory(TransportContext("s", {"topik": "x"}))
    transcription = host.transports["legacy-transcription"]
    assert (transcription.can_send, transcription.can_receive) == (False, True)
    assert isinstance(transcription.factory(TransportContext("s")), LegacyTranscriptionReceiver)
    with pytest.raises(ValueError, match="legacy-transcription: unknown option 'x'"):
        transcription.factory(TransportContext("s", {"x": 1}))


def test_the_plugin_can_be_disabled() -> None:
    host = load_plugins(disable=["legacy"])
    assert host.plugins["legacy"].disabled
    assert "legacy-chat" not in host.transports
