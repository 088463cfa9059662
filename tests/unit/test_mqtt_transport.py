"""The mqtt transport without a broker: wire format, payload checks, options, an in-memory service."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime
from typing import Any

import pytest

from lkbridge.config.secrets import Secret
from lkbridge.errors import TransportError
from lkbridge.hookspecs import TransportContext
from lkbridge.messages import MessageType, ReceivedMessage, SentMessage
from lkbridge.mqtt.transport import (
    InvalidPayloadError,
    MessageHandler,
    MqttService,
    MqttTransport,
    MqttTransportOptions,
    Unsubscribe,
    encode_sent_message,
    parse_message_event,
    topic_matches,
)
from lkbridge.plugins.host import PluginHost, load_plugins
from lkbridge.transports.base import MessageReceiver, MessageSender, RoomBinding

GOOD = {
    "id": "SG_abc",
    "timestamp": "2025-01-02T03:04:05.678Z",
    "type": "agent_transcript",
    "text": "hello from the other device",
    "final": True,
}


class MemoryMqtt:
    """An in-memory MqttService: records publishes, delivers what a test injects."""

    def __init__(self, base_topic: str | None = None) -> None:
        self.published: list[tuple[str, bytes, int, bool]] = []
        self.handlers: dict[str, MessageHandler] = {}
        self.unsubscribed: list[str] = []
        if base_topic is not None:
            self.base_topic = base_topic

    def publish_nowait(
        self, topic: str, payload: bytes, qos: int = 1, retain: bool = False
    ) -> None:
        self.published.append((topic, payload, qos, retain))

    async def subscribe(self, topic_filter: str, handler: MessageHandler) -> Unsubscribe:
        self.handlers[topic_filter] = handler

        async def unsubscribe() -> None:
            self.unsubscribed.append(topic_filter)
            del self.handlers[topic_filter]

        return unsubscribe

    def deliver(self, topic: str, payload: bytes | dict[str, Any]) -> None:
        data = json.dumps(payload).encode() if isinstance(payload, dict) else payload
        for topic_filter, handler in list(self.handlers.items()):
            if topic_matches(topic_filter, topic):
                handler(topic, data)


def _transport(service: MqttService, **options: Any) -> MqttTransport:
    ctx = TransportContext(session_id="kitchen", options=options, services={"mqtt": service})
    return MqttTransport.from_context(ctx)


# -- wire format -------------------------------------------------------------------------------


def test_sent_message_is_published_as_a_user_input_event_with_the_session() -> None:
    sent = SentMessage(
        text="turn on the lights ✓",
        id="m-1",
        timestamp=datetime(2025, 5, 6, 7, 8, 9, 123000, tzinfo=UTC),
    )
    event = json.loads(encode_sent_message(sent, "kitchen"))
    assert event == {
        "id": "m-1",
        "timestamp": "2025-05-06T07:08:09.123+00:00",
        "type": "user_input",
        "text": "turn on the lights ✓",
        "final": True,
        "reply_to": None,
        "session": "kitchen",
    }
    # and it is itself a valid message event for a receiver on the other side
    assert parse_message_event(encode_sent_message(sent, "kitchen")) == sent.as_received()


def test_a_message_event_is_parsed_with_iso_or_millisecond_timestamps() -> None:
    message = parse_message_event(json.dumps({**GOOD, "session": "other"}).encode())
    assert message == ReceivedMessage(
        id="SG_abc",
        timestamp=datetime(2025, 1, 2, 3, 4, 5, 678000, tzinfo=UTC),
        type=MessageType.AGENT_TRANSCRIPT,
        text="hello from the other device",
        final=True,
    )
    ms = parse_message_event(json.dumps({**GOOD, "timestamp": 1735787045678}).encode())
    assert ms.timestamp == message.timestamp
    no_final = {k: v for k, v in GOOD.items() if k != "final"}
    assert parse_message_event(json.dumps(no_final).encode()).final is False


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"\xff\xfe not utf-8", "not UTF-8 (bad byte at offset 0)"),
        (b"hello agent", "not JSON"),
        (b"[1, 2]", "expected a JSON object, got an array"),
        (b'"text"', "expected a JSON object, got a string"),
        (b"null", "expected a JSON object, got null"),
        (json.dumps({**GOOD, "id": ""}).encode(), "id: must not be empty"),
        (
            json.dumps({k: v for k, v in GOOD.items() if k != "id"}).encode(),
            "id: expected a string",
        ),
        (json.dumps({**GOOD, "type": "chat"}).encode(), "type: must be one of"),
        (json.dumps({**GOOD, "text": 5}).encode(), "text: expected a string, got int"),
        (json.dumps({**GOOD, "final": "yes"}).encode(), "final: expected true or false"),
        (
            json.dumps({k: v for k, v in GOOD.items() if k != "timestamp"}).encode(),
            "timestamp: missing",
        ),
        (json.dumps({**GOOD, "timestamp": "yesterday"}).encode(), "timestamp: not an ISO 8601"),
    ],
)
def test_invalid_payloads_are_refused_with_the_reason(payload: bytes, reason: str) -> None:
    with pytest.raises(InvalidPayloadError) as info:
        parse_message_event(payload)
    assert reason in str(info.value)
    assert isinstance(info.value, TransportError)


@pytest.mark.parametrize(
    ("topic_filter", "topic", "matches"),
    [
        ("a/b", "a/b", True),
        ("a/b", "a/b/c", False),
        ("a/+", "a/b", True),
        ("a/+", "a/b/c", False),
        ("a/#", "a", True),
        ("a/#", "a/b/c", True),
        ("#", "$SYS/x", False),
        ("+/x", "$SYS/x", False),
        ("a/+/c", "a//c", True),
    ],
)
def test_topic_matching(topic_filter: str, topic: str, matches: bool) -> None:
    assert topic_matches(topic_filter, topic) is matches


# -- options -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "problem"),
    [
        ({"publish_topc": "x"}, "unknown option 'publish_topc'"),
        ({"publish_topic": "a/+/b"}, "publish_topic: invalid MQTT topic"),
        ({"subscribe_topic": "a/#/b"}, "subscribe_topic: invalid MQTT topic filter"),
        ({"subscribe_topic": ""}, "subscribe_topic: expected a non-empty string"),
        ({"qos": 3}, "qos: must be 0, 1 or 2"),
        ({"qos": True}, "qos: must be 0, 1 or 2"),
        ({"loopback": "no"}, "loopback: expected true or false"),
        ({"port": 0}, "port: expected a number from 1 to 65535"),
        ({"password": 5}, "password: expected a string"),
    ],
)
def test_bad_options_are_refused_naming_the_key(options: dict[str, Any], problem: str) -> None:
    with pytest.raises(ValueError, match="^" + problem.replace("+", r"\+")):
        MqttTransportOptions.from_mapping(options)


def test_options_and_secret_passwords(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LKB_TEST_MQTT_PW", "s3cret")
    options = MqttTransportOptions.from_mapping(
        {
            "subscribe_topic": "home/+/transcript",
            "qos": 0,
            "loopback": False,
            "host": "broker",
            "port": 1884,
            "username": "u",
            "password": Secret.env("LKB_TEST_MQTT_PW"),
        }
    )
    assert (options.subscribe_topic, options.qos, options.loopback) == (
        "home/+/transcript",
        0,
        False,
    )
    assert (options.host, options.port, options.username, options.password) == (
        "broker",
        1884,
        "u",
        "s3cret",
    )
    assert "s3cret" not in repr(options)


def test_default_publish_topic_follows_the_session_and_the_services_base_topic() -> None:
    assert _transport(MemoryMqtt()).publish_topic == "lkbridge/kitchen/outbound"
    assert _transport(MemoryMqtt(base_topic="home")).publish_topic == "home/kitchen/outbound"
    assert _transport(MemoryMqtt(), publish_topic="x/y").publish_topic == "x/y"


# -- behaviour with an in-memory service ---------------------------------------------------------


async def test_the_builtin_plugin_registers_mqtt_as_sender_and_receiver() -> None:
    host = load_plugins()
    spec = host.transports["mqtt"]
    assert (spec.can_send, spec.can_receive, spec.plugin) == (True, True, "mqtt")
    made = spec.factory(
        TransportContext("kitchen", {"subscribe_topic": "t"}, {"mqtt": MemoryMqtt()})
    )
    assert isinstance(made, MqttTransport)
    assert isinstance(made, MessageSender) and isinstance(made, MessageReceiver)
    await made.aclose()
    with pytest.raises(TypeError, match="not an MqttService"):
        spec.factory(TransportContext("kitchen", {}, {"mqtt": object()}))


async def test_send_publishes_and_loops_back_only_while_consumed() -> None:
    service = MemoryMqtt()
    transport = _transport(service, qos=0)
    sent = SentMessage(text="hi")
    await transport.send(sent)  # not consumed as a receiver: nothing piles up
    assert service.published == [
        ("lkbridge/kitchen/outbound", encode_sent_message(sent, "kitchen"), 0, False)
    ]
    received: list[ReceivedMessage] = []

    async def consume() -> None:
        async for message in transport.messages():
            received.append(message)

    consumer = asyncio.ensure_future(consume())
    await asyncio.sleep(0)
    second = SentMessage(text="again")
    # send() returns once the consumer has the loopback message (no flush timeout involved)
    await asyncio.wait_for(transport.send(second), 1)
    assert received == [second.as_received()]
    await transport.aclose()
    await asyncio.wait_for(consumer, 1)
    with pytest.raises(TransportError, match="closed"):
        await transport.send(SentMessage(text="late"))


async def test_a_session_without_an_id_needs_a_publish_topic() -> None:
    transport = MqttTransport(service=MemoryMqtt())
    with pytest.raises(TransportError, match="publish_topic"):
        await transport.send(SentMessage(text="hi"))


async def test_received_events_become_messages_and_invalid_ones_are_reported_and_dropped() -> None:
    service = MemoryMqtt()
    transport = _transport(service, subscribe_topic="home/+/transcript")
    errors: list[BaseException] = []
    stream = transport.messages()
    first = asyncio.ensure_future(anext(stream))
    await transport.wait_subscribed(1)
    assert list(service.handlers) == ["home/+/transcript"]

    service.deliver("home/hall/transcript", b"not json")  # unbound: logged only
    service.deliver("home/hall/transcript", b"")  # a cleared retained message: ignored
    service.deliver("home/hall/transcript", GOOD)
    assert await asyncio.wait_for(first, 1) == parse_message_event(json.dumps(GOOD).encode())

    await transport.bind(RoomBinding(room=None, report_error=errors.append))  # type: ignore[arg-type]
    service.deliver("home/hall/transcript", {**GOOD, "type": "shout"})
    service.deliver("home/hall/transcript", b"\xc3\x28")
    service.deliver("home/hall/transcript", {**GOOD, "id": "next", "text": "still here"})
    after = await asyncio.wait_for(anext(stream), 1)
    assert (after.id, after.text) == ("next", "still here")
    assert [type(e) for e in errors] == [InvalidPayloadError, InvalidPayloadError]
    assert str(errors[0]).startswith("invalid message event on home/hall/transcript: type:")
    assert "not UTF-8" in str(errors[1])
    assert transport.dropped_count == 3

    await transport.aclose()
    assert service.unsubscribed == ["home/+/transcript"] and not service.handlers
    with pytest.raises(StopAsyncIteration):
        await asyncio.wait_for(anext(stream), 1)


async def test_a_failing_subscription_ends_the_receiver_with_a_transport_error() -> None:
    class Refusing(MemoryMqtt):
        async def subscribe(self, topic_filter: str, handler: MessageHandler) -> Unsubscribe:
            raise RuntimeError("broker refused")

    transport = _transport(Refusing(), subscribe_topic="t")
    with pytest.raises(TransportError, match="subscribing to t failed: broker refused"):
        await anext(transport.messages())
    await transport.aclose()


def test_plugin_host_lists_mqtt_among_the_builtins() -> None:
    host = PluginHost()
    host.load_entry_points()
    assert host.plugins["mqtt"].registers == ["transport mqtt (sender+receiver)"]


async def test_closing_while_the_subscription_is_on_its_way_leaves_no_subscription() -> None:
    release = asyncio.Event()

    class Slow(MemoryMqtt):
        async def subscribe(self, topic_filter: str, handler: MessageHandler) -> Unsubscribe:
            await release.wait()
            return await super().subscribe(topic_filter, handler)

    service = Slow()
    transport = _transport(service, subscribe_topic="t")
    consumer = asyncio.ensure_future(anext(transport.messages(), None))
    await asyncio.sleep(0)
    await transport.aclose()
    release.set()
    assert await asyncio.wait_for(consumer, 1) is None
    assert service.unsubscribed == ["t"] and not service.handlers
