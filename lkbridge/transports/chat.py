"""TextMessageSender: user text on the lk.chat topic, with a loopback copy for the history."""

from __future__ import annotations

from livekit import rtc

from lkbridge.errors import NotConnectedError, TransportError
from lkbridge.log import get_logger
from lkbridge.messages import SentMessage
from lkbridge.transports.base import ReceiverBase, handed_over

log = get_logger(__name__)

CHAT_TOPIC = "lk.chat"


class TextMessageSender(ReceiverBase):
    """Sends each message as a broadcast text stream on `lk.chat` (no destinations, no attributes).

    It is also a receiver: after a successful send it emits the loopback `user_input` message
    (same id and timestamp as the sent message), and `send()` returns once the session has it.
    """

    def __init__(self, *, topic: str = CHAT_TOPIC) -> None:
        super().__init__()
        self.topic = topic

    def __repr__(self) -> str:
        return f"TextMessageSender(topic={self.topic!r})"

    async def send(self, message: SentMessage) -> None:
        room = self._binding.room if self._binding is not None else None
        if room is None or not room.isconnected():
            raise NotConnectedError("cannot send a message before connecting to the room")
        try:
            await room.local_participant.send_text(message.text, topic=self.topic)
            handed_over()  # first: the agent may already have it
        except rtc.StreamError as exc:
            raise TransportError(f"sending on {self.topic} failed: {exc.description}") from exc
        except Exception as exc:  # rtc raises bare Exceptions for a room torn down meanwhile
            raise TransportError(f"sending on {self.topic} failed: {exc}") from exc
        log.debug("chat_message_sent", message_id=message.id, topic=self.topic)
        if self.has_consumer:  # used as a sender only: nobody would ever read the loopback
            self._emit(message.as_received())
            await self.flush()
