"""lkbridge's own plugins, registered through its entry points like any third party's."""

from __future__ import annotations

from lkbridge.hookspecs import RegisterTransport, hookimpl


class ChatPlugin:
    """`chat`: the lk.chat sender, which also loops back what it sent as a receiver."""

    @hookimpl
    def register_transports(self, register: RegisterTransport) -> None:
        from lkbridge.transports.chat import TextMessageSender

        register("chat", lambda ctx: TextMessageSender(), sender=True, receiver=True)


class TranscriptionPlugin:
    """`transcription`: agent and user transcripts from lk.transcription."""

    @hookimpl
    def register_transports(self, register: RegisterTransport) -> None:
        from lkbridge.transports.transcription import TranscriptionStreamReceiver

        register("transcription", lambda ctx: TranscriptionStreamReceiver(), receiver=True)


class MqttTransportPlugin:
    """`mqtt`: sent messages published to an MQTT topic, message events received from one."""

    @hookimpl
    def register_transports(self, register: RegisterTransport) -> None:
        from lkbridge.mqtt.transport import MqttTransport

        register("mqtt", MqttTransport.from_context, sender=True, receiver=True)


chat = ChatPlugin()
transcription = TranscriptionPlugin()
mqtt_transport = MqttTransportPlugin()
