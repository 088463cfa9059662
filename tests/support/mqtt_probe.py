"""A plain paho client for tests: records everything it sees and waits for what a test expects."""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties


@dataclass(frozen=True)
class Seen:
    topic: str
    payload: bytes
    retain: bool
    qos: int
    at: float
    correlation_data: bytes | None = None

    @property
    def text(self) -> str:
        return self.payload.decode()

    def json(self) -> Any:
        return json.loads(self.payload)


class MqttProbe:
    """Subscribes to filters and keeps every message; `publish` and `wait_for` for tests."""

    def __init__(self, host: str, port: int, *filters: str, protocol: int = mqtt.MQTTv5) -> None:
        self.messages: list[Seen] = []
        self._lock = threading.Lock()
        self._connected = threading.Event()
        self.client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2, client_id=f"probe-{uuid.uuid4().hex[:8]}",
            protocol=protocol,
        )
        self.client.on_message = self._on_message
        self.client.on_connect = self._on_connect
        self._filters = filters or ("#",)
        self.client.connect(host, port, keepalive=30)
        self.client.loop_start()
        if not self._connected.wait(10):
            raise RuntimeError(f"probe could not connect to {host}:{port}")

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, rc: Any, props: Any = None) -> None:
        for topic in self._filters:
            client.subscribe(topic, qos=1)
        self._connected.set()

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        corr = getattr(msg.properties, "CorrelationData", None) if msg.properties else None
        seen = Seen(msg.topic, bytes(msg.payload), bool(msg.retain), msg.qos, time.monotonic(), corr)
        with self._lock:
            self.messages.append(seen)

    def publish(
        self, topic: str, payload: str | bytes | dict[str, Any], *, qos: int = 1, retain: bool = False,
        response_topic: str | None = None, correlation: bytes | None = None,
        expiry: int | None = None,
    ) -> None:
        data = json.dumps(payload) if isinstance(payload, dict) else payload
        props = None
        if response_topic or correlation or expiry is not None:
            props = Properties(PacketTypes.PUBLISH)
            if response_topic:
                props.ResponseTopic = response_topic
            if correlation:
                props.CorrelationData = correlation
            if expiry is not None:
                props.MessageExpiryInterval = expiry
        info = self.client.publish(topic, data, qos=qos, retain=retain, properties=props)
        info.wait_for_publish(10)

    def seen(self, topic: str | None = None, predicate: Callable[[Seen], bool] | None = None) -> list[Seen]:
        with self._lock:
            items = list(self.messages)
        return [m for m in items if (topic is None or m.topic == topic) and (predicate is None or predicate(m))]

    async def wait_for(
        self, topic: str, predicate: Callable[[Seen], bool] | None = None, *, timeout: float = 15.0,
        after: int = 0,
    ) -> Seen:
        """The first message on topic (from index `after` of everything seen) matching predicate."""
        deadline = time.monotonic() + timeout
        while True:
            with self._lock:
                items = self.messages[after:]
            for m in items:
                if m.topic == topic and (predicate is None or predicate(m)):
                    return m
            if time.monotonic() > deadline:
                recent = [f"{m.topic} {m.payload[:200]!r}" for m in self.seen(topic)][-5:]
                raise AssertionError(f"nothing matching on {topic} within {timeout} s; last: {recent}")
            await asyncio.sleep(0.02)

    def mark(self) -> int:
        with self._lock:
            return len(self.messages)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
