"""The agents framework's `lk.agent.session` byte streams: accepted and dropped without a word."""

from __future__ import annotations

from livekit import rtc

AGENT_SESSION_TOPIC = "lk.agent.session"
"""The framework's session host sends its remote-session protocol to every participant here."""


def _discard(reader: rtc.ByteStreamReader, sender: str) -> None:
    reader.close()


def ignore_agent_session_streams(room: rtc.Room) -> None:
    """Register a quiet handler: without one, rtc logs a line at INFO for every such stream."""
    room.register_byte_stream_handler(AGENT_SESSION_TOPIC, _discard)
