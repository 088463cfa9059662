"""The MQTT client's parts that need no connection: settings, messages, errors, validation, publish queue, backoff."""

from __future__ import annotations

import asyncio
import math
import ssl
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any, Generic, Literal, TypedDict, TypeVar, cast

from lkbridge.backoff import backoff_delay as jittered
from lkbridge.errors import LkbridgeError
from lkbridge.log import get_logger
from lkbridge.mqtt.topic import topic_problem

# Re-exported for code written when they lived here; their home is lkbridge.mqtt.topic.
from lkbridge.mqtt.topic import filters_overlap as filters_overlap  # isort: skip
from lkbridge.mqtt.topic import topic_matches as topic_matches  # isort: skip

log = get_logger(__name__)

Payload = bytes | bytearray | str


class MqttError(LkbridgeError):
    """An MQTT operation failed; `reason_code` is the broker's numeric reason code, if any."""

    def __init__(self, message: str, reason_code: int | None = None) -> None:
        super().__init__(message)
        self.reason_code = reason_code


class PublishProperties(TypedDict, total=False):
    """MQTT v5 publish properties as plain values (not sent on 3.1.1)."""

    response_topic: str
    correlation_data: bytes
    message_expiry_interval: int  # seconds; also honoured while queued in our outbox
    content_type: str
    user_properties: Mapping[str, str] | Sequence[tuple[str, str]]


@dataclass(frozen=True)
class TlsSettings:
    """TLS files; `insecure` skips the hostname check only (like mosquitto_pub --insecure)."""

    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    insecure: bool = False


@dataclass(frozen=True)
class WillMessage:
    """What the broker publishes for us if we vanish without a clean DISCONNECT."""

    topic: str
    payload: Payload = b""
    qos: int = 1
    retain: bool = True


@dataclass(frozen=True)
class MqttSettings:
    """Plain connection settings; the password is never logged and not shown by repr()."""

    host: str = "localhost"
    port: int = 1883
    client_id: str = ""
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    protocol: Literal["5", "3.1.1"] = "5"
    keepalive: int = 60
    tls: TlsSettings | None = None
    will: WillMessage | None = None
    queue_limit: int = 1000  # outgoing messages held while disconnected; more are dropped
    incoming_limit: int = 1000  # received messages waiting for messages(); more are dropped
    max_inflight: int = 20  # unacknowledged QoS>0 publishes (capped by the broker's maximum)
    reconnect_min: float = 0.5  # backoff doubles from here, with jitter, up to reconnect_max
    reconnect_max: float = 30.0
    connect_timeout: float = 5.0
    persistent_session: bool = True  # only with a client_id; see MqttClient's docstring
    session_expiry: int = 600  # v5: seconds the broker keeps our session while we are away
    manual_ack: bool = False  # QoS>0 messages are acknowledged by ack(), not on receipt

    def __post_init__(self) -> None:
        if self.protocol not in ("5", "3.1.1"):
            raise MqttError(f"MQTT protocol must be '5' or '3.1.1', not {self.protocol!r}")
        if self.queue_limit < 0 or self.incoming_limit < 1 or self.max_inflight < 1:
            raise MqttError("MQTT queue_limit must be >= 0, incoming_limit and max_inflight >= 1")
        if not 0 < self.reconnect_min <= self.reconnect_max:
            raise MqttError("MQTT reconnect backoff needs 0 < reconnect_min <= reconnect_max")
        if self.will is not None:
            check_topic(self.will.topic, is_filter=False)
            check_qos(self.will.qos)


@dataclass(frozen=True)
class IncomingMessage:
    """A received message; v5 properties as plain values (None or () when absent)."""

    topic: str
    payload: bytes
    qos: int
    retain: bool
    response_topic: str | None = None
    correlation_data: bytes | None = None
    message_expiry_interval: int | None = None  # seconds left when it reached us
    content_type: str | None = None
    user_properties: tuple[tuple[str, str], ...] = ()
    received_at: float = field(default_factory=time.monotonic)  # time.monotonic() clock
    dup: bool = False  # the broker delivers it again (it had no acknowledgement from us)
    ack_key: int = 0  # with manual_ack: what MqttClient.ack() takes (0: nothing to acknowledge)

    def expired(self, now: float | None = None) -> bool:
        """True once the message expiry interval has run out since the message arrived."""
        if self.message_expiry_interval is None:
            return False
        now = time.monotonic() if now is None else now
        return now - self.received_at >= self.message_expiry_interval


@dataclass(frozen=True)
class OutgoingMessage:
    """A message to publish, e.g. the final offline state handed to aclose()."""

    topic: str
    payload: Payload = b""
    qos: int = 1
    retain: bool = False
    properties: PublishProperties | None = None


@dataclass(frozen=True)
class ConnectInfo:
    """Given to on_connect hooks on every (re)connect."""

    session_present: bool  # the broker still had our session (subscriptions, queued messages)
    first: bool  # the first connection of this client
    dropped: int  # outgoing messages dropped (outbox full) since the previous connection


ConnectHook = Callable[[ConnectInfo], Awaitable[None]]
DisconnectHook = Callable[[str], Awaitable[None]]  # receives the reason in words
T = TypeVar("T")


class Hooks(Generic[T]):
    """Async callbacks run one after the other; one that fails is logged, the rest still run."""

    def __init__(self) -> None:
        self._hooks: list[Callable[[T], Awaitable[None]]] = []

    def add(self, hook: Callable[[T], Awaitable[None]]) -> Callable[[], None]:
        """Register a hook; returns a function that removes it again."""
        self._hooks.append(hook)
        return lambda: self._hooks.remove(hook)

    async def run(self, arg: T) -> None:
        for hook in list(self._hooks):
            try:
                await hook(arg)
            except Exception:
                log.exception("mqtt_hook_failed", hook=getattr(hook, "__qualname__", repr(hook)))


def check_topic(topic: str, *, is_filter: bool) -> None:
    """Raise MqttError unless topic is a valid MQTT topic name (or filter)."""
    if (problem := topic_problem(topic, is_filter=is_filter)) is not None:
        raise MqttError(problem)


def check_qos(qos: int) -> None:
    if qos not in (0, 1, 2):
        raise MqttError(f"invalid MQTT QoS {qos!r}: must be 0, 1 or 2")


_PROPERTY_TYPES: dict[str, type | tuple[type, ...]] = {
    "response_topic": str,
    "correlation_data": (bytes, bytearray),
    "message_expiry_interval": int,
    "content_type": str,
    "user_properties": (Mapping, list, tuple),
}


def check_properties(props: Mapping[str, Any]) -> PublishProperties:
    """Validate publish properties; returns a copy with user_properties as a tuple of pairs."""
    for key, value in props.items():
        expected = _PROPERTY_TYPES.get(key)
        if expected is None:
            known = ", ".join(_PROPERTY_TYPES)
            raise MqttError(f"unknown MQTT property {key!r} (known: {known})")
        if not isinstance(value, expected) or isinstance(value, bool):
            raise MqttError(f"MQTT property {key!r} must not be a {type(value).__name__}")
    out = cast(PublishProperties, dict(props))
    if "response_topic" in out:
        check_topic(out["response_topic"], is_filter=False)
    if not 0 <= out.get("message_expiry_interval", 0) <= 0xFFFFFFFF:
        raise MqttError("MQTT property 'message_expiry_interval' must fit in 0..4294967295")
    if "user_properties" in out:
        raw = out["user_properties"]
        pairs = list(raw.items()) if isinstance(raw, Mapping) else list(raw)
        if not all(len(p) == 2 and all(isinstance(s, str) for s in p) for p in pairs):
            raise MqttError("MQTT property 'user_properties' must hold (str, str) pairs")
        out["user_properties"] = tuple((k, v) for k, v in pairs)
    return out


@dataclass
class QueuedMessage:
    topic: str
    payload: bytes
    qos: int
    retain: bool
    properties: PublishProperties | None
    queued_at: float = field(default_factory=time.monotonic)

    def expiry_left(self, now: float) -> int | None:
        """Seconds of message expiry left (rounded up), 0 when spent, None when it never expires."""
        interval = self.properties.get("message_expiry_interval") if self.properties else None
        if not interval:  # absent, or 0 which Mosquitto also reads as "no expiry"
            return None
        return max(0, math.ceil(interval - (now - self.queued_at)))


class Priority(IntEnum):
    """How much of a full outbox a publish may use (events win over answers)."""

    LOW = 0
    """Request answers: only the first three quarters of the outbox."""
    NORMAL = 1
    """State and message events: the whole outbox."""
    REPORT = 2
    """Reports of drops: a little room beyond the limit, so a drop is never silent."""


REPORT_ROOM = 16


class PublishQueue:
    """Outgoing messages waiting for the broker: first in, first out, bounded.

    What does not fit is dropped and counted; what expires while waiting is discarded, counted.
    Low-priority messages (request answers) may fill only three quarters of it, so state and
    message events still fit when a request flood fills the queue. A retained message may
    replace the one still waiting for the same topic (a new subscriber would only get the newest
    anyway) and take its place in the bound, so a long outage cannot fill it with old states.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.dropped = 0  # total
        self.dropped_since_mark = 0  # since take_dropped_since_mark()
        self.expired = 0
        self.replaced = 0  # retained messages that a newer one for their topic replaced
        self._items: deque[QueuedMessage] = deque()
        self._retained: dict[str, QueuedMessage] = {}  # topic -> the retained one waiting
        self._stale: set[int] = set()  # id() of replaced messages still in _items

    def __len__(self) -> int:
        return len(self._items) - len(self._stale)

    def room(self, priority: Priority) -> int:
        """How many messages of this priority the outbox may hold."""
        if priority is Priority.LOW:
            return self.limit - self.limit // 4
        if priority is Priority.REPORT:
            return self.limit + REPORT_ROOM
        return self.limit

    def put(
        self, msg: QueuedMessage, priority: Priority = Priority.NORMAL, *, replace: bool = True
    ) -> bool:
        """Queue msg; False when it is dropped (counted). `replace`: a retained msg replaces
        the one waiting for its topic."""
        older = self._retained.get(msg.topic) if msg.retain and replace else None
        if older is None and len(self) >= self.room(priority):
            self.dropped += 1
            self.dropped_since_mark += 1
            return False
        if older is not None:
            self._stale.add(id(older))
            self.replaced += 1
        if msg.retain:
            self._retained[msg.topic] = msg
        self._items.append(msg)
        return True

    def pop(self, now: float | None = None) -> tuple[QueuedMessage, int | None] | None:
        """The oldest message still alive, with its remaining expiry; None when empty."""
        now = time.monotonic() if now is None else now
        while self._items:
            msg = self._items.popleft()
            if id(msg) in self._stale:
                self._stale.discard(id(msg))
                continue
            if msg.retain and self._retained.get(msg.topic) is msg:
                del self._retained[msg.topic]
            left = msg.expiry_left(now)
            if left == 0:
                self.expired += 1
                continue
            return msg, left
        return None

    def take_dropped_since_mark(self) -> int:
        count, self.dropped_since_mark = self.dropped_since_mark, 0
        return count


class Inbox:
    """Received messages waiting to be read, bounded: what does not fit is dropped and counted."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.dropped = 0
        self._queue: asyncio.Queue[IncomingMessage | None] = asyncio.Queue()

    def put(self, msg: IncomingMessage) -> bool:
        if self._queue.qsize() >= self.limit:
            self.dropped += 1
            return False
        self._queue.put_nowait(msg)
        return True

    def close(self) -> None:
        """End every reader once it has read what is queued."""
        self._queue.put_nowait(None)

    async def __aiter__(self) -> AsyncIterator[IncomingMessage]:
        while (item := await self._queue.get()) is not None:
            yield item
        self._queue.put_nowait(None)  # so any other reader ends too

    async def batches(self, limit: int) -> AsyncIterator[list[IncomingMessage]]:
        """What is waiting, in order, as lists of at most `limit` (at least one each)."""
        while (item := await self._queue.get()) is not None:
            batch = [item]
            while len(batch) < limit and not self._queue.empty():
                more = self._queue.get_nowait()
                if more is None:
                    yield batch
                    self._queue.put_nowait(None)
                    return
                batch.append(more)
            yield batch
        self._queue.put_nowait(None)


def backoff_delay(attempt: int, settings: MqttSettings) -> float:
    """Seconds before reconnect attempt `attempt` (0-based), from the reconnect settings."""
    return jittered(attempt, settings.reconnect_min, settings.reconnect_max)


def tls_context(tls: TlsSettings) -> ssl.SSLContext:
    """An SSL context verifying the broker (hostname check off when `insecure`)."""
    try:
        ctx = ssl.create_default_context(cafile=tls.ca_file)
        if tls.cert_file:
            ctx.load_cert_chain(tls.cert_file, tls.key_file)
    except (OSError, ValueError) as exc:
        raise MqttError(f"cannot load the MQTT TLS files: {os_reason(exc)}") from exc
    ctx.check_hostname = not tls.insecure
    return ctx


def os_reason(exc: BaseException) -> str:
    """The plain-words part of an OS error ("Connection refused"), else the exception text."""
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__
