"""The mqtt transport on the real server and broker: one history from LiveKit and MQTT, bad payloads."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from devstack.livekit_server import LiveKitServer
from devstack.mosquitto import Mosquitto
from lkbridge.config.files import session_from_table
from lkbridge.daemon.assembly import build_session
from lkbridge.hookspecs import TransportContext
from lkbridge.messages import MessageType, utcnow
from lkbridge.mqtt.transport import MqttTransport
from lkbridge.plugins.host import load_plugins
from lkbridge.session.core import Session, SessionErrorKind
from tests.support.mqtt_probe import MqttProbe

pytestmark = pytest.mark.e2e


async def wait_until(predicate: Callable[[], Any], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        await asyncio.sleep(0.02)


@pytest.fixture
def probe(mqtt_broker: Mosquitto) -> Iterator[MqttProbe]:
    client = MqttProbe(mqtt_broker.host, mqtt_broker.port, "lkbt/#", "lkbridge/+/outbound")
    yield client
    client.close()


def _session(
    server: LiveKitServer, broker: Mosquitto, agent_name: str, session_id: str, **mqtt: Any
) -> tuple[Session, list[MqttTransport]]:
    """A Session built the way the daemon builds it: TOML table → SessionConfig → plugin host."""
    cfg = session_from_table(
        session_id,
        {
            "agent_name": agent_name,
            "token": {
                "source": "minted",
                "url": server.url,
                "api_key": server.api_key,
                "api_secret": server.api_secret,
            },
            "senders": ["chat", "mqtt"],
            "receivers": ["chat", "transcription", "mqtt"],
            "transports": {"mqtt": {"host": broker.host, "port": broker.port, **mqtt}},
        },
        allow_inline_secrets=True,
    )
    plugins = load_plugins()
    made: list[MqttTransport] = []
    spec = plugins.transports["mqtt"]

    def factory(ctx: TransportContext) -> Any:  # the registered factory, keeping what it made
        made.append(spec.factory(ctx))
        return made[-1]

    plugins.transports["mqtt"] = dataclasses.replace(spec, factory=factory)
    return build_session(cfg, plugins), made


def _event(msg_id: str, text: str, kind: str = "user_transcript", final: bool = True) -> bytes:
    return json.dumps(
        {
            "id": msg_id,
            "timestamp": utcnow().isoformat(),
            "type": kind,
            "text": text,
            "final": final,
        }
    ).encode()


async def test_chat_transcription_and_mqtt_merge_into_one_ordered_history(
    livekit_server: LiveKitServer,
    mqtt_broker: Mosquitto,
    scripted_agent: Callable[..., Any],
    probe: MqttProbe,
) -> None:
    agent = await scripted_agent()
    sid = f"mix{uuid.uuid4().hex[:6]}"
    inbound = f"lkbt/{sid}/hallway"
    session, made = _session(
        livekit_server, mqtt_broker, agent.agent_name, sid, subscribe_topic=inbound
    )
    (transport,) = made
    async with session:
        await session.start()
        assert session.error is None
        job = await agent.wait_for_job(timeout=15)
        await wait_until(lambda: session.agent.is_connected, 15, "the agent")
        await transport.wait_subscribed(10)

        # 1. LiveKit: the user's text (loopback from chat and mqtt, one id) and the agent's reply
        sent = await session.send_text("hello agent")
        assert sent is not None, session.error
        assert (
            session.messages[0].id == sent.id and session.messages[0].type is MessageType.USER_INPUT
        )
        assert (await job.chat.get()).text == "hello agent"

        def reply_done() -> bool:
            return any(m.text == "You said: hello agent" and m.final for m in session.messages)

        await wait_until(reply_done, 15, "the agent's final reply")

        # the same text went out on MQTT as a user_input message event of this session
        out = await probe.wait_for(f"lkbridge/{sid}/outbound", timeout=10)
        assert out.json() == {**sent.as_received().to_dict(), "session": sid}

        # 2. MQTT: a transcript from another device, published by a plain paho client
        probe.publish(inbound, _event("hall-1", "the door is open"))
        await wait_until(lambda: any(m.id == "hall-1" for m in session.messages), 10, "hall-1")

        # 3. LiveKit again: agent speech after it
        segment = await job.say("noted, closing it", chunk_size=5)
        await wait_until(
            lambda: any(m.id == segment and m.final for m in session.messages), 15, "the speech"
        )

        # 4. MQTT update of an existing id: updated in place, position kept
        probe.publish(inbound, _event("hall-1", "the door is closed now"))
        await wait_until(
            lambda: any(m.text == "the door is closed now" for m in session.messages), 10, "update"
        )

        history = session.get_message_history()
        assert [(m.type.value, m.text) for m in history] == [
            ("user_input", "hello agent"),
            ("agent_transcript", "You said: hello agent"),
            ("user_transcript", "the door is closed now"),
            ("agent_transcript", "noted, closing it"),
        ]
        assert history[0].id == sent.id and history[2].id == "hall-1" and history[3].id == segment
        assert session.error is None
    assert transport.closed


async def test_an_invalid_payload_is_a_receiver_error_and_the_session_keeps_working(
    livekit_server: LiveKitServer,
    mqtt_broker: Mosquitto,
    scripted_agent: Callable[..., Any],
    probe: MqttProbe,
) -> None:
    agent = await scripted_agent()
    sid = f"bad{uuid.uuid4().hex[:6]}"
    inbound = f"lkbt/{sid}/in"
    session, (transport,) = _session(
        livekit_server, mqtt_broker, agent.agent_name, sid, subscribe_topic=inbound
    )
    async with session:
        await session.start()
        job = await agent.wait_for_job(timeout=15)
        await wait_until(lambda: session.agent.is_connected, 15, "the agent")
        await transport.wait_subscribed(10)

        probe.publish(inbound, b"turn on the lights")  # plain text, not a message event
        await wait_until(lambda: session.error is not None, 10, "a session error")
        error = session.error
        assert error is not None and error.kind is SessionErrorKind.RECEIVER
        assert error.message.startswith("Message receiver failed: invalid message event on ")
        assert "not JSON" in error.message
        assert session.messages == []  # dropped
        session.dismiss_error()

        probe.publish(inbound, b"\xff\xfe\x00")
        probe.publish(inbound, json.dumps({"id": "x", "text": "no type"}).encode())
        await wait_until(lambda: transport.dropped_count == 3, 10, "all three dropped")
        assert session.error is not None and "type: expected a string" in session.error.message
        session.dismiss_error()

        # still receiving from MQTT, still talking to the agent
        probe.publish(inbound, _event("ok-1", "valid again", kind="agent_transcript"))
        await wait_until(lambda: any(m.id == "ok-1" for m in session.messages), 10, "ok-1")
        sent = await session.send_text("are you there?")
        assert sent is not None
        assert (await asyncio.wait_for(job.chat.get(), 10)).text == "are you there?"
        await wait_until(
            lambda: any(m.text == "You said: are you there?" and m.final for m in session.messages),
            15,
            "the reply",
        )
        assert [m.id for m in session.messages][:2] == ["ok-1", sent.id]
        assert session.error is None
