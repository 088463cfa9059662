"""MqttTransport: sent user messages published to an MQTT topic, message events received from one."""

from __future__ import annotations

import asyncio
import json
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from lkbridge.errors import TransportError
from lkbridge.log import get_logger
from lkbridge.messages import ReceivedMessage, SentMessage
from lkbridge.mqtt.topic import topic_matches
from lkbridge.transports.base import ReceiverBase

if TYPE_CHECKING:
    from lkbridge.hookspecs import TransportContext
    from lkbridge.mqtt.client import MqttClient

log = get_logger(__name__)

DEFAULT_BASE_TOPIC = "lkbridge"
DEFAULT_PORT = 1883
SERVICE_NAME = "mqtt"
"""The key of the daemon's MQTT connection in `TransportContext.services`."""

MessageHandler = Callable[[str, bytes], None]
"""Called as handler(topic, payload) on the event loop's thread for each received message."""

Unsubscribe = Callable[[], Awaitable[None]]


@runtime_checkable
class MqttService(Protocol):
    """An MQTT connection shared by the daemon (`services["mqtt"]`) or opened by the transport.

    `publish_nowait` queues a publish (while disconnected too) and raises when it cannot.
    `subscribe` subscribes now and after every reconnect and calls `handler(topic, payload)` on
    the event loop for each message matching `topic_filter`; it returns the coroutine function
    that undoes it. An implementation may also have a `base_topic: str` attribute; the default
    publish topic then starts with it instead of `lkbridge`.
    """

    def publish_nowait(
        self, topic: str, payload: bytes, qos: int = 1, retain: bool = False
    ) -> None: ...

    async def subscribe(self, topic_filter: str, handler: MessageHandler) -> Unsubscribe: ...


class InvalidPayloadError(TransportError):
    """A payload on the subscribe topic is not a message event; it was dropped."""


# -- the wire format ----------------------------------------------------------------------------


def encode_sent_message(message: SentMessage, session_id: str) -> bytes:
    """A sent message as the daemon's message event: the user_input shape plus `session`."""
    event = message.as_received().to_dict()
    event["session"] = session_id
    return json.dumps(event, ensure_ascii=False, separators=(",", ":")).encode()


def parse_message_event(payload: bytes) -> ReceivedMessage:
    """A message event ({id, timestamp, type, text, final}) from JSON; InvalidPayloadError if not."""
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidPayloadError(f"not UTF-8 (bad byte at offset {exc.start})") from exc
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InvalidPayloadError(f"not JSON ({exc.msg} at offset {exc.pos})") from exc
    except RecursionError as exc:
        raise InvalidPayloadError("not JSON (nested too deeply)") from exc
    except ValueError as exc:  # int() refusing a number of over 4300 digits
        raise InvalidPayloadError(f"not JSON ({str(exc).split(';')[0]})") from exc
    if not isinstance(data, dict):
        raise InvalidPayloadError(f"expected a JSON object, got {_json_type(data)}")
    try:
        return ReceivedMessage.from_dict(data)
    except ValueError as exc:
        raise InvalidPayloadError(str(exc)) from exc


def _json_type(value: object) -> str:
    if isinstance(value, list):
        return "an array"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, bool):
        return "a boolean"
    return "null" if value is None else "a number"


# -- options --------------------------------------------------------------------------------------

OPTION_KEYS = (
    "publish_topic",
    "subscribe_topic",
    "qos",
    "loopback",
    "host",
    "port",
    "username",
    "password",
)


@dataclass(frozen=True)
class MqttTransportOptions:
    """`[sessions.<id>.transports.mqtt]`. Setting `host` selects a broker of the transport's own."""

    publish_topic: str | None = None
    subscribe_topic: str | None = None
    qos: int = 1
    loopback: bool = True
    host: str | None = None
    port: int = DEFAULT_PORT
    username: str | None = None
    password: str | None = field(default=None, repr=False)

    @classmethod
    def from_mapping(cls, options: Mapping[str, Any]) -> MqttTransportOptions:
        """Validate TOML options; raises ValueError naming the key and the problem."""
        from lkbridge.mqtt.types import MqttError, check_topic

        unknown = sorted(set(options) - set(OPTION_KEYS))
        if unknown:
            raise ValueError(f"unknown option {unknown[0]!r}; known: {', '.join(OPTION_KEYS)}")

        def text(key: str) -> str | None:
            value = options.get(key)
            if value is None:
                return None
            if not isinstance(value, str) or not value:
                raise ValueError(f"{key}: expected a non-empty string")
            return value

        def topic(key: str, *, is_filter: bool) -> str | None:
            value = text(key)
            if value is not None:
                try:
                    check_topic(value, is_filter=is_filter)
                except MqttError as exc:
                    raise ValueError(f"{key}: {exc}") from None
            return value

        qos = options.get("qos", 1)
        if isinstance(qos, bool) or qos not in (0, 1, 2):
            raise ValueError("qos: must be 0, 1 or 2")
        loopback = options.get("loopback", True)
        if not isinstance(loopback, bool):
            raise ValueError("loopback: expected true or false")
        port = options.get("port", DEFAULT_PORT)
        if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
            raise ValueError("port: expected a number from 1 to 65535")
        return cls(
            publish_topic=topic("publish_topic", is_filter=False),
            subscribe_topic=topic("subscribe_topic", is_filter=True),
            qos=qos,
            loopback=loopback,
            host=text("host"),
            port=port,
            username=text("username"),
            password=_reveal(options.get("password")),
        )


def _reveal(value: Any) -> str | None:
    """A password given inline, or as a config Secret (revealed only here, when it is needed)."""
    if value is None:
        return None
    reveal = getattr(value, "reveal", None)
    revealed = reveal() if callable(reveal) else value
    if not isinstance(revealed, str):
        raise ValueError("password: expected a string")
    return revealed


# -- the transport ----------------------------------------------------------------------------------


class MqttTransport(ReceiverBase):
    """Publishes every sent user message to `publish_topic` and receives message events.

    Sender: each message is published as JSON (the user_input message event plus `session`),
    default topic `lkbridge/<session_id>/outbound`. With `loopback` (default) and while the
    transport is also consumed as a receiver, the sent message enters the history as user_input.
    Receiver: from the first `messages()` call until `aclose()` it subscribes to
    `subscribe_topic`; each JSON message event becomes a ReceivedMessage. Anything else is
    dropped and reported (a `receiver` error while bound to a room, a log line otherwise); an
    empty payload (a cleared retained message) is ignored.
    """

    def __init__(
        self,
        options: MqttTransportOptions | None = None,
        *,
        session_id: str = "",
        service: MqttService | None = None,
    ) -> None:
        super().__init__()
        self.options = options or MqttTransportOptions()
        self.session_id = session_id
        own_broker = self.options.host is not None or service is None
        self._service: MqttService | None = None if own_broker else service
        self._own: _ClientService | None = None
        self._lock = asyncio.Lock()
        self._unsubscribe: Unsubscribe | None = None
        self._subscribed = asyncio.Event()
        self.dropped_count = 0
        base = getattr(service, "base_topic", None) if not own_broker else None
        default_base = base if isinstance(base, str) and base else DEFAULT_BASE_TOPIC
        self.publish_topic = self.options.publish_topic or (
            f"{default_base}/{session_id}/outbound" if session_id else None
        )

    @classmethod
    def from_context(cls, ctx: TransportContext) -> MqttTransport:
        """The plugin factory: options from the session's table, the daemon's connection if any."""
        service = ctx.services.get(SERVICE_NAME)
        if service is not None and not isinstance(service, MqttService):
            raise TypeError(f"services[{SERVICE_NAME!r}] is not an MqttService")
        return cls(
            MqttTransportOptions.from_mapping(ctx.options),
            session_id=ctx.session_id,
            service=service,
        )

    def __repr__(self) -> str:
        return (
            f"MqttTransport(publish_topic={self.publish_topic!r}, "
            f"subscribe_topic={self.options.subscribe_topic!r})"
        )

    async def _connection(self) -> MqttService:
        if self.closed:
            raise TransportError("the MQTT transport is closed")
        if self._service is not None:
            return self._service
        async with self._lock:
            if self._own is None:
                self._own = await _ClientService.open(self.options, self.session_id)
            return self._own

    # -- sending --------------------------------------------------------------------------------

    async def send(self, message: SentMessage) -> None:
        if self.publish_topic is None:
            raise TransportError("mqtt: set publish_topic (the session has no id to default to)")
        payload = encode_sent_message(message, self.session_id)
        try:
            service = await self._connection()
            service.publish_nowait(self.publish_topic, payload, self.options.qos, False)
        except TransportError:
            raise
        except Exception as exc:
            raise TransportError(f"publishing to {self.publish_topic} failed: {exc}") from exc
        log.debug("mqtt_message_sent", message_id=message.id, topic=self.publish_topic)
        if self.options.loopback and self._consumers > 0:
            self._emit(message.as_received())
            await self.flush()

    # -- receiving ------------------------------------------------------------------------------

    async def messages(self) -> AsyncIterator[ReceivedMessage]:
        if self.options.subscribe_topic is not None and self._unsubscribe is None:
            await self._subscribe(self.options.subscribe_topic)
        inner = super().messages()
        try:
            async for message in inner:
                yield message
        finally:
            close = getattr(inner, "aclose", None)
            if close is not None:
                await close()

    async def _subscribe(self, topic_filter: str) -> None:
        try:
            service = await self._connection()
            unsubscribe = await service.subscribe(topic_filter, self._on_payload)
            if self.closed:  # closed while the subscription was on its way
                await unsubscribe()
                return
            self._unsubscribe = unsubscribe
        except TransportError:
            raise
        except Exception as exc:
            raise TransportError(f"subscribing to {topic_filter} failed: {exc}") from exc
        self._subscribed.set()
        log.debug("mqtt_transport_subscribed", topic_filter=topic_filter)

    async def wait_subscribed(self, timeout: float | None = None) -> None:
        """Wait until the subscription is in place (for tests and callers that need to know)."""
        async with asyncio.timeout(timeout):
            await self._subscribed.wait()

    def _on_payload(self, topic: str, payload: bytes) -> None:
        if not payload:
            return  # a retained message being cleared, not a message
        try:
            message = parse_message_event(payload)
        except InvalidPayloadError as exc:
            self.dropped_count += 1
            error = InvalidPayloadError(f"invalid message event on {topic}: {exc}")
            log.warning("mqtt_payload_dropped", topic=topic, reason=str(exc), bytes=len(payload))
            if self._binding is not None:
                self._binding.report_error(error)
            return
        self._emit(message)

    async def aclose(self) -> None:
        unsubscribe, self._unsubscribe = self._unsubscribe, None
        if unsubscribe is not None:
            try:
                await unsubscribe()
            except Exception as exc:
                log.warning("mqtt_unsubscribe_failed", error=str(exc))
        await super().aclose()
        own, self._own = self._own, None
        if own is not None:
            await own.aclose()


class _ClientService:
    """An MqttService over an MqttClient of the transport's own (library use, `host` option)."""

    def __init__(self, client: MqttClient) -> None:
        self._client = client
        self._handlers: dict[str, MessageHandler] = {}
        self._reader: asyncio.Task[None] | None = None

    @classmethod
    async def open(cls, options: MqttTransportOptions, session_id: str) -> _ClientService:
        from lkbridge.mqtt.client import MqttClient, MqttSettings

        settings = MqttSettings(
            host=options.host or "localhost",
            port=options.port,
            client_id=f"lkbridge-{session_id or 'session'}-{secrets.token_hex(4)}",
            username=options.username,
            password=options.password,
            persistent_session=False,
        )
        client = MqttClient(settings)
        await client.__aenter__()
        service = cls(client)
        service._reader = asyncio.get_running_loop().create_task(
            service._read(), name=f"lkbridge.mqtt_transport.reader.{session_id}"
        )
        return service

    def publish_nowait(
        self, topic: str, payload: bytes, qos: int = 1, retain: bool = False
    ) -> None:
        if not self._client.publish_nowait(topic, payload, qos, retain):
            raise TransportError("the MQTT outbox is full; the message was dropped")

    async def subscribe(self, topic_filter: str, handler: MessageHandler) -> Unsubscribe:
        self._handlers[topic_filter] = handler
        await self._client.subscribe(topic_filter)

        async def unsubscribe() -> None:
            self._handlers.pop(topic_filter, None)
            await self._client.unsubscribe(topic_filter)

        return unsubscribe

    async def _read(self) -> None:
        async for incoming in self._client.messages():
            for topic_filter, handler in list(self._handlers.items()):
                if topic_matches(topic_filter, incoming.topic):
                    try:
                        handler(incoming.topic, incoming.payload)
                    except Exception:
                        log.exception("mqtt_handler_failed", topic=incoming.topic)

    async def aclose(self) -> None:
        await self._client.aclose()
        if self._reader is not None:
            self._reader.cancel()
            await asyncio.gather(self._reader, return_exceptions=True)
