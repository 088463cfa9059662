"""Manual acknowledgement: PUBACKs for received messages, sent in the order the messages arrived."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["AckOrder"]


@dataclass
class _Owed:
    gen: int  # the connection it arrived on
    mid: int
    qos: int
    done: bool = False  # acknowledged by the application, waiting for the earlier ones


class AckOrder:
    """Received QoS>0 messages that are owed an acknowledgement, in order of receipt.

    MQTT requires PUBACKs in arrival order: an early message not yet acknowledged holds back the
    later ones. An acknowledgement for a message of an earlier connection is never sent (its
    packet id may mean another message now); the broker delivers that message again, with the
    DUP flag, after the reconnect. `stale` counts the acknowledgements not sent for that reason.
    """

    def __init__(self) -> None:
        self._owed: dict[int, _Owed] = {}  # key -> owed, in order of receipt
        self._last_key = 0
        self.stale = 0

    def expect(self, gen: int, mid: int, qos: int) -> int:
        """A message was received: the key (never 0) that ack() takes for it."""
        self._last_key += 1
        self._owed[self._last_key] = _Owed(gen, mid, qos)
        return self._last_key

    def ack(
        self, key: int, *, gen: int, connected: bool, send: Callable[[int, int], object]
    ) -> None:
        """The application is done with message `key`: send what is due, `send(mid, qos)`."""
        owed = self._owed.get(key)
        if owed is None:
            if key:
                self.stale += 1
            return
        owed.done = True
        while self._owed:
            first, head = next(iter(self._owed.items()))
            if not head.done:
                break
            del self._owed[first]
            if head.gen == gen and connected:
                send(head.mid, head.qos)
            else:
                self.stale += 1

    def connection_gone(self) -> None:
        """Forget acknowledgements owed on a connection that is gone."""
        if self._owed:
            self.stale += sum(1 for owed in self._owed.values() if owed.done)
            self._owed.clear()

    def forget(self, key: int) -> None:
        """The message was dropped before the application saw it: never acknowledged."""
        self._owed.pop(key, None)
