"""One batch of received sends and commands on their way into the daemon's journal."""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

from lkbridge.bridges.hub import Intent

__all__ = ["Intake", "Intaken", "message_digest"]


def message_digest(topic: str, payload: bytes) -> bytes:
    """What identifies one received message (topic and payload) when the broker repeats it."""
    return hashlib.blake2b(topic.encode() + b"\0" + payload, digest_size=16).digest()


@dataclass(frozen=True)
class Intaken:
    """An intent, the topic it came on, and what queues it once journaled (with its seq)."""

    topic: str
    intent: Intent
    enqueue: Callable[[int], None]


class Intake:
    """The intents of one batch, in arrival order."""

    def __init__(self) -> None:
        self.intents: list[Intaken] = []
        self._per_session: Counter[str] = Counter()

    def add(self, topic: str, intent: Intent, enqueue: Callable[[int], None]) -> None:
        self.intents.append(Intaken(topic, intent, enqueue))
        self._per_session[intent.session_id] += 1

    def count(self, session_id: str | None = None) -> int:
        """How many intents (of one session, or in all) the batch holds."""
        return self._per_session[session_id] if session_id else len(self.intents)
