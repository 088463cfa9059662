"""TranscriptionStreamReceiver: agent and user transcripts from lk.transcription text streams."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime

from livekit import rtc

from lkbridge.errors import TransportError
from lkbridge.log import get_logger
from lkbridge.messages import MessageType, ReceivedMessage, utcnow
from lkbridge.transports.base import ReceiverBase, RoomBinding

log = get_logger(__name__)

TRANSCRIPTION_TOPIC = "lk.transcription"
SEGMENT_ID_ATTRIBUTE = "lk.segment_id"
FINAL_ATTRIBUTE = "lk.transcription_final"
ROOM_DISCONNECT_ERROR = "Disconnected while receiving"  # livekit.rtc's text for our own disconnect


def parse_final(value: str | None) -> bool | None:
    """`true`/`1` and `false`/`0`, case-insensitive; anything else (or missing) is None."""
    if value is None:
        return None
    text = value.strip().lower()
    if text in ("true", "1"):
        return True
    if text in ("false", "0"):
        return False
    return None


@dataclass(frozen=True, slots=True)
class StreamHeader:
    """What the merge rules need to know about one incoming text stream."""

    stream_id: str
    sender: str
    timestamp_ms: int
    attributes: Mapping[str, str] = field(default_factory=dict)

    @property
    def segment_id(self) -> str:
        return self.attributes.get(SEGMENT_ID_ATTRIBUTE) or self.stream_id

    @property
    def final(self) -> bool:
        return parse_final(self.attributes.get(FINAL_ATTRIBUTE)) or False

    @property
    def timestamp(self) -> datetime:
        if self.timestamp_ms <= 0:
            return utcnow()
        return datetime.fromtimestamp(self.timestamp_ms / 1000.0, UTC)


@dataclass(slots=True)
class _Partial:
    text: str
    timestamp: datetime
    stream_id: str


class TranscriptMerger:
    """The merge rules (spec §4.4, with lkbridge's finality rule), with no LiveKit dependency.

    Partials are keyed by (segment id, sender). Within one stream chunks always append; a chunk
    from another stream of the same segment replaces the text. A message keeps the header
    timestamp of the first stream of its segment. Starting a new segment drops the sender's
    other partials.

    Finality is decided only when a stream ends: a stream that ends normally with
    `lk.transcription_final` true (in its header or its trailer) makes its text final and
    removes the partial. Chunks are never final, whatever the attributes say while they are
    read: rtc may hand over a stream so late that its attributes already hold the trailer's
    final flag, and a chunk taken for final would replace the text instead of appending. A
    stream that ends without the flag leaves its text not final (a later stream of the same
    segment continues it); an aborted stream drops its partial and leaves its text not final;
    the end of a stream whose segment a later stream has taken over changes nothing.
    """

    def __init__(self) -> None:
        self._partials: dict[tuple[str, str], _Partial] = {}
        self._last: dict[tuple[str, str], ReceivedMessage] = {}

    def chunk(self, header: StreamHeader, text: str, *, is_local: bool) -> ReceivedMessage | None:
        """Apply one chunk; returns the (not final) message to store, or None for an empty one."""
        if not text:
            return None
        key = (header.segment_id, header.sender)
        partial = self._partials.get(key)
        if partial is None:
            partial = _Partial(text=text, timestamp=header.timestamp, stream_id=header.stream_id)
            for other in [k for k in self._partials if k[1] == header.sender]:
                del self._partials[other]
            self._partials[key] = partial
        elif partial.stream_id == header.stream_id:
            partial.text += text
        else:
            partial.text = text
            partial.stream_id = header.stream_id
        message = ReceivedMessage(
            id=header.segment_id,
            timestamp=partial.timestamp,
            type=MessageType.USER_TRANSCRIPT if is_local else MessageType.AGENT_TRANSCRIPT,
            text=partial.text,
            final=False,
        )
        self._last[(header.stream_id, header.sender)] = message
        return message

    def end(self, header: StreamHeader, *, aborted: bool = False) -> ReceivedMessage | None:
        """A stream ended; `header.attributes` include the trailer's. Returns the final message
        to store when the stream ended normally with the final flag, else None."""
        last = self._last.pop((header.stream_id, header.sender), None)
        key = (header.segment_id, header.sender)
        partial = self._partials.get(key)
        owns_partial = partial is not None and partial.stream_id == header.stream_id
        if aborted:
            if owns_partial:
                del self._partials[key]
            return None
        if not header.final or not owns_partial:
            return None  # no flag, or a later stream of the segment has taken over its text
        del self._partials[key]
        if last is None:
            return None
        return replace(last, final=True)

    def reset(self) -> None:
        self._partials.clear()
        self._last.clear()

    @property
    def partial_count(self) -> int:
        return len(self._partials)


def _header(info: rtc.TextStreamInfo, sender: str) -> StreamHeader:
    return StreamHeader(
        stream_id=info.stream_id,
        sender=sender,
        timestamp_ms=int(info.timestamp or 0),
        attributes=dict(info.attributes or {}),
    )


class TranscriptionStreamReceiver(ReceiverBase):
    """Turns `lk.transcription` text streams into agent_transcript / user_transcript messages.

    A transcript is the user's when the stream's sender identity is the local participant's
    (the agent sends user transcripts on the user's behalf); anything else is the agent's.
    Streams of one sender are applied in the order they were opened; a stream waits at most
    `order_timeout` seconds for the previous stream of its sender to end.
    """

    def __init__(self, *, topic: str = TRANSCRIPTION_TOPIC, order_timeout: float = 2.0) -> None:
        super().__init__()
        self.topic = topic
        self.order_timeout = order_timeout
        self.merger = TranscriptMerger()
        self._tasks: set[asyncio.Task[None]] = set()
        self._latest_by_sender: dict[str, asyncio.Task[None]] = {}
        self._registered_on: rtc.Room | None = None

    def __repr__(self) -> str:
        return f"TranscriptionStreamReceiver(topic={self.topic!r})"

    async def bind(self, binding: RoomBinding) -> None:
        if self._binding is not None:
            await self.unbind()
        try:
            binding.room.register_text_stream_handler(self.topic, self._on_stream)
        except ValueError as exc:
            raise TransportError(f"cannot receive {self.topic}: {exc}") from exc
        self._registered_on = binding.room
        await super().bind(binding)

    async def unbind(self) -> None:
        if self._registered_on is not None:
            self._registered_on.unregister_text_stream_handler(self.topic)
            self._registered_on = None
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        self._latest_by_sender.clear()
        self.merger.reset()
        await super().unbind()

    def _on_stream(self, reader: rtc.TextStreamReader, sender: str) -> None:
        # Called synchronously by the room, in the order streams were opened.
        previous = self._latest_by_sender.get(sender)
        task = asyncio.get_running_loop().create_task(
            self._consume(reader, sender, previous),
            name=f"lkbridge.transcription.stream.{reader.info.stream_id}",
        )
        self._tasks.add(task)
        self._latest_by_sender[sender] = task
        task.add_done_callback(lambda t: self._forget(sender, t))

    def _forget(self, sender: str, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if self._latest_by_sender.get(sender) is task:
            del self._latest_by_sender[sender]
        if not task.cancelled() and task.exception() is not None:
            log.error("transcription_stream_task_failed", error=repr(task.exception()))

    async def _consume(
        self, reader: rtc.TextStreamReader, sender: str, previous: asyncio.Task[None] | None
    ) -> None:
        binding = self._binding
        try:
            if previous is not None and not previous.done():
                _, pending = await asyncio.wait({previous}, timeout=self.order_timeout)
                if pending:
                    log.warning("transcription_stream_overlapped", sender=sender, topic=self.topic)
            is_local = binding is not None and sender == binding.local_identity
            try:
                async for chunk in reader:
                    message = self.merger.chunk(
                        _header(reader.info, sender), chunk, is_local=is_local
                    )
                    if message is not None:
                        self._emit(message)
            except rtc.StreamError as exc:
                self._finish(reader, sender, aborted=True)
                room_gone = binding is None or not binding.room.isconnected()
                if exc.description == ROOM_DISCONNECT_ERROR or room_gone:
                    return
                log.warning("transcription_stream_aborted", sender=sender, reason=exc.description)
                # The text kept so far (not final) reaches the history before the error shows.
                await self.flush()
                if binding is not None:
                    binding.report_error(
                        TransportError(
                            f"transcription stream from {sender} ended abnormally: "
                            f"{exc.description}"
                        )
                    )
                return
            self._finish(reader, sender)
        except asyncio.CancelledError:
            self._finish(reader, sender, aborted=True)
            raise
        finally:
            reader.close()

    def _finish(self, reader: rtc.TextStreamReader, sender: str, *, aborted: bool = False) -> None:
        message = self.merger.end(_header(reader.info, sender), aborted=aborted)
        if message is not None:
            self._emit(message)
