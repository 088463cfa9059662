"""The two high findings of issue 11, against the real daemon over a real Mosquitto.

A broker client must not make lkbridge send a secret to an address of its choosing, and must not
make it deaf. Listeners on 127.0.0.1 record every byte that reaches them.
"""

from __future__ import annotations

import asyncio
import sys
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import tomli_w

from devstack.livekit_server import LiveKitServer
from devstack.mosquitto import Mosquitto
from lkbridge.bridges.mqtt.incoming import ENDED
from tests.support.daemon_proc import DaemonProcess, daemon_config, session_toml
from tests.support.mqtt_probe import MqttProbe

pytestmark = pytest.mark.e2e

ONLINE = {"state": "online"}


class Recorder:
    """A TCP listener on 127.0.0.1 that keeps every byte any connection sends it."""

    def __init__(self) -> None:
        self.received = bytearray()
        self.connections = 0
        self._server: asyncio.Server | None = None

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        return int(self._server.sockets[0].getsockname()[1])

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while chunk := await asyncio.wait_for(reader.read(65536), 10):
                self.received += chunk
        except (TimeoutError, ConnectionError):
            pass
        writer.close()

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()


@pytest.fixture
async def recorders() -> AsyncIterator[tuple[Recorder, Recorder]]:
    http, mqtt = Recorder(), Recorder()
    await http.start()
    await mqtt.start()
    yield http, mqtt
    await http.close()
    await mqtt.close()


@pytest.fixture
def secrets_on_host(tmp_path: Path) -> tuple[dict[str, str], Path, str, str]:
    """An environment variable and a file holding secrets the daemon can read."""
    env_secret = f"env-secret-{uuid.uuid4().hex}"
    file_secret = f"file-secret-{uuid.uuid4().hex}"
    secret_file = tmp_path / "private.key"
    secret_file.write_text(file_secret)
    return {"LKB_HOME_SECRET": env_secret}, secret_file, env_secret, file_secret


@pytest.fixture
def daemons(tmp_path: Path, log_dir: Path) -> Iterator[Callable[..., DaemonProcess]]:
    procs: list[DaemonProcess] = []

    def make(config: Path, env: dict[str, str]) -> DaemonProcess:
        # No LiveKit is needed: nothing here may ever fetch a token.
        server: Any = SimpleNamespace(api_secret="unused")
        proc = DaemonProcess(config, server, log_dir / f"daemon-{tmp_path.name}.log", env=env)
        proc.start()
        procs.append(proc)
        return proc

    yield make
    for proc in procs:
        if proc.proc is not None and proc.proc.poll() is None:
            proc.kill()


async def request(probe: MqttProbe, base: str, action: str, body: dict[str, Any]) -> dict[str, Any]:
    txn = uuid.uuid4().hex[:8]
    mark = probe.mark()
    probe.publish(f"{base}/bridge/request/{action}", {**body, "transaction": txn})
    reply = await probe.wait_for(
        f"{base}/bridge/response/{action}",
        lambda m: m.json().get("transaction") == txn, after=mark, timeout=15,
    )
    return dict(reply.json())


def attacks(base: str, http_port: int, mqtt_port: int, secret_file: Path) -> dict[str, Any]:
    """What 0.1 accepted from any broker client (session id -> the free-form session table)."""
    endpoint = f"http://127.0.0.1:{http_port}/steal"
    return {
        "steal-env": {"token": {"source": "endpoint", "url": endpoint,
                                "headers": {"X-Env": {"env": "LKB_HOME_SECRET"}}}},
        "steal-file": {"token": {"source": "endpoint", "url": endpoint,
                                 "headers": {"X-File": {"file": str(secret_file)}}}},
        "steal-cred": {"token": {"source": "endpoint", "url": endpoint,
                                 "headers": {"X-Cred": {"credential": "mqtt_password"}}}},
        "steal-mqtt": {
            "token": {"source": "endpoint", "url": endpoint},
            "receivers": ["mqtt"], "senders": ["mqtt"],
            "transports": {"mqtt": {"host": "127.0.0.1", "port": mqtt_port,
                                    "username": "x", "password": {"env": "LKB_HOME_SECRET"}}},
        },
        "deafen": {
            "token": {"source": "endpoint", "url": endpoint},
            "receivers": ["mqtt"],
            "transports": {"mqtt": {"subscribe_topic": f"{base}/bridge/request/#"}},
        },
    }


async def test_no_broker_client_can_send_a_secret_to_an_address_of_its_choosing(
    tmp_path: Path, mqtt_broker: Mosquitto, daemons: Callable[..., DaemonProcess],
    recorders: tuple[Recorder, Recorder], secrets_on_host: tuple[dict[str, str], Path, str, str],
) -> None:  # fmt: skip
    """0.1: session/add with an endpoint token source of the caller's and header secrets by
    reference sent an env var and a file's contents to the caller's server, on every retry and
    after every restart; the mqtt transport's own `host` got the password in its CONNECT."""
    http, mqtt = recorders
    env, secret_file, env_secret, file_secret = secrets_on_host
    base = f"cp{uuid.uuid4().hex[:6]}"
    config = daemon_config(tmp_path, mqtt_broker.port, "", base_topic=base)
    probe = MqttProbe("127.0.0.1", mqtt_broker.port, f"{base}/#")
    try:
        daemon = daemons(config, env)
        await probe.wait_for(f"{base}/bridge/state", lambda m: m.json() == ONLINE)
        http_port = http_server_port(http)
        mqtt_port = http_server_port(mqtt)
        for sid, table in attacks(base, http_port, mqtt_port, secret_file).items():
            reply = await request(probe, base, "session/add", {"session": sid, "config": table})
            assert reply["status"] == "error", (sid, reply)
            assert "no longer takes a session configuration" in reply["error"]
        # Nothing but a template, an id, an agent name and metadata is accepted.
        for extra in ({"url": f"http://127.0.0.1:{http_port}/"}, {"token": {}},
                      {"transports": {}}, {"headers": {"A": {"env": "LKB_HOME_SECRET"}}}):
            body = {"session": "x1", "template": "assistant", **extra}
            reply = await request(probe, base, "session/add", body)
            assert reply["error"].startswith("unknown field"), reply
        # No error tells whether a path exists: no request can name one.
        for path in ("/root/.ssh/id_rsa", str(secret_file), "/nonexistent"):
            body = {"session": "x2", "template": path}
            reply = await request(probe, base, "session/add", body)
            assert reply["error"] == "sessions.x2.template: must be the name of a [templates.NAME]"
        await asyncio.sleep(3)  # 0.1 connected within a second and retried with backoff
        assert daemon.stop() == 0

        # 0.1 persisted such sessions in the overrides file: they are ignored after an upgrade.
        overrides = tmp_path / "state" / "overrides.toml"
        overrides.write_text(tomli_w.dumps(
            {"removed": [], "sessions": attacks(base, http_port, mqtt_port, secret_file)}
        ))
        mark = probe.mark()
        daemon = daemons(config, env)
        await probe.wait_for(f"{base}/bridge/state", lambda m: m.json() == ONLINE, after=mark)
        ignored = await probe.wait_for(
            f"{base}/bridge/event", lambda m: m.json().get("event") == "override_ignored",
            after=mark,
        )
        assert "written by lkbridge 0.1" in ignored.json()["reason"]
        health = await request(probe, base, "health_check", {})
        assert health["status"] == "ok" and health["data"]["sessions"] == {}
        await asyncio.sleep(3)
        assert daemon.stop() == 0

        for recorder in (http, mqtt):
            assert recorder.connections == 0, bytes(recorder.received[:200])
            assert env_secret.encode() not in recorder.received
            assert file_secret.encode() not in recorder.received
        for pub in probe.messages:
            assert env_secret.encode() not in pub.payload and file_secret.encode() not in pub.payload
    finally:
        probe.close()


async def test_no_broker_client_can_make_the_daemon_deaf(
    tmp_path: Path, mqtt_broker: Mosquitto, daemons: Callable[..., DaemonProcess],
    recorders: tuple[Recorder, Recorder],
) -> None:  # fmt: skip
    """0.1: session/add with the mqtt transport subscribed to `{base}/bridge/request/#` made the
    daemon answer no request any more, also after a restart (the session was persisted)."""
    http, _ = recorders
    base = f"cp{uuid.uuid4().hex[:6]}"
    config = daemon_config(tmp_path, mqtt_broker.port, "", base_topic=base)
    probe = MqttProbe("127.0.0.1", mqtt_broker.port, f"{base}/#")
    deafen = attacks(base, http_server_port(http), 1, tmp_path / "none")["deafen"]
    try:
        daemon = daemons(config, {})
        await probe.wait_for(f"{base}/bridge/state", lambda m: m.json() == ONLINE)
        reply = await request(probe, base, "session/add", {"session": "deafen", "config": deafen})
        assert reply["status"] == "error"
        for _ in range(3):
            assert (await request(probe, base, "health_check", {}))["status"] == "ok"
        assert daemon.stop() == 0

        # The same session left in a 0.1 overrides file: ignored, the daemon keeps listening.
        overrides = tmp_path / "state" / "overrides.toml"
        overrides.write_text(tomli_w.dumps({"removed": [], "sessions": {"deafen": deafen}}))
        mark = probe.mark()
        daemon = daemons(config, {})
        await probe.wait_for(f"{base}/bridge/state", lambda m: m.json() == ONLINE, after=mark)
        for action in ("health_check", "config/reload"):
            assert (await request(probe, base, action, {}))["status"] == "ok"
        assert daemon.stop() == 0
    finally:
        probe.close()

    # And the operator cannot configure it by mistake either: the config check refuses it.
    session = {"sessions": {"deafen": deafen}}
    config.write_text(config.read_text() + "\n" + tomli_w.dumps(session))
    check = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "lkbridge", "check", "-c", str(config),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )
    output, _ = await asyncio.wait_for(check.communicate(), 60)
    assert check.returncode != 0
    assert (f"sessions.deafen.transports.mqtt.subscribe_topic: '{base}/bridge/request/#'"
            " overlaps the bridge's own topics") in output.decode()


def http_server_port(recorder: Recorder) -> int:
    assert recorder._server is not None
    return int(recorder._server.sockets[0].getsockname()[1])


async def test_end_is_answered_while_sends_wait_for_an_absent_agent(
    tmp_path: Path, mqtt_broker: Mosquitto, livekit_server: LiveKitServer, log_dir: Path,
) -> None:  # fmt: skip
    """0.1: with the agent absent, 8 queued sends made session/end answer after 35.8 s (each
    send waited for the agent in turn); with 1,000 a command could wait hours."""
    base = f"cp{uuid.uuid4().hex[:6]}"
    nobody = f"nobody-{uuid.uuid4().hex[:8]}"  # no worker registers this name
    sessions = session_toml("lab", livekit_server, nobody, agent_connect_timeout=120)
    config = daemon_config(tmp_path, mqtt_broker.port, sessions, base_topic=base)
    probe = MqttProbe("127.0.0.1", mqtt_broker.port, f"{base}/#")
    daemon = DaemonProcess(config, livekit_server, log_dir / f"daemon-{tmp_path.name}.log")
    daemon.start()
    try:
        await probe.wait_for(f"{base}/lab/connection_state", lambda m: m.text == "connected",
                             timeout=30)
        mark = probe.mark()
        for index in range(8):
            body = {"session": "lab", "text": f"hello {index}", "transaction": f"s{index}"}
            probe.publish(f"{base}/bridge/request/session/send", body)
        # Wait until the daemon says a send is being carried out (waiting for the agent): the
        # state's `sending`, read from the answer to a start (a no-op: it is running already).
        deadline = asyncio.get_running_loop().time() + 15
        while True:
            started = await request(probe, base, "session/start", {"session": "lab"})
            assert started["status"] == "ok", started
            if started["data"].get("sending") == 1:
                break
            assert asyncio.get_running_loop().time() < deadline, started
            await asyncio.sleep(0.05)
        ended = await request(probe, base, "session/end", {"session": "lab"})
        assert ended["status"] == "ok" and ended["data"]["wanted"] is False
        errors = []
        for index in range(8):
            answer = await probe.wait_for(
                f"{base}/bridge/response/session/send",
                lambda m, i=index: m.json().get("transaction") == f"s{i}", after=mark, timeout=15,
            )
            assert answer.json()["status"] == "error", answer.json()
            errors.append(answer.json()["error"])
        # What the answers say proves the sends were held when end came: the first one was
        # being carried out, the seven behind it were still queued (none ran after end).
        assert errors[0] != ENDED, errors
        assert errors[1:] == [ENDED] * 7, errors
        assert (await request(probe, base, "health_check", {}))["status"] == "ok"
        assert daemon.stop() == 0
    finally:
        probe.close()
        if daemon.proc is not None and daemon.proc.poll() is None:
            daemon.kill()
