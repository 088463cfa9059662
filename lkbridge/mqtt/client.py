"""The asyncio MQTT client: connections and reconnects, the publish queue and its acknowledgements,
received messages (paho is driven by paho_io.py; subscriptions are kept by subscriptions.py)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Iterable, Mapping
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.reasoncodes import ReasonCode

from lkbridge.log import get_logger
from lkbridge.mqtt.acks import AckOrder
from lkbridge.mqtt.paho_io import (
    PahoClient,
    PahoOnLoop,
    configure,
    incoming_message,
    publish_properties,
)
from lkbridge.mqtt.subscriptions import Subscriptions
from lkbridge.mqtt.types import (
    ConnectHook,
    ConnectInfo,
    DisconnectHook,
    Hooks,
    Inbox,
    IncomingMessage,
    MqttError,
    MqttSettings,
    OutgoingMessage,
    Payload,
    Priority,
    PublishProperties,
    PublishQueue,
    QueuedMessage,
    TlsSettings,
    WillMessage,
    backoff_delay,
    check_properties,
    check_qos,
    check_topic,
)

__all__ = [
    "ConnectHook",
    "ConnectInfo",
    "DisconnectHook",
    "IncomingMessage",
    "MqttClient",
    "MqttError",
    "MqttSettings",
    "OutgoingMessage",
    "PublishProperties",
    "TlsSettings",
    "WillMessage",
]

log = get_logger(__name__)
STABLE_AFTER = 10.0  # a connection that lasted this long resets the reconnect backoff


class MqttClient:
    """An MQTT connection that lives on the asyncio loop and reconnects forever.

    `async with MqttClient(settings) as client:` never waits for the broker; publishes made while
    disconnected wait in the outbox. Call methods from the event loop's thread only.

    Session: with a client_id and `persistent_session` (the default), v5 connects with
    clean_start=False and a session expiry interval, 3.1.1 with clean_session=False, so the broker
    keeps our subscriptions and queues QoS 1 messages (commands) while we are away: a restart or
    a network blip loses no command. The price is stale commands after long outages, so the v5
    session is bounded (`session_expiry`, 10 min) and publishers can bound each message with a
    message expiry, which Mosquitto honours: it drops expired queued messages and hands the rest
    over with the interval reduced by the time they waited (60 s after 2 s arrives as 58).
    3.1.1 has no session expiry on the wire (Mosquitto: `persistent_client_expiration`).
    Subscriptions are sent again on every connect anyway, for brokers that lost the session.
    """

    def __init__(self, settings: MqttSettings) -> None:
        self._settings = s = settings
        self._v5 = s.protocol == "5"
        self._persistent = s.persistent_session and bool(s.client_id)
        self._where = f"{s.host}:{s.port}"
        self._outbox = PublishQueue(s.queue_limit)
        self._unacked: dict[int, str] = {}  # mid -> topic of QoS>0 publishes handed to paho
        self._acks = AckOrder()  # manual_ack: what is owed a PUBACK, in order of receipt
        self._window = s.max_inflight
        self._inbox = Inbox(s.incoming_limit)
        self._connect_hooks: Hooks[ConnectInfo] = Hooks()
        self._disconnect_hooks: Hooks[str] = Hooks()
        self._tasks: set[asyncio.Task[None]] = set()
        self._runner: asyncio.Task[None] | None = None
        self._gen = 0  # bumped per connection attempt, so late callbacks of an old one are ignored
        self._connack: asyncio.Future[bool] | None = None
        self._lost, self._up, self._idle = asyncio.Event(), asyncio.Event(), asyncio.Event()
        self._idle.set()
        self._connected = self._closing = self._ever_connected = False
        self._disconnect_reason = ""
        self._last_warn: dict[str, float] = {}
        self.last_error: MqttError | None = None
        self._paho = self._make_paho()
        self._io = PahoOnLoop(self._paho)
        self._subs = Subscriptions(self._paho, v5=self._v5)

    def _make_paho(self) -> paho.Client:
        s = self._settings
        client = PahoClient(
            CallbackAPIVersion.VERSION2,
            client_id=s.client_id,
            reconnect_on_failure=False,
            manual_ack=s.manual_ack,
            clean_session=None if self._v5 else not self._persistent,
            protocol=paho.MQTTv5 if self._v5 else paho.MQTTv311,
        )
        configure(client, s, v5=self._v5, persistent=self._persistent)
        # paho callbacks only hop onto the loop: protocol events are posted (handled after paho
        # returns, never inside its code paths); socket changes apply at once on the loop thread.
        client.on_connect = lambda _c, _u, flags, rc, props: self._io.post(
            self._handle_connect, self._gen, flags.session_present, rc, props
        )
        client.on_disconnect = lambda _c, _u, flags, rc, _p: self._io.post(
            self._handle_disconnect, self._gen, flags.is_disconnect_packet_from_server, rc
        )
        client.on_message = lambda _c, _u, msg: self._io.post(self._handle_message, self._gen, msg)
        client.on_publish = lambda _c, _u, mid, rc, _p: self._io.post(self._handle_puback, mid, rc)
        client.on_subscribe = lambda _c, _u, mid, rcs, _p: self._io.post(self._subs.suback, mid, rcs)
        client.on_socket_close = lambda _c, _u, sock: self._io.now(self._io.detach, sock.fileno())
        client.on_socket_register_write = lambda _c, _u, sock: self._io.now(
            self._io.watch_write, sock.fileno(), True
        )
        client.on_socket_unregister_write = lambda _c, _u, sock: self._io.now(
            self._io.watch_write, sock.fileno(), False
        )
        return client

    # -- public API ----------------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self._connected

    @property
    def dropped_count(self) -> int:
        """Outgoing messages dropped because the outbox was full (since start)."""
        return self._outbox.dropped

    @property
    def incoming_dropped_count(self) -> int:
        """Received messages dropped because nobody read them in time (inbox full)."""
        return self._inbox.dropped

    @property
    def unsent_count(self) -> int:
        """Messages queued or sent but not acknowledged (what a close now would lose)."""
        return len(self._outbox) + len(self._unacked)

    @property
    def queued_count(self) -> int:
        """Messages waiting in the outbox (not counting sent-but-unacknowledged ones)."""
        return len(self._outbox)

    async def __aenter__(self) -> MqttClient:
        self._io.bind()
        self._runner = self._spawn(self._run(), "mqtt-connection")
        self._spawn(self._io.misc_loop(), "mqtt-misc")
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    def on_connect(self, hook: ConnectHook) -> Callable[[], None]:
        """`await hook(info)` in a task after every (re)connect; returns a remover."""
        return self._connect_hooks.add(hook)

    def on_disconnect(self, hook: DisconnectHook) -> Callable[[], None]:
        """`await hook(reason)` in a task after every lost connection; returns a remover."""
        return self._disconnect_hooks.add(hook)

    async def wait_connected(self, timeout: float | None = None) -> None:
        """Wait for a connection; on timeout raise MqttError naming the last failure."""
        try:
            async with asyncio.timeout(timeout):
                await self._up.wait()
        except TimeoutError:
            last, why = self.last_error, f": {self.last_error}" if self.last_error else ""
            code = last.reason_code if last else None
            text = f"not connected to {self._where} after {timeout} s{why}"
            raise MqttError(text, code) from None

    def publish_nowait(
        self,
        topic: str,
        payload: Payload = b"",
        qos: int = 1,
        retain: bool = False,
        properties: PublishProperties | Mapping[str, Any] | None = None,
        priority: Priority = Priority.NORMAL,
    ) -> bool:
        """Publish, or queue in order while disconnected; False when dropped (outbox full).

        A LOW publish (a request answer) is dropped once the outbox is three quarters full, so
        that events still fit; a REPORT publish may use a little room beyond the limit.
        """
        if self._closing:
            raise MqttError("the MQTT client is closed")
        check_topic(topic, is_filter=False)
        check_qos(qos)
        data = payload.encode() if isinstance(payload, str) else bytes(payload)
        props = check_properties(properties) if properties else None
        message = QueuedMessage(topic, data, qos, retain, props)
        # While disconnected a newer retained value replaces the one waiting (an outage must
        # not fill the queue with old states); connected, every value is sent in order.
        if not self._outbox.put(message, priority, replace=not self._connected):
            limit, dropped = self._outbox.limit, self._outbox.dropped
            self._warn("mqtt_queue_full", limit=limit, dropped=dropped)
            return False
        self._idle.clear()
        self._pump()
        return True

    async def publish(
        self,
        topic: str,
        payload: Payload = b"",
        qos: int = 1,
        retain: bool = False,
        properties: PublishProperties | Mapping[str, Any] | None = None,
    ) -> bool:
        """As publish_nowait(); wait_published() waits for the broker's acknowledgements."""
        return self.publish_nowait(topic, payload, qos, retain, properties)

    async def wait_published(self, timeout: float | None = None) -> None:
        """Wait until the outbox is empty and every QoS>0 publish has its PUBACK."""
        try:
            async with asyncio.timeout(timeout):
                await self._idle.wait()
        except TimeoutError:
            left = len(self._outbox) + len(self._unacked)
            raise MqttError(f"{left} MQTT messages unacknowledged after {timeout} s") from None

    async def subscribe(self, topic_filter: str, qos: int = 1, timeout: float = 10.0) -> None:
        """Subscribe now (waiting for SUBACK if connected) and again on every reconnect."""
        check_topic(topic_filter, is_filter=True)
        check_qos(qos)
        self._subs.want(topic_filter, qos)
        waiter = None
        if self._connected:
            waiter = self._subs.send([topic_filter], self._io.loop, wait=True)
        if waiter is None:
            return
        try:
            async with asyncio.timeout(timeout):
                codes = await waiter
        except TimeoutError:
            raise MqttError(f"no SUBACK for {topic_filter!r} within {timeout} s") from None
        if codes and codes[0].is_failure:
            self._subs.forget(topic_filter)
            text = f"broker refused the subscription to {topic_filter!r}: {codes[0]}"
            raise MqttError(text, codes[0].value)

    async def unsubscribe(self, topic_filter: str) -> None:
        """Forget a subscription, unsubscribing now if connected."""
        if self._subs.forget(topic_filter) and self._connected:
            self._paho.unsubscribe(topic_filter)

    async def messages(self) -> AsyncIterator[IncomingMessage]:
        """Received messages in arrival order, until the client closes (meant for one reader)."""
        async for msg in self._inbox:
            yield msg

    async def batches(self, limit: int = 256) -> AsyncIterator[list[IncomingMessage]]:
        """As messages(), but everything already waiting at once (at most `limit` a batch)."""
        async for batch in self._inbox.batches(limit):
            yield batch

    def ack(self, message: IncomingMessage) -> None:
        """With `manual_ack`: acknowledge a received QoS>0 message (no-op for the others).

        PUBACKs go out in the order the messages arrived, and never on a later connection than
        the message's own: the broker delivers that one again, with the DUP flag (mqtt/acks.py).
        """
        connected = self._connected
        self._acks.ack(message.ack_key, gen=self._gen, connected=connected, send=self._paho.ack)

    @property
    def stale_acks(self) -> int:
        """Acknowledgements not sent: the connection their message came on was gone."""
        return self._acks.stale

    async def _drain(self, timeout: float) -> None:
        """Wait for the outbox to empty and the acknowledgements, unless the connection goes."""
        idle = asyncio.create_task(self._idle.wait(), name="mqtt-close-idle")
        lost = asyncio.create_task(self._lost.wait(), name="mqtt-close-lost")
        done, _ = await asyncio.wait({idle, lost}, timeout=timeout,
                                     return_when=asyncio.FIRST_COMPLETED)
        for task in (idle, lost):
            task.cancel()
        await asyncio.gather(idle, lost, return_exceptions=True)
        if idle not in done and lost not in done:
            left = len(self._outbox) + len(self._unacked)
            log.warning("mqtt_close_unacknowledged", unacknowledged=left, waited=timeout)

    async def aclose(self, final: Iterable[OutgoingMessage] = (), timeout: float = 5.0) -> None:
        """Publish `final`, wait (at most `timeout`) for acknowledgements, DISCONNECT cleanly."""
        if self._closing:
            return
        for m in final:
            self.publish_nowait(m.topic, m.payload, m.qos, m.retain, m.properties)
        if not self._idle.is_set() and self._io.loop is not None and self._connected:
            await self._drain(timeout)
        # Without a connection nothing can be acknowledged: no waiting (mqtt_closed counts
        # what was left unsent).
        self._closing = True
        if self._runner is not None:
            self._runner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._runner
        if self._io.fd is not None:
            if self._connected:
                self._paho.disconnect()  # clean DISCONNECT (reason 0): the broker drops our will
            else:
                self._io.abort()
            try:
                async with asyncio.timeout(2.0):
                    await self._lost.wait()
            except TimeoutError:
                self._io.force_close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._connected = False
        self._inbox.close()
        unsent = len(self._outbox) + len(self._unacked)
        log.info("mqtt_closed", host=self._settings.host, unsent=unsent)

    # -- connection supervision ----------------------------------------------------------------

    async def _run(self) -> None:
        attempt = 0
        while True:
            try:
                await self._connect_once()
            except MqttError as exc:
                self.last_error, delay = exc, backoff_delay(attempt, self._settings)
                attempt += 1
                log.warning(
                    "mqtt_connect_failed",
                    host=self._settings.host,
                    port=self._settings.port,
                    error=str(exc),
                    retry_in=round(delay, 2),
                )
                await asyncio.sleep(delay)
                continue
            started = time.monotonic()
            await self._lost.wait()
            await asyncio.sleep(0)  # let the posted disconnect reason land first
            reason = self._disconnect_reason or "connection lost"
            log.warning("mqtt_disconnected", host=self._settings.host, reason=reason)
            self._spawn(self._disconnect_hooks.run(reason), "mqtt-on-disconnect")
            attempt = 0 if time.monotonic() - started >= STABLE_AFTER else attempt + 1
            await asyncio.sleep(backoff_delay(attempt, self._settings))

    async def _connect_once(self) -> None:
        """Open the socket (paho_io.PahoOnLoop.open), then wait for CONNACK here.

        publish/subscribe only reach paho when connected.
        """
        self._gen += 1
        self._lost.clear()
        self._disconnect_reason = ""
        await self._io.open(self._where)
        self._connack = fut = asyncio.get_running_loop().create_future()
        try:
            async with asyncio.timeout(self._settings.connect_timeout):
                await fut
        except TimeoutError:
            self._io.abort()
            text = f"no CONNACK from {self._where} within {self._settings.connect_timeout} s"
            raise MqttError(text) from None
        finally:
            self._connack = None

    # -- protocol events, posted from paho callbacks ------------------------------------------

    def _handle_connect(self, gen: int, session_present: bool, rc: ReasonCode, props: Any) -> None:
        fut = self._connack
        if gen != self._gen or fut is None or fut.done():
            return
        if rc.is_failure:
            fut.set_exception(MqttError(f"{self._where} refused the connection: {rc}", rc.value))
            return
        receive_max = getattr(props, "ReceiveMaximum", None) or self._settings.max_inflight
        self._acks.connection_gone()
        self._window = min(self._settings.max_inflight, receive_max)
        self._subs.resend(self._io.loop)
        self._connected = True
        self._pump()  # what waited in the outbox goes first, in order
        fut.set_result(session_present)
        self._up.set()
        self.last_error = None
        dropped = self._outbox.take_dropped_since_mark()
        info = ConnectInfo(session_present, not self._ever_connected, dropped)
        self._ever_connected = True
        log.info(
            "mqtt_connected",
            host=self._settings.host,
            port=self._settings.port,
            protocol=self._settings.protocol,
            session_present=session_present,
            queued=len(self._outbox) + len(self._unacked),
            dropped=dropped,
        )
        self._spawn(self._connect_hooks.run(info), "mqtt-on-connect")

    def _handle_disconnect(self, gen: int, from_broker: bool, rc: ReasonCode) -> None:
        if gen != self._gen or self._lost.is_set():
            return
        if from_broker:
            reason = f"broker sent DISCONNECT: {rc}"
        else:
            reason = "connection lost" if str(rc) == "Unspecified error" else str(rc)
        self._disconnect_reason = reason
        self._connected = False
        self._acks.connection_gone()
        self._up.clear()
        if (fut := self._connack) is not None and not fut.done():
            fut.set_exception(MqttError(f"{self._where} closed the connection: {reason}"))
        self._subs.connection_lost()
        self._lost.set()

    def _handle_message(self, gen: int, msg: paho.MQTTMessage) -> None:
        key = 0
        if self._settings.manual_ack and msg.qos > 0 and gen == self._gen and self._connected:
            key = self._acks.expect(gen, msg.mid, msg.qos)
        if not self._inbox.put(incoming_message(msg, key)):
            # Not acknowledged either: the broker delivers it again after the next reconnect.
            self._acks.forget(key)
            self._warn("mqtt_incoming_dropped", topic=msg.topic, dropped=self._inbox.dropped)

    def _handle_puback(self, mid: int, rc: ReasonCode) -> None:
        topic = self._unacked.pop(mid, None)
        if topic is not None and rc.is_failure:
            log.warning("mqtt_publish_rejected", topic=topic, reason=str(rc))
        self._pump()

    # -- helpers -------------------------------------------------------------------------------

    def _pump(self) -> None:
        """Hand outbox messages to paho, in order, while connected and the window has room."""
        while self._connected and len(self._unacked) < self._window:
            if (item := self._outbox.pop()) is None:
                break
            msg, expiry_left = item
            props = publish_properties(msg.properties, expiry_left) if msg.properties else None
            try:
                info = self._paho.publish(
                    msg.topic, msg.payload, msg.qos, msg.retain, props if self._v5 else None
                )
            except ValueError as exc:  # e.g. payload over the MQTT maximum
                log.error("mqtt_publish_failed", topic=msg.topic, error=str(exc))
                continue
            if msg.qos > 0 and info.rc in (paho.MQTT_ERR_SUCCESS, paho.MQTT_ERR_NO_CONN):
                self._unacked[info.mid] = msg.topic  # paho sends it again after a reconnect
        if not self._outbox and not self._unacked:
            self._idle.set()

    def _spawn(self, coro: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _warn(self, event: str, **fields: Any) -> None:
        """Log a repeating warning at most once a second."""
        now = time.monotonic()
        if now - self._last_warn.get(event, float("-inf")) >= 1.0:
            self._last_warn[event] = now
            log.warning(event, **fields)
