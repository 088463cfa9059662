"""The embedded broker against real paho clients (MQTT 3.1.1 and 5) on 127.0.0.1 sockets."""

from __future__ import annotations

import asyncio
import socket
import struct
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

from devstack.broker import EmbeddedBroker, topic_matches, valid_filter
from lkbridge.mqtt.client import MqttClient, MqttSettings

V311, V5 = mqtt.MQTTv311, mqtt.MQTTv5
BOTH = pytest.mark.parametrize("protocol", [V311, V5], ids=["v3.1.1", "v5"])
pytestmark = pytest.mark.timeout(30)


async def eventually(check: Callable[[], bool], timeout: float = 5.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not met within {timeout} s")
        await asyncio.sleep(0.01)


class Paho:
    """A threaded paho client that records what it receives."""

    def __init__(self, port: int, protocol: int = V5, client_id: str | None = None,
                 will: tuple[str, bytes] | None = None, keepalive: int = 30) -> None:
        self.messages: list[mqtt.MQTTMessage] = []
        self.connected = False
        self.disconnected = False
        self.client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2, client_id=client_id or f"t-{uuid.uuid4().hex[:8]}",
            protocol=protocol,
        )
        self.client.on_connect = lambda *a: setattr(self, "connected", True)
        self.client.on_disconnect = lambda *a: setattr(self, "disconnected", True)
        self.client.on_message = lambda _c, _u, msg: self.messages.append(msg)
        if will is not None:
            self.client.will_set(will[0], will[1], qos=1, retain=False)
        self.client.connect("127.0.0.1", port, keepalive=keepalive)
        self.client.loop_start()

    async def ready(self) -> Paho:
        await eventually(lambda: self.connected, what="connected")
        return self

    async def subscribe(self, topic_filter: str, qos: int = 1, **options: Any) -> None:
        done: list[Any] = []
        self.client.on_subscribe = lambda _c, _u, mid, codes, _p: done.append(codes)
        if options:
            self.client.subscribe(topic_filter, options=SubscribeOptions(qos=qos, **options))
        else:
            self.client.subscribe(topic_filter, qos)
        await eventually(lambda: bool(done), what=f"SUBACK for {topic_filter}")
        self.granted = done[0]

    async def publish(self, topic: str, payload: bytes | str, qos: int = 1, retain: bool = False,
                      properties: Properties | None = None) -> None:
        info = self.client.publish(topic, payload, qos=qos, retain=retain, properties=properties)
        await eventually(info.is_published, what=f"publish acknowledged on {topic}")

    def topics(self) -> list[str]:
        return [m.topic for m in self.messages]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


async def raw_exchange(port: int, data: bytes) -> bytes:
    """Send raw bytes, half-close, and return everything the broker answers before closing."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        writer.write_eof()
        return await asyncio.wait_for(reader.read(), 5)
    finally:
        writer.close()


def granted(client: Paho) -> list[int]:
    return [int(getattr(code, "value", code)) for code in client.granted]


@pytest.fixture
async def broker() -> AsyncIterator[EmbeddedBroker]:
    async with EmbeddedBroker() as running:
        yield running


@pytest.fixture
def clients() -> Any:
    made: list[Paho] = []

    async def make(*args: Any, **kwargs: Any) -> Paho:
        client = Paho(*args, **kwargs)
        made.append(client)
        return await client.ready()

    yield make
    for client in made:
        client.close()


@pytest.mark.parametrize(
    ("topic_filter", "topic", "expected"),
    [
        ("a/b", "a/b", True),
        ("a/+", "a/b", True),
        ("a/+", "a/b/c", False),
        ("a/#", "a", True),
        ("a/#", "a/b/c", True),
        ("#", "a/b", True),
        ("+/+", "a/b", True),
        ("+", "/a", False),
        ("+/a", "/a", True),
        ("#", "$SYS/x", False),
        ("+/x", "$SYS/x", False),
        ("$SYS/#", "$SYS/x", True),
        ("a/b", "a/c", False),
    ],
)
def test_topic_matching(topic_filter: str, topic: str, expected: bool) -> None:
    assert topic_matches(topic_filter, topic) is expected


def test_filter_validation() -> None:
    assert valid_filter("a/+/#") and valid_filter("#") and valid_filter("+")
    assert not valid_filter("a/#/b") and not valid_filter("a+") and not valid_filter("")
    assert not valid_filter("a/b#")


def test_refuses_anything_but_loopback() -> None:
    with pytest.raises(ValueError, match="loopback"):
        EmbeddedBroker(host="0.0.0.0")


@BOTH
async def test_publish_subscribe_with_wildcards_qos0_and_qos1(
    broker: EmbeddedBroker, clients: Any, protocol: int
) -> None:
    sub = await clients(broker.port, protocol)
    pub = await clients(broker.port, protocol)
    await sub.subscribe("home/+/temp", qos=1)
    assert granted(sub) == [1]
    await sub.subscribe("office/#", qos=0)
    assert granted(sub) == [0]
    await pub.publish("home/kitchen/temp", "21", qos=1)
    await pub.publish("home/kitchen/humidity", "40", qos=1)
    await pub.publish("office/a/b", "x", qos=1)
    await pub.publish("office", "parent", qos=0)
    await eventually(lambda: len(sub.messages) == 3, what="three matching messages")
    assert sub.topics() == ["home/kitchen/temp", "office/a/b", "office"]
    first = sub.messages[0]
    assert first.payload == b"21" and first.qos == 1 and not first.retain
    assert sub.messages[1].qos == 0, "delivered at the lower of publish and granted QoS"


@BOTH
async def test_retained_messages_replay_and_empty_payload_clears(
    broker: EmbeddedBroker, clients: Any, protocol: int
) -> None:
    pub = await clients(broker.port, protocol)
    await pub.publish("dev/1/state", "on", retain=True)
    await pub.publish("dev/2/state", "off", retain=True)
    live = await clients(broker.port, protocol)
    await live.subscribe("dev/#")
    await eventually(lambda: len(live.messages) == 2, what="retained replay")
    assert all(m.retain for m in live.messages)
    assert sorted(m.payload for m in live.messages) == [b"off", b"on"]
    await pub.publish("dev/1/state", "dim", retain=True)
    await eventually(lambda: len(live.messages) == 3, what="live update")
    assert not live.messages[2].retain, "live deliveries carry retain=0"
    await pub.publish("dev/2/state", b"", retain=True)
    await eventually(lambda: len(live.messages) == 4, what="the clearing message")
    late = await clients(broker.port, protocol)
    await late.subscribe("dev/#")
    await eventually(lambda: len(late.messages) == 1, what="retained replay after clearing")
    await asyncio.sleep(0.1)
    assert [(m.topic, m.payload) for m in late.messages] == [("dev/1/state", b"dim")]


@BOTH
async def test_will_is_published_on_unclean_disconnect_only(
    broker: EmbeddedBroker, clients: Any, protocol: int
) -> None:
    watcher = await clients(broker.port, protocol)
    await watcher.subscribe("wills/#")
    clean = await clients(broker.port, protocol, will=("wills/clean", b"gone"))
    clean.close()
    await eventually(lambda: "t-clean" not in broker.clients and len(broker.clients) == 1,
                     what="clean client gone")
    crashing = Paho(broker.port, protocol, will=("wills/crashed", b"offline"))
    await crashing.ready()
    crashing.client.loop_stop()
    sock = crashing.client.socket()
    assert isinstance(sock, socket.socket)
    sock.shutdown(socket.SHUT_RDWR)
    sock.close()
    await eventually(lambda: len(watcher.messages) == 1, what="the will")
    assert watcher.messages[0].topic == "wills/crashed" and watcher.messages[0].payload == b"offline"
    await asyncio.sleep(0.1)
    assert watcher.topics() == ["wills/crashed"]


async def test_keepalive_timeout_publishes_the_will(broker: EmbeddedBroker, clients: Any) -> None:
    watcher = await clients(broker.port, V311)
    await watcher.subscribe("silent/will")
    # A raw 3.1.1 CONNECT with keepalive 1 s and a will, then silence.
    def utf8(s: str) -> bytes:
        return struct.pack(">H", len(s)) + s.encode()

    body = utf8("MQTT") + bytes([4, 0x04 | 0x08]) + struct.pack(">H", 1)
    body += utf8("silent") + utf8("silent/will") + utf8("timed out")
    reader, writer = await asyncio.open_connection("127.0.0.1", broker.port)
    try:
        writer.write(bytes([0x10, len(body)]) + body)
        assert await asyncio.wait_for(reader.readexactly(4), 5) == b"\x20\x02\x00\x00"
        await eventually(lambda: len(watcher.messages) == 1, timeout=4, what="will after timeout")
        assert watcher.messages[0].payload == b"timed out" and watcher.messages[0].qos == 1
        assert await asyncio.wait_for(reader.read(), 5) == b"", "the broker closed the connection"
    finally:
        writer.close()


@BOTH
async def test_pings_keep_a_quiet_client_connected(
    broker: EmbeddedBroker, clients: Any, protocol: int
) -> None:
    quiet = await clients(broker.port, protocol, keepalive=1)
    await asyncio.sleep(2.5)
    assert not quiet.disconnected and quiet.client.is_connected()


@BOTH
async def test_unsubscribe_stops_delivery(broker: EmbeddedBroker, clients: Any, protocol: int) -> None:
    sub = await clients(broker.port, protocol)
    pub = await clients(broker.port, protocol)
    await sub.subscribe("u/+")
    await pub.publish("u/1", "a")
    await eventually(lambda: len(sub.messages) == 1, what="first message")
    done: list[int] = []
    sub.client.on_unsubscribe = lambda _c, _u, mid, *_: done.append(mid)
    sub.client.unsubscribe("u/+")
    await eventually(lambda: bool(done), what="UNSUBACK")
    await pub.publish("u/2", "b")
    await asyncio.sleep(0.2)
    assert sub.topics() == ["u/1"]


async def test_v5_properties_are_forwarded_and_expiry_is_reduced(
    broker: EmbeddedBroker, clients: Any
) -> None:
    sub = await clients(broker.port, V5)
    old = await clients(broker.port, V311)
    pub = await clients(broker.port, V5)
    await sub.subscribe("req/#")
    await old.subscribe("req/#")
    props = Properties(PacketTypes.PUBLISH)
    props.ResponseTopic = "resp/here"
    props.CorrelationData = b"\x01\x02"
    props.MessageExpiryInterval = 60
    props.UserProperty = [("k", "v")]
    props.ContentType = "application/json"
    await pub.publish("req/x", b"{}", properties=props)
    await eventually(lambda: sub.messages and old.messages, what="both deliveries")
    got = sub.messages[0].properties
    assert got.ResponseTopic == "resp/here" and got.CorrelationData == b"\x01\x02"
    assert got.MessageExpiryInterval == 60 and got.UserProperty == [("k", "v")]
    assert got.ContentType == "application/json"
    assert old.messages[0].payload == b"{}", "a 3.1.1 subscriber gets the message without them"
    # A retained message's expiry counts down while it is stored, and it vanishes when spent.
    short = Properties(PacketTypes.PUBLISH)
    short.MessageExpiryInterval = 2
    await pub.publish("keep/soon", b"x", retain=True, properties=short)
    await asyncio.sleep(1.1)
    late = await clients(broker.port, V5)
    await late.subscribe("keep/#")
    await eventually(lambda: bool(late.messages), what="retained replay")
    assert late.messages[0].properties.MessageExpiryInterval == 1
    await asyncio.sleep(1.2)
    later = await clients(broker.port, V5)
    await later.subscribe("keep/#")
    await asyncio.sleep(0.2)
    assert later.messages == []


async def test_v5_no_local_and_retain_handling(broker: EmbeddedBroker, clients: Any) -> None:
    pub = await clients(broker.port, V5)
    await pub.publish("r/t", "kept", retain=True)
    me = await clients(broker.port, V5)
    await me.subscribe("r/#", noLocal=True, retainHandling=2)
    await me.publish("r/mine", "x")
    await pub.publish("r/other", "y")
    await eventually(lambda: bool(me.messages), what="the other client's message")
    await asyncio.sleep(0.1)
    assert me.topics() == ["r/other"], "no retained replay (handling 2) and no own messages"


@BOTH
async def test_qos2_publish_is_accepted_and_delivered_once(
    broker: EmbeddedBroker, clients: Any, protocol: int
) -> None:
    sub = await clients(broker.port, protocol)
    pub = await clients(broker.port, protocol)
    await sub.subscribe("q2", qos=2)
    assert granted(sub) == [1], "QoS 2 subscriptions are granted QoS 1"
    await pub.publish("q2", "exactly", qos=2)
    await eventually(lambda: bool(sub.messages), what="QoS 2 delivery")
    await asyncio.sleep(0.1)
    assert [m.payload for m in sub.messages] == [b"exactly"]
    assert sub.messages[0].qos == 1, "subscribers get at most QoS 1"


async def test_client_takeover_closes_the_old_connection(broker: EmbeddedBroker, clients: Any) -> None:
    first = await clients(broker.port, V311, client_id="same")
    first.client.reconnect_delay_set(30, 60)  # so it does not come back and take over in turn
    await clients(broker.port, V311, client_id="same")
    await eventually(lambda: first.disconnected, what="the old connection closed")
    assert len(broker.clients) == 1


async def test_garbage_closes_that_connection_only(broker: EmbeddedBroker, clients: Any) -> None:
    sub = await clients(broker.port, V5)
    await sub.subscribe("still/works")
    for garbage in (b"\x30\x02\x00", b"\xff\xff\xff\xff\xff", b"\x10\x03\x00\x01Z"):
        assert await raw_exchange(broker.port, garbage) == b""
    bad_version = b"\x10\x0c\x00\x04MQTT\x09\x02\x00\x1e\x00\x00"
    assert await raw_exchange(broker.port, bad_version) == b"\x20\x02\x00\x01", "bad version"
    pub = await clients(broker.port, V311)
    await pub.publish("still/works", "yes")
    await eventually(lambda: bool(sub.messages), what="delivery after garbage")


async def test_the_daemons_own_mqtt_client_works_against_it(broker: EmbeddedBroker) -> None:
    """lkbridge's MqttClient (v5, persistent session, will) talks to the embedded broker."""
    settings = MqttSettings(host="127.0.0.1", port=broker.port, client_id="lkbridge-x")
    probe = Paho(broker.port, V311)
    await probe.ready()
    try:
        async with MqttClient(settings) as client:
            await client.wait_connected(5)
            await client.subscribe("cmd/#")
            await probe.subscribe("out/#")
            await client.publish("out/state", '{"state":"online"}', retain=True)
            await client.wait_published(5)
            await probe.publish("cmd/go", "now")
            incoming = client.messages()
            msg = await asyncio.wait_for(anext(incoming), 5)
            assert (msg.topic, msg.payload, msg.retain) == ("cmd/go", b"now", False)
            await eventually(lambda: bool(probe.messages), what="the client's publish")
    finally:
        probe.close()
    assert broker.retained["out/state"].payload == b'{"state":"online"}'
