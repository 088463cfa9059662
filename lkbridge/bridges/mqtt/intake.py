"""One batch of received sends and commands on their way into the daemon's journal."""

from __future__ import annotations

import hashlib
from collections import Counter

from lkbridge.bridges.hub import Intent

__all__ = ["Intake", "message_digest"]


def message_digest(topic: str, payload: bytes) -> bytes:
    """What identifies one received message (topic and payload) when the broker repeats it."""
    return hashlib.blake2b(topic.encode() + b"\0" + payload, digest_size=16).digest()


class Intake:
    """The intents of one batch, in arrival order, each with the topic it came on."""

    def __init__(self) -> None:
        self.intents: list[tuple[str, Intent]] = []
        self._per_session: Counter[str] = Counter()

    def add(self, topic: str, intent: Intent) -> None:
        self.intents.append((topic, intent))
        self._per_session[intent.session_id] += 1

    def count(self, session_id: str) -> int:
        return self._per_session[session_id]
