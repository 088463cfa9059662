"""Bounds on what broker clients can make the bridge do: request rate, where answers may go."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

from lkbridge.bridges.mqtt.topics import SessionLeaf
from lkbridge.mqtt.types import topic_matches


class TokenBucket:
    """`rate` tokens a second, at most `burst` saved up; `take()` is False when none is left."""

    def __init__(
        self, rate: float, burst: int, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.rate = rate
        self.burst = float(burst)
        self._clock = clock
        self._tokens = float(burst)
        self._at = clock()

    def take(self) -> bool:
        now = self._clock()
        self._tokens = min(self.burst, self._tokens + (now - self._at) * self.rate)
        self._at = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False


def response_topic_problem(topic: str, base: str, own_filters: Iterable[str]) -> str | None:
    """Why an MQTT v5 Response Topic may not be used, or None.

    Answers go only under `{base}/` (never e.g. to Home Assistant's discovery topics, where the
    bridge may publish and the requester may not) and never to a topic the bridge itself acts on
    (an answer published to `{base}/x/send` would be sent to the agent), nor to one it publishes
    on (`{base}/bridge/…`, `{base}/<id>/state`, `…/message`, `…/event`, …): a requester allowed
    to publish requests only must not be able to put the bridge's name on a forged state, event
    or someone else's answer.
    """
    if not topic.startswith(base + "/"):
        return f"response topic {topic!r} is not under {base}/"
    for own in own_filters:
        if topic_matches(own, topic):
            return f"response topic {topic!r} is one the bridge acts on ({own})"
    for published in (f"{base}/bridge/#", *(f"{base}/+/{leaf.value}" for leaf in SessionLeaf)):
        if topic_matches(published, topic):
            return f"response topic {topic!r} is one the bridge publishes on ({published})"
    return None
