"""MqttBridge logic with an in-memory client and hub: what is published, and what is acted on."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass
from typing import Any

import pytest

from lkbridge.bridges.hub import HubEvent, HubEventKind, MessageEvent, SessionChange
from lkbridge.bridges.mqtt.bridge import MqttBridge
from lkbridge.bridges.mqtt.settings import client_settings
from lkbridge.bridges.mqtt.topics import Topics
from lkbridge.config.models import Config, HomeAssistantConfig, MqttConfig
from lkbridge.config.secrets import Secret
from lkbridge.messages import ReceivedMessage
from lkbridge.mqtt.client import (
    ConnectHook,
    ConnectInfo,
    IncomingMessage,
    MqttError,
    OutgoingMessage,
)
from lkbridge.mqtt.types import Priority, PublishQueue, QueuedMessage
from tests.support.fake_hub import MESSAGE, FakeHub, error_of


@dataclass(frozen=True)
class Pub:
    topic: str
    payload: bytes
    qos: int
    retain: bool
    properties: Any

    def json(self) -> Any:
        return json.loads(self.payload)


class FakeClient:
    """The MqttClient surface the bridge uses, recording publishes; messages are fed by hand."""

    def __init__(self) -> None:
        self.published: list[Pub] = []
        self.subscribed: list[str] = []
        self.hooks: list[ConnectHook] = []
        self.incoming: asyncio.Queue[IncomingMessage | None] = asyncio.Queue()
        self.final: list[OutgoingMessage] | None = None
        self.acked: list[IncomingMessage] = []
        self.outbox: PublishQueue | None = None

    async def __aenter__(self) -> FakeClient:
        return self

    def on_connect(self, hook: ConnectHook) -> Callable[[], None]:
        self.hooks.append(hook)
        return lambda: self.hooks.remove(hook)

    async def subscribe(self, topic_filter: str, qos: int = 1, timeout: float = 10.0) -> None:
        self.subscribed.append(topic_filter)

    def publish_nowait(
        self, topic: str, payload: bytes = b"", qos: int = 1, retain: bool = False,
        properties: Any = None, priority: Priority = Priority.NORMAL,
    ) -> bool:  # fmt: skip
        if self.final is not None:
            raise MqttError("the MQTT client is closed")
        if self.outbox is not None:  # a real bounded outbox, never drained (broker away)
            queued = QueuedMessage(topic, bytes(payload), qos, retain, properties)
            if not self.outbox.put(queued, priority):
                return False
        self.published.append(Pub(topic, bytes(payload), qos, retain, properties))
        return True

    async def messages(self) -> AsyncIterator[IncomingMessage]:
        while (item := await self.incoming.get()) is not None:
            yield item

    async def batches(self, limit: int = 256) -> AsyncIterator[list[IncomingMessage]]:
        async for item in self.messages():
            yield [item]

    def ack(self, message: IncomingMessage) -> None:
        self.acked.append(message)

    async def aclose(self, final: Iterable[OutgoingMessage] = (), timeout: float = 5.0) -> None:
        self.final = list(final)
        self.incoming.put_nowait(None)

    async def connect(self, dropped: int = 0) -> None:
        for hook in self.hooks:
            await hook(ConnectInfo(session_present=False, first=True, dropped=dropped))

    def deliver(self, topic: str, payload: bytes | str, **fields: Any) -> None:
        data = payload.encode() if isinstance(payload, str) else payload
        fields.setdefault("retain", False)
        self.incoming.put_nowait(IncomingMessage(topic, data, qos=1, **fields))

    def on(self, topic: str) -> list[Pub]:
        return [p for p in self.published if p.topic == topic]

    def clear(self) -> None:
        self.published.clear()


async def settle() -> None:
    for _ in range(10):
        await asyncio.sleep(0)


def config(**homeassistant: Any) -> Config:
    return Config(
        mqtt=MqttConfig(base_topic="lkb", client_id="test", max_payload_bytes=1024),
        homeassistant=HomeAssistantConfig(**homeassistant),
    )


@pytest.fixture
def hub() -> FakeHub:
    return FakeHub("kitchen", "office")


@pytest.fixture
def client() -> FakeClient:
    return FakeClient()


@pytest.fixture
async def bridge(hub: FakeHub, client: FakeClient) -> AsyncIterator[MqttBridge]:
    bridge = MqttBridge(hub, config(), client=client, ha_birth_delay=(0.0, 0.0))  # type: ignore[arg-type]
    async with bridge:
        yield bridge


def events(client: FakeClient) -> list[dict[str, Any]]:
    return [p.json() for p in client.on("lkb/bridge/event")]


# -- lifecycle ---------------------------------------------------------------------------------


async def test_subscribes_to_the_contract_topics(bridge: MqttBridge, client: FakeClient) -> None:
    assert client.subscribed == [
        "lkb/bridge/request/#", "lkb/+/send", "lkb/+/command", "homeassistant/status",
    ]  # fmt: skip


async def test_no_homeassistant_no_discovery(hub: FakeHub, client: FakeClient) -> None:
    async with MqttBridge(hub, config(enabled=False), client=client):  # type: ignore[arg-type]
        await client.connect()
    assert "homeassistant/status" not in client.subscribed
    assert not [p for p in client.published if p.topic.startswith("homeassistant/")]


async def test_connect_publishes_everything(
    bridge: MqttBridge, client: FakeClient, hub: FakeHub
) -> None:
    hub.sessions["office"]["error"] = {"kind": "connection", "message": "boom", "at": None}
    await client.connect()
    retained = {p.topic: p.payload for p in client.published if p.retain}
    assert retained["lkb/bridge/state"] == b'{"state":"online"}'
    info = json.loads(retained["lkb/bridge/info"])
    assert info["version"] == "test" and info["sessions"] == ["kitchen", "office"]
    assert info["state"]["history"]["persisted"] is True and info["last_reload_error"] is None
    assert retained["lkb/kitchen/availability"] == b"online"
    assert json.loads(retained["lkb/kitchen/state"])["connection_state"] == "disconnected"
    assert retained["lkb/kitchen/connection_state"] == b"disconnected"
    assert retained["lkb/kitchen/agent_state"] == b"disconnected"
    assert retained["lkb/kitchen/error"] == b""
    assert json.loads(retained["lkb/office/error"])["message"] == "boom"
    assert set(retained) >= {
        "homeassistant/device/lkb_bridge/config",
        "homeassistant/device/lkb_kitchen/config",
        "homeassistant/device/lkb_office/config",
    }
    assert all(p.qos == 1 for p in client.published)
    # The bridge's device comes before the session devices that name it as via_device.
    topics = [p.topic for p in client.published]
    assert topics.index("homeassistant/device/lkb_bridge/config") < topics.index(
        "homeassistant/device/lkb_kitchen/config"
    )


async def test_clean_stop_publishes_offline(hub: FakeHub, client: FakeClient) -> None:
    async with MqttBridge(hub, config(), client=client):  # type: ignore[arg-type]
        await client.connect()
    assert client.final is not None
    final = [(m.topic, m.payload, m.qos, m.retain) for m in client.final]
    assert final == [
        ("lkb/kitchen/availability", b"offline", 1, True),
        ("lkb/office/availability", b"offline", 1, True),
        ("lkb/bridge/state", b'{"state":"offline"}', 1, True),
    ]
    hub.change("kitchen", connection_state="connected")  # no longer observed: nothing raised
    assert hub.listeners == []


def test_client_settings_carry_the_will_and_the_secret() -> None:
    mqtt = MqttConfig(
        host="broker", port=8883, base_topic="x/y", client_id="me", username="u",
        password=Secret.inline("pw"), queue_limit=5,
    )  # fmt: skip
    settings = client_settings(mqtt, Topics("x/y"))
    assert settings.will is not None
    assert (settings.will.topic, settings.will.payload) == (
        "x/y/bridge/state",
        b'{"state":"offline"}',
    )
    assert settings.will.retain and settings.will.qos == 1
    assert (settings.username, settings.password, settings.queue_limit) == ("u", "pw", 5)
    assert "pw" not in repr(settings)


# -- hub events --------------------------------------------------------------------------------


async def test_state_events_publish_state_and_changed_scalars_only(
    bridge: MqttBridge, client: FakeClient, hub: FakeHub
) -> None:
    await client.connect()
    client.clear()
    agent = {"lifecycle": "connected", "state": "listening", "identity": "a", "failure": None}
    hub.change("kitchen", connection_state="connected", agent=agent)
    assert [p.topic for p in client.published] == [
        "lkb/kitchen/state", "lkb/kitchen/connection_state", "lkb/kitchen/agent_state",
    ]  # fmt: skip
    assert client.on("lkb/kitchen/agent_state")[0].payload == b"listening"
    client.clear()
    hub.change("kitchen", agent=agent | {"state": "thinking"})
    assert [(p.topic, p.payload) for p in client.published[1:]] == [
        ("lkb/kitchen/agent_state", b"thinking")
    ]
    client.clear()
    hub.change("kitchen", agent=agent | {"lifecycle": "failed", "failure": "timeout"})
    assert client.on("lkb/kitchen/agent_state")[0].payload == b"failed"
    assert all(p.retain for p in client.published)


async def test_message_events_are_published_as_is_not_retained(
    bridge: MqttBridge, client: FakeClient, hub: FakeHub
) -> None:
    await client.connect()
    data = MESSAGE | {"session": "kitchen", "text": "grüße"}
    message = ReceivedMessage.from_dict(data)
    hub.emit(HubEvent(HubEventKind.MESSAGE, "kitchen", MessageEvent("kitchen", message)))
    [pub] = client.on("lkb/kitchen/message")
    assert pub.json() == data and not pub.retain and pub.qos == 1
    assert "grüße".encode() in pub.payload


async def test_events_before_connect_are_published_too(client: FakeClient) -> None:
    hub = FakeHub()
    async with MqttBridge(hub, config(), client=client):  # type: ignore[arg-type]
        hub.sessions["late"] = {"session": "late", "connection_state": "connecting", "error": None}
        hub.emit(HubEvent(HubEventKind.STATE, "late", hub.snapshot("late")))
        assert client.on("lkb/late/availability")[0].payload == b"online"
        assert client.on("homeassistant/device/lkb_late/config")


async def test_error_events(bridge: MqttBridge, client: FakeClient, hub: FakeHub) -> None:
    await client.connect()
    client.clear()
    error = {"kind": "connection", "message": "Connection failed: refused", "at": "t"}
    hub.emit(HubEvent(HubEventKind.ERROR, "kitchen", error_of(error)))
    hub.emit(HubEvent(HubEventKind.ERROR, "kitchen", None))
    pubs = client.on("lkb/kitchen/error")
    assert [p.payload for p in pubs] == [json.dumps(error, separators=(",", ":")).encode(), b""]
    assert all(p.retain for p in pubs)


async def test_session_added_and_removed(
    bridge: MqttBridge, client: FakeClient, hub: FakeHub
) -> None:
    await client.connect()
    client.clear()
    await hub.add_session("garage", "assistant")
    assert client.on("lkb/garage/availability")[0].payload == b"online"
    assert client.on("homeassistant/device/lkb_garage/config")[0].retain
    assert {"event": "session_added", "session": "garage"} in events(client)
    assert client.on("lkb/bridge/info")
    client.clear()
    await hub.remove_session("garage")
    removal = client.on("homeassistant/device/lkb_garage/config")
    assert [(p.payload, p.retain) for p in removal] == [(b"", True)]
    for leaf in ("state", "connection_state", "agent_state", "error", "availability"):
        assert [p.payload for p in client.on(f"lkb/garage/{leaf}")] == [b""], leaf
    assert {"event": "session_removed", "session": "garage"} in events(client)


async def test_a_replaced_session_keeps_its_device(
    bridge: MqttBridge, client: FakeClient, hub: FakeHub
) -> None:
    await client.connect()
    client.clear()
    replaced = SessionChange("kitchen", replaced=True)
    hub.emit(HubEvent(HubEventKind.SESSION_REMOVED, "kitchen", replaced))
    assert client.published == []
    hub.change("kitchen", connection_state="connecting")
    assert client.on("lkb/kitchen/connection_state")[0].payload == b"connecting"


async def test_bridge_events_and_dropped_report(
    bridge: MqttBridge, client: FakeClient, hub: FakeHub
) -> None:
    hub.report("plugin_failed", plugin="x", error="ImportError")
    await client.connect(dropped=3)
    assert events(client) == [
        {"event": "plugin_failed", "plugin": "x", "error": "ImportError"},
        {"event": "mqtt_messages_dropped", "dropped": 3},
    ]
    assert not any(p.retain for p in client.on("lkb/bridge/event"))


async def test_the_reserved_session_id_is_not_bridged(client: FakeClient) -> None:
    hub = FakeHub("bridge", "ok")
    async with MqttBridge(hub, config(), client=client):  # type: ignore[arg-type]
        await client.connect()
    assert not client.on("lkb/bridge/availability")
    assert client.on("lkb/ok/availability")


# -- incoming ----------------------------------------------------------------------------------


async def test_send_topic(bridge: MqttBridge, client: FakeClient, hub: FakeHub) -> None:
    client.deliver("lkb/kitchen/send", "hello")
    client.deliver("lkb/kitchen/send", '{"text": "again", "id": "k1"}')
    client.deliver("lkb/kitchen/send", '{"text": "again", "id": "k1"}')
    await settle()
    assert hub.calls == [("send", "kitchen", "hello", None), ("send", "kitchen", "again", "k1")]


@pytest.mark.parametrize(
    ("topic", "payload", "error"),
    [
        ("lkb/kitchen/send", b"\xff", "not valid UTF-8"),
        ("lkb/kitchen/send", b'{"text": 5}', "text: expected a string, got number"),
        ("lkb/kitchen/send", b"x" * 2000, "payload too large: 2000 bytes"),
        ("lkb/Kitchen/send", b"hi", "'Kitchen' is not a valid session id"),
        ("lkb/kitchen/command", b"reboot", "unknown command 'reboot'"),
        ("lkb/kitchen/command", b'{"command": []}', "command: expected a string, got array"),
    ],
)
async def test_bad_payloads_become_bridge_events(
    bridge: MqttBridge, client: FakeClient, hub: FakeHub, topic: str, payload: bytes, error: str
) -> None:
    client.deliver(topic, payload)
    await settle()
    [event] = events(client)
    assert event["event"] == "bad_payload" and event["topic"] == topic
    assert error in event["error"]
    assert hub.calls == []


@pytest.mark.parametrize("payload", [b"", b"   ", b'{"text": ""}', b'{"text": " ", "id": "k"}'])
async def test_empty_text_is_a_failed_send_of_that_session(
    bridge: MqttBridge, client: FakeClient, hub: FakeHub, payload: bytes
) -> None:
    """What HA's notify entity publishes for an empty message: a clear send_failed, not junk."""
    client.deliver("lkb/kitchen/send", payload)
    await settle()
    assert events(client) == [{
        "event": "send_failed", "topic": "lkb/kitchen/send", "session": "kitchen",
        "error": "nothing to send: the text is empty",
    }]  # fmt: skip
    assert hub.calls == []


async def test_last_reply_is_retained_for_final_agent_messages_only(
    bridge: MqttBridge, client: FakeClient, hub: FakeHub
) -> None:
    await client.connect()
    client.clear()
    base = {"timestamp": "2026-01-01T00:00:00.000+00:00", "session": "kitchen"}
    for kind, text, final in (
        ("user_input", "what time is it", True),
        ("agent_transcript", "It is", False),
        ("agent_transcript", "It is noon.", True),
        ("user_transcript", "thanks", True),
    ):
        data = {"id": text, "type": kind, "text": text, "final": final, "timestamp": base["timestamp"]}
        event = MessageEvent("kitchen", ReceivedMessage.from_dict(data))
        hub.emit(HubEvent(HubEventKind.MESSAGE, "kitchen", event))
    [reply] = client.on("lkb/kitchen/last_reply")
    assert reply.retain and json.loads(reply.payload)["text"] == "It is noon."
    assert len(client.on("lkb/kitchen/message")) == 4

    # Re-published from the history on every (re)connect, so a broker restart keeps it too.
    later = base | {"id": "x", "type": "user_input", "text": "later", "final": True}
    hub.histories["kitchen"] = [
        MessageEvent("kitchen", ReceivedMessage.from_dict(m))
        for m in (json.loads(reply.payload), later)
    ]
    client.clear()
    bridge.publish_all()
    assert json.loads(client.on("lkb/kitchen/last_reply")[0].payload)["text"] == "It is noon."

    await hub.remove_session("kitchen")
    assert client.on("lkb/kitchen/last_reply")[-1].payload == b""  # cleared with the session


async def test_hub_refusals_become_bridge_events(
    bridge: MqttBridge, client: FakeClient, hub: FakeHub
) -> None:
    client.deliver("lkb/nobody/send", "hi")
    client.deliver("lkb/nobody/command", "start")
    await settle()
    assert events(client) == [
        {"event": "send_failed", "topic": "lkb/nobody/send", "session": "nobody",
         "error": "unknown session 'nobody'"},
        {"event": "command_failed", "topic": "lkb/nobody/command", "session": "nobody",
         "error": "unknown session 'nobody'"},
    ]  # fmt: skip


async def test_commands(bridge: MqttBridge, client: FakeClient, hub: FakeHub) -> None:
    client.deliver("lkb/kitchen/command", "start")
    client.deliver("lkb/kitchen/command", '{"command": "end"}')
    client.deliver("lkb/office/command", "dismiss_error")
    await settle()
    assert hub.calls == [("start", "kitchen"), ("end", "kitchen"), ("dismiss_error", "office")]


async def test_retained_commands_are_never_acted_on(
    bridge: MqttBridge, client: FakeClient, hub: FakeHub
) -> None:
    client.deliver("lkb/kitchen/command", "start", retain=True)
    client.deliver("lkb/kitchen/send", "hi", retain=True)
    client.deliver("lkb/bridge/request/session/start", '{"session": "kitchen"}', retain=True)
    await settle()
    assert hub.calls == []
    assert [e["topic"] for e in events(client) if e["event"] == "retained_ignored"] == [
        "lkb/kitchen/command", "lkb/kitchen/send", "lkb/bridge/request/session/start",
    ]  # fmt: skip
    assert not client.on("lkb/bridge/response/session/start")


async def test_expired_sends_are_not_delivered_late(
    bridge: MqttBridge, client: FakeClient, hub: FakeHub
) -> None:
    long_ago = time.monotonic() - 5
    client.deliver("lkb/kitchen/send", "stale", message_expiry_interval=2, received_at=long_ago)
    client.deliver("lkb/kitchen/send", "fresh", message_expiry_interval=60)
    await settle()
    assert hub.calls == [("send", "kitchen", "fresh", None)]
    assert {"event": "expired_ignored", "topic": "lkb/kitchen/send"} in events(client)


async def test_one_sessions_commands_run_in_order(
    bridge: MqttBridge, client: FakeClient, hub: FakeHub
) -> None:
    gate = asyncio.Event()
    real_start = hub.start_session

    async def slow_start(session_id: str) -> dict[str, Any]:
        await gate.wait()
        return await real_start(session_id)

    hub.start_session = slow_start  # type: ignore[method-assign]
    client.deliver("lkb/kitchen/command", "start")
    client.deliver("lkb/kitchen/send", "after the start")
    client.deliver("lkb/office/send", "not held up by another session")
    await settle()
    assert hub.calls == [("send", "office", "not held up by another session", None)]
    gate.set()
    await settle()
    assert hub.calls[1:] == [("start", "kitchen"), ("send", "kitchen", "after the start", None)]


async def test_requests_are_answered_on_the_response_topic_and_v5_response_topic(
    bridge: MqttBridge, client: FakeClient, hub: FakeHub
) -> None:
    client.deliver(
        "lkb/bridge/request/session/start",
        '{"session": "kitchen", "transaction": "t1"}',
        response_topic="lkb/replies/me",
        correlation_data=b"\x01\x02",
    )
    client.deliver("lkb/bridge/request/health_check", "")
    await settle()
    [response] = client.on("lkb/bridge/response/session/start")
    assert response.json()["status"] == "ok" and response.json()["transaction"] == "t1"
    [direct] = client.on("lkb/replies/me")
    assert direct.payload == response.payload
    assert direct.properties == {"correlation_data": b"\x01\x02"}
    assert client.on("lkb/bridge/response/health_check")[0].json() == {
        "status": "ok",
        "data": hub.health().to_json(),
    }


async def test_a_bad_response_topic_does_not_break_anything(
    hub: FakeHub, client: FakeClient
) -> None:
    def refuse_wildcards(topic: str, *args: Any, **kwargs: Any) -> bool:
        if "#" in topic:
            raise MqttError("invalid MQTT topic")
        return FakeClient.publish_nowait(client, topic, *args, **kwargs)

    client.publish_nowait = refuse_wildcards  # type: ignore[method-assign]
    async with MqttBridge(hub, config(), client=client):  # type: ignore[arg-type]
        client.deliver("lkb/bridge/request/health_check", "{}", response_topic="x/#")
        await settle()
        assert client.on("lkb/bridge/response/health_check")


async def test_expired_requests_are_refused(
    bridge: MqttBridge, client: FakeClient, hub: FakeHub
) -> None:
    client.deliver(
        "lkb/bridge/request/session/start",
        '{"session": "kitchen"}',
        message_expiry_interval=1,
        received_at=time.monotonic() - 3,
    )
    await settle()
    assert client.on("lkb/bridge/response/session/start")[0].json()["status"] == "error"
    assert hub.calls == []


async def test_homeassistant_birth_republishes_once(
    bridge: MqttBridge, client: FakeClient, hub: FakeHub
) -> None:
    await client.connect()
    client.clear()
    client.deliver("homeassistant/status", "offline")
    client.deliver("homeassistant/status", "online", retain=True)
    await settle()
    assert client.published == []
    client.deliver("homeassistant/status", "online")
    client.deliver("homeassistant/status", "online")
    await settle()
    assert len(client.on("homeassistant/device/lkb_kitchen/config")) == 1
    assert len(client.on("lkb/bridge/info")) == 1
    assert client.on("lkb/kitchen/state")


def test_the_bridge_is_registered_as_mqtt_through_the_plugin_hook() -> None:
    from lkbridge.bridges.mqtt import plugin
    from lkbridge.plugins.host import PluginHost

    host = PluginHost()
    assert host.register(plugin, "mqtt_bridge")
    assert host.bridges["mqtt"].factory is MqttBridge
