"""The client's subscriptions: remembered, sent again on every connect, SUBACKs given to waiters."""

from __future__ import annotations

import asyncio

import paho.mqtt.client as paho
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

from lkbridge.log import get_logger

__all__ = ["Subscriptions"]

log = get_logger(__name__)

SubackWaiter = asyncio.Future[list[ReasonCode]]


class Subscriptions:
    """The topic filters wanted (with their QoS) and the SUBSCRIBEs waiting for their SUBACK."""

    def __init__(self, client: paho.Client, *, v5: bool) -> None:
        self._paho = client
        self._v5 = v5
        self._wanted: dict[str, int] = {}
        self._waiting: dict[int, tuple[list[str], SubackWaiter | None]] = {}

    def want(self, topic_filter: str, qos: int) -> None:
        self._wanted[topic_filter] = qos

    def forget(self, topic_filter: str) -> bool:
        """Stop wanting a filter; False if it was not wanted."""
        return self._wanted.pop(topic_filter, None) is not None

    def send(
        self, topics: list[str], loop: asyncio.AbstractEventLoop | None, *, wait: bool
    ) -> SubackWaiter | None:
        """SUBSCRIBE to wanted filters; with wait, a future of the SUBACK's reason codes."""
        wanted = self._wanted
        items = [(t, SubscribeOptions(qos=wanted[t]) if self._v5 else wanted[t]) for t in topics]
        rc, mid = self._paho.subscribe(items)  # type: ignore[arg-type]
        if rc != paho.MQTT_ERR_SUCCESS or mid is None or loop is None:
            return None
        waiter = loop.create_future() if wait else None
        self._waiting[mid] = (topics, waiter)
        return waiter

    def resend(self, loop: asyncio.AbstractEventLoop | None) -> None:
        """On connect: every wanted filter again (the broker may have lost our session)."""
        if self._wanted:
            self.send(list(self._wanted), loop, wait=False)

    def suback(self, mid: int, codes: list[ReasonCode]) -> None:
        topics, waiter = self._waiting.pop(mid, ([], None))
        for topic, code in zip(topics, codes, strict=False):
            if code.is_failure:
                log.warning("mqtt_subscribe_refused", topic_filter=topic, reason=str(code))
        if waiter is not None and not waiter.done():
            waiter.set_result(codes)

    def connection_lost(self) -> None:
        """Waiters get no codes; their filters stay wanted and are sent again on reconnect."""
        for _, waiter in self._waiting.values():
            if waiter is not None and not waiter.done():
                waiter.set_result([])
        self._waiting.clear()
