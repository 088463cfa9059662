"""Foundation proof: MQTT publish/subscribe round trip (QoS 1, retained read back) on Mosquitto."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from devstack.mosquitto import Mosquitto
from lkbridge.mqtt.client import MqttClient, MqttSettings

pytestmark = pytest.mark.e2e


def _settings(broker: Mosquitto) -> MqttSettings:
    return MqttSettings(
        host=broker.host,
        port=broker.port,
        client_id=f"lkb-test-{uuid.uuid4().hex[:8]}",
        reconnect_min=0.05,
        reconnect_max=0.5,
        connect_timeout=3.0,
    )


async def test_mqtt_roundtrip_qos1_retained(mqtt_broker: Mosquitto) -> None:
    base = f"lkbtest/{uuid.uuid4().hex[:8]}"
    async with MqttClient(_settings(mqtt_broker)) as sub, MqttClient(_settings(mqtt_broker)) as pub:
        await asyncio.gather(sub.wait_connected(5), pub.wait_connected(5))
        await sub.subscribe(f"{base}/live", qos=1)
        assert await pub.publish(f"{base}/live", b"hello", qos=1)
        await pub.publish(f"{base}/state", '{"state":"online"}', qos=1, retain=True)
        await pub.wait_published(5)  # both PUBACKed by the broker

        live = sub.messages()
        msg = await asyncio.wait_for(anext(live), 5)
        assert (msg.topic, msg.payload, msg.qos, msg.retain) == (f"{base}/live", b"hello", 1, False)

    # A client that connects afterwards reads the retained message back from the broker.
    async with MqttClient(_settings(mqtt_broker)) as reader:
        await reader.wait_connected(5)
        await reader.subscribe(f"{base}/state", qos=1)
        msg = await asyncio.wait_for(anext(reader.messages()), 5)
        assert msg.topic == f"{base}/state"
        assert msg.payload == b'{"state":"online"}'
        assert msg.retain is True
        assert msg.qos == 1
        await reader.publish(f"{base}/state", b"", retain=True)  # clear it again
