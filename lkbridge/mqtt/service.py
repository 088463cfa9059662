"""The bridge's MQTT connection offered to transports as `services["mqtt"]` (one connection for all)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable

from lkbridge.errors import TransportError
from lkbridge.log import get_logger
from lkbridge.mqtt.client import MqttClient
from lkbridge.mqtt.topic import filters_overlap, topic_matches
from lkbridge.mqtt.types import IncomingMessage

log = get_logger(__name__)

Handler = Callable[[str, bytes], None]


def reserved_overlap(topic_filter: str, reserved: Iterable[str]) -> str | None:
    """The first of the bridge's own filters that topic_filter overlaps, or None."""
    return next((own for own in reserved if filters_overlap(topic_filter, own)), None)


class SharedMqttService:
    """Implements lkbridge.mqtt.transport.MqttService over the bridge's client.

    `reserved` are the bridge's own subscriptions: a transport may not subscribe to anything
    that overlaps them (it would see, and could be mistaken for the handler of, commands).
    """

    def __init__(self, client: MqttClient, base_topic: str, reserved: Iterable[str] = ()) -> None:
        self._client = client
        self.base_topic = base_topic
        self.reserved = tuple(reserved)
        self._handlers: list[tuple[str, Handler]] = []

    def publish_nowait(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False) -> None:
        if not self._client.publish_nowait(topic, payload, qos=qos, retain=retain):
            raise TransportError(f"MQTT outgoing queue is full; {topic} not published")

    async def subscribe(self, topic_filter: str, handler: Handler) -> Callable[[], Awaitable[None]]:
        own = reserved_overlap(topic_filter, self.reserved)
        if own is not None:
            raise TransportError(
                f"subscribe_topic {topic_filter!r} overlaps the bridge's own topics ({own});"
                " choose a topic outside them"
            )
        entry = (topic_filter, handler)
        self._handlers.append(entry)
        if sum(1 for f, _ in self._handlers if f == topic_filter) == 1:
            await self._client.subscribe(topic_filter, qos=1)

        async def unsubscribe() -> None:
            if entry in self._handlers:
                self._handlers.remove(entry)
                if not any(f == topic_filter for f, _ in self._handlers):
                    await self._client.unsubscribe(topic_filter)

        return unsubscribe

    def dispatch(self, message: IncomingMessage) -> bool:
        """Hand message to every matching transport subscription; True if any matched."""
        matched = False
        for topic_filter, handler in list(self._handlers):
            if topic_matches(topic_filter, message.topic):
                matched = True
                try:
                    handler(message.topic, message.payload)
                except Exception:
                    log.exception("mqtt_service_handler_failed", topic=message.topic)
        return matched
