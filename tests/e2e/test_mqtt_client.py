"""MqttClient against real Mosquitto: will, outage queueing, overflow, resubscribe, v5, auth."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import pwd
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from devstack.mosquitto import Mosquitto, find_mosquitto
from devstack.procs import free_port, stop_process, wait_for_tcp
from lkbridge.mqtt.client import (
    ConnectInfo,
    IncomingMessage,
    MqttClient,
    MqttError,
    MqttSettings,
    OutgoingMessage,
    TlsSettings,
    WillMessage,
)

pytestmark = pytest.mark.e2e

MakeClient = Callable[..., Awaitable[MqttClient]]


@pytest.fixture
def base() -> str:
    return f"lkbtest/{uuid.uuid4().hex[:8]}"


@pytest.fixture
async def make_client() -> AsyncIterator[MakeClient]:
    """`await make_client(broker, **settings)`: a started client, closed at teardown."""
    async with contextlib.AsyncExitStack() as stack:

        async def make(broker: Mosquitto | None = None, **kw: Any) -> MqttClient:
            if broker is not None:
                kw.setdefault("host", broker.host)
                kw.setdefault("port", broker.port)
            kw.setdefault("client_id", f"lkb-test-{uuid.uuid4().hex[:8]}")
            kw.setdefault("reconnect_min", 0.05)
            kw.setdefault("reconnect_max", 0.5)
            kw.setdefault("connect_timeout", 3.0)
            return await stack.enter_async_context(MqttClient(MqttSettings(**kw)))

        yield make


async def receive(messages: AsyncIterator[IncomingMessage], n: int = 1) -> list[IncomingMessage]:
    return [await asyncio.wait_for(anext(messages), 5) for _ in range(n)]


async def eventually(check: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


# -- will -------------------------------------------------------------------------------------

WILL_CLIENT = """
import asyncio, sys
from lkbridge.mqtt.client import MqttClient, MqttSettings, WillMessage
async def main():
    s = MqttSettings(host=sys.argv[1], port=int(sys.argv[2]), client_id=sys.argv[3],
                     will=WillMessage(sys.argv[4], b"offline", qos=1, retain=False))
    async with MqttClient(s) as client:
        await client.wait_connected(5)
        print("connected", flush=True)
        await asyncio.sleep(60)
asyncio.run(main())
"""


async def test_will_is_published_when_the_client_dies(
    mqtt_broker: Mosquitto, make_client: MakeClient, base: str
) -> None:
    watcher = await make_client(mqtt_broker)
    await watcher.wait_connected(5)
    await watcher.subscribe(f"{base}/state")
    args = [mqtt_broker.host, str(mqtt_broker.port), f"lkb-will-{base[-8:]}", f"{base}/state"]
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", WILL_CLIENT, *args, stdout=asyncio.subprocess.PIPE
    )
    try:
        assert proc.stdout is not None
        while (line := await asyncio.wait_for(proc.stdout.readline(), 10)) != b"connected\n":
            assert line, "the client process exited before connecting"  # structlog shares stdout
        proc.send_signal(signal.SIGKILL)  # no DISCONNECT: the broker must publish the will
        [will] = await receive(watcher.messages())
        assert (will.topic, will.payload) == (f"{base}/state", b"offline")
    finally:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()


async def test_clean_close_publishes_final_message_and_no_will(
    mqtt_broker: Mosquitto, make_client: MakeClient, base: str
) -> None:
    watcher = await make_client(mqtt_broker)
    await watcher.wait_connected(5)
    await watcher.subscribe(f"{base}/state")
    will = WillMessage(f"{base}/state", b"will", retain=False)
    async with MqttClient(
        MqttSettings(mqtt_broker.host, mqtt_broker.port, "lkb-clean-" + base[-8:], will=will)
    ) as client:
        await client.wait_connected(5)
        await client.publish(f"{base}/state", b"online")
        await client.aclose([OutgoingMessage(f"{base}/state", b"offline-clean")])
    marker = await make_client(mqtt_broker)
    await marker.wait_connected(5)
    await marker.publish(f"{base}/state", b"marker")
    got = [m.payload for m in await receive(watcher.messages(), 3)]
    assert got == [b"online", b"offline-clean", b"marker"]  # a will would sit before the marker


# -- outages ----------------------------------------------------------------------------------


@pytest.mark.parametrize("outage", ["stop", "kill"])
async def test_publishes_during_an_outage_arrive_in_order_after_restart(
    private_broker: Mosquitto, make_client: MakeClient, base: str, outage: str
) -> None:
    # The publisher retries 1-2 s after losing the broker, so the subscriber below is
    # subscribed on the restarted broker well before the publisher flushes its outbox.
    pub = await make_client(private_broker, reconnect_min=2.0, reconnect_max=2.0)
    infos: list[ConnectInfo] = []

    async def on_connect(info: ConnectInfo) -> None:
        infos.append(info)
        if not info.first:  # what the bridge does: re-publish state after a reconnect
            await pub.publish(f"{base}/seq", b"from-hook")

    pub.on_connect(on_connect)
    await pub.wait_connected(5)
    getattr(private_broker, outage)()
    await eventually(lambda: not pub.connected)
    for i in range(50):
        assert pub.publish_nowait(f"{base}/seq", str(i).encode())
    assert pub.queued_count == 50
    private_broker.start()
    sub = await make_client(private_broker)
    await sub.wait_connected(5)
    await sub.subscribe(f"{base}/seq")
    assert not pub.connected, "the publisher reconnected too early for this test"

    await pub.wait_connected(5)
    pub.publish_nowait(f"{base}/seq", b"new")
    await pub.wait_published(5)
    got = [m.payload for m in await receive(sub.messages(), 52)]
    assert got[:50] == [str(i).encode() for i in range(50)]  # the outbox first, in order
    assert sorted(got[50:]) == [b"from-hook", b"new"]
    assert [i.first for i in infos] == [True, False]
    assert pub.dropped_count == 0


async def test_outbox_overflow_is_dropped_counted_and_reported_on_connect(
    private_broker: Mosquitto, make_client: MakeClient, base: str
) -> None:
    private_broker.stop()
    pub = await make_client(private_broker, queue_limit=3, reconnect_min=2.0, reconnect_max=2.0)
    infos: list[ConnectInfo] = []

    async def on_connect(info: ConnectInfo) -> None:
        infos.append(info)

    pub.on_connect(on_connect)
    await eventually(lambda: pub.last_error is not None)
    accepted = [pub.publish_nowait(f"{base}/o", str(i).encode()) for i in range(5)]
    assert accepted == [True, True, True, False, False]
    assert (pub.dropped_count, pub.queued_count) == (2, 3)

    private_broker.start()
    sub = await make_client(private_broker)
    await sub.wait_connected(5)
    await sub.subscribe(f"{base}/o")
    await pub.wait_connected(5)
    await pub.wait_published(5)
    assert [m.payload for m in await receive(sub.messages(), 3)] == [b"0", b"1", b"2"]
    await eventually(lambda: len(infos) == 1)
    assert infos[0].dropped == 2 and infos[0].first


async def test_subscriptions_and_hooks_survive_a_broker_restart(
    private_broker: Mosquitto, make_client: MakeClient, base: str
) -> None:
    sub = await make_client(private_broker)
    connects: list[ConnectInfo] = []
    reasons: list[str] = []

    async def broken_hook(info: ConnectInfo) -> None:
        raise RuntimeError("a failing hook must not stop the others")

    async def on_connect(info: ConnectInfo) -> None:
        connects.append(info)

    async def on_disconnect(reason: str) -> None:
        reasons.append(reason)

    sub.on_connect(broken_hook)
    sub.on_connect(on_connect)
    sub.on_disconnect(on_disconnect)
    await sub.wait_connected(5)
    await sub.subscribe(f"{base}/cmd/#")
    private_broker.restart()  # in-memory broker: it forgets every subscription
    await eventually(lambda: len(connects) == 2)
    assert [c.first for c in connects] == [True, False]
    assert connects[1].session_present is False
    assert len(reasons) == 1 and reasons[0]

    pub = await make_client(private_broker)
    await pub.wait_connected(5)
    await pub.publish(f"{base}/cmd/start", b"go")
    [msg] = await receive(sub.messages())
    assert (msg.topic, msg.payload) == (f"{base}/cmd/start", b"go")


async def test_persistent_session_gets_queued_messages_and_broker_drops_expired(
    mqtt_broker: Mosquitto, make_client: MakeClient, base: str
) -> None:
    client_id = f"lkb-persist-{base[-8:]}"
    async with MqttClient(MqttSettings(mqtt_broker.host, mqtt_broker.port, client_id)) as sub:
        await sub.wait_connected(5)
        await sub.subscribe(f"{base}/send")
    pub = await make_client(mqtt_broker)
    await pub.wait_connected(5)
    await pub.publish(f"{base}/send", b"short", properties={"message_expiry_interval": 1})
    await pub.publish(f"{base}/send", b"long", properties={"message_expiry_interval": 60})
    await pub.wait_published(5)
    await asyncio.sleep(2.1)
    async with MqttClient(MqttSettings(mqtt_broker.host, mqtt_broker.port, client_id)) as sub:
        [msg] = await receive(sub.messages())  # queued by the broker while we were away
        assert msg.payload == b"long"
        assert msg.message_expiry_interval is not None and msg.message_expiry_interval <= 58
        assert not msg.expired()


async def test_manual_acks_go_out_in_order_and_unacked_messages_come_again(
    mqtt_broker: Mosquitto, make_client: MakeClient, base: str
) -> None:
    """With manual_ack a message is acknowledged only by ack(), PUBACKs keep arrival order (an
    early unacknowledged message holds back later ones), and what was not acknowledged when
    the connection dropped comes again, flagged DUP; an ack owed on the old connection is never
    sent on the new one (its packet id may name another message there)."""
    pub = await make_client(mqtt_broker)
    await pub.wait_connected(5)
    sub = await make_client(mqtt_broker, manual_ack=True)
    await sub.wait_connected(5)
    await sub.subscribe(f"{base}/send")
    messages = sub.messages()
    for text in (b"m0", b"m1", b"m2"):
        await pub.publish(f"{base}/send", text)
    first = await receive(messages, 3)
    assert [m.payload for m in first] == [b"m0", b"m1", b"m2"]
    assert all(m.ack_key and not m.dup for m in first)
    sub.ack(first[0])
    sub.ack(first[2])  # held back: m1 is not acknowledged yet
    await asyncio.sleep(0.3)
    sub._io.abort()  # the connection drops (no DISCONNECT); the client reconnects
    again = await receive(messages, 2)
    assert [(m.payload, m.dup) for m in again] == [(b"m1", True), (b"m2", True)]
    stale = sub.stale_acks
    sub.ack(first[1])  # owed on the old connection: not sent, only counted
    assert sub.stale_acks == stale + 1
    for m in again:
        sub.ack(m)
    await asyncio.sleep(0.3)
    sub._io.abort()
    await sub.wait_connected(5)
    with pytest.raises(TimeoutError):
        await receive(messages, 1)  # everything acknowledged: nothing comes again


# -- v5 and 3.1.1 -----------------------------------------------------------------------------


async def test_v5_response_topic_and_correlation_data_round_trip(
    mqtt_broker: Mosquitto, make_client: MakeClient, base: str
) -> None:
    responder = await make_client(mqtt_broker)
    requester = await make_client(mqtt_broker)
    await asyncio.gather(responder.wait_connected(5), requester.wait_connected(5))
    await responder.subscribe(f"{base}/request/+")
    await requester.subscribe(f"{base}/response/#")
    props = {
        "response_topic": f"{base}/response/health_check",
        "correlation_data": b"\x00\xffid",
        "content_type": "application/json",
        "user_properties": [("a", "1"), ("a", "2")],
        "message_expiry_interval": 30,
    }
    await requester.publish(f"{base}/request/health_check", b"{}", properties=props)
    [req] = await receive(responder.messages())
    assert req.response_topic == f"{base}/response/health_check"
    assert req.correlation_data == b"\x00\xffid"
    assert req.content_type == "application/json"
    assert req.user_properties == (("a", "1"), ("a", "2"))
    assert req.message_expiry_interval in (29, 30)

    await responder.publish(
        req.response_topic,
        b'{"status":"ok"}',
        properties={"correlation_data": req.correlation_data},
    )
    [resp] = await receive(requester.messages())
    assert (resp.topic, resp.payload) == (f"{base}/response/health_check", b'{"status":"ok"}')
    assert resp.correlation_data == b"\x00\xffid"
    assert resp.response_topic is None and resp.user_properties == ()


async def test_mqtt_311_round_trip_and_retained(
    mqtt_broker: Mosquitto, make_client: MakeClient, base: str
) -> None:
    sub = await make_client(mqtt_broker, protocol="3.1.1")
    pub = await make_client(mqtt_broker, protocol="3.1.1")
    await asyncio.gather(sub.wait_connected(5), pub.wait_connected(5))
    await pub.publish(f"{base}/r", b"kept", retain=True)
    await pub.wait_published(5)
    await sub.subscribe(f"{base}/#")
    await pub.publish(f"{base}/live", b"x", properties={"correlation_data": b"dropped on 3.1.1"})
    got = await receive(sub.messages(), 2)
    assert [(m.topic, m.payload, m.retain, m.qos) for m in got] == [
        (f"{base}/r", b"kept", True, 1),
        (f"{base}/live", b"x", False, 1),
    ]
    assert got[1].correlation_data is None
    await pub.publish(f"{base}/r", b"", retain=True)


# -- failures in plain words ------------------------------------------------------------------


@pytest.fixture
def auth_broker(tmp_path: Path) -> Iterator[tuple[str, int]]:
    """A Mosquitto that only lets user `lkb` with password `right` in."""
    binary = find_mosquitto()
    if binary is None:
        pytest.skip("mosquitto is not installed")
    passwd = tmp_path / "passwd"
    subprocess.run(["mosquitto_passwd", "-b", "-c", str(passwd), "lkb", "right"], check=True)
    os.chmod(passwd, 0o600)
    host, port = "127.0.0.1", free_port()
    conf = tmp_path / "mosquitto.conf"
    user = pwd.getpwuid(os.getuid()).pw_name  # as root, mosquitto would switch user and lose access
    conf.write_text(
        f"user {user}\nlistener {port} {host}\nallow_anonymous false\npassword_file {passwd}\n"
    )
    log = (tmp_path / "mosquitto.log").open("wb")
    proc = subprocess.Popen([binary, "-c", str(conf)], stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_for_tcp(host, port, 10, proc, "mosquitto", tmp_path / "mosquitto.log")
        yield host, port
    finally:
        stop_process(proc)
        log.close()


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
async def test_refused_credentials_give_a_clear_error(
    auth_broker: tuple[str, int], make_client: MakeClient, protocol: str
) -> None:
    host, port = auth_broker
    bad = await make_client(
        host=host, port=port, username="lkb", password="wrong", protocol=protocol
    )
    await eventually(lambda: bad.last_error is not None)
    with pytest.raises(MqttError, match=r"refused the connection: (Not authorized|Bad user name)"):
        await bad.wait_connected(0.01)
    assert bad.last_error is not None and bad.last_error.reason_code in (0x86, 0x87)
    assert "wrong" not in str(bad.last_error)
    good = await make_client(
        host=host, port=port, username="lkb", password="right", protocol=protocol
    )
    await good.wait_connected(5)


async def test_nothing_listening_is_a_clear_error_and_close_is_bounded(
    make_client: MakeClient,
) -> None:
    client = await make_client(host="127.0.0.1", port=free_port())
    await eventually(lambda: client.last_error is not None)
    with pytest.raises(MqttError, match=r"cannot connect to 127\.0\.0\.1:\d+: Connection refused"):
        await client.wait_connected(0.01)
    client.publish_nowait("lkbtest/never", b"x")
    started = time.monotonic()
    await client.aclose([OutgoingMessage("lkbtest/state", b"offline")], timeout=0.3)
    assert time.monotonic() - started < 2
    with pytest.raises(MqttError, match="closed"):
        client.publish_nowait("lkbtest/late", b"x")


async def test_a_server_that_never_answers_connect_times_out(make_client: MakeClient) -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()  # swallow CONNECT and never answer
        writer.close()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        client = await make_client(host="127.0.0.1", port=port, connect_timeout=0.3)
        await eventually(lambda: client.last_error is not None)
        with pytest.raises(MqttError, match=r"no CONNACK from 127\.0\.0\.1:\d+ within 0\.3 s"):
            await client.wait_connected(0.01)
        await client.aclose()


async def test_a_silent_broker_is_noticed_by_keepalive_and_left(make_client: MakeClient) -> None:
    """A half-dead connection (CONNACK, then silence) ends after a missed PINGRESP."""
    accepted = 0

    async def connack_then_silence(reader: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        nonlocal accepted
        accepted += 1
        await reader.read(1024)  # CONNECT
        w.write(b"\x20\x03\x00\x00\x00")  # v5 CONNACK: success, no properties
        await w.drain()
        while await reader.read(1024):  # PINGREQs go unanswered
            pass
        w.close()

    server = await asyncio.start_server(connack_then_silence, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        client = await make_client(host="127.0.0.1", port=port, keepalive=1)
        reasons: list[str] = []

        async def on_disconnect(reason: str) -> None:
            reasons.append(reason)

        client.on_disconnect(on_disconnect)
        await client.wait_connected(5)
        await eventually(lambda: bool(reasons), timeout=6)
        assert reasons[0] == "Keep alive timeout"
        await eventually(lambda: accepted == 2)  # and it reconnects
        await client.aclose()


async def test_unread_incoming_messages_are_bounded_and_counted(
    mqtt_broker: Mosquitto, make_client: MakeClient, base: str
) -> None:
    sub = await make_client(mqtt_broker, incoming_limit=2)
    pub = await make_client(mqtt_broker)
    await asyncio.gather(sub.wait_connected(5), pub.wait_connected(5))
    await sub.subscribe(f"{base}/#")
    for i in range(5):
        await pub.publish(f"{base}/m", str(i))
    await eventually(lambda: sub.incoming_dropped_count == 3)
    assert [m.payload for m in await receive(sub.messages(), 2)] == [b"0", b"1"]


async def test_unsubscribe_stops_delivery(
    mqtt_broker: Mosquitto, make_client: MakeClient, base: str
) -> None:
    sub = await make_client(mqtt_broker)
    pub = await make_client(mqtt_broker)
    await asyncio.gather(sub.wait_connected(5), pub.wait_connected(5))
    await sub.subscribe(f"{base}/a/#")
    await sub.subscribe(f"{base}/b")
    await sub.unsubscribe(f"{base}/a/#")
    await pub.publish(f"{base}/a/x", b"unwanted")
    await pub.publish(f"{base}/b", b"marker")
    [msg] = await receive(sub.messages())
    assert msg.payload == b"marker"


@pytest.fixture
def tls_broker(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    """A Mosquitto TLS listener on 127.0.0.1 whose certificate names only IP 127.0.0.1."""
    binary = find_mosquitto()
    if binary is None:
        pytest.skip("mosquitto is not installed")
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    run = functools.partial(subprocess.run, check=True, capture_output=True, cwd=tmp_path)
    run(
        [
            "openssl",
            "req",
            "-x509",
            *ec,
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "1",
            "-subj",
            "/CN=lkb-test-ca",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ]
    )
    run(["openssl", "req", *ec, "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=x"])
    (tmp_path / "san.ext").write_text("subjectAltName=IP:127.0.0.1\n")
    run(
        [
            "openssl",
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.pem",
            "-days",
            "1",
            "-extfile",
            "san.ext",
        ]
    )
    port = free_port()
    user = pwd.getpwuid(os.getuid()).pw_name
    conf = tmp_path / "tls.conf"
    conf.write_text(
        f"user {user}\nlistener {port} 127.0.0.1\nallow_anonymous true\n"
        f"cafile {tmp_path / 'ca.pem'}\ncertfile {tmp_path / 'server.pem'}\n"
        f"keyfile {tmp_path / 'server.key'}\n"
    )
    log = (tmp_path / "mosquitto.log").open("wb")
    proc = subprocess.Popen([binary, "-c", str(conf)], stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_for_tcp("127.0.0.1", port, 10, proc, "mosquitto", tmp_path / "mosquitto.log")
        yield port, tmp_path / "ca.pem"
    finally:
        stop_process(proc)
        log.close()


async def test_tls_verifies_the_broker_and_carries_large_messages(
    tls_broker: tuple[int, Path], make_client: MakeClient, base: str
) -> None:
    port, ca = tls_broker
    tls = TlsSettings(ca_file=str(ca))
    sub = await make_client(host="127.0.0.1", port=port, tls=tls)
    pub = await make_client(host="127.0.0.1", port=port, tls=tls)
    await asyncio.gather(sub.wait_connected(5), pub.wait_connected(5))
    await sub.subscribe(f"{base}/#")
    big = bytes(range(256)) * 1024  # 256 KiB: many TLS records per MQTT packet
    await pub.publish(f"{base}/big", big)
    for i in range(100):
        pub.publish_nowait(f"{base}/small", str(i))
    got = await receive(sub.messages(), 101)
    assert got[0].payload == big
    assert [m.payload for m in got[1:]] == [str(i).encode() for i in range(100)]

    # "localhost" is not in the certificate: refused, unless the hostname check is off.
    strict = await make_client(host="localhost", port=port, tls=tls)
    await eventually(lambda: strict.last_error is not None)
    assert "certificate verify failed" in str(strict.last_error)
    lax = TlsSettings(ca_file=str(ca), insecure=True)
    await (await make_client(host="localhost", port=port, tls=lax)).wait_connected(5)
