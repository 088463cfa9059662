"""Message transports: the sender/receiver contract and the built-in LiveKit transports."""

from lkbridge.transports.base import (
    MemoryReceiver,
    MemorySender,
    MessageReceiver,
    MessageSender,
    ReceiverBase,
    RoomBinding,
    RoomBound,
    RoomTransportBase,
)

__all__ = [
    "MemoryReceiver",
    "MemorySender",
    "MessageReceiver",
    "MessageSender",
    "ReceiverBase",
    "RoomBinding",
    "RoomBound",
    "RoomTransportBase",
]
