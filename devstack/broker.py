"""An embedded MQTT 3.1.1/5 broker on loopback, used by the demo only when Mosquitto is missing."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import itertools
import struct
import time
from dataclasses import dataclass, field

import structlog

from lkbridge.mqtt.topic import topic_matches, topic_problem

log = structlog.get_logger(__name__)

CONNECT, CONNACK, PUBLISH, PUBACK, PUBREC, PUBREL, PUBCOMP = 1, 2, 3, 4, 5, 6, 7
SUBSCRIBE, SUBACK, UNSUBSCRIBE, UNSUBACK, PINGREQ, PINGRESP, DISCONNECT = 8, 9, 10, 11, 12, 13, 14
MAX_PACKET = 16 * 1024 * 1024  # bytes of remaining length; more closes the connection
MAX_WRITE_BUFFER = 8 * 1024 * 1024  # a subscriber this far behind is disconnected
CONNECT_TIMEOUT = 10.0

# v5 property ids by how their values are encoded: fixed sizes, a variable byte integer ("v"),
# a length-prefixed string or binary ("s"), a string pair ("p").
_PROP_KINDS: dict[int, int | str] = {
    **dict.fromkeys((0x01, 0x17, 0x19, 0x24, 0x25, 0x28, 0x29, 0x2A), 1),
    **dict.fromkeys((0x13, 0x21, 0x22, 0x23), 2),
    **dict.fromkeys((0x02, 0x11, 0x18, 0x27), 4),
    0x0B: "v", 0x26: "p",
    **dict.fromkeys((0x03, 0x08, 0x09, 0x12, 0x15, 0x16, 0x1A, 0x1C, 0x1F), "s"),
}
MESSAGE_EXPIRY = 0x02
ASSIGNED_CLIENT_ID = 0x12
SHARED_SUBS_AVAILABLE = 0x2A
# What a publisher's properties carry on to subscribers: payload format, expiry, content type,
# response topic, correlation data, user properties (never topic aliases or subscription ids).
FORWARDED_PROPS = frozenset({0x01, 0x02, 0x03, 0x08, 0x09, 0x26})

Props = list[tuple[int, bytes]]  # (property id, the value exactly as encoded on the wire)


class ProtocolError(Exception):
    """The peer broke the MQTT protocol; its connection is closed (its will is published)."""


class Reader:
    """A cursor over one packet's bytes."""

    def __init__(self, data: bytes) -> None:
        self.data, self.pos = data, 0

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise ProtocolError("packet too short")
        chunk = self.data[self.pos : self.pos + n]
        self.pos += n
        return chunk

    def byte(self) -> int:
        return self.take(1)[0]

    def u16(self) -> int:
        return int(struct.unpack(">H", self.take(2))[0])

    def varint(self) -> int:
        value = 0
        for shift in range(0, 28, 7):
            b = self.byte()
            value |= (b & 0x7F) << shift
            if not b & 0x80:
                return value
        raise ProtocolError("malformed variable byte integer")

    def binary(self) -> bytes:
        return self.take(self.u16())

    def string(self) -> str:
        try:
            return self.binary().decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ProtocolError("a string is not valid UTF-8") from exc

    def rest(self) -> bytes:
        chunk, self.pos = self.data[self.pos :], len(self.data)
        return chunk

    @property
    def at_end(self) -> bool:
        return self.pos >= len(self.data)

    def properties(self) -> Props:
        end = self.varint() + self.pos
        props: Props = []
        while self.pos < end:
            pid, start = self.varint(), self.pos
            kind = _PROP_KINDS.get(pid)
            if kind is None:
                raise ProtocolError(f"unknown property id {pid:#x}")
            if isinstance(kind, int):
                self.take(kind)
            elif kind == "v":
                self.varint()
            else:
                self.binary()
                if kind == "p":  # a user property: name and value
                    self.binary()
            props.append((pid, self.data[start : self.pos]))
        if self.pos != end:
            raise ProtocolError("property length mismatch")
        return props


def varint(n: int) -> bytes:
    out = bytearray()
    while True:
        n, digit = n >> 7, n & 0x7F
        out.append(digit | (0x80 if n else 0))
        if not n:
            return bytes(out)


def utf8(text: str) -> bytes:
    data = text.encode()
    return struct.pack(">H", len(data)) + data


def encode_props(props: Props) -> bytes:
    body = b"".join(varint(pid) + raw for pid, raw in props)
    return varint(len(body)) + body


def packet(kind: int, flags: int, body: bytes = b"") -> bytes:
    return bytes([kind << 4 | flags]) + varint(len(body)) + body


def valid_filter(topic_filter: str) -> bool:
    return topic_problem(topic_filter, is_filter=True) is None


@dataclass
class Message:
    topic: str
    payload: bytes
    qos: int
    retain: bool
    props: Props = field(default_factory=list)
    expires_at: float | None = None  # time.monotonic() deadline from MessageExpiryInterval

    def props_for_delivery(self, now: float) -> Props | None:
        """Forwarded properties with the expiry reduced by the time waited; None once expired."""
        if self.expires_at is None:
            return self.props
        left = int(self.expires_at - now + 0.999)
        if left <= 0:
            return None
        expiry = (MESSAGE_EXPIRY, struct.pack(">I", left))
        return [expiry if pid == MESSAGE_EXPIRY else (pid, raw) for pid, raw in self.props]


@dataclass
class Subscription:
    qos: int
    no_local: bool = False
    retain_as_published: bool = False


class Client:
    """One connected client: its writer, protocol level, subscriptions and will."""

    def __init__(self, writer: asyncio.StreamWriter, client_id: str, v5: bool, keepalive: int):
        self.writer, self.client_id, self.v5, self.keepalive = writer, client_id, v5, keepalive
        self.subs: dict[str, Subscription] = {}
        self.will: Message | None = None
        self.awaiting_pubrel: set[int] = set()
        self._mids = itertools.cycle(range(1, 65536))

    def send(self, data: bytes) -> None:
        if self.writer.is_closing():
            return
        if self.writer.transport.get_write_buffer_size() > MAX_WRITE_BUFFER:
            log.warning("embedded_broker_client_too_slow", client_id=self.client_id)
            self.writer.transport.abort()
            return
        self.writer.write(data)

    def deliver(self, msg: Message, qos: int, retain: bool, now: float) -> None:
        props = msg.props_for_delivery(now)
        if props is None:
            return  # expired
        body = utf8(msg.topic)
        if qos:
            body += struct.pack(">H", next(self._mids))
        if self.v5:
            body += encode_props(props)
        self.send(packet(PUBLISH, qos << 1 | int(retain), body + msg.payload))


async def read_packet(reader: asyncio.StreamReader) -> tuple[int, int, bytes]:
    first = (await reader.readexactly(1))[0]
    length = 0
    for shift in range(0, 28, 7):
        b = (await reader.readexactly(1))[0]
        length |= (b & 0x7F) << shift
        if not b & 0x80:
            break
    else:
        raise ProtocolError("malformed remaining length")
    if length > MAX_PACKET:
        raise ProtocolError(f"packet of {length} bytes is over the {MAX_PACKET} byte limit")
    return first >> 4, first & 0x0F, await reader.readexactly(length)


class EmbeddedBroker:
    """`async with EmbeddedBroker() as broker:` serves MQTT on 127.0.0.1:`broker.port`.

    Anonymous, in memory, no persistent sessions (CONNACK always says session_present=0, so
    clients subscribe again), QoS 0 and 1 to subscribers (QoS 2 publishes are accepted and
    downgraded), retained messages, wills, keepalive timeouts, client takeover.
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        if not ipaddress.ip_address(host).is_loopback:
            raise ValueError(f"the embedded broker listens on loopback only, not {host}")
        self.host, self.port = host, port
        self.clients: dict[str, Client] = {}
        self.retained: dict[str, Message] = {}
        self._server: asyncio.Server | None = None
        self._ids = itertools.count(1)

    async def __aenter__(self) -> EmbeddedBroker:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, self.host, self.port)
        self.port = int(self._server.sockets[0].getsockname()[1])
        log.info("embedded_broker_started", host=self.host, port=self.port)

    async def stop(self) -> None:
        if self._server is None:
            return
        self._server.close()
        for client in list(self.clients.values()):
            client.writer.transport.abort()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._server.wait_closed(), 5)
        self._server = None
        log.info("embedded_broker_stopped", port=self.port)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        client: Client | None = None
        try:
            kind, _, body = await asyncio.wait_for(read_packet(reader), CONNECT_TIMEOUT)
            if kind != CONNECT:
                raise ProtocolError("the first packet must be CONNECT")
            client = self._connect(Reader(body), writer)
            if client is None:
                return
            while True:
                timeout = client.keepalive * 1.5 if client.keepalive else None
                kind, flags, body = await asyncio.wait_for(read_packet(reader), timeout)
                if kind == DISCONNECT:
                    if not (client.v5 and body[:1] == b"\x04"):  # 0x04: "with will message"
                        client.will = None
                    break
                self._handle(client, kind, flags, Reader(body))
        except (ProtocolError, asyncio.IncompleteReadError, ConnectionError, TimeoutError) as exc:
            who = client.client_id if client else None
            log.debug("embedded_broker_connection_lost", client_id=who, reason=repr(exc))
        except Exception:
            log.exception("embedded_broker_connection_failed")
        finally:
            if client is not None:
                self._drop(client)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    def _connect(self, r: Reader, writer: asyncio.StreamWriter) -> Client | None:
        name, level = r.string(), r.byte()
        v5 = level == 5
        if name not in ("MQTT", "MQIsdp") or level not in (3, 4, 5):
            writer.write(packet(CONNACK, 0, b"\x00\x84\x00" if v5 else b"\x00\x01"))
            return None
        flags, keepalive = r.byte(), r.u16()
        if v5:
            r.properties()  # session expiry, receive maximum…: nothing we need to honour
        client_id = r.string()
        assigned = not client_id
        if assigned:
            client_id = f"embedded-{next(self._ids)}"
        will = None
        if flags & 0x04:
            will_props = r.properties() if v5 else []
            topic, payload = r.string(), r.binary()
            will = self._message(topic, payload, (flags >> 3) & 3, bool(flags & 0x20), will_props)
        if flags & 0x80:
            r.string()  # user name: the broker is anonymous
        if flags & 0x40:
            r.binary()
        old = self.clients.get(client_id)
        if old is not None:  # takeover: the old connection goes, its will first
            if old.will is not None:
                self._route(old.will, old)
                old.will = None
            if old.v5:
                old.send(packet(DISCONNECT, 0, b"\x8e\x00"))  # session taken over
            old.writer.transport.abort()
        client = Client(writer, client_id, v5, keepalive)
        client.will = will
        self.clients[client_id] = client
        if v5:
            props: Props = [(SHARED_SUBS_AVAILABLE, b"\x00")]
            if assigned:
                props.append((ASSIGNED_CLIENT_ID, utf8(client_id)))
            client.send(packet(CONNACK, 0, b"\x00\x00" + encode_props(props)))
        else:
            client.send(packet(CONNACK, 0, b"\x00\x00"))
        log.debug("embedded_broker_client_connected", client_id=client_id, v5=v5)
        return client

    def _drop(self, client: Client) -> None:
        if self.clients.get(client.client_id) is client:
            del self.clients[client.client_id]
        if client.will is not None:
            will, client.will = client.will, None
            self._route(will, client)

    def _message(self, topic: str, payload: bytes, qos: int, retain: bool, props: Props) -> Message:
        if not topic or "+" in topic or "#" in topic or "\0" in topic:
            raise ProtocolError(f"invalid topic name {topic!r}")
        if qos > 2:
            raise ProtocolError("QoS 3 does not exist")
        expires_at = None
        for pid, raw in props:
            if pid == MESSAGE_EXPIRY:
                expires_at = time.monotonic() + struct.unpack(">I", raw)[0]
        kept = [(pid, raw) for pid, raw in props if pid in FORWARDED_PROPS]
        return Message(topic, payload, qos, retain, kept, expires_at)

    def _handle(self, client: Client, kind: int, flags: int, r: Reader) -> None:
        if kind == PUBLISH:
            qos, retain = (flags >> 1) & 3, bool(flags & 1)
            topic = r.string()
            mid = r.u16() if qos else 0
            props = r.properties() if client.v5 else []
            msg = self._message(topic, r.rest(), qos, retain, props)
            if qos == 2:
                if mid not in client.awaiting_pubrel:  # a resent QoS 2 publish is not routed twice
                    client.awaiting_pubrel.add(mid)
                    self._route(msg, client)
                client.send(packet(PUBREC, 0, struct.pack(">H", mid)))
                return
            self._route(msg, client)
            if qos == 1:
                client.send(packet(PUBACK, 0, struct.pack(">H", mid)))
        elif kind == PUBREL:
            mid = r.u16()
            client.awaiting_pubrel.discard(mid)
            client.send(packet(PUBCOMP, 0, struct.pack(">H", mid)))
        elif kind == SUBSCRIBE:
            self._subscribe(client, r)
        elif kind == UNSUBSCRIBE:
            mid = r.u16()
            if client.v5:
                r.properties()
            codes = bytearray()
            while not r.at_end:
                codes.append(0x00 if client.subs.pop(r.string(), None) else 0x11)
            body = struct.pack(">H", mid) + (b"\x00" + bytes(codes) if client.v5 else b"")
            client.send(packet(UNSUBACK, 0, body))
        elif kind == PINGREQ:
            client.send(packet(PINGRESP, 0))
        elif kind in (PUBACK, PUBREC, PUBCOMP):
            pass  # acknowledgements of what we delivered: nothing is kept for resending
        else:
            raise ProtocolError(f"unexpected packet type {kind}")

    def _subscribe(self, client: Client, r: Reader) -> None:
        mid = r.u16()
        if client.v5:
            r.properties()
        codes, replay = bytearray(), []
        while not r.at_end:
            topic_filter, options = r.string(), r.byte()
            qos = options & 3
            if topic_filter.startswith("$share/"):
                codes.append(0x9E if client.v5 else 0x80)  # shared subscriptions: not supported
                continue
            if qos == 3 or not valid_filter(topic_filter):
                codes.append(0x8F if client.v5 else 0x80)
                continue
            granted, existed = min(qos, 1), topic_filter in client.subs
            v5 = client.v5
            client.subs[topic_filter] = Subscription(
                granted, no_local=v5 and bool(options & 0x04),
                retain_as_published=v5 and bool(options & 0x08),
            )
            codes.append(granted)
            handling = (options >> 4) & 3 if v5 else 0
            if handling == 0 or (handling == 1 and not existed):
                replay += [(m, granted) for t, m in self.retained.items()
                           if topic_matches(topic_filter, t)]
        props = b"\x00" if client.v5 else b""
        client.send(packet(SUBACK, 0, struct.pack(">H", mid) + props + bytes(codes)))
        now = time.monotonic()
        for msg, granted in replay:
            client.deliver(msg, min(msg.qos, granted), True, now)

    def _route(self, msg: Message, sender: Client) -> None:
        if msg.retain:
            if msg.payload:
                self.retained[msg.topic] = msg
            else:
                self.retained.pop(msg.topic, None)  # an empty retained payload clears it
        now = time.monotonic()
        for client in list(self.clients.values()):
            matching = [sub for topic_filter, sub in client.subs.items()
                        if topic_matches(topic_filter, msg.topic)
                        and not (sub.no_local and client is sender)]
            if matching:  # one copy per client, at the highest QoS granted
                qos = min(msg.qos, max(sub.qos for sub in matching))
                retain = msg.retain and any(sub.retain_as_published for sub in matching)
                client.deliver(msg, qos, retain, now)

