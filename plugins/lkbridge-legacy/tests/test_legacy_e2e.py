"""lkbridge-legacy on the real LiveKit server: legacy chat reaches the agent, legacy transcripts arrive."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import pytest
from livekit import rtc
from lkbridge_legacy.chat import LEGACY_CHAT_TOPIC, LegacyChatMessage, decode_legacy_chat

from devstack.livekit_server import LiveKitServer
from lkbridge.hookspecs import TransportContext
from lkbridge.messages import MessageType
from lkbridge.plugins.host import PluginHost, load_plugins
from lkbridge.session.core import Session
from lkbridge.tokens.sources import MintedTokenSource

pytestmark = pytest.mark.e2e


async def wait_until(predicate: Callable[[], Any], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        await asyncio.sleep(0.02)


def _transport(host: PluginHost, name: str, session_id: str) -> Any:
    """Made by the factory the installed plugin registered (found through its entry point only)."""
    spec = host.transports[name]
    assert spec.plugin == "legacy"
    assert host.plugins["legacy"].distribution == "lkbridge-legacy"
    return spec.factory(TransportContext(session_id=session_id))


def _listen_for_legacy_chat(room: rtc.Room) -> asyncio.Queue[tuple[str, LegacyChatMessage]]:
    """What an agent that predates text streams does: read chat data packets."""
    inbox: asyncio.Queue[tuple[str, LegacyChatMessage]] = asyncio.Queue()

    def on_data(packet: rtc.DataPacket) -> None:
        if packet.topic == LEGACY_CHAT_TOPIC:
            sender = packet.participant.identity if packet.participant is not None else ""
            inbox.put_nowait((sender, decode_legacy_chat(packet.data)))

    room.on("data_received", on_data)
    return inbox


async def test_a_session_using_legacy_chat_reaches_the_scripted_agent(
    livekit_server: LiveKitServer, scripted_agent: Callable[..., Any]
) -> None:
    agent = await scripted_agent(echo=False)
    host = load_plugins()
    chat = _transport(host, "legacy-chat", "old")
    source = MintedTokenSource(
        livekit_server.url, livekit_server.api_key, livekit_server.api_secret, identity="old-user"
    )
    session = Session.with_agent(
        agent.agent_name, token_source=source, senders=[chat], receivers=[chat]
    )
    async with session:
        await session.start()
        job = await agent.wait_for_job(timeout=15)
        inbox = _listen_for_legacy_chat(job.room)
        await wait_until(lambda: session.agent.is_connected, 15, "the agent")

        sent = await session.send_text("hello from an older client")
        assert sent is not None, session.error
        sender, packet = await asyncio.wait_for(inbox.get(), 10)
        assert sender == "old-user"
        assert (packet.id, packet.message) == (sent.id, "hello from an older client")
        assert abs(packet.time - sent.timestamp).total_seconds() < 0.002
        assert job.chat.empty(), "nothing went over lk.chat"
        # the loopback, like the chat sender's: same id, user_input, in the history at once
        assert [(m.id, m.type) for m in session.messages] == [(sent.id, MessageType.USER_INPUT)]

        second = await session.send_text("and again")
        assert second is not None
        assert (await asyncio.wait_for(inbox.get(), 10))[1].message == "and again"
        assert [m.text for m in session.messages] == ["hello from an older client", "and again"]
        assert session.error is None


async def test_legacy_transcription_events_arrive_as_agent_and_user_transcripts(
    livekit_server: LiveKitServer, scripted_agent: Callable[..., Any]
) -> None:
    agent = await scripted_agent(echo=False)
    host = load_plugins()
    receiver = _transport(host, "legacy-transcription", "old")
    source = MintedTokenSource(
        livekit_server.url, livekit_server.api_key, livekit_server.api_secret, identity="old-user"
    )
    session = Session.with_agent(
        agent.agent_name, token_source=source, senders=[], receivers=[receiver]
    )
    async with session:
        await session.start()
        job = await agent.wait_for_job(timeout=15)
        await wait_until(lambda: session.agent.is_connected, 15, "the agent")

        async def publish(identity: str, seg_id: str, text: str, final: bool) -> None:
            segment = rtc.TranscriptionSegment(
                id=seg_id, text=text, start_time=0, end_time=0, language="en", final=final
            )
            # livekit 1.2.1's FFI aborts the process on an empty track sid: give it a well-formed one
            await job.room.local_participant.publish_transcription(
                rtc.Transcription(
                    participant_identity=identity, track_sid="TR_legacytest01", segments=[segment]
                )
            )

        await publish(job.identity, "SG_a", "Good", False)
        await publish(job.identity, "SG_a", "Good morning", True)
        await wait_until(lambda: any(m.final for m in session.messages), 10, "the final segment")
        await publish("old-user", "SG_u", "lights on please", True)  # on the user's behalf
        await wait_until(lambda: len(session.messages) == 2, 10, "the user's segment")

        assert [(m.id, m.type, m.text, m.final) for m in session.messages] == [
            ("SG_a", MessageType.AGENT_TRANSCRIPT, "Good morning", True),
            ("SG_u", MessageType.USER_TRANSCRIPT, "lights on please", True),
        ]
        assert session.error is None
