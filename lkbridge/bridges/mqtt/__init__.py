"""The MQTT bridge: topics, request router and Home Assistant discovery over lkbridge.mqtt's client."""

from __future__ import annotations

from lkbridge.hookspecs import RegisterBridge, hookimpl


class MqttBridgePlugin:
    """`mqtt`: the built-in bridge to MQTT, with Home Assistant discovery."""

    @hookimpl
    def register_bridges(self, register: RegisterBridge) -> None:
        from lkbridge.bridges.mqtt.bridge import MqttBridge

        register("mqtt", MqttBridge)


plugin = MqttBridgePlugin()
