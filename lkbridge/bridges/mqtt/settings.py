"""The bridge's MQTT client settings from [mqtt]: TLS, and the offline will on bridge/state."""

from __future__ import annotations

from lkbridge.bridges.mqtt.topics import Topics
from lkbridge.config.models import MqttConfig
from lkbridge.mqtt.client import MqttSettings, TlsSettings, WillMessage

__all__ = ["OFFLINE", "ONLINE", "client_settings", "tls_settings"]

ONLINE = b'{"state":"online"}'
OFFLINE = b'{"state":"offline"}'


def tls_settings(mqtt: MqttConfig) -> TlsSettings | None:
    """[mqtt.tls] as client settings (None: no TLS)."""
    if mqtt.tls is None:
        return None
    return TlsSettings(
        ca_file=str(mqtt.tls.ca_file) if mqtt.tls.ca_file else None,
        cert_file=str(mqtt.tls.cert_file) if mqtt.tls.cert_file else None,
        key_file=str(mqtt.tls.key_file) if mqtt.tls.key_file else None,
        insecure=mqtt.tls.insecure,
    )


def client_settings(mqtt: MqttConfig, topics: Topics) -> MqttSettings:
    """The client's settings from [mqtt], with the offline will on `{base}/bridge/state`."""
    tls = tls_settings(mqtt)
    return MqttSettings(
        host=mqtt.host,
        port=mqtt.port,
        client_id=mqtt.client_id,
        username=mqtt.username,
        password=mqtt.password.reveal() if mqtt.password is not None else None,
        protocol="5" if mqtt.protocol.value == "5" else "3.1.1",
        keepalive=mqtt.keepalive,
        tls=tls,
        will=WillMessage(topics.bridge_state, OFFLINE, qos=1, retain=True),
        queue_limit=mqtt.queue_limit,
        manual_ack=True,  # a send or command is acknowledged once journaled (or refused)
    )
