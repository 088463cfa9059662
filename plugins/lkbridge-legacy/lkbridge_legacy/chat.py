"""LegacyChatSender: user text as the older JSON chat data packet on topic lk-chat-topic."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime

import structlog
from livekit.rtc.participant import PublishDataError

from lkbridge.errors import NotConnectedError, TransportError
from lkbridge.messages import SentMessage
from lkbridge.transports.base import ReceiverBase

log = structlog.get_logger(__name__)

LEGACY_CHAT_TOPIC = "lk-chat-topic"
MAX_PACKET_BYTES = 15 * 1024
"""LiveKit's documented limit for a reliable data packet's payload (15 KiB)."""


@dataclass(frozen=True, slots=True)
class LegacyChatMessage:
    """The JS SDK's chat message as sent in a data packet: id, ms timestamp, message text."""

    id: str
    timestamp: int
    message: str

    @property
    def time(self) -> datetime:
        return datetime.fromtimestamp(self.timestamp / 1000.0, UTC)


def encode_legacy_chat(message: SentMessage) -> bytes:
    """The data packet payload for a sent message: {"id", "timestamp" (ms), "message"}."""
    packet = {
        "id": message.id,
        "timestamp": int(message.timestamp.timestamp() * 1000),
        "message": message.text,
    }
    return json.dumps(packet, ensure_ascii=False, separators=(",", ":")).encode()


def decode_legacy_chat(payload: bytes) -> LegacyChatMessage:
    """Parse a legacy chat packet (what an agent or an older client receives); ValueError if bad."""
    try:
        data = json.loads(payload.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"not a JSON chat packet: {exc}") from exc
    if not isinstance(data, dict):
        raise ValueError("a chat packet is a JSON object")
    msg_id, timestamp, text = data.get("id"), data.get("timestamp"), data.get("message")
    if not isinstance(msg_id, str) or not msg_id:
        raise ValueError("id: expected a non-empty string")
    if isinstance(timestamp, bool) or not isinstance(timestamp, int | float):
        raise ValueError("timestamp: expected milliseconds since the epoch")
    if not isinstance(text, str):
        raise ValueError("message: expected a string")
    return LegacyChatMessage(id=msg_id, timestamp=int(timestamp), message=text)


class LegacyChatSender(ReceiverBase):
    """Sends each message as one reliable data packet on `lk-chat-topic`, to every participant.

    For agents and clients that predate text streams (they do not read `lk.chat`). Like the
    `chat` sender it loops the sent message back as user_input, with the same id, while it is
    also used as a receiver; `send()` returns once the session has it.
    """

    def __init__(self, *, topic: str = LEGACY_CHAT_TOPIC) -> None:
        super().__init__()
        self.topic = topic

    def __repr__(self) -> str:
        return f"LegacyChatSender(topic={self.topic!r})"

    async def send(self, message: SentMessage) -> None:
        room = self._binding.room if self._binding is not None else None
        if room is None or not room.isconnected():
            raise NotConnectedError("cannot send a message before connecting to the room")
        payload = encode_legacy_chat(message)
        if len(payload) > MAX_PACKET_BYTES:
            raise TransportError(
                f"the message is too long for a chat data packet "
                f"({len(payload)} bytes, at most {MAX_PACKET_BYTES})"
            )
        try:
            await room.local_participant.publish_data(payload, reliable=True, topic=self.topic)
        except PublishDataError as exc:
            raise TransportError(f"publishing on {self.topic} failed: {exc.message}") from exc
        log.debug("legacy_chat_sent", message_id=message.id, topic=self.topic)
        if self._consumers > 0:
            self._emit(message.as_received())
            await self.flush()
