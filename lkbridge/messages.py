"""Message value types shared by sessions, transports, the store and bridges."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any


class MessageType(StrEnum):
    """What kind of message a ReceivedMessage carries."""

    AGENT_TRANSCRIPT = "agent_transcript"
    USER_TRANSCRIPT = "user_transcript"
    USER_INPUT = "user_input"


def utcnow() -> datetime:
    """An aware UTC timestamp."""
    return datetime.now(UTC)


def new_message_id() -> str:
    """A fresh lower-case UUID4 string, as the Flutter SDK makes them."""
    return str(uuid.uuid4())


def _parse_timestamp(value: Any) -> datetime:
    if isinstance(value, datetime):
        ts = value
    elif isinstance(value, int | float) and not isinstance(value, bool):
        # Numbers are milliseconds since the epoch (the wire format of stream headers).
        try:
            ts = datetime.fromtimestamp(value / 1000.0, UTC)
        except (OverflowError, OSError, ValueError) as exc:
            raise ValueError(f"timestamp: out of range: {value!r}") from exc
    elif isinstance(value, str):
        text = value.strip()
        if text.endswith("Z"):
            text = text[:-1] + "+00:00"
        try:
            ts = datetime.fromisoformat(text)
        except ValueError as exc:
            raise ValueError(f"timestamp: not an ISO 8601 date-time: {value!r}") from exc
    else:
        raise ValueError(f"timestamp: expected an ISO 8601 string, got {type(value).__name__}")
    if ts.tzinfo is None:
        ts = ts.replace(tzinfo=UTC)
    try:
        return ts.astimezone(UTC)
    except OverflowError as exc:  # e.g. 0001-01-01T00:00:00+05:00 is before year 1 in UTC
        raise ValueError(f"timestamp: out of range: {value!r}") from exc


def _require_str(data: dict[str, Any], key: str) -> str:
    value = data.get(key)
    if not isinstance(value, str):
        raise ValueError(f"{key}: expected a string, got {type(value).__name__}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:  # a lone surrogate (JSON "\ud800") is not Unicode text
        raise ValueError(f"{key}: not valid Unicode (a lone surrogate)") from exc
    return value


@dataclass(frozen=True, slots=True)
class ReceivedMessage:
    """A message in a session's history: a transcript or the user's own input."""

    id: str
    timestamp: datetime
    type: MessageType
    text: str
    final: bool = False
    reply_to: str | None = None
    """On agent_transcript messages: the id of the latest user_input message the session sent
    before the reply's first chunk arrived (None when it had sent none). None on other types."""

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe form; the shape of the daemon's message events."""
        return {
            "id": self.id,
            "timestamp": self.timestamp.astimezone(UTC).isoformat(timespec="milliseconds"),
            "type": self.type.value,
            "text": self.text,
            "final": self.final,
            "reply_to": self.reply_to,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ReceivedMessage:
        """Parse the to_dict() form; raises ValueError naming the bad field."""
        if not isinstance(data, dict):
            raise ValueError(f"message: expected an object, got {type(data).__name__}")
        msg_id = _require_str(data, "id")
        if not msg_id:
            raise ValueError("id: must not be empty")
        raw_type = _require_str(data, "type")
        try:
            msg_type = MessageType(raw_type)
        except ValueError as exc:
            allowed = ", ".join(t.value for t in MessageType)
            raise ValueError(f"type: must be one of {allowed}, got {raw_type!r}") from exc
        final = data.get("final", False)
        if not isinstance(final, bool):
            raise ValueError(f"final: expected true or false, got {type(final).__name__}")
        if "timestamp" not in data:
            raise ValueError("timestamp: missing")
        reply_to = data.get("reply_to")
        if reply_to is not None:
            reply_to = _require_str(data, "reply_to")
            if not reply_to:
                raise ValueError("reply_to: must not be empty (use null)")
        return cls(
            id=msg_id,
            timestamp=_parse_timestamp(data["timestamp"]),
            type=msg_type,
            text=_require_str(data, "text"),
            final=final,
            reply_to=reply_to,
        )


@dataclass(frozen=True, slots=True)
class SentMessage:
    """A message the user sent through the session's senders."""

    text: str
    id: str = field(default_factory=new_message_id)
    timestamp: datetime = field(default_factory=utcnow)

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "timestamp": self.timestamp.astimezone(UTC).isoformat(timespec="milliseconds"),
            "text": self.text,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SentMessage:
        if not isinstance(data, dict):
            raise ValueError(f"message: expected an object, got {type(data).__name__}")
        return cls(
            id=_require_str(data, "id"),
            timestamp=_parse_timestamp(data.get("timestamp")),
            text=_require_str(data, "text"),
        )

    def as_received(self) -> ReceivedMessage:
        """The loopback form: same id and timestamp, type user_input."""
        return ReceivedMessage(
            id=self.id,
            timestamp=self.timestamp,
            type=MessageType.USER_INPUT,
            text=self.text,
            final=True,
        )
