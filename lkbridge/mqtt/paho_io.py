"""paho on the asyncio loop: a client configured from MqttSettings, its socket driven by the loop,
its messages and properties as ours (the protocol logic stays in client.py)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
import threading
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from lkbridge.mqtt.types import (
    IncomingMessage,
    MqttError,
    MqttSettings,
    PublishProperties,
    os_reason,
    tls_context,
)


def publish_properties(props: PublishProperties, expiry_left: int | None) -> Properties:
    """Our publish properties as paho's (v5), with the expiry left after queueing."""
    out = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
    if "response_topic" in props:
        out.ResponseTopic = props["response_topic"]
    if "correlation_data" in props:
        out.CorrelationData = bytes(props["correlation_data"])
    if expiry_left is not None:
        out.MessageExpiryInterval = expiry_left  # what is left after waiting in our outbox
    if "content_type" in props:
        out.ContentType = props["content_type"]
    if props.get("user_properties"):
        out.UserProperty = list(props["user_properties"])
    return out


def incoming_message(msg: paho.MQTTMessage, ack_key: int = 0) -> IncomingMessage:
    """A received paho message as ours (properties flattened, bytes copied); `ack_key` is what
    MqttClient.ack() takes for it (0: nothing to acknowledge)."""
    props = getattr(msg, "properties", None)

    def get(name: str) -> Any:
        return getattr(props, name, None) if props is not None else None

    corr = get("CorrelationData")
    return IncomingMessage(
        topic=msg.topic,
        payload=bytes(msg.payload),
        qos=msg.qos,
        retain=bool(msg.retain),
        response_topic=get("ResponseTopic"),
        correlation_data=bytes(corr) if corr else None,
        message_expiry_interval=get("MessageExpiryInterval"),
        content_type=get("ContentType"),
        user_properties=tuple((str(k), str(v)) for k, v in get("UserProperty") or ()),
        dup=bool(msg.dup),
        ack_key=ack_key,
    )


class PahoClient(paho.Client):
    """paho's client, with a TLS handshake that closes its socket when it fails (paho leaks it)."""

    tls: ssl.SSLContext | None = None  # set whenever paho is told to use TLS

    def _ssl_wrap_socket(self, tcp_sock: socket.socket) -> ssl.SSLSocket:
        try:
            if self.tls is None:
                raise MqttError("TLS was requested without a TLS context")
            ssl_sock = self.tls.wrap_socket(
                tcp_sock, server_hostname=self.host, do_handshake_on_connect=False
            )
        except BaseException:
            tcp_sock.close()
            raise
        try:
            ssl_sock.settimeout(self.connect_timeout)
            ssl_sock.do_handshake()  # checks the chain, and the hostname unless insecure
        except BaseException:
            ssl_sock.close()
            raise
        return ssl_sock


def configure(client: PahoClient, s: MqttSettings, *, v5: bool, persistent: bool) -> None:
    """Everything but the callbacks: logging, limits, credentials, TLS, will, where to connect."""
    client.enable_logger(logging.getLogger("paho.mqtt"))
    client.connect_timeout = s.connect_timeout
    client.max_inflight_messages_set(0)  # our window and outbox bound what paho holds
    client.max_queued_messages_set(0)
    if s.username is not None:
        client.username_pw_set(s.username, s.password)
    if s.tls is not None:
        client.tls = tls_context(s.tls)
        client.tls_set_context(client.tls)
        client.tls_insecure_set(s.tls.insecure)
    if s.will is not None:
        client.will_set(s.will.topic, s.will.payload, s.will.qos, s.will.retain)
    props = None
    if v5:
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.SessionExpiryInterval = s.session_expiry if persistent else 0
        if s.manual_ack:  # the broker never has more unacknowledged messages out to us
            props.ReceiveMaximum = min(65535, s.incoming_limit)
    clean_start = not persistent if v5 else paho.MQTT_CLEAN_START_FIRST_ONLY
    client.connect_async(s.host, s.port, s.keepalive, clean_start=clean_start, properties=props)


def no_delay(sock: Any) -> None:
    """Small packets (PUBACKs, events) go out at once: Nagle plus delayed ACKs would add ~40 ms
    to every answer and event."""
    if isinstance(sock, socket.socket):  # ssl.SSLSocket included
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def quick_ack(sock: Any) -> None:
    """ACK what was just read at once (Linux resets TCP_QUICKACK, so call it after every read).

    A broker with Nagle on (Mosquitto's default) holds its next small packet until we ACK the
    last one, and Linux delays that ACK by up to 40 ms: every command that follows a PUBACK of
    one of our events would wait that long (docs/benchmarks.md).
    """
    if isinstance(sock, socket.socket) and hasattr(socket, "TCP_QUICKACK"):
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK, 1)


class PahoOnLoop:
    """paho's socket driven by the event loop: reads when readable, writes while paho has bytes
    to send, keepalive once a second; paho's callbacks hop onto the loop's thread."""

    def __init__(self, client: paho.Client) -> None:
        self.paho = client
        self.loop: asyncio.AbstractEventLoop | None = None
        self.loop_thread = 0
        self.fd: int | None = None

    def bind(self) -> None:
        """Use the running loop (call from it, before connecting)."""
        self.loop = asyncio.get_running_loop()
        self.loop_thread = threading.get_ident()

    def post(self, fn: Callable[..., None], *args: Any) -> None:
        loop = self.loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(fn, *args)

    def now(self, fn: Callable[..., None], *args: Any) -> None:
        """On the loop thread, run at once (paho closes the fd right after); else post."""
        if threading.get_ident() == self.loop_thread:
            fn(*args)
        else:
            self.post(fn, *args)

    def attach(self, sock: Any) -> None:
        """Watch a freshly connected socket (the CONNECT packet may still wait to be written)."""
        if self.loop is None:
            raise MqttError("the MQTT client is not running (enter it first)")
        no_delay(sock)
        self.fd = sock.fileno()
        self.loop.add_reader(self.fd, self.on_readable)
        if self.paho.want_write():
            self.loop.add_writer(self.fd, self.paho.loop_write)

    async def open(self, where: str) -> None:
        """Open paho's socket in a thread (DNS, TCP, TLS can block), then drive it from the loop.

        While the thread runs, the loop does not touch paho: nothing is attached yet. MqttError
        when it cannot be opened; a cancelled open closes the socket the thread made.
        """
        if self.paho.socket() is not None:  # an aborted attempt paho never noticed
            self.force_close()
        thread = asyncio.get_running_loop().run_in_executor(None, self.paho.reconnect)
        try:
            rc = await asyncio.shield(thread)
        except asyncio.CancelledError:
            with contextlib.suppress(Exception):
                await thread
            if (sock := self.paho.socket()) is not None:
                sock.close()
            raise
        except (OSError, ValueError) as exc:  # refused, unreachable, DNS, TLS, timeout
            raise MqttError(f"cannot connect to {where}: {os_reason(exc)}") from exc
        sock = self.paho.socket()
        if rc != paho.MQTT_ERR_SUCCESS or sock is None:
            raise MqttError(f"cannot connect to {where}: {paho.error_string(rc)}")
        self.attach(sock)

    def on_readable(self) -> None:
        self.paho.loop_read()
        quick_ack(self.paho.socket())
        for _ in range(100):  # TLS may hold decrypted bytes the selector cannot see
            sock = self.paho.socket()
            if not isinstance(sock, ssl.SSLSocket) or not sock.pending():
                break
            self.paho.loop_read()

    def watch_write(self, fd: int, on: bool) -> None:
        if self.loop is None or fd != self.fd:
            return  # the connect thread's socket: attach() watches it
        if on:
            self.loop.add_writer(fd, self.paho.loop_write)
        else:
            self.loop.remove_writer(fd)

    def detach(self, fd: int) -> None:
        if self.loop is not None and fd == self.fd:
            self.loop.remove_reader(fd)
            self.loop.remove_writer(fd)
            self.fd = None

    def abort(self) -> None:
        """Drop the connection without DISCONNECT: the reader sees EOF and paho cleans up."""
        if isinstance(sock := self.paho.socket(), socket.socket):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def force_close(self) -> None:
        if self.fd is not None:
            self.detach(self.fd)
        if (sock := self.paho.socket()) is not None:
            sock.close()

    async def misc_loop(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            if self.fd is not None:
                self.paho.loop_misc()  # keepalive pings, ping timeouts
