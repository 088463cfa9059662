"""MessageHistory: a session's in-memory messages, keyed by id in first-arrival order."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from typing import Any

from lkbridge.messages import ReceivedMessage


def _timestamp_key(message: ReceivedMessage) -> datetime:
    ts = message.timestamp
    return ts.replace(tzinfo=UTC) if ts.tzinfo is None else ts


class MessageHistory:
    """New ids are appended; a known id is updated in place and keeps its position (spec §4.2)."""

    def __init__(self, limit: int | None = None) -> None:
        self._items: dict[str, ReceivedMessage] = {}
        self.limit = limit
        """Keep at most this many messages (the oldest by arrival go first); None: unbounded."""

    def _trim(self) -> None:
        if self.limit is None:
            return
        while len(self._items) > self.limit:
            del self._items[next(iter(self._items))]

    def __len__(self) -> int:
        return len(self._items)

    def __iter__(self) -> Iterator[ReceivedMessage]:
        return iter(list(self._items.values()))

    def get(self, message_id: str) -> ReceivedMessage | None:
        return self._items.get(message_id)

    def snapshot(self) -> list[ReceivedMessage]:
        return list(self._items.values())

    def put(self, message: ReceivedMessage) -> tuple[bool, ReceivedMessage | None]:
        """Store message; returns (whether anything changed, the previous value for its id)."""
        previous = self._items.get(message.id)
        if previous == message:
            return False, previous
        self._items[message.id] = message
        if previous is None:
            self._trim()
        return True, previous

    def restore(self, messages: Iterable[Any]) -> tuple[list[ReceivedMessage], int]:
        """Replace everything: last value wins per id, then a stable sort by timestamp.

        Items may be ReceivedMessage or their to_dict() form; anything else is skipped.
        Returns (the new history, how many items were skipped). Never raises for bad items.
        """
        latest: dict[str, ReceivedMessage] = {}
        skipped = 0
        for item in messages:
            try:
                message = (
                    item if isinstance(item, ReceivedMessage) else ReceivedMessage.from_dict(item)
                )
                _timestamp_key(message)
            except Exception:
                skipped += 1
                continue
            latest.pop(message.id, None)
            latest[message.id] = message
        ordered = sorted(latest.values(), key=_timestamp_key)
        if self.limit is not None:
            ordered = ordered[len(ordered) - self.limit :] if self.limit else []
        self._items = {m.id: m for m in ordered}
        return ordered, skipped
