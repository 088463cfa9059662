"""LegacyTranscriptionReceiver: transcripts from the room's transcription_received events."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from datetime import datetime
from typing import Final

import structlog
from livekit import rtc

from lkbridge.errors import TransportError
from lkbridge.messages import MessageType, ReceivedMessage, utcnow
from lkbridge.transports.base import ReceiverBase, RoomBinding

log = structlog.get_logger(__name__)

EVENT: Final = "transcription_received"
MAX_OPEN_SEGMENTS = 256


class SegmentClock:
    """Remembers when each open segment was first seen, so its updates keep one timestamp.

    Segments are keyed by (segment id, speaker); a final segment is forgotten, and at most
    `limit` open segments are kept (the oldest go first).
    """

    def __init__(self, limit: int = MAX_OPEN_SEGMENTS) -> None:
        self.limit = limit
        self._first_seen: OrderedDict[tuple[str, str], datetime] = OrderedDict()

    def stamp(self, segment_id: str, speaker: str, final: bool) -> datetime:
        key = (segment_id, speaker)
        first = self._first_seen.pop(key, None) if final else self._first_seen.get(key)
        if first is None:
            first = utcnow()
            if not final:
                self._first_seen[key] = first
                while len(self._first_seen) > self.limit:
                    self._first_seen.popitem(last=False)
        return first

    def clear(self) -> None:
        self._first_seen.clear()

    def __len__(self) -> int:
        return len(self._first_seen)


def segment_message(
    segment: rtc.TranscriptionSegment, *, is_local: bool, timestamp: datetime
) -> ReceivedMessage:
    """One segment as a history message: the segment id is the message id."""
    return ReceivedMessage(
        id=segment.id,
        timestamp=timestamp,
        type=MessageType.USER_TRANSCRIPT if is_local else MessageType.AGENT_TRANSCRIPT,
        text=segment.text,
        final=bool(segment.final),
    )


class LegacyTranscriptionReceiver(ReceiverBase):
    """Turns `transcription_received` events (track transcriptions) into transcript messages.

    Each segment carries its full text so far, so a segment's updates replace its text in place.
    A transcript is the user's when the event names the local participant (an agent transcribing
    the user publishes on the user's behalf); any other participant, or none, is the agent.
    """

    def __init__(self) -> None:
        super().__init__()
        self.clock = SegmentClock()
        self._room: rtc.Room | None = None

    def __repr__(self) -> str:
        return "LegacyTranscriptionReceiver()"

    async def bind(self, binding: RoomBinding) -> None:
        if self._binding is not None:
            await self.unbind()
        binding.room.on(EVENT, self._on_transcription)
        self._room = binding.room
        await super().bind(binding)

    async def unbind(self) -> None:
        if self._room is not None:
            self._room.off(EVENT, self._on_transcription)
            self._room = None
        self.clock.clear()
        await super().unbind()

    def _on_transcription(
        self,
        segments: Sequence[rtc.TranscriptionSegment],
        participant: rtc.Participant | None,
        publication: rtc.TrackPublication | None = None,
    ) -> None:
        binding = self._binding
        if binding is None:
            return
        try:
            speaker = participant.identity if participant is not None else ""
            is_local = bool(speaker) and speaker == binding.local_identity
            for segment in segments:
                if not segment.id or not segment.text:
                    continue
                timestamp = self.clock.stamp(segment.id, speaker, bool(segment.final))
                self._emit(segment_message(segment, is_local=is_local, timestamp=timestamp))
        except Exception as exc:  # never let a bad event escape into the room's dispatch
            log.exception("legacy_transcription_failed")
            binding.report_error(TransportError(f"legacy transcription event failed: {exc}"))
