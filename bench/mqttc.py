"""The benchmark's own MQTT client (plain paho): publishes commands, timestamps what arrives."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as mqtt

Handler = Callable[[float, bytes], None]
"""Called on paho's thread with (perf_counter at arrival, payload)."""


class BenchMqtt:
    """One connection for the whole run; `subscribe` waits for the SUBACK."""

    def __init__(self, host: str, port: int) -> None:
        self._handlers: dict[str, Handler] = {}
        self._acks: dict[int, threading.Event] = {}
        self._lock = threading.Lock()
        self._connected = threading.Event()
        self.client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2, client_id=f"bench-{uuid.uuid4().hex[:8]}"
        )
        # Never let the publisher be the bottleneck of a throughput step.
        self.client.max_inflight_messages_set(10_000)
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.client.on_subscribe = self._on_subscribe
        self.client.connect(host, port, keepalive=30)
        self.client.loop_start()
        if not self._connected.wait(10):
            raise RuntimeError(f"bench MQTT client could not connect to {host}:{port}")

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, rc: Any,
                    props: Any = None) -> None:  # fmt: skip
        self._connected.set()

    def _on_subscribe(self, client: mqtt.Client, userdata: Any, mid: int, codes: Any,
                      props: Any = None) -> None:  # fmt: skip
        with self._lock:
            event = self._acks.pop(mid, None)
        if event is not None:
            event.set()

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        at = time.perf_counter()
        handler = self._handlers.get(msg.topic)
        if handler is not None:
            handler(at, msg.payload)

    def subscribe(self, topic: str, handler: Handler, timeout: float = 10.0) -> None:
        """Call handler for every message on topic (an exact topic, no wildcards)."""
        self._handlers[topic] = handler
        event = threading.Event()
        with self._lock:
            _, mid = self.client.subscribe(topic, qos=1)
            self._acks[mid] = event
        if not event.wait(timeout):
            raise RuntimeError(f"no SUBACK for {topic} within {timeout:g} s")

    def unsubscribe(self, topic: str) -> None:
        self._handlers.pop(topic, None)
        self.client.unsubscribe(topic)

    def publish(self, topic: str, payload: str | bytes) -> None:
        """QoS 1, not retained; returns once paho has it (it writes at once when it can)."""
        self.client.publish(topic, payload, qos=1)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
